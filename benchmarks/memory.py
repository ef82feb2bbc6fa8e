"""Memory benchmark: PET/CT training time and peak RSS per patient at 100, 400 and 1,600 synthetic patients, the streamed
path (the default: every batch read from the memory-mapped per-patient cache) beside the plain in-memory path
(`train_study(in_memory=True)`: the whole cohort loaded and stacked), in the same run.

Run: `.venv/bin/python benchmarks/memory.py [--patients 100 400 1600] [--epochs 1] [--scale tiny]`.

A synthetic PET/CT study (`pdl1_dls.synth`, `--scale`) is generated and its hyper-images cached once. A cohort of N
training patients reuses its labelled patients in turn: patient `P00042` is a symbolic link to a source patient's image
folder, so its cache entry (the same files, hence the same key) is a copy of the source's entry under its own name; the
cache is full before the clock starts (preprocessing is benchmarked in `scale.py`). Every training runs `train_study`
(`quick`, `--epochs`, test-time augmentation off so the final scoring is one pass) in a fresh process on the CPU; its
peak RSS is that process's `ru_maxrss` (`os.wait4`), its time the wall time of `train_study`. Ratios: `stream / memory`
compares the two paths at the same N (time and RSS); `RSS x first` compares a path's peak RSS with its own at the
smallest N (flat: near 1). `same weights` says whether both paths wrote bit-identical `model.pt`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import pdl1_dls  # noqa: F401  (installed with `make install`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def source_study(folder: Path, scale: str = "tiny", seed: int = 0):
    "A synthetic PET/CT study and its filled cache: (manifest path, cache folder, labelled patient table)."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.petct.preprocess import build_hyperimages
    from pdl1_dls.synth import make_petct_study
    manifest = make_petct_study(folder / "source", scale=scale, seed=seed)
    study = load_study(manifest)
    t = study.table()
    t = t[t[study.label_column].notna()].reset_index(drop=True)
    cache = folder / "source_cache"
    hyper, skipped = build_hyperimages(t, cache, progress=False)
    return manifest, cache, t[t["patient_id"].isin(list(hyper))].reset_index(drop=True)


def cohort(folder: Path, manifest: Path, cache: Path, table, n: int) -> tuple[Path, Path]:
    "A study of `n` training patients over the source's images, and its cache filled by copying the source entries."
    import pandas as pd
    import yaml
    from pdl1_dls.manifest import load_study
    root = folder / f"cohort_{n}"
    (root / "images").mkdir(parents=True, exist_ok=True)
    ccache = folder / f"cache_{n}"; ccache.mkdir(exist_ok=True)
    entries = {f.name.rsplit("-", 1)[0]: f for f in cache.glob("*.npz")}
    src_clin = pd.read_csv(manifest.parent / "clinical.csv").set_index("patient_id")
    rows = []
    for i in range(n):
        src = str(table["patient_id"].iloc[i % len(table)])
        pid = f"P{i:05d}"
        link = root / "images" / pid
        if not link.exists(): link.symlink_to((manifest.parent / "images" / src).resolve(), target_is_directory=True)
        e = entries[src]
        shutil.copyfile(e, ccache / f"{pid}-{e.name.rsplit('-', 1)[1]}")
        rows.append(dict(src_clin.loc[src], patient_id=pid, cohort="bench_train"))
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    m = yaml.safe_load(manifest.read_text())
    for k in ("checksums", "synthetic"): m.pop(k, None)
    m.update(name=f"memory_bench_{n}", cohorts=[dict(name="bench_train", role="train", clinical="clinical.csv",
                                                     where={"cohort": "bench_train"}, outcomes={})])
    (root / "study.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    from pdl1_dls.petct.preprocess import build_hyperimages
    before = len(list(ccache.glob("*.npz")))
    build_hyperimages(load_study(root / "study.yaml").table(), ccache, progress=False, mmap=True)
    assert len(list(ccache.glob("*.npz"))) == before == n, "the copied cache entries were not found under their keys"
    return root / "study.yaml", ccache


def child(manifest: str, out: str, cache: str, epochs: int, in_memory: bool, widths: tuple | None = None):
    "One training in this process: prints a JSON line with its wall time and metrics."
    from pdl1_dls.petct import pipeline
    from pdl1_dls.petct.pipeline import train_study
    if widths:  # a narrower SResCNN: the same data path, less arithmetic per slice (a shared 2-core machine)
        import functools
        pipeline.make_model = functools.partial(pipeline.make_model, widths=tuple(widths))
    t = time.perf_counter()
    m = train_study(manifest, out, quick=True, epochs=epochs, cache_dir=cache, device="cpu", resume=False,
                    in_memory=in_memory, tta=False)
    print(json.dumps(dict(seconds=time.perf_counter() - t, n_slices=m["n_slices"], train_auc=m["train_auc"])))


def run_training(manifest: Path, out: Path, cache: Path, epochs: int, in_memory: bool, widths=None) -> dict:
    "A training in a fresh process: its seconds, metrics and peak RSS (MiB, `ru_maxrss` of that process alone)."
    cmd = [sys.executable, __file__, "--child", str(manifest), str(out), str(cache), str(epochs), str(int(in_memory)),
           ",".join(map(str, widths or ()))]
    env = {**os.environ, "PDL1_DLS_PROGRESS": "0"}
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        stdout = p.stdout.read()                              # to EOF; the process is reaped by wait4 below, not by Popen
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        p.stdout.close()
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"training failed ({' '.join(cmd)}):\n{err.read()[-2000:]}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res["rss_mib"] = ru.ru_maxrss / 1024                      # Linux: KiB
    return res


def rows(folder: Path, patients=(100, 400, 1600), epochs: int = 1, scale: str = "tiny", widths=None) -> list[dict]:
    "One row per (N, path): seconds and peak RSS, per patient, with the ratios (see the module docstring)."
    import torch
    from pdl1_dls.training import load_state
    manifest, cache, table = source_study(folder, scale)
    out, first = [], {}
    for n in patients:
        m, c = cohort(folder, manifest, cache, table, n)
        res = {}
        for in_memory in (False, True):
            shutil.rmtree(folder / f"run_{n}_{int(in_memory)}", ignore_errors=True)   # a bundle there would be reused, not trained
            res[in_memory] = run_training(m, folder / f"run_{n}_{int(in_memory)}", c, epochs, in_memory, widths)
            print(f"# {n} patients, {'in memory' if in_memory else 'streamed'}: {res[in_memory]['seconds']:.1f} s, "
                  f"peak RSS {res[in_memory]['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        a, b = (load_state(folder / f"run_{n}_{i}" / "model.pt") for i in (1, 0))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        for in_memory in (True, False):
            r = res[in_memory]
            first.setdefault(in_memory, r["rss_mib"])
            slices = sum(r["n_slices"].values())
            out.append(dict(path="in memory (stacked)" if in_memory else "streamed (memory-mapped cache)", patients=n,
                            slices=slices, seconds=r["seconds"], s_per_patient=r["seconds"] / n, rss_mib=r["rss_mib"],
                            rss_per_patient=r["rss_mib"] / n, x_time=r["seconds"] / res[True]["seconds"],
                            x_rss=r["rss_mib"] / res[True]["rss_mib"], x_first=r["rss_mib"] / first[in_memory],
                            same="yes" if same else "NO"))
        shutil.rmtree(folder / f"cache_{n}", ignore_errors=True)            # keep the disk use at one cohort's cache
    return out


def print_table(rs: list[dict], epochs: int, scale: str, widths=None):
    import torch
    net = f"SResCNN widths {tuple(widths)} (narrowed)" if widths else "SResCNN (32, 64, 128, 256)"
    print(f"# PET/CT training memory ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, CPU; {net}; quick, {epochs} epoch(s), no TTA; source study {scale}; "
          f"shared machine: load {os.getloadavg()[0]:.1f})")
    print("| path | patients | slices | seconds | s/patient | peak RSS MiB | RSS MiB/patient | time stream/memory | "
          "RSS stream/memory | RSS x first | same weights |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        print(f"| {r['path']} | {r['patients']} | {r['slices']} | {r['seconds']:.1f} | {r['s_per_patient']:.3f} | "
              f"{r['rss_mib']:.0f} | {r['rss_per_patient']:.2f} | {r['x_time']:.2f} | {r['x_rss']:.2f} | {r['x_first']:.2f} | "
              f"{r['same']} |")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        manifest, out, cache, epochs, in_memory, widths = sys.argv[2:8]
        return child(manifest, out, cache, int(epochs), bool(int(in_memory)), tuple(int(w) for w in widths.split(",") if w))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, nargs="*", default=[100, 400, 1600])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scale", default="tiny", choices=["tiny", "small", "paper"])
    ap.add_argument("--folder", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--widths", type=int, nargs=4, default=None,
                    help="narrow the SResCNN to these layer widths (same data path, less arithmetic); default: the paper's")
    a = ap.parse_args()
    if a.folder:
        rs = rows(Path(a.folder), tuple(a.patients), a.epochs, a.scale, a.widths)
    else:
        with tempfile.TemporaryDirectory(prefix="pdl1_memory_") as d:
            rs = rows(Path(d), tuple(a.patients), a.epochs, a.scale, a.widths)
    print_table(rs, a.epochs, a.scale, a.widths)


if __name__ == "__main__":
    main()
