"""Scale benchmark: PET/CT hyper-image preprocessing (patients/s) on Dask with 1 and 2 workers, next to the plain serial path.

Run: `.venv/bin/python benchmarks/scale.py [--manifest data_manifests/demo_petct.yaml] [--patients 48] [--repeats 3]`.
The first `--patients` patients of the manifest's study (the demo PET/CT study is generated when absent) go through
three paths in the same run, each into a fresh cache folder per repeat:

- reference: `build_hyperimages` in this process, one patient after the other (the path `train` takes without `--workers`);
- `preprocess_study`-style tasks (`scale.map_tasks` over `scale._patient_task`) on a local cluster of 1 and of 2
  single-threaded workers, started before the clock (their start-up time is in the note).

Every row is a median over repeats; `x ref` is speed relative to the reference, `x 1 worker` relative to one worker;
`identical` says whether every cache file of that path has the reference's name and bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import pdl1_dls  # noqa: F401  (installed with `make install`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pdl1_dls import scale
from pdl1_dls.manifest import load_study
from pdl1_dls.petct.preprocess import build_hyperimages

REPO = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob("*.npz"))}


def preprocessing_rows(manifest, n_patients: int = 48, repeats: int = 3, workers=(1, 2), folder: Path | None = None) -> list[dict]:
    "One row per path (reference, then each worker count): median seconds, patients/s, ratios, byte identity."
    study = load_study(manifest)
    plan = scale.cache_plan(study)
    table = study.table().head(n_patients)
    rows_in = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in table.to_dict("records")]
    names = [str(r["patient_id"]) for r in rows_in]
    folder = Path(folder or tempfile.mkdtemp(prefix="pdl1_scale_"))
    times, ref_files = [], None
    for k in range(repeats):
        d = folder / f"reference_{k}"
        t = time.perf_counter()
        hyper, skipped = build_hyperimages(table, d, progress=False, **plan["params"])
        times.append(time.perf_counter() - t)
        assert len(hyper) + len(skipped) == len(table)
        ref_files = ref_files or _files(d)
    ref = statistics.median(times)
    out = [dict(what="reference: build_hyperimages in this process", patients=len(table), workers="-", seconds=ref,
                per_s=len(table) / ref, x_ref=1.0, x_one=float("nan"), identical="yes",
                note=f"{len(ref_files)} cache files; torch threads {__import__('torch').get_num_threads()}")]
    one = None
    for n in workers:
        t = time.perf_counter()
        with scale.dask_client(workers=n) as client:
            start = time.perf_counter() - t
            client.run(scale.pin_threads)                      # warm: every worker imported torch and SimpleITK
            times, same = [], True
            for k in range(repeats):
                d = folder / f"workers{n}_{k}"
                t = time.perf_counter()
                res = scale.map_tasks(client, scale._patient_task, rows_in, names, desc=f"{n} worker(s)",
                                      modality=plan["modality"], cache_dir=str(d), params=plan["params"])
                times.append(time.perf_counter() - t)
                same = same and _files(d) == ref_files
            failed = sum(not r["ok"] for r in res)
        sec = statistics.median(times)
        one = one or sec
        out.append(dict(what=f"preprocess_study, {n} worker(s)", patients=len(table), workers=n, seconds=sec,
                        per_s=len(table) / sec, x_ref=ref / sec, x_one=one / sec, identical="yes" if same else "NO",
                        note=f"cluster start {start:.1f} s; {failed} failed"))
    return out


def print_table(rows: list[dict], repeats: int):
    print(f"# PET/CT preprocessing on Dask ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"median of {repeats}; shared machine: load {os.getloadavg()[0]:.1f})")
    print("| what | patients | workers | seconds | patients/s | x ref | x 1 worker | identical | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        x1 = "" if r["x_one"] != r["x_one"] else f"{r['x_one']:.2f}"
        print(f"| {r['what']} | {r['patients']} | {r['workers']} | {r['seconds']:.2f} | {r['per_s']:.2f} | {r['x_ref']:.2f} | {x1} | "
              f"{r['identical']} | {r['note']} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", default=str(REPO / "data_manifests" / "demo_petct.yaml"))
    ap.add_argument("--patients", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdl1_scale_") as d:
        rows = preprocessing_rows(a.manifest, a.patients, a.repeats, tuple(a.workers), Path(d))
    print_table(rows, a.repeats)


if __name__ == "__main__":
    main()
