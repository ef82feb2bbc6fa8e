"""Memory benchmark: training time and peak RSS per patient at 100, 400 and 1,600 synthetic patients, PET/CT and MRI,
the streamed path (the default: every batch read from the memory-mapped per-patient cache) beside the plain in-memory
path (`in_memory=True`: the whole cohort loaded and stacked), in the same run.

Run: `.venv/bin/python benchmarks/memory.py [--modality petct mri] [--patients 100 400 1600] [--epochs 1] [--scale tiny]`.

A synthetic study of the modality (`pdl1_dls.synth`, `--scale`) is generated and its per-patient inputs cached once.
A cohort of N training patients reuses its labelled patients in turn: patient `P00042` is a symbolic link to a source
patient's image folder, so its cache entry (the same files, hence the same key) is a copy of the source's entry under
its own name; the cache is full before the clock starts (preprocessing is benchmarked in `scale.py`). Every training
runs in a fresh process on the CPU: PET/CT `train_study` (`quick`, `--epochs`, test-time augmentation off so the final
scoring is one pass; `--widths` narrows the SResCNN), MRI `train_mri_study` (the `quick` profile: resnet18 from random
weights, 64 px slices, 48 px inputs, 2 cross-fitting members with 2 fusions each; `--epochs` CNN epochs). Its peak RSS is
that process's `ru_maxrss` (`os.wait4`), its time the wall time of the training call. Ratios: `stream / memory` compares
the two paths at the same N (time and RSS); `RSS x first` compares a path's peak RSS with its own at the smallest N
(flat: near 1). `same weights` says whether both paths wrote bit-identical weights files (the sha256s in `model.json`).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    import pdl1_dls  # noqa: F401  (installed with `make install`)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- what differs between the modalities
def _petct_build(table, cache):
    "Fill (or read) the PET/CT cache of `table`: the patients it holds."
    from pdl1_dls.petct.preprocess import build_hyperimages
    return list(build_hyperimages(table, cache, progress=False, mmap=True)[0])

def _petct_train(manifest, out, cache, epochs, in_memory, widths=None) -> dict:
    from pdl1_dls.petct import pipeline
    if widths:  # a narrower SResCNN: the same data path, less arithmetic per slice (a shared 2-core machine)
        import functools
        pipeline.make_model = functools.partial(pipeline.make_model, widths=tuple(widths))
    m = pipeline.train_study(manifest, out, quick=True, epochs=epochs, cache_dir=cache, device="cpu", resume=False,
                             in_memory=in_memory, tta=False)
    return dict(n_slices=sum(m["n_slices"].values()), train_auc=m["train_auc"])

MRI_SETTINGS = dict(quick=True)  # the quick profile (64 px slices, 48 px inputs, resnet18); --epochs sets the CNN epochs

def _mri_params():
    from pdl1_dls.mri.pipeline import PIPELINE, MRITrainConfig
    return PIPELINE._params(MRITrainConfig.make(**MRI_SETTINGS))

def _mri_build(table, cache):
    "Fill (or read) the MRI cache of `table` with the training settings' inputs: the patients it holds."
    from pdl1_dls.mri.preprocess import mri_cohort
    return mri_cohort(table, cache, _mri_params(), mmap=True)[1]["patient_id"].tolist()

def _mri_train(manifest, out, cache, epochs, in_memory, widths=None) -> dict:
    import warnings
    from pdl1_dls.mri.pipeline import train_mri_study
    warnings.simplefilter("ignore")  # random initialisation (no ImageNet weights file) is warned
    m = train_mri_study(manifest, out, epochs=epochs, cache_dir=cache, device="cpu", resume=False, in_memory=in_memory,
                        **MRI_SETTINGS)
    return dict(n_slices=9 * m["n_train"], train_auc=m["train_auc"])   # 3 sequences x 3 planes per patient


@dataclass
class Modality:
    "How the benchmark makes, caches and trains one modality (everything else is shared)."
    name: str
    kind: str  # `pdl1_dls.synth.make_study` kind
    sep: str  # between patient id and key in a cache entry's name
    build: Callable  # (table, cache) -> patient ids with a cache entry
    train: Callable  # (manifest, out, cache, epochs, in_memory, widths) -> dict(n_slices, train_auc)
    what: Callable  # (epochs, widths) -> the model, for the table's header

MODALITIES = {
    "petct": Modality("PET/CT", "petct", "-", _petct_build, _petct_train,
                      lambda e, w: (f"SResCNN widths {tuple(w)} (narrowed)" if w else "SResCNN (32, 64, 128, 256)")
                      + f"; quick, {e} epoch(s), no TTA"),
    "mri": Modality("MRI", "mri", "_", _mri_build, _mri_train,
                    lambda e, w: f"resnet18 (random init), quick profile: 64 px slices, 48 px inputs, {e} CNN epoch(s), "
                                 "2 members x 2 fusions; slices = 3 sequences x 3 planes per patient"),
}


# ---------------------------------------------------------------- shared
def source_study(folder: Path, mod: Modality, scale: str = "tiny", seed: int = 0):
    "A synthetic study of the modality and its filled cache: (manifest path, cache folder, labelled patient table)."
    from pdl1_dls.manifest import load_study
    from pdl1_dls.synth import make_study
    manifest = make_study(mod.kind, folder / "source", scale=scale, seed=seed)
    study = load_study(manifest)
    t = study.table()
    t = t[t[study.label_column].notna()].reset_index(drop=True)
    cache = folder / "source_cache"
    built = mod.build(t, cache)
    return manifest, cache, t[t["patient_id"].isin(built)].reset_index(drop=True)


def cohort(folder: Path, mod: Modality, manifest: Path, cache: Path, table, n: int) -> tuple[Path, Path]:
    "A study of `n` training patients over the source's images, and its cache filled by copying the source entries."
    import pandas as pd
    import yaml
    from pdl1_dls.manifest import load_study
    root = folder / f"cohort_{n}"
    (root / "images").mkdir(parents=True, exist_ok=True)
    ccache = folder / f"cache_{n}"; ccache.mkdir(exist_ok=True)
    entries = {f.name.rsplit(mod.sep, 1)[0]: f for f in cache.glob("*.npz")}
    src_clin = pd.read_csv(manifest.parent / "clinical.csv").set_index("patient_id")
    rows = []
    for i in range(n):
        src = str(table["patient_id"].iloc[i % len(table)])
        pid = f"P{i:05d}"
        link = root / "images" / pid
        if not link.exists(): link.symlink_to((manifest.parent / "images" / src).resolve(), target_is_directory=True)
        e = entries[src]
        shutil.copyfile(e, ccache / f"{pid}{mod.sep}{e.name.rsplit(mod.sep, 1)[1]}")
        rows.append(dict(src_clin.loc[src], patient_id=pid, cohort="bench_train"))
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    m = yaml.safe_load(manifest.read_text())
    for k in ("checksums", "synthetic"): m.pop(k, None)
    m.update(name=f"memory_bench_{n}", cohorts=[dict(name="bench_train", role="train", clinical="clinical.csv",
                                                     where={"cohort": "bench_train"}, outcomes={})])
    (root / "study.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    before = len(list(ccache.glob("*.npz")))
    mod.build(load_study(root / "study.yaml").table(), ccache)
    assert len(list(ccache.glob("*.npz"))) == before == n, "the copied cache entries were not found under their keys"
    return root / "study.yaml", ccache


def child(modality: str, manifest: str, out: str, cache: str, epochs: int, in_memory: bool, widths: tuple | None = None):
    "One training in this process: prints a JSON line with its wall time and metrics."
    t = time.perf_counter()
    m = MODALITIES[modality].train(manifest, out, cache, epochs, in_memory, widths)
    print(json.dumps(dict(seconds=time.perf_counter() - t, **m)))


def run_training(modality: str, manifest: Path, out: Path, cache: Path, epochs: int, in_memory: bool, widths=None) -> dict:
    "A training in a fresh process: its seconds, metrics and peak RSS (MiB, `ru_maxrss` of that process alone)."
    cmd = [sys.executable, __file__, "--child", modality, str(manifest), str(out), str(cache), str(epochs), str(int(in_memory)),
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


def weights_sha(run: Path) -> dict:
    "The sha256 that a bundle's model.json records for each of its weights files."
    meta = json.loads((run / "model.json").read_text())
    return {f: meta["files"][f] for f in meta["weights"]}


def rows(folder: Path, modality: str = "petct", patients=(100, 400, 1600), epochs: int = 1, scale: str = "tiny",
         widths=None) -> list[dict]:
    "One row per (N, path) of one modality: seconds and peak RSS, per patient, with the ratios (see the module docstring)."
    mod = MODALITIES[modality]
    folder.mkdir(parents=True, exist_ok=True)
    manifest, cache, table = source_study(folder, mod, scale)
    out, first = [], {}
    for n in patients:
        m, c = cohort(folder, mod, manifest, cache, table, n)
        res = {}
        for in_memory in (False, True):
            shutil.rmtree(folder / f"run_{n}_{int(in_memory)}", ignore_errors=True)   # a bundle there would be reused, not trained
            res[in_memory] = run_training(modality, m, folder / f"run_{n}_{int(in_memory)}", c, epochs, in_memory, widths)
            print(f"# {mod.name} {n} patients, {'in memory' if in_memory else 'streamed'}: {res[in_memory]['seconds']:.1f} s, "
                  f"peak RSS {res[in_memory]['rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
        same = weights_sha(folder / f"run_{n}_1") == weights_sha(folder / f"run_{n}_0")
        for in_memory in (True, False):
            r = res[in_memory]
            first.setdefault(in_memory, r["rss_mib"])
            out.append(dict(modality=mod.name, path="in memory (stacked)" if in_memory else "streamed (memory-mapped cache)",
                            patients=n, slices=r["n_slices"], seconds=r["seconds"], s_per_patient=r["seconds"] / n,
                            rss_mib=r["rss_mib"], rss_per_patient=r["rss_mib"] / n, x_time=r["seconds"] / res[True]["seconds"],
                            x_rss=r["rss_mib"] / res[True]["rss_mib"], x_first=r["rss_mib"] / first[in_memory],
                            same="yes" if same else "NO"))
        shutil.rmtree(folder / f"cache_{n}", ignore_errors=True)            # keep the disk use at one cohort's cache
    return out


def print_table(rs: list[dict], modality: str, epochs: int, scale: str, widths=None):
    import torch
    mod = MODALITIES[modality]
    print(f"# {mod.name} training memory ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, CPU; {mod.what(epochs, widths)}; source study {scale}; "
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
        modality, manifest, out, cache, epochs, in_memory, widths = sys.argv[2:9]
        return child(modality, manifest, out, cache, int(epochs), bool(int(in_memory)),
                     tuple(int(w) for w in widths.split(",") if w))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modality", nargs="*", default=["petct", "mri"], choices=sorted(MODALITIES))
    ap.add_argument("--patients", type=int, nargs="*", default=[100, 400, 1600])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scale", default="tiny", choices=["tiny", "small", "paper"])
    ap.add_argument("--folder", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--widths", type=int, nargs=4, default=None,
                    help="narrow the SResCNN to these layer widths (same data path, less arithmetic); default: the paper's")
    a = ap.parse_args()
    for modality in a.modality:
        if a.folder:
            rs = rows(Path(a.folder) / modality, modality, tuple(a.patients), a.epochs, a.scale, a.widths)
        else:
            with tempfile.TemporaryDirectory(prefix=f"pdl1_memory_{modality}_") as d:
                rs = rows(Path(d), modality, tuple(a.patients), a.epochs, a.scale, a.widths)
        print_table(rs, modality, a.epochs, a.scale, a.widths)


if __name__ == "__main__":
    main()
