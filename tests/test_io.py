"pdl1_dls.io on small synthetic files: formats, SUV conversion, RTSTRUCT filling, geometry checks, bad input, privacy."
import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pdl1_dls.core import PDL1Error
from pdl1_dls import io

from dicom_rois import write_rtstruct as _write_rtstruct

SECRETS = ("Doe^Jane", "Doe", "SECRET123", "19700101")
PET_SOP = "1.2.840.10008.5.1.4.1.1.128"


def _one_line_naming(e: PDL1Error, patient: str, file) -> str:
    msg = str(e)
    assert "\n" not in msg
    assert f"patient={patient}" in msg and str(file) in msg
    for s in SECRETS: assert s not in msg
    return msg


def write_pet_series(folder: Path, n=6, rows=8, cols=9, spacing=(2.0, 2.5), dz=3.0, units="BQML",
                     decay="START", dose=3.7e8, half=6586.2, weight=72.5, inj="093000", series="103000",
                     drop=(), omit=(), shuffle=True, seed=0, start_datetime=None):
    "A small PET series with identifying tags set; returns (values in Bq/ml per slice (k,j,i), file list)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid, frame_uid = generate_uid(), generate_uid()
    truth = np.zeros((n, rows, cols))
    files = []
    order = rng.permutation(n) if shuffle else np.arange(n)
    for k in range(n):
        raw = rng.integers(0, 4000, size=(rows, cols)).astype(np.uint16)
        slope = float(rng.uniform(0.5, 3.0))
        slope = float(f"{slope:.6g}")
        truth[k] = raw * slope
        if k in drop: continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PET_SOP
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset(); ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = PET_SOP, meta.MediaStorageSOPInstanceUID
        ds.Modality = "PT"; ds.PatientName = "Doe^Jane"; ds.PatientID = "SECRET123"; ds.PatientBirthDate = "19700101"
        ds.StudyInstanceUID = generate_uid(); ds.SeriesInstanceUID = series_uid; ds.FrameOfReferenceUID = frame_uid
        ds.SeriesDate = ds.AcquisitionDate = ds.StudyDate = "20200102"
        ds.SeriesTime = series; ds.AcquisitionTime = series
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImagePositionPatient = [-10.0, -20.0, 50.0 + k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]; ds.SliceThickness = dz
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16; ds.HighBit = 15; ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:.6g}"; ds.RescaleIntercept = "0"
        ds.Units = units; ds.DecayCorrection = decay; ds.CorrectedImage = ["DECY", "ATTN"]
        if "PatientWeight" not in omit: ds.PatientWeight = str(weight)
        rp = Dataset()
        if "RadionuclideTotalDose" not in omit: rp.RadionuclideTotalDose = str(dose)
        if "RadionuclideHalfLife" not in omit: rp.RadionuclideHalfLife = str(half)
        if "RadiopharmaceuticalStartTime" not in omit: rp.RadiopharmaceuticalStartTime = inj
        if start_datetime: rp.RadiopharmaceuticalStartDateTime = start_datetime
        ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
        ds.PixelData = raw.tobytes()
        f = folder / f"img{order[k]:03d}.dcm"
        ds.save_as(str(f), enforce_file_format=True)
        files.append(f)
    return truth, files


def _suv_expected(truth, dose, half, weight, dt_s):
    return truth * weight * 1000 / (dose * 2 ** (-dt_s / half))


def _no_identifying_metadata(img: sitk.Image):
    for k in img.GetMetaDataKeys():
        assert not k.startswith("0010|"), k
        v = img.GetMetaData(k)
        for s in SECRETS: assert s not in v


# ---------------------------------------------------------------- reading images

@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii", "a.nrrd", "a.mha", "a.mhd"])
def test_read_formats_roundtrip(tmp_path, name):
    arr = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    im = sitk.GetImageFromArray(arr); im.SetSpacing((0.7, 0.8, 2.5)); im.SetOrigin((1.0, -2.0, 3.0))
    sitk.WriteImage(im, str(tmp_path / name))
    back = io.read_image(tmp_path / name)
    assert np.array_equal(sitk.GetArrayFromImage(back), arr)
    assert io.same_grid(back, im, 1e-4)


def test_dicom_series_sorted_and_stripped(tmp_path):
    truth, files = write_pet_series(tmp_path / "pet", shuffle=True)
    img = io.read_image(tmp_path / "pet")
    assert img.GetSize() == (9, 8, 6)
    assert np.allclose(img.GetSpacing(), (2.0, 2.5, 3.0), atol=1e-4)
    assert np.allclose(img.GetOrigin(), (-10.0, -20.0, 50.0), atol=1e-4)
    # slices come back in position order with the per-slice rescale slope applied
    assert np.allclose(sitk.GetArrayFromImage(img), truth, rtol=1e-5)
    _no_identifying_metadata(img)
    assert img.GetMetaData("pdl1_dls|modality") == "PT"


def test_single_dicom_file_stripped(tmp_path):
    truth, files = write_pet_series(tmp_path / "pet", shuffle=False)
    img = io.read_image(files[2])
    assert img.GetSize()[:2] == (9, 8)
    assert np.allclose(sitk.GetArrayFromImage(img).squeeze(), truth[2], rtol=1e-5)
    _no_identifying_metadata(img)


def test_folder_with_two_series_reads_the_larger(tmp_path):
    write_pet_series(tmp_path / "d", n=6, seed=1)
    truth_small, fs = write_pet_series(tmp_path / "other", n=3, seed=3)
    for f in fs: f.rename(tmp_path / "d" / f"small_{f.name}")
    assert io.read_image(tmp_path / "d").GetSize()[2] == 6


# ---------------------------------------------------------------- SUV

def test_suv_start_decay(tmp_path):
    dose, half, weight = 3.7e8, 6586.2, 72.5
    truth, _ = write_pet_series(tmp_path / "pet", dose=dose, half=half, weight=weight, inj="093000", series="103000")
    suv = io.read_pet_suv(tmp_path / "pet", patient="P7")
    exp = _suv_expected(truth, dose, half, weight, 3600.0)
    assert np.allclose(sitk.GetArrayFromImage(suv), exp, rtol=1e-5)
    assert suv.GetPixelID() == sitk.sitkFloat32
    assert suv.GetMetaData("pdl1_dls|units") == "SUVbw"
    _no_identifying_metadata(suv)


def test_suv_injection_before_midnight(tmp_path):
    dose, half, weight = 2.5e8, 6586.2, 60.0
    truth, _ = write_pet_series(tmp_path / "pet", dose=dose, half=half, weight=weight, inj="233000", series="003000")
    suv = io.read_pet_suv(tmp_path / "pet")
    assert np.allclose(sitk.GetArrayFromImage(suv), _suv_expected(truth, dose, half, weight, 3600.0), rtol=1e-5)


def test_suv_start_datetime_preferred(tmp_path):
    dose, half, weight = 2.5e8, 6586.2, 60.0
    truth, _ = write_pet_series(tmp_path / "pet", dose=dose, half=half, weight=weight, inj="000000", series="103000",
                                start_datetime="20200102091500")
    suv = io.read_pet_suv(tmp_path / "pet")
    assert np.allclose(sitk.GetArrayFromImage(suv), _suv_expected(truth, dose, half, weight, 4500.0), rtol=1e-5)


def test_suv_admin_no_decay(tmp_path):
    dose, half, weight = 3.0e8, 6586.2, 80.0
    truth, _ = write_pet_series(tmp_path / "pet", decay="ADMIN", dose=dose, half=half, weight=weight)
    suv = io.read_pet_suv(tmp_path / "pet")
    assert np.allclose(sitk.GetArrayFromImage(suv), truth * weight * 1000 / dose, rtol=1e-5)


def test_suv_gml_and_nifti_pass_through(tmp_path):
    truth, _ = write_pet_series(tmp_path / "pet", units="GML")
    assert np.allclose(sitk.GetArrayFromImage(io.read_pet_suv(tmp_path / "pet")), truth, rtol=1e-5)
    im = sitk.GetImageFromArray(np.random.default_rng(0).random((3, 4, 5)).astype(np.float32))
    sitk.WriteImage(im, str(tmp_path / "suv.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(io.read_pet_suv(tmp_path / "suv.nii.gz")), sitk.GetArrayFromImage(im))


def test_suv_unknown_units(tmp_path):
    write_pet_series(tmp_path / "pet", units="PROPCNTS")
    with pytest.raises(PDL1Error, match="Units"):
        io.read_pet_suv(tmp_path / "pet", patient="P1")


@pytest.mark.parametrize("tag", ["RadionuclideTotalDose", "PatientWeight", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime"])
def test_suv_missing_tag_names_it_not_the_patient(tmp_path, tag):
    write_pet_series(tmp_path / "pet", omit=(tag,))
    with pytest.raises(PDL1Error) as ei:
        io.read_pet_suv(tmp_path / "pet", patient="P042")
    msg = _one_line_naming(ei.value, "P042", tmp_path / "pet")
    assert tag in msg


# ---------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    for fn in (io.read_image, io.read_pet_suv, io.read_mask):
        with pytest.raises(PDL1Error, match="not found") as ei:
            fn(tmp_path / "nope.nii.gz", patient="P001")
        _one_line_naming(ei.value, "P001", tmp_path / "nope.nii.gz")
    with pytest.raises(PDL1Error, match="not found"):
        io.read_rtstruct(tmp_path / "rs.dcm", sitk.Image(4, 4, 4, sitk.sitkUInt8), patient="P001")


@pytest.mark.parametrize("name", ["c.nii.gz", "c.nii", "c.nrrd", "c.mha"])
def test_corrupt_image(tmp_path, name):
    im = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 20, 30)).astype(np.float32))
    sitk.WriteImage(im, str(tmp_path / name), useCompression=True)
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PDL1Error) as ei:
        io.read_image(tmp_path / name, patient="P002")
    assert "corrupt" in _one_line_naming(ei.value, "P002", tmp_path / name)


def test_garbage_and_empty_file(tmp_path):
    (tmp_path / "g.nii.gz").write_bytes(b"not an image at all" * 10)
    (tmp_path / "e.nii.gz").write_bytes(b"")
    for n in ("g.nii.gz", "e.nii.gz"):
        with pytest.raises(PDL1Error) as ei:
            io.read_image(tmp_path / n, patient="P003")
        _one_line_naming(ei.value, "P003", tmp_path / n)


def test_truncated_dicom_series(tmp_path):
    write_pet_series(tmp_path / "pet", n=8, drop=(4,))
    for fn in (io.read_image, io.read_pet_suv):
        with pytest.raises(PDL1Error, match="missing slice") as ei:
            fn(tmp_path / "pet", patient="P004")
        _one_line_naming(ei.value, "P004", tmp_path / "pet")


def test_corrupt_dicom_slice(tmp_path):
    _, files = write_pet_series(tmp_path / "pet", n=5, shuffle=False)
    raw = files[2].read_bytes(); files[2].write_bytes(raw[: len(raw) - 40])
    with pytest.raises(PDL1Error) as ei:
        io.read_image(tmp_path / "pet", patient="P005")
    _one_line_naming(ei.value, "P005", tmp_path / "pet")


def test_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(PDL1Error, match="no DICOM"):
        io.read_image(tmp_path / "d", patient="P006")


def test_empty_mask(tmp_path):
    m = sitk.Image(10, 10, 4, sitk.sitkUInt8)
    sitk.WriteImage(m, str(tmp_path / "m.nii.gz"))
    with pytest.raises(PDL1Error, match="mask is empty") as ei:
        io.read_mask(tmp_path / "m.nii.gz", m, patient="P007")
    _one_line_naming(ei.value, "P007", tmp_path / "m.nii.gz")


def test_pet_ct_do_not_overlap():
    ct = sitk.Image(50, 50, 20, sitk.sitkInt16); ct.SetSpacing((1.0, 1.0, 3.0))
    pet = sitk.Image(20, 20, 10, sitk.sitkFloat32); pet.SetSpacing((4.0, 4.0, 3.0)); pet.SetOrigin((0.0, 0.0, 400.0))
    with pytest.raises(PDL1Error, match="do not overlap") as ei:
        io.resample_pet_to_ct(pet, ct, patient="P008", file="pet.nii.gz")
    _one_line_naming(ei.value, "P008", "pet.nii.gz")
    pet.SetSpacing((2.0, 2.0, 3.0)); pet.SetOrigin((5.0, 5.0, 10.0))  # PET box inside the CT box
    assert io.check_overlap(pet, ct) == pytest.approx(1.0)
    assert io.resample_pet_to_ct(pet, ct).GetSize() == ct.GetSize()


# ---------------------------------------------------------------- masks, resampling, geometry

def _grid(size=(30, 30, 10), spacing=(2.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0), pix=sitk.sitkFloat32):
    im = sitk.Image(*size, pix); im.SetSpacing(spacing); im.SetOrigin(origin); return im


def test_read_mask_binarises_and_checks_grid(tmp_path):
    ref = _grid()
    m = _grid(pix=sitk.sitkUInt8); m[5:10, 5:12, 2:5] = 3; m[20, 20, 8] = 1
    sitk.WriteImage(m, str(tmp_path / "m.nii.gz"))
    got = io.read_mask(tmp_path / "m.nii.gz", ref)
    a = sitk.GetArrayFromImage(got)
    assert got.GetPixelID() == sitk.sitkUInt8 and set(np.unique(a)) == {0, 1} and a.sum() == 5 * 7 * 3 + 1
    other = _grid(origin=(4.0, 0.0, 0.0))
    with pytest.raises(PDL1Error, match="origin") as ei:
        io.read_mask(tmp_path / "m.nii.gz", other, patient="P9")
    _one_line_naming(ei.value, "P9", tmp_path / "m.nii.gz")
    moved = io.read_mask(tmp_path / "m.nii.gz", other, resample=True)
    assert io.same_grid(moved, other)
    # a shift of exactly 2 voxels in x: the same voxels, two columns to the left
    assert np.array_equal(sitk.GetArrayFromImage(moved)[:, :, :-2], a[:, :, 2:])


def test_resample_to_identity_and_interpolators():
    rng = np.random.default_rng(0)
    im = sitk.GetImageFromArray(rng.random((6, 7, 8)).astype(np.float32)); im.SetSpacing((1.5, 1.5, 2.0))
    for interp in ("linear", "nearest", "bspline"):
        out = io.resample_to(im, im, interp)
        assert np.allclose(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(im), atol=1e-5)
    with pytest.raises(ValueError):
        io.resample_to(im, im, "cubic")
    # linear on a ramp is exact at midpoints
    ramp = sitk.GetImageFromArray(np.broadcast_to(np.arange(10, dtype=np.float32), (3, 4, 10)).copy())
    fine = sitk.Image(19, 4, 3, sitk.sitkFloat32); fine.SetSpacing((0.5, 1, 1))
    r = sitk.GetArrayFromImage(io.resample_to(ramp, fine, "linear"))
    assert np.allclose(r[1, 1], np.arange(19) * 0.5)
    # outside the image: the default
    far = sitk.Image(4, 4, 3, sitk.sitkFloat32); far.SetOrigin((100.0, 0, 0))
    assert (sitk.GetArrayFromImage(io.resample_to(ramp, far, default=-7.0)) == -7.0).all()


def test_resample_mask_keeps_volume_on_finer_grid():
    coarse = _grid((20, 20, 10), (4.0, 4.0, 4.0), pix=sitk.sitkUInt8)
    coarse[5:15, 6:12, 2:8] = 1
    fine = _grid((80, 80, 40), (1.0, 1.0, 1.0), origin=(-1.5, -1.5, -1.5))
    for method in ("nearest", "linear"):
        r = io.resample_mask(coarse, fine, method)
        vol_c = sitk.GetArrayFromImage(coarse).sum() * 64.0
        vol_f = float(sitk.GetArrayFromImage(r).sum())
        assert abs(vol_f - vol_c) / vol_c < 0.05


def test_check_same_grid_and_frame():
    a, b = _grid(), _grid(spacing=(2.0, 2.0, 3.5))
    io.check_same_grid(a, _grid())
    with pytest.raises(PDL1Error, match="spacing"):
        io.check_same_grid(a, b, patient="P1")
    # same frame hash and overlapping: fine; different frame hash: error even though boxes overlap
    x, y = _grid(), _grid(origin=(5.0, 5.0, 0.0))
    x.SetMetaData("pdl1_dls|frame", "aaaa"); y.SetMetaData("pdl1_dls|frame", "aaaa")
    assert io.check_same_frame(x, y) > 0.5
    y.SetMetaData("pdl1_dls|frame", "bbbb")
    with pytest.raises(PDL1Error, match="frames of reference"):
        io.check_same_frame(x, y, what="T1 and T2", patient="P1")
    # no metadata: decided by physical overlap; a far-away sequence fails
    z = _grid(origin=(0.0, 0.0, 200.0))
    with pytest.raises(PDL1Error, match="do not overlap"):
        io.check_same_frame(_grid(), z)
    # rotated slices: caught only when an angle limit is given
    r = _grid(); r.SetDirection((1, 0, 0, 0, 0, -1, 0, 1, 0))
    r.SetOrigin((0.0, 0.0, 0.0))
    io.check_same_frame(_grid(), r, min_fraction=0.0)
    with pytest.raises(PDL1Error, match="degrees"):
        io.check_same_frame(_grid(), r, min_fraction=0.0, max_angle=10)


def test_series_frame_hash_is_not_the_uid(tmp_path):
    _, files = write_pet_series(tmp_path / "pet")
    uid = pydicom.dcmread(str(files[0])).FrameOfReferenceUID
    img = io.read_image(tmp_path / "pet")
    h = img.GetMetaData("pdl1_dls|frame")
    assert h and uid not in h


def test_dice():
    a = np.zeros((4, 4, 4), bool); a[:2] = True
    b = np.zeros((4, 4, 4), bool); b[1:3] = True
    assert io.dice(a, b) == pytest.approx(0.5)
    assert io.dice(a, a) == 1.0
    with pytest.raises(ValueError):
        io.dice(np.zeros(3), np.zeros(3))


def test_physical_bounds_include_voxel_extent():
    im = _grid((10, 10, 10), (2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    lo, hi = io.physical_bounds(im)
    assert np.allclose(lo, -1.0) and np.allclose(hi, 19.0)


# ---------------------------------------------------------------- RTSTRUCT

def _square(cx, cy, half, z):
    return [v for x, y in [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)] for v in (x, y, z)]


def write_rtstruct(path, rois):
    return _write_rtstruct(path, rois, first_number=3)  # ROI numbers need not start at 1


def test_rtstruct_holes_islands_and_names(tmp_path):
    ref = _grid((40, 40, 5), (1.0, 1.0, 2.0), origin=(-20.0, -20.0, 0.0), pix=sitk.sitkInt16)
    write_rtstruct(tmp_path / "rs.dcm", {
        "GTV": [_square(0, 0, 10, 2.0), _square(0, 0, 4, 2.0), _square(0, 0, 2, 2.0),  # ring with an island in the hole
                _square(-5, -5, 3, 6.0)],
        "Edema": [_square(0, 0, 12, 4.0)],
    })
    assert io.list_rtstruct_rois(tmp_path / "rs.dcm") == ["GTV", "Edema"]
    m = io.read_rtstruct(tmp_path / "rs.dcm", ref, "GTV")
    a = sitk.GetArrayFromImage(m)
    assert m.GetPixelID() == sitk.sitkUInt8 and io.same_grid(m, ref)
    assert a[1].sum() == 20 * 20 - 8 * 8 + 4 * 4  # the half-open rule fills integer-corner squares exactly
    assert a[1, 20, 20] == 1 and a[1, 20 + 3, 20] == 0  # island filled, hole empty
    assert a[3].sum() == 6 * 6 and a[0].sum() == a[2].sum() == a[4].sum() == 0
    # physical location: the x-range of the island on slice 3 is -8..-2 mm -> indices 12..17
    assert np.array_equal(np.nonzero(a[3].any(0))[0], np.arange(12, 18))
    first = io.read_rtstruct(tmp_path / "rs.dcm", ref)  # default: the first ROI
    assert np.array_equal(sitk.GetArrayFromImage(first), a)
    assert sitk.GetArrayFromImage(io.read_rtstruct(tmp_path / "rs.dcm", ref, "edema")).sum() == 24 * 24
    with pytest.raises(PDL1Error, match="available: GTV, Edema") as ei:
        io.read_rtstruct(tmp_path / "rs.dcm", ref, "PTV", patient="P10")
    _one_line_naming(ei.value, "P10", tmp_path / "rs.dcm")
    _no_identifying_metadata(m)


def test_rtstruct_matches_polygon_area_on_a_circle(tmp_path):
    ref = _grid((64, 64, 3), (0.5, 0.5, 1.0), origin=(-16.0, -16.0, 0.0), pix=sitk.sitkInt16)
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    r = 10.3
    circle = [v for x, y in zip(r * np.cos(t) + 0.1, r * np.sin(t) - 0.2) for v in (x, y, 1.0)]
    write_rtstruct(tmp_path / "c.dcm", {"c": [circle]})
    n = sitk.GetArrayFromImage(io.read_rtstruct(tmp_path / "c.dcm", ref)).sum()
    area_vox = np.pi * r ** 2 / 0.25
    assert abs(n - area_vox) / area_vox < 0.01


def test_rtstruct_contour_between_slices_and_outside(tmp_path):
    ref = _grid((40, 40, 5), (1.0, 1.0, 2.0), origin=(-20.0, -20.0, 0.0), pix=sitk.sitkInt16)
    write_rtstruct(tmp_path / "rs.dcm", {"off": [_square(0, 0, 5, 3.0)], "far": [_square(0, 0, 5, 100.0)]})
    with pytest.raises(PDL1Error, match="between reference slices"):
        io.read_rtstruct(tmp_path / "rs.dcm", ref, "off", patient="P11")
    with pytest.warns(UserWarning, match="outside"), pytest.raises(PDL1Error, match="empty"):
        io.read_rtstruct(tmp_path / "rs.dcm", ref, "far", patient="P11")


def test_not_an_rtstruct(tmp_path):
    _, files = write_pet_series(tmp_path / "pet", n=2)
    with pytest.raises(PDL1Error, match="not an RTSTRUCT") as ei:
        io.list_rtstruct_rois(files[0], patient="P12")
    _one_line_naming(ei.value, "P12", files[0])
