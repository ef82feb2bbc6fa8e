"RTSTRUCT and DICOM SEG ROIs through the PET/CT and MRI input builders; roi_name from the manifest; skip_bad."
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from pdl1_dls.core import PDL1Error
from pdl1_dls.manifest import load_study
from pdl1_dls.mri.preprocess import SEQUENCES, MRIParams, mri_cohort, mri_slices
from pdl1_dls.petct.preprocess import build_hyperimages
from dicom_rois import box_contours, write_rtstruct, write_seg
from test_mri import files  # noqa: F401  (fixture)
from test_petct import phantom


@pytest.fixture
def petct_files(tmp_path):
    pet, ct, roi = phantom(box=True)
    m = sitk.GetArrayFromImage(roi) > 0
    other = np.zeros_like(m); other[m.any((1, 2))] = False; other[1:3, 5:9, 5:9] = True
    out = {}
    for nm, im in (("pet", pet), ("ct", ct), ("roi", roi)):
        out[nm] = tmp_path / f"{nm}.nii.gz"; sitk.WriteImage(im, str(out[nm]))
    out["rtstruct"] = tmp_path / "rs.dcm"
    write_rtstruct(out["rtstruct"], {"GTV": box_contours(ct, m), "Other": box_contours(ct, other)})
    out["seg"] = tmp_path / "seg.dcm"; write_seg(out["seg"], ct, {"GTV": m, "Other": other})
    return out


def test_petct_rtstruct_and_seg_give_the_mask_result(petct_files, tmp_path):
    f = petct_files
    row = dict(cohort="train", pet=str(f["pet"]), ct=str(f["ct"]))
    tab = pd.DataFrame([dict(row, patient_id="A", roi=str(f["roi"]), roi_name=None),
                        dict(row, patient_id="B", roi=str(f["rtstruct"]), roi_name="GTV"),
                        dict(row, patient_id="C", roi=str(f["seg"]), roi_name="GTV"),
                        dict(row, patient_id="D", roi=str(f["rtstruct"]), roi_name=np.nan)])
    hi, skipped = build_hyperimages(tab, tmp_path / "cache", progress=False)
    assert sorted(hi) == ["A", "B", "C"]
    for pid in "BC":
        assert np.array_equal(hi[pid].slices, hi["A"].slices) and np.array_equal(hi[pid].images, hi["A"].images)
    assert skipped.patient_id.tolist() == ["D"]
    assert skipped.reason[0] == "RTSTRUCT holds 2 structures (GTV, Other); set roi_name to one of them"
    # the structure is part of the cache key: another structure is another entry, not the cached GTV
    hi2, _ = build_hyperimages(tab.iloc[[1]].assign(roi_name="Other"), tmp_path / "cache", progress=False)
    assert not np.array_equal(hi2["B"].slices, hi["B"].slices)


def test_petct_skip_bad_false_raises_on_the_first_bad_patient(petct_files, tmp_path):
    f = petct_files
    empty = sitk.ReadImage(str(f["roi"])) * 0; sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    row = dict(cohort="val", pet=str(f["pet"]), ct=str(f["ct"]))
    tab = pd.DataFrame([dict(row, patient_id="A", roi=str(f["roi"])),
                        dict(row, patient_id="B", roi=str(tmp_path / "empty.nii.gz")),
                        dict(row, patient_id="C", roi=str(tmp_path / "gone.nii.gz"))])
    hi, skipped = build_hyperimages(tab, None, progress=False)            # default: skip and record
    assert sorted(hi) == ["A"] and skipped.patient_id.tolist() == ["B", "C"]
    with pytest.raises(PDL1Error, match=r"^cohort=val patient=B file=.*empty.nii.gz: ROI is empty") as ei:
        build_hyperimages(tab, None, progress=False, skip_bad=False)
    assert "\n" not in str(ei.value)
    with pytest.raises(PDL1Error, match=r"^cohort=val patient=C column=roi: no roi path"):
        build_hyperimages(tab.iloc[[0, 2]].assign(roi=[str(f["roi"]), None]), None, progress=False, skip_bad=False)


def test_mri_seg_and_rtstruct_roi(files, tmp_path):  # noqa: F811
    ce = sitk.ReadImage(str(files["ce_t1"]))
    m = sitk.GetArrayFromImage(sitk.ReadImage(str(files["roi"]))) > 0
    write_seg(tmp_path / "seg.dcm", ce, {"tumour": m})
    imgs = {k: files[k] for k in SEQUENCES}
    x0, m0 = mri_slices(imgs, files["roi"], MRIParams(size=32), patient="P1")
    x1, m1 = mri_slices(imgs, tmp_path / "seg.dcm", MRIParams(size=32), patient="P1")   # one segment: no name needed
    assert np.array_equal(x0, x1) and m0 == m1
    write_rtstruct(tmp_path / "rs.dcm", {"a": box_contours(ce, m), "b": box_contours(ce, m)})
    row = dict(patient_id="P1", cohort="test", **{k: str(files[k]) for k in SEQUENCES}, roi=str(tmp_path / "rs.dcm"))
    X, meta, skipped = mri_cohort(pd.DataFrame([row, dict(row, patient_id="P2", roi_name="b")]), tmp_path / "c", MRIParams(size=32))
    assert meta.patient_id.tolist() == ["P2"] and "roi_name" not in meta.columns
    assert skipped.reason[0] == "RTSTRUCT holds 2 structures (a, b); set roi_name to one of them"
    with pytest.raises(PDL1Error, match=r"^cohort=test patient=P1 file=.*rs.dcm: RTSTRUCT holds 2 structures"):
        mri_cohort(pd.DataFrame([row]), tmp_path / "c", MRIParams(size=32), skip_bad=False)


def test_manifest_roi_name_key_and_column(petct_files, tmp_path):
    f = petct_files
    pd.DataFrame(dict(patient_id=["A", "B"], pdl1=[1, 0], structure=["GTV", "Other"])).to_csv(tmp_path / "clin.csv", index=False)
    spec = dict(name="t", modality="petct", label=dict(column="pdl1"), roi_name="GTV",
                images=dict(pet=str(f["pet"]), ct=str(f["ct"]), roi=str(f["rtstruct"])),
                cohorts=[dict(name="a", role="train", clinical="clin.csv"),
                         dict(name="b", role="test", clinical="clin.csv", roi_name="structure", id_prefix="x")])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    t = load_study(tmp_path / "m.yaml").table()
    assert t.roi_name.tolist() == ["GTV", "GTV", "GTV", "Other"]
    hi, skipped = build_hyperimages(t, None, progress=False)
    assert skipped.empty and len(hi) == 4
