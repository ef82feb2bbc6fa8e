"stats.association: published ICC example, independent cocor checks, ANOVA/LSD vs OLS, rank tests vs R, tests vs scipy, table1, bad input."
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from pdl1_dls.stats import association as asc

SF = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_shrout_fleiss_example():
    # Shrout & Fleiss (1979) Table 2: ICC(2,1) = .29, ICC(3,1) = .71; R psych::ICC prints CIs
    # [0.019, 0.76] and [0.34, 0.95] for these data
    t = asc.icc(SF)
    assert round(t.loc["ICC(2,1)", "icc"], 2) == 0.29 and round(t.loc["ICC(3,1)", "icc"], 2) == 0.71
    assert round(t.loc["ICC(2,1)", "lo"], 3) == 0.019 and round(t.loc["ICC(2,1)", "hi"], 2) == 0.76
    assert round(t.loc["ICC(3,1)", "lo"], 2) == 0.34 and round(t.loc["ICC(3,1)", "hi"], 2) == 0.95


def test_icc_equals_mixed_anova_by_statsmodels():
    "Independent route: mean squares from a two-way OLS ANOVA table."
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    n, k = SF.shape
    long = pd.DataFrame({"y": SF.ravel().astype(float), "t": np.repeat(np.arange(n), k).astype(str),
                         "j": np.tile(np.arange(k), n).astype(str)})
    a = anova_lm(smf.ols("y ~ C(t) + C(j)", long).fit())
    bms, jms, ems = a.mean_sq.iloc[0], a.mean_sq.iloc[1], a.mean_sq.iloc[2]
    t = asc.icc(SF)
    assert abs(t.loc["ICC(3,1)", "icc"] - (bms - ems) / (bms + (k - 1) * ems)) < 1e-12
    assert abs(t.loc["ICC(2,1)", "icc"] - (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)) < 1e-12


def test_icc_two_readers_as_list():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=60)
    t = asc.icc([truth + rng.normal(0, 0.3, 60), truth + rng.normal(0, 0.3, 60) + 0.5])
    assert t.loc["ICC(3,1)", "icc"] > t.loc["ICC(2,1)", "icc"]          # a reader offset hurts agreement only
    assert (t.lo < t.icc).all() and (t.icc < t.hi).all()


def _steiger_from_covariance(rjk, rjh, rkh, n):
    "Independent route to Steiger's Z: Pearson-Filon asymptotic covariance of r_jk and r_jh (Olkin & Siotani),"
    "evaluated at the pooled correlation, transformed to Fisher z."
    rb = (rjk + rjh) / 2
    # cov(r_jk, r_jh) * n for overlapping correlations with j shared (Pearson & Filon 1898)
    cov = 0.5 * (2 * rkh - rb * rb) * (1 - 2 * rb * rb - rkh ** 2) + rkh ** 3
    cov_z = cov / ((1 - rb * rb) ** 2)
    return (math.atanh(rjk) - math.atanh(rjh)) * math.sqrt(n - 3) / math.sqrt(2 - 2 * cov_z)


@pytest.mark.parametrize("r", [(0.6, 0.4, 0.5, 100), (0.2, 0.45, 0.1, 60), (-0.3, 0.1, 0.7, 250)])
def test_steiger_equals_pearson_filon_route(r):
    assert abs(asc.compare_correlations(*r).steiger_z - _steiger_from_covariance(*r)) < 1e-12


def test_cocor_null_rejection_rate_by_simulation():
    "Under H0 (r_jk = r_jh) both tests should reject about 5 % of the time."
    rng = np.random.default_rng(1)
    cov = np.array([[1, 0.4, 0.4], [0.4, 1, 0.5], [0.4, 0.5, 1]])
    L = np.linalg.cholesky(cov)
    n, sims, rs, rm = 80, 2000, 0, 0
    for _ in range(sims):
        X = rng.normal(size=(n, 3)) @ L.T
        c = np.corrcoef(X.T)
        res = asc.compare_correlations(c[0, 1], c[0, 2], c[1, 2], n)
        rs += res.steiger_p < 0.05; rm += res.mrr_p < 0.05
    assert 0.03 < rs / sims < 0.07 and 0.03 < rm / sims < 0.07


def test_cocor_power_direction():
    r = asc.compare_correlations(0.7, 0.2, 0.3, 200)
    assert r.steiger_z > 3 and r.mrr_z > 3 and r.steiger_p < 0.01


def test_anova_lsd_equals_ols_contrasts():
    import statsmodels.formula.api as smf
    rng = np.random.default_rng(2)
    g = np.repeat(["a", "b", "c"], [20, 25, 15]); v = rng.normal(size=60) + (g == "c") * 0.8
    a = asc.anova_lsd(v, g)
    f = st.f_oneway(*[v[g == l] for l in "abc"])
    assert abs(a.f - f.statistic) < 1e-10 and abs(a.p - f.pvalue) < 1e-12
    m = smf.ols("v ~ C(g)", pd.DataFrame({"v": v, "g": g})).fit()
    # LSD a vs b: the OLS t test of the b dummy (pooled MSE, N - k df)
    row = a.posthoc.set_index(["group_a", "group_b"]).loc[("a", "b")]
    assert abs(row.t + m.tvalues["C(g)[T.b]"]) < 1e-10 and abs(row.p - m.pvalues["C(g)[T.b]"]) < 1e-10


def test_correlations_equal_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=50); y = np.round(x + rng.normal(size=50), 0); b = (x > 0).astype(int)
    assert abs(asc.spearman(x, y).r - st.spearmanr(x, y).statistic) < 1e-12
    assert abs(asc.point_biserial(b, y).p - st.pointbiserialr(b, y).pvalue) < 1e-12


def test_two_sample_and_contingency_tests():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=30), rng.normal(size=25) + 1
    # R's wilcox.test (followed) gives the exact p for 30 and 25 values without ties; scipy's default
    # method="auto" is asymptotic once both samples exceed 8 values, so compare with its exact p
    assert abs(asc.mann_whitney(x, y).p - st.mannwhitneyu(x, y, method="exact").pvalue) < 1e-12
    assert abs(asc.mann_whitney(x, y, exact=False).p - st.mannwhitneyu(x, y, method="asymptotic").pvalue) < 1e-12
    z = x + rng.normal(0, 0.1, 30) + 0.2
    assert asc.wilcoxon(x, z).p < 0.05
    t = np.array([[10, 2], [3, 9]])
    # independent route: sum of hypergeometric probabilities no larger than the observed one (R's rule)
    h = st.hypergeom(t.sum(), t[0].sum(), t[:, 0].sum())
    probs = h.pmf(np.arange(0, min(t[0].sum(), t[:, 0].sum()) + 1))
    p_ref = probs[probs <= h.pmf(t[0, 0]) * (1 + 1e-7)].sum()
    assert abs(asc.fisher_exact(None, None, table=t).p - p_ref) < 1e-12
    # Yates-corrected chi-square by hand
    e = st.contingency.expected_freq(t)
    chi = ((np.abs(t - e) - 0.5) ** 2 / e).sum()
    assert abs(asc.chi_square(None, None, table=t).statistic - chi) < 1e-12


WILCOX = pd.read_csv(Path(__file__).parent / "data" / "association_wilcox.csv")


def _sample(case, group):
    return WILCOX.value[(WILCOX.case == case) & (WILCOX.group == group)].to_numpy()


def _check_against_R(fn, expected):
    for (case, kw), (stat, p, method) in expected.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fn(_sample(case, "x"), _sample(case, "y"), **dict(kw))
        assert r.statistic == stat, (case, kw, r)
        assert abs(r.p - p) <= 1e-12 * p, (case, kw, r.p, p)
        assert r.test == method, (case, kw, r.test)


def test_mann_whitney_against_R():
    """R 4.2.2 on tests/data/association_wilcox.csv (mw_small: 11 and 13 values, no ties; mw_ties: 20 and 17
    integers; mw_large: 49 and 50 values, no ties):

        d <- read.csv("tests/data/association_wilcox.csv")
        g <- function(case, grp) d$value[d$case == case & d$group == grp]
        show <- function(label, t) cat(label, format(unname(t$statistic), digits = 15),
                                       format(t$p.value, digits = 15), t$method, "\n")
        for (case in c("mw_small", "mw_ties", "mw_large")) {
          x <- g(case, "x"); y <- g(case, "y")
          show(paste(case, "default"), wilcox.test(x, y))
          show(paste(case, "exact=F correct=F"), wilcox.test(x, y, exact = FALSE, correct = FALSE))
          show(paste(case, "exact=T"), wilcox.test(x, y, exact = TRUE))
          show(paste(case, "exact=F"), wilcox.test(x, y, exact = FALSE))
        }

    printed:

        mw_small default 22 0.00312321725028684 Wilcoxon rank sum exact test
        mw_small exact=F correct=F 22 0.00413259628918216 Wilcoxon rank sum test
        mw_small exact=T 22 0.00312321725028684 Wilcoxon rank sum exact test
        mw_small exact=F 22 0.00452706533939692 Wilcoxon rank sum test with continuity correction
        mw_ties default 104 0.0439149887285573 Wilcoxon rank sum test with continuity correction
        mw_ties exact=F correct=F 104 0.0423278568821008 Wilcoxon rank sum test
        mw_ties exact=T 104 0.0439149887285573 Wilcoxon rank sum test with continuity correction
        mw_ties exact=F 104 0.0439149887285573 Wilcoxon rank sum test with continuity correction
        mw_large default 806 0.00340174917184121 Wilcoxon rank sum test with continuity correction
        mw_large exact=F correct=F 806 0.00336364977324804 Wilcoxon rank sum test
        mw_large exact=T 806 0.00312616035168702 Wilcoxon rank sum exact test
        mw_large exact=F 806 0.00340174917184121 Wilcoxon rank sum test with continuity correction
        Warning messages:
        1: In wilcox.test.default(x, y) : cannot compute exact p-value with ties
        2: In wilcox.test.default(x, y, exact = TRUE) : cannot compute exact p-value with ties
    """
    cc, plain = "Wilcoxon rank sum test with continuity correction", "Wilcoxon rank sum test"
    ex = "Wilcoxon rank sum exact test"
    nc, asked, normal = (("exact", False), ("correct", False)), (("exact", True),), (("exact", False),)
    _check_against_R(asc.mann_whitney, {
        ("mw_small", ()): (22, 0.00312321725028684, ex),
        ("mw_small", nc): (22, 0.00413259628918216, plain),
        ("mw_small", asked): (22, 0.00312321725028684, ex),
        ("mw_small", normal): (22, 0.00452706533939692, cc),
        ("mw_ties", ()): (104, 0.0439149887285573, cc),
        ("mw_ties", nc): (104, 0.0423278568821008, plain),
        ("mw_ties", asked): (104, 0.0439149887285573, cc),
        ("mw_ties", normal): (104, 0.0439149887285573, cc),
        ("mw_large", ()): (806, 0.00340174917184121, cc),
        ("mw_large", nc): (806, 0.00336364977324804, plain),
        ("mw_large", asked): (806, 0.00312616035168702, ex),
        ("mw_large", normal): (806, 0.00340174917184121, cc),
    })
    with pytest.warns(UserWarning, match="cannot compute exact p-value with ties"):
        asc.mann_whitney(_sample("mw_ties", "x"), _sample("mw_ties", "y"), exact=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the default falls back silently (R warns there too)
        asc.mann_whitney(_sample("mw_ties", "x"), _sample("mw_ties", "y"))


def test_wilcoxon_against_R():
    """R 4.2.2 on tests/data/association_wilcox.csv, paired by row order (sr_small: 14 pairs, no ties or zeros;
    sr_zeros: 12 pairs, 2 zero differences, distinct non-zero |x - y|; sr_ties: 25 integer pairs with ties
    and 3 zeros; sr_large: 50 pairs, no ties):

        (d, g and show as in test_mann_whitney_against_R)
        for (case in c("sr_small", "sr_zeros", "sr_ties", "sr_large")) {
          x <- g(case, "x"); y <- g(case, "y")
          show(paste(case, "default"), wilcox.test(x, y, paired = TRUE))
          show(paste(case, "exact=F correct=F"), wilcox.test(x, y, paired = TRUE, exact = FALSE, correct = FALSE))
          show(paste(case, "exact=T"), wilcox.test(x, y, paired = TRUE, exact = TRUE))
          show(paste(case, "exact=F"), wilcox.test(x, y, paired = TRUE, exact = FALSE))
        }

    printed:

        sr_small default 89 0.020263671875 Wilcoxon signed rank exact test
        sr_small exact=F correct=F 89 0.021943664659378 Wilcoxon signed rank test
        sr_small exact=T 89 0.020263671875 Wilcoxon signed rank exact test
        sr_small exact=F 89 0.0238241460165172 Wilcoxon signed rank test with continuity correction
        sr_zeros default 46 0.0665457213437161 Wilcoxon signed rank test with continuity correction
        sr_zeros exact=F correct=F 46 0.0593361198809086 Wilcoxon signed rank test
        sr_zeros exact=T 46 0.0665457213437161 Wilcoxon signed rank test with continuity correction
        sr_zeros exact=F 46 0.0665457213437161 Wilcoxon signed rank test with continuity correction
        sr_ties default 157.5 0.315646581905022 Wilcoxon signed rank test with continuity correction
        sr_ties exact=F correct=F 157.5 0.307778680480309 Wilcoxon signed rank test
        sr_ties exact=T 157.5 0.315646581905022 Wilcoxon signed rank test with continuity correction
        sr_ties exact=F 157.5 0.315646581905022 Wilcoxon signed rank test with continuity correction
        sr_large default 814 0.0893235085144442 Wilcoxon signed rank test with continuity correction
        sr_large exact=F correct=F 814 0.0884177691275586 Wilcoxon signed rank test
        sr_large exact=T 814 0.0894381024777875 Wilcoxon signed rank exact test
        sr_large exact=F 814 0.0893235085144442 Wilcoxon signed rank test with continuity correction
        Warning messages:
        1: In wilcox.test.default(x, y, paired = TRUE) : cannot compute exact p-value with zeroes
        2: In wilcox.test.default(x, y, paired = TRUE, exact = TRUE) : cannot compute exact p-value with zeroes
        3: In wilcox.test.default(x, y, paired = TRUE) : cannot compute exact p-value with ties
        ... (and the same for sr_ties with exact = TRUE)
    """
    cc, plain = "Wilcoxon signed rank test with continuity correction", "Wilcoxon signed rank test"
    ex = "Wilcoxon signed rank exact test"
    nc, asked, normal = (("exact", False), ("correct", False)), (("exact", True),), (("exact", False),)
    _check_against_R(asc.wilcoxon, {
        ("sr_small", ()): (89, 0.020263671875, ex),
        ("sr_small", nc): (89, 0.021943664659378, plain),
        ("sr_small", asked): (89, 0.020263671875, ex),
        ("sr_small", normal): (89, 0.0238241460165172, cc),
        ("sr_zeros", ()): (46, 0.0665457213437161, cc),
        ("sr_zeros", nc): (46, 0.0593361198809086, plain),
        ("sr_zeros", asked): (46, 0.0665457213437161, cc),
        ("sr_zeros", normal): (46, 0.0665457213437161, cc),
        ("sr_ties", ()): (157.5, 0.315646581905022, cc),
        ("sr_ties", nc): (157.5, 0.307778680480309, plain),
        ("sr_ties", asked): (157.5, 0.315646581905022, cc),
        ("sr_ties", normal): (157.5, 0.315646581905022, cc),
        ("sr_large", ()): (814, 0.0893235085144442, cc),
        ("sr_large", nc): (814, 0.0884177691275586, plain),
        ("sr_large", asked): (814, 0.0894381024777875, ex),
        ("sr_large", normal): (814, 0.0893235085144442, cc),
    })
    with pytest.warns(UserWarning, match="cannot compute exact p-value with zeroes"):
        asc.wilcoxon(_sample("sr_zeros", "x"), _sample("sr_zeros", "y"), exact=True)
    with pytest.warns(UserWarning, match="ties and zeroes"):
        asc.wilcoxon(_sample("sr_ties", "x"), _sample("sr_ties", "y"), exact=True)


def test_rank_tests_where_scipy_defaults_differ_from_R():
    "The cases above where scipy's defaults would not give R's numbers (why the rules are written out)."
    x, y = _sample("mw_small", "x"), _sample("mw_small", "y")
    assert abs(st.mannwhitneyu(x, y).pvalue - 0.00452706533939692) < 1e-12   # scipy: asymptotic (sizes > 8)
    x, y = _sample("sr_large", "x"), _sample("sr_large", "y")
    assert abs(st.wilcoxon(x, y).pvalue - 0.0894381024777875) < 1e-12        # scipy: exact up to 50 pairs
    assert st.wilcoxon(x, y).statistic == min(814, 50 * 51 / 2 - 814)       # scipy: min(W+, W-), R: V = W+
    x, y = _sample("sr_zeros", "x"), _sample("sr_zeros", "y")
    assert abs(st.wilcoxon(x, y).pvalue - 0.0665457213437161) > 1e-3        # scipy: permutation test (n <= 13)


def test_rank_tests_degenerate_cases_against_R():
    """R 4.2.2 (statistic and p printed with format(, digits = 15)):

        wilcox.test(c(1, 1, 1), c(1, 1))                    # 3 NaN (all tied: SIGMA = 0; scipy says p = 1)
        wilcox.test(2, 1)                                   # 1 1
        wilcox.test(c(1, 2, 3), c(1, 2, 3.5), paired = TRUE)  # 0 1 (two zeros dropped, one difference left)
    """
    r = asc.mann_whitney([1, 1, 1], [1, 1])
    assert r.statistic == 3 and math.isnan(r.p)
    r = asc.mann_whitney([2], [1])
    assert r.statistic == 1 and r.p == 1 and r.test == "Wilcoxon rank sum exact test"
    r = asc.wilcoxon([1, 2, 3], [1, 2, 3.5])
    assert r.statistic == 0 and r.p == 1 and r.test == "Wilcoxon signed rank test with continuity correction"


def test_table1():
    rng = np.random.default_rng(5)
    n = 150
    df = pd.DataFrame({"grp": rng.choice(["neg", "pos"], n), "age": rng.normal(60, 8, n),
                       "sex": rng.choice(["m", "f"], n), "suv": rng.lognormal(2, 0.8, n),
                       "stage": rng.choice(["I", "II", "III"], n)})
    df.loc[:4, "age"] = np.nan
    t = asc.table1(df, "grp", ["age", "sex", "suv", "stage"])
    assert t.loc[0, "Overall"] == str(n)
    assert t.loc[0, "grp=neg"] == str((df.grp == "neg").sum())
    age = t[t.variable == "age"].iloc[0]
    assert age.missing == 5 and age.test in ("t test", "Mann-Whitney")
    suv = t[t.variable == "suv"].iloc[0]
    assert suv.test == "Mann-Whitney" and suv.level == "median (IQR)"      # log-normal: not normal
    ok = df[df.suv.notna()]
    assert suv.p == asc.mann_whitney(ok.suv[ok.grp == "neg"], ok.suv[ok.grp == "pos"]).p   # R's wilcox.test rule
    sex = t[t.variable == "sex"].iloc[0]
    nm = int(((df.sex == sex.level) & (df.grp == "neg")).sum())
    assert sex["grp=neg"].startswith(f"{nm} (") and sex.test == "chi-square"
    assert abs(sex.p - st.chi2_contingency(pd.crosstab(df.sex, df.grp).to_numpy()).pvalue) < 1e-12


@pytest.mark.parametrize("call,match", [
    (lambda: asc.spearman([1, 2, np.nan, 4, 5], [1, 2, 3, 4, 5]), "NaN"),
    (lambda: asc.spearman([1, 2, 3, 4], [1, 2, 3]), "mismatched lengths"),
    (lambda: asc.spearman([1, 1, 1, 1, 1], [1, 2, 3, 4, 5]), "constant"),
    (lambda: asc.point_biserial([0, 1, 2, 1, 0], [1, 2, 3, 4, 5]), "0/1"),
    (lambda: asc.compare_correlations(1.0, 0.3, 0.2, 50), "between -1 and 1"),
    (lambda: asc.anova_lsd([1, 2, 3], ["a", "a", "a"]), "single value"),
    (lambda: asc.anova_lsd([1, 2, np.nan, 4], ["a", "a", "b", "b"]), "NaN"),
    (lambda: asc.icc(np.array([[1, np.nan], [2, 3], [3, 4]])), "NaN"),
    (lambda: asc.icc([[1, 2, 3], [1, 2]]), "mismatched lengths"),
    (lambda: asc.wilcoxon([1, 2, 3], [1, 2, 3]), "zero"),
    (lambda: asc.wilcoxon([1, 2, 3], [1, 2]), "mismatched lengths"),
    (lambda: asc.mann_whitney([], [1, 2]), "empty"),
    (lambda: asc.mann_whitney([1, np.nan], [1, 2]), "NaN"),
    (lambda: asc.table1(pd.DataFrame({"g": [1, 1], "x": [1, 2]}), "g", ["x"]), "single level"),
])
def test_bad_input_raises_clear_valueerror(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_fisher_exact_rxc_against_R():
    """Fisher's exact test of 2x2, 2xc and rxc tables equals R's `fisher.test`; the Monte-Carlo p is close to it.

    R 4.2.2:
    > options(digits = 15)
    > fisher.test(matrix(c(12, 5, 3, 10), nrow = 2))$p.value
    [1] 0.0253276870336761
    > fisher.test(matrix(c(3, 1, 4, 7, 2, 5, 6, 0), nrow = 2))$p.value
    [1] 0.0274792373089586
    > fisher.test(matrix(c(5, 2, 7, 3, 6, 1, 2, 8, 4), nrow = 3))$p.value
    [1] 0.0671859917690065
    > chisq.test(matrix(c(5, 2, 7, 3, 6, 1, 2, 8, 4), nrow = 3))   # X-squared = 8.39619047619048, df = 4
    [1] 0.0780970511682089
    """
    t22 = np.array([[12, 3], [5, 10]])
    t24 = np.array([[3, 4, 2, 6], [1, 7, 5, 0]])
    t33 = np.array([[5, 3, 2], [2, 6, 8], [7, 1, 4]])
    assert asc.fisher_exact(None, None, table=t22).p == pytest.approx(0.0253276870336761, rel=1e-10)
    assert asc.fisher_exact(None, None, table=t24).p == pytest.approx(0.0274792373089586, rel=1e-10)
    assert asc.fisher_exact(None, None, table=t24.T).p == pytest.approx(0.0274792373089586, rel=1e-10)
    r = asc.fisher_exact(None, None, table=t33)
    assert r.p == pytest.approx(0.0671859917690065, rel=1e-10) and r.test == "Fisher-Freeman-Halton exact"
    mc = asc.fisher_exact(None, None, table=t33, simulate=True, n_sim=20000, seed=1)
    assert abs(mc.p - 0.0671859917690065) < 0.006 and "Monte-Carlo" in mc.test         # SE about 0.0018
    few = asc.fisher_exact(None, None, table=t33, max_tables=10)                         # too many tables: simulated
    assert "Monte-Carlo" in few.test
    cs = asc.chi_square(None, None, table=t33)
    assert cs.statistic == pytest.approx(8.39619047619048, rel=1e-12) and cs.dof == 4
    assert cs.p == pytest.approx(0.0780970511682089, rel=1e-10) and cs.min_expected < 5


def test_fisher_exact_2xc_brute_force():
    "Every assignment of the positives among 9 patients in 3 columns, counted: the p is the mass of tables no likelier."
    from itertools import combinations
    tab = np.array([[2, 1, 0], [1, 2, 3]]); grp = np.repeat([0, 1, 2], tab.sum(0))
    probs = {}
    for pos in combinations(range(len(grp)), int(tab[0].sum())):
        k = tuple(np.bincount(grp[list(pos)], minlength=3)); probs[k] = probs.get(k, 0) + 1
    tot = sum(probs.values()); pobs = probs[tuple(tab[0])] / tot
    brute = sum(v / tot for v in probs.values() if v / tot <= pobs * (1 + 1e-7))
    assert asc.fisher_exact(None, None, table=tab).p == pytest.approx(brute, abs=1e-12)
    a = np.repeat(["x", "y"], [3, 6]); b = np.r_[grp[:0], [0, 0, 1, 0, 1, 1, 2, 2, 2]]
    assert asc.fisher_exact(a, b).p == pytest.approx(asc.fisher_exact(None, None, table=pd.crosstab(a, b).to_numpy()).p)
