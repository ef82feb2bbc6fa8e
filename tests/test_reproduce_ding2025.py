"Ding 2025 reproduction notebooks run with papermill (quick) on the tiny synthetic MRI study; tables checked independently."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

NBS = ["ding2025_00_train_score", "ding2025_01_table1", "ding2025_02_table2", "ding2025_03_fig3_fig5",
       "ding2025_04_fig4_gradcam", "ding2025_05_survival"]


@pytest.fixture(scope="session")
def ding_run(tmp_path_factory):
    "A tiny synthetic MRI study, quick-trained, with the Ding 2025 notebooks run on it: (study, out_dir, result)."
    from pdl1_dls.synth import make_mri_study
    from pdl1_dls.manifest import load_study
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.report import run_reproduction
    root = tmp_path_factory.mktemp("ding_tiny")
    manifest = make_mri_study(root / "study", scale="tiny", seed=0)
    out = root / "run"
    train_and_score(manifest, out, seed=0, quick=True)                  # notebook 00 reuses it (same seed, quick)
    res = run_reproduction(manifest, out, seed=0, n_boot=200, quick=True, only=["ding2025"], log=lambda *a: None)
    return load_study(manifest), out, res


@pytest.fixture(scope="session")
def scored(ding_run):
    "Study table merged with the per-patient scores of the run's own dls.csv (independent of load_scores)."
    study, out, _ = ding_run
    d = pd.read_csv(out / "scores" / "mri" / "dls.csv", dtype={"patient_id": str})
    d = d[["patient_id"] + [c for c in d.columns if c.startswith("dls") and c != "dls_high"]]
    return study.table().merge(d, on="patient_id", how="left")


def test_every_notebook_runs(ding_run):
    _, out, res = ding_run
    st = {s["notebook"]: s for s in res["notebooks"]}
    assert set(NBS) <= set(st)
    bad = {k: v["error"] for k, v in st.items() if not v["ok"]}
    assert not bad, bad
    for nb in NBS: assert (out / "notebooks" / f"{nb}.ipynb").is_file()


def test_scores_file_has_one_role_column(ding_run):
    _, out, _ = ding_run
    cols = pd.read_csv(out / "scores.csv", nrows=1).columns
    assert "role" in cols and not any(c.endswith(("_x", "_y")) for c in cols)
    assert {"dls", "dls_t1", "dls_t2", "dls_ce_t1"} <= set(cols)


def test_figures_have_png_and_svg(ding_run):
    _, out, _ = ding_run
    pngs = {p.stem: p for p in (out / "figures").glob("ding2025_*.png")}
    assert {"ding2025_training_curves", "ding2025_fig4_gradcam_high", "ding2025_fig4_gradcam_low"} <= set(pngs)
    assert any(s.startswith("ding2025_fig3") or s.startswith("ding2025_fig5") for s in pngs)
    for p in pngs.values():
        assert p.stat().st_size > 1000 and p.with_suffix(".svg").is_file(), p.name


def test_models_table_matches_scores(ding_run, scored):
    "metrics.json AUCs tabulated in notebook 00 equal sklearn's AUC of dls.csv per cohort."
    study, out, _ = ding_run
    lab = study.label_column
    mt = pd.read_csv(out / "tables" / "ding2025_models.csv").set_index("model")
    assert set(mt.index) == {"fused DLS", "t1", "t2", "ce_t1"}
    col = {"fused DLS": "dls", "t1": "dls_t1", "t2": "dls_t2", "ce_t1": "dls_ce_t1"}
    from pdl1_dls.analysis import paper_cohorts
    pc = paper_cohorts(study); checked = 0
    for key in ("internal", "external"):
        d = scored[(scored["cohort"] == pc[key]) & scored[lab].notna()]
        if d[lab].nunique() < 2: continue
        for m, c in col.items():
            assert mt.loc[m, f"auc_{key}"] == pytest.approx(roc_auc_score(d[lab], d[c]), abs=1e-9); checked += 1
    assert checked


def test_null_control_is_permuted_with_the_models_profile(ding_run):
    "The permuted run uses the same training profile and settings as the model it controls."
    _, out, _ = ding_run
    null = pd.read_csv(out / "tables" / "ding2025_null_control.csv")
    assert len(null) == 1 and bool(null["permuted"].iloc[0]) and null["profile"].iloc[0] == "quick"
    m = json.loads((out / "models" / "mri_permuted_s0" / "metrics.json").read_text())
    main = json.loads((out / "models" / "mri" / "model.json").read_text())["config"]
    null_cfg = json.loads((out / "models" / "mri_permuted_s0" / "model.json").read_text())["config"]
    assert m["permuted"] is True and m["seed"] == 0 and m["profile"] == "quick"
    assert null_cfg == main
    assert null["val_auc"].iloc[0] == pytest.approx(m["val_auc"], nan_ok=True)


def test_table1_counts_and_tests(ding_run, scored):
    "Cohort sizes, level counts, age mean and the ANOVA / chi-square P values recomputed with pandas and scipy."
    import scipy.stats as st
    study, out, _ = ding_run
    from pdl1_dls.analysis import paper_cohorts
    pc = paper_cohorts(study)
    keys = [k for k in ("train", "internal", "external") if k in pc]
    t1 = pd.read_csv(out / "tables" / "ding2025_table1.csv")
    cols = {k: [c for c in t1.columns if c.endswith(f"({pc[k]})")][0] for k in keys}
    nrow = t1[t1["variable"] == "n"].iloc[0]
    for k in keys: assert int(nrow[cols[k]]) == int((scored["cohort"] == pc[k]).sum())
    d = scored[scored["cohort"].isin([pc[k] for k in keys])]
    age = t1[t1["variable"] == "age"].iloc[0]
    for k in keys:
        a = d.loc[d["cohort"] == pc[k], "age"]
        assert age[cols[k]] == f"{a.mean():.2f} ± {a.std(ddof=1):.2f}"
    assert age["p"] == pytest.approx(st.f_oneway(*[d.loc[d["cohort"] == pc[k], "age"] for k in keys]).pvalue)
    assert age["test"] == "ANOVA"
    ts = t1.index[t1["variable"] == "t_stage"][0]
    ct = pd.crosstab(d["t_stage"], d["cohort"])[[pc[k] for k in keys]]
    assert t1.loc[ts, "p"] == pytest.approx(st.chi2_contingency(ct.to_numpy()).pvalue)
    lev = t1.loc[ts, "level"]
    for k in keys:
        assert t1.loc[ts, cols[k]].startswith(f"{int((d.loc[d['cohort'] == pc[k], 't_stage'].astype(str) == lev).sum())} (")
    prev = pd.read_csv(out / "tables" / "ding2025_table1_prevalence.csv").set_index("paper_cohort")
    for k, r in prev.iterrows():
        g = scored[scored["cohort"] == pc[k]]
        assert r["n"] == len(g) and r["n_pos"] == int((g["pdl1_cps"] >= 20).sum())
    cmp = pd.read_csv(out / "comparisons.csv").set_index("key")
    assert cmp.loc["table1_n.train", "published"] == 267
    assert cmp.loc["table1_n.train", "reproduced"] == (scored["cohort"] == pc["train"]).sum()


def test_table2_recomputed(ding_run, scored):
    "AUC vs sklearn; ACC/SEN/SPEC at each model's training Youden cutoff vs counts with pandas; DeLong P in range."
    study, out, _ = ding_run
    lab = study.label_column
    from pdl1_dls.analysis import paper_cohorts
    from pdl1_dls.stats.roc import youden_cutoff
    pc = paper_cohorts(study)
    t2 = pd.read_csv(out / "tables" / "ding2025_table2.csv")
    col = {"T1WI": "dls_t1", "T2WI": "dls_t2", "CE-T1WI": "dls_ce_t1", "DLS": "dls"}
    tr = scored[(scored["cohort"] == pc["train"]) & scored[lab].notna()]
    checked = 0
    for r in t2.itertuples():
        c = col[r.model]
        cut = youden_cutoff(tr[lab].astype(int), tr[c]).threshold
        assert r.cutoff == pytest.approx(cut)
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna()]
        assert r.n == len(d) and r.n_pos == int(d[lab].sum())
        if d[lab].nunique() < 2: continue
        y, call = d[lab].astype(int).to_numpy(), (d[c] >= cut).to_numpy()
        assert r.auc == pytest.approx(roc_auc_score(y, d[c]), abs=1e-9)
        assert r.ACC == pytest.approx((call == y).mean())
        assert r.SEN == pytest.approx(call[y == 1].mean())
        assert r.SPEC == pytest.approx((~call[y == 0]).mean())
        checked += 1
    assert checked >= 4
    dt = pd.read_csv(out / "tables" / "ding2025_table2_delong.csv")
    assert set(dt["comparison"]) <= {"DLS vs T1WI", "DLS vs T2WI", "DLS vs CE-T1WI"}
    assert ((dt["p"].dropna() >= 0) & (dt["p"].dropna() <= 1)).all()


def test_calibration_brier_recomputed(ding_run, scored):
    study, out, _ = ding_run
    lab = study.label_column
    perf = pd.read_csv(out / "tables" / "ding2025_fig3_fig5_calibration.csv")
    col = {"T1WI": "dls_t1", "T2WI": "dls_t2", "CE-T1WI": "dls_ce_t1", "DLS": "dls"}
    assert len(perf)
    for r in perf.itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored[lab].notna()]
        assert r.brier == pytest.approx(float(np.mean((d[col[r.model]] - d[lab]) ** 2)))
        assert r.auc == pytest.approx(roc_auc_score(d[lab], d[col[r.model]]), abs=1e-9)


def test_survival_hr_vs_lifelines_and_dcb_auc(ding_run, scored):
    "HR of high vs low DLS (training cutoff) vs a direct lifelines fit; log-rank P vs lifelines; DCB AUC vs sklearn."
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test
    study, out, _ = ding_run
    cut = json.loads((out / "scores.json").read_text())["cutoff"]
    km = pd.read_csv(out / "tables" / "ding2025_fig5de_pfs.csv")
    for r in km.itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored["pfs_months"].notna()].copy()
        d["high"] = (d["dls"] >= cut).astype(int)
        assert r.n_high == d["high"].sum() and r.n == len(d)
        if str(getattr(r, "note", "")).startswith("skipped"):   # one DLS group empty or no events: said, not fitted
            assert d["high"].nunique() < 2 or d["pfs_event"].sum() == 0
            continue
        if pd.notna(getattr(r, "hr", np.nan)) and np.isfinite(r.hr_hi) and r.hr_lo > 0:   # skip separated (degenerate) fits
            f = CoxPHFitter().fit(d[["pfs_months", "pfs_event", "high"]].astype(float), "pfs_months", "pfs_event",
                                     fit_options={"precision": 1e-10, "max_steps": 500})
            assert r.hr == pytest.approx(float(np.exp(f.params_["high"])), rel=1e-4)
        h, l = d[d["high"] == 1], d[d["high"] == 0]
        assert r.logrank_p == pytest.approx(logrank_test(h.pfs_months, l.pfs_months, h.pfs_event, l.pfs_event).p_value, rel=1e-6)
    dcb = pd.read_csv(out / "tables" / "ding2025_fig5f_dcb.csv")
    for r in dcb.itertuples():
        d = scored[(scored["cohort"] == r.cohort) & scored["dcb"].notna()]
        assert r.auc == pytest.approx(roc_auc_score(d["dcb"].astype(int), d["dls"]), abs=1e-9)


def test_gradcam_patients_are_high_and_low(ding_run, scored):
    study, out, _ = ding_run
    sel = pd.read_csv(out / "tables" / "ding2025_fig4_patients.csv", dtype={"patient_id": str}).set_index("group")
    lab = study.label_column
    s = scored.set_index("patient_id")
    assert s.loc[sel.loc["PD-L1 high", "patient_id"], lab] == 1 and s.loc[sel.loc["PD-L1 low", "patient_id"], lab] == 0
    for c in [c for c in sel.columns if c.startswith("cam_mean_")]: assert ((sel[c] >= 0) & (sel[c] <= 1)).all()


def test_published_numbers_match_the_paper(seeds_dir):
    "Every Table 2 number of the published file occurs in the paper's text (spot checks of Table 1 and the HRs)."
    from pdl1_dls.report import published
    pub = published("ding2025")
    assert pub["auc_dls.internal"]["value"] == 0.860 and pub["auc_dls.internal"]["lo"] == 0.797
    assert pub["hr_pfs_dls_high.external"]["hi"] == 0.973 and pub["auc_dcb_dls.ici"]["value"] == 0.739
    assert pub["table1_t_stage_3_n.train"]["value"] == 120 and pub["table1_age_p"]["value"] == 0.003
    for k, v in pub.items():
        assert {"value", "description", "source"} <= set(v), k
        if k.split("_")[0] in ("acc", "sen", "spec", "ppv", "npv", "prevalence"): assert 0 <= v["value"] <= 1, k
    text = (seeds_dir / "003_14c2849015109ffe.txt").read_text()
    t2 = text[text.index("**Table 2**"):text.index("**Fig. 3**")]
    for k, v in pub.items():
        if k.split("_")[0] in ("auc", "acc", "sen", "spec", "ppv", "npv") and not k.startswith("auc_dcb"):
            assert f"{v['value']:.3f}" in t2, k


@pytest.mark.slow
def test_full_demo_mri_reproduction(tmp_path):
    "The demo MRI manifest reproduces end to end (non-quick training, settings' n_boot): every notebook ok."
    from pdl1_dls.report import run_reproduction
    man = Path(__file__).resolve().parents[1] / "data_manifests" / "demo_mri.yaml"
    res = run_reproduction(man, tmp_path / "run", log=lambda *a: None)
    bad = {s["notebook"]: s["error"] for s in res["notebooks"] if not s["ok"]}
    assert res["ok"], bad
    assert {s["notebook"] for s in res["notebooks"]} >= set(NBS)
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["seconds"] > 0 and len(prov["notebooks"]) == len(res["notebooks"])
    for run in ("mri", "mri_permuted_s0"):   # the model and its null control, both with the manifest's cpu profile
        m = json.loads((tmp_path / "run" / "models" / run / "metrics.json").read_text())
        assert m["profile"] == "cpu" and m["n_train"] == 267 and m["crossfit"] == 2, run
    # the targets on the synthetic study: the fused DLS reaches 0.8 on the internal validation cohort and beats
    # every single sequence there; trained on permuted labels it stays at or below 0.6
    m = json.loads((tmp_path / "run" / "models" / "mri" / "metrics.json").read_text())
    assert m["val_auc"] >= 0.8 and all(m["val_auc"] > v["val_auc"] for v in m["sequences"].values()), m["sequences"]
    assert json.loads((tmp_path / "run" / "models" / "mri_permuted_s0" / "metrics.json").read_text())["val_auc"] <= 0.6


def test_computable_keys_are_recorded(ding_run):
    "Every published Ding 2025 key that the tiny study can give is recorded (finite, or with the notebook's reason)."
    from test_report import assert_keys_recorded
    study, out, res = ding_run
    assert assert_keys_recorded(out, study, res["notebooks"]) >= 50


def test_report_lists_the_profiles_deviations(ding_run):
    "A quick/cpu-profile run names every setting that differs from the paper's method, in a table the report lists."
    _, out, _ = ding_run
    dev = pd.read_csv(out / "tables" / "ding2025_deviations.csv")
    assert {"backbone", "size", "crossfit", "weights"} <= set(dev["setting"])
    assert dev.set_index("setting").loc["backbone", "paper"] == "resnet101"
    assert "ding2025_deviations" in (out / "index.html").read_text()
