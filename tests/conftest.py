"Shared fixtures: the shared real data (skips with a reason when absent) and small synthetic studies."
import os
from pathlib import Path

# The test processes (two xdist workers, papermill kernels) share two cores. OpenMP threads that spin while they wait
# then steal each other's cores: two quick MRI trainings side by side took 151 s each instead of 12 s. Passive waiting
# costs ~30 % on a machine to oneself, so only the tests ask for it (before anything imports torch).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    "The shared real-data folder, or a skip that says why."
    from pdl1_dls.core import data_dir
    d = data_dir()
    if d is None:
        pytest.skip("../shared/data not found and $PDL1_DLS_DATA not set: real-data test skipped")
    return d


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setenv("PDL1_DLS_PROGRESS", "0")


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    "The papers' text (shared/seeds beside the checkout, or beside $PDL1_DLS_DATA), or a skip that says why."
    cands = [REPO.parent / "shared" / "seeds"]
    if os.environ.get("PDL1_DLS_DATA"): cands.append(Path(os.environ["PDL1_DLS_DATA"]).parent / "seeds")
    for c in cands:
        if c.is_dir(): return c
    pytest.skip("the papers' text (../shared/seeds) not found: transcription check skipped")
