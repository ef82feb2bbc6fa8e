"MRI 2.5D preprocessing: slices, frame checks, bad inputs, cache, cohort builder, augmentation."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from pdl1_dls.core import PDL1Error
from pdl1_dls.mri.preprocess import (MRIParams, SEQUENCES, augment_batch, cached_mri_slices, max_area_indices, mri_augment,
                          mri_cohort, mri_slices)


def phantom(seed=0, shape=(24, 70, 80), spacing=(0.8, 0.9, 3.0), centre=(38, 30, 11), radii=(10, 6, 4), origin=(-30, -30, -20)):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    ell = ((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((zz - centre[2]) / radii[2]) ** 2 <= 1
    vol = rng.normal(100, 10, shape) + 80 * ell
    img = sitk.GetImageFromArray(vol.astype(np.float32)); img.SetSpacing(spacing); img.SetOrigin(origin)
    roi = sitk.GetImageFromArray(ell.astype(np.uint8)); roi.CopyInformation(img)
    return img, roi, ell


@pytest.fixture
def files(tmp_path):
    ce, roi, _ = phantom()
    t2 = sitk.Resample(ce, [60, 60, 30], sitk.Transform(), sitk.sitkLinear, ce.GetOrigin(), (1.1, 1.1, 2.5), ce.GetDirection(), 0.0)
    t1 = sitk.Cast(ce * 0.5 + 7, sitk.sitkFloat32)
    for k, im in (("ce_t1", ce), ("t1", t1), ("t2", t2), ("roi", roi)): sitk.WriteImage(im, str(tmp_path / f"{k}.nii.gz"))
    return {k: tmp_path / f"{k}.nii.gz" for k in (*SEQUENCES, "roi")}


def split(f): return {k: f[k] for k in SEQUENCES}, f["roi"]


def test_shapes_range_and_max_area(files):
    x, meta = mri_slices(*split(files), MRIParams(size=64), patient="P1")
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1
    # the chosen indices are the argmax of the area of the 1 mm mask, computed here independently
    ce, roi = sitk.ReadImage(str(files["ce_t1"])), sitk.ReadImage(str(files["roi"]))
    side = meta["crop_side_mm"]
    grid = sitk.Image([side] * 3, sitk.sitkUInt8); grid.SetOrigin(meta["crop_origin_mm"])
    m = sitk.GetArrayFromImage(sitk.Resample(roi, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    want = (int(np.argmax(m.sum((1, 2)))), int(np.argmax(m.sum((0, 2)))), int(np.argmax(m.sum((0, 1)))))
    assert tuple(meta["slice_index"].values()) == want
    # the tumour (bright) fills the centre of every image; crop margin 10 mm leaves dark corners
    assert (x[:, :, 28:36, 28:36].mean(axis=(2, 3)) > x[:, :, :6, :6].mean(axis=(2, 3)) + 0.1).all()
    # default "union" range: the bright tumour sets the top of the range itself, so its texture is kept, not clipped
    assert (x[:, :, 28:36, 28:36] > 0.999).mean() < 0.05 and x[:, :, 28:36, 28:36].std() > 0.01
    # background percentiles only: the tumour is above the 99.5th background percentile and saturates at 1
    xb, _ = mri_slices(*split(files), MRIParams(size=64, range_region="background"), patient="P1")
    assert (xb[:, :, 28:36, 28:36] > 0.99).mean() > 0.9
    # tumour volume close to the voxel count of the original mask
    assert abs(meta["tumour_volume_ml"] - sitk.GetArrayFromImage(roi).sum() * np.prod(roi.GetSpacing()) / 1000) < 0.2 * meta["tumour_volume_ml"]


def test_min_max_invariance(files):
    # T1 is an affine copy of CE-T1: after the robust min-max the two must coincide
    x, _ = mri_slices(*split(files), MRIParams(size=48))
    assert np.abs(x[0] - x[2]).max() < 1e-4


def test_max_area_indices_ties_and_values():
    m = np.zeros((5, 6, 7), bool); m[2, 1:4, 2:6] = True; m[3, 2:3, 2:3] = True
    idx, areas = max_area_indices(m)
    assert idx[0] == 2 and areas[0] == 12
    assert areas == (m.sum((1, 2)).max(), m.sum((0, 2)).max(), m.sum((0, 1)).max())


def test_whole_field_of_view(files):
    x, meta = mri_slices(*split(files), MRIParams(size=32, margin_mm=None))
    assert x.shape == (3, 3, 32, 32) and meta["crop_side_mm"] >= 70 * 0.9


def test_missing_sequence_names_patient_and_file(files, tmp_path):
    imgs, roi = split(files)
    imgs["t2"] = tmp_path / "absent_t2.nii.gz"
    with pytest.raises(PDL1Error, match=r"patient=P9 file=.*absent_t2.nii.gz: t2 file does not exist"):
        cached_mri_slices(imgs, roi, tmp_path / "cache", patient="P9")
    with pytest.raises(PDL1Error, match=r"patient=P9 .*absent_t2"):
        mri_slices(imgs, roi, patient="P9")
    del imgs["t2"]
    with pytest.raises(PDL1Error, match="patient=P9: no t2"):
        mri_slices(imgs, roi, patient="P9")


def test_mask_on_another_grid(files, tmp_path):
    roi = sitk.ReadImage(str(files["roi"]))
    other = sitk.Resample(roi, [40, 40, 12], sitk.Transform(), sitk.sitkNearestNeighbor, roi.GetOrigin(), (1.6, 1.6, 6.0), roi.GetDirection(), 0)
    sitk.WriteImage(other, str(tmp_path / "roi_other.nii.gz"))
    imgs, _ = split(files)
    with pytest.raises(PDL1Error, match=r"patient=P2 file=.*roi_other.nii.gz: ROI is not on the ce_t1 grid"):
        mri_slices(imgs, tmp_path / "roi_other.nii.gz", patient="P2")
    # same frame: it can be carried on request, and lands close to the original
    x, meta = mri_slices(imgs, tmp_path / "roi_other.nii.gz", MRIParams(size=32, roi_resample=True), patient="P2")
    _, meta0 = mri_slices(imgs, files["roi"], MRIParams(size=32), patient="P2")
    assert abs(meta["tumour_volume_ml"] - meta0["tumour_volume_ml"]) < 0.35 * meta0["tumour_volume_ml"]
    # a ROI in another place in space cannot be carried
    far = sitk.Image(other); far.SetOrigin((300, 300, 300)); sitk.WriteImage(far, str(tmp_path / "roi_far.nii.gz"))
    with pytest.raises(PDL1Error, match=r"patient=P2 file=.*roi_far.nii.gz"):
        mri_slices(imgs, tmp_path / "roi_far.nii.gz", MRIParams(roi_resample=True), patient="P2")


def test_no_shared_frame(files, tmp_path):
    imgs, roi = split(files)
    t1 = sitk.ReadImage(str(files["t1"]))
    shifted = sitk.Image(t1); shifted.SetOrigin((150.0, 0.0, 0.0)); sitk.WriteImage(shifted, str(tmp_path / "t1_shift.nii.gz"))
    with pytest.raises(PDL1Error, match=r"patient=P3 file=.*t1_shift.nii.gz: .*shared physical frame"):
        mri_slices({**imgs, "t1": tmp_path / "t1_shift.nii.gz"}, roi, patient="P3")
    rot = sitk.Image(t1); rot.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1)); sitk.WriteImage(rot, str(tmp_path / "t1_rot.nii.gz"))
    with pytest.raises(PDL1Error, match=r"patient=P3 file=.*t1_rot.nii.gz: .*axis directions differ"):
        mri_slices({**imgs, "t1": tmp_path / "t1_rot.nii.gz"}, roi, patient="P3")


def test_empty_mask(files, tmp_path):
    roi = sitk.ReadImage(str(files["roi"])) * 0; sitk.WriteImage(roi, str(tmp_path / "empty.nii.gz"))
    with pytest.raises(PDL1Error, match="ROI mask is empty"):
        mri_slices(split(files)[0], tmp_path / "empty.nii.gz", patient="P4")


def test_oblique_frame_gives_same_slices(files, tmp_path):
    # the same volumes with flipped axes (direction -1 on x, origin moved) must give the same output
    x0, m0 = mri_slices(*split(files), MRIParams(size=40))
    out = {}
    for k in (*SEQUENCES, "roi"):
        im = sitk.ReadImage(str(files[k]))
        fl = sitk.Flip(im, [True, False, False])
        sitk.WriteImage(fl, str(tmp_path / f"f_{k}.nii.gz")); out[k] = tmp_path / f"f_{k}.nii.gz"
    x1, m1 = mri_slices(*split(out), MRIParams(size=40))
    assert m0["slice_index"] == m1["slice_index"]
    assert np.abs(x0 - x1).mean() < 0.02


def test_cache_keys_and_atomicity(files, tmp_path):
    imgs, roi = split(files)
    c = tmp_path / "cache"
    x1, m1 = cached_mri_slices(imgs, roi, c, MRIParams(size=32), patient="P/5")
    f = list(c.glob("*.npz")); assert len(f) == 1 and f[0].name.startswith("P_5_")
    mtime = f[0].stat().st_mtime_ns
    x2, _ = cached_mri_slices(imgs, roi, c, MRIParams(size=32), patient="P/5")
    assert np.array_equal(x1, x2) and f[0].stat().st_mtime_ns == mtime  # read, not rewritten
    # a changed image gives a new key
    t1 = sitk.ReadImage(str(imgs["t1"])); sitk.WriteImage(t1 * 2, str(imgs["t1"]))
    cached_mri_slices(imgs, roi, c, MRIParams(size=32), patient="P/5")
    assert len(list(c.glob("*.npz"))) == 2 and not list(c.glob("*.part*"))


def test_cohort_records_skips(files, tmp_path):
    imgs, roi = split(files)
    row = {k: str(v) for k, v in files.items()}
    rows = [dict(patient_id="A", cohort="train", role="train", pdl1=1, **row),
            dict(patient_id="B", cohort="train", role="train", pdl1=0, **{**row, "t2": str(tmp_path / "gone.nii.gz")}),
            dict(patient_id="C", cohort="train", role="train", pdl1=0, **{**row, "t1": np.nan})]
    X, meta, skipped = mri_cohort(pd.DataFrame(rows), tmp_path / "c", MRIParams(size=24))
    assert X.shape == (1, 3, 3, 24, 24) and list(meta.patient_id) == ["A"] and meta.pdl1.tolist() == [1]
    assert skipped.patient_id.tolist() == ["B", "C"]
    assert skipped.file[0].endswith("gone.nii.gz") and "no t1 file" in skipped.reason[1]
    with pytest.raises(PDL1Error, match="cohort=train patient=B"):
        mri_cohort(pd.DataFrame(rows), tmp_path / "c", MRIParams(size=24), strict=True)


def test_augment_flip_and_crop():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    tf = mri_augment(16, scale=(1.0, 1.0))  # no crop: output is x or its horizontal flip
    outs = [augment_batch(x, tf) for _ in range(20)]
    for o in outs:
        for i in range(2): assert torch.equal(o[i], x[i]) or torch.equal(o[i], x[i].flip(-1))
    assert any(not torch.equal(o[0], x[0]) for o in outs) and any(torch.equal(o[0], x[0]) for o in outs)
    y = augment_batch(x, mri_augment(12))
    assert y.shape == (2, 3, 12, 12)


def test_preprocessing_repeats_exactly_when_t2_is_on_its_own_grid(tmp_path):
    "The tumour mask moved onto T2's grid is read from a copy: a view of the freed temporary gave random ranges."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.mri.preprocess import MRIParams, mri_slices
    from pdl1_dls.synth import make_mri_study
    t = load_study(make_mri_study(tmp_path / "s", scale="tiny", seed=0)).table()
    differ = []
    for _, row in t.iterrows():
        imgs = {k: row[k] for k in ("t1", "t2", "ce_t1")}
        xs = [mri_slices(imgs, row["roi"], MRIParams(size=32), patient=row["patient_id"])[0] for _ in range(4)]
        if not all(np.array_equal(x, xs[0]) for x in xs): differ.append(row["patient_id"])
    assert not differ, differ
