"DDP training under torchrun (gloo on CPU): the sampler's sharding and padding, gathering each patient once, and real 2-process runs."
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.stats.roc import auc_ci
from pdl1_dls.training import (broadcast_stop, dist_context, gather_patients, merge_shards, rank_batch, shard, shard_map)

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PDL1_DLS_PROGRESS="0", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), **kw)
    return env


def _torchrun(args, cwd, timeout=900):
    r = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


# ---------------------------------------------------------------- one process: sharding and merging, no process group
@pytest.mark.parametrize("n", [1, 2, 5, 7, 16])
@pytest.mark.parametrize("world", [2, 3])
def test_shard_deals_like_distributed_sampler(n, world):
    "shard() gives each rank exactly what torch's DistributedSampler (no shuffle) gives it: same padding, same order."
    from torch.utils.data import DistributedSampler
    items = list(range(100, 100 + n))
    for r in range(world):
        ref = [items[i] for i in DistributedSampler(items, num_replicas=world, rank=r, shuffle=False)]
        assert shard(items, rank=r, world_size=world) == ref
        t = shard(torch.arange(n), rank=r, world_size=world)
        assert t.tolist() == [i - 100 for i in ref]
    parts = [shard(items, rank=r, world_size=world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and set(sum(parts, [])) == set(items)   # equal shares that cover everyone


def test_one_process_is_the_identity():
    "Without torchrun every helper leaves its input alone (so one-process training is what it was)."
    ids, vals = ["a", "b", "c"], np.array([0.1, 0.2, 0.3])
    assert dist_context().world_size == 1 and dist_context().main and not dist_context().active
    assert shard(ids) is ids and gather_patients(ids, vals, ids) is vals and rank_batch(64) == 64
    assert broadcast_stop(False) is False and shard_map(lambda s: vals, ids) is vals


def test_odd_cohort_each_patient_once_in_the_auc():
    "7 patients on 2 ranks: the sampler pads to 8 (patient 0 twice); merged, the AUC is the one-process AUC over 7 patients."
    rng = np.random.default_rng(0)
    ids = [f"P{i}" for i in range(7)]
    y = np.array([1, 0, 0, 1, 0, 1, 0]); score = dict(zip(ids, rng.random(7)))
    score["P0"] = 0.99                                                   # the duplicated patient: a high-scoring positive
    parts = [(s, np.array([score[p] for p in s])) for s in (shard(ids, rank=r, world_size=2) for r in (0, 1))]
    assert sum(len(s) for s, _ in parts) == 8 and sum(s.count("P0") for s, _ in parts) == 2
    merged = merge_shards(parts, ids)
    one = auc_ci(y, np.array([score[p] for p in ids]))
    got = auc_ci(y, merged)
    assert merged.tolist() == [score[p] for p in ids] and got["n"] == 7 and got["auc"] == one["auc"]
    naive = np.concatenate([v for _, v in parts])                       # what counting the padding would give
    y_naive = np.array([y[ids.index(p)] for s, _ in parts for p in s])
    assert auc_ci(y_naive, naive)["n"] == 8 and auc_ci(y_naive, naive)["auc"] != one["auc"]
    d = merge_shards([(s, dict(dls=v, feats=np.stack([v, -v], 1))) for s, v in parts], ids)   # dicts of arrays, too
    assert d["dls"].tolist() == merged.tolist() and d["feats"].shape == (7, 2)
    with pytest.raises(Exception, match="scored by no rank"):
        merge_shards(parts, ids + ["P9"])


def _digest(sd):
    h = hashlib.sha256()
    for k in sorted(sd): h.update(k.encode()); h.update(sd[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _tiny_fits(out, seed=0):
    "A tiny PET/CT fit and MRI sequence fit on one thread: their weights' digests and logs."
    from pdl1_dls.mri.pipeline import MRITrainConfig, fit_sequence
    from pdl1_dls.petct.pipeline import TrainConfig, fit, toy_patients
    old = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        data, labels = toy_patients(16, slices=(2, 4), signal=1.0, seed=3)
        r = fit(data, labels, TrainConfig(epochs=3, batch_size=16, patience=5, seed=seed), out, device="cpu")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(12, 3, 32, 32, generator=g); y = np.array([0, 1] * 6)
        xi = torch.randn(5, 3, 32, 32, generator=g); yi = np.array([0, 1, 0, 1, 1])
        cfg = MRITrainConfig.make(profile="quick", size=32, input_size=24, epochs=2, batch_size=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, log = fit_sequence(x, y, xi, yi, cfg, seed=seed, device=torch.device("cpu"), name="t1")
    finally: torch.set_num_threads(old)
    return dict(petct=_digest(r["model"].state_dict()), petct_train_loss=r["log"]["train_loss"].tolist(),
                petct_inner_auc=r["log"]["inner_auc"].tolist(), mri=_digest(m.state_dict()), mri_train_loss=[row["train_loss"] for row in log])


def _without_ddp(monkeypatch):
    "Replace every DDP helper the trainers call by the plain one-process code it stands for (training as it was before DDP)."
    import pdl1_dls.mri.pipeline as mri
    import pdl1_dls.petct.pipeline as petct
    import pdl1_dls.training as training
    for mod in (mri, petct):
        monkeypatch.setattr(mod, "shard", lambda items: items)
        monkeypatch.setattr(mod, "ddp_wrap", lambda model: model)
        monkeypatch.setattr(mod, "rank_batch", lambda batch_size: int(batch_size))
        monkeypatch.setattr(mod, "all_sum", lambda *values: values)
        monkeypatch.setattr(mod, "gather_patients", lambda ids, values, all_ids: values)
        monkeypatch.setattr(mod, "shard_map", lambda fn, ids: fn(ids))
    monkeypatch.setattr(training, "broadcast_stop", lambda flag: bool(flag))
    monkeypatch.setattr(training, "sync_buffers", lambda model: None)


def test_one_process_bitwise_as_without_ddp(tmp_path, monkeypatch):
    "In one process the DDP helpers change nothing: a tiny PET/CT fit and MRI sequence fit give bitwise the weights and logs of the same fits with every helper replaced by plain code; the same seed gives the same bits, another seed others."
    a, again, other = _tiny_fits(tmp_path / "a"), _tiny_fits(tmp_path / "b"), _tiny_fits(tmp_path / "c", seed=1)
    with monkeypatch.context() as mp:
        _without_ddp(mp)
        plain = _tiny_fits(tmp_path / "d")
    assert a == again == plain
    assert other["petct"] != a["petct"] and other["mri"] != a["mri"] and other["mri_train_loss"] != a["mri_train_loss"]


# ---------------------------------------------------------------- two real processes (gloo)
GATHER = '''
import json, sys
import numpy as np
from pdl1_dls.training import broadcast_stop, dist_context, gather_patients, shard, shard_map, all_sum
ctx = dist_context("cpu")
ids = [f"P{i}" for i in range(7)]
mine = shard(ids)
got = gather_patients(mine, np.array([float(p[1:]) for p in mine]), ids)
stop = broadcast_stop(ctx.rank == 0)                   # rank 0 says stop, rank 1 says go: both get rank 0's
tot = all_sum(float(len(mine)))[0]
sm = shard_map(lambda s: {"v": np.array([[float(p[1:])] for p in s])}, ids)["v"][:, 0]
json.dump(dict(rank=ctx.rank, world=ctx.world_size, mine=mine, got=got.tolist(), stop=stop, tot=tot, sm=sm.tolist()),
          open(f"{sys.argv[1]}/r{ctx.rank}.json", "w"))
'''


def test_two_processes_gather_each_patient_once(tmp_path):
    (tmp_path / "g.py").write_text(GATHER)
    _torchrun([str(tmp_path / "g.py"), str(tmp_path)], cwd=tmp_path, timeout=300)
    rs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in rs] == [2, 2] and rs[0]["mine"] == ["P0", "P2", "P4", "P6"] and rs[1]["mine"] == ["P1", "P3", "P5", "P0"]
    for r in rs:
        assert r["got"] == r["sm"] == [float(i) for i in range(7)]     # every patient once, in cohort order, on every rank
        assert r["stop"] is True and r["tot"] == 8.0                     # rank 0's decision; the padded total


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pdl1_dls.synth import make_petct_study
    return make_petct_study(tmp_path_factory.mktemp("tiny") / "study", scale="tiny", seed=0)


@pytest.mark.slow
def test_torchrun_petct_train_and_score(tiny, tmp_path):
    "`torchrun --nproc_per_node=2 -m pdl1_dls train --quick`: a finished bundle with world_size 2, finite val_auc; score counts every patient once."
    run = tmp_path / "RUN"
    r = _torchrun(["-m", "pdl1_dls", "train", "--manifest", str(tiny), "--out", str(run), "--quick", "--epochs", "2",
                   "--device", "cpu", "--skip-bad"], cwd=tmp_path)
    assert r.stdout.count("val_auc=") == 1 and "world_size=2" in r.stdout          # rank 0 alone prints
    metrics, meta = json.loads((run / "metrics.json").read_text()), json.loads((run / "model.json").read_text())
    assert metrics["world_size"] == 2 and meta["world_size"] == 2 and meta["request"]["world_size"] == 2
    assert np.isfinite(metrics["val_auc"]) and metrics["epochs_run"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["MODEL_CARD.md", "metrics.json", "model.json", "model.pt", "train_log.csv"]
    assert len(pd.read_csv(run / "train_log.csv")) == 2                               # one log, one row per epoch
    s = subprocess.run([sys.executable, "-m", "pdl1_dls", "score", "--model", str(run), "--manifest", str(tiny), "--out",
                        str(tmp_path / "S"), "--device", "cpu", "--skip-bad"], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert s.returncode == 0, s.stderr
    dls = pd.read_csv(tmp_path / "S" / "dls.csv", dtype={"patient_id": str})
    from pdl1_dls.manifest import load_study
    everyone = load_study(tiny).table()["patient_id"].astype(str)
    skipped = pd.read_csv(tmp_path / "S" / "skipped.csv", dtype={"patient_id": str})
    assert dls.patient_id.is_unique and set(dls.patient_id) | set(skipped.patient_id) == set(everyone)
    assert dls.dls.between(0, 1).all()


MRI = '''
import sys, warnings
import pandas as pd
from pdl1_dls.mri.pipeline import train_mri_study
warnings.simplefilter("ignore")
tab = pd.read_csv(sys.argv[1])
train_mri_study(tab, sys.argv[2], cache_dir=sys.argv[3], quick=True, device="cpu", size=32, input_size=32, epochs=2,
                fusion_epochs=10, backbone="resnet18", num_threads=1)
'''


@pytest.mark.slow
def test_torchrun_mri_quick(tmp_path):
    "The MRI trainer (quick profile) under 2 processes: a bundle with world_size 2 that scores each patient once."
    from pdl1_dls.mri.pipeline import toy_mri_table
    from pdl1_dls.training import load_model
    tab = toy_mri_table(tmp_path / "img", {"train": 16, "validation": 7}, seed=0)   # 7: an odd validation cohort
    tab.to_csv(tmp_path / "t.csv", index=False); (tmp_path / "m.py").write_text(MRI)
    _torchrun([str(tmp_path / "m.py"), str(tmp_path / "t.csv"), str(tmp_path / "RUN"), str(tmp_path / "cache")], cwd=tmp_path)
    metrics, meta = json.loads((tmp_path / "RUN" / "metrics.json").read_text()), json.loads((tmp_path / "RUN" / "model.json").read_text())
    assert metrics["world_size"] == 2 and meta["world_size"] == 2 and np.isfinite(metrics["val_auc"])
    assert metrics["cohorts"]["internal"]["n"] == 7 and metrics["cohorts"]["internal"]["dls"]["n"] == 7   # each patient once
    dls = load_model(tmp_path / "RUN").score(tab, tmp_path / "S", cache_dir=tmp_path / "cache")
    assert dls.patient_id.is_unique and len(dls) == len(tab) and dls.dls.between(0, 1).all()
