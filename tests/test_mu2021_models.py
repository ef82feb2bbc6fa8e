"""Mu 2021 model building as the paper does it, on the small synthetic PET/CT study with a DLS drawn from the latent
truth (no training, every number fixed): the advanced-stage subgroup AUC, the stepwise linear regression of the DLS
on the metadata, each checked against an independent computation (a DeLong variance written out pair by pair,
statsmodels OLS)."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    "The small synthetic study's clinical tables as a manifest (empty image files) and a run folder with a DLS from the truth."
    from pdl1_dls.analysis import training_cutoff
    from pdl1_dls.manifest import load_study
    from pdl1_dls.papers import mu2021
    from pdl1_dls.synth import _manifest, _study_tables
    root = tmp_path_factory.mktemp("mu2021_models")
    clin, truth, _ = _study_tables("petct", "small", 0)
    clin["suvmax"] = truth.set_index("patient_id").loc[clin["patient_id"], "suv_peak"].to_numpy()   # measured from the images in a run: here the truth's
    clin.to_csv(root / "clinical.csv", index=False)
    m = _manifest("petct", "small", 0)
    for k in ("synthetic", "checksums"): m.pop(k)
    m["images"] = {k: v for k, v in m["images"].items() if k in ("pet", "ct", "roi")}
    for pid in clin["patient_id"]:
        (root / "images" / pid).mkdir(parents=True)
        for k in m["images"]: (root / "images" / pid / f"{k}.nii.gz").touch()
    (root / "study.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    z = truth.set_index("patient_id").loc[clin["patient_id"], "z"].to_numpy()
    rng = np.random.default_rng(7)
    sc = pd.DataFrame({"patient_id": clin["patient_id"], "cohort": clin["cohort"], "role": "",
                       "dls": 1 / (1 + np.exp(-(1.5 * z + rng.normal(0, 1, len(z)))))})
    out = root / "run"; out.mkdir()
    sc.to_csv(out / "scores.csv", index=False)
    t = load_study(root / "study.yaml").table().merge(sc[["patient_id", "dls"]], on="patient_id")
    (out / "scores.json").write_text(json.dumps({"cutoff": training_cutoff(t, "pdl1", "dls")}))
    return mu2021.load(root / "study.yaml", out)


def _delong_by_pairs(y, s):
    "AUC and its DeLong (1988) variance from the pair kernel psi(x_pos, x_neg), written out as a matrix (no midranks)."
    y, s = np.asarray(y, int), np.asarray(s, float)
    x, w = s[y == 1], s[y == 0]
    psi = (x[:, None] > w[None, :]) + 0.5 * (x[:, None] == w[None, :])
    a = psi.mean()
    v10, v01 = psi.mean(1), psi.mean(0)                       # structural components
    var = v10.var(ddof=1) / len(x) + v01.var(ddof=1) / len(w)
    return a, var


def test_advanced_stage_subgroup_auc_against_independent_delong(run):
    """The SPH advanced-stage (III-IV) subgroup AUC (the paper: 0.90, 0.85-0.97, p < 0.001): the DLS's AUC among the
    pooled SPH training + validation patients with stage III or IV, its DeLong CI and the z-test p against 0.5.

    Reference (R): `r <- roc(pdl1 ~ dls, data = subset(sph, stage %in% c("III", "IV")), direction = "<");
    ci.auc(r, method = "delong")`; here the same from the pair kernel by hand and `sklearn.metrics.roc_auc_score`."""
    from sklearn.metrics import roc_auc_score
    from pdl1_dls.papers import mu2021
    sg = mu2021.subgroups(run)
    row = sg[sg["subgroup"] == "advanced (III-IV)"].iloc[0]
    t = run.t
    d = t[t["cohort"].isin(["sph_train", "sph_val"]) & t["pdl1"].notna() & t["stage"].isin(["III", "IV"])]
    assert 0 < len(d) < (t["cohort"].isin(["sph_train", "sph_val"]) & t["pdl1"].notna()).sum()   # a real subset
    assert row["n"] == len(d) and row["n_pos"] == int(d["pdl1"].sum())
    a, var = _delong_by_pairs(d["pdl1"], d["dls"])
    se = np.sqrt(var)
    assert row["auc"] == pytest.approx(roc_auc_score(d["pdl1"].astype(int), d["dls"]), abs=1e-12) == pytest.approx(a, abs=1e-12)
    assert row["lo"] == pytest.approx(max(0.0, a - st.norm.ppf(0.975) * se), abs=1e-9)
    assert row["hi"] == pytest.approx(min(1.0, a + st.norm.ppf(0.975) * se), abs=1e-9)
    assert row["p_vs_0_5"] == pytest.approx(2 * st.norm.sf(abs(a - 0.5) / se), rel=1e-6)
    cmp = pd.read_csv(run.out_dir / "comparisons.csv").set_index("key")
    assert cmp.loc["dls_auc_advanced.sph", "reproduced"] == pytest.approx(a, abs=1e-9)
    assert cmp.loc["dls_auc_advanced_p.sph", "reproduced"] == pytest.approx(row["p_vs_0_5"], rel=1e-6)


def test_stepwise_ols_against_statsmodels(run):
    """The multivariable linear regression of the DLS on the metadata (the paper: only SUVmax retained, adjusted R2 0.15,
    F 15.31, SUVmax p = 0.005) by SPSS stepwise (PIN 0.05, POUT 0.10): the selected model refitted by statsmodels on the
    raw variables gives the recorded F, adjusted R2 and coefficient p; every left-out candidate would enter with p >= 0.05
    and every kept one has p <= 0.10.

    Reference: `statsmodels.api.OLS(dls, add_constant(X[selected])).fit()` (R: `summary(lm(dls ~ ., X[selected]))`)."""
    import statsmodels.api as sm
    from pdl1_dls.papers import mu2021
    t, groups = mu2021.association_data(run)
    tab = mu2021.assoc_ols(run, t, groups)
    cmp = pd.read_csv(run.out_dir / "comparisons.csv").set_index("key")
    checked = 0
    for g, cohorts in groups.items():
        o = tab[tab["group"] == g]
        cand = list(o["term"])
        d = t[t["cohort"].isin(cohorts)].dropna(subset=[c for c in mu2021.OLS_COV if c in t] + ["dls"])
        sel = list(o.loc[o["selected"], "term"])
        for v in set(cand) - set(sel):
            assert sm.OLS(d["dls"], sm.add_constant(d[sel + [v]].astype(float))).fit().pvalues[v] >= 0.05, (g, v)
        if not sel:
            assert np.isnan(cmp.loc[f"ols_f.{g}", "reproduced"]) if f"ols_f.{g}" in cmp.index else True
            continue
        raw = sm.OLS(d["dls"], sm.add_constant(d[sel].astype(float))).fit()
        assert (raw.pvalues[sel] <= 0.10).all()
        if g == "mcc_pdl1":     # the paper publishes the MCC PD-L1 group's numbers
            assert cmp.loc[f"ols_f.{g}", "reproduced"] == pytest.approx(raw.fvalue, rel=1e-9)
            assert cmp.loc[f"ols_adj_r2.{g}", "reproduced"] == pytest.approx(raw.rsquared_adj, rel=1e-9)
            if "suvmax" in sel:
                assert cmp.loc[f"ols_coef_suvmax_p.{g}", "reproduced"] == pytest.approx(raw.pvalues["suvmax"], rel=1e-9)
                zb = raw.params["suvmax"] * d["suvmax"].std() / d["dls"].std()      # the standardised beta
                assert cmp.loc[f"ols_coef_suvmax.{g}", "reproduced"] == pytest.approx(zb, rel=1e-9)
            checked += 1
    assert checked == 1 and tab["selected"].any()


def test_stepwise_removes_a_variable_that_loses_significance():
    """SPSS stepwise removes an entered variable whose p rises above POUT once others enter: x1 enters first (it
    carries y through its correlation with x2 and x3), then x2 and x3 enter and x1, now redundant, is removed.
    Checked step by step with statsmodels."""
    import statsmodels.api as sm
    from pdl1_dls.papers.mu2021 import stepwise_ols
    rng = np.random.default_rng(0)
    n = 400
    x2, x3 = rng.normal(size=n), rng.normal(size=n)
    x1 = x2 + x3 + rng.normal(0, 1, n)          # a noisy proxy of x2 + x3
    d = pd.DataFrame(dict(x1=x1, x2=x2, x3=x3, x4=rng.normal(size=n)))
    d["y"] = x2 + x3 + rng.normal(0, 1.5, n)
    sw = stepwise_ols(d, "y", ["x1", "x2", "x3", "x4"])
    acts = list(zip(sw.steps["action"], sw.steps["variable"]))
    assert acts[0] == ("enter", "x1") and ("remove", "x1") in acts and sorted(sw.selected) == ["x2", "x3"]
    first = {v: sm.OLS(d["y"], sm.add_constant(d[[v]])).fit().pvalues[v] for v in ["x1", "x2", "x3", "x4"]}
    assert min(first, key=first.get) == "x1" and sw.steps["p"].iloc[0] == pytest.approx(first["x1"], rel=1e-9)
    full = sm.OLS(d["y"], sm.add_constant(d[["x1", "x2", "x3"]])).fit()
    assert full.pvalues["x1"] > 0.10
