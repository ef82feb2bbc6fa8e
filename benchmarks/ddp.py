"""DDP benchmark: the PET/CT training loop (`petct.pipeline.fit` on toy slices) in one process and under torchrun with 2 processes.

Run: `.venv/bin/python benchmarks/ddp.py [--patients 48] [--epochs 3] [--repeats 1]`.
Both paths run in the same invocation, each as a fresh subprocess (one with `python`, one with
`torchrun --standalone --nproc_per_node=2`, gloo), on the same toy data and settings; the clock covers `fit` only
(not interpreter or process-group start-up, which is in `startup s`). Rows are medians over repeats; `x 1 proc` is
the speed (training slices per second) relative to one process. On a 2-core CPU two processes share the two cores,
so this shows the cost of the distributed path, not a speed-up: gloo on one CPU machine checks correctness.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _worker(args):
    "One training (run by each rank): prints one JSON line on rank 0."
    t_start = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import torch
    from pdl1_dls.petct.pipeline import TrainConfig, fit, toy_patients
    from pdl1_dls.training import dist_context
    ctx = dist_context("cpu")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // ctx.world_size))
    data, labels = toy_patients(args.patients, slices=(4, 10), signal=1.0, seed=0)
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs + 1, batch_size=64, tta=False)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = fit(data, labels, cfg, d, device="cpu", resume=False)
        sec = time.perf_counter() - t0
    if ctx.main:
        n = sum(len(data[p]) for p in r["fit_patients"]) * r["epochs_run"]
        print(json.dumps(dict(world=ctx.world_size, seconds=sec, slices_per_s=n / sec, startup=t0 - t_start,
                              inner_auc=r["inner_auc"])), flush=True)


def _run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker: return _worker(args)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PDL1_DLS_PROGRESS="0", PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")  # spinning OpenMP threads of one process starve the other
    me = [__file__, "--worker", "--patients", str(args.patients), "--epochs", str(args.epochs)]
    paths = {"1 process": [sys.executable, *me],
             "2 processes (torchrun, gloo)": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *me]}
    res = {k: [_run(c, env) for _ in range(args.repeats)] for k, c in paths.items()}
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("seconds", "slices_per_s", "startup")} for k, v in res.items()}
    base = med["1 process"]["slices_per_s"]
    print(f"PET/CT fit, {args.patients} toy patients, {args.epochs} epochs, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}")
    print("| path | fit s | slices/s | x 1 proc | startup s | inner AUC |")
    print("|---|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['seconds']:.1f} | {m['slices_per_s']:.0f} | {m['slices_per_s'] / base:.2f} | {m['startup']:.1f} | "
              f"{res[k][0]['inner_auc']:.3f} |")


if __name__ == "__main__":
    main()
