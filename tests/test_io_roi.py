"io.read_roi: one reader for label images, RTSTRUCT and DICOM SEG, with roi_name choosing the structure."
import numpy as np
import pytest
import SimpleITK as sitk

from pdl1_dls import io
from pdl1_dls.core import PDL1Error
from dicom_rois import box_contours, write_rtstruct, write_seg


def _ref():
    ref = sitk.Image(30, 28, 8, sitk.sitkInt16); ref.SetSpacing((1.5, 1.5, 3.0)); ref.SetOrigin((-20.0, -10.0, 5.0))
    ref.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # a flipped axis: the writers and readers must agree on geometry
    return ref


def _masks():
    a = np.zeros((8, 28, 30), bool); a[2:5, 5:12, 6:15] = True
    b = np.zeros_like(a); b[4:7, 15:25, 18:27] = True; b[5, 20, 22] = False
    return a, b


def test_label_image_values(tmp_path):
    ref = _ref(); a, b = _masks()
    lab = sitk.GetImageFromArray((a * 1 + b * 2).astype(np.uint8)); lab.CopyInformation(ref)
    sitk.WriteImage(lab, str(tmp_path / "lab.nii.gz"))
    with pytest.raises(PDL1Error, match=r"patient=P1 file=.*lab.nii.gz: ROI mask holds values other than 0 and 1 \(labels 1, 2\); set roi_name") as ei:
        io.read_roi(tmp_path / "lab.nii.gz", patient="P1")
    assert "\n" not in str(ei.value)
    m2 = io.read_roi(tmp_path / "lab.nii.gz", roi_name="2", patient="P1")
    assert np.array_equal(sitk.GetArrayFromImage(m2) == 1, b) and m2.GetPixelID() == sitk.sitkUInt8
    with pytest.raises(PDL1Error, match="ROI label 3 not found; labels: 1, 2"):
        io.read_roi(tmp_path / "lab.nii.gz", roi_name=3, patient="P1")
    one = sitk.GetImageFromArray(a.astype(np.float32)); one.CopyInformation(ref)
    sitk.WriteImage(one, str(tmp_path / "one.nrrd"))
    assert np.array_equal(sitk.GetArrayFromImage(io.read_roi(tmp_path / "one.nrrd")) == 1, a)


def test_rtstruct_single_default_and_choice(tmp_path):
    ref = _ref(); a, b = _masks()
    write_rtstruct(tmp_path / "two.dcm", {"GTV": box_contours(ref, a), "Node": box_contours(ref, b)})
    with pytest.raises(PDL1Error, match=r"patient=P2 file=.*two.dcm: RTSTRUCT holds 2 structures \(GTV, Node\); set roi_name") as ei:
        io.read_roi(tmp_path / "two.dcm", ref, patient="P2")
    assert "Doe" not in str(ei.value) and "SECRET" not in str(ei.value)
    m = io.read_roi(tmp_path / "two.dcm", ref, roi_name="gtv", patient="P2")    # case-insensitive match
    assert io.dice(sitk.GetArrayFromImage(m), a) == 1.0
    write_rtstruct(tmp_path / "one.dcm", {"GTV": box_contours(ref, a)})
    assert io.dice(sitk.GetArrayFromImage(io.read_roi(tmp_path / "one.dcm", ref)), a) == 1.0
    with pytest.raises(PDL1Error, match="needs the image it was drawn on"):
        io.read_roi(tmp_path / "one.dcm")
    with pytest.raises(PDL1Error, match="ROI 'Lung' not found; available: GTV, Node"):
        io.read_roi(tmp_path / "two.dcm", ref, roi_name="Lung")


@pytest.mark.parametrize("fractional", [False, True])
def test_seg_segments(tmp_path, fractional):
    ref = _ref(); a, b = _masks()
    write_seg(tmp_path / "seg.dcm", ref, {"tumour": a, "node": b}, fractional=fractional)
    assert io.dicom_modality(tmp_path / "seg.dcm") == "SEG"
    with pytest.raises(PDL1Error, match=r"SEG holds 2 structures \(tumour, node\)"):
        io.read_roi(tmp_path / "seg.dcm", ref, patient="P3")
    for name, want in (("tumour", a), ("node", b)):
        m = io.read_roi(tmp_path / "seg.dcm", ref, roi_name=name, patient="P3")
        assert io.same_grid(m, ref) and np.array_equal(sitk.GetArrayFromImage(m) == 1, want)
    # a reference whose slices fall between the frames is refused, not silently misplaced
    off = sitk.Image(ref); off.SetOrigin((-20.0, -10.0, 6.5))
    with pytest.raises(PDL1Error, match="between reference slices"):
        io.read_roi(tmp_path / "seg.dcm", off, roi_name="node", patient="P3")


def test_real_rtstruct_gtv_mass(shared_data):
    raw = shared_data / "mirp_sts001_raw_pet" / "FDG_PET"
    ibsi = shared_data / "ibsi_sts_petct_mr" / "nifti" / "STS_001"
    if not (raw / "mask" / "1-1.dcm").is_file(): pytest.skip(f"{raw / 'mask' / '1-1.dcm'} absent")
    pet = io.read_pet_suv(raw / "image", patient="STS_001")
    with pytest.raises(PDL1Error, match=r"RTSTRUCT holds 2 structures \(.*GTV_Mass.*\); set roi_name"):
        io.read_roi(raw / "mask" / "1-1.dcm", pet, patient="STS_001")
    m = io.read_roi(raw / "mask" / "1-1.dcm", pet, roi_name="GTV_Mass", patient="STS_001")
    assert int(sitk.GetArrayFromImage(m).sum()) == 5095
    if (ibsi / "PET_mask.nii.gz").is_file():
        ref = io.read_mask(ibsi / "PET_mask.nii.gz", patient="STS_001")
        assert io.dice(io.resample_mask(m, ref, "nearest"), ref) >= 0.95
