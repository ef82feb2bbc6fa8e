"Manifest reading and validation: every problem is found and named with cohort, patient, column and file."
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pdl1_dls.core import PDL1Error
from pdl1_dls.manifest import ManifestErrors, apply_rule, load_study, validate_study

REPO = Path(__file__).resolve().parents[1]


def _toy(tmp_path, rows=None, manifest_extra="", images=True):
    rows = rows or dict(pid=["A1", "A2", "B1", "B2"], cohort=["tr", "tr", "va", "va"], tps=[0, 60, 1, 0.5],
                        pfs=[3.0, 12.0, 5.0, 7.5], pfs_event=[1, 0, 1, 0])
    pd.DataFrame(rows).to_csv(tmp_path / "clin.csv", index=False)
    if images:
        for pid in rows["pid"]:
            d = tmp_path / "img" / str(pid); d.mkdir(parents=True, exist_ok=True)
            for k in ("pet", "ct", "roi"): (d / f"{k}.nii.gz").write_bytes(b"x")  # one-byte placeholders: opening images is tested in test_validate_images.py
    m = tmp_path / "m.yaml"
    m.write_text(textwrap.dedent("""
        name: toy
        modality: petct
        root: .
        id_column: pid
        label: {source: tps, rule: ">=1", column: pdl1}
        outcomes: {pfs: {time: pfs, event: pfs_event}}
        images: {pet: "img/{patient_id}/pet.nii.gz", ct: "img/{patient_id}/ct.nii.gz", roi: "img/{patient_id}/roi.nii.gz"}
        cohorts:
          - {name: train, role: train, clinical: clin.csv, where: {cohort: tr}}
          - {name: val, role: validation, clinical: clin.csv, where: {cohort: va}}
        """) + manifest_extra)
    return m


def test_valid_study_and_label_rule(tmp_path):
    s = load_study(_toy(tmp_path))
    t = s.table()
    assert list(s.cohorts) == ["train", "val"] and len(t) == 4
    # TPS >= 1 %: 0 -> 0, 60 -> 1, 1 -> 1 (boundary is positive), 0.5 -> 0
    assert t.set_index("patient_id")["pdl1"].to_dict() == {"A1": 0.0, "A2": 1.0, "B1": 1.0, "B2": 0.0}
    assert all(Path(p).is_absolute() and Path(p).exists() for p in t["pet"])
    assert s.cohorts_with_role("validation")[0].name == "val"


def test_missing_ihc_is_unlabeled_not_negative():
    y = apply_rule([np.nan, 0, 20, 19.9], ">=20")
    assert np.isnan(y[0]) and list(y[1:]) == [0, 1, 0]


def test_every_problem_listed_with_location(tmp_path):
    rows = dict(pid=["A1", "A2", "B1", "B1"], cohort=["tr", "tr", "va", "va"], tps=[0, "high", 1, 2],
                pfs=[3.0, -1.0, 5.0, 7.5], pfs_event=[1, 0, 2, 0])
    m = _toy(tmp_path, rows)
    (tmp_path / "img" / "A1" / "ct.nii.gz").unlink()
    probs = validate_study(m, open_images=False)
    lines = [p.line() for p in probs]
    assert any("patient=A2" in l and "column=tps" in l and "not a number" in l for l in lines)
    assert any("patient=A2" in l and "negative follow-up" in l for l in lines)
    assert any("patient=B1" in l and "column=pfs_event" in l and "0 or 1" in l for l in lines)
    assert any("patient=B1" in l and "listed twice" in l for l in lines)
    assert any("patient=A1" in l and "ct image not found" in l and "A1/ct.nii.gz" in l for l in lines)
    assert all("\n" not in l for l in lines)
    with pytest.raises(ManifestErrors) as ei:
        load_study(m)
    assert "more problems" in str(ei.value) and "\n" not in str(ei.value)


def test_wrong_column_named(tmp_path):
    m = _toy(tmp_path)
    m.write_text(m.read_text().replace("source: tps", "source: pdl1_tps_typo"))
    probs = validate_study(m, open_images=False)
    assert any(p.column == "pdl1_tps_typo" and p.cohort == "train" and "label source column missing" in p.problem for p in probs)


def test_bad_yaml_and_unknown_keys(tmp_path):
    m = tmp_path / "bad.yaml"
    m.write_text("name: [unclosed\n")
    with pytest.raises(PDL1Error, match="not valid YAML"):
        load_study(m)
    m2 = _toy(tmp_path, manifest_extra="colour: blue\n")
    assert any("unknown manifest key 'colour'" in p.problem for p in validate_study(m2, open_images=False))


def test_checksums(tmp_path):
    from pdl1_dls.core import sha256
    m = _toy(tmp_path)
    f = tmp_path / "img" / "A1" / "pet.nii.gz"
    (tmp_path / "sums.sha256").write_text(f"{sha256(f)}  img/A1/pet.nii.gz\n{'0' * 64}  img/A2/pet.nii.gz\n")
    m.write_text(m.read_text() + "checksums: sums.sha256\n")
    probs = validate_study(m, open_images=False)
    assert len(probs) == 1 and probs[0].patient == "A2" and "checksum mismatch" in probs[0].problem


def test_time_unit_days_converted_to_months(tmp_path):
    m = _toy(tmp_path)
    m.write_text(m.read_text().replace("where: {cohort: va}}", "where: {cohort: va}, time_unit: days}"))
    t = load_study(m).table().set_index("patient_id")
    assert t.loc["A1", "pfs"] == 3.0 and t.loc["B1", "pfs"] == pytest.approx(5.0 * 12 / 365.25)


def test_real_manifests_validate(shared_data, monkeypatch):
    monkeypatch.setenv("PDL1_DLS_DATA", str(shared_data))
    s = load_study(REPO / "data_manifests/ibsi_sts.yaml")
    assert len(s.table()) == 16 and s.modality == "petct"
    l = load_study(REPO / "data_manifests/loris_nsclc.yaml")
    t = l.table()
    raw = pd.read_csv(shared_data / "tables/LORIS_Vanguri_NSCLC.csv")
    v = t[t.cohort == "vanguri"]
    assert len(v) == len(raw) and int((v.pdl1 == 1).sum()) == int((raw["PDL1_TPS(%)"] >= 1).sum())
    assert t[t.cohort == "ravi"]["PFS_Months"].max() < 70   # days converted to months


@pytest.mark.parametrize("kind", ["petct", "mri"])
def test_demo_manifest_matches_generated_study(kind, tmp_path):
    "data_manifests/demo_<kind>.yaml describes exactly what pdl1_dls.synth writes (cohorts, label, outcomes, images)."
    import yaml
    from pdl1_dls import synth
    demo = yaml.safe_load((REPO / f"data_manifests/demo_{kind}.yaml").read_text())
    gen = yaml.safe_load({"petct": synth.make_petct_study, "mri": synth.make_mri_study}[kind](tmp_path / "s", scale="tiny").read_text())
    for k in ("modality", "paper", "id_column", "label", "outcomes", "covariates", "images", "checksums", "cohorts"):
        assert demo[k] == gen[k], k
    assert demo["synthetic"]["kind"] == kind and demo["synthetic"]["scale"] == {"petct": "small", "mri": "paper"}[kind]


def test_generated_study_with_other_settings_is_generated_again(tmp_path):
    "A synthetic folder made with another `synthetic:` block is regenerated; an up-to-date one is left alone."
    import yaml
    from pdl1_dls.manifest import generate_if_needed, needs_generation
    spec = yaml.safe_load((REPO / "data_manifests/demo_mri.yaml").read_text())
    spec.update(root="study", synthetic={"kind": "mri", "scale": "tiny", "seed": 0}); spec.pop("train", None)
    man = tmp_path / "m.yaml"; man.write_text(yaml.safe_dump(spec))
    assert needs_generation(man) and generate_if_needed(man)
    first = (tmp_path / "study" / "clinical.csv").read_text()
    assert not needs_generation(man) and not generate_if_needed(man)
    spec["synthetic"]["seed"] = 1; man.write_text(yaml.safe_dump(spec))
    assert needs_generation(man) and generate_if_needed(man)
    own = yaml.safe_load((tmp_path / "study" / "study.yaml").read_text())
    assert own["synthetic"]["seed"] == 1 and (tmp_path / "study" / "clinical.csv").read_text() != first
    assert not needs_generation(man)
    # a folder made by an older version of the MRI generator is made again (a manifest never names the version)
    from pdl1_dls.synth import GENERATOR_VERSIONS
    assert own["synthetic"]["version"] == GENERATOR_VERSIONS["mri"] >= 2
    own["synthetic"].pop("version"); (tmp_path / "study" / "study.yaml").write_text(yaml.safe_dump(own))  # as before versions
    assert needs_generation(man) and generate_if_needed(man)
    assert yaml.safe_load((tmp_path / "study" / "study.yaml").read_text())["synthetic"]["version"] == GENERATOR_VERSIONS["mri"]
    assert not needs_generation(man)


@pytest.mark.parametrize("name", ["template_petct", "template_mri", "template_tcia_nsclc_radiogenomics"])
def test_templates_use_only_known_keys(name, monkeypatch):
    from pdl1_dls.manifest import read_study
    monkeypatch.setenv("NSCLC_RADIOGENOMICS", "/nonexistent")
    _, probs = read_study(REPO / f"data_manifests/{name}.yaml")
    assert not [p for p in probs if "unknown" in p.problem or "must be one of" in p.problem], probs
    assert probs and all("not found" in p.problem for p in probs)     # only the files are missing


def test_wrong_yaml_types_listed_not_raised(tmp_path):
    "Wrong YAML types in the manifest and in a cohort: one problem each, the rest of the manifest still checked."
    from pdl1_dls.manifest import validate_study
    (tmp_path / "c.csv").write_text("patient_id,tps\nP1,5\n")
    m = tmp_path / "m.yaml"
    m.write_text("name: x\nmodality: petct\nlabel: yes\nimages: [1]\noutcomes: [pfs]\ncovariates: {a: 1}\n"
                 "cohorts:\n  - {name: a, role: train, clinical: c.csv, where: [1], images: {pet: 3}}\n  - {name: b, role: nope, clinical: c.csv}\n")
    lines = [p.line() for p in validate_study(m, open_images=False)]
    for frag in ("label must be a mapping", "images must be a mapping", "outcomes must be a mapping",
                 "covariates must be a list of column names", "cohort=a file=", "where must be a mapping",
                 "role must be one of"):
        assert any(frag in l for l in lines), (frag, lines)


def test_manifest_rqs_checklist_path(tmp_path):
    "`rqs:` names the study's RQS checklist: a missing file is a problem; a present one answers the study items."
    from pdl1_dls.manifest import read_study
    from pdl1_dls.papers.mu2021 import RQS_NOT_ASSESSED, rqs_for_study
    (tmp_path / "c.csv").write_text("patient_id,tps\nP1,5\n")
    base = "name: x\nmodality: clinical\ncohorts:\n  - {name: a, role: ici, clinical: c.csv}\n"
    (tmp_path / "m.yaml").write_text(base + "rqs: mine.yaml\n")
    _, probs = read_study(tmp_path / "m.yaml")
    assert [p.problem for p in probs] == ["rqs names no file (the study's RQS checklist, relative to the manifest)"]
    (tmp_path / "mine.yaml").write_text("items:\n  - {id: 1, answer: 1, justification: protocol written down}\n")
    study, probs = read_study(tmp_path / "m.yaml")
    assert not probs
    items = {i["id"]: i for i in rqs_for_study(study)["items"]}
    assert items[1]["answer"] == 1 and items[1]["justification"] == "protocol written down"
    assert items[2]["justification"] == RQS_NOT_ASSESSED or items[2].get("scope") == "pipeline"
