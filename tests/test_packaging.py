"The project as a new user meets it: settings, environment.yml, exported library in step, a wheel that works on its own."
import configparser
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_settings_ini_mirrors_defaults():
    from pdl1_dls.core import DEFAULT_SETTINGS, get_settings
    s = get_settings(REPO / "settings.ini")
    assert s.as_dict() == DEFAULT_SETTINGS
    cp = configparser.ConfigParser(); cp.read(REPO / "settings.ini")
    assert set(cp["pdl1_dls"]) == set(DEFAULT_SETTINGS)


def test_settings_override_and_errors(tmp_path, monkeypatch):
    from pdl1_dls.core import PDL1Error, get_settings
    p = tmp_path / "settings.ini"
    p.write_text("[pdl1_dls]\nseed = 42\nn_boot = 200\n")
    monkeypatch.setenv("PDL1_DLS_SETTINGS", str(p))
    s = get_settings()
    assert s.seed == 42 and s.n_boot == 200 and s.source == str(p)
    assert get_settings(seed=1).seed == 1
    p.write_text("[pdl1_dls]\nsed = 42\n")
    with pytest.raises(PDL1Error, match="unknown setting 'sed'"):
        get_settings()


def _norm(req):
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    want = {_norm(r) for r in proj["dependencies"] + proj["optional-dependencies"]["dev"]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = {_norm(r) for r in pip if not r.startswith("-e")}
    assert have == want, f"only in environment.yml: {have - want}; only in pyproject.toml: {want - have}"


def test_torch_pinned_for_ci():
    c = (REPO / "constraints.txt").read_text()
    assert "torch==2.14.1" in c and "torchvision==0.29.1" in c


LOCK = REPO / "requirements-x86_64.lock"  # `make lock` writes it; `make install` installs exactly it (x86_64)


def _lock_pins():
    "{canonical name: version} of every `name==version` line in the lock."
    from packaging.utils import canonicalize_name
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line[:1].isalnum():
            name, _, version = line.split(" ")[0].partition("==")
            assert version, f"{LOCK.name}: not pinned with ==: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_lock_satisfies_pyproject():
    "Every requirement of pyproject.toml (main + dev) and every pin of constraints.txt holds for the lock's version; every pin has a hash."
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    pins = _lock_pins()
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    cons = [l for l in (REPO / "constraints.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    bad = []
    for r in map(Requirement, proj["dependencies"] + proj["optional-dependencies"]["dev"] + cons):
        v = pins.get(canonicalize_name(r.name))
        if v is None or not r.specifier.contains(v, prereleases=True): bad.append(f"{r} (lock: {v})")
    assert not bad, f"{LOCK.name} out of step with pyproject.toml/constraints.txt (run `make lock`): {bad}"
    assert {"pip", "setuptools", "torch", "torchvision"} <= set(pins)
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    unhashed = [b.split(" ")[0] for b in blocks if b[:1].isalnum() and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without a hash: {unhashed}"


def _lock_env():
    "None when the running environment was made by `make install` from the lock as it is now, else why not."
    stamp = Path(sys.prefix) / ".installed"
    if not stamp.exists():
        return f"not an environment made by `make install` (no {stamp}): a user's own environment need not be the lock"
    if LOCK.name not in stamp.read_text():
        return f"{stamp} names no lock ({stamp.read_text().strip()!r}): only x86_64 installs from {LOCK.name}"
    return None


def test_environment_is_the_lock():
    "The environment `make install` built is exactly the lock: every locked package at its version, nothing else (but pdl1_dls)."
    import hashlib
    import importlib.metadata as md
    import sysconfig
    from packaging.utils import canonicalize_name
    why = _lock_env()
    if why: pytest.skip(why)
    stamp = (Path(sys.prefix) / ".installed").read_text()
    assert hashlib.sha256(LOCK.read_bytes()).hexdigest() in stamp, \
        f"{sys.prefix} was installed from another {LOCK.name} than this one: run `make install`"
    pins = _lock_pins()
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    have = {}
    for d in md.distributions(path=site):
        name = canonicalize_name(d.metadata["Name"])
        assert name not in have, f"{name} installed twice in {site}"
        have[name] = d.version
    assert have.pop("pdl1-dls", None), "pdl1_dls itself is not installed"
    wrong = {n: f"{have[n]} (lock: {v})" for n, v in pins.items() if n in have and have[n] != v}
    missing = sorted(set(pins) - set(have))
    extra = sorted(set(have) - set(pins))
    assert not (wrong or missing or extra), f"not the lock: wrong versions {wrong}, missing {missing}, not in the lock {extra}"


def test_nbdev_export_matches_committed_library(tmp_path):
    "Exporting the notebooks afresh reproduces pdl1_dls/*.py exactly."
    w = tmp_path / "w"
    shutil.copytree(REPO / "nbs", w / "nbs", symlinks=True)
    shutil.copy(REPO / "pyproject.toml", w)
    shutil.copytree(REPO / "pdl1_dls", w / "pdl1_dls", symlinks=True)
    for f in (w / "pdl1_dls").rglob("*.py"):
        if f.name != "__init__.py" or f.parent == w / "pdl1_dls": f.unlink()
    shutil.copy(REPO / "pdl1_dls/__init__.py", w / "pdl1_dls/__init__.py")
    nbdev_export = Path(sys.executable).parent / "nbdev-export"
    r = subprocess.run([str(nbdev_export)], cwd=w, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    committed = sorted(p.relative_to(REPO) for p in (REPO / "pdl1_dls").rglob("*.py"))
    fresh = sorted(p.relative_to(w) for p in (w / "pdl1_dls").rglob("*.py"))
    assert committed == fresh
    diff = [str(p) for p in committed if (REPO / p).read_text() != (w / p).read_text()]
    assert not diff, f"notebooks and library out of step (run nbdev-export): {diff}"


def test_notebooks_are_clean():
    import json
    for nb in (REPO / "nbs").rglob("*.ipynb"):
        if ".ipynb_checkpoints" in nb.parts: continue
        d = json.loads(nb.read_text())
        for c in d["cells"]:
            assert set(c.get("metadata", {})) <= {"tags"}, f"{nb.name}: cell metadata {c['metadata']} (run nbdev-clean)"
            assert not c.get("outputs"), f"{nb.name}: saved outputs (run nbdev-clean)"


def test_docs_index_is_the_readme():
    "nbs/index.ipynb is the nbdev site's home page (and nbdev-readme's source): it must say what README.md says."
    import json
    cells = json.loads((REPO / "nbs" / "index.ipynb").read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["markdown"]
    assert "".join(cells[0]["source"]).rstrip() == (REPO / "README.md").read_text().rstrip(), \
        "nbs/index.ipynb and README.md differ: copy README.md into the index notebook's markdown cell"
    assert "make demo" in "".join(cells[0]["source"]) and "make test" in "".join(cells[0]["source"])


def test_wheel_in_clean_venv(tmp_path):
    "`pip install` of the wheel gives `import pdl1_dls`, `pdl1-dls --help` and the reproduction notebooks as package data."
    whl, src = tmp_path / "whl", tmp_path / "src"
    # build from a copy so no stale build/ folder of the checkout leaks into the wheel
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "data", ".cache", "*.egg-info", "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(whl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # dependencies come from the development environment (read-only); the package itself only from the wheel
    dev_site = Path(subprocess.check_output([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "zz_deps.pth").write_text(str(dev_site) + "\n")
    wheel = next(whl.glob("pdl1_dls-*.whl"))
    # the clean venv's own pip (pip --prefix from the dev env would uninstall the dev install of pdl1_dls)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.check_output([str(py), "-c", "import pdl1_dls, pdl1_dls.report as r; print(pdl1_dls.__file__); print(len(r.list_notebooks()))"],
                                  cwd=tmp_path, text=True, env=env).split()
    assert out[0].startswith(str(venv)), out
    n_src = len([p for p in (REPO / "nbs/reproduce").glob("*.ipynb")])
    assert int(out[1]) == n_src and n_src >= 1
    r = subprocess.run([str(venv / "bin" / "pdl1-dls"), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "reproduce" in r.stdout
