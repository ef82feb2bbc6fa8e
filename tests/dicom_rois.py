"Writers of small synthetic RTSTRUCT and DICOM SEG files (pydicom), for the ROI tests."
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"


def _base(sop, modality):
    meta = FileMetaDataset(); meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid(); meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset(); ds.file_meta = meta; ds.Modality = modality
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"; ds.PatientID = "SECRET123"; ds.PatientBirthDate = "19700101"
    return ds


def write_seg(path, reference: sitk.Image, masks: dict, fractional: bool = False):
    "A DICOM SEG of `masks` ({label: bool array (z, y, x) on `reference`}), one frame per non-empty slice."
    ds = _base(SEG_SOP, "SEG")
    ds.SegmentationType = "FRACTIONAL" if fractional else "BINARY"
    ds.Rows, ds.Columns = reference.GetSize()[1], reference.GetSize()[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated = ds.BitsStored = 8 if fractional else 1; ds.HighBit = ds.BitsStored - 1
    if fractional: ds.MaximumFractionalValue = 255; ds.SegmentationFractionalType = "PROBABILITY"
    D = np.array(reference.GetDirection()).reshape(3, 3)
    sh = Dataset()
    po = Dataset(); po.ImageOrientationPatient = [f"{v:.8f}" for v in (*D[:, 0], *D[:, 1])]
    pm = Dataset(); pm.PixelSpacing = [reference.GetSpacing()[1], reference.GetSpacing()[0]]
    pm.SliceThickness = reference.GetSpacing()[2]
    sh.PlaneOrientationSequence = Sequence([po]); sh.PixelMeasuresSequence = Sequence([pm])
    ds.SharedFunctionalGroupsSequence = Sequence([sh])
    ds.SegmentSequence = Sequence(); frames, per = [], Sequence()
    for n, (label, m) in enumerate(masks.items(), start=1):
        s = Dataset(); s.SegmentNumber = n; s.SegmentLabel = label; s.SegmentAlgorithmType = "MANUAL"
        ds.SegmentSequence.append(s)
        for k in np.flatnonzero(m.any((1, 2))):
            fr = Dataset()
            si = Dataset(); si.ReferencedSegmentNumber = n; fr.SegmentIdentificationSequence = Sequence([si])
            pp = Dataset(); pp.ImagePositionPatient = [f"{v:.6f}" for v in reference.TransformIndexToPhysicalPoint((0, 0, int(k)))]
            fr.PlanePositionSequence = Sequence([pp]); per.append(fr)
            frames.append(m[k].astype(np.uint8) * (200 if fractional else 1))
    ds.PerFrameFunctionalGroupsSequence = per; ds.NumberOfFrames = len(frames)
    arr = np.stack(frames)
    ds.PixelData = arr.tobytes() if fractional else pack_bits(arr)
    ds.save_as(str(path), enforce_file_format=True)


def write_rtstruct(path, rois, first_number: int = 1):
    "An RTSTRUCT of closed planar contours ({name: [flat x,y,z list per contour]}), ROIs numbered from `first_number`."
    ds = _base(RTSTRUCT_SOP, "RTSTRUCT")
    ds.StructureSetROISequence = Sequence(); ds.ROIContourSequence = Sequence()
    for n, (name, cs) in enumerate(rois.items(), start=first_number):
        r = Dataset(); r.ROINumber = n; r.ROIName = name; ds.StructureSetROISequence.append(r)
        rc = Dataset(); rc.ReferencedROINumber = n; rc.ContourSequence = Sequence()
        for pts in cs:
            c = Dataset(); c.ContourGeometricType = "CLOSED_PLANAR"; c.NumberOfContourPoints = len(pts) // 3
            c.ContourData = [f"{v:g}" for v in pts]; rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(str(path), enforce_file_format=True)


def box_contours(image: sitk.Image, mask: np.ndarray):
    "Contours (one rectangle per slice, through voxel edges) of the bounding box of `mask` on each of its slices."
    out = []
    for k in np.flatnonzero(mask.any((1, 2))):
        ys, xs = np.nonzero(mask[k])
        corners = [(xs.min() - 0.5, ys.min() - 0.5), (xs.max() + 0.5, ys.min() - 0.5), (xs.max() + 0.5, ys.max() + 0.5), (xs.min() - 0.5, ys.max() + 0.5)]
        out.append([v for c in corners for v in image.TransformContinuousIndexToPhysicalPoint((float(c[0]), float(c[1]), float(k)))])
    return out


def mask_contours(image: sitk.Image, mask: np.ndarray):
    """Contours of `mask` ((z, y, x) bool on `image`) through voxel edges: per slice, the boundary between mask and
    background chained into closed loops (outer outlines and holes alike). Filled even-odd (as RTSTRUCT readers do,
    XOR of the loops of a slice) they give back exactly the voxels of `mask`; collinear points are dropped."""
    out = []
    for k in np.flatnonzero(mask.any((1, 2))):
        m = np.pad(mask[k], 1)
        nxt = {}   # directed edges between pixel corners (X, Y) = (col, row) of the padded slice, foreground on one side
        for (dr, dc), (a, b) in {(-1, 0): ((0, 0), (1, 0)), (0, 1): ((1, 0), (1, 1)),
                                 (1, 0): ((1, 1), (0, 1)), (0, -1): ((0, 1), (0, 0))}.items():
            rs, cs = np.nonzero(m & ~np.roll(m, (-dr, -dc), (0, 1)))
            for r, c in zip(rs.tolist(), cs.tolist()):
                nxt.setdefault((c + a[0], r + a[1]), []).append((c + b[0], r + b[1]))
        while nxt:
            start = next(iter(nxt)); loop, p = [start], start
            while True:
                q = nxt[p].pop()
                if not nxt[p]: del nxt[p]
                if q == start: break
                loop.append(q); p = q
            keep = [v for i, v in enumerate(loop)          # corners only: drop points between two collinear edges
                    if (np.subtract(v, loop[i - 1]) != np.subtract(loop[(i + 1) % len(loop)], v)).any()]
            # padded corner (X, Y) is the continuous index (X - 1.5, Y - 1.5) of the slice
            out.append([v for X, Y in keep
                        for v in image.TransformContinuousIndexToPhysicalPoint((X - 1.5, Y - 1.5, float(k)))])
    return out


def centre_contours(image: sitk.Image, mask: np.ndarray):
    """Contours of `mask` through the centres of its boundary voxels, as rt-utils writes them (OpenCV's findContours,
    tree of outlines and holes). Such a polygon encloses less than the voxels' area: rasterised with the area-exact
    half-open rule of `pdl1_dls.io.read_rtstruct`, one row and one column of boundary voxels fall outside. (Checked once
    against rt-utils 1.2.7, not a dependency: its RTSTRUCT of the STS_008 CT mask reads back as 8290 of 8862 voxels,
    none added; this one as 8297.)"""
    import cv2
    out = []
    for k in np.flatnonzero(mask.any((1, 2))):
        cs, _ = cv2.findContours(mask[k].astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        out += [[v for x, y in c[:, 0, :].tolist() for v in image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k)))]
                for c in cs]
    return out
