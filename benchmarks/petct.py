"""PET/CT benchmark: hyper-image preprocessing throughput (patients/s) next to a plain per-slice reference.

Run: `.venv/bin/python benchmarks/petct.py [--repeats 5] [--synthetic]`. Uses the 16 real IBSI PET/CT patients
from the shared data when present, else numpy phantoms. Prints one table; every row is a median over repeats
and every ratio compares with the plain reference measured in the same run.

Training throughput (`training_rows`): `pdl1_dls.petct.pipeline.fit` on toy hyper-image tensors in images/s next to a
bare training loop over the same tensors, and the augmentation alone, so the data pipeline is shown not to be the
bottleneck. On CUDA when one is present (`--device cuda`), else CPU. The `× reference` column is always speed
relative to the plain reference of the same part (above 1: faster).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

try:
    import pdl1_dls  # noqa: F401  (installed with `make install`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pdl1_dls.petct import preprocess as petct
from pdl1_dls.core import data_dir

IBSI = ["STS_002", "STS_003", "STS_008", "STS_012", "STS_015", "STS_018", "STS_019", "STS_024",
        "STS_025", "STS_026", "STS_032", "STS_035", "STS_041", "STS_042", "STS_047", "STS_051"]


# --------------------------------------------------------------------------- workload
def real_patients() -> list[dict] | None:
    "File paths of the IBSI PET/CT patients, or None when the shared data is absent."
    d = data_dir()
    if d is None or not (d / "ibsi_sts_petct_mr" / "nifti").is_dir(): return None
    n = d / "ibsi_sts_petct_mr" / "nifti"
    return [dict(patient_id=p, pet=str(n / p / "PET_image.nii.gz"), ct=str(n / p / "CT_image.nii.gz"),
                 roi=str(n / p / "CT_mask.nii.gz")) for p in IBSI]


def synthetic_patients(folder: Path, n: int = 16, seed: int = 0) -> list[dict]:
    "Numpy phantoms (lung CT 160x160x50 at 0.98 mm, PET at 4 mm, spherical tumours of random size) written as NIfTI."
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sp, size = (0.977, 0.977, 3.27), (160, 160, 50)
        z, y, x = np.meshgrid(*[np.arange(k) * s for k, s in zip(size[::-1], sp[::-1])], indexing="ij")
        c = np.array([78.0, 78.0, 80.0]) + rng.normal(0, 8, 3); r = rng.uniform(12, 35)
        d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        ct = np.where(d <= r, 40.0, -800.0).astype(np.float32) + rng.normal(0, 20, size[::-1]).astype(np.float32)
        pet = np.where(d <= r, rng.uniform(3, 15), 0.7).astype(np.float32)
        ims = {}
        for nm, a in (("ct", ct), ("roi", (d <= r).astype(np.uint8)), ("pet", pet)):
            im = sitk.GetImageFromArray(a); im.SetSpacing(sp); ims[nm] = im
        ims["pet"] = sitk.Resample(ims["pet"], [40, 40, 41], sitk.Transform(), sitk.sitkLinear, (0, 0, 0),
                                   (3.9, 3.9, 4.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, sitk.sitkFloat32)
        p = folder / f"S{i:02d}"; p.mkdir(parents=True, exist_ok=True)
        row = dict(patient_id=f"S{i:02d}")
        for nm, im in ims.items():
            row[nm] = str(p / f"{nm}.nii.gz"); sitk.WriteImage(im, row[nm])
        out.append(row)
    return out


# --------------------------------------------------------------------------- plain reference
def reference_hyperimages(pet: sitk.Image, ct: sitk.Image, roi: sitk.Image, dilation_mm=20.0, keep_fraction=0.3,
                          size=64, suv_window=(0.0, 15.0), hu_window=(-1000.0, 400.0)) -> tuple[np.ndarray, list]:
    "The plain way: PET resampled onto CT, then per slice a Python loop: bounding box, integer crop, np.pad, scipy.ndimage.zoom(order=3)."
    pet_a = sitk.GetArrayFromImage(sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ct_a = sitk.GetArrayFromImage(ct).astype(np.float32)
    m = sitk.GetArrayFromImage(roi) > 0
    sx, sy = ct.GetSpacing()[:2]
    boxes = {}
    for k in range(m.shape[0]):
        ys, xs = np.nonzero(m[k])
        if len(ys): boxes[k] = (ys.min(), ys.max(), xs.min(), xs.max())
    side = {k: max((b[1] - b[0] + 1) * sy, (b[3] - b[2] + 1) * sx) for k, b in boxes.items()}
    amax = max(s * s for s in side.values())
    imgs, kept = [], []
    for k, b in boxes.items():
        if side[k] ** 2 <= keep_fraction * amax: continue
        crop = side[k] + dilation_mm
        ny, nx = int(round(crop / sy)), int(round(crop / sx))
        y0 = int(round((b[0] + b[1]) / 2 - ny / 2 + 0.5)); x0 = int(round((b[2] + b[3]) / 2 - nx / 2 + 0.5))
        chans = []
        for a, bg, (lo, hi) in ((pet_a, 0.0, suv_window), (ct_a, -1000.0, hu_window)):
            pad = max(0, -y0, -x0, y0 + ny - a.shape[1], x0 + nx - a.shape[2])
            s = np.pad(a[k], pad, constant_values=bg)[y0 + pad:y0 + pad + ny, x0 + pad:x0 + pad + nx]
            z = ndimage.zoom(s, (size / ny, size / nx), order=3, mode="grid-constant", cval=bg, grid_mode=True)
            chans.append(np.clip((z - lo) / (hi - lo), 0, 1))
        chans.append(np.clip(chans[0] + chans[1], 0, 1))
        imgs.append(np.stack(chans)); kept.append(k)
    return np.stack(imgs).astype(np.float32), kept


# --------------------------------------------------------------------------- timing
def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def preprocessing_rows(patients: list[dict], repeats: int = 5) -> list[dict]:
    "Rows: patients/s of the plain reference, `hyperimages` in memory, from files, and from the cache."
    imgs = [tuple(sitk.ReadImage(p[k]) for k in ("pet", "ct", "roi")) for p in patients]
    n = len(patients)
    # agreement of the two methods (same kept slices; mean absolute difference of the images)
    diffs, same = [], 0
    for (pet, ct, roi) in imgs:
        ref, kept = reference_hyperimages(pet, ct, roi)
        hi = petct.hyperimages(pet, ct, roi)
        same += list(hi.slices) == kept
        if list(hi.slices) == kept: diffs.append(float(np.abs(ref - hi.images).mean()))
    t_ref = _median_time(lambda: [reference_hyperimages(*x) for x in imgs], repeats)
    t_new = _median_time(lambda: [petct.hyperimages(*x) for x in imgs], repeats)
    t_read = _median_time(lambda: [tuple(sitk.ReadImage(p[k]) for k in ("pet", "ct", "roi")) for p in patients], repeats)
    with tempfile.TemporaryDirectory() as cache:
        t_cold = _median_time(lambda: [petct.patient_hyperimages(p["patient_id"], p["pet"], p["ct"], p["roi"], None)
                                       for p in patients], repeats)
        [petct.patient_hyperimages(p["patient_id"], p["pet"], p["ct"], p["roi"], cache) for p in patients]
        t_hit = _median_time(lambda: [petct.patient_hyperimages(p["patient_id"], p["pet"], p["ct"], p["roi"], cache)
                                      for p in patients], repeats)
    n_img = sum(len(petct.hyperimages(*x)) for x in imgs)
    note = f"{same}/{n} same kept slices; mean |ref - ours| {np.mean(diffs):.4f}" if diffs else f"{same}/{n} same kept slices"
    rows = [
        dict(part="preprocessing", what="reference: per-slice crop + ndimage.zoom loop (in memory)", per_s=n / t_ref,
             unit="patients/s", ratio=1.0, note=note),
        dict(part="preprocessing", what="petct.hyperimages, batched separable cubic spline (in memory)", per_s=n / t_new,
             unit="patients/s", ratio=t_ref / t_new, note=f"{n_img / t_new:.0f} hyper-images/s"),
        dict(part="preprocessing", what="reading the 3 NIfTI files only (SimpleITK)", per_s=n / t_read,
             unit="patients/s", ratio=t_ref / t_read, note="I/O share of the next row"),
        dict(part="preprocessing", what="petct.patient_hyperimages from files, no cache", per_s=n / t_cold,
             unit="patients/s", ratio=t_ref / t_cold, note="reads with pdl1_dls.io"),
        dict(part="preprocessing", what="petct.patient_hyperimages, cache hit", per_s=n / t_hit,
             unit="patients/s", ratio=t_ref / t_hit, note="stat files + hash + np.load"),
    ]
    return rows


def training_rows(n_patients: int = 60, epochs: int = 3, repeats: int = 3, device=None) -> list[dict]:
    "Rows: training images/s of `pdl1_dls.petct.pipeline.fit` next to a bare loop over the same tensors, and the augmentation alone."
    import torch
    import torch.nn.functional as F
    from pdl1_dls.petct import pipeline as train
    from pdl1_dls.core import get_device, seed_everything
    from pdl1_dls.io import stack_slices
    from pdl1_dls.petct.srescnn import make_model
    dev = torch.device(device) if device else get_device()
    data, labels = train.toy_patients(n_patients, slices=(6, 12), seed=0)
    cfg = train.TrainConfig(epochs=epochs, patience=epochs + 1, batch_size=64)
    fit_ids, inner_ids = train.split_inner(labels, cfg.inner_frac, cfg.seed)
    X, owner = stack_slices(data, fit_ids)
    n_fit = len(X); n_inner = sum(len(data[p]) for p in inner_ids)
    y = torch.from_numpy(np.array([labels[p] for p in fit_ids], np.float32)[owner])

    def ours():
        with tempfile.TemporaryDirectory() as d:
            train.fit(data, labels, cfg, d, device=dev, resume=False)

    def bare():  # the same model, optimiser, batches and epochs: no augmentation, weights, inner scoring or checkpoints
        seed_everything(0)
        m = make_model("hyper", dropout=cfg.dropout).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(0)
        Xd, yd = X.to(dev), y.to(dev)
        for _ in range(epochs):
            m.train()
            for idx in torch.split(torch.randperm(n_fit, generator=g), cfg.batch_size):
                idx = idx.to(dev)
                loss = F.binary_cross_entropy_with_logits(m(Xd[idx]), yd[idx])
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if dev.type == "cuda": torch.cuda.synchronize()

    def aug_only():
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for idx in torch.split(torch.randperm(n_fit, generator=g), cfg.batch_size):
                train.augment(X[idx], g, cfg.flip, cfg.rot90, cfg.jitter).to(dev)

    bare(); aug_only()  # warm-up: thread pools, allocator, first-call overheads
    t_bare = _median_time(bare, repeats); t_ours = _median_time(ours, repeats); t_aug = _median_time(aug_only, repeats)
    share = 100 * t_aug / t_ours
    r_bare, r_ours, r_aug = n_fit * epochs / t_bare, n_fit * epochs / t_ours, n_fit * epochs / t_aug
    what = f"{n_fit} training + {n_inner} inner slices, {epochs} epochs, batch {cfg.batch_size}, {dev}, {torch.get_num_threads()} threads"
    return [
        dict(part="training", what="reference: bare loop (forward, BCE, backward, AdamW) over the same tensors", per_s=r_bare,
             unit="images/s", ratio=1.0, note=what),
        dict(part="training", what="train.fit (augmentation, class weights, inner AUC each epoch, checkpoint + resume state)",
             per_s=r_ours, unit="images/s", ratio=r_ours / r_bare,
             note=f"overhead {100 * (t_ours / t_bare - 1):.0f} % over the bare loop"),
        dict(part="training", what="train.augment alone (the data pipeline: flips, 90° rotations, to device)", per_s=r_aug,
             unit="images/s", ratio=r_aug / r_bare, note=f"{share:.1f} % of train.fit's time" + (": not the bottleneck" if share < 25 else ": a bottleneck")),
    ]


def print_table(rows: list[dict], header: str):
    print(header)
    w = max(len(r["what"]) for r in rows)
    print(f"| part | {'what':<{w}} | rate | unit | × reference | note |")
    print(f"|---|{'-' * (w + 2)}|---:|---|---:|---|")
    for r in rows:
        print(f"| {r['part']} | {r['what']:<{w}} | {r['per_s']:.2f} | {r['unit']} | {r['ratio']:.2f} | {r['note']} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per row (median reported)")
    ap.add_argument("--synthetic", action="store_true", help="use numpy phantoms even when the real data is present")
    ap.add_argument("--device", default=None, help="torch device for the training rows (default: CUDA if present, else CPU)")
    ap.add_argument("--skip-training", action="store_true", help="preprocessing rows only")
    a = ap.parse_args(argv)
    os.environ.setdefault("PDL1_DLS_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        pts = None if a.synthetic else real_patients()
        src = "IBSI real PET/CT (16 patients)" if pts else "synthetic phantoms (16 patients)"
        if pts is None: pts = synthetic_patients(Path(tmp))
        rows = preprocessing_rows(pts, a.repeats)
        if not a.skip_training: rows += training_rows(repeats=max(1, min(a.repeats, 3)), device=a.device)
    import scipy
    print_table(rows, f"PET/CT benchmark on {src}; {platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs, scipy {scipy.__version__}, SimpleITK {sitk.Version.VersionString()}; "
                      f"medians of {a.repeats} repeats")


if __name__ == "__main__":
    main()
