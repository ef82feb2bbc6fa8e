"validate opens every image: each kind of broken input gives one Problem line naming cohort, patient, file and problem."
import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from pdl1_dls import manifest
from pdl1_dls.io import write_dicom_series
from pdl1_dls.manifest import validate_study
from pdl1_dls.synth import make_mri_study, make_petct_study

SECRETS = {"PatientName": "Doe^Jane", "PatientID": "SECRET123", "PatientBirthDate": "19700101"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for kind, maker in (("petct", make_petct_study), ("mri", make_mri_study)):
        t = manifest.load_study(maker(root / kind, scale="tiny", seed=0)).table()
        out[kind] = t[t.cohort == t.cohort.iloc[0]].head(2).reset_index(drop=True)
    return out


def _study(tmp_path, table, modality, bad: dict):
    "A manifest of two patients, `good` and `bad`; `bad` has the image paths given in `bad`."
    keys = manifest.IMAGE_KEYS[modality]
    rows = []
    for pid, (_, r) in zip(("good", "bad"), table.iterrows()):
        rows.append(dict(patient_id=pid, pdl1=int(r["pdl1"]) if r["pdl1"] == r["pdl1"] else 0, **{k: r[k] for k in keys}))
    rows[1].update({k: str(v) for k, v in bad.items()})
    pd.DataFrame(rows).to_csv(tmp_path / "clinical.csv", index=False)
    spec = dict(name="t", modality=modality, label=dict(column="pdl1"), images={k: k for k in keys},
                cohorts=[dict(name="c1", role="train", clinical="clinical.csv")])
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "m.yaml"


def _img(path): return sitk.ReadImage(str(path))


def _write(im, path): sitk.WriteImage(im, str(path)); return path


def _raw_pet(r, tmp_path, **tags):
    pet = _img(r["pet"])
    return write_dicom_series(pet, tmp_path / "pet_dicom", "PT", tags={**SECRETS, **tags}) and tmp_path / "pet_dicom"


def case_truncated_nii(r, d):
    raw = (d / "ct.nii.gz"); shutil.copy(r["ct"], raw); b = raw.read_bytes(); raw.write_bytes(b[: len(b) // 2])
    return {"ct": raw}, "ct.nii.gz", r"corrupt NIfTI file"

def case_truncated_dicom_slice(r, d):
    files = write_dicom_series(_img(r["ct"]), d / "ct_dicom", "CT", tags=SECRETS)
    b = files[5].read_bytes(); files[5].write_bytes(b[: len(b) - 40])
    return {"ct": d / "ct_dicom"}, "ct_dicom", r"unreadable DICOM slice, truncated or damaged"

def case_pet_without_weight(r, d):
    return {"pet": _raw_pet(r, d, Units="BQML", DecayCorrection="START")}, "pet_dicom", r"missing DICOM tag PatientWeight"

def case_wrong_units(r, d):
    return {"pet": _raw_pet(r, d, Units="PROPCNTS")}, "pet_dicom", r"PET Units 'PROPCNTS' cannot be converted to SUV"

def case_empty_roi(r, d):
    return {"roi": _write(_img(r["roi"]) * 0, d / "roi.nii.gz")}, "roi.nii.gz", r"ROI mask is empty"

def case_roi_500mm_outside(r, d):
    roi = _img(r["roi"]); roi.SetOrigin(tuple(np.add(roi.GetOrigin(), (500.0, 0, 0))))
    return {"roi": _write(roi, d / "roi.nii.gz")}, "roi.nii.gz", r"ROI lies outside the CT image \(\d+ mm beyond it\)"

def case_pet_ct_no_overlap(r, d):
    pet = _img(r["pet"]); pet.SetOrigin(tuple(np.add(pet.GetOrigin(), (0, 0, 1000.0))))
    return {"pet": _write(pet, d / "pet.nii.gz")}, "pet.nii.gz", r"PET and CT do not overlap in physical space"

def case_2d_image(r, d):
    return {"ct": _write(_img(r["ct"])[:, :, 10], d / "ct.nii.gz")}, "ct.nii.gz", r"ct image is 2-D \(96x96\); a 3-D volume is needed"

def case_non_finite(r, d):
    a = sitk.GetArrayFromImage(_img(r["pet"])); a[3, 4, 5] = np.nan; a[4, 4, 5] = np.inf
    pet = sitk.GetImageFromArray(a); pet.CopyInformation(_img(r["pet"]))
    return {"pet": _write(pet, d / "pet.nii.gz")}, "pet.nii.gz", r"pet image has 2 non-finite voxels"

def case_huge_suv(r, d):
    return {"pet": _write(_img(r["pet"]) * 1e7, d / "pet.nii.gz")}, "pet.nii.gz", r"PET values up to .* are not SUV"

def case_pet_in_bqml(r, d):
    "A PET NIfTI in Bq/ml as dcm2niix writes it (SUV x ~1,300 here: max in the tens of thousands) is not taken as SUV."
    return {"pet": _write(_img(r["pet"]) * 1300.0, d / "pet.nii.gz")}, "pet.nii.gz", r"PET values up to .* are not SUV .*look like Bq/ml"

def case_ct_not_hu(r, d):
    ct = sitk.Cast(_img(r["ct"]), sitk.sitkFloat32) * 10.0
    return {"ct": _write(ct, d / "ct.nii.gz")}, "ct.nii.gz", r"CT values .* lie outside -2000..5000 HU"

def case_two_labels(r, d):
    a = sitk.GetArrayFromImage(_img(r["roi"])); idx = np.argwhere(a > 0)[:10]; a[tuple(idx.T)] = 2
    roi = sitk.GetImageFromArray(a); roi.CopyInformation(_img(r["roi"]))
    return {"roi": _write(roi, d / "roi.nii.gz")}, "roi.nii.gz", r"ROI mask holds values other than 0 and 1 \(labels 1, 2\)"

def case_roi_geometry(r, d):
    roi = _img(r["roi"])
    other = sitk.Resample(roi, [40, 40, 16], sitk.Transform(), sitk.sitkNearestNeighbor, roi.GetOrigin(),
                          tuple(s * 2 for s in roi.GetSpacing()), roi.GetDirection(), 0)
    return {"roi": _write(other, d / "roi.nii.gz")}, "roi.nii.gz", r"ROI is not on the CT or the PET grid"

PETCT = [case_truncated_nii, case_truncated_dicom_slice, case_pet_without_weight, case_wrong_units, case_empty_roi,
         case_roi_500mm_outside, case_pet_ct_no_overlap, case_2d_image, case_non_finite, case_huge_suv, case_pet_in_bqml, case_ct_not_hu,
         case_two_labels, case_roi_geometry]


def _check(path, file_part, pattern):
    P = validate_study(path, generate=False)
    lines = [p.line() for p in P]
    assert all("patient=bad" in ln for ln in lines), lines            # the good patient is clean
    hits = [ln for ln in lines if file_part in ln]
    assert len(hits) == 1, lines
    ln = hits[0]; print(ln)
    assert ln.startswith("cohort=c1 patient=bad file=") and "\n" not in ln
    assert pd.Series([ln.split(": ", 1)[1]]).str.contains(pattern).all(), ln
    for s in SECRETS.values(): assert s not in ln and s.split("^")[0] not in ln
    return P


@pytest.mark.parametrize("case", PETCT, ids=[c.__name__[5:] for c in PETCT])
def test_petct_broken_patient_is_one_line(synth, tmp_path, case):
    r = synth["petct"].iloc[1]
    bad, file_part, pattern = case(r, tmp_path)
    _check(_study(tmp_path, synth["petct"], "petct", bad), file_part, pattern)


def mri_truncated_t2(r, d):
    raw = d / "t2.nii.gz"; shutil.copy(r["t2"], raw); b = raw.read_bytes(); raw.write_bytes(b[: len(b) - 200])
    return {"t2": raw}, "t2.nii.gz", r"corrupt NIfTI file"

def mri_t2_elsewhere(r, d):
    t2 = _img(r["t2"]); t2.SetOrigin(tuple(np.add(t2.GetOrigin(), (0, 0, 800.0))))
    return {"t2": _write(t2, d / "t2.nii.gz")}, "t2.nii.gz", r"do not overlap in physical space"

def mri_roi_off_grid(r, d):
    roi = _img(r["roi"])
    other = sitk.Resample(roi, [50, 50, 10], sitk.Transform(), sitk.sitkNearestNeighbor, roi.GetOrigin(),
                          tuple(s * 2 for s in roi.GetSpacing()), roi.GetDirection(), 0)
    return {"roi": _write(other, d / "roi.nii.gz")}, "roi.nii.gz", r"ROI is not on the CE-T1WI grid"

def mri_t1_dicom_ok_t2_rotated(r, d):
    write_dicom_series(_img(r["t1"]), d / "t1_dicom", "MR", tags=SECRETS)          # a DICOM folder is fine
    t2 = _img(r["t2"]); t2.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return {"t1": d / "t1_dicom", "t2": _write(t2, d / "t2.nii.gz")}, "t2.nii.gz", r"axis directions differ"

MRI = [mri_truncated_t2, mri_t2_elsewhere, mri_roi_off_grid, mri_t1_dicom_ok_t2_rotated]


@pytest.mark.parametrize("case", MRI, ids=[c.__name__[4:] for c in MRI])
def test_mri_broken_patient_is_one_line(synth, tmp_path, case):
    r = synth["mri"].iloc[1]
    bad, file_part, pattern = case(r, tmp_path)
    _check(_study(tmp_path, synth["mri"], "mri", bad), file_part, pattern)


def test_second_validate_reads_nothing_unless_a_file_changed(synth, tmp_path, monkeypatch):
    r = synth["petct"].iloc[1]
    bad, _, _ = case_empty_roi(r, tmp_path)
    path = _study(tmp_path, synth["petct"], "petct", bad)
    manifest._CHECKED.clear()
    calls = []
    orig = manifest._check_patient
    monkeypatch.setattr(manifest, "_check_patient", lambda *a, **k: calls.append(a[4]) or orig(*a, **k))
    P1 = validate_study(path, generate=False, cache_dir=tmp_path / "cache")
    assert sorted(calls) == ["bad", "good"] and len(list((tmp_path / "cache" / "validate").glob("*.json"))) == 2
    P2 = validate_study(path, generate=False, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and [p.line() for p in P2] == [p.line() for p in P1]
    manifest._CHECKED.clear()                                   # a new session: the JSON cache answers
    assert [p.line() for p in validate_study(path, generate=False, cache_dir=tmp_path / "cache")] == [p.line() for p in P1]
    assert len(calls) == 2
    _write(_img(r["roi"]), tmp_path / "roi.nii.gz")              # fixed: re-read, and the problem is gone
    assert validate_study(path, generate=False, cache_dir=tmp_path / "cache") == [] and calls[2:] == ["bad"]


def test_roi_is_opened_when_its_reference_image_is_missing_or_broken(synth, tmp_path):
    "A missing CT does not hide an empty ROI; a corrupt CE-T1WI does not hide an RTSTRUCT whose structure is ambiguous."
    from dicom_rois import box_contours, write_rtstruct
    r = synth["petct"].iloc[1]
    empty = _write(_img(r["roi"]) * 0, tmp_path / "roi.nii.gz")
    path = _study(tmp_path, synth["petct"], "petct", {"ct": tmp_path / "no_such_ct.nii.gz", "roi": empty})
    lines = [p.line() for p in validate_study(path, generate=False)]
    assert any("no_such_ct.nii.gz" in ln for ln in lines), lines
    assert [ln for ln in lines if "roi.nii.gz" in ln and ln.endswith("ROI mask is empty")], lines
    m = synth["mri"].iloc[1]
    d = tmp_path / "mri"; d.mkdir()
    ce = d / "ce_t1.nii.gz"; shutil.copy(m["ce_t1"], ce); b = ce.read_bytes(); ce.write_bytes(b[: len(b) // 2])
    ref = _img(m["ce_t1"]); box = box_contours(ref, sitk.GetArrayFromImage(_img(m["roi"])) > 0)
    write_rtstruct(d / "rs.dcm", {"GTV": box, "Liver": box})
    lines = [p.line() for p in validate_study(_study(d, synth["mri"], "mri", {"ce_t1": ce, "roi": d / "rs.dcm"}), generate=False)]
    assert [ln for ln in lines if "ce_t1.nii.gz" in ln and "corrupt NIfTI file" in ln], lines
    hit = [ln for ln in lines if "rs.dcm" in ln]
    assert len(hit) == 1 and "RTSTRUCT holds 2 structures (GTV, Liver); set roi_name" in hit[0], lines
    for s in SECRETS.values(): assert all(s not in ln for ln in lines)
