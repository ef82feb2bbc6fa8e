"stats.roc: pROC reference values on aSAH, R values on the repository's tests/data, brute-force checks, bootstrap properties, separation, bad input."
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdl1_dls.core import PDL1Error
from pdl1_dls.stats import roc

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def asah(shared_data):
    d = shared_data / "roc_reference"
    df = pd.read_csv(d / "aSAH.csv")
    ref = json.loads((d / "aSAH_pROC_reference.json").read_text())
    return df, (df.outcome == "Poor").astype(int).to_numpy(), ref


@pytest.mark.parametrize("marker", ["s100b", "wfns", "ndka"])
def test_delong_ci_equals_proc(asah, marker):
    df, y, ref = asah
    r = roc.delong_ci(y, df[marker])
    assert abs(r.auc - ref["auc"][marker]) < 1e-9
    assert abs(r.var - ref["var_auc_delong"][marker]) < 1e-9
    assert abs(r.lo - ref["ci_auc_delong_95"][marker][0]) < 1e-9
    assert abs(r.hi - ref["ci_auc_delong_95"][marker][1]) < 1e-9
    assert (r.n_pos, r.n_neg) == (ref["n_cases_Poor"], ref["n_controls_Good"])


@pytest.mark.parametrize("key", ["wfns_vs_s100b", "wfns_vs_ndka", "ndka_vs_s100b"])
def test_paired_delong_test_equals_proc(asah, key):
    df, y, ref = asah
    a, b = key.split("_vs_")
    t, r = roc.delong_test(y, df[a], df[b]), ref["roc_test_delong"][key]
    assert abs(t.z - r["Z"]) < 1e-9 and abs(t.p - r["p"]) < 1e-9
    assert abs(t.diff_lo - r["ci_diff"][0]) < 1e-9 and abs(t.diff_hi - r["ci_diff"][1]) < 1e-9
    # order flips the sign (pROC's note)
    t2 = roc.delong_test(y, df[b], df[a])
    assert abs(t2.z + t.z) < 1e-12 and abs(t2.diff_lo + t.diff_hi) < 1e-12


def test_youden_equals_proc(asah):
    df, y, ref = asah
    r, e = roc.youden_cutoff(y, df.s100b), ref["youden_best_s100b"]
    assert abs(r.threshold - e["threshold"]) < 1e-9
    assert abs(r.sensitivity - e["sensitivity"]) < 1e-9 and abs(r.specificity - e["specificity"]) < 1e-9


def _naive_delong(y, s):
    "Textbook O(n^2) DeLong (DeLong et al. 1988) written independently of the fast algorithm."
    y = np.asarray(y).astype(bool); s = np.asarray(s, float)
    X, Y = s[y], s[~y]
    psi = (X[:, None] > Y[None, :]) + 0.5 * (X[:, None] == Y[None, :])
    a = psi.mean()
    v10, v01 = psi.mean(1), psi.mean(0)
    return a, v10.var(ddof=1) / len(X) + v01.var(ddof=1) / len(Y), v10, v01


@pytest.mark.parametrize("seed", range(5))
def test_fast_delong_equals_naive_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 300))
    y = rng.integers(0, 2, n); y[:2] = [0, 1]; y[2:4] = [0, 1]
    s = np.round(rng.normal(size=n) + y, 1)          # many ties
    a, v, _, _ = _naive_delong(y, s)
    r = roc.delong_ci(y, s)
    assert abs(r.auc - a) < 1e-12 and abs(r.var - v) < 1e-12
    s2 = np.round(rng.normal(size=n) + 0.5 * y, 0)
    a2, _, p10, p01 = _naive_delong(y, s2)
    _, _, q10, q01 = _naive_delong(y, s)
    S = np.cov(np.vstack([q10, p10])) / y.sum() + np.cov(np.vstack([q01, p01])) / (n - y.sum())
    z = (a - a2) / np.sqrt(S[0, 0] + S[1, 1] - 2 * S[0, 1])
    assert abs(roc.delong_test(y, s, s2).z - z) < 1e-9


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000); s = np.round(rng.normal(size=1000) + y, 1)
    assert abs(roc.auc(y, s) - roc_auc_score(y, s)) < 1e-12


def test_direction_is_not_flipped():
    y = np.array([0, 0, 0, 1, 1, 1]); s = np.array([6, 5, 4, 3, 2, 1.0])
    assert roc.auc(y, s) == 0.0 and roc.auc(y, -s) == 1.0


def test_youden_brute_force():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200); s = np.round(rng.normal(size=200) + y, 1)
    r = roc.youden_cutoff(y, s)
    u = np.unique(s); best = -1
    for t in (u[:-1] + u[1:]) / 2:
        j = (s[y == 1] > t).mean() + (s[y == 0] <= t).mean()
        best = max(best, j)
    assert abs(r.sensitivity + r.specificity - best) < 1e-12
    assert abs((s[y == 1] > r.threshold).mean() - r.sensitivity) < 1e-12


def test_binary_metrics_point_values_and_bootstrap():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300); s = rng.normal(size=300) + y
    m = roc.binary_metrics(y, s, 0.5, n_boot=3000, seed=7)
    call = s >= 0.5
    tp, tn = (call & (y == 1)).sum(), (~call & (y == 0)).sum()
    assert abs(m.loc["SEN", "value"] - tp / y.sum()) < 1e-12
    assert abs(m.loc["SPEC", "value"] - tn / (y == 0).sum()) < 1e-12
    assert abs(m.loc["ACC", "value"] - (tp + tn) / 300) < 1e-12
    assert ((m.lo <= m.value) & (m.value <= m.hi)).all()
    assert m.equals(roc.binary_metrics(y, s, 0.5, n_boot=3000, seed=7))
    assert not m.equals(roc.binary_metrics(y, s, 0.5, n_boot=3000, seed=8))
    # binomial theory: the SEN interval of a stratified bootstrap is about +-1.96 sqrt(p(1-p)/n)
    p = m.loc["SEN", "value"]; half = 1.96 * np.sqrt(p * (1 - p) / y.sum())
    assert abs((m.loc["SEN", "hi"] - m.loc["SEN", "lo"]) / 2 - half) < 0.25 * half
    mu = roc.binary_metrics(y, s, 0.5, n_boot=2000, seed=7, stratified=False)
    assert ((mu.lo <= mu.value) & (mu.value <= mu.hi)).all()


def test_bootstrap_auc_vectorised_equals_loop():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80); s = np.round(rng.normal(size=80) + y, 1)
    a = roc.bootstrap_auc(y, s, n_boot=400, seed=11)
    b = roc.bootstrap_ci(lambda yy, ss: roc.auc(yy, ss), y, s, n_boot=400, seed=11)
    assert abs(a.lo - b.lo) < 1e-12 and abs(a.hi - b.hi) < 1e-12 and abs(a.se - b.se) < 1e-12


def test_calibration_and_decision_curve():
    rng = np.random.default_rng(5)
    p = rng.uniform(0.02, 0.98, 5000); y = (rng.uniform(size=5000) < p).astype(int)
    c = roc.calibration(y, p)
    assert c.slope_lo < 1 < c.slope_hi and c.citl_lo < 0 < c.citl_hi and c.intercept_recal_lo < 0 < c.intercept_recal_hi
    # over-confident predictions give a slope below 1
    lp = np.log(p / (1 - p)); over = 1 / (1 + np.exp(-2 * lp))
    assert roc.calibration(y, over).slope_hi < 0.7
    assert abs(c.brier - np.mean((p - y) ** 2)) < 1e-15
    dc = roc.decision_curve(y, p, thresholds=[0.2, 0.5])
    for t, nb in zip(dc.threshold, dc.net_benefit):
        tr = p >= t
        assert abs(nb - ((tr & (y == 1)).sum() - (tr & (y == 0)).sum() * t / (1 - t)) / len(y)) < 1e-12
    assert (dc.treat_none == 0).all()
    assert abs(dc.treat_all.iloc[0] - (y.mean() - (1 - y.mean()) * 0.25)) < 1e-12


@pytest.mark.parametrize("call,match", [
    (lambda: roc.delong_ci([0, 1, np.nan, 1], [0.1, 0.2, 0.3, 0.4]), "NaN"),
    (lambda: roc.delong_ci([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4]), "NaN"),
    (lambda: roc.delong_ci([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]), "single class"),
    (lambda: roc.delong_ci([0, 1, 0], [0.1, 0.2, 0.3, 0.4]), "mismatched lengths"),
    (lambda: roc.delong_test([0, 1, 0, 1], [1, 2, 3, 4], [1, 2, 3]), "mismatched lengths"),
    (lambda: roc.youden_cutoff([0, 1, 0, 1], [2, 2, 2, 2]), "constant"),
    (lambda: roc.delong_ci([0, 2, 0, 1], [0.1, 0.2, 0.3, 0.4]), "0/1"),
    (lambda: roc.binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], np.nan), "cutoff"),
    (lambda: roc.calibration([0, 1, 0, 1], [0.1, 1.2, 0.3, 0.4]), "probabilities"),
    (lambda: roc.calibration([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]), "constant"),
])
def test_bad_input_raises_clear_valueerror(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_constant_scores():
    assert roc.auc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    with pytest.raises(ValueError, match="constant"):
        roc.delong_ci([0, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="score_b is constant"):
        roc.delong_test([0, 1, 0, 1, 0, 1], [1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1, 1])


def test_delong_test_unpaired_against_R():
    """pROC's unpaired DeLong test: t statistic, Welch-Satterthwaite df, p from the t distribution.

    R 4.2.2, pROC 1.18.0, on tests/data/delong_unpaired.csv:
        d <- read.csv("delong_unpaired.csv", comment.char = "#")
        a <- d[d$sample == "a", ]; b <- d[d$sample == "b", ]
        ra <- roc(a$y, a$score, levels = c(0, 1), direction = "<")
        rb <- roc(b$y, b$score, levels = c(0, 1), direction = "<")
        t <- roc.test(ra, rb, paired = FALSE, method = "delong")
        print(t)
            D = 2.6168, df = 102.57, p-value = 0.01022
            AUC of roc1 AUC of roc2
              0.9074074   0.6846708
        print(c(auc_a = ra$auc, auc_b = rb$auc, D = unname(t$statistic), df = unname(t$parameter), p = t$p.value), digits = 15)
            auc_a 0.9074074074074074  auc_b 0.6846707818930041  D 2.6167597552704476
            df 102.5726205058346210  p 0.0102179158202549
        t2 <- roc.test(rb, ra, paired = FALSE, method = "delong")   # D -2.6167597552704476, same df and p
    """
    d = pd.read_csv(DATA / "delong_unpaired.csv", comment="#")
    a, b = d[d["sample"] == "a"], d[d["sample"] == "b"]
    t = roc.delong_test_unpaired(a.y, a.score, b.y, b.score)
    assert abs(t.auc_a - 0.9074074074074074) < 1e-12 and abs(t.auc_b - 0.6846707818930041) < 1e-12
    assert abs(t.z - 2.6167597552704476) < 1e-9 and abs(t.df - 102.5726205058346210) < 1e-9
    assert abs(t.p - 0.0102179158202549) < 1e-12 and t.paired is False
    # the normal p it used to give differs: 2 * norm.sf(2.6168) = 0.00888
    assert abs(t.p - 2 * __import__("scipy").stats.norm.sf(t.z)) > 1e-3
    t2 = roc.delong_test_unpaired(b.y, b.score, a.y, a.score)
    assert abs(t2.z + t.z) < 1e-12 and abs(t2.df - t.df) < 1e-9 and abs(t2.p - t.p) < 1e-15
    # the CI of the difference uses the same t(df): it excludes 0 exactly when p < 0.05
    from scipy import stats as st
    h = st.t.ppf(0.975, t.df) * t.diff / t.z
    assert abs(t.diff_lo - (t.diff - h)) < 1e-12 and abs(t.diff_hi - (t.diff + h)) < 1e-12
    assert roc.delong_test([0, 1, 0, 1, 1], [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]).df is None


def test_calibration_against_R():
    """Recalibration intercept and slope as rms::val.prob, calibration-in-the-large, Wald CIs as confint.default.

    R 4.2.2, rms 6.5, on tests/data/calibration.csv:
        d <- read.csv("calibration.csv", comment.char = "#"); options(digits = 15)
        val.prob(d$p, d$y, pl = FALSE)[c("Intercept", "Slope", "Brier")]
            Intercept 0.327791576429354  Slope 0.673512108050071  Brier 0.214880949520939
        ctl <- glm.control(epsilon = 1e-14, maxit = 100)
        recal <- glm(y ~ qlogis(p), binomial, d, control = ctl)
        coef(recal)             0.327791576568923  0.673512108405778
        confint.default(recal)  (Intercept) 0.00180211922607476 0.653781033911772
                                qlogis(p)   0.41537810601270048 0.931646110798855
        citl <- glm(y ~ 1, offset = qlogis(p), family = binomial, data = d, control = ctl)
        coef(citl)              0.372979445712743
        confint.default(citl)   0.0224163732984844 0.723542518127001
    """
    d = pd.read_csv(DATA / "calibration.csv", comment="#")
    c = roc.calibration(d.y, d.p)
    assert abs(c.intercept_recal - 0.327791576429354) < 1e-6 and abs(c.slope - 0.673512108050071) < 1e-6   # val.prob
    assert abs(c.brier - 0.214880949520939) < 1e-12
    assert abs(c.intercept_recal - 0.327791576568923) < 1e-9 and abs(c.slope - 0.673512108405778) < 1e-9   # glm
    # Wald CIs to 1e-7: R's glm takes the information from its last IRLS weights (the previous iterate), here the
    # information at the estimate itself; they differ by ~4e-10
    assert np.allclose([c.intercept_recal_lo, c.intercept_recal_hi], [0.00180211922607476, 0.653781033911772], atol=1e-7, rtol=0)
    assert np.allclose([c.slope_lo, c.slope_hi], [0.41537810601270048, 0.931646110798855], atol=1e-7, rtol=0)
    assert np.allclose([c.citl, c.citl_lo, c.citl_hi], [0.372979445712743, 0.0224163732984844, 0.723542518127001],
                       atol=1e-7, rtol=0)
    assert c.n_dropped == 0 and c.table.n.sum() == len(d)
    with pytest.raises(AttributeError, match="citl"):
        c.intercept


def test_calibration_probabilities_0_1_against_R():
    """Probabilities of exactly 0 or 1 are left out of the logistic fits (with a warning), not of the Brier score.

    R 4.2.2, rms 6.5, on tests/data/calibration.csv, column p01 (p with its largest set to 1, smallest to 0):
        val.prob(d$p01, d$y, pl = FALSE)[c("Intercept", "Slope", "Brier")]
            Warning: 2 observations deleted from logistic calibration due to probs. of 0 or 1
            Intercept 0.327292988208750  Slope 0.663426780859178  Brier 0.214874842410350
        k <- is.finite(qlogis(d$p01))
        confint.default(glm(y ~ qlogis(p01), binomial, d[k, ], control = ctl))
            (Intercept) 0.00144703053270651 0.653138945965321
            qlogis(p01) 0.40228174617668305 0.924571815723112
        glm(y ~ 1, offset = qlogis(p01), family = binomial, data = d[k, ], control = ctl)
            coef 0.373262584275229, confint.default 0.0224406049505738 0.724084563599883
    """
    d = pd.read_csv(DATA / "calibration.csv", comment="#")
    with pytest.warns(UserWarning, match="2 observation"):
        c = roc.calibration(d.y, d.p01)
    assert c.n_dropped == 2
    assert abs(c.intercept_recal - 0.327292988208750) < 1e-6 and abs(c.slope - 0.663426780859178) < 1e-6
    assert abs(c.brier - 0.214874842410350) < 1e-12
    assert np.allclose([c.intercept_recal_lo, c.intercept_recal_hi, c.slope_lo, c.slope_hi],
                       [0.00144703053270651, 0.653138945965321, 0.40228174617668305, 0.924571815723112], atol=1e-7, rtol=0)
    assert np.allclose([c.citl, c.citl_lo, c.citl_hi], [0.373262584275229, 0.0224406049505738, 0.724084563599883],
                       atol=1e-7, rtol=0)
    # eps clips instead of dropping (the old behaviour, on request)
    assert roc.calibration(d.y, d.p01, eps=1e-12).n_dropped == 0


@pytest.mark.parametrize("p", [[0.1, 0.2, 0.3, 0.7, 0.8, 0.9],     # complete: every positive above every negative
                               [0.1, 0.2, 0.5, 0.5, 0.8, 0.9],     # quasi-complete: separated up to a tie
                               [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]])    # reversed (AUC 0)
def test_calibration_refuses_separated_predictions(p):
    with pytest.raises(roc.SeparationError, match="slope is infinite") as ei:
        roc.calibration([0, 0, 0, 1, 1, 1], p)
    assert isinstance(ei.value, PDL1Error) and isinstance(ei.value, ValueError) and "\n" not in str(ei.value)


def test_calibration_not_separated_gives_numbers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = roc.calibration([0, 0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert np.isfinite([c.slope, c.intercept_recal, c.citl]).all() and abs(c.slope) < 10


def test_separation_complete_quasi_and_none():
    x = np.array([1, 2, 3, 4, 5, 6.]); X = np.column_stack([np.ones(6), x])
    s = roc.separation(X, [0, 0, 0, 1, 1, 1], ["const", "x"])
    assert s.separated and s.kind == "complete" and s.infinite == ("const", "x") and s.signs == (-1, 1) and s.n_separated == 6
    s = roc.separation(X, [0, 0, 1, 0, 1, 1], ["const", "x"])
    assert not s.separated and s.kind == "none" and s.infinite == () and s.n_separated == 0
    # quasi-complete by a binary covariate: only its estimate is infinite
    xb = np.array([0, 0, 0, 0, 0, 1, 1, 1.])
    s = roc.separation(np.column_stack([np.ones(8), xb]), [0, 1, 0, 1, 0, 1, 1, 1], ["const", "exposed"])
    assert s.kind == "quasi-complete" and s.infinite == ("exposed",) and s.signs == (1,) and s.n_separated == 3
    # an aliased column is reported and left out
    s = roc.separation(np.column_stack([np.ones(6), x, 2 * x + 1]), [0, 0, 1, 0, 1, 1], ["c", "x", "x2"])
    assert s.aliased == ("x2",) and not s.separated


def test_separation_against_R_lp():
    """The Konis LP on the quasi-separated logistic_ties data (grade 3 made all positive), solved in R with lpSolve.

    R 4.2.2, lpSolve (the LP of detectseparation, b = u - v with 0 <= u, v <= 1):
        konis <- function(X, y) {
          Xb <- X * ifelse(y == 1, 1, -1); p <- ncol(X); n <- nrow(X)
          r <- lp("max", c(colSums(Xb), -colSums(Xb)), rbind(cbind(Xb, -Xb), diag(2 * p)),
                  c(rep(">=", n), rep("<=", 2 * p)), c(rep(0, n), rep(1, 2 * p)))
          b <- r$solution[1:p] - r$solution[(p + 1):(2 * p)]; names(b) <- colnames(X); list(objective = r$objval, b = b) }
        d <- read.csv("logistic_ties.csv", comment.char = "#"); d$g3 <- as.integer(d$grade == 3); d$y[d$g3 == 1] <- 1
        konis(model.matrix(~ sex + g3, d), d$y)
            $objective 28    $b (Intercept) 0  sex 0  g3 1
        konis(model.matrix(~ sex + grade + smoker + age10, o), o$y)     # o: the file unchanged
            $objective 0     $b all 0
    """
    o = pd.read_csv(DATA / "logistic_ties.csv", comment="#")
    d = o.assign(g3=(o.grade == 3).astype(int)); d.loc[d.g3 == 1, "y"] = 1
    s = roc.separation(np.column_stack([np.ones(len(d)), d.sex, d.g3]), d.y, ["const", "sex", "g3"])
    assert s.separated and s.kind == "quasi-complete" and s.infinite == ("g3",) and s.signs == (1,)
    assert s.n_separated == 28 == int(d.g3.sum())            # the LP's optimum: one unit per separated patient
    X = np.column_stack([np.ones(len(o)), o[["sex", "grade", "smoker", "age10"]]])
    assert not roc.separation(X, o.y).separated


@pytest.mark.parametrize("seed", range(12))
def test_separation_one_covariate_brute_force(seed):
    "With one covariate and an intercept the data are separated exactly when the two classes' ranges do not overlap."
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 12))
    x = rng.integers(0, 6, n).astype(float); y = rng.integers(0, 2, n); y[:2] = [0, 1]
    if np.ptp(x) == 0: x[0] += 1
    x0, x1 = x[y == 0], x[y == 1]
    sep = x0.max() <= x1.min() or x1.max() <= x0.min()
    complete = x0.max() < x1.min() or x1.max() < x0.min()
    s = roc.separation(np.column_stack([np.ones(n), x]), y, ["const", "x"])
    assert s.separated == sep and (s.kind == "complete") == complete
    if sep: assert "x" in s.infinite


def test_separation_bad_input():
    with pytest.raises(ValueError, match="0/1"):
        roc.separation(np.ones((3, 1)), [0, 2, 1])
    with pytest.raises(ValueError, match="mismatched"):
        roc.separation(np.ones((3, 1)), [0, 1])


def test_calibration_saturated_predictions_against_R():
    """Predictions within 1e-12 of 0 or 1: the recalibration fit equals R's, the calibration-in-the-large is the MLE.

    R 4.2.2, rms 6.5:
        p <- c(1-1e-12, 1e-12, 1-1e-12, 1-1e-12, 1-1e-12, 0.5, 1e-12, 1e-12, 1-1e-12, 0.3, 0.8)
        y <- c(1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1); ctl <- glm.control(epsilon = 1e-14, maxit = 100)
        coef(glm(y ~ qlogis(p), binomial, control = ctl))      0.4967380082424561 0.0156783699501664
        confint.default(...)   (Intercept) -0.7612265270535262 1.7547025435384382
                               qlogis(p)   -0.0381733806341527 0.0695301205344855
        val.prob(p, y, pl = FALSE)   Intercept 0.4967380079273261  Slope 0.0156783699355557  Brier 0.3072727272721818
        coef(glm(y ~ 1, offset = qlogis(p), family = binomial, control = ctl))
            1228254443796534     Warning: glm.fit: fitted probabilities numerically 0 or 1 occurred
    R's IRLS breaks down on the calibration-in-the-large (statsmodels' IRLS said "converged" at 1.2e15 too: the
    blown-up intercept of a degenerate run); its MLE is the root of sum(y - plogis(a + qlogis(p))) = 0, a = 0.663.
    """
    p = np.array([1 - 1e-12, 1e-12, 1 - 1e-12, 1 - 1e-12, 1 - 1e-12, 0.5, 1e-12, 1e-12, 1 - 1e-12, 0.3, 0.8])
    y = np.array([1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    c = roc.calibration(y, p, n_bins=2)
    assert abs(c.intercept_recal - 0.4967380082424561) < 1e-9 and abs(c.slope - 0.0156783699501664) < 1e-9
    assert np.allclose([c.intercept_recal_lo, c.intercept_recal_hi, c.slope_lo, c.slope_hi],
                       [-0.7612265270535262, 1.7547025435384382, -0.0381733806341527, 0.0695301205344855], atol=1e-7, rtol=0)
    assert abs(c.intercept_recal - 0.4967380079273261) < 1e-6 and abs(c.brier - 0.3072727272721818) < 1e-12
    lp = np.log(p / (1 - p))
    score = lambda a: np.sum(y - 1 / (1 + np.exp(-(a + lp))))
    assert abs(score(c.citl)) < 1e-9 and abs(c.citl - 0.6632) < 1e-3 and c.citl_lo < c.citl < c.citl_hi
    info = np.sum((m := 1 / (1 + np.exp(-(c.citl + lp)))) * (1 - m))
    assert abs((c.citl_hi - c.citl) - 1.959963984540054 / np.sqrt(info)) < 1e-9


def test_calibration_degenerate_inputs_fuzz():
    "Random saturated, tied and near-separated predictions: a clear ValueError or finite, moderate numbers, never a blow-up."
    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n); y[:2] = [0, 1]
        kind = trial % 4
        p = (1 / (1 + np.exp(-rng.normal(0, 30, n))) if kind == 0 else rng.choice([0.0, 1.0, 1e-12, 1 - 1e-12, 0.5], n)
             if kind == 1 else np.clip(y + rng.normal(0, 0.05, n), 0, 1) if kind == 2 else rng.uniform(0, 1, n) ** 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try: c = roc.calibration(y, p, n_bins=3)
            except ValueError: continue
        assert np.isfinite([c.slope, c.intercept_recal, c.citl, c.slope_lo, c.citl_hi]).all()
        assert max(abs(c.slope), abs(c.intercept_recal), abs(c.citl)) < 60
