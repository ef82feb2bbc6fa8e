"The manifest's `preprocess:` block (windows, crop): validated, in the cache key, recorded in the bundle, the bundle's values used to score; SUVmax from the images."
import json
import logging
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pdl1_dls.cli import main
from pdl1_dls.manifest import load_study, validate_study
from pdl1_dls.petct import pipeline as T
from pdl1_dls.petct import preprocess as PP
from pdl1_dls.petct.pipeline import toy_patients
from pdl1_dls.petct.preprocess import (bundle_preprocessing, cache_key, fill_suvmax, patient_hyperimages, preprocess_params,
                                       study_preprocessing)
from pdl1_dls.training import load_model


def _img(arr, spacing, origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(np.asarray(arr))
    im.SetSpacing(spacing); im.SetOrigin(origin)
    return im


def _phantom(folder, pid="P1"):
    "PET (4 mm), CT (2 mm) and a CT-grid ROI of one patient: lung at -800 HU, a 40 HU tumour of SUV 6 with one voxel at 7.25."
    d = folder / "img" / pid; d.mkdir(parents=True, exist_ok=True)
    ct = np.full((20, 40, 40), -800, np.int16); ct[6:14, 14:26, 14:26] = 40
    roi = np.zeros(ct.shape, np.uint8); roi[6:14, 14:26, 14:26] = 1
    pet = np.full((10, 20, 20), 0.8, np.float32); pet[3:7, 7:13, 7:13] = 6.0
    pet[4, 9, 10] = 7.25                      # the hottest voxel inside the ROI
    pet[0, 0, 0] = 30.0                       # hotter, but outside the ROI: never SUVmax
    # PET voxel centres at 1 + 4i mm, CT voxel centres at 2j mm: the ROI (CT voxels 14-25, 28-50 mm) holds PET voxels 7-12
    for name, a, sp, org in (("pet", pet, (4.0, 4.0, 4.0), (1.0, 1.0, 1.0)), ("ct", ct, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)),
                             ("roi", roi, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))):
        sitk.WriteImage(_img(a, sp, org), str(d / f"{name}.nii.gz"))
    return {k: str(d / f"{k}.nii.gz") for k in ("pet", "ct", "roi")}


def _manifest(folder, extra="", modality="petct", name="m.yaml"):
    keys = dict(pet="pet", ct="ct", roi="roi") if modality == "petct" else dict(t1="ct", t2="ct", ce_t1="ct", roi="roi")
    images = ", ".join(f'{k}: "img/{{patient_id}}/{v}.nii.gz"' for k, v in keys.items())
    m = folder / name
    m.write_text(textwrap.dedent(f"""
        name: toy
        modality: {modality}
        label: null
        images: {{{images}}}
        cohorts:
          - {{name: ext, role: external, patients: [P1]}}
        """) + textwrap.dedent(extra))
    return m


# ---------------------------------------------------------------- the block: defaults, validation
def test_no_block_is_the_papers_settings(tmp_path):
    _phantom(tmp_path)
    p = study_preprocessing(load_study(_manifest(tmp_path)))
    assert p == preprocess_params() and p["hu_window"] == [-1000.0, 400.0] and p["suv_window"] == [0.0, 15.0]
    assert p["dilation_mm"] == 20.0 and p["size"] == 64 and p["keep_fraction"] == 0.3
    stated = study_preprocessing(load_study(_manifest(tmp_path, "preprocess: {hu_window: [-1000, 400], dilation_mm: 20, size: 64}\n", name="s.yaml")))
    assert json.dumps(stated) == json.dumps(p)                           # the paper's values written out: the same cache key


def test_changed_window_changes_cache_key_and_hyperimages(tmp_path):
    files = _phantom(tmp_path)
    p0 = study_preprocessing(load_study(_manifest(tmp_path)))
    p1 = study_preprocessing(load_study(_manifest(tmp_path, "preprocess: {hu_window: [-160, 240]}\n", name="w.yaml")))
    assert p1["hu_window"] == [-160.0, 240.0] and {k: v for k, v in p1.items() if k != "hu_window"} == {k: v for k, v in p0.items() if k != "hu_window"}
    assert cache_key(files, p0) != cache_key(files, p1)
    h0 = patient_hyperimages("P1", files["pet"], files["ct"], files["roi"], cache_dir=tmp_path / "cache", **p0)
    h1 = patient_hyperimages("P1", files["pet"], files["ct"], files["roi"], cache_dir=tmp_path / "cache", **p1)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2             # two entries, one per window
    assert np.array_equal(h0.images[:, 0], h1.images[:, 0])                # PET channel: same SUV window
    assert not np.allclose(h0.images[:, 1], h1.images[:, 1])               # CT channel: another HU window
    tumour = h1.images[:, 1, 32, 32]                                       # 40 HU in [-160, 240] -> 0.5; in [-1000, 400] -> 0.743
    assert np.allclose(tumour, 0.5, atol=0.02) and np.allclose(h0.images[:, 1, 32, 32], 1040 / 1400, atol=0.02)
    assert h1.params["hu_window"] == [-160.0, 240.0]


@pytest.mark.parametrize("block, words", [
    ("{ct_window: [-160, 240]}", "a preprocess key must be one of suv_window, hu_window, dilation_mm, keep_fraction, size, alpha, fusion, not 'ct_window'"),
    ("{hu_window: -160}", "preprocess hu_window must be [low, high] in HU with low < high, got -160"),
    ("{suv_window: [15, 0]}", "preprocess suv_window must be [low, high] in SUV with low < high, got [15, 0]"),
    ("{dilation_mm: twenty}", "preprocess dilation_mm must be a number of mm >= 0, got 'twenty'"),
    ("{size: 64.5}", "preprocess size must be a whole number of pixels, 16 to 512, got 64.5"),
    ("{keep_fraction: yes}", "preprocess keep_fraction must be a number in [0, 1), got True"),
    ("{fusion: blend}", "preprocess fusion must be one of add, over, not 'blend'"),
    ("[0, 15]", "preprocess must be a mapping of hyper-image settings, got a list"),
])
def test_bad_block_is_a_one_line_error(tmp_path, capsys, block, words):
    _phantom(tmp_path)
    m = _manifest(tmp_path, f"preprocess: {block}\n")
    rc = main(["validate", "--no-images", str(m)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2 and err[0] == f"file={m}: {words}", err


def test_two_bad_keys_two_lines(tmp_path):
    _phantom(tmp_path)
    P = validate_study(_manifest(tmp_path, "preprocess: {ct_level: 40, alpha: 2}\n"), open_images=False)
    assert [p.problem for p in P] == ["a preprocess key must be one of suv_window, hu_window, dilation_mm, keep_fraction, size, alpha, fusion, not 'ct_level'",
                                      "preprocess alpha must be a number in [0, 1], got 2"]


def test_block_refused_on_mri(tmp_path):
    _phantom(tmp_path)
    P = validate_study(_manifest(tmp_path, "preprocess: {size: 64}\n", modality="mri"), open_images=False)
    assert any("preprocess sets the PET/CT hyper-images" in p.problem for p in P), P


# ---------------------------------------------------------------- the bundle records it; scoring uses the bundle's
class _Study:
    "A stand-in Study (as in test_train.py) whose manifest spec carries a `preprocess:` block."
    def __init__(self, block):
        self.name, self.modality, self.path, self.label_column, self.paper, self.label_rule = "fake", "petct", None, "pdl1", "mu2021", "tps>=1"
        self.spec = {"preprocess": block} if block is not None else {}
        self._data, rows = {}, []
        for cohort, role, n, seed in (("tr", "train", 16, 1), ("va", "validation", 8, 2)):
            data, lab = toy_patients(n, slices=(2, 3), signal=1.0, seed=seed, prefix=cohort)
            self._data.update(data)
            rows += [dict(patient_id=p, cohort=cohort, role=role, pdl1=lab[p]) for p in data]
        self._t = pd.DataFrame(rows)

    def table(self): return self._t.copy()


@pytest.fixture
def seen(monkeypatch):
    "The preprocessing parameters each call of the pipeline's `_hyper` was given (stand-in hyper-images)."
    calls = []
    def hyper(study, table, cache_dir, params=None, mmap=True):
        calls.append(dict(params))
        return {p: SimpleNamespace(images=study._data[p]) for p in table.patient_id}, pd.DataFrame(columns=["patient_id", "reason"])
    monkeypatch.setattr(T, "_hyper", hyper)
    return calls


def test_bundle_records_block_and_scoring_uses_it(tmp_path, seen, caplog):
    block = {"hu_window": [-160, 240], "dilation_mm": 30}
    T.train_study(_Study(block), tmp_path / "run", seed=0, epochs=1, batch_size=16, device="cpu")
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["preprocessing"] == preprocess_params(block) == seen[0]
    assert meta["preprocessing"]["hu_window"] == [-160.0, 240.0] and meta["preprocessing"]["dilation_mm"] == 30.0
    assert meta["request"]["preprocessing"] == meta["preprocessing"]              # part of the run's identity
    model = load_model(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="pdl1_dls.petct.preprocess"):
        model.score(_Study(None), tmp_path / "s1", skip_bad=True)                 # no block: the bundle's, silently
        assert seen[-1] == meta["preprocessing"] and not caplog.records
        model.score(_Study({"hu_window": [-1000, 400], "dilation_mm": 30}), tmp_path / "s2", skip_bad=True)
    assert seen[-1] == meta["preprocessing"]                                       # the bundle's window, not the manifest's
    assert [r.getMessage() for r in caplog.records] == [
        "the manifest's preprocess block differs from the bundle's, which is used: hu_window [-1000.0, 400.0] (bundle: [-160.0, 240.0])"]


def test_changed_block_is_another_run(tmp_path, seen):
    "A bundle trained with one window is not reused for another: refused naming the key (or trained again)."
    from pdl1_dls.core import PDL1Error
    T.train_study(_Study(None), tmp_path, seed=0, epochs=1, batch_size=16, device="cpu")
    with pytest.raises(PDL1Error, match=r"preprocessing\.hu_window"):
        T.train_study(_Study({"hu_window": [-160, 240]}), tmp_path, seed=0, epochs=1, batch_size=16, device="cpu", retrain=False)


def test_bundle_preprocessing_without_study_is_the_recorded():
    rec = preprocess_params({"suv_window": [0, 10]})
    assert bundle_preprocessing(rec) == rec and bundle_preprocessing(None) == preprocess_params()


# ---------------------------------------------------------------- SUVmax from the images
def test_suvmax_from_images_exact_and_table_wins(tmp_path, caplog):
    rows = [dict(patient_id=p, cohort="ext", **_phantom(tmp_path, p)) for p in ("P1", "P2", "P3")]
    t = pd.DataFrame(rows).assign(suvmax=[np.nan, 3.3, np.nan])
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), t.roi[2])              # P3: an empty ROI
    with caplog.at_level(logging.WARNING, logger="pdl1_dls.petct.preprocess"):
        f = fill_suvmax(t, tmp_path / "cache")
    assert f.suvmax[0] == np.float32(7.25)                  # exactly the hottest PET voxel inside the ROI (30 outside is ignored)
    assert f.suvmax[1] == 3.3                               # the table's value wins over the images' 7.25
    assert np.isnan(f.suvmax[2]) and f.suvmax_source.tolist() == ["images", "table", None]
    assert any("patient=P3" in r.getMessage() and "SUVmax left empty" in r.getMessage() for r in caplog.records)
    assert t.suvmax.isna().sum() == 2                       # the input table is not changed
    g = fill_suvmax(t.drop(columns="suvmax"))               # no column at all: every patient from the images
    assert g.suvmax[:2].tolist() == [np.float32(7.25)] * 2 and g.suvmax_source[:2].tolist() == ["images"] * 2


def test_suvmax_cached_by_file_stamps(tmp_path, monkeypatch):
    t = pd.DataFrame([dict(patient_id="P1", **_phantom(tmp_path))])
    assert fill_suvmax(t, tmp_path / "c").suvmax[0] == np.float32(7.25)
    PP._SUVMAX.clear()                                      # a new session: answered from the JSON in cache_dir
    monkeypatch.setattr(PP, "image_suvmax", lambda *a, **k: (_ for _ in ()).throw(AssertionError("images read again")))
    assert fill_suvmax(t, tmp_path / "c").suvmax[0] == np.float32(7.25)


def test_template_block_is_valid_and_the_papers():
    "The commented `preprocess:` block of the PET/CT template, uncommented, is valid and states the defaults."
    import re
    import yaml
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "data_manifests/template_petct.yaml").read_text()
    block = re.search(r"^# preprocess:\n((?:#   .*\n)+)", text, re.M)
    spec = yaml.safe_load("preprocess:\n" + "".join(l[1:] + "\n" for l in block.group(1).splitlines()))
    assert set(spec["preprocess"]) == set(PP.PREPROCESS_KEYS)
    assert preprocess_params(spec["preprocess"]) == preprocess_params()
