"stats.survival: R survival's values on lung and veteran, R glm/pROC on tests/data, brute-force and lifelines checks, separation, bad input."
import warnings
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
    # R 4.2.2: quantile(survfit(Surv(c(1, 2, 3, 4), c(1, 1, 0, 0)) ~ 1), 0.5) gives 3 (1, NA); print() gives 2 (1, NA):
    # a curve that ends flat at 0.5 is the one case where print and quantile differ; km_median follows quantile
    m = sv.km_median([1, 2, 3, 4], [1, 1, 0, 0])
    assert (m.median, m.lo, m.hi) == (3.0, 1.0, np.inf)
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


# R 4.2.2, survival 3.5: for (ct in c("log", "log-log", "plain")) {
#   f <- survfit(Surv(time, status) ~ 1, lung, conf.type = ct); print(f)
#   s <- summary(f, times = c(5, 60, 180, 365, 730, 1000)); print(cbind(s$time, s$surv, s$lower, s$upper)) }
R_LUNG_KM = {
    "log": ((310, 285, 363), [(0.9870734167405145, 1.000000000000000), (0.8919624428310942, 0.960171140342321),
                              (0.6655423071305964, 0.782532569925231), (0.3447215817958266, 0.485837603547281),
                              (0.0716318249617963, 0.186856791819807), (0.0206854601989800, 0.122534195516598)]),
    "log-log": ((310, 284, 361), [(0.9692770362188886, 0.999381011438739), (0.8827962797453951, 0.952976352413237),
                                  (0.6583045284456613, 0.775314690716979), (0.3387142690883233, 0.478380767646914),
                                  (0.0676321514888291, 0.177825199700288), (0.0178661710928527, 0.108662176030919)]),
    "plain": ((310, 284, 361), [(0.98703657414630896, 1.0000000000000000), (0.89134196240886354, 0.9595352305735926),
                                (0.66323938495923207, 0.7801019218602919), (0.33902858384767609, 0.4794546650724527),
                                (0.06022965077445053, 0.1711565459146279), (0.00556421507827679, 0.0951269210633441)]),
}
R_LUNG_SURV = [0.9956140350877193, 0.9254385964912281, 0.7216706534097620, 0.4092416244600644, 0.1156930983445392,
               0.0503455680708105]


@pytest.mark.parametrize("conf_type", ["log", "log-log", "plain"])
def test_km_conf_types_against_R(lung, conf_type):
    """Curve CI and median CI for survfit's conf.type = "log" (default), "log-log" and "plain" on lung.

    R 4.2.2, survival 3.5 (values in R_LUNG_KM above):
        f <- survfit(Surv(time, status) ~ 1, lung, conf.type = ct); print(f)
            log:      n 228 events 165 median 310 0.95LCL 285 0.95UCL 363
            log-log:  median 310 0.95LCL 284 0.95UCL 361
            plain:    median 310 0.95LCL 284 0.95UCL 361
        summary(f, times = c(5, 60, 180, 365, 730, 1000))   # surv, lower, upper at those times
        print(survfit(Surv(time, status) ~ sex, lung, conf.type = ct))
            log-log:  sex=1 270 (210, 306)   sex=2 426 (345, 524)
            plain:    sex=1 270 (212, 306)   sex=2 426 (345, 524)
        quantile(f, 0.5) gives the same median and CI as print(f) for all three.
    """
    (med, lo, hi), band = R_LUNG_KM[conf_type]
    k = sv.kaplan_meier(lung.time, lung.status, conf_type=conf_type)
    assert (k.median, k.lo, k.hi) == (med, lo, hi) and k.conf_type == conf_type
    tab = k.table
    for tm, s, (l, u) in zip([5, 60, 180, 365, 730, 1000], R_LUNG_SURV, band):
        row = tab[tab.time <= tm].iloc[-1]                      # summary(times=): the step at or before tm
        assert abs(row.surv - s) < 1e-12
        assert abs(row.lower - l) < 1e-12 and abs(row.upper - u) < 1e-12
    m = sv.km_median(lung.time, lung.status, conf_type=conf_type)
    assert (m.median, m.lo, m.hi) == (med, lo, hi)
    by_sex = {"log": ((270, 212, 310), (426, 348, 550)), "log-log": ((270, 210, 306), (426, 345, 524)),
              "plain": ((270, 212, 306), (426, 345, 524))}[conf_type]
    for sex, exp in zip((1, 2), by_sex):
        m = sv.km_median(lung.time[lung.sex == sex], lung.status[lung.sex == sex], conf_type=conf_type)
        assert (m.median, m.lo, m.hi) == exp


def test_km_conf_types_undefined_ends_against_R():
    """Where R gives NA: log-log at S = 1 (before the first event), every type at S = 0; an upper CI never reached.

    R 4.2.2, survival 3.5:
        f <- survfit(Surv(c(1, 2, 3, 4, 5, 6), c(0, 1, 1, 0, 1, 0)) ~ 1, conf.type = ct)
        cbind(f$time, f$surv, f$lower, f$upper)
            log:     1 1.0 1.0000000000000000 1 | 2 0.8 0.5161257603421721 1 | 3 0.6 0.2933164316383264 1 | 5 0.3 0.0630544842551363 1
            log-log: 1 1.0 NA NA | 2 0.8 0.2038092632676393 0.969179788866743 | 3 0.6 0.1257301829944314 0.881756407393532
                     5 0.3 0.0123015294254161 0.719218020810415
            plain:   1 1.0 1 1 | 2 0.8 0.449390983769367 1 | 3 0.6 0.170593405507882 1 | 5 0.3 0 0.767934987770273
        print(f): median 5, 0.95LCL 3 (log) / 2 (log-log, plain), 0.95UCL NA
        v <- read.csv("veteran.csv", comment.char = "#"); f <- survfit(Surv(time, status) ~ 1, v, conf.type = ct)
            median 80, CI (52, 105) log / (52, 100) log-log / (52, 103) plain
            time 991: surv 0.00900451067607879, lower/upper 0.00128542677969684/0.0630772703636526 (log),
                      0.000808293847055193/0.0443550963879467 (log-log), 0/0.0265330049701168 (plain)
            time 999: surv 0, se Inf, lower/upper NA (log, log-log), NaN (plain)
    """
    t, e = [1, 2, 3, 4, 5, 6], [0, 1, 1, 0, 1, 0]
    exp = {"log": ([1.0, 0.5161257603421721, 0.2933164316383264, 0.0630544842551363], [1, 1, 1, 1], 3),
           "log-log": ([np.nan, 0.2038092632676393, 0.1257301829944314, 0.0123015294254161],
                       [np.nan, 0.969179788866743, 0.881756407393532, 0.719218020810415], 2),
           "plain": ([1.0, 0.449390983769367, 0.170593405507882, 0.0], [1, 1, 1, 0.767934987770273], 2)}
    for ct, (lo, hi, lcl) in exp.items():
        k = sv.kaplan_meier(t, e, conf_type=ct)
        tab = k.table.set_index("time").loc[[1, 2, 3, 5]]
        assert np.allclose(tab.lower, lo, atol=1e-12, rtol=0, equal_nan=True)
        assert np.allclose(tab.upper, hi, atol=1e-12, rtol=0, equal_nan=True)
        assert (k.median, k.lo, k.hi) == (5, lcl, np.inf)
    v = pd.read_csv(HERE / "data" / "veteran.csv", comment="#")
    vexp = {"log": ((52, 105), (0.00128542677969684, 0.0630772703636526)),
            "log-log": ((52, 100), (0.000808293847055193, 0.0443550963879467)),
            "plain": ((52, 103), (0.0, 0.0265330049701168))}
    for ct, ((lcl, ucl), (l991, u991)) in vexp.items():
        k = sv.kaplan_meier(v.time, v.status, conf_type=ct)
        assert (k.median, k.lo, k.hi) == (80, lcl, ucl)
        tab = k.table.set_index("time")
        assert abs(tab.loc[991, "surv"] - 0.00900451067607879) < 1e-15
        assert abs(tab.loc[991, "lower"] - l991) < 1e-12 and abs(tab.loc[991, "upper"] - u991) < 1e-12
        assert tab.loc[999, "surv"] == 0 and np.isnan(tab.loc[999, ["lower", "upper"]].astype(float)).all()
    with pytest.raises(ValueError, match="conf_type"):
        sv.kaplan_meier(t, e, conf_type="logit")


@pytest.fixture(scope="module")
def ties():
    return pd.read_csv(HERE / "data" / "logistic_ties.csv", comment="#")


def test_logistic_ties_against_R(ties):
    """Coefficients, Wald CIs and the AUC of the linear predictor, with many patients sharing identical covariates.

    R 4.2.2, pROC 1.18.0, on tests/data/logistic_ties.csv (96 patients, 35 distinct covariate rows):
        d <- read.csv("logistic_ties.csv", comment.char = "#"); options(digits = 15)
        f <- glm(y ~ sex + grade + smoker + age10, binomial, d, control = glm.control(epsilon = 1e-14, maxit = 100))
        coef(summary(f))
                      Estimate           Std. Error        Pr(>|z|)
            (Intercept) -6.110518360869513 2.079637308560993 0.00330058435864012
            sex          0.968994105718179 0.477753272083910 0.04253665414698198
            grade        0.931166625567811 0.311387783475476 0.00278634023996195
            smoker      -0.801772385048918 0.479202578805743 0.09429999236309192
            age10        0.764867785858123 0.301904394663808 0.01129372094329096
        confint.default(f)["sex", ]   0.0326148989375508 1.905373312498808
        auc(d$y, predict(f), levels = c(0, 1), direction = "<")       0.77007459412
        ci.auc(d$y, predict(f), levels = c(0, 1), direction = "<", method = "delong")   0.674302438363-0.865846749877
        for (v in c("sex", "grade", "smoker", "age10")) { g <- glm(reformulate(v, "y"), binomial, d)
          cat(v, coef(g)[2], exp(coef(g)[2]), exp(confint.default(g)[2, ]), coef(summary(g))[2, 4],
              auc(d$y, predict(g), levels = c(0, 1), direction = "<"), "\n") }
            sex    0.889857474805999 2.43478260869565 1.06203020548381 5.58191878253237 0.0355415030086581 0.608600263273366
            grade  0.844791498918921 2.32749247927739 1.35106947993162 4.00958005606565 0.00233249065409591 0.675515577007459
            smoker -0.813396308711523 0.443349753694581 0.193682113510224 1.0148536720231 0.0542208181556293 0.599166301009215
            age10  0.493597190829012 1.63819854647435 0.993688188669065 2.70074104560425 0.0529730934743138 0.608819657744625
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # no separation, no convergence warning
        r = sv.logistic(ties, "y", ["sex", "grade", "smoker", "age10"])
    t = r.table
    assert np.allclose(t.coef, [-6.110518360869513, 0.968994105718179, 0.931166625567811, -0.801772385048918,
                                0.764867785858123], atol=1e-6, rtol=0)
    assert np.allclose(t.se, [2.079637308560993, 0.477753272083910, 0.311387783475476, 0.479202578805743,
                              0.301904394663808], atol=1e-6, rtol=0)
    assert np.allclose(t.p, [0.00330058435864012, 0.04253665414698198, 0.00278634023996195, 0.09429999236309192,
                             0.01129372094329096], atol=1e-7, rtol=0)
    assert np.allclose(np.log([t.loc["sex", "or_lo"], t.loc["sex", "or_hi"]]), [0.0326148989375508, 1.905373312498808],
                       atol=1e-6, rtol=0)
    assert abs(r.auc.auc - 0.770074594120228) < 1e-12
    assert abs(r.auc.lo - 0.674302438363) < 1e-9 and abs(r.auc.hi - 0.865846749877) < 1e-9
    assert r.separation == () and r.converged and r.warning == "" and (t.warning == "").all()
    u = sv.logistic_univariable(ties, "y", ["sex", "grade", "smoker", "age10"])
    R = {"sex": (0.889857474805999, 1.06203020548381, 5.58191878253237, 0.0355415030086581, 0.608600263273366),
         "grade": (0.844791498918921, 1.35106947993162, 4.00958005606565, 0.00233249065409591, 0.675515577007459),
         "smoker": (-0.813396308711523, 0.193682113510224, 1.0148536720231, 0.0542208181556293, 0.599166301009215),
         "age10": (0.493597190829012, 0.993688188669065, 2.70074104560425, 0.0529730934743138, 0.608819657744625)}
    for v, (b, lo, hi, pv, a) in R.items():
        row = u.loc[v]
        assert abs(row.coef - b) < 1e-6 and abs(row.or_lo - lo) < 1e-6 and abs(row.or_hi - hi) < 1e-6
        assert abs(row.p - pv) < 1e-7 and abs(row.auc - a) < 1e-12 and row.warning == ""
    assert list(u.columns)[-1] == "warning"


def test_linear_predictor_keeps_identical_rows_tied():
    "X·b by BLAS can differ in the last bit between identical rows; the model's predictor is computed per distinct row."
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = int(rng.integers(2, 9)); n = int(rng.integers(5, 300))
        u = rng.normal(size=(7, p)) * rng.choice([1, 100, 1e-3], size=p)
        X = u[rng.integers(0, 7, n)]; b = rng.normal(size=p)
        lp = sv.linear_predictor(X, b)
        _, inv = np.unique(X, axis=0, return_inverse=True)
        for k in np.unique(inv):
            assert len(np.unique(lp[np.ravel(inv) == k])) == 1
        assert np.allclose(lp, X @ b, rtol=1e-14, atol=0)


def test_logistic_quasi_separation_against_R(ties):
    """A quasi-separating covariate: warning, +inf estimate, no AUC; the finite estimates equal R glm's.

    R 4.2.2 on tests/data/logistic_ties.csv with every grade-3 patient made positive:
        d$g3 <- as.integer(d$grade == 3); d$y[d$g3 == 1] <- 1
        coef(summary(glm(y ~ sex + g3, binomial, d)))
                      Estimate   Std. Error    z value   Pr(>|z|)
            (Intercept) -0.5389965    0.3362964 -1.6027426 0.10899149
            sex          0.9444616    0.5019802  1.8814719 0.05990776
            g3          18.6559382 1200.6960417  0.0155376 0.98760329     <- not a number: the MLE is +inf
        (the Konis LP in R finds g3 alone infinite: see test_stats_roc.test_separation_against_R_lp)
    """
    d = ties.assign(g3=(ties.grade == 3).astype(int)); d.loc[d.g3 == 1, "y"] = 1
    with pytest.warns(sv.SeparationWarning, match="g3"):
        r = sv.logistic(d, "y", ["sex", "g3"])
    t = r.table
    assert r.separation == ("g3",) and r.auc is None and "quasi-complete" in r.warning
    assert t.loc["g3", "coef"] == np.inf and t.loc["g3", "or"] == np.inf
    assert np.isnan(t.loc["g3", ["se", "or_lo", "or_hi", "z", "p"]].astype(float)).all()
    assert "infinite" in t.loc["g3", "warning"] and "conditional" in t.loc["sex", "warning"]
    assert abs(t.loc["const", "coef"] + 0.5389965) < 1e-6 and abs(t.loc["sex", "coef"] - 0.9444616) < 1e-6
    assert abs(t.loc["sex", "se"] - 0.5019802) < 1e-6
    with pytest.warns(sv.SeparationWarning):
        u = sv.logistic_univariable(d, "y", ["sex", "g3"])
    assert u.loc["sex", "warning"] == "" and np.isfinite(u.loc["sex", "auc"])
    assert u.loc["g3", "coef"] == np.inf and np.isnan(u.loc["g3", "auc"]) and "infinite" in u.loc["g3", "warning"]


def test_logistic_complete_separation():
    d = pd.DataFrame({"y": [0, 0, 0, 1, 1, 1, 0, 1], "x": [1, 2, 3, 4, 5, 6, 2.5, 7], "z": [0, 1, 0, 1, 0, 1, 1, 0]})
    with pytest.warns(sv.SeparationWarning, match="complete separation") as w:
        r = sv.logistic(d, "y", ["x", "z"])
    assert "x" in r.separation and r.table.loc["x", "coef"] == np.inf and r.table.loc["const", "coef"] == -np.inf
    assert r.auc is None and not np.isfinite(r.table.loc["x", "or_lo"])
    # a categorical covariate whose one level separates
    d2 = pd.DataFrame({"y": [0, 1, 0, 1, 1, 1, 0, 1, 0], "h": list("AAABBBCCC")})
    with pytest.warns(sv.SeparationWarning):
        r2 = sv.logistic(d2, "y", ["h"])
    assert r2.separation == ("h=B",) and r2.table.loc["h=B", "coef"] == np.inf


def test_logistic_aliased_covariate_raises():
    d = pd.DataFrame({"y": [0, 1, 0, 1, 1, 0], "a": [1, 2, 3, 4, 5, 6.], "b": [2, 4, 6, 8, 10, 12.]})
    with pytest.raises(ValueError, match="aliased"):
        sv.logistic(d, "y", ["a", "b"])


def test_logistic_non_convergence_is_said(monkeypatch, lung):
    "A fit stopped before convergence (forced here: one Newton step) gives a NonConvergenceWarning and converged False."
    import statsmodels.discrete.discrete_model as dm
    orig = dm.Logit.fit
    monkeypatch.setattr(dm.Logit, "fit", lambda self, *a, **k: orig(self, *a, **{**k, "maxiter": 1}))
    d = lung.dropna(subset=["ph.ecog"]).assign(y=lambda x: (x.time > 365).astype(int))
    with pytest.warns(sv.NonConvergenceWarning, match="did not converge"):
        r = sv.logistic(d, "y", ["age", "ph.ecog"])
    assert not r.converged and r.separation == () and (r.table.warning.str.contains("did not converge")).all()


def test_cox_monotone_likelihood_against_R():
    """All events among the exposed: the HR of `exposed` is infinite, the monotone likelihood is detected and said.

    R 4.2.2, survival 3.5:
        d <- data.frame(t = c(1, 2, 3, 4, 5, 6, 7, 8), e = c(1, 1, 0, 1, 0, 0, 1, 0), x = c(1, 1, 0, 1, 0, 0, 1, 0),
                        z = c(0.5, 1.2, 0.3, 2.0, 1.1, 0.7, 0.2, 1.5))
        coxph(Surv(t, e) ~ x + z, d)
                coef exp(coef)  se(coef)     z     p
            x 2.148e+01 2.132e+09 2.047e+04 0.001 0.999
            z 2.702e-01 1.310e+00 7.494e-01 0.361 0.718
            Warning message: In coxph.fit(...): Ran out of iterations and did not converge
        coxph(Surv(t, e) ~ z, d)     # z 0.00826, se 0.81277: fine
    """
    d = pd.DataFrame({"t": [1, 2, 3, 4, 5, 6, 7, 8], "e": [1, 1, 0, 1, 0, 0, 1, 0], "exposed": [1, 1, 0, 1, 0, 0, 1, 0],
                      "z": [0.5, 1.2, 0.3, 2.0, 1.1, 0.7, 0.2, 1.5]})
    with pytest.warns(sv.SeparationWarning, match="exposed"):
        r = sv.cox(d, "t", "e", ["exposed", "z"])
    t = r.table
    assert r.separation == ("exposed",) and r.concordance is None and "monotone likelihood" in r.warning
    assert t.loc["exposed", "coef"] == np.inf and t.loc["exposed", "hr"] == np.inf
    assert np.isnan(t.loc["exposed", ["se", "hr_lo", "hr_hi", "z", "p"]].astype(float)).all()
    assert abs(t.loc["z", "coef"] - 0.2702) < 0.05              # conditional estimate (R stopped at 0.2702)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rz = sv.cox(d, "t", "e", ["z"])
    assert abs(rz.table.loc["z", "coef"] - 0.00826) < 5e-5 and abs(rz.table.loc["z", "se"] - 0.81277) < 5e-5
    # protective direction: all events among the unexposed -> HR 0
    with pytest.warns(sv.SeparationWarning):
        r0 = sv.cox(d.assign(exposed=1 - d.exposed), "t", "e", ["exposed"])
    assert r0.table.loc["exposed", "coef"] == -np.inf and r0.table.loc["exposed", "hr"] == 0


def test_cox_no_false_alarm(lung, veteran):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = sv.cox(lung, "time", "status", ["age", "sex", "ph.ecog"], missing="drop")
        rv = sv.cox(veteran, "time", "status", ["trt", "celltype", "karno", "diagtime", "age", "prior"])
    for x in (r, rv):
        assert x.separation == () and x.converged and x.warning == "" and (x.table.warning == "").all()
    X = lung.dropna(subset=["ph.ecog"])
    assert not sv.monotone_likelihood(X.time, X.status, X[["age", "sex", "ph.ecog"]]).separated


def _pairwise_monotone(t, e, X):
    "Brute-force check with one constraint per (event, at-risk) pair: is there b != 0 with (x_i - x_j)'b >= 0 for all?"
    from scipy.optimize import linprog
    rows = [X[i] - X[j] for i in range(len(t)) if e[i] for j in range(len(t)) if t[j] >= t[i] and j != i]
    A = np.array(rows)
    found = set()
    for j in range(X.shape[1]):
        for s in (1, -1):
            c = np.zeros(X.shape[1]); c[j] = -s
            r = linprog(c, A_ub=-A, b_ub=np.zeros(len(A)), bounds=[(-1, 1)] * X.shape[1], method="highs")
            if -r.fun > 1e-7: found.add(j)
    return found


@pytest.mark.parametrize("seed", range(15))
def test_monotone_likelihood_equals_pairwise_lp(seed):
    "The O(n) LP (one risk-set maximum per time) finds the same infinite coefficients as the O(n^2) pairwise LP."
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 14))
    t = rng.integers(1, 8, n).astype(float); e = rng.integers(0, 2, n); e[0] = 1
    X = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 3, n)]).astype(float)
    at = t >= t[e == 1].min()
    Xc = X[at] - X[at].mean(0)
    if np.linalg.matrix_rank(Xc) < 2: pytest.skip("covariates not identifiable in this draw")
    s = sv.monotone_likelihood(t, e, X, ["a", "b"])
    want = _pairwise_monotone(t, e.astype(bool), X)
    assert s.separated == bool(want)
    assert set(s.infinite) == {["a", "b"][j] for j in want}


def test_cox_aliased_covariate_raises(lung):
    d = lung.dropna(subset=["ph.ecog"]).assign(age2=lambda x: 2 * x.age + 1)
    with pytest.raises(ValueError, match="linear combinations"):
        sv.cox(d, "time", "status", ["age", "age2"])


def test_cox_non_convergence_is_said(monkeypatch, lung):
    "A fit stopped before convergence (forced here: one Newton step) gives a NonConvergenceWarning and converged False."
    from lifelines import CoxPHFitter
    orig = CoxPHFitter.fit
    monkeypatch.setattr(CoxPHFitter, "fit", lambda self, *a, fit_options=None, **k: orig(self, *a, fit_options={"max_steps": 1}, **k))
    d = lung.dropna(subset=["ph.ecog"])
    with pytest.warns(sv.NonConvergenceWarning, match="did not converge"):
        r = sv.cox(d, "time", "status", ["age", "ph.ecog"])
    assert not r.converged and r.separation == () and r.table.warning.str.contains("did not converge").all()
