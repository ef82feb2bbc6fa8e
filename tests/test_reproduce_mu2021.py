"Mu 2021 reproduction notebooks 00-05 run with papermill (quick) on the tiny synthetic study; tables checked independently."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

MINE = ["mu2021_00_train_score", "mu2021_01_table1", "mu2021_02_fig3_performance", "mu2021_03_association",
        "mu2021_04_ablation", "mu2021_05_subgroups"]


@pytest.fixture(scope="session")
def mu_run(tmp_path_factory):
    "A tiny synthetic PET/CT study, quick-trained, with notebooks 00-05 run on it: (study, out_dir, status)."
    from pdl1_dls.synth import make_petct_study
    from pdl1_dls.manifest import load_study
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.report import run_reproduction
    root = tmp_path_factory.mktemp("mu_tiny")
    make_petct_study(root / "study", scale="tiny", seed=0)
    manifest = root / "study" / "study.yaml"
    out = root / "run"
    manifest.write_text(manifest.read_text() + "\ntrain: {epochs: 2}\n")   # the manifest's training settings: notebook 00 asks the same
    train_and_score(manifest, out, seed=0, quick=True)               # notebook 00 reuses these bundles (same identity)
    res = run_reproduction(manifest, out, seed=0, n_boot=200, quick=True, only=MINE, log=lambda *a: None)
    return load_study(manifest), out, res


@pytest.fixture(scope="session")
def scored(mu_run):
    study, out, _ = mu_run
    s = pd.read_csv(out / "scores.csv", dtype={"patient_id": str}).drop(columns=["cohort", "role"])
    return study.table().merge(s, on="patient_id", how="left")


def test_every_notebook_runs(mu_run):
    _, out, res = mu_run
    st = {s["notebook"]: s for s in res["notebooks"]}
    assert set(st) == set(MINE)
    bad = {k: v["error"] for k, v in st.items() if not v["ok"]}
    assert not bad, bad
    for nb in MINE: assert (out / "notebooks" / f"{nb}.ipynb").is_file()


def test_figures_have_png_and_svg(mu_run):
    _, out, _ = mu_run
    pngs = sorted((out / "figures").glob("mu2021_*.png"))
    assert {"mu2021_fig3b_roc", "mu2021_fig3a_dls_distribution", "mu2021_training_curves"} <= {p.stem for p in pngs}
    for p in pngs:
        assert p.stat().st_size > 1000 and p.with_suffix(".svg").is_file(), p.name


def test_tables_written_as_csv_and_md(mu_run):
    _, out, _ = mu_run
    for name in ("mu2021_models", "mu2021_null_control", "mu2021_table1_prevalence", "mu2021_fig3_auc", "mu2021_ablation",
                 "mu2021_subgroups", "mu2021_assoc_necrosis_volume"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file(), name


def test_models_table_matches_validation_scores(mu_run):
    "The validation AUC in the models table equals sklearn's AUC on the run's own validation DLS."
    _, out, _ = mu_run
    met = pd.read_csv(out / "tables" / "mu2021_models.csv").set_index("model")
    assert set(met.index) == {"hyper", "pet", "ct"}
    from pdl1_dls.manifest import load_study
    study = load_study(next(out.parent.glob("study/study.yaml")))
    for ch in met.index:
        v = pd.read_csv(out / "scores" / ch / "dls.csv", dtype={"patient_id": str}).merge(study.table(), on=["patient_id", "cohort"])
        v = v[(v["role"] == "validation") & v[study.label_column].notna()]
        if v[study.label_column].nunique() == 2:
            assert met.loc[ch, "val_auc"] == pytest.approx(roc_auc_score(v[study.label_column], v["dls"]), abs=1e-9)


def test_null_control_trained_on_permuted_labels(mu_run):
    _, out, _ = mu_run
    null = pd.read_csv(out / "tables" / "mu2021_null_control.csv")
    assert len(null) == 1 and bool(null["permuted"].iloc[0]) and bool(null["quick_settings"].iloc[0])   # quick: one seed
    m = json.loads((out / "models" / "permuted_s0" / "metrics.json").read_text())
    assert m["permuted"] is True and m["seed"] == 0
    cfg = json.loads((out / "models" / "permuted_s0" / "model.json").read_text())["config"]
    assert cfg["permute_labels"] is True


def test_table1_counts_match_pandas(mu_run, scored):
    study, out, _ = mu_run
    prev = pd.read_csv(out / "tables" / "mu2021_table1_prevalence.csv").set_index("cohort")
    lab = study.label_column
    for c, r in prev.iterrows():
        d = scored[scored["cohort"] == c]
        assert r["n"] == len(d)
        assert r["n_pos"] == int((d["pdl1_tps"] >= 1).sum()) == int((d[lab] == 1).sum())
        assert r["n_labelled"] == int(d["pdl1_tps"].notna().sum())
    t1 = pd.read_csv(out / "tables" / "mu2021_table1.csv")
    c0 = prev.index[0]
    row = t1[(t1["variable"] == "sex") & (t1["level"] == "male")]
    if len(row):
        d = scored[(scored["cohort"] == c0) & (scored[lab] == 1)]
        assert str(row[f"{c0} PD-L1+"].iloc[0]).startswith(f"{int((d['sex'] == 'male').sum())} (")


def test_fig3_auc_and_metrics_recomputed(mu_run, scored):
    study, out, _ = mu_run
    lab = study.label_column
    auc = pd.read_csv(out / "tables" / "mu2021_fig3_auc.csv")
    cut = json.loads((out / "scores.json").read_text())["cutoff"]
    tr = scored[(scored["role"] == "train") & scored[lab].notna()]
    from pdl1_dls.stats.roc import youden_cutoff
    assert cut == pytest.approx(youden_cutoff(tr[lab].astype(int), tr["dls"]).threshold)
    checked = 0
    for r in auc.itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna() & scored["dls"].notna()]
        assert r.n == len(d) and r.n_pos == int(d[lab].sum())
        if d[lab].nunique() == 2:
            assert r.dls_auc == pytest.approx(roc_auc_score(d[lab], d["dls"]), abs=1e-9); checked += 1
    assert checked >= 1
    cmp = pd.read_csv(out / "comparisons.csv").set_index("key")
    assert cmp.loc["cutoff", "reproduced"] == pytest.approx(cut)
    assert cmp.loc["cutoff", "published"] == pytest.approx(0.55)
    mets = pd.read_csv(out / "tables" / "mu2021_fig3_metrics.csv")
    for r in mets[mets["metric"] == "ACC"].itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna() & scored["dls"].notna()]
        acc = float(((d["dls"] >= cut).astype(int) == d[lab].astype(int)).mean())
        assert r.value == pytest.approx(acc)
        assert np.isnan(r.lo) or r.lo <= r.value + 1e-12 <= r.hi + 2e-12


def test_ablation_and_subgroup_aucs_recomputed(mu_run, scored):
    study, out, _ = mu_run
    lab = study.label_column
    abl = pd.read_csv(out / "tables" / "mu2021_ablation.csv")
    col = {"hyper-image": "dls", "PET only": "dls_pet", "CT only": "dls_ct"}
    assert set(abl["model"]) == set(col)
    for r in abl.itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna()].dropna(subset=list(col.values()))
        if d[lab].nunique() == 2:
            assert r.auc == pytest.approx(roc_auc_score(d[lab], d[col[r.model]]), abs=1e-9)
    sg = pd.read_csv(out / "tables" / "mu2021_subgroups.csv")
    for r in sg[sg["split"] == "EGFR"].itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna() & scored["dls"].notna()]
        d = d[d["egfr"] == (1 if r.subgroup == "mutant" else 0)]
        assert r.n == len(d)
        if d[lab].nunique() == 2: assert r.auc == pytest.approx(roc_auc_score(d[lab], d["dls"]), abs=1e-9)


def test_association_spearman_recomputed(mu_run, scored):
    from scipy.stats import spearmanr
    _, out, _ = mu_run
    p = out / "tables" / "mu2021_assoc_tps.csv"
    if not p.is_file(): pytest.skip("too few patients with TPS in the tiny study")
    tps = pd.read_csv(p)
    pc = {"sph": ["sph_train", "sph_val"], "mcc_pdl1": ["mcc_pdl1"]}
    for r in tps.itertuples():
        d = scored[scored["cohort"].isin(pc[r.group]) & scored["dls"].notna()].dropna(subset=["pdl1_tps", "suvmax"])
        assert r.n == len(d) and r.rho_dls_tps == pytest.approx(spearmanr(d["dls"], d["pdl1_tps"])[0], abs=1e-12)
    nec = pd.read_csv(out / "necrosis.csv", dtype={"patient_id": str})
    assert (nec["ratio"].between(0, 1)).all() and (nec["global_ml"] > 0).all()


def test_tumour_volume_is_the_roi_volume_against_nibabel(mu_run, scored):
    """The tumour volume correlated with the DLS is the ROI's: voxels > 0 times the voxel volume from the NIfTI header
    (nibabel, independent of SimpleITK), and the recorded Spearman rho uses it.

    Reference: `nib.load(roi).get_fdata() > 0` summed times `prod(header.get_zooms()) / 1000`."""
    import nibabel as nib
    from scipy.stats import spearmanr
    _, out, _ = mu_run
    nec = pd.read_csv(out / "necrosis.csv", dtype={"patient_id": str})
    assert len(nec) > 0
    for x in nec.itertuples():
        img = nib.load(x.roi)
        assert x.roi_volume_ml == pytest.approx((np.asarray(img.dataobj) > 0).sum() * np.prod(img.header.get_zooms()[:3]) / 1000, rel=1e-6)
    tab = pd.read_csv(out / "tables" / "mu2021_assoc_necrosis_volume.csv").set_index("group")
    d = scored.merge(nec[["patient_id", "roi_volume_ml"]], on="patient_id")
    d = d[d["cohort"] == "mcc_pdl1"]
    assert tab.loc["mcc_pdl1", "rho_volume"] == pytest.approx(spearmanr(d["roi_volume_ml"], d["dls"])[0], abs=1e-12)


@pytest.mark.slow
def test_full_demo_reproduction(tmp_path):
    "The whole demo reproduction (every paper notebook, non-quick) runs and records its time."
    from pdl1_dls.report import run_reproduction
    repo = Path(__file__).resolve().parents[1]
    res = run_reproduction(repo / "data_manifests" / "demo_petct.yaml", tmp_path / "run", log=print)
    bad = [s for s in res["notebooks"] if not s["ok"]]
    assert not bad, bad
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["seconds"] > 0 and len(prov["notebooks"]) == len(res["notebooks"])
    print(f"full demo reproduction: {prov['seconds']} s")


def test_computable_keys_are_recorded(mu_run):
    "Every published key of notebooks 01-05 that the tiny study can give is recorded (finite, or with the notebook's reason)."
    from test_report import assert_keys_recorded
    study, out, res = mu_run
    assert assert_keys_recorded(out, study, res["notebooks"]) >= 50
