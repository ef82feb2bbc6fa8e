"The benchmark scripts run and compare like with like (correctness only: speed is never asserted in a test)."
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_petct_benchmark_rows(tmp_path):
    import petct as bench
    pts = bench.synthetic_patients(tmp_path, n=2)
    rows = bench.preprocessing_rows(pts, repeats=1)
    assert rows[0]["note"].startswith("2/2 same kept slices")  # the plain reference and hyperimages agree on the slices
    mad = float(rows[0]["note"].split("|ref - ours| ")[1])
    assert mad < 0.05, rows[0]["note"]
    tr = bench.training_rows(n_patients=8, epochs=1, repeats=1, device="cpu")
    assert [r["part"] for r in tr] == ["training"] * 3 and tr[0]["ratio"] == 1.0
    assert all(r["unit"] == "images/s" and np.isfinite(r["per_s"]) and r["per_s"] > 0 for r in tr)
    assert "cpu" in tr[0]["note"]
