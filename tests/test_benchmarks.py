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


def test_mri_feature_rows():
    "The MRI feature benchmark: loop, bare and extract_features rows over the same tensors; the features agree."
    import mri as bench
    rows = bench.feature_rows(images=4, batches=(1, 4), repeats=1, size=128, device="cpu")
    assert [(r["what"].split(":")[0], r["batch"]) for r in rows] == [
        ("reference", 1), ("reference", 1), ("mri_models.extract_features", 1), ("reference", 4), ("mri_models.extract_features", 4)]
    assert rows[0]["x_ref"] == 1.0 and "128 px" in rows[0]["note"] and "cpu" in rows[0]["note"]
    assert all(r["unit"] == "images/s" and np.isfinite(r["per_s"]) and r["per_s"] > 0 for r in rows)
    for r in rows[2::2]:
        assert float(r["note"].rsplit(" ", 1)[1]) <= 1e-5 and r["x_bare"] > 0   # same features as one image per forward
    bench.print_table(rows, 1)
