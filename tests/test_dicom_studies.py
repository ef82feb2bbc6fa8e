"""DICOM studies built from the real IBSI NIfTI (PET, CT, T1 MR of three sarcoma patients) and the raw STS_001 PET:
manifests naming DICOM series folders and RTSTRUCT/SEG files with `roi_name:` validate, and demo-trained PET/CT and MRI
bundles score them with the DLS of the NIfTI originals.

The DICOM copies are written here: every image by `pdl1_dls.io.write_dicom_series` (int16 with a rescale slope; one
PET as raw Bq/ml with the dose, weight and time tags, the others as SUV, Units GML), each mask as an RTSTRUCT (contours
through voxel edges, `dicom_rois.mask_contours`) or a DICOM SEG (`dicom_rois.write_seg`, pydicom: highdicom and rt-utils
are not dependencies of the project), each beside a decoy structure so that `roi_name` must choose. The data has only a
T1 MR: the MRI study gives the one T1 series as t1, t2 and ce_t1."""
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from scipy import ndimage

from pdl1_dls import io
from pdl1_dls.io import write_dicom_series
from pdl1_dls.manifest import load_study, read_study
from dicom_rois import centre_contours, mask_contours, write_rtstruct, write_seg

PATIENTS = ["STS_002", "STS_003", "STS_008"]       # three of the 16 IBSI patients with PET, CT and T1 MR
ROI = "GTV_Mass"
SECRET = "SECRET-4711"                               # PatientID written into every DICOM file: must reach no output
BQML = "STS_003"                                     # its PET is written as raw Bq/ml (converted back to SUV on reading)
# BQML tags: 70 kg, 370 MBq at 10:00:00, series at 11:00:00, F-18 half-life
BQML_TAGS = dict(weight=70.0, dose=3.7e8, half=6586.2, injection="100000", series="110000")


def cli(capsys, *args) -> tuple[int, str, str]:
    "`pdl1-dls ARGS` in this process (the console script's `main`; no second torch import): exit code, stdout, stderr."
    from pdl1_dls.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def _bqml_tags():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    t = BQML_TAGS
    rp = Dataset(); rp.RadionuclideTotalDose = f"{t['dose']:g}"; rp.RadionuclideHalfLife = f"{t['half']:g}"
    rp.RadiopharmaceuticalStartTime = t["injection"]
    return dict(Units="BQML", DecayCorrection="START", PatientWeight=f"{t['weight']:g}", SeriesDate="20200101", SeriesTime=t["series"],
                RadiopharmaceuticalInformationSequence=Sequence([rp]))


def _suv_to_bqml(pet: sitk.Image) -> sitk.Image:
    "SUVbw -> Bq/ml for the BQML tags above (the inverse of the reader's decay-corrected conversion)."
    t = BQML_TAGS
    factor = t["weight"] * 1000.0 / (t["dose"] * 2.0 ** (-3600.0 / t["half"]))      # SUV = Bq/ml * factor
    return sitk.Cast(pet, sitk.sitkFloat64) / factor


def _decoy(mask: np.ndarray) -> np.ndarray:
    "A second structure (the tumour grown by 3 voxels in-plane, like GTV_Edema) that roi_name must not pick."
    return ndimage.binary_dilation(mask, np.ones((1, 7, 7), bool))


def _write_roi(path, image: sitk.Image, mask: np.ndarray, kind: str):
    rois = {"GTV_Edema": _decoy(mask), ROI: mask}                  # the tumour second: taking the first would be wrong
    if kind == "rtstruct": write_rtstruct(path, {k: mask_contours(image, m) for k, m in rois.items()})
    else: write_seg(path, image, rois)


def _manifest(path, modality, root, images, patients=PATIENTS):
    spec = dict(name=path.stem, modality=modality, paper="none", root=str(root), label=None, roi_name=ROI, images=images,
                cohorts=[dict(name="sts", role="external", patients=list(patients))])
    if images["roi"].endswith("_mask.nii.gz"): spec.pop("roi_name")               # the NIfTI masks hold one label
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ibsi(shared_data):
    root = shared_data / "ibsi_sts_petct_mr" / "nifti"
    need = [root / p / f"{k}_{w}.nii.gz" for p in PATIENTS for k in ("PET", "CT", "MR_T1") for w in ("image", "mask")]
    gone = [str(f) for f in need if not f.is_file()]
    if gone: pytest.skip(f"IBSI NIfTI files absent: {gone[0]} (+{len(gone) - 1})")
    return root


@pytest.fixture(scope="module")
def studies(ibsi, tmp_path_factory):
    "The three patients as NIfTI originals (the shared files) and as DICOM (written here); four manifests."
    d = tmp_path_factory.mktemp("dicom_studies")
    dcm = d / "dicom"
    kinds = {}
    for n, pid in enumerate(PATIENTS):
        src, out = ibsi / pid, dcm / pid
        frame = f"1.2.826.0.1.3680043.8.498.{4711 + n}"          # one frame of reference per patient, shared by its series
        tags = dict(PatientName="Doe^Jane", PatientID=SECRET, PatientBirthDate="19700101")
        pet = sitk.ReadImage(str(src / "PET_image.nii.gz"))
        if pid == BQML: write_dicom_series(_suv_to_bqml(pet), out / "pet", "PT", tags={**tags, **_bqml_tags()}, frame_uid=frame)
        else: write_dicom_series(pet, out / "pet", "PT", tags={**tags, "Units": "GML"}, frame_uid=frame)
        for key, mod, name in (("ct", "CT", "CT"), ("mr", "MR", "MR_T1")):
            img = sitk.ReadImage(str(src / f"{name}_image.nii.gz"))
            write_dicom_series(img, out / key, mod, tags=tags, frame_uid=frame)
            ref = io.read_image(out / key)                       # the grid the ROI is drawn on: the DICOM series as read back
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(src / f"{name}_mask.nii.gz"))) > 0
            kind = ("rtstruct", "seg")[(n + (key == "mr")) % 2]  # PET/CT: RTSTRUCT, SEG, RTSTRUCT; MRI: SEG, RTSTRUCT, SEG
            _write_roi(out / f"{key}_roi.dcm", ref, mask, kind)
            kinds[(pid, key)] = kind
    m = dict(
        petct_nifti=_manifest(d / "petct_nifti.yaml", "petct", ibsi,
                              dict(pet="{patient_id}/PET_image.nii.gz", ct="{patient_id}/CT_image.nii.gz", roi="{patient_id}/CT_mask.nii.gz")),
        petct_dicom=_manifest(d / "petct_dicom.yaml", "petct", dcm,
                              dict(pet="{patient_id}/pet", ct="{patient_id}/ct", roi="{patient_id}/ct_roi.dcm")),
        mri_nifti=_manifest(d / "mri_nifti.yaml", "mri", ibsi,
                            {**{k: "{patient_id}/MR_T1_image.nii.gz" for k in ("t1", "t2", "ce_t1")}, "roi": "{patient_id}/MR_T1_mask.nii.gz"}),
        mri_dicom=_manifest(d / "mri_dicom.yaml", "mri", dcm,
                            {**{k: "{patient_id}/mr" for k in ("t1", "t2", "ce_t1")}, "roi": "{patient_id}/mr_roi.dcm"}))
    settings = d / "settings.ini"                                # the CLI's caches and runs stay in the temporary folder
    settings.write_text(f"[pdl1_dls]\ncache_dir = {d / 'cache'}\nout_dir = {d / 'runs'}\n")
    return dict(dir=d, dicom=dcm, manifests=m, kinds=kinds, settings=settings)


@pytest.fixture
def here(studies, monkeypatch):
    "The study, with this test's settings pointing caches and runs into its temporary folder."
    monkeypatch.setenv("PDL1_DLS_SETTINGS", str(studies["settings"]))
    return studies


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    "ONE tiny PET/CT bundle (tiny synthetic study, quick, 1 epoch) and ONE tiny MRI bundle (toy study, quick profile)."
    import torch
    from pdl1_dls.mri.pipeline import toy_mri_table, train_mri_study
    from pdl1_dls.petct.pipeline import train_study
    from pdl1_dls.synth import make_petct_study
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("bundles")
    study = make_petct_study(d / "petct_study", scale="tiny", seed=0)
    train_study(study, d / "petct", seed=0, epochs=1, quick=True, cache_dir=d / "cache", device="cpu")
    tab = toy_mri_table(d / "toy", {"train": 16, "validation": 8}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                          # random-init backbone: warned, expected here
        train_mri_study(tab, d / "mri", cache_dir=d / "cache", quick=True, device="cpu", size=32, input_size=32, epochs=1,
                        fusion_epochs=10, backbone="resnet18")
    return dict(petct=d / "petct", mri=d / "mri")


# ---- the pieces -------------------------------------------------------------------------------------------------

def test_voxel_edge_contours_give_the_mask_back(tmp_path):
    "mask_contours + io.read_rtstruct round-trip exactly, holes and diagonal-only neighbours included."
    ref = sitk.Image(20, 18, 3, sitk.sitkInt16); ref.SetSpacing((0.8, 1.2, 3.0)); ref.SetOrigin((-5.0, 7.0, 2.0))
    ref.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    m = np.zeros((3, 18, 20), bool)
    m[0, 2:12, 3:15] = True; m[0, 5:8, 6:10] = False; m[0, 6, 7] = True        # a ring with an island in its hole
    m[1, 4, 4] = m[1, 5, 5] = m[1, 6, 4] = True                                 # voxels touching only at corners
    m[2, 10:16, 2:19] = True; m[2, 12, ::2] = False                             # a comb of notches along one row
    write_rtstruct(tmp_path / "rs.dcm", {"x": mask_contours(ref, m)})
    assert np.array_equal(sitk.GetArrayFromImage(io.read_rtstruct(tmp_path / "rs.dcm", ref)) == 1, m)


def test_dicom_copies_read_back_as_the_originals(studies, ibsi):
    "Series geometry equals the NIfTI's; values within the int16 step; the PET in SUV (BQML converted); ROIs exact."
    for pid in PATIENTS:
        out, src = studies["dicom"] / pid, ibsi / pid
        pet = io.read_pet_suv(out / "pet", patient=pid)
        for key, name, img in (("pet", "PET", pet), ("ct", "CT", io.read_image(out / "ct")), ("mr", "MR_T1", io.read_image(out / "mr"))):
            orig = sitk.ReadImage(str(src / f"{name}_image.nii.gz"))
            assert io.same_grid(img, orig), (pid, key)
            a, b = sitk.GetArrayFromImage(img).astype(np.float64), sitk.GetArrayFromImage(orig).astype(np.float64)
            step = (b.max() - b.min()) / 65000                   # write_dicom_series' rescale slope
            assert np.abs(a - b).max() <= 0.5 * step * (1 + 1e-3) + 1e-6 * np.abs(b).max(), (pid, key)
            if key != "pet":
                m0 = sitk.GetArrayFromImage(sitk.ReadImage(str(src / f"{name}_mask.nii.gz"))) > 0
                roi = io.read_roi(out / f"{key}_roi.dcm", img, ROI, patient=pid)
                assert np.array_equal(sitk.GetArrayFromImage(roi) == 1, m0), (pid, key, studies["kinds"][(pid, key)])
                with pytest.raises(io.PDL1Error, match=r"holds 2 structures \(GTV_Edema, GTV_Mass\); set roi_name"):
                    io.read_roi(out / f"{key}_roi.dcm", img, patient=pid)
        assert pet.GetMetaData("pdl1_dls|units") == "SUVbw"
        assert ("decay-corrected" in pet.GetMetaData("pdl1_dls|suv")) == (pid == BQML)


def test_manifests_validate(here, capsys):
    "`pdl1-dls validate` exits 0 on all four manifests; the DICOM tables carry the series folders and roi_name."
    studies = here
    for name, m in studies["manifests"].items():
        rc, _, err = cli(capsys, "validate", m)
        assert rc == 0, (name, err[-2000:])
    t = load_study(studies["manifests"]["petct_dicom"]).table()
    assert t.patient_id.tolist() == PATIENTS and (t.roi_name == ROI).all()
    assert all(os.path.isdir(p) for p in t.pet) and all(io.dicom_modality(p) in ("RTSTRUCT", "SEG") for p in t.roi)
    assert {studies["kinds"][(p, k)] for p in PATIENTS for k in ("ct", "mr")} == {"rtstruct", "seg"}
    # a wrong structure name is a validation problem naming the patient and the file
    bad = studies["dir"] / "petct_dicom_bad.yaml"
    bad.write_text(studies["manifests"]["petct_dicom"].read_text().replace(f"roi_name: {ROI}", "roi_name: GTV_Lung"))
    rc, _, err = cli(capsys, "validate", bad)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 problem(s)")
    for pid, line in zip(PATIENTS, lines):
        assert f"patient={pid} " in line and "ct_roi.dcm" in line and "ROI 'GTV_Lung' not found; available: GTV_Edema, GTV_Mass" in line


# ---- scoring: DICOM against NIfTI -----------------------------------------------------------------------------

def _score(studies, capsys, bundle, manifest_key):
    out = studies["dir"] / f"scores_{manifest_key}"
    rc, stdout, err = cli(capsys, "score", "--model", bundle, "--manifest", studies["manifests"][manifest_key], "--out", out, "--device", "cpu")
    assert rc == 0 and stdout.startswith(f"{len(PATIENTS)} patients scored"), (manifest_key, err[-3000:])
    dls = pd.read_csv(out / "dls.csv", dtype={"patient_id": str})
    with np.load(out / "features.npz") as z: feats = {k: z[k] for k in z.files}
    return dls, feats, out


def _compare(studies, capsys, bundles, modality):
    a, fa, _ = _score(studies, capsys, bundles[modality], f"{modality}_nifti")
    b, fb, out = _score(studies, capsys, bundles[modality], f"{modality}_dicom")
    assert a.patient_id.tolist() == b.patient_id.tolist() == PATIENTS                     # every patient scored
    assert a.dls.notna().all() and b.dls.notna().all() and pd.read_csv(out / "skipped.csv").empty
    assert (a.n_slices == b.n_slices).all()                                                # the same ROI slices
    for f in out.iterdir():                                                                # no identifying tag in any output
        if f.suffix in (".csv", ".json"): assert SECRET not in f.read_text() and "Doe" not in f.read_text(), f
    diff = np.abs(a.dls.to_numpy() - b.dls.to_numpy())
    fkeys = sorted(k for k in fa if k != "patient_id")
    fdiff = {k: float(np.abs(fa[k] - fb[k]).max() / max(np.abs(fa[k]).max(), 1e-12)) for k in fkeys}
    spread = float(a.dls.max() - a.dls.min())
    print(f"{modality}: DLS NIfTI {np.round(a.dls.to_numpy(), 6).tolist()} DICOM {np.round(b.dls.to_numpy(), 6).tolist()}; "
          f"max |DLS diff| {diff.max():.2e}; max |feature diff| / max |feature|: {', '.join(f'{k} {v:.1e}' for k, v in fdiff.items())}; DLS spread between patients {spread:.2e}")
    return a, b, diff, spread


def test_petct_dicom_scores_as_nifti(here, capsys, bundles):
    """The PET/CT bundle gives the DICOM study the DLS of the NIfTI originals.

    Only quantisation separates them: the ROIs are exact (contours through voxel edges; SEG voxels), and int16 with a
    rescale slope stores SUV to within 1.7e-4 (STS_002, max 21.7 SUV) and HU to within 0.017 HU; the BQML PET adds the
    float rounding of the SUV factor. Measured (tiny 1-epoch bundle): max |DLS diff| 7.0e-8 (deep features within
    1.1e-6 of their largest value), against a spread of 1.5e-2
    between the three patients. Tolerance 1e-4: over a thousand times the measured difference, a hundredth of the spread."""
    a, b, diff, spread = _compare(here, capsys, bundles, "petct")
    assert diff.max() < 1e-4 and spread > 100 * diff.max()


def test_mri_dicom_scores_as_nifti(here, capsys, bundles):
    """The MRI bundle gives the DICOM study (T1 as all three sequences) the DLS and per-sequence scores of the NIfTI.

    int16 stores the T1 (0..~1200) to within 0.009; the ROIs are exact. Measured: max |DLS diff| 7.8e-7 (per-sequence
    scores within 2.4e-6 of their largest value, fusion tokens 4.6e-5), against a spread of 2.4e-2 between the patients.
    Tolerance 1e-4 (see the PET/CT test)."""
    a, b, diff, spread = _compare(here, capsys, bundles, "mri")
    for k in ("dls_t1", "dls_t2", "dls_ce_t1"):
        assert np.abs(a[k] - b[k]).max() < 1e-4, k
    assert diff.max() < 1e-4 and spread > 100 * diff.max()


# ---- the real raw STS_001 PET with its RTSTRUCT -----------------------------------------------------------------

def test_real_sts001_raw_pet_and_rtstruct_in_a_manifest(shared_data, tmp_path, capsys):
    """The raw STS_001 PET series (Bq/ml) with its RTSTRUCT, named in a PET/CT manifest with `roi_name: GTV_Mass`.

    STS_001 has no CT in the shared data, and a PET/CT model needs one: `validate` refuses the manifest with one
    problem, the missing CT image, and nothing else (the PET series opens and converts to SUV). The manifest's roi and
    roi_name, read by the pipelines' reader on the PET grid the contours were drawn on, rasterise to 5095 voxels."""
    raw = shared_data / "mirp_sts001_raw_pet" / "FDG_PET"
    if not (raw / "mask" / "1-1.dcm").is_file(): pytest.skip(f"{raw / 'mask' / '1-1.dcm'} absent")
    if (shared_data / "ibsi_sts_petct_mr" / "nifti" / "STS_001" / "CT_image.nii.gz").exists():
        pytest.fail("the shared data now has a CT of STS_001: score it with the PET/CT bundle instead")
    m = tmp_path / "sts001.yaml"
    m.write_text(yaml.safe_dump(dict(name="sts001", modality="petct", paper="none", root=str(raw), label=None, roi_name=ROI,
                                     images=dict(pet="image", roi="mask/1-1.dcm"),
                                     cohorts=[dict(name="raw", role="external", patients=["STS_001"])])))
    rc, _, err = cli(capsys, "validate", m)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2 and "no image path for 'ct'" in lines[0] and lines[1].startswith("1 problem(s)"), err
    study, _ = read_study(m)
    row = study.table().iloc[0]
    assert row.roi_name == ROI and row.pet == str(raw / "image")
    pet = io.read_pet_suv(row.pet, patient=row.patient_id)
    assert pet.GetMetaData("pdl1_dls|units") == "SUVbw" and pet.GetSize() == (128, 128, 267)
    roi = io.read_roi(row.roi, pet, row.roi_name, patient=row.patient_id)
    assert io.same_grid(roi, pet) and int(sitk.GetArrayFromImage(roi).sum()) == 5095


# ---- RTSTRUCTs through voxel centres (rt-utils' convention): the boundary error ---------------------------------

def test_voxel_centre_contours_lose_boundary_voxels_only(studies, bundles, ibsi, tmp_path):
    """RTSTRUCTs written the rt-utils way (contours through boundary voxel centres) read back smaller: the polygon
    encloses (w-1)(h-1) of a w x h block, and `io.read_rtstruct` fills polygons area-exactly (half-open rule), so one
    row and one column of boundary voxels per outline fall outside. Measured on STS_002/003/008: 4.4-6.6 % of the
    voxels lost (Dice 0.966-0.978), none added, every lost voxel on the mask's in-plane boundary.

    `Model.predict` on the DICOM series with such an RTSTRUCT, against `score` of the NIfTI originals, measures the
    ROI's resampling error alone (quantisation adds < 1e-6, see above). Measured with the tiny bundles: max |DLS diff|
    9.7e-4 (PET/CT; spread between the patients 1.5e-2) and 4.3e-3 (MRI; spread 2.4e-2). Tolerance 0.01 on the 0-1
    DLS scale, and below half the spread: a one-voxel rim must not reorder patients that far apart."""
    from pdl1_dls.training import load_model
    res = {}
    for modality, key, name in (("petct", "ct", "CT"), ("mri", "mr", "MR_T1")):
        ref_scores = load_model(bundles[modality]).score(load_study(studies["manifests"][f"{modality}_nifti"]), cache_dir=tmp_path / "c")
        ref_scores = ref_scores.set_index("patient_id").dls
        for pid in PATIENTS:
            out = studies["dicom"] / pid
            img = io.read_image(out / key)
            m0 = sitk.GetArrayFromImage(sitk.ReadImage(str(ibsi / pid / f"{name}_mask.nii.gz"))) > 0
            write_rtstruct(tmp_path / f"{pid}_{key}.dcm", {ROI: centre_contours(img, m0)})
            m1 = sitk.GetArrayFromImage(io.read_roi(tmp_path / f"{pid}_{key}.dcm", img)) == 1
            boundary = m0 & ~ndimage.binary_erosion(m0, np.ones((1, 3, 3), bool))
            assert not (m1 & ~m0).any() and not (m0 & ~m1 & ~boundary).any(), (pid, key)
            lost = float((m0 & ~m1).sum() / m0.sum())
            assert 0 < lost < 0.1 and io.dice(m1, m0) > 0.95, (pid, key, lost)
            files = (dict(pet=out / "pet", ct=out / "ct") if modality == "petct" else {k: out / "mr" for k in ("t1", "t2", "ce_t1")})
            p = load_model(bundles[modality]).predict(gradcam=False, roi=tmp_path / f"{pid}_{key}.dcm", **files)
            res[(modality, pid)] = (lost, io.dice(m1, m0), p["dls"], float(ref_scores[pid]))
        d = np.array([abs(v[2] - v[3]) for k, v in res.items() if k[0] == modality])
        spread = float(ref_scores.max() - ref_scores.min())
        print(f"{modality} voxel-centre RTSTRUCT: " + "; ".join(f"{k[1]} lost {v[0]:.1%} Dice {v[1]:.3f} DLS {v[2]:.5f} vs {v[3]:.5f}"
                                                             for k, v in res.items() if k[0] == modality)
              + f"; max |DLS diff| {d.max():.2e}, spread {spread:.2e}")
        assert d.max() < 0.01 and d.max() < 0.5 * spread, modality


def test_predict_picks_the_named_structure(studies, bundles, tmp_path):
    "`predict(roi_name=...)` (CLI `--roi-name`) picks one structure of a two-structure RTSTRUCT/SEG: the DLS equals `score`'s; without it, a one-line error naming both."
    from pdl1_dls.core import PDL1Error
    from pdl1_dls.training import load_model
    pid, model = PATIENTS[0], load_model(bundles["petct"])
    study = load_study(studies["manifests"]["petct_dicom"])
    ref = model.score(study, cache_dir=tmp_path / "c").set_index("patient_id").dls[pid]
    row = study.table().set_index("patient_id").loc[pid]
    files = dict(pet=row["pet"], ct=row["ct"], roi=row["roi"])
    assert abs(model.predict(gradcam=False, roi_name=ROI, **files)["dls"] - ref) < 1e-6
    with pytest.raises(PDL1Error, match=r"holds 2 structures \(GTV_Edema, GTV_Mass\); set roi_name"):
        model.predict(gradcam=False, **files)
