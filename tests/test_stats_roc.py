"stats.roc: pROC reference values on aSAH, brute-force checks, bootstrap properties, bad input."
import json

import numpy as np
import pandas as pd
import pytest

from pdl1_dls.stats import roc


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
    assert c.slope_lo < 1 < c.slope_hi and c.intercept_lo < 0 < c.intercept_hi
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
