"""Held-out checks of the frozen-model path at demo scale (slow): train once on the demo study, then score a study generated with
another seed that training never saw, predict one of its patients from files, and require the DLS to keep its discrimination there."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.manifest import load_study
from pdl1_dls.stats.roc import auc_ci
from pdl1_dls.training import load_model, pipeline

REPO = Path(__file__).resolve().parents[1]


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _heldout(manifest, unseen, tmp_path, files):
    "Train the manifest's model, apply it frozen to `unseen`; return (labelled AUC on unseen, predict - score, bundle unchanged)."
    torch.set_num_threads(2)
    study = load_study(manifest)
    m = pipeline(study.modality).train(study, tmp_path / "bundle", seed=0, device="cpu", cache_dir=tmp_path / "cache_a")
    before = _tree(tmp_path / "bundle")
    model = load_model(tmp_path / "bundle")
    sc = model.score(unseen, tmp_path / "scored", device="cpu", skip_bad=True, cache_dir=tmp_path / "cache_b")
    t = load_study(unseen).table().merge(sc, on=["patient_id", "cohort"])
    lab = study.label_column
    a = auc_ci(t[lab], t["dls"])
    assert ((t.dls >= model.cutoff) == (t.dls_high == 1)).all()
    row = t[t[lab].notna()].iloc[0]
    one = model.predict(tmp_path / "one", device="cpu", **{k: row[k] for k in files})
    return m, a, abs(one["dls"] - row["dls"]), _tree(tmp_path / "bundle") == before


@pytest.mark.slow
def test_petct_bundle_on_an_unseen_study(tmp_path):
    from pdl1_dls.synth import make_petct_study
    unseen = make_petct_study(tmp_path / "unseen", scale="small", seed=11)
    m, a, diff, same = _heldout(REPO / "data_manifests" / "demo_petct.yaml", unseen, tmp_path, ("pet", "ct", "roi"))
    assert a["auc"] >= 0.75 and a["n"] >= 200, (a, m["val_auc"])      # every labelled patient of the unseen study
    assert diff < 1e-6 and same


@pytest.mark.slow
def test_mri_bundle_on_an_unseen_study(tmp_path):
    from pdl1_dls.synth import make_mri_study
    unseen = make_mri_study(tmp_path / "unseen", scale="small", seed=11)
    m, a, diff, same = _heldout(REPO / "data_manifests" / "demo_mri.yaml", unseen, tmp_path, ("t1", "t2", "ce_t1", "roi"))
    assert a["auc"] >= 0.75 and a["n"] >= 200, (a, m["val_auc"])
    assert diff < 1e-6 and same
