"stats.survival: R survival's published values on lung and veteran, brute-force and lifelines checks, bad input."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_lung

from pdl1_dls.stats import survival as sv

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def lung():
    d = load_lung()
    # lifelines' copy recodes R's status 1/2 to 0/1 and keeps sex 1 = male, 2 = female
    assert set(d.status.unique()) == {0, 1} and set(d.sex.unique()) == {1, 2} and d.status.sum() == 165
    return d


@pytest.fixture(scope="module")
def veteran():
    v = pd.read_csv(HERE / "data" / "veteran.csv", comment="#")
    assert len(v) == 137 and v.status.sum() == 128
    v["celltype"] = pd.Categorical(v.celltype, categories=["squamous", "smallcell", "adeno", "large"])
    return v


def test_km_medians_equal_r_survfit(lung):
    # R: survfit(Surv(time, status) ~ sex, lung): 270 (212, 310) and 426 (348, 550)
    for sex, exp in ((1, (270, 212, 310)), (2, (426, 348, 550))):
        m = sv.km_median(lung.time[lung.sex == sex], lung.status[lung.sex == sex])
        assert (m.median, m.lo, m.hi) == exp


def test_km_curve_equals_lifelines_and_greenwood(lung):
    from lifelines import KaplanMeierFitter
    k = sv.kaplan_meier(lung.time, lung.status)
    f = KaplanMeierFitter().fit(lung.time, lung.status)
    s = f.survival_function_.iloc[:, 0].reindex(k.table.time)
    assert np.allclose(k.table.surv, s.to_numpy(), atol=1e-12)
    # log CI brackets the estimate and narrows with n at risk
    t = k.table[k.table.surv > 0]
    assert ((t.lower <= t.surv) & (t.surv <= t.upper)).all()


def test_km_median_midpoint_rule_and_not_reached():
    # the curve is exactly 0.5 between t=2 and t=4: R takes the midpoint 3
    m = sv.km_median([1, 2, 4, 5], [1, 1, 1, 1])
    assert m.median == 3.0
    m = sv.km_median([1, 2, 3, 4, 5, 6], [1, 0, 0, 0, 0, 0])
    assert m.median == np.inf


def test_logrank_equals_r_survdiff(lung):
    r = sv.logrank(lung.time, lung.status, lung.sex)
    assert abs(r.chi2 - 10.3267) < 5e-5 and r.df == 1 and abs(r.p - 0.00131) < 5e-6
    assert r.table.observed.sum() == 165


def test_logrank_k_groups_equals_lifelines(lung):
    from lifelines.statistics import multivariate_logrank_test
    d = lung.dropna(subset=["ph.ecog"])
    r = sv.logrank(d.time, d.status, d["ph.ecog"])
    ref = multivariate_logrank_test(d.time, d["ph.ecog"], d.status)
    assert r.df == 3 and abs(r.chi2 - ref.test_statistic) < 1e-8


def test_cox_equals_r_coxph_lung(lung):
    r = sv.cox(lung, "time", "status", ["age", "sex", "ph.ecog"], missing="drop")
    assert np.allclose(r.table.coef, [0.011067, -0.552612, 0.463728], atol=1e-4, rtol=0)
    assert r.n == 227 and r.n_dropped == 1 and r.events == 164
    assert abs(r.concordance.c - 0.6371) < 5e-5          # R prints 0.6371 (se = 0.02507)
    assert abs(r.concordance.se - 0.02507) < 5e-6
    assert np.allclose(r.table.hr, np.exp(r.table.coef))


def test_cox_refuses_missing_by_default(lung):
    with pytest.raises(ValueError, match="missing"):
        sv.cox(lung, "time", "status", ["ph.ecog"])


def test_cox_equals_r_coxph_veteran(veteran):
    r = sv.cox(veteran, "time", "status", ["trt", "celltype", "karno", "diagtime", "age", "prior"])
    assert abs(r.concordance.c - 0.736) < 5e-4            # R: Concordance = 0.736 (se = 0.021)
    assert abs(r.concordance.se - 0.021) < 5e-4
    # R coxph: trt 0.2946, celltype smallcell 0.8616, adeno 1.1961, large 0.4013, karno -0.03282
    exp = {"trt": 0.2946, "celltype=smallcell": 0.8616, "celltype=adeno": 1.1961, "celltype=large": 0.4013,
           "karno": -0.03282}
    for k, v in exp.items():
        assert abs(r.table.loc[k, "coef"] - v) < 1e-4


def _brute(t, e, r):
    conc = disc = tie = 0
    for i in range(len(t)):
        if not e[i]: continue
        for j in range(len(t)):
            if t[j] > t[i] or (t[j] == t[i] and not e[j]):
                if r[i] > r[j]: conc += 1
                elif r[i] < r[j]: disc += 1
                else: tie += 1
    return conc, disc, tie


@pytest.mark.parametrize("seed", range(6))
def test_harrell_c_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 150))
    t = rng.integers(1, 10, n).astype(float); e = rng.integers(0, 2, n); e[0] = 1
    r = rng.integers(0, 5, n).astype(float); r[:2] = [0, 4]
    conc, disc, tie = _brute(t, e, r)
    if conc + disc + tie == 0: pytest.skip("no comparable pair drawn")
    h = sv.harrell_c(t, e, r)
    assert (h.concordant, h.discordant, h.tied_risk) == (conc, disc, tie)
    assert abs(h.c - (conc + tie / 2) / (conc + disc + tie)) < 1e-12


def test_harrell_c_ij_se_equals_numerical_derivative():
    "The IJ variance is the sum of squared derivatives of C with respect to case weights: check by finite differences."
    rng = np.random.default_rng(9)
    n = 40
    t = rng.integers(1, 12, n).astype(float); e = rng.integers(0, 2, n); r = np.round(rng.normal(size=n), 1)

    def wc(w):
        num = den = 0.0
        for i in range(n):
            if not e[i]: continue
            for j in range(n):
                if t[j] > t[i] or (t[j] == t[i] and not e[j]):
                    den += w[i] * w[j]; num += w[i] * w[j] * (1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0)
        return num / den

    w0 = np.ones(n); c0 = wc(w0); eps = 1e-6
    grad = np.array([(wc(w0 + eps * np.eye(n)[k]) - c0) / eps for k in range(n)])
    assert abs(sv.harrell_c(t, e, r).se - np.sqrt((grad ** 2).sum())) < 1e-5


def test_harrell_c_agrees_with_lifelines_without_ties():
    from lifelines.utils import concordance_index
    rng = np.random.default_rng(3)
    t = rng.exponential(size=3000); e = rng.integers(0, 2, 3000); r = rng.normal(size=3000) - t
    assert abs(sv.harrell_c(t, e, r).c - concordance_index(t, -r, e)) < 1e-12


def test_compare_c(lung):
    d = lung.dropna(subset=["ph.ecog"])
    same = sv.compare_c(d.time, d.status, d["ph.ecog"], d["ph.ecog"] * 2)
    assert same.diff == 0 and same.se == 0 and same.p == 1
    c = sv.compare_c(d.time, d.status, d["ph.ecog"], d.age)
    assert abs(c.c_a - sv.harrell_c(d.time, d.status, d["ph.ecog"]).c) < 1e-12
    assert c.lo < c.diff < c.hi and 0 < c.p < 1


def test_hr_difference(lung):
    d = lung.dropna(subset=["ph.ecog"]).assign(female=lambda x: (x.sex == 2).astype(int),
                                                good=lambda x: (x["ph.ecog"] <= 1).astype(int))
    ref_a = sv.cox(d, "time", "status", ["female"]).table.hr.iloc[0]
    ref_b = sv.cox(d, "time", "status", ["good"]).table.hr.iloc[0]
    h = sv.hr_difference(d, "time", "status", "female", "good", n_boot=300, seed=1)
    assert abs(h.hr_a - ref_a) < 1e-6 and abs(h.hr_b - ref_b) < 1e-6
    assert h.diff_lo <= h.diff <= h.diff_hi and 0 <= h.abs_lo <= h.abs_hi
    assert h == sv.hr_difference(d, "time", "status", "female", "good", n_boot=300, seed=1)


def test_logistic_equals_statsmodels_glm(lung):
    import statsmodels.api as sm
    d = lung.dropna(subset=["ph.ecog"]).assign(y=lambda x: (x.time > 365).astype(int))
    r = sv.logistic(d, "y", ["age", "ph.ecog"])
    g = sm.GLM(d.y, sm.add_constant(d[["age", "ph.ecog"]]), family=sm.families.Binomial()).fit()
    assert np.allclose(r.table.coef, g.params, atol=1e-6)
    lo = np.exp(g.conf_int()[0])
    assert np.allclose(r.table.or_lo, lo, atol=1e-6)
    assert 0.5 < r.auc.auc < 1
    u = sv.logistic_univariable(d, "y", ["age", "ph.ecog"])
    assert list(u.index) == ["age", "ph.ecog"] and (u.n == len(d)).all()


@pytest.mark.parametrize("call,match", [
    (lambda: sv.km_median([1, 2, np.nan], [1, 0, 1]), "NaN"),
    (lambda: sv.km_median([1, 2, 3], [1, 0]), "mismatched lengths"),
    (lambda: sv.logrank([1, 2, 3, 4], [0, 0, 0, 0], [0, 0, 1, 1]), "censored"),
    (lambda: sv.logrank([1, 2, 3, 4], [1, 0, 1, 0], [0, 0, 0, 0]), "single value"),
    (lambda: sv.harrell_c([1, 2, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4]), "censored"),
    (lambda: sv.harrell_c([1, 2, 3, 4], [1, 0, 1, 0], [5, 5, 5, 5]), "constant"),
    (lambda: sv.harrell_c([1, 2, 3, 4], [1, 0, 1, 0], [5, np.nan, 5, 5]), "NaN"),
    (lambda: sv.harrell_c([1, 2, 3], [1, 0, 1, 0], [5, 3, 5, 5]), "mismatched lengths"),
    (lambda: sv.km_median([1, -2, 3], [1, 0, 1]), "negative"),
    (lambda: sv.km_median([1, 2, 3], [1, 2, 1]), "0/1"),
])
def test_bad_input_raises_clear_valueerror(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cox_bad_input():
    df = pd.DataFrame({"t": [1, 2, 3, 4.0], "e": [0, 0, 0, 0], "x": [1, 2, 3, 4.0], "c": [1, 1, 1, 1.0]})
    with pytest.raises(ValueError, match="censored"):
        sv.cox(df, "t", "e", ["x"])
    with pytest.raises(ValueError, match="constant"):
        sv.cox(df.assign(e=[1, 0, 1, 1]), "t", "e", ["c"])
    with pytest.raises(ValueError, match="not in the data frame"):
        sv.cox(df, "t", "e", ["nope"])
