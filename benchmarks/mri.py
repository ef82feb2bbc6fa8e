"""MRI benchmarks (CPU; CUDA when present): preprocessing in patients/s and feature extraction in images/s,
each next to a plain reference in the same run. Usage: python benchmarks/mri.py [--patients 6] [--images 64] [--repeats 3]"""
import argparse, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

warnings.simplefilter("ignore")


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=6); ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from pdl1_dls.mri import MRIParams, mri_slices
    from pdl1_dls.mri_models import SequenceNet, extract_features
    from pdl1_dls.synth import make_mri_study
    from pdl1_dls.manifest import load_study
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        st = load_study(make_mri_study(Path(d) / "s", scale="tiny", seed=0))
        tab = st.table().head(a.patients)
        files = [{k: r[k] for k in ("t1", "t2", "ce_t1", "roi")} for _, r in tab.iterrows()]
        def ours():
            for f in files: mri_slices({k: f[k] for k in ("t1", "t2", "ce_t1")}, f["roi"], MRIParams(size=224))
        def ref():
            for f in files: naive_slices(f, 224)
        for name, fn in (("preprocess: pdl1_dls.mri.mri_slices (tumour cube, B-spline)", ours),
                         ("preprocess: reference scipy whole-volume zoom + per-plane zoom", ref)):
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
            rows.append((name, a.patients / np.median(ts), "patients/s"))
    net = SequenceNet("resnet18").to(dev).eval()
    x = torch.randn(a.images, 3, 224, 224)
    def batched(): extract_features(net, x, batch_size=32, device=dev)
    def loop():
        with torch.no_grad():
            for i in range(len(x)): net.features(x[i:i + 1].to(dev))
    for name, fn in (("features: extract_features, batch 32 (resnet18, 224 px)", batched),
                     ("features: reference one image per forward (resnet18, 224 px)", loop)):
        fn(); ts = []
        for _ in range(a.repeats):
            t = time.perf_counter(); fn()
            if dev.type == "cuda": torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        rows.append((name, a.images / np.median(ts), "images/s"))
    print(f"device: {dev}, threads: {a.threads}, median of {a.repeats} repeats")
    print(f"| {'what':<66} | {'rate':>8} | unit |")
    print(f"|{'-' * 68}|{'-' * 10}|------|")
    for n, r, u in rows: print(f"| {n:<66} | {r:8.2f} | {u} |")
    print(f"ratio preprocess ours/reference: {rows[0][1] / rows[1][1]:.2f}x; features batched/loop: {rows[2][1] / rows[3][1]:.2f}x")


if __name__ == "__main__":
    main()
