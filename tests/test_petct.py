"PET/CT hyper-images on numpy phantoms: geometry, the 30 % rule, millimetre dilation, windows, fusion, necrosis, cache, cohort builder."
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pdl1_dls.petct import preprocess as petct
from pdl1_dls.core import PDL1Error
from pdl1_dls.petct.preprocess import (HyperImages, build_hyperimages, crop_resize, hyperimages, necrosis_ratio,
                            patient_hyperimages, square_masks, suvmax, tumour_volume)


def _img(a, spacing, origin=None):
    im = sitk.GetImageFromArray(a)
    im.SetSpacing([float(s) for s in spacing])
    im.SetOrigin([s / 2 for s in spacing] if origin is None else origin)
    return im


def _grid(spacing, extent):
    n = [int(round(e / s)) for e, s in zip(extent, spacing)]
    z, y, x = np.meshgrid(*[(np.arange(k) + 0.5) * s for k, s in zip(n[::-1], spacing[::-1])], indexing="ij")
    return x, y, z


def phantom(ct_spacing=(0.8, 0.8, 2.5), pet_spacing=(4.0, 4.0, 4.0), extent=(80.0, 80.0, 60.0),
            radius=16.0, core=7.0, centre=(40.0, 40.0, 30.0), box=False):
    "PET (SUV 8 rim, 1 core, 0.7 around), CT (40 HU tumour in -800 HU lung) and ROI, one physical frame."
    x, y, z = _grid(ct_spacing, extent)
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    ct = np.where(r <= radius, 40.0, -800.0).astype(np.float32)
    if box:
        roi = (np.abs(x - centre[0]) <= radius + 2) & (np.abs(y - centre[1]) <= radius + 2) & (np.abs(z - centre[2]) <= radius)
    else:
        roi = r <= radius
    xp, yp, zp = _grid(pet_spacing, extent)
    rp = np.sqrt((xp - centre[0]) ** 2 + (yp - centre[1]) ** 2 + (zp - centre[2]) ** 2)
    pet = np.where(rp <= core, 1.0, np.where(rp <= radius, 8.0, 0.7)).astype(np.float32)
    return _img(pet, pet_spacing), _img(ct, ct_spacing), _img(roi.astype(np.uint8), ct_spacing)


def independent_kept(mask, spacing, frac=0.30):
    "The 30 % rule written plainly: per-slice bounding box, square side in mm, area, > frac * max."
    sl, areas = [], []
    for k in range(mask.shape[0]):
        ys, xs = np.nonzero(mask[k])
        if len(ys) == 0: continue
        side = max((ys.max() - ys.min() + 1) * spacing[1], (xs.max() - xs.min() + 1) * spacing[0])
        sl.append(k); areas.append(side * side)
    areas = np.array(areas)
    return [k for k, a in zip(sl, areas) if a > frac * areas.max()]


def test_shapes_dtype_range_and_slices():
    pet, ct, roi = phantom()
    hi = hyperimages(pet, ct, roi)
    n = len(hi.slices)
    assert hi.images.shape == (n, 3, 64, 64) and hi.images.dtype == np.float32
    assert 0.0 <= hi.images.min() and hi.images.max() <= 1.0
    assert hi.channels == ("pet", "ct", "fusion")
    m = sitk.GetArrayFromImage(roi) > 0
    assert list(hi.slices) == independent_kept(m, ct.GetSpacing())
    assert n < m.any((1, 2)).sum()  # the small end slices were dropped
    assert hyperimages(pet, ct, roi, size=32).images.shape == (n, 3, 32, 32)


def test_deterministic():
    pet, ct, roi = phantom()
    a, b = hyperimages(pet, ct, roi), hyperimages(pet, ct, roi)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.slices, b.slices)


def test_square_masks_nonsquare_pixels():
    m = np.zeros((3, 30, 30), bool)
    m[0, 2:12, 2:8] = True   # 10 rows x 6 cols
    m[1, 2:6, 2:28] = True   # 4 rows x 26 cols
    sq = square_masks(m, (0.5, 2.0, 3.0))      # x 0.5 mm, y 2 mm
    assert list(sq["side_mm"]) == [max(10 * 2.0, 6 * 0.5), max(4 * 2.0, 26 * 0.5)] == [20.0, 13.0]
    assert list(sq["keep"]) == [True, True]   # 169 > 0.3 * 400
    assert np.allclose(sq["centre"], [[6.5, 4.5], [3.5, 14.5]])


def test_crop_resize_matches_per_slice_scipy_reference():
    rng = np.random.default_rng(1)
    vol = ndimage.gaussian_filter(rng.normal(0, 300, (8, 40, 44)), 1).astype(np.float32)
    sl = np.array([0, 3, 4, 7])
    cen = np.array([[10.0, 10.5], [20.0, 22.0], [2.0, 41.0], [39.0, 1.0]])  # the last two cross the border
    crop = np.array([16.0, 30.0, 20.0, 25.0])
    yy, xx = petct._sample_grid(cen, crop, (0.9, 1.1, 3.0), 64)
    fast = crop_resize(vol, sl, yy, xx, background=-1000.0)
    ref = np.stack([ndimage.map_coordinates(vol[s].astype(np.float64), np.stack(np.meshgrid(yy[i], xx[i], indexing="ij")),
                                            order=3, mode="grid-constant", cval=-1000.0) for i, s in enumerate(sl)])
    assert np.abs(fast - ref).max() < 1e-2   # HU; float32 rounding of values up to ~1000
    # and it is a cubic spline, not linear: a linear reference differs clearly
    lin = ndimage.map_coordinates(vol[3].astype(np.float64), np.stack(np.meshgrid(yy[1], xx[1], indexing="ij")), order=1)
    assert np.abs(fast[1] - lin).max() > 1.0


def test_pet_and_ct_channels_match_a_plain_full_grid_reference():
    # reference: PET resampled onto the whole CT grid (SimpleITK linear), then per slice scipy map_coordinates
    pet, ct, roi = phantom(centre=(20.0, 40.0, 30.0))   # the crops cross the image border
    hi = hyperimages(pet, ct, roi)
    pet_ct = sitk.GetArrayFromImage(sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    ct_a = sitk.GetArrayFromImage(ct)
    yy, xx = petct._sample_grid(hi.centres, hi.crop_mm, ct.GetSpacing(), 64)
    for i, k in enumerate(hi.slices):
        g = np.stack(np.meshgrid(yy[i], xx[i], indexing="ij"))
        p = ndimage.map_coordinates(pet_ct[k].astype(float), g, order=3, mode="grid-constant", cval=0.0)
        c = ndimage.map_coordinates(ct_a[k].astype(float), g, order=3, mode="grid-constant", cval=-1000.0)
        assert np.abs(hi.images[i, 0] - np.clip(p / 15, 0, 1)).max() < 1e-4
        assert np.abs(hi.images[i, 1] - np.clip((c + 1000) / 1400, 0, 1)).max() < 1e-4


def test_dilation_is_in_millimetres_two_spacings():
    h1 = hyperimages(*phantom(ct_spacing=(0.5, 0.5, 2.5)))
    h2 = hyperimages(*phantom(ct_spacing=(1.25, 1.25, 2.5)))
    assert list(h1.slices) == list(h2.slices)
    # crop extents agree to the SSM's voxel quantisation; voxel-counted dilation would differ by 20*(1.25-0.5) = 15 mm
    assert np.abs(h1.crop_mm - h2.crop_mm).max() <= 1.25 + 1e-9
    assert np.allclose(h1.crop_mm - h1.ssm_side_mm, 20.0) and np.allclose(h2.crop_mm - h2.ssm_side_mm, 20.0)
    i1, i2 = np.argmax(h1.crop_mm), np.argmax(h2.crop_mm)
    assert np.abs(h1.images[i1] - h2.images[i2]).mean() < 0.05


def test_dilation_seen_in_the_image_content():
    # a 40 mm CT square of 40 HU in -800 HU, box ROI exactly on it: the square fills 40/60 of the crop width
    sp = (0.7, 0.7, 2.0)
    x, y, z = _grid(sp, (100.0, 100.0, 20.0))
    sq = (np.abs(x - 50) < 20) & (np.abs(y - 50) < 20)
    ct = _img(np.where(sq, 40.0, -800.0).astype(np.float32), sp)
    roi = _img(sq.astype(np.uint8), sp)
    pet = _img(np.where(sq, 5.0, 0.5).astype(np.float32), sp)
    for dil, expect in ((20.0, 40 / 60), (40.0, 40 / 80)):
        hi = hyperimages(pet, ct, roi, dilation_mm=dil)
        row = hi.images[len(hi) // 2, 1, 32]
        frac = (row > (0.5 * (40 + -800) + 1000) / 1400).mean()
        assert abs(frac - expect) <= 2 / 64, (dil, frac, expect)


def test_nonsquare_pixels_give_a_physical_square():
    pet, ct, roi = phantom(ct_spacing=(0.5, 1.0, 2.5))
    hi = hyperimages(pet, ct, roi)
    img = hi.images[np.argmax(hi.crop_mm), 1] > 0.5   # CT: the round tumour
    ys, xs = np.nonzero(img)
    assert abs((np.ptp(ys) + 1) - (np.ptp(xs) + 1)) <= 2   # round, not squashed


def test_windows_and_fusion():
    pet, ct, roi = phantom()
    hi = hyperimages(pet, ct, roi)
    mid = hi.images[np.argmax(hi.crop_mm)]
    assert abs(mid[1, 32, 32] - (40 + 1000) / 1400) < 0.01     # tumour centre, HU 40
    assert abs(mid[1, 1, 1] - (-800 + 1000) / 1400) < 0.01     # lung corner
    assert np.allclose(mid[2], np.clip(mid[0] + mid[1], 0, 1))  # fusion = clip(CT + 1*PET)
    ov = hyperimages(pet, ct, roi, fusion="over", alpha=1.0)
    assert np.allclose(ov.images[:, 2], ov.images[:, 0])       # the "over" form at alpha 1 is the PET
    half = hyperimages(pet, ct, roi, fusion="over", alpha=0.5)
    assert np.allclose(half.images[:, 2], 0.5 * half.images[:, 0] + 0.5 * half.images[:, 1], atol=1e-6)
    w = hyperimages(pet, ct, roi, suv_window=(0, 8))
    assert w.images[:, 0].max() > hi.images[:, 0].max()


def test_padding_where_the_crop_leaves_the_image():
    # tumour near the x=0 border: the crop extends past it and is padded with HU -1000 and SUV 0
    pet, ct, roi = phantom(centre=(15.0, 40.0, 30.0), radius=12.0, core=3.0)
    hi = hyperimages(pet, ct, roi)
    left = hi.images[:, :, :, :3]
    assert np.allclose(left[:, 1], 0.0, atol=1e-3) and np.allclose(left[:, 0], 0.0, atol=1e-3)
    assert hi.images[:, 1, :, -3:].min() > 0.1   # the other side is lung, not padding


def test_roi_on_another_grid_is_resampled():
    pet, ct, roi = phantom()
    _, _, roi2 = phantom(ct_spacing=(1.6, 1.6, 2.5))  # same tumour, coarser grid
    a, b = hyperimages(pet, ct, roi), hyperimages(pet, ct, roi2)
    assert abs(len(a) - len(b)) <= 2 and np.abs(np.median(a.crop_mm) - np.median(b.crop_mm)) < 3.5


def test_box_roi_keeps_every_slice():
    hi = hyperimages(*phantom(box=True))
    assert np.ptp(hi.ssm_side_mm) == 0 and list(hi.slices) == list(hi.all_slices)


@pytest.mark.parametrize("case", ["empty", "outside_ct", "no_overlap", "outside_pet"])
def test_bad_input_names_patient_and_file(case):
    pet, ct, roi = phantom()
    files = dict(pet="/d/p7/pet.nii.gz", ct="/d/p7/ct.nii.gz", roi="/d/p7/roi.nii.gz")
    if case == "empty":
        roi = roi * 0; expect, f = "empty", "roi"
    elif case == "outside_ct":
        roi = sitk.Image(roi); roi.SetOrigin((400.0, 0.0, 0.0)); expect, f = "outside the CT", "roi"
    elif case == "no_overlap":
        pet = sitk.Image(pet); pet.SetOrigin((0.0, 0.0, 500.0)); expect, f = "overlap", "pet"
    else:  # PET overlaps the CT but not the tumour
        a = sitk.GetArrayFromImage(pet)[:3]   # z < 12 mm; the tumour spans 14..46 mm
        pet = _img(a, pet.GetSpacing()); expect, f = "PET field of view", "pet"
    with pytest.raises(PDL1Error) as ei:
        hyperimages(pet, ct, roi, patient="p7", files=files)
    msg = str(ei.value)
    assert "patient=p7" in msg and files[f] in msg and expect in msg and "\n" not in msg


def test_partial_pet_coverage_warns_and_reports():
    pet, ct, roi = phantom()
    a = sitk.GetArrayFromImage(pet)[:8]    # PET covers z < 32 mm; the tumour spans 14..46 mm
    with pytest.warns(UserWarning, match="outside the PET field of view"):
        hi = hyperimages(_img(a, pet.GetSpacing()), ct, roi, patient="p1")
    assert 0.3 < hi.pet_coverage < 0.8


def test_necrosis_ratio_suvmax_volume():
    pet, ct, roi = phantom(pet_spacing=(2.0, 2.0, 2.0))
    nr = necrosis_ratio(pet, roi)
    assert abs(nr["ratio"] - (7 / 16) ** 3) < 0.03
    assert abs(nr["global_ml"] - 4 / 3 * np.pi * 1.6 ** 3) < 2.5
    assert nr["necrosis_ml"] == pytest.approx(nr["ratio"] * nr["global_ml"])
    assert nr["suvmax"] == 8.0 == suvmax(pet, roi) and nr["threshold_suv"] == pytest.approx(3.2)
    # a loose box ROI does not count the surrounding low uptake as necrosis
    box = phantom(pet_spacing=(2.0, 2.0, 2.0), box=True)[2]
    assert abs(necrosis_ratio(pet, box)["ratio"] - nr["ratio"]) < 0.01
    # no core, no necrosis
    arr = sitk.GetArrayFromImage(pet); arr[arr == 1.0] = 8.0
    solid = _img(arr, pet.GetSpacing())
    assert necrosis_ratio(solid, roi)["ratio"] == 0.0
    # tight-mask method: the same core; the mask is the global volume; a solid tumour's rim is not necrosis
    nm = necrosis_ratio(pet, roi, method="mask")
    assert abs(nm["ratio"] - nr["ratio"]) < 0.03 and nm["global_ml"] == nm["roi_ml"]
    assert necrosis_ratio(solid, roi, method="mask")["ratio"] < 0.01
    # bigger core, bigger ratio
    big = phantom(pet_spacing=(2.0, 2.0, 2.0), core=11.0)[0]
    assert necrosis_ratio(big, roi)["ratio"] > nr["ratio"] + 0.1
    v = tumour_volume(roi)
    assert v == pytest.approx((sitk.GetArrayFromImage(roi) > 0).sum() * 0.8 * 0.8 * 2.5 / 1000)
    assert abs(v - 4 / 3 * np.pi * 1.6 ** 3) < 0.5
    with pytest.raises(PDL1Error, match="empty"):
        necrosis_ratio(pet, roi * 0, patient="p2")


def _write_patient(d: Path, kind="good", **kw):
    pet, ct, roi = phantom(**kw)
    if kind == "empty": roi = roi * 0
    if kind == "outside": roi = sitk.Image(roi); roi.SetOrigin((300.0, 300.0, 0.0))
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for nm, im in (("pet", pet), ("ct", ct), ("roi", roi)):
        paths[nm] = str(d / f"{nm}.nii.gz"); sitk.WriteImage(im, paths[nm])
    return paths


def test_cache_hit_identical_and_changed_parameter_misses(tmp_path, monkeypatch):
    p = _write_patient(tmp_path / "A")
    cache = tmp_path / "cache"
    h1 = patient_hyperimages("A", p["pet"], p["ct"], p["roi"], cache)
    files = list(cache.glob("*.npz")); assert len(files) == 1
    calls = []
    orig = petct._read
    monkeypatch.setattr(petct, "_read", lambda *a, **k: calls.append(a) or orig(*a, **k))
    h2 = patient_hyperimages("A", p["pet"], p["ct"], p["roi"], cache)
    assert calls == []                                       # served from the cache
    assert np.array_equal(h1.images, h2.images) and np.array_equal(h1.slices, h2.slices)
    assert np.array_equal(h1.crop_mm, h2.crop_mm) and h2.params == h1.params
    h3 = patient_hyperimages("A", p["pet"], p["ct"], p["roi"], cache, dilation_mm=30.0)
    assert len(calls) == 3 and len(list(cache.glob("*.npz"))) == 2
    assert np.allclose(h3.crop_mm, h1.crop_mm + 10)
    # a rewritten input file misses too
    os.utime(p["roi"], ns=(time.time_ns(), time.time_ns() + 10**9))
    patient_hyperimages("A", p["pet"], p["ct"], p["roi"], cache)
    assert len(list(cache.glob("*.npz"))) == 3
    # content hashing: same key for an identical copy elsewhere
    k1 = petct.cache_key(p, {}, hash_files=True)
    q = {k: str(tmp_path / f"copy_{k}.nii.gz") for k in p}
    for k in p: Path(q[k]).write_bytes(Path(p[k]).read_bytes())
    assert petct.cache_key(q, {}, hash_files=True) == k1 and petct.cache_key(q, {}) != petct.cache_key(p, {})
    with pytest.raises(TypeError, match="unknown"):
        patient_hyperimages("A", p["pet"], p["ct"], p["roi"], cache, dilaton_mm=3)
    # no stray temporary files
    assert not [f for f in cache.iterdir() if f.name.startswith(".")]


def test_save_load_roundtrip(tmp_path):
    hi = hyperimages(*phantom(), patient="X")
    hi.save(tmp_path / "x.npz")
    back = HyperImages.load(tmp_path / "x.npz")
    for k in ("images", "slices", "centres", "crop_mm", "ssm_side_mm", "all_slices", "all_areas_mm2"):
        assert np.array_equal(getattr(hi, k), getattr(back, k)), k
    assert back.spacing == hi.spacing and back.params == hi.params and back.channels == hi.channels


def test_cohort_skips_bad_patients_with_reason(tmp_path):
    rows = []
    for pid, kind in (("G1", "good"), ("E1", "empty"), ("G2", "good"), ("O1", "outside"), ("M1", "missing"), ("N1", "nopath")):
        p = _write_patient(tmp_path / pid, "good" if kind in ("missing", "nopath") else kind, centre=(40.0, 40.0, 30.0))
        if kind == "missing": p["ct"] = str(tmp_path / pid / "nope.nii.gz")
        if kind == "nopath": p["pet"] = np.nan
        rows.append(dict(patient_id=pid, cohort="c1", **p))
    table = pd.DataFrame(rows)
    built, skipped = build_hyperimages(table, tmp_path / "cache", progress=False)
    assert sorted(built) == ["G1", "G2"]
    assert list(skipped.columns) == ["patient_id", "cohort", "file", "reason"]
    reasons = dict(zip(skipped.patient_id, skipped.reason))
    assert set(reasons) == {"E1", "O1", "M1", "N1"}
    assert "empty" in reasons["E1"] and "outside the CT" in reasons["O1"]
    assert "not found" in reasons["M1"] and reasons["N1"] == "no pet path"
    assert skipped.set_index("patient_id").loc["E1", "file"].endswith("E1/roi.nii.gz")
    assert (skipped.cohort == "c1").all()
    # duplicate ids are a table problem, reported before any work
    with pytest.raises(PDL1Error, match="duplicate"):
        build_hyperimages(pd.concat([table, table.iloc[:1]]), None, progress=False)
