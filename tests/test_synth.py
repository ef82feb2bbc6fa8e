"Synthetic studies: determinism, geometry, cohorts, prevalence, calibration, survival, atomicity."
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from sklearn.metrics import roc_auc_score

from pdl1_dls import synth
from pdl1_dls.core import PDL1Error


@pytest.fixture(scope="module")
def petct(tmp_path_factory):
    "A tiny PET/CT study (seed 0, two worker processes)."
    return synth.make_petct_study(tmp_path_factory.mktemp("s") / "petct", scale="tiny", seed=0, workers=2).parent


@pytest.fixture(scope="module")
def mri(tmp_path_factory):
    return synth.make_mri_study(tmp_path_factory.mktemp("s") / "mri", scale="tiny", seed=0, workers=2).parent


def _arr(p): return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))


def _box(img):
    "Physical bounding box (min, max corners) of an axis-aligned image."
    a = np.array(img.GetOrigin()); b = np.array(img.TransformIndexToPhysicalPoint([s - 1 for s in img.GetSize()]))
    return np.minimum(a, b), np.maximum(a, b)


def test_determinism_and_seed(petct, tmp_path):
    again = synth.make_petct_study(tmp_path / "again", scale="tiny", seed=0, workers=1).parent
    other = synth.make_petct_study(tmp_path / "other", scale="tiny", seed=1, workers=1).parent
    for f in ("clinical.csv", "truth.csv", "study.yaml"):
        assert (petct / f).read_bytes() == (again / f).read_bytes(), f
    for pid in ("sph_train_001", "va_008", "mcc_ici_pro_004"):
        for k in ("ct", "pet", "roi", "roi_reader2"):
            assert np.array_equal(_arr(petct / "images" / pid / f"{k}.nii.gz"), _arr(again / "images" / pid / f"{k}.nii.gz"))
    assert (petct / "clinical.csv").read_bytes() != (other / "clinical.csv").read_bytes()
    assert not np.array_equal(_arr(petct / "images/sph_train_001/ct.nii.gz"), _arr(other / "images/sph_train_001/ct.nii.gz"))


def test_mri_determinism(mri, tmp_path):
    again = synth.make_mri_study(tmp_path / "again", scale="tiny", seed=0, workers=1).parent
    assert (mri / "clinical.csv").read_bytes() == (again / "clinical.csv").read_bytes()
    for k in ("t1", "t2", "ce_t1", "roi"):
        assert np.array_equal(_arr(mri / f"images/external_003/{k}.nii.gz"), _arr(again / f"images/external_003/{k}.nii.gz"))


def test_petct_layout_and_geometry(petct):
    man = yaml.safe_load((petct / "study.yaml").read_text())
    assert man["root"] == "." and man["modality"] == "petct" and man["paper"] == "mu2021"
    assert man["label"] == {"source": "pdl1_tps", "rule": ">=1", "column": "pdl1"}
    assert man["synthetic"] == {"kind": "petct", "scale": "tiny", "seed": 0, "version": synth.GENERATOR_VERSIONS["petct"]}
    roles = {c["name"]: c["role"] for c in man["cohorts"]}
    assert roles == {"sph_train": "train", "sph_val": "validation", "mcc_pdl1": "test", "va": "external",
                     "mcc_ici_retro": "ici", "mcc_ici_pro": "ici"}
    outc = {c["name"]: c.get("outcomes", man["outcomes"]) for c in man["cohorts"]}
    assert outc["sph_train"] == {} and set(outc["mcc_ici_retro"]) == {"dcb", "pfs", "os"}
    clin = pd.read_csv(petct / "clinical.csv")
    assert list(clin.columns) == ["patient_id", "cohort", "age", "sex", "bmi", "stage", "smoking", "ecog", "histology",
                                  "egfr", "suvmax", "pdl1_tps", "dcb", "pfs_months", "pfs_event", "os_months", "os_event"]
    assert clin.groupby("cohort").size().to_dict() == {c: 8 for c in roles}
    assert set(clin["sex"]) <= {"male", "female"} and set(clin["histology"]) <= {"ADC", "SCC", "other"}
    assert set(clin["stage"]) <= {"I", "II", "III", "IV"} and clin["ecog"].between(0, 2).all()
    assert clin["pdl1_tps"].dropna().between(0, 100).all()
    assert clin.loc[clin.cohort.isin(["sph_train", "sph_val"]), "pfs_months"].isna().all()
    # checksums cover every image
    sums = (petct / "checksums.sha256").read_text().splitlines()
    assert len([s for s in sums if s.endswith(".nii.gz")]) == 4 * len(clin)
    for pid in clin["patient_id"].iloc[::7]:
        d = petct / "images" / pid
        ct, pet, roi, roi2 = (sitk.ReadImage(str(d / f"{k}.nii.gz")) for k in ("ct", "pet", "roi", "roi_reader2"))
        for m in (roi, roi2):
            assert m.GetSize() == ct.GetSize() and np.allclose(m.GetSpacing(), ct.GetSpacing())
            assert np.allclose(m.GetOrigin(), ct.GetOrigin())
        assert not np.allclose(pet.GetSpacing(), ct.GetSpacing()) and not np.allclose(pet.GetOrigin(), ct.GetOrigin())
        (c0, c1), (p0, p1) = _box(ct), _box(pet)
        assert (p0 <= c0).all() and (p1 >= c1).all()          # PET covers the CT field of view
        a_ct, a_pet, r, r2 = (sitk.GetArrayFromImage(x) for x in (ct, pet, roi, roi2))
        assert a_ct.dtype == np.int16 and a_pet.dtype == np.float32
        r, r2 = r > 0, r2 > 0
        dice = 2 * (r & r2).sum() / (r.sum() + r2.sum())
        assert 0.5 < dice < 1.0                                  # a second reader: close, not identical
        assert a_ct[r].mean() > -300 and np.median(a_ct[~r]) < -500   # soft-tissue tumour in lung
        # extent of the tumour: 15-60 mm diameter (equivalent sphere, a little tolerance for irregularity)
        dmm = (6 * r.sum() * np.prod(ct.GetSpacing()) / np.pi) ** (1 / 3)
        assert 8 < dmm < 70
        # SUV plausibility: lung background, tumour max
        assert 0.2 < np.median(a_pet) < 1.2 and 1.0 < a_pet.max() < 40


def test_mri_layout_and_geometry(mri):
    man = yaml.safe_load((mri / "study.yaml").read_text())
    assert man["label"] == {"source": "pdl1_cps", "rule": ">=20", "column": "pdl1"} and man["paper"] == "ding2025"
    assert [c["name"] for c in man["cohorts"]] == ["train", "internal", "external", "ici"]
    assert set(man["images"]) == {"t1", "t2", "ce_t1", "roi", "roi_reader2"}
    clin = pd.read_csv(mri / "clinical.csv")
    assert list(clin.columns) == ["patient_id", "cohort", "age", "sex", "differentiation", "t_stage", "n_stage",
                                  "smoking", "drink", "pdl1_cps", "pfs_months", "pfs_event", "dcb"]
    assert clin.loc[clin.cohort == "train", "pfs_months"].isna().all()
    assert clin.loc[clin.cohort != "ici", "dcb"].isna().all()
    d = mri / "images" / "train_001"
    t1, t2, ce, roi = (sitk.ReadImage(str(d / f"{k}.nii.gz")) for k in ("t1", "t2", "ce_t1", "roi"))
    assert roi.GetSize() == ce.GetSize() and np.allclose(roi.GetOrigin(), ce.GetOrigin())
    assert t2.GetSize() != ce.GetSize() and not np.allclose(t2.GetOrigin(), ce.GetOrigin())
    sp = np.array(ce.GetSpacing()); assert sp[2] / sp[0] > 4          # anisotropic
    (a0, a1), (b0, b1) = _box(ce), _box(t2)
    assert (np.minimum(a1, b1) - np.maximum(a0, b0) > 0.8 * (a1 - a0)).all()   # same physical frame


def test_paper_sizes_prevalence_and_covariates():
    clin, truth, _ = synth._study_tables("petct", "paper", 0)
    n = clin.groupby("cohort").size()
    assert n.to_dict() == {"sph_train": 284, "sph_val": 116, "mcc_pdl1": 85, "va": 35, "mcc_ici_retro": 128, "mcc_ici_pro": 49}
    pos = clin.assign(p=clin.pdl1_tps >= 1)[clin.pdl1_tps.notna()].groupby("cohort")["p"].mean()
    assert abs(pos["sph_train"] - 0.30) < 0.02 and abs(pos["sph_val"] - 0.30) < 0.02
    assert abs(pos["mcc_pdl1"] - 0.565) < 0.02 and abs(pos["va"] - 0.83) < 0.02
    assert clin.loc[clin.cohort == "va", "pdl1_tps"].notna().sum() == 29
    tps = clin["pdl1_tps"].dropna()
    assert (tps == 0).mean() > 0.2 and ((tps >= 1) & (tps < 50)).any() and (tps >= 50).any()
    # associations of the papers' tables (pooled over cohorts; strong enough to hold at this size)
    y = (clin.pdl1_tps >= 1)[clin.pdl1_tps.notna()]
    c = clin[clin.pdl1_tps.notna()]
    assert (c.histology == "SCC")[y].mean() > (c.histology == "SCC")[~y].mean()
    assert c.egfr[y].mean() < c.egfr[~y].mean()
    assert (c.sex == "male")[y].mean() > (c.sex == "male")[~y].mean()
    ici = clin[clin.cohort.str.startswith("mcc_ici")]
    assert ici.stage.isin(["III", "IV"]).all()
    m, _, _ = synth._study_tables("mri", "paper", 0)
    assert m.groupby("cohort").size().to_dict() == {"train": 267, "internal": 115, "external": 134, "ici": 94}
    mp = m.assign(p=m.pdl1_cps >= 20).groupby("cohort")["p"].mean()
    assert abs(mp["train"] - 0.32) < 0.02 and abs(mp["external"] - 0.485) < 0.02


def test_truth_calibration_population():
    "True phenotype parameters: SUV alone moderate, the oracle high but not perfect; MRI sequences moderate, fused high."
    rows = [synth._study_tables("petct", "paper", s)[1] for s in range(4)]
    t = pd.concat(rows); t = t[(t.has_ihc == 1) & t.cohort.isin(["sph_train", "sph_val"])]
    a_suv, a_or = roc_auc_score(t.pdl1_true, t.x_suv), roc_auc_score(t.pdl1_true, t.oracle_score)
    assert 0.62 < a_suv < 0.80 and 0.82 < a_or < 0.93, (a_suv, a_or)
    rows = [synth._study_tables("mri", "paper", s)[1] for s in range(4)]
    t = pd.concat(rows); t = t[t.has_ihc == 1]
    for k in ("x_t1", "x_t2", "x_ce"):
        assert 0.68 < roc_auc_score(t.pdl1_true, t[k]) < 0.83, k
    assert 0.83 < roc_auc_score(t.pdl1_true, t.oracle_score) < 0.94


def test_survival_medians_and_dcb():
    from lifelines import CoxPHFitter, KaplanMeierFitter
    clin = pd.concat([synth._study_tables("petct", "paper", s)[0] for s in range(8)])
    r = clin[clin.cohort == "mcc_ici_retro"]
    pfs = KaplanMeierFitter().fit(r.pfs_months, r.pfs_event.astype(int)).median_survival_time_
    os_ = KaplanMeierFitter().fit(r.os_months, r.os_event.astype(int)).median_survival_time_
    assert 5.5 < pfs < 9.5 and 16 < os_ < 28, (pfs, os_)
    assert (r.os_months >= r.pfs_months).all()
    # IHC-positive patients progress later (protective latent PD-L1)
    lab = r[r.pdl1_tps.notna()].assign(pos=lambda d: (d.pdl1_tps >= 1).astype(int))
    hr = CoxPHFitter().fit(lab[["pfs_months", "pfs_event", "pos"]].astype(float), "pfs_months", "pfs_event").hazard_ratios_["pos"]
    assert 0.2 < hr < 0.7, hr
    # DCB rule: 1 iff PFS > 6 observed, 0 iff progression by 6 months, NaN when censored before 6 months
    d = clin[clin.cohort.isin(["mcc_pdl1", "va", "mcc_ici_retro", "mcc_ici_pro"])]
    assert ((d.dcb == 1) == (d.pfs_months > 6)).all()
    assert ((d.dcb == 0) == ((d.pfs_months <= 6) & (d.pfs_event == 1))).all()
    assert (d.dcb.isna() == ((d.pfs_months <= 6) & (d.pfs_event == 0))).all()
    assert 0.4 < r.dcb.mean() < 0.7
    m = pd.concat([synth._study_tables("mri", "paper", s)[0] for s in range(8)])
    assert 0.12 < m.loc[m.cohort == "ici", "dcb"].mean() < 0.35


def test_atomic_and_overwrite(tmp_path):
    root = tmp_path / "study"
    with pytest.raises(TypeError):
        synth._make_study("petct", root, "tiny", 0, False, 1, _fail_after=3)
    assert not root.exists() and list(tmp_path.iterdir()) == []          # nothing half-written left behind
    m = synth.make_petct_study(root, scale="tiny", seed=0, workers=1)
    stamp = (root / "clinical.csv").stat().st_mtime_ns
    assert synth.make_petct_study(root, scale="tiny", seed=0) == m      # same study present: nothing to do
    assert (root / "clinical.csv").stat().st_mtime_ns == stamp
    with pytest.raises(PDL1Error, match="overwrite"):
        synth.make_petct_study(root, scale="tiny", seed=5)
    synth.make_petct_study(root, scale="tiny", seed=5, overwrite=True)
    assert yaml.safe_load((root / "study.yaml").read_text())["synthetic"]["seed"] == 5
    with pytest.raises(ValueError, match="scale"):
        synth.make_mri_study(tmp_path / "x", scale="huge")


def test_suvmax_column_measured_from_pet(petct):
    feats = synth.image_features(petct)
    assert np.allclose(feats.f_suvmax, feats.suvmax, atol=0.011)
    assert (feats.suvmax < feats.suv_peak * 1.4).all()   # partial volume and noise, never far above the truth


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["petct", "mri"])
def test_measured_calibration_small(kind, tmp_path):
    "On the small study (pooled cohorts) the image-measured features reach the intended AUC ranges."
    fn = synth.make_petct_study if kind == "petct" else synth.make_mri_study
    cal = synth.calibration(synth.image_features(fn(tmp_path / kind, scale="small", seed=0).parent))
    if kind == "petct":
        assert 0.58 < cal["suvmax"] < 0.80 and 0.80 < cal["oracle"] < 0.95, cal
        assert cal["measured_logistic_cv"] < 0.95
    else:
        for k in ("f_t1", "f_t2", "f_ce"): assert 0.62 < cal[k] < 0.85, cal
        assert 0.80 < cal["oracle"] < 0.95, cal
