"End to end on synthetic PET/CT studies: files and columns on the tiny study (fast); AUC and the permutation control on the small study (slow)."
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.synth import make_petct_study
from pdl1_dls.petct.pipeline import train_study
from pdl1_dls.training import load_model


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
    assert sorted(p.name for p in run.iterdir()) == ["MODEL_CARD.md", "metrics.json", "model.json", "model.pt", "train_log.csv"]
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["epochs"] == 1 and meta["preprocessing"]["size"] == 64 and meta["inputs"] == ["pet", "ct", "roi"]
    df = load_model(run).score(tiny, tmp_path / "scored", cache_dir=cache, skip_bad=True)
    dls = pd.read_csv(tmp_path / "scored" / "dls.csv")
    assert list(dls.columns) == ["patient_id", "cohort", "dls", "dls_high", "n_slices"]
    assert {"mcc_ici_retro", "mcc_ici_pro"} <= set(dls.cohort)          # unlabeled ICI cohorts are scored too
    assert dls.dls.between(0, 1).all() and (dls.n_slices > 0).all()
    assert set(pd.read_csv(tmp_path / "scored" / "skipped.csv").columns) >= {"patient_id", "reason"}
    with np.load(tmp_path / "scored" / "features.npz") as z:
        assert z["features"].shape == (len(dls), 256) and np.isfinite(z["features"]).all()
        assert list(z["patient_id"]) == dls.patient_id.tolist() == df.patient_id.tolist()
    # one patient from its files gives the number scoring gave it
    from pdl1_dls.manifest import load_study
    row = load_study(tiny).table().set_index("patient_id").loc[dls.patient_id[0]]
    one = load_model(run).predict(tmp_path / "one", pet=row.pet, ct=row.ct, roi=row.roi)
    assert abs(one["dls"] - dls.dls[0]) < 1e-6 and one["dls_high"] == bool(dls.dls_high[0])
    assert json.loads((tmp_path / "one" / "prediction.json").read_text())["cutoff"] == meta["cutoff"]["value"]
    assert (tmp_path / "one" / "gradcam.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_petct_study(tmp_path_factory.mktemp("small") / "study", scale="small", seed=0)


@pytest.mark.slow
def test_small_study_learns_and_permutation_is_null(small, tmp_path):
    "The truth is learnable (val AUC >= 0.8); with permuted labels the val AUC is centred: mean over seeds 0-5 in 0.5 ± 0.1."
    # One seed's null AUC scatters with SD ~0.1 on this study (nbs/petct/12_pipeline.ipynb, "The null control, examined"), so a
    # 3-seed mean misses 0.5 ± 0.1 for some triples; six seeds give the mean an SE of ~0.04.
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
