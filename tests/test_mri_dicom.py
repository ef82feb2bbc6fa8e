"MRI sequences given as DICOM series folders, NRRD or MHA read through pdl1_dls.io and give the NIfTI result."
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pdl1_dls.io import write_dicom_series
from pdl1_dls.mri.preprocess import SEQUENCES, MRIParams, cached_mri_slices, mri_cohort, mri_slices
from test_mri import phantom


@pytest.fixture
def study(tmp_path):
    ce, roi, _ = phantom()
    t2 = sitk.Resample(ce, [60, 60, 30], sitk.Transform(), sitk.sitkLinear, ce.GetOrigin(), (1.1, 1.1, 2.5), ce.GetDirection(), 0.0)
    t1 = sitk.Cast(ce * 0.5 + 7, sitk.sitkFloat32)
    nii, other = {}, {}
    for k, im in (("ce_t1", ce), ("t1", t1), ("t2", t2), ("roi", roi)):
        nii[k] = tmp_path / f"{k}.nii.gz"; sitk.WriteImage(im, str(nii[k]))
    frame = "1.2.826.0.1.3680043.8.498.1"
    for k, im in (("ce_t1", ce), ("t2", t2)):
        write_dicom_series(im, tmp_path / f"{k}_dicom", "MR", tags={"PatientName": "Doe^Jane"}, frame_uid=frame)
        other[k] = tmp_path / f"{k}_dicom"
    other["t1"] = tmp_path / "t1.nrrd"; sitk.WriteImage(t1, str(other["t1"]))
    other["roi"] = tmp_path / "roi.mha"; sitk.WriteImage(roi, str(other["roi"]))
    return nii, other


def test_dicom_folders_give_the_nifti_result(study, tmp_path):
    nii, other = study
    x0, m0 = mri_slices({k: nii[k] for k in SEQUENCES}, nii["roi"], MRIParams(size=48), patient="P1")
    x1, m1 = mri_slices({k: other[k] for k in SEQUENCES}, other["roi"], MRIParams(size=48), patient="P1")
    assert m1["slice_index"] == m0["slice_index"] and m1["crop_side_mm"] == m0["crop_side_mm"]
    assert np.abs(x1 - x0).max() < 2e-3       # DICOM stores 16 bits: values within 1e-4 of their range
    # through the cache and the cohort builder: folders are accepted where files are
    xc, _ = cached_mri_slices({k: other[k] for k in SEQUENCES}, other["roi"], tmp_path / "c", MRIParams(size=48), "P1")
    assert np.array_equal(xc, x1)
    row = dict(patient_id="P1", cohort="train", **{k: str(v) for k, v in other.items()})
    X, meta, skipped = mri_cohort(pd.DataFrame([row]), tmp_path / "c2", MRIParams(size=48))
    assert skipped.empty and X.shape == (1, 3, 3, 48, 48) and np.array_equal(X[0], x1)


def test_replaced_dicom_slice_changes_the_cache_key(study, tmp_path):
    _, other = study
    imgs = {k: other[k] for k in SEQUENCES}
    cached_mri_slices(imgs, other["roi"], tmp_path / "c", MRIParams(size=32), "P1")
    f = sorted(other["t2"].glob("*.dcm"))[3]
    raw = bytearray(f.read_bytes()); raw[-2:] = b"\x00\x10"; f.write_bytes(bytes(raw))
    cached_mri_slices(imgs, other["roi"], tmp_path / "c", MRIParams(size=32), "P1")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 2


def test_dicom_sequence_errors_name_no_identifying_tag(study, tmp_path):
    _, other = study
    far = tmp_path / "t2_far"
    im = sitk.ReadImage([str(f) for f in sorted(other["t2"].glob("*.dcm"))])
    im.SetOrigin((400.0, 0.0, 0.0))
    write_dicom_series(im, far, "MR", tags={"PatientName": "Doe^Jane"}, frame_uid="1.2.826.0.1.3680043.8.498.1")
    from pdl1_dls.core import PDL1Error
    with pytest.raises(PDL1Error, match=r"patient=P1 file=.*t2_far: .*shared physical frame") as ei:
        mri_slices({**{k: other[k] for k in SEQUENCES}, "t2": far}, other["roi"], MRIParams(size=32), patient="P1")
    assert "Doe" not in str(ei.value)
