"""nbs/real/ibsi_petct_dls.ipynb on the real IBSI sarcoma PET/CT: run it with papermill and check its table
against counts made here from the raw masks (30 % rule, 20 mm dilation in millimetres)."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
NB = REPO / "nbs" / "real" / "ibsi_petct_dls.ipynb"
PATIENTS = ["STS_002", "STS_003", "STS_008", "STS_012", "STS_015", "STS_018", "STS_019", "STS_024",
            "STS_025", "STS_026", "STS_032", "STS_035", "STS_041", "STS_042", "STS_047", "STS_051"]


def _random_hyper_model(folder: Path) -> Path:
    "An untrained hyper-image SResCNN saved as a training run would be (the pipeline, not the weights, is under test)."
    from pdl1_dls.core import seed_everything
    from pdl1_dls.petct.srescnn import make_model
    from pdl1_dls.petct.pipeline import TrainConfig, save_state
    seed_everything(0)
    cfg = TrainConfig(channels="hyper")
    folder.mkdir(parents=True, exist_ok=True)
    save_state(make_model("hyper", dropout=cfg.dropout).state_dict(), folder / "model.pt")
    from pdl1_dls.petct.preprocess import DEFAULTS
    from pdl1_dls.training import write_bundle
    write_bundle(folder, dict(name="random-init test model", modality="petct", paper="mu2021", score="dls", outputs=["dls"],
                              inputs=["pet", "ct", "roi"], identity="random-init", config_hash=cfg.identity(), config=dataclasses.asdict(cfg),
                              preprocessing={k: list(v) if isinstance(v, tuple) else v for k, v in DEFAULTS.items()},
                              cutoff=dict(value=0.5, rule="none: untrained test model"), training=dict(study="random-init test model")),
                 ["model.pt"])
    return folder


def _run(out: Path, **params):
    import papermill as pm
    pm.execute_notebook(str(NB), str(out / "executed.ipynb"), kernel_name="python3", language="python",
                        parameters=dict(out_dir=str(out), **params), cwd=str(REPO), progress_bar=False)


@pytest.fixture(scope="module")
def ibsi_out(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ibsi_petct")
    run = _random_hyper_model(out / "model")
    _run(out, data_dir=str(shared_data), run_dir=str(run))
    return out


def _independent_kept(mask_path: Path, frac: float = 0.30) -> int:
    import nibabel as nib
    img = nib.load(str(mask_path))
    m = np.asarray(img.dataobj) > 0                       # (x, y, z) in nibabel's axis order
    sx, sy = (float(v) for v in img.header.get_zooms()[:2])
    areas = []
    for z in range(m.shape[2]):
        xs, ys = np.nonzero(m[:, :, z])
        if len(xs): areas.append(max((xs.max() - xs.min() + 1) * sx, (ys.max() - ys.min() + 1) * sy) ** 2)
    a = np.array(areas)
    return int((a > frac * a.max()).sum())


def test_parameters_cell():
    import nbformat
    cells = nbformat.read(NB, as_version=4).cells
    p = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert p and "data_dir = None" in p[0].source and "run_dir = None" in p[0].source and "out_dir" in p[0].source


def test_kept_slices_and_dilation_on_real_images(ibsi_out, shared_data):
    tab = pd.read_csv(ibsi_out / "tables" / "ibsi_petct_dls.csv")
    assert sorted(tab["patient_id"]) == PATIENTS
    root = shared_data / "ibsi_sts_petct_mr" / "nifti"
    for _, r in tab.iterrows():
        assert r["kept_slices"] == _independent_kept(root / r["patient_id"] / "CT_mask.nii.gz"), r["patient_id"]
        assert r["kept_slices"] <= r["roi_slices"]
    assert np.allclose(tab["crop_max_mm"] - tab["ssm_side_max_mm"], 20.0)   # 20 mm, whatever the voxel size
    assert tab["dls"].between(0, 1).all() and (tab["slice_prob_min"] <= tab["dls"]).all() and (tab["dls"] <= tab["slice_prob_max"]).all()


def test_figures_written(ibsi_out):
    png = {p.stem for p in (ibsi_out / "figures").glob("*.png")}
    svg = {p.stem for p in (ibsi_out / "figures").glob("*.svg")}
    assert png == svg and "ibsi_petct_hyperimages" in png
    assert sum(s.startswith("ibsi_petct_gradcam_") for s in png) >= 3


def test_skips_cleanly_without_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PDL1_DLS_DATA", str(tmp_path / "nowhere"))
    _run(tmp_path, data_dir=str(tmp_path / "nowhere"), run_dir=str(tmp_path / "no_model"))
    assert not (tmp_path / "tables").exists()


@pytest.mark.slow
def test_trains_a_tiny_model_when_no_run_dir(shared_data, tmp_path):
    _run(tmp_path, data_dir=str(shared_data))
    nb = (tmp_path / "executed.ipynb").read_text()
    assert "trained a hyper-image model on the tiny SYNTHETIC study" in nb
    assert (tmp_path / "tables" / "ibsi_petct_dls.csv").is_file()
