"MRI preprocessing on the real IBSI T1 MR (soft-tissue sarcoma, one sequence): max-area planes."
import numpy as np
import pytest
import SimpleITK as sitk

from pdl1_dls.mri.preprocess import MRIParams, mri_slices

PATIENTS = ["STS_002", "STS_012", "STS_041"]


@pytest.mark.parametrize("pid", PATIENTS)
def test_ibsi_t1_max_area_planes(shared_data, pid):
    d = shared_data / "ibsi_sts_petct_mr" / "nifti" / pid
    img_f, roi_f = d / "MR_T1_image.nii.gz", d / "MR_T1_mask.nii.gz"
    if not img_f.is_file(): pytest.skip(f"{img_f} absent")
    x, meta = mri_slices({"t1": img_f}, roi_f, MRIParams(sequences=("t1",), size=96), patient=pid)
    assert x.shape == (1, 3, 96, 96) and np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1
    # independent check: resample the mask onto the same 1 mm cube and take the argmax of the area per plane
    roi = sitk.ReadImage(str(roi_f)) > 0
    side = meta["crop_side_mm"]
    grid = sitk.Image([side] * 3, sitk.sitkUInt8); grid.SetOrigin(meta["crop_origin_mm"])
    m = sitk.GetArrayFromImage(sitk.Resample(roi, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    assert m.any()
    want = {"axial": int(np.argmax(m.sum((1, 2)))), "coronal": int(np.argmax(m.sum((0, 2)))), "sagittal": int(np.argmax(m.sum((0, 1))))}
    assert meta["slice_index"] == want
    assert meta["tumour_area_mm2"]["axial"] == m.sum((1, 2)).max()
    # tumour volume at 1 mm within 10 % of the original mask volume
    v0 = sitk.GetArrayFromImage(roi).sum() * np.prod(roi.GetSpacing()) / 1000
    assert abs(meta["tumour_volume_ml"] - v0) < 0.1 * v0
    # the crop holds the tumour with a 10 mm margin: its side exceeds every extent of the mask by about 20 mm
    ext = [np.ptp(np.nonzero(m)[a]) + 1 for a in range(3)]
    assert side >= max(ext) + 18
