"""Mu 2021 reproduction notebooks 06-12 (Figure 2, DLS vs IHC, reliability, Figure 4 / Table 2, Figure 5,
multivariable models, RQS): run them with papermill in quick mode on a tiny synthetic study and check what
they write against independent computations (sklearn, lifelines, statsmodels, plain pandas)."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MINE = ["mu2021_06_fig2_explain", "mu2021_07_dls_vs_ihc", "mu2021_08_reliability", "mu2021_09_fig4_prognosis",
        "mu2021_10_fig5_histology", "mu2021_11_multivariable", "mu2021_12_rqs"]
PUBLISHED = REPO / "pdl1_dls" / "data" / "published_mu2021_outcomes.yaml"


@pytest.fixture(scope="session")
def mu_run(tmp_path_factory):
    "A tiny synthetic PET/CT study, its three quick models and scores, and my notebooks run on it."
    from pdl1_dls.synth import make_petct_study
    from pdl1_dls.analysis import train_and_score
    from pdl1_dls.report import run_reproduction
    root = tmp_path_factory.mktemp("mu2021_outcomes")
    ini = root / "settings.ini"                       # keep the hyper-image cache inside the tmp folder
    ini.write_text(f"[pdl1_dls]\ncache_dir = {root / 'cache'}\n")
    old = {k: os.environ.get(k) for k in ("PDL1_DLS_SETTINGS", "PDL1_DLS_PROGRESS")}
    os.environ.update(PDL1_DLS_SETTINGS=str(ini), PDL1_DLS_PROGRESS="0")
    try:
        manifest = make_petct_study(root / "study", scale="tiny", seed=0)
        run = root / "run"
        manifest.write_text(manifest.read_text() + "\ntrain: {epochs: 3}\n")
        train_and_score(manifest, run, seed=0, quick=True, models=("hyper",))   # notebooks 06-12 need only the hyper model
        res = run_reproduction(manifest, run, seed=0, n_boot=200, quick=True, only=MINE, log=lambda *a: None)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return dict(run=run, manifest=manifest, result=res)


def _fixed_study(root):
    """The clinical tables of the `small` synthetic PET/CT study (60 patients in the retrospective ICI cohort) as a
    manifest, and the latent truth per patient: no images are read, the notebooks take the scores from scores.csv."""
    from pdl1_dls.synth import _study_tables, _manifest
    clin, truth, _ = _study_tables("petct", "small", 0)
    clin.to_csv(root / "clinical.csv", index=False)
    m = _manifest("petct", "small", 0)
    for k in ("synthetic", "checksums"): m.pop(k)
    m["name"] = "mu2021_fixed"
    m["images"] = {k: v for k, v in m["images"].items() if k in ("pet", "ct", "roi")}
    for pid in clin["patient_id"]:                    # the manifest names images; the notebooks read only scores.csv
        d = root / "images" / pid; d.mkdir(parents=True)
        for k in m["images"]: (d / f"{k}.nii.gz").touch()
    (root / "study.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return root / "study.yaml", clin, truth.set_index("patient_id").loc[clin["patient_id"]]


def _run_on_scores(manifest, run, clin, dls):
    from pdl1_dls.report import run_reproduction
    run.mkdir()
    sc = pd.DataFrame({"patient_id": clin["patient_id"], "cohort": clin["cohort"], "role": "", "dls": dls})
    sc.to_csv(run / "scores.csv", index=False)
    from pdl1_dls.analysis import training_cutoff                 # as a bundle would: Youden on the training cohort
    from pdl1_dls.manifest import load_study
    t = load_study(manifest).table().merge(sc[["patient_id", "dls"]], on="patient_id")
    (run / "scores.json").write_text(json.dumps(dict(models={}, scores={}, cutoff=training_cutoff(t, "pdl1", "dls"), trained_here=False)))
    res = run_reproduction(manifest, run, seed=0, n_boot=200, quick=True, only=["mu2021_11_multivariable"], log=lambda *a: None)
    return dict(run=run, manifest=manifest, result=res)


@pytest.fixture(scope="session")
def mu_fixed_study(tmp_path_factory):
    return _fixed_study(tmp_path_factory.mktemp("mu2021_fixed"))


@pytest.fixture(scope="session")
def mu_fixed(mu_fixed_study):
    """The multivariable notebook on a fixed, larger study with no training: a DLS drawn from the latent truth with a
    fixed numpy seed, so every number is the same on every machine and the models are identifiable (a tiny study's
    8-patient cohort is separated or not depending on the CPU's rounding of the training)."""
    manifest, clin, truth = mu_fixed_study
    rng = np.random.default_rng(7)
    z = truth["z"].to_numpy()
    return _run_on_scores(manifest, manifest.parent / "run", clin, 1 / (1 + np.exp(-(1.5 * z + rng.normal(0, 1, len(z))))))


@pytest.fixture(scope="session")
def mu_separated(mu_fixed_study):
    "The same study with a DLS that separates DCB perfectly in the retrospective ICI cohort (the model's fitting cohort)."
    manifest, clin, truth = mu_fixed_study
    rng = np.random.default_rng(8)
    dcb = clin["dcb"].to_numpy(float)
    dls = np.where(np.isnan(dcb), rng.uniform(0.2, 0.8, len(dcb)), 0.25 + 0.5 * np.nan_to_num(dcb) + rng.uniform(-0.2, 0.2, len(dcb)))
    return _run_on_scores(manifest, manifest.parent / "run_separated", clin, dls)


def _table(run, name):
    p = run / "tables" / f"{name}.csv"
    return pd.read_csv(p) if p.is_file() else None


def _scored(mu_run):
    from pdl1_dls.manifest import load_study
    study = load_study(mu_run["manifest"])
    s = pd.read_csv(mu_run["run"] / "scores.csv", dtype={"patient_id": str}).drop(columns=["cohort", "role"])
    t = study.table().merge(s, on="patient_id", how="left")
    cut = json.loads((mu_run["run"] / "scores.json").read_text())["cutoff"]
    return t, cut


# ---- published numbers (no notebook needed) ----

def test_published_outcomes_file_is_well_formed():
    from pdl1_dls.analysis import PAPER_COHORTS
    from pdl1_dls.report import published
    d = yaml.safe_load(PUBLISHED.read_text())
    cohorts = {k for _, k in PAPER_COHORTS["mu2021"]} | {"sph"}
    for key, v in d.items():
        q, _, c = key.rpartition(".")
        assert re.fullmatch(r"[a-z0-9_]+", q) and c in cohorts, key
        assert {"value", "description", "source"} <= set(v), key
        assert np.isfinite(v["value"]), key
        if "lo" in v or "hi" in v:
            assert v["lo"] <= v["value"] <= v["hi"], key
        if q.startswith(("dcb_auc", "cindex", "icc")): assert 0 <= v["value"] <= 1, key
        if q.startswith("hr_") and not q.endswith("_diff"): assert v["value"] > 0, key
    merged = published("mu2021")                       # refuses duplicate keys across the paper's files
    assert set(d) <= set(merged)


def test_outcome_transcriptions_match_paper_text(seeds_dir):
    "A few published outcome numbers checked against the paper's own text."
    import yaml
    import pdl1_dls
    d = yaml.safe_load((Path(pdl1_dls.__file__).parent / "data" / "published_mu2021_outcomes.yaml").read_text())
    txt = " ".join((seeds_dir / "000_f2edf65a3ccdc4f6.txt").read_text().split())
    for frag in ("0.70 (95% CI: 0.63 to 0.77", "HR=0.41 (95% CI: 0.25 to 0.67", "0.85 (95% CI: 0.80 to 0.90",
                 "0.87 (95% CI: 0.83 to 0.92", "0.38 (95% CI: 0.18 to 0.85"):
        assert frag in txt, frag
    assert d["dcb_auc_dls.mcc_ici_retro"]["lo"] == 0.63 and d["hr_pfs_dls.mcc_ici_retro"]["hi"] == 0.67
    assert d["icc_dls_readers.sph_val"]["value"] == 0.85 and d["cindex_dcb_model.mcc_ici_retro"]["lo"] == 0.83


# ---- the notebooks ----

def test_notebooks_ran(mu_run):
    st = {s["notebook"]: s for s in mu_run["result"]["notebooks"]}
    assert set(st) == set(MINE)
    bad = {k: v["error"] for k, v in st.items() if not v["ok"]}
    assert not bad, bad


def test_every_figure_has_png_and_svg(mu_run):
    figs = mu_run["run"] / "figures"
    png = {p.stem for p in figs.glob("mu2021_*.png")}
    svg = {p.stem for p in figs.glob("mu2021_*.svg")}
    assert png == svg and png
    assert {"mu2021_fig2e_feature_heatmap", "mu2021_dls_bootstrap_mean", "mu2021_fig4_prognosis", "mu2021_rqs"} <= png


def test_executed_notebooks_show_their_figures(mu_run):
    "Every saved figure is also an image output of the executed notebook, as JupyterLab and the docs show it."
    shown = {}
    for nb in (mu_run["run"] / "notebooks").glob("mu2021_*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        shown[nb.stem] = sum("image/png" in o.get("data", {}) for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    assert set(shown) == set(MINE)
    assert shown["mu2021_09_fig4_prognosis"] >= 1 and shown["mu2021_12_rqs"] >= 1
    assert sum(shown.values()) == len(list((mu_run["run"] / "figures").glob("mu2021_*.png")))


def test_recorded_keys_are_published(mu_run):
    from pdl1_dls.report import published
    cmp = pd.read_csv(mu_run["run"] / "comparisons.csv")
    pub = published("mu2021")
    assert set(cmp["key"]) <= set(pub)
    for _, r in cmp.iterrows():
        assert r["published"] == pytest.approx(pub[r["key"]]["value"])
        if np.isfinite(r["reproduced_lo"]) and np.isfinite(r["reproduced"]):
            assert r["reproduced_lo"] <= r["reproduced"] + 1e-9 or r["key"].startswith("hr_") and "_diff" in r["key"]


def test_fig4_auc_hr_and_table2_counts(mu_run):
    from sklearn.metrics import roc_auc_score
    from lifelines import CoxPHFitter
    t, cut = _scored(mu_run)
    f4 = _table(mu_run["run"], "mu2021_fig4_prognosis")
    assert f4 is not None and len(f4)
    for _, r in f4.iterrows():
        d = t[(t["cohort"] == r["cohort"]) & t["dls"].notna()]
        if r["analysis"] == "DCB":
            d = d.dropna(subset=["dcb"])
            assert r["estimate"] == pytest.approx(roc_auc_score(d["dcb"].astype(int), d["dls"]), abs=1e-9)
            assert r["n"] == len(d)
        else:
            ep = r["analysis"].lower()
            d = d.dropna(subset=[f"{ep}_months", f"{ep}_event"])
            x = pd.DataFrame({"T": d[f"{ep}_months"], "E": d[f"{ep}_event"], "high": (d["dls"] >= cut).astype(float)})
            hr = float(np.exp(CoxPHFitter().fit(x, "T", "E").params_["high"]))
            assert r["estimate"] == pytest.approx(hr, rel=1e-3)
    t2 = _table(mu_run["run"], "mu2021_table2")
    for _, r in t2[t2["variable"] == "n"].iterrows():
        d = t[(t["cohort"] == r["cohort"]) & t["dls"].notna()]
        assert int(r["all"]) == len(d) and int(r["high"]) == int((d["dls"] >= cut).sum())


def test_cutoff_is_youden_optimal_on_training(mu_run):
    from sklearn.metrics import roc_curve
    t, cut = _scored(mu_run)
    tr = t[(t["role"] == "train") & t["pdl1"].notna() & t["dls"].notna()]
    y, s = tr["pdl1"].astype(int).to_numpy(), tr["dls"].to_numpy()
    fpr, tpr, _ = roc_curve(y, s)
    j_at_cut = ((s >= cut) & (y == 1)).sum() / (y == 1).sum() - ((s >= cut) & (y == 0)).sum() / (y == 0).sum()
    assert j_at_cut == pytest.approx((tpr - fpr).max(), abs=1e-12)


def test_dls_vs_ihc_tables(mu_run):
    from sklearn.metrics import roc_auc_score
    t, _ = _scored(mu_run)
    auc = _table(mu_run["run"], "mu2021_dls_vs_ihc_dcb_auc")
    if auc is None: pytest.skip("tiny study: no cohort with both IHC and DCB in both classes")
    for _, r in auc.dropna(subset=["auc"]).iterrows():
        d = t[t["cohort"] == r["cohort"]].dropna(subset=["dcb", "pdl1", "dls"])
        col = {"DLS": "dls", "IHC PD-L1 positive": "pdl1", "IHC TPS (continuous)": "pdl1_tps"}[r["score"]]
        assert r["auc"] == pytest.approx(roc_auc_score(d["dcb"].astype(int), d[col]), abs=1e-9)
        assert r["lo"] <= r["auc"] <= r["hi"]
    hr = _table(mu_run["run"], "mu2021_dls_vs_ihc_hr")
    if hr is not None and len(hr):
        assert np.allclose(hr["diff"], hr["hr_dls"] - hr["hr_ihc"], rtol=1e-3, atol=1e-6)
        assert (hr["abs_lo"] >= 0).all() and (hr["abs_lo"] <= hr["abs_hi"]).all()
        assert (hr["n_boot"] == 200).all()            # min(n_boot, 1000) with n_boot = 200


def test_reliability_icc_and_bootstrap_means(mu_run):
    t, _ = _scored(mu_run)
    icc = _table(mu_run["run"], "mu2021_icc_readers")
    assert icc is not None
    r = icc.set_index("type")
    d = t[t["cohort"] == r["cohort"].iloc[0]].dropna(subset=["dls", "dls_reader2"])
    X = d[["dls", "dls_reader2"]].to_numpy()
    # ICC(2,1) from statsmodels' two-way ANOVA mean squares (independent of pdl1_dls.stats.association.icc)
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    long = pd.DataFrame({"y": X.ravel(), "subj": np.repeat(np.arange(len(X)), 2).astype(str), "rater": np.tile(["a", "b"], len(X))})
    a = anova_lm(smf.ols("y ~ C(subj) + C(rater)", long).fit())
    msr, msc, mse = (a.loc[k, "sum_sq"] / a.loc[k, "df"] for k in ("C(subj)", "C(rater)", "Residual"))
    n, k = X.shape
    assert r.loc["ICC(2,1)", "icc"] == pytest.approx((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n), abs=1e-9)
    assert r.loc["ICC(2,1)", "lo"] <= r.loc["ICC(2,1)", "icc"] <= r.loc["ICC(2,1)", "hi"]
    b = _table(mu_run["run"], "mu2021_dls_bootstrap_mean")
    for _, row in b.iterrows():
        x = t.loc[t["cohort"] == row["cohort"], "dls"].dropna()
        assert row["n"] == len(x) and row["mean"] == pytest.approx(x.mean(), abs=1e-12)
        assert row["lo"] <= row["boot_mean"] <= row["hi"]
        assert row["boot_se"] == pytest.approx(x.std(ddof=1) / np.sqrt(len(x)), rel=0.35)   # 200 replicates: rough


def test_fig5_rates(mu_run):
    t, cut = _scored(mu_run)
    rates = _table(mu_run["run"], "mu2021_fig5_dcb_rates")
    if rates is None: pytest.skip("no Figure 5A table on the tiny study")
    for _, r in rates.iterrows():
        d = t[(t["cohort"] == r["cohort"]) & t["dls"].notna() & t["dcb"].notna() & (t["histology"] == r["histology"])]
        g = d[(d["dls"] >= cut) == (r["dls_group"] == "high")]
        assert r["n"] == len(g) and r["dcb"] == int(g["dcb"].sum())


def _code(t):
    "The candidates' codings, by hand: ADC, ECOG >= 1, male, numeric stage."
    t["adc"] = (t["histology"] == "ADC").astype(float); t["ecog_ge1"] = (t["ecog"] >= 1).astype(float)
    t["male"] = (t["sex"].str.lower() == "male").astype(float)
    t["stage_num"] = t["stage"].astype(str).str.upper().str.rstrip("ABC").map({"I": 1, "II": 2, "III": 3, "IV": 4})
    return t


def _model_covariates(run, ep):
    "The DLS model's covariates of endpoint `ep` as the models table gives them."
    coefs = _table(run, "mu2021_multivariable_models")
    return coefs[(coefs["endpoint"] == ep) & (coefs["model"] == "DLS + selected covariates")]["covariates"].iloc[0].split(" + ")


def test_multivariable_covariates_selected_by_univariable_p_against_statsmodels(mu_fixed):
    """Every candidate screened by an independent fit (statsmodels Logit for DCB, lifelines Cox for PFS/OS) on the
    retrospective cohort; the models hold the DLS and exactly the clinical candidates with p < 0.05 (the paper's rule).

    Reference: `statsmodels.api.Logit(y, add_constant(x)).fit().pvalues[x]`; `lifelines.CoxPHFitter().fit(...).summary.p`
    (R: `summary(glm(dcb ~ x, binomial))`, `summary(coxph(Surv(t, e) ~ x))`)."""
    import statsmodels.api as sm
    from lifelines import CoxPHFitter
    from pdl1_dls.papers.mu2021 import MV_CANDIDATES
    t, _ = _scored(mu_fixed)
    _code(t)
    c = _table(mu_fixed["run"], "mu2021_cindex")
    tr = t[t["cohort"] == c[c["role"] == "training"]["cohort"].iloc[0]]
    n_sel, cands = 0, [v for v in MV_CANDIDATES if v in tr and tr[v].notna().any()]   # SUVmax comes from the images: not here
    assert len(cands) >= 9
    for ep in ("DCB", "PFS", "OS"):
        p = {}
        for v in cands:
            if ep == "DCB":
                d = tr.dropna(subset=[v, "dcb"])
                p[v] = float(sm.Logit(d["dcb"].astype(int), sm.add_constant(d[[v]].astype(float))).fit(disp=0).pvalues[v])
            else:
                tc, ec = f"{ep.lower()}_months", f"{ep.lower()}_event"
                d = tr.dropna(subset=[v, tc, ec])
                p[v] = float(CoxPHFitter().fit(d[[v, tc, ec]].astype(float), tc, ec).summary.loc[v, "p"])
        want = ["dls"] + [v for v in cands if v != "dls" and p[v] < 0.05]
        assert _model_covariates(mu_fixed["run"], ep) == want, (ep, p)
        uni = _table(mu_fixed["run"], "mu2021_univariable").query("endpoint == @ep").set_index("variable")
        fin = [v for v in cands if np.isfinite(uni.loc[v, "p"])]        # NaN: no maximum-likelihood estimate, said
        assert all("separation" in str(uni.loc[v, "warning"]) for v in cands if v not in fin)
        assert len(fin) >= len(cands) - 1 and np.allclose(uni.loc[fin, "p"], [p[v] for v in fin], rtol=1e-3, atol=1e-6)
        n_sel += len(want) - 1
    assert n_sel > 0          # the synthetic outcomes depend on histology and ECOG: something clinical is selected


def test_multivariable_cindex_matches_sklearn_logistic(mu_fixed):
    "DCB model refitted by sklearn (unpenalised ML) on the retrospective cohort and applied unchanged: same C-indices."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from pdl1_dls.stats.survival import logistic
    st = {s["notebook"]: s for s in mu_fixed["result"]["notebooks"]}
    assert st["mu2021_11_multivariable"]["ok"], st["mu2021_11_multivariable"]["error"]
    t, _ = _scored(mu_fixed)
    c = _table(mu_fixed["run"], "mu2021_cindex")
    assert c is not None and (c["endpoint"] == "DCB").sum() == 3   # fitted on the retrospective cohort, applied to two
    _code(t)
    cols = _model_covariates(mu_fixed["run"], "DCB")
    train = c[c["role"] == "training"]["cohort"].iloc[0]
    tr = t[t["cohort"] == train].dropna(subset=cols + ["dcb"])
    assert not logistic(tr, "dcb", cols).separation          # identifiable: the maximum-likelihood estimate exists
    m = LogisticRegression(C=np.inf, max_iter=5000, tol=1e-10).fit(tr[cols], tr["dcb"].astype(int))
    for _, r in c[c["endpoint"] == "DCB"].iterrows():
        d = t[t["cohort"] == r["cohort"]].dropna(subset=cols + ["dcb"])
        assert r["n"] == len(d)
        assert r["c"] == pytest.approx(roc_auc_score(d["dcb"].astype(int), m.decision_function(d[cols])), abs=1e-6)


def test_separated_dcb_model_is_flagged_not_given_numbers(mu_separated):
    "A DLS that splits DCB perfectly on the fitting cohort: the model's DLS coefficient is infinite, said, and not applied."
    st = {s["notebook"]: s for s in mu_separated["result"]["notebooks"]}
    assert st["mu2021_11_multivariable"]["ok"], st["mu2021_11_multivariable"]["error"]
    coefs = _table(mu_separated["run"], "mu2021_multivariable_models")
    full = coefs[(coefs["endpoint"] == "DCB") & (coefs["model"] == "DLS + selected covariates")].set_index("term")
    assert np.isinf(full.loc["dls", "coef"]) and full.loc["dls", "coef"] > 0 and np.isnan(full.loc["dls", "se"])
    assert "separation" in full.loc["dls", "warning"]
    c = _table(mu_separated["run"], "mu2021_cindex")
    dcb = c[c["endpoint"] == "DCB"]
    assert len(dcb) == 3 and dcb["c"].isna().all() and dcb["warning"].str.contains("not estimable").all()
    assert c[c["endpoint"] != "DCB"]["c"].notna().all()                 # the Cox models are identifiable and applied
    uni = _table(mu_separated["run"], "mu2021_univariable")
    assert "separation" in uni[(uni["endpoint"] == "DCB") & (uni["variable"] == "dls")]["warning"].iloc[0]
    cal = _table(mu_separated["run"], "mu2021_calibration")   # no DCB model, no DCB calibration; the Cox models are calibrated
    assert cal is not None and "DCB" not in set(cal["endpoint"]) and {"PFS", "OS"} <= set(cal["endpoint"])


def test_multivariable_cox_cindex_by_brute_force(mu_fixed):
    "Cox model refitted with lifelines on the training cohort, applied unchanged; Harrell's C counted pair by pair."
    from lifelines import CoxPHFitter
    t, _ = _scored(mu_fixed)
    c = _table(mu_fixed["run"], "mu2021_cindex")
    assert c is not None and (c["endpoint"] == "PFS").any()
    _code(t)
    train = c[c["role"] == "training"]["cohort"].iloc[0]
    for ep in ("PFS", "OS"):
        cols = _model_covariates(mu_fixed["run"], ep)
        tc, ec = f"{ep.lower()}_months", f"{ep.lower()}_event"
        tr = t[t["cohort"] == train].dropna(subset=cols + [tc, ec])
        f = CoxPHFitter().fit(tr[cols + [tc, ec]], tc, ec)
        for _, r in c[c["endpoint"] == ep].iterrows():
            d = t[t["cohort"] == r["cohort"]].dropna(subset=cols + [tc, ec])
            lp = d[cols].to_numpy() @ f.params_[cols].to_numpy()
            T, E = d[tc].to_numpy(), d[ec].to_numpy()
            num = den = 0.0
            for i in range(len(T)):
                if not E[i]: continue
                later = T > T[i]
                den += later.sum(); num += (lp[i] > lp[later]).sum() + 0.5 * (lp[i] == lp[later]).sum()
            tied = pd.Series(T[E == 1]).duplicated().any() or np.isin(T[E == 1], T[E == 0]).any()
            assert r["c"] == pytest.approx(num / den, abs=0.02 if tied else 1e-4), (r["cohort"], ep)
            assert r["lo"] <= r["c"] <= r["hi"]


def test_fig2_clusters_and_rqs(mu_run):
    t, _ = _scored(mu_run)
    comp = _table(mu_run["run"], "mu2021_fig2e_clusters")
    with np.load(mu_run["run"] / "scores" / "hyper" / "features.npz") as z:
        feats = pd.DataFrame(z["features"], columns=[f"f{i:03d}" for i in range(z["features"].shape[1])])
        feats.insert(0, "patient_id", z["patient_id"].astype(str))
    pdl1_cohorts = t.loc[t["role"].isin(["train", "validation", "test"]), "patient_id"]
    assert comp["n"].sum() == feats["patient_id"].isin(pdl1_cohorts).sum()
    assert comp["cluster"].nunique() <= 4
    rqs = _table(mu_run["run"], "mu2021_rqs")
    ck = yaml.safe_load((REPO / "pdl1_dls" / "data" / "rqs_checklist.yaml").read_text())
    # the tiny study's manifest has no `rqs:` checklist: only the pipeline items are scored, the study items not assessed
    assert int(rqs.loc[rqs["item"] == "Total", "points"].iloc[0]) == sum(int(i["answer"]) for i in ck["items"] if i["scope"] == "pipeline")
    study_items = {int(i["id"]) for i in ck["items"] if i["scope"] == "study"}
    nr = rqs[rqs["id"].isin(study_items)]
    assert len(nr) == len(study_items) >= 10 and (nr["points"] == 0).all() and nr["justification"].str.startswith("not assessed").all()

# The full (non-quick) demo reproduction of every notebook, with its timing, is the slow test in
# tests/test_reproduce_mu2021.py (test_full_demo_reproduction).


def test_computable_keys_are_recorded(mu_run):
    "Every published key of notebooks 06-12 that the tiny study can give is recorded (finite, or with the notebook's reason)."
    from test_report import assert_keys_recorded
    from pdl1_dls.manifest import load_study
    assert assert_keys_recorded(mu_run["run"], load_study(mu_run["manifest"]), mu_run["result"]["notebooks"]) >= 50
