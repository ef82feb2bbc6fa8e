"Figures: KM at-risk table = lifelines', CI bands, HR and log-rank in the panel; the ROC band = a direct pROC ci.se; Grad-CAM colour bars; one palette."
import json
import os
from types import SimpleNamespace
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pdl1_dls.plots import GROUP_COLORS, PALETTE, group_colors, plot_km, plot_roc
from pdl1_dls.stats.roc import auc_ci, ci_se


def _km_data(seed=1, n=70):
    rng = np.random.default_rng(seed)
    grp = np.where(rng.random(n) < 0.5, "high DLS", "low DLS")
    tt = rng.exponential(np.where(grp == "high DLS", 20, 8)); cc = rng.exponential(25, n)
    return np.minimum(tt, cc), (tt <= cc).astype(int), grp


def _lifelines_at_risk(time, ev, grp, groups, ticks):
    "lifelines' add_at_risk_counts at `ticks`, read back from its tick labels: array ticks x groups."
    from lifelines import KaplanMeierFitter
    from lifelines.plotting import add_at_risk_counts
    fig, ax = plt.subplots()
    fits = [KaplanMeierFitter(label=g).fit(time[grp == g], ev[grp == g]) for g in groups]
    for f in fits: f.plot(ax=ax)
    ax.set_xticks(ticks); add_at_risk_counts(*fits, ax=ax, rows_to_show=["At risk"]); fig.canvas.draw()
    labs = [l.get_text() for l in fig.axes[-1].get_xticklabels()]
    plt.close(fig)
    return np.array([[int(r.split()[-1]) for r in [x for x in lab.split("\n") if x.strip()][-len(groups):]] for lab in labs])


def _drawn_at_risk(ax, group) -> dict:
    return {float(a.xy[0]): int(a.get_text()) for a in ax.texts if a.get_gid() == f"at-risk {group}"}


@pytest.mark.parametrize("times", [None, [0, 6, 12, 18, 24, 30]])
def test_km_at_risk_numbers_are_lifelines_at_the_ticks(times):
    time, ev, grp = _km_data()
    groups = ["high DLS", "low DLS"]
    fig, ax = plt.subplots(figsize=(5, 4))
    res = plot_km(ax, time, ev, grp, order=groups, times=times)
    fig.tight_layout(); fig.canvas.draw()
    ticks = np.asarray(ax.get_xticks(), float)
    if times is not None: assert np.allclose(ticks, times)
    else: assert len(ticks) >= 3 and np.allclose(np.diff(ticks), ticks[1] - ticks[0])     # the axis's own (round) ticks
    want = _lifelines_at_risk(time, ev, grp, groups, ticks)
    for j, g in enumerate(groups):
        drawn = _drawn_at_risk(ax, g)
        assert list(drawn) == list(ticks), "one number under each x tick"
        assert list(drawn.values()) == list(want[:, j])
        assert list(res.at_risk.loc[g]) == list(want[:, j])
    labels = [a for a in ax.texts if (a.get_gid() or "").startswith("at-risk label")]
    assert [a.get_text() for a in labels] == groups and [a.get_color() for a in labels] == [PALETTE[g] for g in groups]
    # the rows sit under the axis, below the tick labels, and inside the figure after tight_layout
    r = fig.canvas.get_renderer()
    top_of_table = max(a.get_window_extent(r).y1 for a in ax.texts if (a.get_gid() or "").startswith("at-risk"))
    assert top_of_table < min(t.get_window_extent(r).y0 for t in ax.get_xticklabels() if t.get_text())
    assert min(a.get_window_extent(r).y0 for a in ax.texts if (a.get_gid() or "").startswith("at-risk")) >= 0
    plt.close(fig)


def test_km_bands_censor_marks_hr_and_logrank_in_the_panel():
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test
    time, ev, grp = _km_data(seed=3)
    fig, ax = plt.subplots()
    res = plot_km(ax, time, ev, grp, order=["high DLS", "low DLS"])
    bands = [c for c in ax.collections if (c.get_gid() or "").startswith("km band")]
    assert sorted(c.get_gid() for c in bands) == ["km band high DLS", "km band low DLS"] and set(res.bands) == {"high DLS", "low DLS"}
    for g, b in res.bands.items():                       # the band encloses the curve: its path spans the KM CI
        k = res.km[g].table
        ys = b.get_paths()[0].vertices[:, 1]
        assert ys.min() <= np.nanmin(k["lower"]) + 1e-9 and ys.max() >= 1 - 1e-9
    n_cens = {g: int(res.km[g].table.query("n_censor > 0").shape[0]) for g in res.km}
    marks = [l for l in ax.lines if l.get_marker() == "+"]
    assert sorted(len(l.get_xdata()) for l in marks) == sorted(n_cens.values()) and min(n_cens.values()) > 0
    lr = logrank_test(time[grp == "high DLS"], time[grp == "low DLS"], ev[grp == "high DLS"], ev[grp == "low DLS"])
    cph = CoxPHFitter().fit(pd.DataFrame({"t": time, "e": ev, "h": (grp == "high DLS").astype(float)}), "t", "e")
    hr, lo, hi = np.exp(cph.params_["h"]), *np.exp(cph.confidence_intervals_.loc["h"].to_numpy())
    assert abs(res.logrank_p - lr.p_value) < 1e-9 and abs(res.hr.loc["high DLS", "hr"] - hr) < 1e-5
    panel = next(a.get_text() for a in ax.texts if a.get_gid() == "km stats")
    assert f"HR {hr:.2f} ({lo:.2f}-{hi:.2f})" in panel and ("log-rank p = " in panel or "log-rank p < 0.001" in panel)
    plt.close(fig)


def test_km_reference_and_more_groups():
    rng = np.random.default_rng(5)
    n = 90
    g = rng.choice(["ADC", "SCC", "other"], n)
    t = rng.exponential(np.select([g == "ADC", g == "SCC"], [12, 6], 9)); e = (rng.random(n) < 0.8).astype(int)
    fig, ax = plt.subplots()
    res = plot_km(ax, t, e, g, stats=True)
    assert res.reference == "ADC" and list(res.hr.index) == ["SCC", "other"] and res.hr["hr"].notna().all()
    panel = next(a.get_text() for a in ax.texts if a.get_gid() == "km stats")
    assert "SCC vs ADC: HR" in panel and "other vs ADC: HR" in panel
    assert [l.get_color() for l in res.lines.values()] == group_colors(["ADC", "SCC", "other"])
    fig2, ax2 = plt.subplots()
    res2 = plot_km(ax2, t, e, g, stats=False, ci=False, risk_table=False)
    assert not res2.bands and not [a for a in ax2.texts if a.get_gid() in ("km stats",)] and not ax2.texts
    plt.close(fig); plt.close(fig2)


def _direct_ci_se(y, s, sp, n_boot, seed, level, stratified):
    "pROC ci.se written out: the same draws, brute-force ROC per replicate, pROC's coords(input='specificity') rule."
    y, s = np.asarray(y), np.asarray(s, float)
    neg, pos = s[y == 0], s[y == 1]
    yy, ss = np.r_[np.zeros(len(neg), int), np.ones(len(pos), int)], np.r_[neg, pos]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        if stratified:
            i = np.r_[rng.integers(0, len(neg), len(neg)), len(neg) + rng.integers(0, len(pos), len(pos))]
        else:
            i = rng.integers(0, len(yy), len(yy))
            if yy[i].min() == yy[i].max(): continue
        cases, controls = ss[i][yy[i] == 1], ss[i][yy[i] == 0]
        u = sorted(set(ss[i]))
        thr = [-np.inf] + [(a + b) / 2 for a, b in zip(u[:-1], u[1:])] + [np.inf]
        se_ = [float(np.mean(cases > t)) for t in thr]; sp_ = [float(np.mean(controls <= t)) for t in thr]
        row = []
        for x in sp:
            hits = [k for k, v in enumerate(sp_) if abs(v - x) <= 1e-12]
            if hits: row.append(se_[hits[0]]); continue
            nx = next(k for k, v in enumerate(sp_) if v > x)
            prop = (x - sp_[nx - 1]) / (sp_[nx] - sp_[nx - 1])
            row.append(se_[nx - 1] - prop * (se_[nx - 1] - se_[nx]))
        reps.append(row)
    a = (1 - level) / 2
    return np.quantile(np.array(reps), [a, 0.5, 1 - a], axis=0)


@pytest.mark.parametrize("stratified", [True, False])
def test_ci_se_equals_a_direct_computation(stratified):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 40); s = np.round(y * 0.8 + rng.normal(0, 1, 40), 1)     # rounded: ties in the scores
    sp = [0, 0.1, 0.25, 0.5, 0.55, 0.8, 0.95, 1]
    got = ci_se(y, s, specificities=sp, n_boot=200, seed=4, stratified=stratified)
    lo, med, hi = _direct_ci_se(y, s, sp, 200, 4, 0.95, stratified)
    assert np.allclose(got["lo"], lo, atol=1e-12) and np.allclose(got["median"], med, atol=1e-12) and np.allclose(got["hi"], hi, atol=1e-12)
    assert (got["hi"] - got["lo"]).max() > 0.2
    assert ci_se(y, s, specificities=sp, n_boot=200, seed=4, stratified=stratified).equals(got)     # seeded
    assert not ci_se(y, s, specificities=sp, n_boot=200, seed=5, stratified=stratified).equals(got)


def test_roc_band_and_the_auc_ci_in_the_legend():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 90); s = y + rng.normal(0, 1.2, 90)
    fig, ax = plt.subplots()
    a = plot_roc(ax, y, s, "DLS", color=PALETTE["DLS"], n_boot=300, seed=2)
    ref = auc_ci(y, s)
    assert ax.get_legend().get_texts()[0].get_text() == f"DLS AUC {ref['auc']:.2f} ({ref['lo']:.2f}-{ref['hi']:.2f})"
    band = [c for c in ax.collections if c.get_gid() == "roc band DLS"]
    assert len(band) == 1 and matplotlib.colors.to_hex(band[0].get_facecolor()[0]) == PALETTE["DLS"]
    want = ci_se(y, s, n_boot=300, seed=2)
    assert a["band"].equals(want)
    v = band[0].get_paths()[0].vertices           # the polygon runs over x = 1 - specificity between lo and hi
    assert np.isclose(v[:, 1].min(), want["lo"].min()) and np.isclose(v[:, 1].max(), want["hi"].max())
    fig2, ax2 = plt.subplots()
    assert plot_roc(ax2, y, s, band=False)["band"] is None and not ax2.collections
    plt.close(fig); plt.close(fig2)


def test_gradcam_figures_have_a_colour_bar():
    from pdl1_dls.explain import plot_hyperimage_gradcam, plot_mri_gradcam
    rng = np.random.default_rng(0)
    f = plot_hyperimage_gradcam(rng.random((3, 64, 64)), rng.random((8, 8)), rng.random((8, 8)), title="x", group="high DLS")
    cb = [a for a in f.axes if a.get_label() == "<colorbar>"]
    assert len(cb) == 1 and cb[0].get_ylim() == (0, 1) and "Grad-CAM" in cb[0].get_ylabel()
    assert matplotlib.colors.to_hex(f._suptitle.get_color()) == PALETTE["high DLS"]
    g = plot_mri_gradcam(rng.random((3, 3, 32, 32)), rng.random((3, 32, 32)), title="y", group="low DLS")
    cb = [a for a in g.axes if a.get_label() == "<colorbar>"]
    assert len(cb) == 1 and len(g.axes) == 10 and matplotlib.colors.to_hex(g._suptitle.get_color()) == PALETTE["low DLS"]
    plt.close(f); plt.close(g)


def _toy_view():
    from pdl1_dls.explore import Run, SurvivalExplorer
    rng = np.random.default_rng(0)
    n = 60
    toy = pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "cohort": "ici1", "role": "ici",
                        "dls": rng.uniform(size=n), "pdl1": rng.integers(0, 2, n).astype(float),
                        "histology": rng.choice(["ADC", "SCC"], n), "ecog": rng.integers(0, 2, n)})
    toy["pfs_months"] = rng.exponential(6 / (1 + 2 * (toy.dls > 0.5)), n).round(2) + 0.1
    toy["pfs_event"] = (rng.uniform(size=n) < 0.8).astype(int)
    st = SimpleNamespace(outcomes={"pfs": {"time": "pfs_months", "event": "pfs_event"}}, label_column="pdl1",
                         cohorts={"ici1": SimpleNamespace(role="ici")}, path=None)
    return SurvivalExplorer(Run(Path("."), st, toy, 0.5))


def test_explorer_and_figures_share_the_palette():
    from pdl1_dls.explore import plot_survival
    sx = _toy_view()
    v = sx.compute()
    fig = plot_survival(v)
    ax = fig.axes[0]
    steps = {l.get_label().split(" (")[0]: matplotlib.colors.to_hex(l.get_color()) for l in ax.lines if " (n=" in l.get_label()}
    assert steps == {"low DLS": PALETTE["low DLS"], "high DLS": PALETTE["high DLS"]}
    assert len([c for c in ax.collections if (c.get_gid() or "").startswith("km band")]) == 2      # one band per group, drawn once
    # the paper figures' call (Mu 2021 Fig. 4 orders high first) gives each group the same colour
    d = v.data
    f2, a2 = plt.subplots()
    kp = plot_km(a2, d["time"], d["event"], d["group"], order=["high DLS", "low DLS"])
    assert {g: matplotlib.colors.to_hex(l.get_color()) for g, l in kp.lines.items()} == steps
    pd_view = sx.set(grouping="pdl1").compute()
    f3 = plot_survival(pd_view)
    c3 = {l.get_label().split(" (")[0]: matplotlib.colors.to_hex(l.get_color()) for l in f3.axes[0].lines if " (n=" in l.get_label()}
    assert c3 == {"PD-L1 negative": PALETTE["low DLS"], "PD-L1 positive": PALETTE["high DLS"]}
    for f in (fig, f2, f3): plt.close(f)


def test_box_strip_and_group_colours_use_the_palette():
    from pdl1_dls.plots import plot_box_strip
    fig, ax = plt.subplots()
    plot_box_strip(ax, [np.r_[0.7, 0.8], np.r_[0.2, 0.3]], ["PD-L1+", "PD-L1-"])
    cols = [matplotlib.colors.to_hex(c.get_facecolor()[0]) for c in ax.collections]
    assert cols == [PALETTE["high DLS"], PALETTE["low DLS"]]
    plt.close(fig)
    other = group_colors(["x", "y", "high DLS"])
    assert other[2] == PALETTE["high DLS"] and PALETTE["high DLS"] not in other[:2] and set(other[:2]) <= set(GROUP_COLORS)
