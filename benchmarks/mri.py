"""MRI benchmarks (CPU; CUDA when present): preprocessing in patients/s and deep-feature extraction in images/s,
each next to a plain reference measured in the same run.

Run: `.venv/bin/python benchmarks/mri.py [--part all|preprocess|features] [--images 64] [--repeats 3]
[--batches 1,4,8,16,32,64] [--size 224] [--backbone resnet18] [--threads 2]`.

Features (`feature_rows`): `mri_models.extract_features` at several batch sizes beside two references over the same
tensors: one image per forward (`net.features(x[i:i + 1])` under `torch.no_grad()`, the loop batching has to beat)
and a bare `net.eval(); with torch.inference_mode(): net(x[i:i + b])` at the same batch size. All variants run
interleaved within each repeat; rates are medians over the repeats (min-max beside them), and each ratio is the
median over repeats of the ratio measured within one repeat (so a load change between repeats cancels). `kernel %`
is the share of the process's CPU time spent in the kernel (page faults, zeroing fresh memory) during the variant.
Each extract_features row's features are compared with the loop's (`max |diff| / max |f|`, in its note).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

try:
    import pdl1_dls  # noqa: F401  (installed with `make install`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def naive_slices(files, size):
    "Reference: resample each whole volume to 1 mm with scipy (cubic spline), per-plane argmax, per-plane zoom."
    import SimpleITK as sitk
    from scipy import ndimage
    roi = sitk.ReadImage(str(files["roi"])); sp = np.array(roi.GetSpacing())[::-1]
    m = ndimage.zoom(sitk.GetArrayFromImage(roi).astype(np.float32), sp, order=0) > 0.5
    idx = [int(np.argmax(m.sum(a))) for a in ((1, 2), (0, 2), (0, 1))]
    out = []
    for k in ("t1", "t2", "ce_t1"):
        im = sitk.ReadImage(str(files[k])); s2 = np.array(im.GetSpacing())[::-1]
        v = ndimage.zoom(sitk.GetArrayFromImage(im).astype(np.float32), s2, order=3)
        lo, hi = np.percentile(v, (0.5, 99.5)); v = np.clip((v - lo) / (hi - lo), 0, 1)
        pl = [v[min(idx[0], v.shape[0] - 1)], v[:, min(idx[1], v.shape[1] - 1)], v[:, :, min(idx[2], v.shape[2] - 1)]]
        out.append([ndimage.zoom(p, (size / p.shape[0], size / p.shape[1]), order=1) for p in pl])
    return out


def preprocess_rows(n_patients: int = 6, repeats: int = 3, size: int = 224) -> list[dict]:
    "Rows: patients/s of `mri.mri_slices` and of a plain scipy whole-volume reference on a tiny synthetic study."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.mri.preprocess import MRIParams, mri_slices
    from pdl1_dls.synth import make_mri_study
    rows = []
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = load_study(make_mri_study(Path(d) / "s", scale="tiny", seed=0))
        tab = st.table().head(n_patients)
        files = [{k: r[k] for k in ("t1", "t2", "ce_t1", "roi")} for _, r in tab.iterrows()]
        def ours():
            for f in files: mri_slices({k: f[k] for k in ("t1", "t2", "ce_t1")}, f["roi"], MRIParams(size=size))
        def ref():
            for f in files: naive_slices(f, size)
        ts = {"ours": [], "ref": []}
        for _ in range(repeats):
            for k, fn in (("ours", ours), ("ref", ref)):
                t = time.perf_counter(); fn(); ts[k].append(time.perf_counter() - t)
    n = len(files)
    t_ours, t_ref = statistics.median(ts["ours"]), statistics.median(ts["ref"])
    rows.append(dict(part="preprocess", what="reference: scipy whole-volume zoom + per-plane zoom", batch="", per_s=n / t_ref,
                     spread=f"{n / max(ts['ref']):.2f}-{n / min(ts['ref']):.2f}", unit="patients/s", x_ref=1.0, x_bare=None,
                     kernel=None, note=f"{n} patients"))
    rows.append(dict(part="preprocess", what="mri.mri_slices (tumour cube, B-spline)", batch="", per_s=n / t_ours,
                     spread=f"{n / max(ts['ours']):.2f}-{n / min(ts['ours']):.2f}", unit="patients/s",
                     x_ref=statistics.median(r / o for r, o in zip(ts["ref"], ts["ours"])), x_bare=None, kernel=None, note=""))
    return rows


def _cpu_times():
    try:
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime, r.ru_stime
    except ImportError:  # not Unix
        return 0.0, 0.0


def feature_rows(images: int = 64, batches=(1, 4, 8, 16, 32, 64), repeats: int = 3, size: int = 224,
                 backbone: str = "resnet18", device=None, seed: int = 0) -> list[dict]:
    "Rows: images/s of `extract_features` at each batch size, of the one-image-per-forward loop and of bare `net(x)`."
    from pdl1_dls.mri.models import SequenceNet, extract_features
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); net = SequenceNet(backbone).to(dev).eval()
    x = torch.randn(images, 3, size, size)
    xd = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def loop():
        with torch.no_grad():
            return torch.cat([net.features(xd[i:i + 1]) for i in range(images)]).cpu().numpy()
    def bare(b):
        def f():
            net.eval()
            with torch.inference_mode():
                return torch.cat([net(xd[i:i + b]) for i in range(0, images, b)]).cpu().numpy()
        return f
    def ours(b):
        return lambda: extract_features(net, xd, batch_size=b, device=dev)[0]
    variants = [("loop", None, loop)] + [(k, b, fn(b)) for b in batches for k, fn in (("bare", bare), ("ours", ours))]
    # correctness (and warm-up: thread pool, oneDNN primitives, allocator)
    ref = loop(); scale = float(np.abs(ref).max())
    diff = {}
    for k, b, fn in variants:
        out = fn()
        if k != "bare": diff[(k, b)] = float(np.abs(out - ref).max()) / scale
    ts = {(k, b): [] for k, b, _ in variants}; kern = {(k, b): [] for k, b, _ in variants}
    for _ in range(repeats):
        for k, b, fn in variants:
            u0, s0 = _cpu_times(); sync(); t = time.perf_counter(); fn(); sync()
            ts[(k, b)].append(time.perf_counter() - t); u1, s1 = _cpu_times()
            kern[(k, b)].append((s1 - s0) / max(u1 - u0 + s1 - s0, 1e-9))
    def rate(key): return images / statistics.median(ts[key])
    def spread(key): return f"{images / max(ts[key]):.1f}-{images / min(ts[key]):.1f}"
    def ratio(a, b): return statistics.median(tb / ta for ta, tb in zip(ts[a], ts[b]))  # speed of a relative to b, paired
    what = f"{backbone}, {size} px, {images} images, {dev}, {torch.get_num_threads()} threads"
    rows = [dict(part="features", what="reference: one image per forward (no_grad, NCHW)", batch=1, per_s=rate(("loop", None)),
                 spread=spread(("loop", None)), unit="images/s", x_ref=1.0, x_bare=None,
                 kernel=100 * statistics.median(kern[("loop", None)]), note=what)]
    for b in batches:
        for k in ("bare", "ours"):
            key = (k, b)
            rows.append(dict(part="features", batch=b,
                             what=("reference: bare net.eval(); inference_mode; net(x)" if k == "bare"
                                   else "mri_models.extract_features"),
                             per_s=rate(key), spread=spread(key), unit="images/s", x_ref=ratio(key, ("loop", None)),
                             x_bare=ratio(key, ("bare", b)) if k == "ours" else 1.0,
                             kernel=100 * statistics.median(kern[key]),
                             note=f"max |diff| / max |f| vs loop {diff[key]:.1e}" if k == "ours" else ""))
    return rows


def print_table(rows: list[dict], repeats: int) -> None:
    print(f"medians of {repeats} interleaved repeats; x loop / x bare: median of the per-repeat ratios (above 1: faster)")
    print("| part | what | batch | rate | min-max | unit | x ref (loop) | x bare | kernel % | note |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---|")
    f = lambda v, fmt: "" if v is None else format(v, fmt)
    for r in rows:
        print(f"| {r['part']} | {r['what']} | {r['batch']} | {r['per_s']:.2f} | {r['spread']} | {r['unit']} | "
              f"{f(r['x_ref'], '.2f')} | {f(r['x_bare'], '.2f')} | {f(r['kernel'], '.1f')} | {r['note']} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("all", "preprocess", "features"), default="all")
    ap.add_argument("--patients", type=int, default=6); ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,8,16,32,64"); ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="resnet18"); ap.add_argument("--device", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    if a.part in ("all", "preprocess"): rows += preprocess_rows(a.patients, a.repeats)
    if a.part in ("all", "features"):
        rows += feature_rows(a.images, tuple(int(b) for b in a.batches.split(",")), a.repeats, a.size, a.backbone, a.device)
    print_table(rows, a.repeats)


if __name__ == "__main__":
    main()
