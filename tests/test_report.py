"The comparison table: every published number once, agreement, integer counts, reasons, figures, cohort sizes; the published files."
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import pdl1_dls
from pdl1_dls.analysis import PAPER_COHORTS
from pdl1_dls.manifest import Cohort, Study
from pdl1_dls.report import (AGREEMENT_RULES, KEY_RULES, KINDS, agreement, cohort_sizes, finalize_comparisons, key_rule,
                             number_kind, published, record, write_index)

DATA = Path(pdl1_dls.__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
PAPERS = ("mu2021", "ding2025")


def fake_study(root, paper="mu2021", drop=(), n=10, columns=None, seed=0, synthetic=True):
    "An in-memory study with the paper's cohorts (those in `drop` left out), `n` patients each."
    rng = np.random.default_rng(seed)
    cos = {}
    for role, k in PAPER_COHORTS[paper]:
        if k in drop: continue
        t = pd.DataFrame({"patient_id": [f"{k}_{i}" for i in range(n)], "tps": rng.integers(0, 60, n).astype(float),
                          "age": rng.normal(60, 8, n), "suvmax": rng.gamma(4, 3, n), "histology": rng.choice(["ADC", "SCC"], n),
                          "ecog": rng.integers(0, 3, n), "dcb": rng.integers(0, 2, n).astype(float),
                          "pfs_months": rng.exponential(8, n), "pfs_event": 1.0})
        if columns is not None: t = t[["patient_id"] + list(columns)]
        t["label"] = (rng.random(n) < 0.4).astype(float)
        if role == "ici": t["label"] = np.nan
        cos[k] = Cohort(k, role, t, role != "ici", {})
    return Study(name=f"fake_{paper}", modality="petct" if paper == "mu2021" else "mri", root=Path(root), path=None,
                 spec={"synthetic": {"kind": "petct"}} if synthetic else {}, cohorts=cos, label_column="label",
                 label_source="tps", label_rule=">=1", outcomes={"dcb": "dcb", "pfs": {"time": "pfs_months", "event": "pfs_event"}},
                 covariates=[], image_keys=(), paper=paper)


STATUS = [dict(notebook="mu2021_01_table1", ok=True, seconds=1.0, error=""),
          dict(notebook="mu2021_02_fig3_performance", ok=True, seconds=1.0, error=""),
          dict(notebook="mu2021_07_dls_vs_ihc", ok=False, seconds=1.0, error="ValueError: boom\n  in cell 3")]


def _mu_run(tmp_path, figures=True):
    "A fake Mu 2021 run: a few records (one overwritten), finalised against a study without the VA cohort."
    study = fake_study(tmp_path, drop=("va",))
    record(tmp_path, "mu2021", "n_patients.sph_train", 10, cohort="sph_train")
    record(tmp_path, "mu2021", "n_patients.sph_val", 116, cohort="sph_val")
    record(tmp_path, "mu2021", "dls_auc.sph_train", 0.60, 0.50, 0.70, cohort="sph_train", note="first")
    record(tmp_path, "mu2021", "dls_auc.sph_train", 0.86, 0.80, 0.92, cohort="sph_train", note="DeLong")   # last wins
    record(tmp_path, "mu2021", "dls_auc.sph_val", 0.70, 0.60, 0.75, cohort="sph_val")                       # 0.84 outside
    record(tmp_path, "mu2021", "dls_auc.mcc_pdl1", 0.80, cohort="mcc_pdl1")                                 # no CI: |diff| 0.02
    record(tmp_path, "mu2021", "suvmax_auc.sph_train", 0.60, cohort="sph_train")                            # no CI: |diff| 0.09
    record(tmp_path, "mu2021", "delong_p_egfr.sph_train", 0.20, cohort="sph_train")                         # 0.71: same side
    record(tmp_path, "mu2021", "logrank_pfs_p.mcc_ici_retro", 0.30, cohort="mcc_ici_retro")                 # p<0.001: other side
    record(tmp_path, "mu2021", "hr_pfs_dls.mcc_ici_retro", 0.45, cohort="mcc_ici_retro")                    # ratio 1.10
    record(tmp_path, "mu2021", "median_pfs.mcc_ici_retro", 9.0, cohort="mcc_ici_retro")                     # 9 vs 7.43: > 10 %
    df = finalize_comparisons(tmp_path, "mu2021", study=study, status=STATUS, figures=figures)
    return tmp_path, study, df


@pytest.fixture(scope="module")
def mu_run(tmp_path_factory):
    "The fake run with its figures (drawn once: ~25 s on 2 busy cores); tests must not change it."
    return _mu_run(tmp_path_factory.mktemp("mu_run"))


# ---- every published number once ----

def test_finaliser_adds_every_published_key_exactly_once(mu_run):
    out, _, df = mu_run
    pub = published("mu2021")
    assert df["key"].is_unique and set(df["key"]) == set(pub)
    csv = pd.read_csv(out / "comparisons.csv")
    assert len(csv) == len(pub) and csv["key"].is_unique
    assert (csv["status"] == "recorded").sum() == 10
    rec = df.set_index("key")
    assert rec.loc["dls_auc.sph_train", "reproduced"] == 0.86 and rec.loc["dls_auc.sph_train", "note"] == "DeLong"
    assert rec.loc["dls_auc.sph_train", "published"] == 0.89 and rec.loc["dls_auc.sph_train", "reproduced_lo"] == 0.80
    miss = rec[rec["status"] == "missing"]
    assert miss["reproduced"].isna().all() and (miss["note"] != "").all() and miss["agrees"].isna().all()


def test_finaliser_is_idempotent_and_a_later_record_replaces_the_empty_row(tmp_path):
    out, study, df = _mu_run(tmp_path, figures=False)
    again = finalize_comparisons(out, "mu2021", study=study, status=STATUS, figures=False)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), again.reset_index(drop=True))
    record(out, "mu2021", "cutoff", 0.52, cohort="sph_train")
    third = finalize_comparisons(out, "mu2021", study=study, status=STATUS, figures=False).set_index("key")
    assert len(third) == len(df) and third.loc["cutoff", "status"] == "recorded" and third.loc["cutoff", "agrees"] is True


def test_finaliser_for_ding_without_a_study(tmp_path):
    record(tmp_path, "ding2025", "table1_n.train", 267, cohort="train")
    record(tmp_path, "ding2025", "auc_t1.ici", 0.61, cohort="ici")              # a number the paper does not give: kept
    df = finalize_comparisons(tmp_path, "ding2025", figures=False).set_index("key")
    assert set(df.index) == set(published("ding2025")) | {"auc_t1.ici"} and df.index.is_unique
    assert df.loc["auc_t1.ici", "rule"] == "not a published number" and df.loc["auc_t1.ici", "agrees"] is None
    assert df.loc["table1_n.train", "agrees"] is True
    assert df.loc["auc_dls.internal", "note"] == "not recorded by ding2025_02_table2"
    assert df.loc["n_text.external", "note"] == "not recorded by ding2025_01_table1"


# ---- agreement ----

def test_agrees_inside_outside_and_without_ci(mu_run):
    _, _, df = mu_run
    a = df.set_index("key")["agrees"]
    assert a["dls_auc.sph_train"] is True            # 0.89 inside 0.80-0.92
    assert a["dls_auc.sph_val"] is False             # 0.84 outside 0.60-0.75
    assert a["dls_auc.mcc_pdl1"] is True             # no CI, within 0.05
    assert a["suvmax_auc.sph_train"] is False        # no CI, 0.09 off
    assert a["delong_p_egfr.sph_train"] is True      # both above 0.05
    assert a["logrank_pfs_p.mcc_ici_retro"] is False  # published p<0.001, reproduced 0.30
    assert a["hr_pfs_dls.mcc_ici_retro"] is True     # no CI, ratio 0.45/0.41 = 1.10
    assert a["median_pfs.mcc_ici_retro"] is False    # no CI, 21 % off
    assert a["n_patients.sph_train"] is False and a["n_patients.sph_val"] is True   # counts: exact
    rules = df.set_index("key")["rule"]
    assert rules["dls_auc.sph_train"] == "inside reproduced CI" and rules["dls_auc.mcc_pdl1"] == "|diff| <= 0.05"
    csv = pd.read_csv(mu_run[0] / "comparisons.csv").set_index("key")
    assert csv.loc["dls_auc.sph_val", "agrees"] in (False, "False") and pd.isna(csv.loc["dls_auc.va", "agrees"])


def test_agreement_rules_per_kind():
    ci = {"value": 0.5, "lo": 0.3, "hi": 0.7}
    assert agreement(ci, "auc", 0.2, 0.1, 0.5) == (True, "inside reproduced CI")
    assert agreement(ci, "auc", 0.2, 0.1, 0.45)[0] is False
    assert agreement({"value": 0.5, "interval": "iqr"}, "score", 0.53, 0.0, 0.1)[0] is True      # an IQR is no CI
    assert agreement({"value": 3}, "count", 3.0, 1, 9) == (True, "exact count")                   # counts ignore a CI
    assert agreement({"value": 0.05, "bound": "<"}, "p", 0.049)[0] is True
    assert agreement({"value": 0.049}, "p", 0.051)[0] is False
    assert agreement({"value": 0.30}, "correlation", 0.39)[0] is True and agreement({"value": 0.30}, "correlation", 0.41)[0] is False
    assert agreement({"value": 0.5}, "hr", 0.39)[0] is False and agreement({"value": 0.5}, "hr", 0.62)[0] is True
    assert agreement({"value": 0.5}, "hr", np.inf)[0] is False                                    # a separated Cox model
    assert agreement({"value": 20.0}, "value", 21.9)[0] is True and agreement({"value": 20.0}, "value", 22.1)[0] is False
    assert agreement({"value": 0.5}, "proportion", None) == (None, "") and agreement({"value": 0.5}, "proportion", np.nan)[0] is None
    assert set(AGREEMENT_RULES) == {"ci"} | set(KINDS) - set()


def test_number_kinds():
    kinds = {"n_patients.va": "count", "table1_sex_male_n.train": "count", "n_dls_high.mcc_ici_pro": "count",
             "table1_age_p": "p", "logrank_p_pfs.internal": "p", "dcb_auc_dls_vs_ihc_p.va": "p", "dls_auc.va": "auc",
             "cindex_os_model.va": "auc", "icc_dls_readers.sph_val": "auc", "dcb_rate_high.mcc_ici_pro": "proportion",
             "spec_dls.external": "proportion", "spearman_dls_tps.sph": "correlation", "hr_os_ihc.va": "hr",
             "hr_os_diff.va": "difference", "cutoff": "score", "median_os.va": "value", "table1_age_mean.train": "value"}
    for k, v in kinds.items(): assert number_kind(k) == v, k
    assert number_kind("table2_age_p.mcc_ici_pro", {"kind": "p"}) == "p"


# ---- printing ----

def test_counts_print_as_integers(mu_run):
    out, _, _ = mu_run
    text = (out / "comparisons.csv").read_text()
    assert "n_patients.sph_train,Table 1: cohorts and PD-L1,patients in the SPH training cohort,sph_train,count,284,,,,,10," in text
    assert "284.0" not in text and ",count,128,,,,,," in text
    write_index(out, "fake", "mu2021", STATUS, synthetic=True)
    md = (out / "index.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| n_patients.sph_train |"))
    assert "| 284 |" in row and "| 10 |" in row and ".000" not in row
    assert "| <0.001 |" in md                                    # p values keep their printed bound
    assert "284.000" not in md and "128.000" not in md
    html = (out / "index.html").read_text()
    assert "<td>284</td>" in html
    assert "| 0.630 (IQR 0.600–0.710) |" in md                   # an IQR is labelled, not shown as a CI


# ---- reasons ----

def test_reasons_for_missing_numbers(mu_run):
    _, _, df = mu_run
    note = df.set_index("key")["note"]
    assert note["dls_auc.va"].startswith("cohort absent") and "va" in note["dls_auc.va"]
    assert note["hr_os_dls.va"].startswith("cohort absent")
    assert note["hr_os_dls.mcc_ici_retro"].startswith("outcome absent: no OS")            # the study has no OS
    assert note["table2_bmi_mean.mcc_ici_retro"].startswith("column absent: 'bmi'")
    assert note["icc_dls_readers.sph_val"].startswith("column absent: 'roi_reader2'")
    assert note["pdl1_prevalence.sph_train"].startswith("not estimable on this study: mu2021_01_table1 ran")
    assert note["accuracy.sph_val"].startswith("not estimable on this study: mu2021_02_fig3_performance")
    assert note["hr_pfs_ihc.mcc_pdl1"] == "not estimated: notebook mu2021_07_dls_vs_ihc failed (ValueError: boom in cell 3)"
    assert note["dls_pet_auc.sph_train"] == "not estimated: notebook mu2021_04_ablation did not run in this run"
    assert note["dls_auc_p.sph_train"].startswith("not estimable on this study: mu2021_02_fig3_performance")
    assert note["table2_age_mean.mcc_ici_pro"] == "not estimated: notebook mu2021_09_fig4_prognosis did not run in this run"
    assert note["spearman_dls_tps.sph"].startswith("not estimated: notebook mu2021_03_association did not run")


def test_planned_and_unruled_keys(tmp_path, monkeypatch):
    "A rule marked planned gives the 'not yet' reason; an unruled `<quantity>_p` takes its number's rule as planned."
    from pdl1_dls import report
    study = fake_study(tmp_path)
    planned = report.KeyRule(r"dls_auc_p\.", "S", "mu2021_02_fig3_performance", ("label",), True)
    monkeypatch.setitem(report.KEY_RULES, "mu2021", [planned] + report.KEY_RULES["mu2021"])
    assert (report._missing_reason("mu2021", "dls_auc_p.sph_train", study, STATUS)
            == "not reproduced by any notebook yet (it belongs with mu2021_02_fig3_performance)")
    r, _ = key_rule("mu2021", "dls_auc_egfr_mut_p.sph_train")      # no rule of its own: its AUC's rule, planned
    assert r.notebook == "mu2021_05_subgroups" and r.planned


def test_no_published_key_is_planned():
    "Every published number has a notebook that records it (a key the data cannot give keeps its reason, not `planned`)."
    for paper in PAPERS:
        planned = [k for k in published(paper) if key_rule(paper, k)[0].planned]
        assert not planned, (paper, planned[:10])


def assert_keys_recorded(out, study, status):
    """On a reproduction run: every published key that is not planned, whose notebook ran and whose needs (cohort,
    columns, outcomes) the study meets, is recorded with a finite value, or recorded by its notebook with a note that
    says why not. The finaliser's fallback ('ran and recorded no value') counts as a silent regression."""
    from pdl1_dls.report import _missing_reason, _read_cmp
    paper = study.paper
    df = _read_cmp(Path(out) / "comparisons.csv").set_index("key")
    ran = {s["notebook"] for s in status if s["ok"]}
    bad, checked = [], 0
    for key in published(paper):
        rule, _ = key_rule(paper, key)
        if rule.planned or rule.notebook not in ran: continue
        if _missing_reason(paper, key, study, status).startswith(("cohort absent", "column absent", "outcome absent")): continue
        checked += 1
        r = df.loc[key]
        if r["status"] == "recorded" and (np.isfinite(r["reproduced"]) or r["note"]): continue
        bad.append(f"{key}: {r['status']} ({r['note'][:120]})")
    assert checked > 0 and not bad, f"{len(bad)} of {checked} computable keys not recorded:\n" + "\n".join(bad)
    return checked


def test_label_and_pooled_sph_reasons(tmp_path):
    study = fake_study(tmp_path, drop=("sph_train", "sph_val"), columns=["dcb"])
    df = finalize_comparisons(tmp_path, "mu2021", study=study, status=STATUS, figures=False).set_index("key")
    assert df.loc["spearman_dls_tps.sph", "note"].startswith("cohort absent") and "train/validation" in df.loc["spearman_dls_tps.sph", "note"]
    assert df.loc["spearman_dls_tps.mcc_pdl1", "note"] == "column absent: the IHC PD-L1 score has no values in cohort mcc_pdl1"
    assert df.loc["dcb_auc_dls_ihc_subset.va", "note"].startswith("not estimated: notebook mu2021_07_dls_vs_ihc failed")


# ---- figures and the index ----

def test_forest_figures_per_section_shown_in_the_index(mu_run):
    out, _, df = mu_run
    sections = list(dict.fromkeys(df["section"]))
    figs = sorted((out / "figures").glob("comparison_*.png"))
    assert len(figs) == len(sections) == 12
    for f in figs: assert f.stat().st_size > 5000 and f.with_suffix(".svg").is_file()
    write_index(out, "fake", "mu2021", STATUS, synthetic=True)
    html = (out / "index.html").read_text()
    for f in figs: assert html.count(f"src='figures/{f.name}'") == 1
    for s in sections: assert f"<h3>{s}</h3>" in html
    assert "Where the paper contradicts itself" in html and "77.43 % is no k/35" in html


def test_index_gives_cohort_sizes_beside_the_papers(mu_run):
    out, study, _ = mu_run
    cs = pd.read_csv(out / "cohorts.csv").set_index("paper_cohort")
    assert cs.loc["sph_train", "n_study"] == 10 and cs.loc["sph_train", "n_paper"] == 284
    assert cs.loc["mcc_ici_pro", "n_paper"] == 49 and cs.loc["va", "n_study"] == 0
    write_index(out, "fake", "mu2021", STATUS, synthetic=True)
    md = (out / "index.md").read_text()
    assert "## Cohorts: this study beside the paper" in md and "| sph_train | train | sph_train | 10 | 10 | 284 |" in md
    assert "not expected to equal the paper's" in md and "Absent from this study: va" in md
    write_index(out, "fake", "mu2021", STATUS, synthetic=False)
    md = (out / "index.md").read_text()
    assert "not expected to equal" not in md and "differ in size" in md


def test_cohort_sizes_ding(tmp_path):
    cs = cohort_sizes(fake_study(tmp_path, paper="ding2025", n=5), "ding2025").set_index("paper_cohort")
    assert list(cs["n_paper"]) == [267, 115, 134, 94] and (cs["n_study"] == 5).all()


def test_run_reproduction_finalises_and_names_the_notebooks(tmp_path, monkeypatch):
    "The runner names each notebook for record(), finalises the table, writes cohort sizes and the synthetic flag."
    import nbformat
    import pdl1_dls.report as rp
    from pdl1_dls.synth import make_petct_study
    nbd = tmp_path / "nbs"; nbd.mkdir()
    def nb(name, *cells):
        n = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("manifest = out_dir = None\nseed = n_boot = 0\nquick = True"); p.metadata["tags"] = ["parameters"]
        n.cells = [p] + [nbformat.v4.new_code_cell(c) for c in cells]
        nbformat.write(n, nbd / f"{name}.ipynb")
    nb("mu2021_01_table1", "from pdl1_dls.report import record\nrecord(out_dir, 'mu2021', 'n_patients.sph_train', 8, cohort='sph_train')")
    nb("mu2021_02_fig3_performance", "raise ValueError('boom')")
    monkeypatch.setattr(rp, "notebooks_dir", lambda: nbd)
    monkeypatch.delenv("PDL1_DLS_NOTEBOOK", raising=False)
    man = make_petct_study(tmp_path / "study", scale="tiny", seed=0)
    res = rp.run_reproduction(man, tmp_path / "run", seed=0, n_boot=10, quick=True, log=lambda *a: None)
    assert not res["ok"] and [s["ok"] for s in res["notebooks"]] == [True, False]
    assert "PDL1_DLS_NOTEBOOK" not in os.environ
    cmp = pd.read_csv(tmp_path / "run" / "comparisons.csv").set_index("key")
    assert set(cmp.index) == set(published("mu2021"))
    assert cmp.loc["n_patients.sph_train", "notebook"] == "mu2021_01_table1" and cmp.loc["n_patients.sph_train", "reproduced"] == 8
    assert "failed (ValueError: boom)" in cmp.loc["dls_auc.sph_train", "note"]
    assert cmp.loc["cindex_dcb_model.va", "note"] == "not estimated: notebook mu2021_11_multivariable did not run in this run"
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["synthetic"] is True and prov["comparisons_error"] == ""
    md = (tmp_path / "run" / "index.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| sph_train | train | sph_train | 8 |"))
    assert row.endswith("| 284 | n_patients.sph_train (Table 1) |") and "not expected to equal the paper's" in md


# ---- the published files ----

def _entries():
    for f in sorted(DATA.glob("published_*.yaml")):
        paper = f.stem.split("_")[1]
        for k, v in (yaml.safe_load(f.read_text()) or {}).items(): yield paper, f.name, k, v


def test_published_entries_are_well_formed():
    cohorts = {p: {k for _, k in PAPER_COHORTS[p]} | ({"sph"} if p == "mu2021" else set()) for p in PAPERS}
    allowed = {"value", "lo", "hi", "description", "source", "kind", "bound", "interval", "flag", "section"}
    n = 0
    for paper, f, key, v in _entries():
        n += 1
        q, dot, c = key.rpartition(".")
        if dot: assert re.fullmatch(r"[a-z0-9_]+", q) and c in cohorts[paper], (f, key)
        else: assert key == "cutoff" or re.fullmatch(r"table1_[a-z0-9_]+_p", key), (f, key)       # no cohort: all of them
        assert isinstance(v, dict) and {"value", "description", "source"} <= set(v) <= allowed, (f, key)
        assert isinstance(v["value"], (int, float)) and np.isfinite(v["value"]), (f, key)
        assert str(v["description"]).strip() and str(v["source"]).strip(), (f, key)
        if v.get("lo") is not None or v.get("hi") is not None: assert v["lo"] <= v["value"] <= v["hi"], (f, key)
        kind = number_kind(key, v)
        assert kind in KINDS, (f, key, kind)
        if kind == "count": assert float(v["value"]).is_integer() and v["value"] >= 0, (f, key)
        if kind in ("p", "proportion", "auc"): assert 0 <= v["value"] <= 1, (f, key)
        if kind == "hr": assert v["value"] > 0, (f, key)
        if "bound" in v: assert v["bound"] in ("<", "<=") and kind == "p", (f, key)
        if "interval" in v: assert v["interval"] in ("ci", "iqr"), (f, key)
        assert key_rule(paper, key)[0] is not None, (f, key)
    assert n == sum(len(published(p)) for p in PAPERS)       # published() merges the files; no key is defined twice


def test_key_rules_name_existing_notebooks_and_match_keys():
    nbs = {p.stem for p in (REPO / "nbs" / "reproduce").glob("*.ipynb")}
    for paper, rules in KEY_RULES.items():
        keys = list(published(paper))
        for r in rules:
            assert r.notebook in nbs, r
            assert any(re.match(r.pattern, k) for k in keys), r.pattern


def test_new_transcriptions_match_the_papers(seeds_dir):
    mu = published("mu2021"); ding = published("ding2025")
    lines = (seeds_dir / "000_f2edf65a3ccdc4f6.txt").read_text().split("\n")
    text = " ".join(" ".join(lines).split())
    table2 = "".join(l for l in lines if len(l) <= 3)                   # Table 2: the one-character lines joined
    for frag in ("AUCs of 0.90 (95% CI: 0.85 to 0.97, p<0.001)", "68.57% of the patients showed PD-L1",
                 "coeffi- cient=0.32, p=0.005", "(N=128)", "(N=49)", "0.66 (95%CI: 0.53 to 0.77; p=0.014)"):
        assert frag in text, frag
    for frag in ("SUVmax0.014*0.15", "Mean±SD11.82±6.98", "Age (years)0.0990.20", "Sex, No (%)0.380.56", "EGFR, No (%)1.001.00"):
        assert frag in table2, frag
    assert mu["dls_auc_advanced.sph"] == {**mu["dls_auc_advanced.sph"], "value": 0.90, "lo": 0.85, "hi": 0.97}
    assert mu["pdl1_positive_share.va"]["value"] == 0.6857 and mu["ols_coef_suvmax_p.mcc_pdl1"]["value"] == 0.005
    assert mu["table2_suvmax_mean.mcc_ici_retro"]["value"] == 11.82 and mu["table2_suvmax_sd.mcc_ici_retro"]["value"] == 6.98
    assert mu["table2_suvmax_p.mcc_ici_retro"]["value"] == 0.014 and mu["table2_suvmax_p.mcc_ici_pro"]["value"] == 0.15
    assert mu["dls_median_high.mcc_ici_retro"]["hi"] == 0.71 and mu["n_patients.mcc_ici_retro"]["value"] == 128
    assert mu["dls_auc_p.va"]["value"] == 0.028 and mu["hr_os_dls_p.mcc_ici_pro"]["value"] == 0.003
    # each Table 2 count over its group size equals the printed percentage, except the flagged cells
    N = {"mcc_ici_retro": {"": 128, "_high": 43, "_low": 85}, "mcc_ici_pro": {"": 49, "_high": 31, "_low": 18}}
    for k, v in mu.items():
        m = re.fullmatch(r"(table2_\w+)_prop(_high|_low)?\.(\w+)", k)
        if not m: continue
        n = mu[f"{m.group(1)}_n{m.group(2) or ''}.{m.group(3)}"]["value"]
        assert "flag" in v or abs(v["value"] - n / N[m.group(3)][m.group(2) or ""]) < 1e-4, k
    dtext = (seeds_dir / "003_14c2849015109ffe.txt").read_text()
    assert "external validation cohort of 197 patients" in dtext and ding["n_text.external"]["value"] == 197
    assert ding["table1_n.external"]["value"] == 134 and "flag" in ding["n_text.external"]


# ---- review fixes: one look-up of the bundles, the primary bundle from scores.json ----

@pytest.fixture(scope="module")
def tiny_petct(tmp_path_factory):
    "A tiny synthetic PET/CT manifest, made once for the runner tests below."
    from pdl1_dls.synth import make_petct_study
    return make_petct_study(tmp_path_factory.mktemp("tiny") / "study", scale="tiny", seed=0)


def test_run_reproduction_looks_the_bundles_up_once(tmp_path, monkeypatch, tiny_petct):
    "External validation: `analysis.external_bundles` is called once (the inside-the-bundle check and the scoring share it)."
    import pdl1_dls.analysis as an
    import pdl1_dls.report as rp
    man = tiny_petct
    calls, bundle = [], tmp_path / "bundle"
    class Scored(Exception): pass
    def fake_bundles(path):
        calls.append(Path(path)); return {"hyper": bundle}
    def fake_apply(study, bundles, out, trained_here=True):
        assert bundles == {"hyper": bundle} and trained_here is False
        raise Scored
    monkeypatch.setattr(an, "external_bundles", fake_bundles)
    monkeypatch.setattr(an, "apply_models", fake_apply)
    with pytest.raises(Scored):
        rp.run_reproduction(man, tmp_path / "run", seed=0, n_boot=10, quick=True, model=bundle, log=lambda *a: None)
    assert calls == [bundle]
    with pytest.raises(pdl1_dls.core.PDL1Error, match="inside the model bundle"):   # the check still uses them
        rp.run_reproduction(man, bundle / "out", seed=0, n_boot=10, quick=True, model=bundle, log=lambda *a: None)
    assert len(calls) == 2


def test_index_shows_the_card_of_the_primary_bundle_from_scores_json(tmp_path):
    "write_index names the bundle that gave the DLS from scores.json's `primary` (what apply_models used), not by guessing."
    out = tmp_path / "run"; out.mkdir()
    a, b = tmp_path / "a_pet", tmp_path / "b_hyper"
    for p, txt in ((a, "CARD OF THE PET-ONLY MODEL"), (b, "CARD OF THE HYPER-IMAGE DLS MODEL")):
        p.mkdir(); (p / "MODEL_CARD.md").write_text(txt)
    (out / "provenance.json").write_text(json.dumps({"model": {"pet": str(a), "hyper": str(b)}}))
    (out / "scores.json").write_text(json.dumps({"primary": str(b), "models": {"dls_pet": str(a), "dls": str(b)}}))
    html_ = write_index(out, study_name="x", paper="mu2021").read_text()
    assert "CARD OF THE HYPER-IMAGE DLS MODEL" in html_ and "CARD OF THE PET-ONLY MODEL" not in html_
    (out / "scores.json").write_text(json.dumps({"primary": str(a)}))
    assert "CARD OF THE PET-ONLY MODEL" in write_index(out, study_name="x", paper="mu2021").read_text()


# ---- what the notebook's kernel is doing, shown by reproduce ----

def test_training_reports_model_and_epoch_progress(tmp_path, monkeypatch):
    "train_models and the shared training loop write 'models k/n' and 'epoch e/E' to $PDL1_DLS_PROGRESS_FILE while they run."
    from types import SimpleNamespace
    import torch
    import pdl1_dls.analysis as an
    import pdl1_dls.core as core
    from pdl1_dls.training import EarlyStopping, fit_epochs
    f = tmp_path / "progress.json"
    monkeypatch.setenv("PDL1_DLS_PROGRESS", "1"); monkeypatch.setenv(core.PROGRESS_FILE_ENV, str(f))
    monkeypatch.setattr(core, "PROGRESS_FILE_EVERY", 0.0)
    seen = []
    class Pipe:
        paper_models = {"hyper": {}, "pet": {}}
        def train(self, study, out, **kw):
            net = torch.nn.Linear(2, 1)
            fit_epochs(net, lambda e: {"train_loss": 1.0}, lambda e: ((0.5,), {"inner_auc": 0.5}), EarlyStopping(10), 3,
                       on_epoch_end=lambda ep, row: seen.append(json.loads(f.read_text())["bars"]), desc=f"train {out.name}")
    monkeypatch.setattr(an, "pipeline", lambda modality: Pipe())
    an.train_models(SimpleNamespace(modality="petct"), tmp_path / "run", seed=0, quick=True)
    got = [[(b["desc"], b["n"], b["total"], b["unit"]) for b in s] for s in seen]
    assert got == [[("models", k, 2, "model"), (f"train {m}", e, 3, "epoch")] for k, m in enumerate(("hyper", "pet")) for e in (1, 2, 3)]
    assert json.loads(f.read_text())["bars"] == []                     # every bar closed
    assert pdl1_dls.report._bars_text({"bars": [dict(desc="models", n=1, total=2, unit="model"),
                                                dict(desc="train pet", n=12, total=60, unit="epoch")]}) == \
        "models 1/2 model · train pet 12/60 epoch"


def _progress_notebook(nbd):
    import nbformat
    n = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("manifest = out_dir = None\nseed = n_boot = 0\nquick = True"); p.metadata["tags"] = ["parameters"]
    body = ("import os, time, json\nfrom pathlib import Path\nfrom pdl1_dls.core import progress\n"
            "pf = os.environ.get('PDL1_DLS_PROGRESS_FILE')\n"
            "json.dump({'progress_file': pf}, open(Path(out_dir) / 'kernel_env.json', 'w'))\n"
            "with progress(total=2, desc='models', unit='model') as m:\n"
            "    for k in range(2):\n"
            "        with progress(total=2, desc=f'train m{k}', unit='epoch') as b:\n"
            "            for e in range(2): time.sleep(1.2); b.update()\n"
            "        m.update()\n")
    n.cells = [p, nbformat.v4.new_code_cell(body)]
    nbformat.write(n, nbd / "mu2021_00_train_score.ipynb")


@pytest.mark.slow          # a papermill kernel and the finaliser: ~80 s each on 2 busy cores
@pytest.mark.parametrize("shown", [True, False])
def test_reproduce_shows_the_kernels_progress(tmp_path, monkeypatch, shown, tiny_petct):
    "While the training notebook runs, run_reproduction reads the kernel's progress file into its bar; off with PDL1_DLS_PROGRESS=0."
    import pdl1_dls.report as rp
    nbd = tmp_path / "nbs"; nbd.mkdir()
    _progress_notebook(nbd)
    monkeypatch.setattr(rp, "notebooks_dir", lambda: nbd)
    monkeypatch.setenv("PDL1_DLS_PROGRESS", "1" if shown else "0")
    monkeypatch.delenv("PDL1_DLS_PROGRESS_FILE", raising=False)
    texts = []
    real = rp._bars_text
    monkeypatch.setattr(rp, "_bars_text", lambda state: texts.append(real(state)) or texts[-1])
    res = rp.run_reproduction(tiny_petct, tmp_path / "run", seed=0, n_boot=10, quick=True, log=lambda *a: None)
    assert res["notebooks"][0]["ok"], res["notebooks"]
    env = json.loads((tmp_path / "run" / "kernel_env.json").read_text())
    assert "PDL1_DLS_PROGRESS_FILE" not in os.environ and not (tmp_path / "run" / "progress.json").exists()
    if shown:
        assert env["progress_file"] == str((tmp_path / "run" / "progress.json").resolve())
        assert any(t.startswith("models 0/2 model · train m0 ") for t in texts) and any("models 1/2 model · train m1" in t for t in texts)
    else:
        assert env["progress_file"] is None and texts == []


def test_reproduction_notebooks_take_seed_and_n_boot_from_settings(tmp_path, monkeypatch):
    "A reproduction notebook opened by hand uses settings.ini's seed and n_boot (reproduce injects its own): no literal defaults."
    import nbformat
    from pdl1_dls.report import declared_parameters, notebooks_dir
    ini = tmp_path / "settings.ini"
    ini.write_text("[pdl1_dls]\nseed = 7\nn_boot = 123\n")
    monkeypatch.setenv("PDL1_DLS_SETTINGS", str(ini))
    seen = 0
    for nb in sorted(notebooks_dir().glob("*.ipynb")):
        cell = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
        ns = {}
        exec(cell, ns)
        for k, want in (("seed", 7), ("n_boot", 123)):
            if k in ns:
                assert ns[k] == want, (nb.name, k, ns[k]); seen += 1
        assert set(declared_parameters(nb, dict(seed=1, n_boot=2))) == {k for k in ("seed", "n_boot") if k in ns}, nb.name
    assert seen >= 10
