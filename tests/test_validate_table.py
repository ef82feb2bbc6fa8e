"Table-level validation: PD-L1 scores, follow-up times, events and covariates are checked per patient; a one-class cohort warns."
import logging
import textwrap

import pandas as pd
import pytest

from pdl1_dls.cli import main
from pdl1_dls.manifest import load_study, table_warnings, validate_study

ROWS = dict(pid=["A1", "A2", "A3", "B1", "B2"], cohort=["tr", "tr", "tr", "va", "va"], tps=[0, 60, 5, 1, 0.5],
            pfs=[3.0, 12.0, 4.0, 5.0, 7.5], pfs_event=[1, 0, 1, 1, 0], age=[61, 70, 55, 48, 66])


def _study(tmp_path, **changes):
    "A five-patient manifest (train A1-A3, validation B1-B2) with `changes` {column: {patient: value}} written into its table."
    t = pd.DataFrame(ROWS).astype(object)
    for col, vals in changes.items():
        for pid, v in vals.items(): t.loc[t.pid == pid, col] = v
    t.to_csv(tmp_path / "clin.csv", index=False)
    for pid in ROWS["pid"]:
        d = tmp_path / "img" / pid; d.mkdir(parents=True, exist_ok=True)
        for k in ("pet", "ct", "roi"): (d / f"{k}.nii.gz").write_bytes(b"x")   # paths only: images are opened in test_validate_images.py
    m = tmp_path / "m.yaml"
    m.write_text(textwrap.dedent("""
        name: toy
        modality: petct
        id_column: pid
        label: {source: tps, rule: ">=1", column: pdl1}
        outcomes: {pfs: {time: pfs, event: pfs_event}}
        covariates: [age]
        images: {pet: "img/{patient_id}/pet.nii.gz", ct: "img/{patient_id}/ct.nii.gz", roi: "img/{patient_id}/roi.nii.gz"}
        cohorts:
          - {name: train, role: train, clinical: clin.csv, where: {cohort: tr}}
          - {name: val, role: validation, clinical: clin.csv, where: {cohort: va}}
        """))
    return m


def _validate(m, capsys):
    "(exit status, stderr lines) of `pdl1-dls validate --no-images m`."
    rc = main(["validate", "--no-images", str(m)])
    return rc, capsys.readouterr().err.strip().splitlines()


def test_clean_table_is_valid(tmp_path, capsys):
    rc, err = _validate(_study(tmp_path), capsys)
    assert rc == 0 and err == []


@pytest.mark.parametrize("col, pid, value, words", [
    ("tps", "A2", -3, "PD-L1 score -3 is outside 0-100"),
    ("tps", "B1", 140, "PD-L1 score 140 is outside 0-100"),
    ("tps", "A1", "inf", "PD-L1 score is inf"),
    ("pfs", "A3", "inf", "follow-up time is inf"),
    ("pfs", "B2", "-inf", "follow-up time is -inf"),
    ("pfs", "A1", -2.0, "negative follow-up time"),
    ("pfs_event", "B1", 2, "must be 0 or 1, got 2"),
    ("pfs_event", "A2", 0.5, "must be 0 or 1, got 0.5"),
    ("age", "A3", "inf", "covariate value is inf"),
    ("age", "B2", "-inf", "covariate value is -inf"),
])
def test_bad_value_named_and_refused(tmp_path, capsys, col, pid, value, words):
    rc, err = _validate(_study(tmp_path, **{col: {pid: value}}), capsys)
    assert rc == 2, err
    assert len(err) == 2 and err[1].startswith("1 problem(s)"), err          # one line for the one bad value, then the count
    assert f"patient={pid}" in err[0] and f"column={col}" in err[0] and words in err[0], err[0]
    assert "cohort=" in err[0] and "clin.csv" in err[0]


def test_bad_score_leaves_patient_unlabelled(tmp_path):
    s = load_study(_study(tmp_path, tps={"B1": 140, "A1": -1}), strict=False)
    lab = s.table().set_index("patient_id")["pdl1"]
    assert lab.isna()[["B1", "A1"]].all() and lab["A2"] == 1.0        # never positive (140 >= 1) nor negative


def test_missing_values_are_not_errors(tmp_path, capsys):
    "An empty cell is a missing value: unknown TPS, follow-up or age is allowed."
    rc, err = _validate(_study(tmp_path, tps={"A3": ""}, pfs={"A1": ""}, pfs_event={"A1": ""}, age={"B1": ""}), capsys)
    assert rc == 0, err


def test_train_refuses_bad_table(tmp_path, capsys):
    "train validates before any work: exit 2, one line naming the patient and column, nothing written."
    m = _study(tmp_path, pfs={"A2": "inf"})
    rc = main(["train", "--manifest", str(m), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert any("patient=A2" in l and "column=pfs" in l and "follow-up time is inf" in l for l in err.splitlines()), err
    assert not (tmp_path / "run" / "model.json").exists()


@pytest.mark.parametrize("tps, which", [([5, 60], "all 2 labelled patients are PD-L1 positive"),
                                        ([0, 0.5], "all 2 labelled patients are PD-L1 negative"),
                                        (["", ""], "no patient has a PD-L1 label")])
def test_one_class_validation_cohort_warns(tmp_path, capsys, caplog, tps, which):
    m = _study(tmp_path, tps=dict(zip(["B1", "B2"], tps)))
    with caplog.at_level(logging.WARNING, logger="pdl1_dls.manifest"):
        rc, err = _validate(m, capsys)
    assert rc == 0, err                                                # a warning, not an error
    w = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert w == [f"cohort=val column=pdl1: {which}: no AUC can be computed in this validation cohort"], w
    assert validate_study(m, open_images=False) == []
    assert [p.cohort for p in table_warnings(load_study(m))] == ["val"]


def test_one_class_training_cohort_does_not_warn(tmp_path):
    "Only cohorts whose AUC is reported (validation, test, external) are checked."
    assert table_warnings(load_study(_study(tmp_path, tps={"A1": 5, "A3": 7}))) == []
