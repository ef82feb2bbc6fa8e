"Execute the real-data notebooks in nbs/real with papermill and check the tables they write independently."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "nbs" / "real").glob("*.ipynb"))


def run_nb(nb: Path, shared_data: Path, out: Path):
    import os
    import papermill as pm
    env_pp = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + env_pp if env_pp else "")
    try:
        pm.execute_notebook(str(nb), str(out / "executed.ipynb"), kernel_name="python3", language="python",
                            parameters=dict(data_dir=str(shared_data), out_dir=str(out)), cwd=str(REPO),
                            progress_bar=False)
    finally:
        if env_pp: os.environ["PYTHONPATH"] = env_pp
        else: os.environ.pop("PYTHONPATH", None)


@pytest.fixture(scope="module")
def loris_out(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loris")
    run_nb(REPO / "nbs" / "real" / "loris_nsclc_ihc.ipynb", shared_data, out)
    return out


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_real_notebook_has_parameters_cell(nb):
    import nbformat
    cells = nbformat.read(nb, as_version=4).cells
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert params and "data_dir = None" in params[0].source and "out_dir" in params[0].source


def _groups(shared_data, cohort):
    d = pd.read_csv(shared_data / "tables" / f"LORIS_{cohort}_NSCLC.csv")
    t = d["PDL1_TPS(%)"].dropna()
    return d, {"<1%": int((t < 1).sum()), "1-49%": int(((t >= 1) & (t < 50)).sum()), ">=50%": int((t >= 50).sum())}


def test_loris_tps_group_counts_and_logrank(loris_out, shared_data):
    km = pd.read_csv(loris_out / "km_medians.csv")
    for cohort in ("Vanguri", "Ravi"):
        d, exp = _groups(shared_data, cohort)
        pfs = km[(km.cohort == cohort) & (km.endpoint == "PFS")].set_index("tps_group")
        usable = d[d["PDL1_TPS(%)"].notna() & d.PFS_Event.notna() & d.PFS_Months.notna()]
        t = usable["PDL1_TPS(%)"]
        assert pfs.n.to_dict() == {"<1%": int((t < 1).sum()), "1-49%": int(((t >= 1) & (t < 50)).sum()),
                                   ">=50%": int((t >= 50).sum())}
        assert sum(exp.values()) == d["PDL1_TPS(%)"].notna().sum()
        assert (pfs.events <= pfs.n).all() and (pfs.lo <= pfs["median"]).all()
    lr = pd.read_csv(loris_out / "logrank.csv")
    assert np.isfinite(lr.chi2).all() and np.isfinite(lr.p).all() and ((lr.p > 0) & (lr.p < 1)).all()
    assert set(zip(lr.cohort, lr.endpoint)) >= {("Vanguri", "PFS"), ("Ravi", "PFS"), ("Ravi", "OS")}


def test_loris_logrank_matches_lifelines(loris_out, shared_data):
    from lifelines.statistics import multivariate_logrank_test
    d = pd.read_csv(shared_data / "tables" / "LORIS_Ravi_NSCLC.csv")
    d = d[d["PDL1_TPS(%)"].notna() & d.PFS_Event.notna() & d.PFS_Months.notna()]
    g = pd.cut(d["PDL1_TPS(%)"], [-np.inf, 1, 50, np.inf], right=False).astype(str)
    ref = multivariate_logrank_test(d.PFS_Months, g, d.PFS_Event).test_statistic
    lr = pd.read_csv(loris_out / "logrank.csv").set_index(["cohort", "endpoint"])
    assert abs(lr.loc[("Ravi", "PFS"), "chi2"] - ref) < 1e-8


def test_loris_auc_and_cox(loris_out, shared_data):
    from sklearn.metrics import roc_auc_score
    auc = pd.read_csv(loris_out / "auc_tps_response.csv").set_index("cohort")
    for cohort in ("Vanguri", "Ravi"):
        d = pd.read_csv(shared_data / "tables" / f"LORIS_{cohort}_NSCLC.csv")
        d = d[d["PDL1_TPS(%)"].notna() & d.Response.notna()]
        assert abs(auc.loc[cohort, "auc"] - roc_auc_score(d.Response, d["PDL1_TPS(%)"])) < 1e-12
        assert auc.loc[cohort, "lo"] < auc.loc[cohort, "auc"] < auc.loc[cohort, "hi"]
    cox = pd.read_csv(loris_out / "cox.csv")
    assert cox[cox.cohort == "Vanguri"].covariate.str.startswith("ecog").any()
    assert not cox[cox.cohort == "Ravi"].covariate.str.startswith("ecog").any()   # Ravi has no ECOG
    assert np.allclose(cox.hr, np.exp(cox.coef)) and (cox.hr_lo < cox.hr).all() and (cox.hr < cox.hr_hi).all()


def test_loris_outputs_written(loris_out):
    for stem in ("km_medians", "logrank", "cox", "auc_tps_response", "at_risk_Vanguri_PFS"):
        assert (loris_out / f"{stem}.csv").stat().st_size > 0 and (loris_out / f"{stem}.md").read_text().startswith("|")
    for stem in ("km_Vanguri_PFS", "km_Ravi_PFS", "km_Ravi_OS"):
        assert (loris_out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (loris_out / f"{stem}.svg").read_text()[:2000]
    assert not list(loris_out.glob("*.part*"))


def test_ibsi_mri_planes_notebook(shared_data, tmp_path):
    "The MRI preprocessing on the 16 real IBSI T1 MR: every patient's max-area planes match an independent argmax."
    run_nb(REPO / "nbs" / "real" / "ibsi_mri_planes.ipynb", shared_data, tmp_path)
    tab = pd.read_csv(tmp_path / "tables" / "ibsi_t1_planes.csv")
    assert len(tab) == 16 and tab.independent_match.all()
    assert (tab.crop_side_mm > 0).all() and (tab[["area_axial_mm2", "area_coronal_mm2", "area_sagittal_mm2"]] > 0).all().all()
    assert ((tab.volume_ml_1mm - tab.volume_ml_native).abs() <= 0.1 * tab.volume_ml_native).all()
    assert (tmp_path / "figures" / "ibsi_t1_planes.png").stat().st_size > 10_000
