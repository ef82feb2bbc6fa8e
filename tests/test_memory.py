"Memory flat in cohort size: PET/CT and MRI training and scoring read each batch from the memory-mapped cache, with the numbers of the stacked path."
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.core import PDL1Error
from pdl1_dls.io import ChannelView, SliceStore, _file_backed, channel_view, npz_memmap, read_rows, stack_slices
from pdl1_dls.petct import pipeline as T
from pdl1_dls.petct.pipeline import toy_patients
from pdl1_dls.petct.preprocess import HyperImages
from pdl1_dls.training import load_model, load_state


def _mapped(a) -> bool:
    "A file-backed memory map (or a channel view of one): the slices stay on disk."
    return _file_backed(a.images if isinstance(a, ChannelView) else a)


@pytest.fixture
def stores(monkeypatch):
    "Every SliceStore made while the test runs."
    made, init = [], SliceStore.__init__
    def spy(self, *a, **kw):
        init(self, *a, **kw); made.append(self)
    monkeypatch.setattr(SliceStore, "__init__", spy)
    return made


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pdl1_dls.synth import make_petct_study
    return make_petct_study(tmp_path_factory.mktemp("tiny") / "study", scale="tiny", seed=0)


def test_streamed_training_is_the_stacked_training(tiny, tmp_path, stores):
    "Same seed: the streamed path (default) writes bit-identical weights, log and metrics to in_memory=True; its inputs are never stacked."
    cache = tmp_path / "cache"
    kw = dict(epochs=2, quick=True, cache_dir=cache, device="cpu", resume=False)
    m_mem = T.train_study(tiny, tmp_path / "mem", in_memory=True, **kw)
    mem_stores, stores[:] = list(stores), []
    m_str = T.train_study(tiny, tmp_path / "str", **kw)
    a, b = load_state(tmp_path / "mem" / "model.pt"), load_state(tmp_path / "str" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(tmp_path / r / "train_log.csv").drop(columns="seconds") for r in ("mem", "str")]
    pd.testing.assert_frame_equal(*logs)
    for k in ("train_auc", "inner_auc", "val_auc", "cutoff", "n_slices", "best_epoch"):
        assert m_mem[k] == m_str[k], k
    # the in-memory run stacked its inputs; the streamed one kept every patient's slices as a map of its cache entry
    assert mem_stores and all(isinstance(s.X, torch.Tensor) and s.arrays is None for s in mem_stores)
    assert len(stores) == len(mem_stores) and all(s.X is None for s in stores)
    arrays = [x for s in stores for x in s.arrays]
    assert arrays and all(_mapped(x) for x in arrays)
    assert {Path(x.filename).parent for x in arrays} == {cache.resolve()}
    # scoring (a frozen bundle) reads the cache the same way and gives the DLS of the stacked tensor
    stores[:] = []
    model = load_model(tmp_path / "str")
    got = T.PIPELINE.score(model, __import__("pdl1_dls.manifest", fromlist=["x"]).load_study(tiny), cache_dir=cache, device="cpu")
    assert stores and all(_mapped(x) for s in stores for x in s.arrays)
    net, cfg = T.PIPELINE.load(model, "cpu")
    pids = got["dls"]["patient_id"].tolist()
    entries = {f.name.rsplit("-", 1)[0]: f for f in cache.glob("*.npz")}
    X, own = stack_slices({p: HyperImages.load(entries[p]).images for p in pids}, pids)
    p_ref = T.predict_slices(net, X, torch.device("cpu"), cfg.eval_batch_size, tta=cfg.tta)
    assert np.array_equal(got["dls"]["dls"].to_numpy(), T.patient_mean(p_ref, own, len(pids)))


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"): return int(line.split()[1])
    raise KeyError("RssFile")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RssFile from /proc/self/status (Linux only)")
def test_batches_do_not_map_the_cohort_into_memory(tmp_path):
    "Reading every slice through a SliceStore leaves the resident memory as it was; indexing the map itself (the control) does not."
    rng = np.random.default_rng(0)
    data = {f"P{i}": rng.random((40, 3, 64, 64), dtype=np.float32) for i in range(4)}   # 4 x 1.9 MiB
    big = {p: np.concatenate([a] * 4) for p, a in data.items()}                          # 4 x 7.5 MiB: 30 MiB in all
    for p, a in big.items(): np.savez(tmp_path / f"{p}.npz", images=a)
    mm = {p: npz_memmap(tmp_path / f"{p}.npz", "images") for p in big}
    store = SliceStore(mm, sorted(mm))
    order = torch.randperm(len(store), generator=torch.Generator().manual_seed(0))
    ref = stack_slices(big, sorted(big))[0]
    before = _rss_file_kib()
    for idx in torch.split(order, 64):
        assert torch.equal(store.take(idx), ref[idx])
    grown = _rss_file_kib() - before
    assert grown < 4 * 1024, f"RssFile grew {grown} KiB while streaming 30 MiB"
    before = _rss_file_kib()
    assert sum(float(np.asarray(m).sum()) for m in mm.values()) > 0                    # touch every page of the maps
    assert _rss_file_kib() - before > 20 * 1024                                          # the control: mapped pages count


def test_read_rows_runs_channels_and_truncation(tmp_path):
    "read_rows: any rows, runs of consecutive rows in one read, a channel view, in-memory arrays; a truncated entry names its file."
    data, _ = toy_patients(1, slices=(9, 9), seed=1)
    a = data["T000"]
    np.savez(tmp_path / "a.npz", images=a)
    m = npz_memmap(tmp_path / "a.npz", "images")
    rows = np.array([0, 1, 2, 5, 7, 8])
    assert _file_backed(m) and not _file_backed(m[1:]) and not _file_backed(a)
    for src in (m, a):
        assert np.array_equal(read_rows(src, rows), a[rows]) and read_rows(src, rows).dtype == np.float32
    assert np.array_equal(read_rows(channel_view(m, (1,)), rows), a[rows][:, 1:2])
    assert np.array_equal(read_rows(m, np.array([3])), a[3:4])
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw)
    cut = npz_memmap(tmp_path / "cut.npz", "images")
    with open(tmp_path / "cut.npz", "r+b") as f: f.truncate(cut.offset + 2 * a[0].nbytes)   # only 2 slices left
    with pytest.raises(PDL1Error, match="truncated") as e:
        read_rows(cut, np.array([5]))
    assert "cut.npz" in str(e.value)


def test_build_hyperimages_mmap_fresh_and_cached(tiny, tmp_path):
    "mmap=True hands out memory maps both when building an entry and when reading it back, with the built values."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.petct.preprocess import build_hyperimages
    t = load_study(tiny).table().head(3)
    plain, _ = build_hyperimages(t, None, progress=False)
    fresh, _ = build_hyperimages(t, tmp_path / "c", progress=False, mmap=True)
    again, _ = build_hyperimages(t, tmp_path / "c", progress=False, mmap=True)
    for p in plain:
        for h in (fresh[p], again[p]):
            assert _file_backed(h.images) and np.array_equal(h.images, plain[p].images)
        assert not isinstance(plain[p].images, np.memmap)


# ---------------------------------------------------------------- MRI: the cohort stays in the per-patient cache
MRI_TINY = dict(quick=True, device="cpu", size=32, input_size=24, epochs=1, fusion_epochs=10, backbone="resnet18", resume=False)


@pytest.fixture(scope="module")
def mri_toy(tmp_path_factory):
    from pdl1_dls.mri.pipeline import toy_mri_table
    d = tmp_path_factory.mktemp("mri_toy")
    return d, toy_mri_table(d / "img", {"train": 16, "validation": 6}, seed=0)


def _weights_sha(run) -> dict:
    "The sha256 model.json records for each weights file of a bundle (state dicts, reducer arrays)."
    meta = json.loads((run / "model.json").read_text())
    return {f: meta["files"][f] for f in meta["weights"]}


def test_mri_streamed_training_is_the_stacked_training(mri_toy, tmp_path, monkeypatch):
    "Same seed: streamed MRI training (default) writes bit-identical weights, z-scores and DLS to in_memory=True, and never stacks its inputs."
    import pdl1_dls.mri.pipeline as MP
    from pdl1_dls.mri.preprocess import MRIInputs, mri_cohort
    d, tab = mri_toy
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m_mem = MP.train_mri_study(tab, tmp_path / "mem", cache_dir=cache, in_memory=True, **MRI_TINY)
        seen = []
        def spy(*a, **kw):
            out = mri_cohort(*a, **kw); seen.append((kw.get("mmap"), out[0])); return out
        def stacked(*a, **kw): raise AssertionError("the streamed path stacked its inputs")
        with monkeypatch.context() as mp:
            mp.setattr(MP, "mri_cohort", spy)
            mp.setattr(MRIInputs, "__array__", stacked); mp.setattr(MRIInputs, "__getitem__", stacked)
            m_str = MP.train_mri_study(tab, tmp_path / "str", cache_dir=cache, **MRI_TINY)
            got = load_model(tmp_path / "str").score(tab, cache_dir=cache)      # scoring streams too
    # the streamed runs read memory maps of the cache entries, never a stacked array
    assert [m for m, _ in seen] == [True, True] and all(isinstance(X, MRIInputs) and len(X) == len(tab) for _, X in seen)
    assert all(_file_backed(a) and Path(a.filename).parent == cache.resolve() for _, X in seen for a in X.arrays)
    # the same numbers as the stacked path, bit for bit
    w_mem, w_str = _weights_sha(tmp_path / "mem"), _weights_sha(tmp_path / "str")
    assert len(w_mem) == 10 and w_mem == w_str
    meta = [json.loads((tmp_path / r / "model.json").read_text()) for r in ("mem", "str")]
    assert meta[0]["zscore"] == meta[1]["zscore"] and meta[0]["identity"] == meta[1]["identity"]
    for k in ("val_auc", "train_auc", "cutoff", "pca_components"): assert m_mem[k] == m_str[k], k
    logs = [pd.read_csv(tmp_path / r / "train_log.csv").drop(columns="seconds") for r in ("mem", "str")]
    pd.testing.assert_frame_equal(*logs)
    ref = load_model(tmp_path / "mem").score(tab, cache_dir=cache)
    assert got.dls.tolist() == ref.dls.tolist() and got.dls_t2.tolist() == ref.dls_t2.tolist()
    # the streamed score is the score of the stacked array
    params = MP.PIPELINE._params(MP.MRIRun.config(meta[1]))
    X = mri_cohort(tab, cache, params)[0]
    assert isinstance(X, np.ndarray) and X.shape == (len(tab), 3, 3, 32, 32)
    assert np.array_equal(load_model(tmp_path / "str").net().score(X)["dls"], got.dls.to_numpy())
    # the z-scores are the float64 statistics of the training patients' inputs
    tr = np.flatnonzero((tab.role == "train").to_numpy())
    for s, (mu, sd) in enumerate(meta[1]["zscore"]):
        a = X[tr, s].astype(np.float64)
        assert abs(mu - a.mean()) < 1e-12 and abs(sd - 1e-6 - a.std()) < 1e-12


def test_mri_inputs_read_the_rows(mri_toy, tmp_path):
    "MRIInputs over the cache reads X[idx, seq] for any patients and sequence; a truncated entry names its file; a broken entry is rebuilt."
    from pdl1_dls.mri.preprocess import MRIInputs, MRIParams, cached_mri_slices, mri_cohort
    d, tab = mri_toy
    t = tab.head(4)
    p = MRIParams(size=24)
    X, meta, _ = mri_cohort(t, tmp_path / "c", p)
    Xm, meta_m, _ = mri_cohort(t, tmp_path / "c", p, mmap=True)
    assert isinstance(Xm, MRIInputs) and Xm.shape == X.shape == (4, 3, 3, 24, 24) and meta.equals(meta_m)
    assert all(_file_backed(a) for a in Xm.arrays)
    idx = np.array([3, 0, 2, 0])
    for s in range(3):
        assert torch.equal(Xm.take(idx, s), torch.from_numpy(X[idx, s])) and Xm.take(idx, s).dtype == torch.float32
        assert torch.equal(Xm.subset([2, 1]).take([1], s), torch.from_numpy(X[[1], s]))
    assert np.array_equal(np.asarray(Xm), X) and np.array_equal(Xm[1:3, 2], X[1:3, 2]) and np.array_equal(Xm[3], X[3])
    # an entry cut short after it was mapped: the read is a one-line PDL1Error naming the file
    src = Path(Xm.arrays[1].filename)
    cut = tmp_path / "cut" / src.name; cut.parent.mkdir(); shutil.copyfile(src, cut)
    one = MRIInputs([npz_memmap(cut, "x")])
    assert torch.equal(one.take([0], 2), torch.from_numpy(X[[1], 2]))
    with open(cut, "r+b") as f: f.truncate(one.arrays[0].offset + X[1, 0].nbytes)   # only the first sequence left
    with pytest.raises(PDL1Error, match="truncated") as e: one.take([0], 2)
    assert cut.name in str(e.value) and "\n" not in str(e.value)
    # through the cache, a truncated entry is not mapped: it is recomputed (and rewritten whole)
    row = t.iloc[1]
    with open(src, "r+b") as f: f.truncate(src.stat().st_size // 2)
    x, m = cached_mri_slices({k: row[k] for k in ("t1", "t2", "ce_t1")}, row["roi"], tmp_path / "c", p, row["patient_id"], mmap=True)
    assert _file_backed(x) and Path(x.filename) == src.resolve() and np.array_equal(x, X[1])


_NOFILE_CHILD = r'''
import resource, sys
import numpy as np
soft, hard = (int(v) for v in sys.argv[2:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from pdl1_dls.core import PDL1Error
from pdl1_dls.io import SliceStore, npz_memmap
d = sys.argv[1]
try:
    maps = {f"P{i}": npz_memmap(f"{d}/e{i}.npz", "images") for i in range(400)}    # one open file per map
    st = SliceStore(maps, list(maps))
    print("ok", int(st.take(np.arange(0, len(st), 7)).sum()), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
except PDL1Error as e:
    print("error", e.line())
'''


def test_streamed_cohort_beyond_the_usual_open_file_limit(tmp_path):
    "400 mapped entries under a soft limit of 256 open files: the limit is lifted to the hard one; under a hard limit of 256, one line."
    import subprocess, sys
    for i in range(400): np.savez(tmp_path / f"e{i}.npz", images=np.full((2, 1, 2, 2), i, np.float32))
    want = sum(4 * i for i in range(400) for r in range(2) if (2 * i + r) % 7 == 0)
    run = lambda soft, hard: subprocess.run([sys.executable, "-c", _NOFILE_CHILD, str(tmp_path), str(soft), str(hard)],
                                            capture_output=True, text=True, timeout=300).stdout.split()
    out = run(256, 4096)
    assert out[:2] == ["ok", str(want)] and int(out[2]) == 4096, out
    out = " ".join(run(256, 256))
    assert out.startswith("error ") and "too many open files (limit 256)" in out and "ulimit -n" in out and ".npz" in out, out


# ---------------------------------------------------------------- a cache hit opens its entry once
def _count_opens(monkeypatch, path) -> list:
    "Every open of `path` through `pdl1_dls.io` (where the cache readers open entries) while the test runs; np.load refused."
    import builtins
    import pdl1_dls.io as io_mod
    seen, target = [], str(path)
    def counting(f, *a, **kw):
        if str(f) == target: seen.append(f)
        return builtins.open(f, *a, **kw)
    def no_load(*a, **kw): raise AssertionError("a cache hit went through np.load")
    monkeypatch.setattr(io_mod, "open", counting, raising=False)
    monkeypatch.setattr(np, "load", no_load)
    return seen


@pytest.mark.parametrize("mmap", [False, True])
def test_mri_cache_hit_opens_the_entry_once(mri_toy, tmp_path, monkeypatch, mmap):
    "cached_mri_slices on a hit opens the .npz once (meta read, x read or mapped), with the values of the first call."
    from pdl1_dls.mri.preprocess import MRIParams, cached_mri_slices
    d, tab = mri_toy
    row, p = tab.iloc[0], MRIParams(size=24)
    args = ({k: row[k] for k in ("t1", "t2", "ce_t1")}, row["roi"], tmp_path / "c", p, row["patient_id"])
    x0, m0 = cached_mri_slices(*args)
    (entry,) = (tmp_path / "c").glob("*.npz")
    before = entry.stat()
    with monkeypatch.context() as mp:
        seen = _count_opens(mp, entry)
        x, m = cached_mri_slices(*args, mmap=mmap)
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)   # read, not rewritten
    assert len(seen) == 1 and isinstance(x, np.memmap) == mmap and np.array_equal(x, x0) and m == m0
    if mmap: assert _file_backed(x) and Path(x.filename) == entry.resolve()


@pytest.mark.parametrize("mmap", [False, True])
def test_petct_cache_hit_opens_the_entry_once(tiny, tmp_path, monkeypatch, mmap):
    "patient_hyperimages on a hit opens the .npz once (small arrays and meta read, images read or mapped); a garbled entry is rebuilt."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.petct.preprocess import patient_hyperimages
    r = load_study(tiny).table().iloc[0]
    args = (r["patient_id"], r["pet"], r["ct"], r["roi"])
    h0 = patient_hyperimages(*args, cache_dir=tmp_path / "c")
    (entry,) = (tmp_path / "c").glob("*.npz")
    before = entry.stat()
    with monkeypatch.context() as mp:
        seen = _count_opens(mp, entry)
        h = patient_hyperimages(*args, cache_dir=tmp_path / "c", mmap=mmap)
    assert (entry.stat().st_ino, entry.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)   # read, not rewritten
    assert len(seen) == 1 and isinstance(h.images, np.memmap) == mmap
    for k in ("images", "slices", "centres", "ssm_side_mm", "crop_mm", "ssm_area_mm2", "all_slices", "all_areas_mm2"):
        assert np.array_equal(getattr(h, k), getattr(h0, k)), k
    assert (h.spacing, h.params, h.channels) == (h0.spacing, h0.params, h0.channels)
    del h
    entry.write_bytes(b"not a zip file" * 10)                       # a garbled entry: rebuilt, the same values, whole again
    h2 = patient_hyperimages(*args, cache_dir=tmp_path / "c", mmap=mmap)
    assert np.array_equal(h2.images, h0.images) and entry.stat().st_size > 140
