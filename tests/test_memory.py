"Memory flat in cohort size: PET/CT training and scoring read each batch from the memory-mapped cache, with the numbers of the stacked path."
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pdl1_dls.core import PDL1Error
from pdl1_dls.petct import pipeline as T
from pdl1_dls.petct.pipeline import SliceStore, channel_view, read_rows, stack_slices, toy_patients
from pdl1_dls.petct.preprocess import HyperImages, npz_memmap
from pdl1_dls.training import load_model, load_state


def _mapped(a) -> bool:
    "A file-backed memory map (or a channel view of one): the slices stay on disk."
    return T._file_backed(a.images if isinstance(a, T.ChannelView) else a)


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
    assert T._file_backed(m) and not T._file_backed(m[1:]) and not T._file_backed(a)
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
            assert T._file_backed(h.images) and np.array_equal(h.images, plain[p].images)
        assert not isinstance(plain[p].images, np.memmap)
