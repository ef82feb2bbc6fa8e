"Scale-out: the per-patient cache on Dask (byte-identical whatever the workers), `python -m pdl1_dls`, concurrent reproduction."
import contextlib
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import pdl1_dls
from pdl1_dls.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _files(folder) -> dict:
    "name -> sha256 of every cache file in a folder."
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(folder).glob("*.npz"))}


def _run(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_petct(tmp_path_factory):
    from pdl1_dls.synth import make_petct_study
    return make_petct_study(tmp_path_factory.mktemp("scale") / "petct", scale="tiny", seed=0)


def test_preprocess_is_byte_identical_with_1_and_2_workers(tiny_petct, tmp_path):
    "`pdl1-dls preprocess --workers 1` and `--workers 2`: the same cache files, byte for byte; the trainer's builder then writes nothing."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.petct.pipeline import _hyper
    from pdl1_dls.petct.preprocess import DEFAULTS
    rc1, out1, err1 = _run(["preprocess", "--manifest", str(tiny_petct), "--workers", "1", "--cache-dir", str(tmp_path / "c1")])
    rc2, out2, err2 = _run(["preprocess", "--manifest", str(tiny_petct), "--workers", "2", "--cache-dir", str(tmp_path / "c2")])
    assert (rc1, rc2) == (0, 0), (err1, err2)
    assert "48/48 patients in the cache" in out1 and "(1 worker(s)" in out1 and "(2 worker(s)" in out2
    a, b = _files(tmp_path / "c1"), _files(tmp_path / "c2")
    assert len(a) == 48 and a == b
    study = load_study(tiny_petct)
    hyper, skipped = _hyper(study, study.table(), tmp_path / "c2", DEFAULTS)      # what train_study / score call
    assert len(hyper) == 48 and not len(skipped) and _files(tmp_path / "c2") == b


def test_preprocess_reports_a_failed_patient_and_keeps_the_rest(tiny_petct, tmp_path):
    "A patient whose CT is unreadable: named with the reason on stderr (exit 2); every other patient's entry is written."
    from pdl1_dls.manifest import load_study
    root = tmp_path / "study"; shutil.copytree(Path(tiny_petct).parent, root)
    y = root / "study.yaml"                                          # without checksums (they would refuse the study)
    y.write_text("".join(l for l in y.read_text().splitlines(True) if not l.startswith("checksums:")))
    victim = load_study(root / "study.yaml").table().iloc[9]
    Path(victim["ct"]).write_bytes(b"not an image")
    rc, out, err = _run(["preprocess", "--manifest", str(root / "study.yaml"), "--workers", "2", "--cache-dir", str(tmp_path / "c"),
                         "--cohorts", victim["cohort"]])
    assert rc == 2
    lines = [l for l in err.splitlines() if l.startswith("failed: ")]
    assert len(lines) == 1 and lines[0].startswith(f"failed: patient {victim['patient_id']} (cohort {victim['cohort']}): "), err
    assert "7/8 patients in the cache" in out and "1 failed" in out
    assert len(_files(tmp_path / "c")) == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_preprocess_on_a_running_cluster_gives_the_same_bytes(tiny_petct, tmp_path):
    "`dask scheduler` + `dask worker` started by hand, `preprocess --scheduler tcp://...`: the same files as one local worker."
    from distributed import Client
    dask = Path(sys.executable).parent / "dask"
    if not dask.is_file(): pytest.skip(f"no `dask` command beside {sys.executable}")
    port = _free_port(); addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        procs.append(subprocess.Popen([str(dask), "worker", addr, "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        t0 = time.time()
        while True:
            try:
                with Client(addr, timeout="5s") as c: c.wait_for_workers(2, timeout=120); break
            except (OSError, TimeoutError):
                if time.time() - t0 > 120: raise
                time.sleep(1)
        rc, out, err = _run(["preprocess", "--manifest", str(tiny_petct), "--scheduler", addr, "--cohorts", "sph_train", "va",
                             "--cache-dir", str(tmp_path / "remote")])
        assert rc == 0, err
        assert "16/16 patients in the cache" in out and "(2 worker(s)" in out
    finally:
        for p in reversed(procs):
            p.terminate()
            try: p.wait(30)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
    rc, _, err = _run(["preprocess", "--manifest", str(tiny_petct), "--workers", "1", "--cohorts", "sph_train", "va",
                       "--cache-dir", str(tmp_path / "local")])
    assert rc == 0, err
    a, b = _files(tmp_path / "remote"), _files(tmp_path / "local")
    assert len(a) == 16 and a == b


def test_scheduler_unreachable_is_one_line(tiny_petct):
    rc, out, err = _run(["preprocess", "--manifest", str(tiny_petct), "--scheduler", "tcp://127.0.0.1:9"])
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err


def test_workers_and_scheduler_options():
    "--workers/--scheduler on preprocess, validate, train, score and reproduce; one or the other; without either, no cluster."
    p = build_parser()
    for cmd in (["validate", "m.yaml"], ["train", "--manifest", "m", "--out", "o"], ["score", "--model", "r", "--manifest", "m", "--out", "o"],
                ["reproduce", "--manifest", "m"], ["preprocess", "--manifest", "m"]):
        assert p.parse_args(cmd + ["--workers", "2"]).workers == 2
        assert p.parse_args(cmd + ["--scheduler", "tcp://h:8786"]).scheduler == "tcp://h:8786"
        a = p.parse_args(cmd)
        assert a.workers is None and a.scheduler is None
        with contextlib.redirect_stderr(io.StringIO()) as e, pytest.raises(SystemExit):
            p.parse_args(cmd + ["--workers", "2", "--scheduler", "tcp://h:1"])
        assert "not allowed with argument" in e.getvalue()
        with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit): p.parse_args(cmd + ["--workers", "0"])


def test_python_m_pdl1_dls():
    "`python -m pdl1_dls` is the command: --help lists the subcommands (preprocess too), --version the package version."
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    h = subprocess.run([sys.executable, "-m", "pdl1_dls", "--help"], capture_output=True, text=True, env=env, cwd=REPO)
    assert h.returncode == 0 and h.stdout.startswith("usage: pdl1-dls")
    assert all(c in h.stdout for c in ("preprocess", "train", "score", "reproduce"))
    v = subprocess.run([sys.executable, "-m", "pdl1_dls", "--version"], capture_output=True, text=True, env=env, cwd=REPO)
    assert v.returncode == 0 and v.stdout.strip() == f"pdl1_dls {pdl1_dls.__version__}"
    p = subprocess.run([sys.executable, "-m", "pdl1_dls", "preprocess", "--help"], capture_output=True, text=True, env=env, cwd=REPO)
    assert p.returncode == 0 and "--workers" in p.stdout and "--scheduler" in p.stdout


# ---- concurrent reproduction ----

def _fake_notebooks(nbd: Path):
    "Reproduction notebooks that record overlapping and unplanned keys, write a table each, and one that fails."
    import nbformat
    nbd.mkdir()
    def nb(name, *cells):
        n = nbformat.v4.new_notebook()
        p = nbformat.v4.new_code_cell("manifest = out_dir = None\nseed = n_boot = 0\nquick = True"); p.metadata["tags"] = ["parameters"]
        n.cells = [p, nbformat.v4.new_code_cell("from pathlib import Path\nfrom pdl1_dls.report import record")]
        n.cells += [nbformat.v4.new_code_cell(c) for c in cells]
        nbformat.write(n, nbd / f"{name}.ipynb")
    nb("mu2021_00_train_score", "record(out_dir, 'mu2021', 'dls_auc.sph_train', 0.81, 0.7, 0.9, cohort='sph_train')",
       "record(out_dir, 'mu2021', 'extra_from_training', 1.5)")
    nb("mu2021_01_table1", "import time; time.sleep(2)",                                # finishes last, recorded in its order
       "record(out_dir, 'mu2021', 'n_patients.sph_train', 8, cohort='sph_train')",
       "record(out_dir, 'mu2021', 'extra_b', 2.5)",
       "(Path(out_dir) / 'tables').mkdir(exist_ok=True); (Path(out_dir) / 'tables' / 't1.csv').write_text('a\\n1\\n')")
    nb("mu2021_02_fig3_performance", "record(out_dir, 'mu2021', 'dls_auc.sph_train', 0.83, 0.75, 0.9, cohort='sph_train')",
       "record(out_dir, 'mu2021', 'extra_a', 3.5)", "record(out_dir, 'mu2021', 'extra_b', 4.5)",
       "(Path(out_dir) / 'tables').mkdir(exist_ok=True); (Path(out_dir) / 'tables' / 't2.csv').write_text('b\\n2\\n')")
    nb("mu2021_03_association", "raise ValueError('boom')")


def test_concurrent_reproduction_gives_the_serial_report(tmp_path, monkeypatch):
    "Notebooks after the training one run on 2 workers: the same comparisons.csv (bytes), tables and statuses as one at a time."
    import pdl1_dls.report as rp
    from pdl1_dls.synth import make_petct_study
    _fake_notebooks(tmp_path / "nbs")
    monkeypatch.setattr(rp, "notebooks_dir", lambda: tmp_path / "nbs")
    monkeypatch.delenv("PDL1_DLS_NOTEBOOK", raising=False)
    man = make_petct_study(tmp_path / "study", scale="tiny", seed=0)
    # the workers are new processes: they find the notebooks through the task's path, not the monkeypatch
    runs = {}
    for name, kw in (("serial", {}), ("dask", dict(workers=2))):
        logged = []
        runs[name] = rp.run_reproduction(man, tmp_path / name, seed=0, n_boot=10, quick=True, log=logged.append, **kw)
        assert any("mu2021_03_association failed: ValueError: boom" in l for l in logged)
    s, d = runs["serial"], runs["dask"]
    assert [(x["notebook"], x["ok"], x["error"]) for x in s["notebooks"]] == [(x["notebook"], x["ok"], x["error"]) for x in d["notebooks"]]
    assert [x["ok"] for x in d["notebooks"]] == [True, True, True, False]
    a, b = (tmp_path / "serial" / "comparisons.csv").read_bytes(), (tmp_path / "dask" / "comparisons.csv").read_bytes()
    assert a == b
    cmp = pd.read_csv(tmp_path / "dask" / "comparisons.csv").set_index("key")
    assert cmp.loc["dls_auc.sph_train", "reproduced"] == 0.83 and cmp.loc["dls_auc.sph_train", "notebook"] == "mu2021_02_fig3_performance"
    assert cmp.loc["extra_b", "reproduced"] == 4.5 and cmp.loc["n_patients.sph_train", "notebook"] == "mu2021_01_table1"
    for t in ("t1.csv", "t2.csv"):
        assert (tmp_path / "serial" / "tables" / t).read_bytes() == (tmp_path / "dask" / "tables" / t).read_bytes()
    assert not list((tmp_path / "dask").glob(".comparisons.*")) and "PDL1_DLS_COMPARISONS" not in os.environ
    assert sorted(p.name for p in (tmp_path / "dask" / "notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (tmp_path / "serial" / "notebooks").glob("*.ipynb"))


def _tables(run: Path) -> dict:
    "Every table of a run, less wall-clock columns (`seconds`: how long a step took, different in any two runs)."
    return {p.relative_to(run).as_posix(): pd.read_csv(p).drop(columns=["seconds"], errors="ignore")
            for p in sorted((run / "tables").rglob("*.csv"))}


@pytest.mark.slow
def test_tiny_petct_reproduction_concurrent_equals_serial(tiny_petct, tmp_path):
    "The Mu 2021 reproduction of the tiny synthetic study, serial and with 2 workers: the same comparisons.csv values and tables."
    from pdl1_dls.report import run_reproduction
    s = run_reproduction(tiny_petct, tmp_path / "serial", seed=0, n_boot=20, quick=True, log=lambda *a: None)
    d = run_reproduction(tiny_petct, tmp_path / "dask", seed=0, n_boot=20, quick=True, log=lambda *a: None, workers=2)
    assert [(x["notebook"], x["ok"]) for x in s["notebooks"]] == [(x["notebook"], x["ok"]) for x in d["notebooks"]]
    a, b = pd.read_csv(tmp_path / "serial" / "comparisons.csv"), pd.read_csv(tmp_path / "dask" / "comparisons.csv")
    assert a["reproduced"].notna().sum() > 20
    pd.testing.assert_frame_equal(a, b)
    ta, tb = _tables(tmp_path / "serial"), _tables(tmp_path / "dask")
    assert ta.keys() == tb.keys() and len(ta) > 5
    for k in ta: pd.testing.assert_frame_equal(ta[k], tb[k], obj=k)


def test_scale_benchmark_rows(tiny_petct, tmp_path):
    "The scale benchmark: serial reference, 1 and 2 workers over the same patients, the same bytes in every cache."
    sys.path.insert(0, str(REPO / "benchmarks"))
    import scale as bench
    rows = bench.preprocessing_rows(tiny_petct, n_patients=4, repeats=1, workers=(1, 2), folder=tmp_path)
    assert [r["what"] for r in rows] == ["reference: build_hyperimages in this process", "preprocess_study, 1 worker(s)",
                                         "preprocess_study, 2 worker(s)"]
    assert rows[0]["x_ref"] == 1.0 and all(r["patients"] == 4 and r["per_s"] > 0 for r in rows)
    assert all(r["identical"] == "yes" for r in rows)
    bench.print_table(rows, 1)


# ---- the cache plan is the pipelines' ----

@pytest.fixture(scope="module")
def tiny_mri(tmp_path_factory):
    from pdl1_dls.synth import make_mri_study
    return make_mri_study(tmp_path_factory.mktemp("scale") / "mri", scale="tiny", seed=0)


def _bundle(modality, **meta):
    from pdl1_dls.training import Model
    return Model(Path("/nowhere") / f"{modality}_bundle", {"modality": modality, **meta})


PAPER_HYPER = {"dilation_mm": 20.0, "keep_fraction": 0.3, "size": 64, "suv_window": [0.0, 15.0], "hu_window": [-1000.0, 400.0],
               "alpha": 1.0, "fusion": "add", "label": None}   # the hyper-image parameters training uses without a preprocess: block


def test_cache_plan_is_the_pipelines_plan(tiny_petct, tiny_mri):
    "scale.cache_plan is the study's pipeline's cache_plan (training's and a bundle's), with today's parameters and folders."
    import dataclasses
    from pdl1_dls.core import get_settings
    from pdl1_dls.manifest import load_study
    from pdl1_dls.mri.pipeline import MRITrainConfig
    from pdl1_dls.mri.preprocess import MRIParams
    from pdl1_dls.petct.preprocess import preprocess_params
    from pdl1_dls.scale import cache_plan
    from pdl1_dls.training import pipeline, pipeline_of
    pet, mri = load_study(tiny_petct), load_study(tiny_mri)
    root = Path(get_settings().cache_dir)
    assert pipeline_of(pet) is pipeline("petct") and pipeline_of(mri) is pipeline("mri")
    cfg = {k: (list(v) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(MRITrainConfig.make(profile="cpu", size=80, sequences=("t1", "t2"))).items()}
    cases = [(pet, {}), (pet, dict(cache_dir="/c/p")), (pet, dict(model=_bundle("petct", preprocessing=preprocess_params({"suv_window": [0, 10]})))),
             (mri, {}), (mri, dict(quick=True)), (mri, dict(profile="cpu", cache_dir="/c/m")), (mri, dict(model=_bundle("mri", config=cfg)))]
    for study, kw in cases:
        plan = cache_plan(study, **kw)
        assert plan == pipeline_of(study).cache_plan(study, **kw), (study.modality, kw)
        assert plan["modality"] == study.modality and isinstance(plan["cache_dir"], Path)
        want_dir = Path(kw["cache_dir"]) if "cache_dir" in kw else root / study.modality / study.name
        assert plan["cache_dir"] == want_dir
    # the numbers of the key: PET/CT the paper's hyper-image settings (or the bundle's), MRI the profile's size/margin/sequences
    assert cache_plan(pet)["params"] == PAPER_HYPER
    assert cache_plan(pet, _bundle("petct", preprocessing=preprocess_params({"suv_window": [0, 10]})))["params"] == \
        {**PAPER_HYPER, "suv_window": [0.0, 10.0]}
    assert cache_plan(pet, _bundle("petct"))["params"] == PAPER_HYPER                  # a bundle recording nothing: the paper's
    for kw, size in ((dict(quick=True), 64), (dict(profile="cpu"), 64), (dict(profile="paper"), 224), ({}, 224)):
        c = MRITrainConfig.make(**kw)
        got = cache_plan(mri, **kw)["params"]
        assert got == MRIParams(size=c.size, margin_mm=c.margin_mm, sequences=tuple(c.sequences)) and got.size == size, kw
        assert got.key() == {"size": size, "margin_mm": 10.0, "pct": [0.5, 99.5], "range_region": "union", "zscore": "none",
                             "roi_resample": False, "sequences": ["t1", "t2", "ce_t1"], "version": 4}
    assert cache_plan(mri, _bundle("mri", config=cfg), quick=True)["params"] == MRIParams(size=80, margin_mm=10.0, sequences=("t1", "t2"))


def test_cache_plan_refuses_a_bundle_of_the_other_modality(tiny_petct, tiny_mri):
    "A bundle of the other modality, and a study without images: one-line PDL1Errors naming the file."
    import dataclasses
    from pdl1_dls.core import PDL1Error
    from pdl1_dls.manifest import load_study
    from pdl1_dls.scale import cache_plan
    pet, mri = load_study(tiny_petct), load_study(tiny_mri)
    for study, other in ((pet, "mri"), (mri, "petct")):
        with pytest.raises(PDL1Error) as e: cache_plan(study, _bundle(other))
        line = e.value.line()
        assert f"the bundle is a {other} model, the study is {study.modality}" in line and f"{other}_bundle" in line and "\n" not in line
    with pytest.raises(PDL1Error, match="no per-patient preprocessing for modality 'clinical'"):
        cache_plan(dataclasses.replace(pet, modality="clinical"))


def test_patient_task_writes_what_the_trainers_read(tiny_petct, tiny_mri, tmp_path):
    "One patient's task (the function Dask runs) writes the entry the trainer's builder reads: same name, nothing rebuilt; its arguments pickle."
    import pickle
    from pdl1_dls.manifest import load_study
    from pdl1_dls.mri.pipeline import MRITrainConfig, PIPELINE as MRI
    from pdl1_dls.mri.preprocess import mri_cohort
    from pdl1_dls.petct.pipeline import _hyper
    from pdl1_dls.scale import _patient_task, cache_plan
    assert pickle.loads(pickle.dumps(_patient_task)) is _patient_task                  # module level: the workers import it
    for study, kw in ((load_study(tiny_petct), {}), (load_study(tiny_mri), dict(quick=True))):
        plan = cache_plan(study, cache_dir=tmp_path / study.modality, **kw)
        rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in study.table().head(2).to_dict("records")]
        args = dict(modality=plan["modality"], cache_dir=str(plan["cache_dir"]), params=plan["params"])
        assert pickle.loads(pickle.dumps((rows[0], args))) == (rows[0], args)
        recs = [_patient_task(r, **args) for r in rows]
        assert [(r["name"], r["ok"], r["reason"]) for r in recs] == [(str(r["patient_id"]), True, "") for r in rows]
        written = _files(plan["cache_dir"])
        assert len(written) == 2
        t = study.table().head(2)
        if study.modality == "petct": _hyper(study, t, plan["cache_dir"], plan["params"])   # what train_study / score call
        else: mri_cohort(t, plan["cache_dir"], MRI._params(MRITrainConfig.make(quick=True)), mmap=True)   # train_mri_study
        assert _files(plan["cache_dir"]) == written


def test_scale_never_names_a_modality():
    "scale.py holds no modality's name as a value (a branch on it would need one): the pipelines own what they cache."
    import ast
    import inspect
    import pdl1_dls.scale as S
    values = {n.value for n in ast.walk(ast.parse(inspect.getsource(S))) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not values & {"petct", "mri"}
