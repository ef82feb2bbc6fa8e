"The pdl1-dls command: help everywhere, exit 2 with one-line errors for bad input, reproduce writes a complete run folder."
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pdl1_dls.cli"]


def run(*args, **kw):
    return subprocess.run([sys.executable, "-c", "import sys; from pdl1_dls.cli import main; sys.exit(main(sys.argv[1:]))", *args],
                          capture_output=True, text=True, **kw)


@pytest.mark.parametrize("sub", [None, "synth", "validate", "train", "score", "reproduce", "explore"])
def test_help(sub):
    r = run(*([sub] if sub else []), "--help")
    assert r.returncode == 0 and "usage: pdl1-dls" in r.stdout


def test_validate_bad_manifest_exit_2_one_line_per_problem(tmp_path):
    (tmp_path / "c.csv").write_text("patient_id,tps\nP1,5\nP2,oops\n")
    m = tmp_path / "m.yaml"
    m.write_text("name: x\nmodality: petct\nlabel: {source: tps, rule: '>=1'}\n"
                 "images: {pet: '{patient_id}_pet.nii.gz', ct: '{patient_id}_ct.nii.gz', roi: '{patient_id}_roi.nii.gz'}\n"
                 "cohorts:\n  - {name: a, role: train, clinical: c.csv}\n")
    r = run("validate", str(m))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # 6 missing images (2 patients x 3), 1 non-numeric TPS, and the summary line
    assert len(lines) == 8 and lines[-1].startswith("7 problem(s)")
    assert any("patient=P2" in l and "column=tps" in l for l in lines)


def test_train_with_bad_manifest_exits_2_without_traceback(tmp_path):
    r = run("train", "--manifest", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    assert not (tmp_path / "run").exists()


def test_reproduce_study_summary_run_folder(shared_data, tmp_path):
    out = tmp_path / "run"
    r = run("reproduce", "--manifest", str(REPO / "data_manifests/loris_nsclc.yaml"), "--out", str(out), "--only", "study_summary",
            env={**__import__("os").environ, "PDL1_DLS_DATA": str(shared_data)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"report: {out / 'index.html'}" in r.stdout
    prov = json.loads((out / "provenance.json").read_text())
    for k in ("version", "git_commit", "manifest_sha256", "seed", "n_boot", "libraries", "device", "notebooks"):
        assert k in prov
    assert prov["notebooks"][0]["ok"] and prov["libraries"]["torch"]
    assert (out / "notebooks/study_summary.ipynb").is_file()
    t = (out / "tables/study_cohorts.csv").read_text()
    assert "vanguri" in t and (out / "tables/study_cohorts.md").is_file()
    assert (out / "figures/study_km_pfs.png").is_file() and (out / "figures/study_km_pfs.svg").is_file()
    assert "study_km_pfs.png" in (out / "index.html").read_text()
    assert not list(out.rglob("*.part"))


# ---- bad input that used to end in a traceback: now one line naming the problem, exit 2 ----

BAD_MANIFESTS = {
    "images_list": ("name: x\nmodality: petct\nimages: [1]\ncohorts: [{name: a, role: train, patients: [P1]}]\n",
                    "images must be a mapping of image key to path, got a list"),
    "outcomes_list": ("name: x\nmodality: petct\noutcomes: [pfs]\ncohorts: [{name: a, role: train, patients: [P1]}]\n",
                      "outcomes must be a mapping, got a list"),
    "where_list": ("name: x\nmodality: petct\ncohorts: [{name: a, role: train, clinical: c.csv, where: [1]}]\n",
                   "where must be a mapping, got a list"),
    "label_yes": ("name: x\nmodality: petct\nlabel: yes\ncohorts: [{name: a, role: train, patients: [P1]}]\n",
                  "label must be a mapping, got yes/no"),
    "synthetic_scale": ("name: x\nmodality: petct\nsynthetic: {kind: petct, scale: bogus, seed: 0}\n",
                        "synthetic scale must be tiny, small or paper, got 'bogus'"),
    "synthetic_key": ("name: x\nmodality: petct\nsynthetic: {kind: petct, scale: tiny, foo: 1}\n", "unknown synthetic key 'foo'"),
    "synthetic_seed": ("name: x\nmodality: petct\nsynthetic: {kind: petct, seed: abc}\n", "synthetic seed must be a whole number, got 'abc'"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_yaml_types_are_one_line_errors(case, tmp_path):
    text, msg = BAD_MANIFESTS[case]
    (tmp_path / "c.csv").write_text("patient_id\nP1\n")
    m = tmp_path / "m.yaml"; m.write_text(text)
    for args in (("validate", str(m)), ("train", "--manifest", str(m), "--out", str(tmp_path / "run"))):
        r = run(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        assert msg in r.stderr, r.stderr
    assert not (tmp_path / "images").exists() and not (tmp_path / "run").exists()    # nothing generated or written


def test_non_utf8_manifest_and_symlink_loop(tmp_path):
    m = tmp_path / "m.yaml"; m.write_bytes(b"name: \xff\xfe\n")
    r = run("validate", str(m))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "manifest is not UTF-8 text (byte 6)" in r.stderr
    loop = tmp_path / "loop.yaml"; loop.symlink_to(loop)
    r = run("validate", str(loop))
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(loop) in r.stderr


@pytest.mark.parametrize("args, msg", [
    (("--epochs", "0"), "argument --epochs: must be at least 1, got 0"),
    (("--epochs", "x"), "argument --epochs: must be a whole number"),
    (("--device", "bogus"), "argument --device: must be one of auto, cpu, cuda, cuda:N, got 'bogus'"),
])
def test_train_argument_errors(args, msg, tmp_path):
    r = run("train", "--manifest", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "run"), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and msg in r.stderr


def test_cuda_without_gpu_is_one_line_error(tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip("this machine has CUDA: the no-GPU error cannot be provoked")
    r = run("train", "--manifest", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "run"), "--device", "cuda")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: device 'cuda' requested but CUDA is not available on this machine"


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a b/../c", ".."])
def test_run_folder_name_stays_under_out_dir(name):
    from pdl1_dls.cli import default_out
    from pdl1_dls.core import get_settings
    out = default_out(name)
    assert out.parent == Path(get_settings().out_dir) and "/" not in out.name and out.name not in ("", ".", "..")


def _tree(folder: Path) -> dict:
    "Every file of a folder with its bytes' SHA-256 (to show a bundle is byte-identical)."
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_score_predict_frozen_bundle(tmp_path):
    "train once; score a second synthetic study and predict one of its patients with the frozen bundle; the bundle never changes."
    import pandas as pd
    env = dict(__import__("os").environ, PDL1_DLS_PROGRESS="0")
    assert run("synth", "--kind", "petct", "--scale", "tiny", "--seed", "0", "--out", str(tmp_path / "a"), env=env).returncode == 0
    assert run("synth", "--kind", "petct", "--scale", "tiny", "--seed", "1", "--out", str(tmp_path / "b"), env=env).returncode == 0
    bundle = tmp_path / "bundle"
    r = run("train", "--manifest", str(tmp_path / "a" / "study.yaml"), "--out", str(bundle), "--quick", "--epochs", "1",
            "--device", "cpu", "--skip-bad", env=env)
    assert r.returncode == 0, r.stderr
    meta = json.loads((bundle / "model.json").read_text())
    before = _tree(bundle)
    r = run("score", "--model", str(bundle), "--manifest", str(tmp_path / "b" / "study.yaml"), "--out", str(tmp_path / "s"),
            "--device", "cpu", "--skip-bad", env=env)
    assert r.returncode == 0, r.stderr
    dls = pd.read_csv(tmp_path / "s" / "dls.csv", dtype={"patient_id": str})
    assert list(dls.columns) == ["patient_id", "cohort", "dls", "dls_high", "n_slices"] and len(dls) > 20
    assert ((dls.dls >= meta["cutoff"]["value"]) == (dls.dls_high == 1)).all()
    from pdl1_dls.manifest import load_study
    row = load_study(tmp_path / "b" / "study.yaml").table().set_index("patient_id").loc[dls.patient_id[0]]
    r = run("predict", "--model", str(bundle), "--pet", row.pet, "--ct", row.ct, "--roi", row.roi, "--out", str(tmp_path / "p"), env=env)
    assert r.returncode == 0, r.stderr
    pred = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert abs(pred["dls"] - dls.dls[0]) < 1e-6 and pred["cutoff"] == meta["cutoff"]["value"] and (tmp_path / "p" / "gradcam.png").is_file()
    r = run("predict", "--model", str(bundle), "--pet", row.pet, "--out", str(tmp_path / "p2"), env=env)
    assert r.returncode == 2 and r.stderr.strip() == "error: this petct model needs --ct, --roi"
    # the same settings reuse the bundle; changed ones are refused with --no-retrain, naming the change
    for args, msg in ((("--epochs", "2"), "config.epochs: 1 -> 2"), (("--channels", "pet"), "config.channels: 'hyper' -> 'pet'")):
        r = run("train", "--manifest", str(tmp_path / "a" / "study.yaml"), "--out", str(bundle), "--quick", "--device", "cpu",
                "--skip-bad", "--no-retrain", *args, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _tree(bundle) == before                                                   # byte-identical after score, predict, refusals
    # a damaged bundle is a one-line error
    (bundle / "model.pt").write_bytes((bundle / "model.pt").read_bytes()[:-10])
    r = run("score", "--model", str(bundle), "--manifest", str(tmp_path / "b" / "study.yaml"), "--out", str(tmp_path / "s2"), env=env)
    assert r.returncode == 2 and "damaged bundle: file differs from its checksum" in r.stderr and "model.pt" in r.stderr


def test_bad_input_battery_refused_before_training(tmp_path):
    "One patient broken per class: validate names every one (exit 2); train refuses before training; --skip-bad trains on the rest."
    import gzip
    import numpy as np
    import SimpleITK as sitk
    import pandas as pd
    env = dict(__import__("os").environ, PDL1_DLS_PROGRESS="0")
    assert run("synth", "--kind", "petct", "--scale", "tiny", "--seed", "0", "--out", str(tmp_path / "s"), env=env).returncode == 0
    m = tmp_path / "s" / "study.yaml"
    from pdl1_dls.manifest import load_study
    t = load_study(m).table()
    tr = t[t.role == "train"].reset_index(drop=True)
    rows = pd.concat([tr.iloc[:2], t[t.role == "validation"].iloc[:2], t[t.role == "test"].iloc[:2]]).reset_index(drop=True)
    def img(p): return sitk.ReadImage(str(p))
    def put(im, p): sitk.WriteImage(im, str(p))
    broken = {}
    r = rows.iloc[0]; put(img(r.roi) * 0, r.roi); broken[r.patient_id] = "ROI mask is empty"
    r = rows.iloc[1]; put(img(r.roi) * 2, r.roi); broken[r.patient_id] = "label"                       # values 0/2: not a 0/1 mask
    r = rows.iloc[2]; put(sitk.Cast(img(r.pet), sitk.sitkFloat32) * 1300.0, r.pet); broken[r.patient_id] = "look like Bq/ml"
    r = rows.iloc[3]; raw = Path(r.ct).read_bytes(); Path(r.ct).write_bytes(raw[: len(raw) // 2]); broken[r.patient_id] = ""
    r = rows.iloc[4]; put(img(r.ct)[:, :, 5], r.ct); broken[r.patient_id] = "2-D"
    r = rows.iloc[5]; Path(r.pet).unlink(); broken[r.patient_id] = ""
    v = run("validate", str(m), env=env)
    assert v.returncode == 2 and "Traceback" not in v.stderr
    for pid, msg in broken.items():
        lines = [l for l in v.stderr.splitlines() if f"patient={pid} " in l]
        assert lines and any(msg in l for l in lines), (pid, msg, v.stderr[-3000:])
    out = tmp_path / "run"
    r1 = run("train", "--manifest", str(m), "--out", str(out), "--quick", "--epochs", "1", "--device", "cpu", env=env)
    assert r1.returncode == 2 and "Traceback" not in r1.stderr and "nothing was trained or written" in r1.stderr
    assert all(f"patient={pid} " in r1.stderr for pid in broken) and not (out / "model.json").exists()
    r2 = run("train", "--manifest", str(m), "--out", str(out), "--quick", "--epochs", "1", "--device", "cpu", "--skip-bad", env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"--skip-bad: {len(broken)} patient(s) left out:" in r2.stderr and all(pid in r2.stderr for pid in broken)
    met = json.loads((out / "metrics.json").read_text())
    assert met["n_patients"]["fit"] + met["n_patients"]["inner"] == len(tr) - 2           # two of the broken were training patients


def test_two_writers_of_one_folder(tmp_path):
    "Two `synth` into one folder, and two `score` into one folder, at once: one succeeds, the other stops with a clear error."
    import os
    env = dict(os.environ, PDL1_DLS_PROGRESS="0")
    cmd = [sys.executable, "-c", "import sys; from pdl1_dls.cli import main; sys.exit(main(sys.argv[1:]))"]
    synth = cmd + ["synth", "--kind", "petct", "--scale", "tiny", "--seed", "3", "--out", str(tmp_path / "s")]
    ps = [subprocess.Popen(synth, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    res = [(p.wait(600), p.stderr.read()) for p in ps]
    assert sorted(rc for rc, _ in res) == [0, 2], res
    err = next(e for rc, e in res if rc == 2)
    assert "study folder is in use by another pdl1-dls command" in err and "Traceback" not in err
    from pdl1_dls.manifest import validate_study
    assert validate_study(tmp_path / "s" / "study.yaml") == []          # the finished study is whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    from pdl1_dls.core import folder_lock
    with folder_lock(tmp_path / "scores", "output folder"):               # a score already writing there
        r = run("score", "--model", str(tmp_path / "nobundle"), "--manifest", str(tmp_path / "s" / "study.yaml"),
                "--out", str(tmp_path / "scores"), env=env)
    assert r.returncode == 2 and "output folder is in use by another pdl1-dls command" in r.stderr and "Traceback" not in r.stderr


def test_reproduce_several_manifests_on_one_cluster(shared_data, tmp_path, monkeypatch):
    "reproduce --manifest A B --workers 1: one local cluster serves both studies, each reported in OUT/<study name>."
    import os
    import pdl1_dls.scale as scale
    from pdl1_dls.cli import main
    text = (REPO / "data_manifests/loris_nsclc.yaml").read_text()
    ms = []
    for n in ("loris_a", "loris_b"):
        m = tmp_path / f"{n}.yaml"; m.write_text(text.replace("name: loris_nsclc", f"name: {n}")); ms.append(str(m))
    started, real = [], scale.dask_client
    def counting(workers=None, scheduler=None):
        started.append((workers, scheduler)); return real(workers, scheduler)
    monkeypatch.setattr(scale, "dask_client", counting)
    monkeypatch.setenv("PDL1_DLS_DATA", str(shared_data))
    out = tmp_path / "runs"
    assert main(["reproduce", "--manifest", *ms, "--out", str(out), "--only", "study_summary", "--workers", "1"]) == 0
    for n in ("loris_a", "loris_b"):
        prov = json.loads((out / n / "provenance.json").read_text())
        assert prov["study"] == n and prov["notebooks"][0]["ok"] and (out / n / "index.html").is_file()
    local = [s for s in started if s[1] is None]
    assert local == [(1, None)]                      # one cluster started; each study connected to it by address
    assert len(started) == 3 and all(s[1] == started[1][1] and s[1].startswith("tcp://") for s in started[1:])


def test_reproduce_manifests_with_one_name_are_refused(tmp_path):
    from pdl1_dls.cli import reproduce_outs
    from pdl1_dls.core import PDL1Error
    for n in ("a", "b"): (tmp_path / f"{n}.yaml").write_text("name: same\nmodality: petct\n")
    with pytest.raises(PDL1Error, match="two manifests name the same study"):
        reproduce_outs([str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")], str(tmp_path / "o"))
    assert reproduce_outs([str(tmp_path / "a.yaml")], None)[0].name == "same"
