"End to end on synthetic PET/CT studies: files and columns on the tiny study (fast); AUC and the permutation control on the small study (slow)."
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.synth import make_petct_study
from pdl1_dls.train import score_study, train_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_petct_study(tmp_path_factory.mktemp("tiny") / "study", scale="tiny", seed=0)


def test_tiny_study_files_and_columns(tiny, tmp_path):
    torch.set_num_threads(2)
    run, cache = tmp_path / "run", tmp_path / "cache"
    m = train_study(tiny, run, seed=0, epochs=1, quick=True, cache_dir=cache, device="cpu")
    saved = json.loads((run / "metrics.json").read_text())
    assert "val_auc" in saved and saved == json.loads(json.dumps(m))
    assert saved["n_patients"]["validation"] > 0 and saved["epochs_run"] == 1
    for f in ("model.pt", "config.json", "train_log.csv", "skipped.csv", "checkpoint.pt"):
        assert (run / f).is_file(), f
    assert set(pd.read_csv(run / "skipped.csv").columns) >= {"patient_id", "reason"}
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    df = score_study(tiny, run, cache_dir=cache)
    dls = pd.read_csv(run / "dls.csv")
    assert list(dls.columns) == ["patient_id", "cohort", "dls", "n_slices"]
    assert {"mcc_ici_retro", "mcc_ici_pro"} <= set(dls.cohort)          # unlabeled ICI cohorts are scored too
    assert dls.dls.between(0, 1).all() and (dls.n_slices > 0).all()
    feats = pd.read_csv(run / "features.csv")
    assert list(feats.columns) == ["patient_id"] + [f"f{i:03d}" for i in range(256)]
    assert feats.patient_id.tolist() == dls.patient_id.tolist() == df.patient_id.tolist()
    assert np.isfinite(feats.iloc[:, 1:].to_numpy()).all()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_petct_study(tmp_path_factory.mktemp("small") / "study", scale="small", seed=0)


@pytest.mark.slow
def test_small_study_learns_and_permutation_is_null(small, tmp_path):
    "The truth is learnable (val AUC >= 0.8); with permuted labels the val AUC is centred: mean over seeds 0-5 in 0.5 ± 0.1."
    # One seed's null AUC scatters with SD ~0.1 on this study (nbs/30_train.ipynb, "The null control, measured": seeds
    # 0-5 gave 0.507, 0.304, 0.411, 0.470, 0.467, 0.509), so a 3-seed mean misses 0.5 ± 0.1 for some triples; six seeds
    # give the mean an SE of ~0.04.
    torch.set_num_threads(2)
    cache = tmp_path / "cache"
    m = train_study(small, tmp_path / "true", seed=0, cache_dir=cache, device="cpu")
    assert m["val_auc"] >= 0.8, m
    runs = [train_study(small, tmp_path / f"perm{s}", seed=s, permute_labels=True, cache_dir=cache, device="cpu")
            for s in range(6)]
    perm = [r["val_auc"] for r in runs]
    assert abs(np.mean(perm) - 0.5) <= 0.1 and max(abs(np.array(perm) - 0.5)) <= 0.3, perm   # centred, not just low
    assert all(abs(r["permuted_label_phi"]) <= 0.1 for r in runs)


@pytest.mark.slow
def test_small_study_deterministic(small, tmp_path):
    "Same seed, same metrics.json and model weights (CPU)."
    torch.set_num_threads(2)
    cache = tmp_path / "cache"
    a = train_study(small, tmp_path / "a", seed=3, quick=True, epochs=3, cache_dir=cache, device="cpu")
    b = train_study(small, tmp_path / "b", seed=3, quick=True, epochs=3, cache_dir=cache, device="cpu")
    assert a == b
    sa = torch.load(tmp_path / "a/model.pt", weights_only=True); sb = torch.load(tmp_path / "b/model.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
