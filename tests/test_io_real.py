"pdl1_dls.io on the shared real data: raw DICOM PET -> SUV against IBSI, RTSTRUCT against the IBSI mask, PET mask on CT."
import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pdl1_dls import io

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def sts001(shared_data):
    raw = shared_data / "mirp_sts001_raw_pet" / "FDG_PET"
    ibsi = shared_data / "ibsi_sts_petct_mr" / "nifti" / "STS_001"
    pet = io.read_pet_suv(raw / "image", patient="STS_001")
    ref = io.read_image(ibsi / "PET_image.nii.gz", patient="STS_001")
    mask = io.read_mask(ibsi / "PET_mask.nii.gz", ref, patient="STS_001")
    return dict(raw=raw, pet=pet, ref=ref, mask=mask)


def test_raw_pet_shares_frame_and_grid_with_ibsi(sts001):
    pet, ref = sts001["pet"], sts001["ref"]
    assert io.check_same_frame(pet, ref, what="raw PET and IBSI PET") == pytest.approx(1.0)  # the crop lies inside
    assert np.allclose(pet.GetSpacing(), ref.GetSpacing(), atol=1e-3)
    assert np.allclose(pet.GetDirection(), ref.GetDirection(), atol=1e-6)
    # the IBSI crop's first voxel sits on a voxel of the raw grid (so no interpolation is needed)
    idx = np.array(pet.TransformPhysicalPointToContinuousIndex(ref.GetOrigin()))
    assert np.abs(idx - np.round(idx)).max() < 0.01


def test_raw_pet_suv_matches_ibsi_in_tumour(sts001):
    pet, ref, mask = sts001["pet"], sts001["ref"], sts001["mask"]
    on_ref = io.resample_to(pet, ref, "linear")
    a, b = sitk.GetArrayFromImage(on_ref), sitk.GetArrayFromImage(ref)
    m = sitk.GetArrayFromImage(mask) > 0
    assert m.sum() > 1000 and (b[m] > 0).all()
    rel = np.abs(a[m] - b[m]) / b[m]
    print(f"STS_001 SUV: median |rel diff| in tumour {np.median(rel):.2e}, 95th pct {np.percentile(rel, 95):.2e}, "
          f"SUVmax raw {a[m].max():.3f} vs IBSI {b[m].max():.3f}")
    assert np.median(rel) < 0.01
    assert abs(a[m].max() - b[m].max()) / b[m].max() < 0.01
    assert pet.GetMetaData("pdl1_dls|units") == "SUVbw"


def test_raw_pet_carries_no_identifying_tags(sts001):
    pet = sts001["pet"]
    ds = pydicom.dcmread(str(sorted((sts001["raw"] / "image").glob("*.dcm"))[0]), stop_before_pixels=True)
    secrets = [str(ds.get(t, "")) for t in ("PatientName", "PatientID", "PatientBirthDate")]
    secrets = [s for s in secrets if len(s) >= 3]
    for k in pet.GetMetaDataKeys():
        assert not k.startswith("0010|")
        for s in secrets: assert s not in pet.GetMetaData(k)


def test_rtstruct_gtv_mass_matches_ibsi_mask(sts001):
    rs = sts001["raw"] / "mask" / "1-1.dcm"
    assert {"GTV_Mass", "GTV_Edema"} <= set(io.list_rtstruct_rois(rs))
    n_ibsi = int(sitk.GetArrayFromImage(sts001["mask"]).sum())
    full = io.read_rtstruct(rs, sts001["pet"], "GTV_Mass", patient="STS_001")
    n_full = int(sitk.GetArrayFromImage(full).sum())
    on_ref = io.resample_mask(full, sts001["ref"], "nearest")
    d = io.dice(on_ref, sts001["mask"])
    crop = io.read_rtstruct(rs, sts001["ref"], "GTV_Mass", patient="STS_001")  # rasterised on the IBSI grid directly
    d_crop = io.dice(crop, sts001["mask"])
    print(f"STS_001 GTV_Mass: {n_full} voxels on the raw grid, IBSI mask {n_ibsi}; Dice {d:.4f} (direct on IBSI grid {d_crop:.4f})")
    assert abs(n_full - n_ibsi) / n_ibsi <= 0.01
    assert int(sitk.GetArrayFromImage(on_ref).sum()) == n_full  # the crop holds the whole tumour
    assert d >= 0.95 and d_crop >= 0.95


def _ct_patients(shared_data):
    text = (shared_data / "README.md").read_text()
    m = re.search(r"\(16 patients: ([0-9 ]+)\)", text)
    assert m, "patient list not found in data/README.md"
    ids = [f"STS_{x}" for x in m.group(1).split()]
    assert len(ids) == 16
    return ids


def _z_extent(mask: sitk.Image):
    a = sitk.GetArrayFromImage(mask)
    ks = np.nonzero(a.any((1, 2)))[0]
    return (mask.TransformIndexToPhysicalPoint((0, 0, int(ks[0])))[2], mask.TransformIndexToPhysicalPoint((0, 0, int(ks[-1])))[2])


def test_pet_mask_on_ct_grid_overlaps_ct_mask(shared_data):
    root = shared_data / "ibsi_sts_petct_mr" / "nifti"
    res = {}
    for pid in _ct_patients(shared_data):
        d = root / pid
        pet, ct = io.read_image(d / "PET_image.nii.gz", pid), io.read_image(d / "CT_image.nii.gz", pid)
        pm, cm = io.read_mask(d / "PET_mask.nii.gz", pet, pid), io.read_mask(d / "CT_mask.nii.gz", ct, pid)
        assert io.check_overlap(pet, ct, min_fraction=0.9, what="PET and CT", patient=pid) >= 0.9
        pet_on_ct = io.resample_pet_to_ct(pet, ct, patient=pid)
        assert io.same_grid(pet_on_ct, ct)
        res[pid] = dict(linear=io.dice(io.resample_mask(pm, ct, "linear"), cm),
                        nearest=io.dice(io.resample_mask(pm, ct, "nearest"), cm),
                        z_pet=_z_extent(pm), z_ct=_z_extent(cm))
    print("PET mask -> CT grid, Dice (linear >= 0.5 | nearest):",
          ", ".join(f"{k} {v['linear']:.3f}|{v['nearest']:.3f}" for k, v in res.items()))
    # STS_019: the PET mask sits about two slices (6.5 mm) off the CT mask in z: a known defect of the data set
    assert res["STS_019"]["linear"] < 0.8
    assert abs(np.mean(res["STS_019"]["z_pet"]) - np.mean(res["STS_019"]["z_ct"])) > 3.0
    # STS_035: the PET mask lacks the CT mask's first and last slices, which caps Dice just under 0.9
    z_p, z_c = res["STS_035"]["z_pet"], res["STS_035"]["z_ct"]
    assert z_p[0] > z_c[0] + 1 and z_p[1] < z_c[1] - 1
    assert res["STS_035"]["linear"] >= 0.85
    for pid, v in res.items():
        if pid in ("STS_019", "STS_035"): continue
        assert v["linear"] >= 0.9, (pid, v["linear"])
