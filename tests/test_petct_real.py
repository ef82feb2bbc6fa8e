"PET/CT hyper-images on the real IBSI soft-tissue sarcoma PET/CT (16 patients with CT and a CT-grid tumour mask)."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pdl1_dls.petct.preprocess import build_hyperimages, hyperimages, necrosis_ratio, suvmax, tumour_volume

pytestmark = pytest.mark.realdata

PATIENTS = ["STS_002", "STS_003", "STS_008", "STS_012", "STS_015", "STS_018", "STS_019", "STS_024",
            "STS_025", "STS_026", "STS_032", "STS_035", "STS_041", "STS_042", "STS_047", "STS_051"]


@pytest.fixture(scope="module")
def ibsi(shared_data) -> Path:
    d = shared_data / "ibsi_sts_petct_mr" / "nifti"
    if not d.is_dir(): pytest.skip(f"{d} not found")
    return d


def _load(ibsi, pid):
    f = ibsi / pid
    return tuple(sitk.ReadImage(str(f / n)) for n in ("PET_image.nii.gz", "CT_image.nii.gz", "CT_mask.nii.gz"))


def _independent(mask: np.ndarray, spacing):
    "Per-slice bounding boxes with numpy, square side in mm, area, kept when area > 30 % of the max."
    sides = {}
    for k in range(mask.shape[0]):
        ys, xs = np.nonzero(mask[k])
        if len(ys):
            sides[k] = max((ys.max() - ys.min() + 1) * spacing[1], (xs.max() - xs.min() + 1) * spacing[0])
    amax = max(s * s for s in sides.values())
    kept = [k for k, s in sides.items() if s * s > 0.30 * amax]
    return kept, sides


@pytest.fixture(scope="module")
def built(ibsi):
    out = {}
    for pid in PATIENTS:
        pet, ct, roi = _load(ibsi, pid)
        out[pid] = (hyperimages(pet, ct, roi, patient=pid), sitk.GetArrayFromImage(roi) > 0, ct.GetSpacing())
    return out


@pytest.mark.parametrize("pid", PATIENTS)
def test_kept_slices_equal_independent_30pc_count(built, pid):
    hi, mask, sp = built[pid]
    kept, sides = _independent(mask, sp)
    assert list(hi.slices) == kept
    assert len(hi) == len(kept) and hi.images.shape == (len(kept), 3, 64, 64)
    print(f"{pid}: {len(kept)} of {len(sides)} ROI slices kept")


@pytest.mark.parametrize("pid", PATIENTS)
def test_dilation_is_20_mm_not_20_voxels(built, pid):
    hi, mask, sp = built[pid]
    _, sides = _independent(mask, sp)
    side = np.array([sides[k] for k in hi.slices])
    assert np.allclose(hi.crop_mm, side + 20.0, atol=1e-6)           # 20 mm, i.e. 10 mm on each side
    assert sp[0] != 1.0 and np.all(np.abs(hi.crop_mm - (side + 20 * sp[0])) > 0.4)  # not 20 voxels
    # the crop covers crop_mm / spacing CT voxels, mapped to 64 pixels
    assert np.allclose(hi.crop_mm / sp[0], (side + 20.0) / sp[0])


def test_shapes_range_coverage(built):
    for pid, (hi, mask, sp) in built.items():
        assert hi.images.dtype == np.float32 and 0 <= hi.images.min() and hi.images.max() <= 1
        assert hi.pet_coverage > 0.99, (pid, hi.pet_coverage)
        assert np.allclose(hi.images[:, 2], np.clip(hi.images[:, 0] + hi.images[:, 1], 0, 1))
        # real tumours: the PET channel is not blank and varies inside the crop
        assert hi.images[:, 0].max() > 0.05 and hi.images[:, 1].std() > 0.01


def test_same_patient_at_two_ct_spacings(ibsi):
    pet, ct, roi = _load(ibsi, "STS_002")
    # the same physical frame on a 2x coarser in-plane grid
    sp2 = (ct.GetSpacing()[0] * 2, ct.GetSpacing()[1] * 2, ct.GetSpacing()[2])
    size2 = [int(ct.GetSize()[0] / 2), int(ct.GetSize()[1] / 2), ct.GetSize()[2]]
    ref = sitk.Image(size2, sitk.sitkFloat32); ref.SetSpacing(sp2); ref.SetDirection(ct.GetDirection())
    ref.SetOrigin(ct.TransformContinuousIndexToPhysicalPoint((0.5, 0.5, 0.0)))
    ct2 = sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, -1000.0)
    roi2 = sitk.Resample(roi, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    h1, h2 = hyperimages(pet, ct, roi), hyperimages(pet, ct2, roi2)
    common = sorted(set(h1.slices) & set(h2.slices))
    assert len(common) >= 0.8 * max(len(h1), len(h2))
    i1 = [list(h1.slices).index(k) for k in common]; i2 = [list(h2.slices).index(k) for k in common]
    # same physical crop to within one coarse voxel (a voxel-counted dilation would differ by ~19.5 mm)
    assert np.abs(h1.crop_mm[i1] - h2.crop_mm[i2]).max() <= sp2[0] + 1e-6
    d = np.abs(h1.images[i1] - h2.images[i2]).mean()
    r = np.corrcoef(h1.images[i1, 0].ravel(), h2.images[i2, 0].ravel())[0, 1]
    assert d < 0.05 and r > 0.95, (d, r)


def test_suvmax_volume_necrosis_on_real_pet(ibsi):
    for pid in PATIENTS[:6]:
        f = ibsi / pid
        pet = sitk.ReadImage(str(f / "PET_image.nii.gz"))
        pm = sitk.ReadImage(str(f / "PET_mask.nii.gz"))
        a, m = sitk.GetArrayFromImage(pet), sitk.GetArrayFromImage(pm) > 0
        assert suvmax(pet, pm) == pytest.approx(float(a[m].max()))          # native PET grid
        assert tumour_volume(pm) == pytest.approx(m.sum() * np.prod(pet.GetSpacing()) / 1000)
        nr = necrosis_ratio(pet, pm)
        assert 0 <= nr["ratio"] < 1 and nr["global_ml"] <= nr["roi_ml"] + 1e-9
        assert nr["necrosis_ml"] == pytest.approx(nr["ratio"] * nr["global_ml"])
        nm = necrosis_ratio(pet, pm, method="mask")
        assert nm["global_ml"] == pytest.approx(nr["roi_ml"]) and nm["necrosis_ml"] >= nr["necrosis_ml"] - 1e-9
        # the CT-grid mask, resampled onto the PET grid, finds nearly the same SUVmax
        ctm = sitk.ReadImage(str(f / "CT_mask.nii.gz"))
        assert suvmax(pet, ctm) <= float(a.max()) and suvmax(pet, ctm) > 0.7 * nr["suvmax"]


def test_real_cohort_with_a_broken_patient(ibsi, tmp_path):
    rows = [dict(patient_id=p, cohort="ibsi", pet=str(ibsi / p / "PET_image.nii.gz"), ct=str(ibsi / p / "CT_image.nii.gz"),
                 roi=str(ibsi / p / "CT_mask.nii.gz")) for p in PATIENTS[:4]]
    m = sitk.ReadImage(rows[1]["roi"]); empty = m * 0
    sitk.WriteImage(empty, str(tmp_path / "empty_mask.nii.gz"))
    shifted = sitk.Image(m); shifted.SetOrigin([o + 1000.0 for o in m.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "shifted_mask.nii.gz"))
    rows.append(dict(rows[1], patient_id="BAD_EMPTY", roi=str(tmp_path / "empty_mask.nii.gz")))
    rows.append(dict(rows[2], patient_id="BAD_OUTSIDE", roi=str(tmp_path / "shifted_mask.nii.gz")))
    built, skipped = build_hyperimages(pd.DataFrame(rows), tmp_path / "cache", progress=False)
    assert sorted(built) == sorted(PATIENTS[:4])
    r = dict(zip(skipped.patient_id, skipped.reason))
    assert set(r) == {"BAD_EMPTY", "BAD_OUTSIDE"} and "empty" in r["BAD_EMPTY"] and "outside" in r["BAD_OUTSIDE"]
    again, _ = build_hyperimages(pd.DataFrame(rows), tmp_path / "cache", progress=False)
    assert all(np.array_equal(built[k].images, again[k].images) for k in built)
