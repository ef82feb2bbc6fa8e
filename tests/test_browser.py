"""Real-browser checks (Debian's chromium + chromedriver through selenium): the explorers served by Voila
react to their controls, and every page of the offline docs site loads without console errors and shows
its figures. Screenshots go to test-artifacts/. Skips with the reason when chromium, chromedriver or
selenium is missing (`make test` installs them)."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ART = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1400"]

try:
    import selenium  # noqa: F401
    _SELENIUM = None
except ImportError as e:
    _SELENIUM = str(e)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) or _SELENIUM is not None,
    reason=f"browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) "
           f"and selenium (pip): chromium={CHROMIUM}, chromedriver={DRIVER}, selenium={'missing' if _SELENIUM else 'ok'}")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="pdl1-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={profile}"]: opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    ART.mkdir(exist_ok=True)
    try: yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, step: float = 0.25):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = pred()
            if v: return v
        except Exception:   # element not there yet, stale element, ...
            pass
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _errors(drv) -> list:
    "SEVERE console messages since the last call."
    return [m["message"] for m in drv.get_log("browser") if m["level"] == "SEVERE"]


# ---------------------------------------------------------------- Voila explorers

@contextlib.contextmanager
def _served(run):
    "Voila on 127.0.0.1 serving the explorers for `run` (what `pdl1-dls explore RUN` starts); stopped on exit."
    import urllib.request
    from pdl1_dls.explore import serve
    port = _free_port()
    p = serve(run, port=port, block=False, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: urllib.request.urlopen(url + "/voila/static/voila.js", timeout=5).status == 200, 60, "Voila to start")
        yield url
    finally:
        p.terminate()
        try: p.wait(15)
        except subprocess.TimeoutExpired: p.kill(); p.wait(5)


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    "The explorers served for a small finished run."
    sys.path.insert(0, str(Path(__file__).parent))
    from test_explore import make_run
    with _served(make_run(tmp_path_factory.mktemp("voila"))) as url:
        yield url


def _img_src(drv):
    return drv.execute_script("const i=document.querySelector('.pdl1-figure'); "
                              "return i && i.naturalWidth > 0 ? i.src : null;")


def _text(drv, cls):
    return drv.execute_script(f"const e=document.querySelector('.{cls}'); return e ? e.innerText : null;")


@pytest.fixture(scope="module")
def voila_demo():
    "Voila serving the explorers for the output of `make demo` (runs/demo), as a user gets it; skips when absent."
    run = Path(os.environ.get("PDL1_DLS_DEMO_RUN", REPO / "runs" / "demo"))
    need = [run / "scores.csv", run / "models" / "hyper" / "model.pt"]
    if not all(f.is_file() for f in need):
        pytest.skip(f"no finished `make demo` output at {run} (run `make demo` first, or set PDL1_DLS_DEMO_RUN)")
    with _served(run) as url:
        yield url


@pytest.mark.slow
def test_explorers_on_make_demo_output(browser, voila_demo):
    "Both explorers open on `make demo`'s run folder with no other setup, and react to their controls."
    _check_survival(browser, voila_demo, "demo_")
    _check_gradcam(browser, voila_demo, "demo_")


def test_survival_explorer_cutoff_slider(browser, voila):
    _check_survival(browser, voila, "")


def test_gradcam_explorer_patient_choice(browser, voila):
    _check_gradcam(browser, voila, "")


def _check_survival(drv, voila, tag):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    drv.get("about:blank"); time.sleep(1); _errors(drv)     # drop messages of the page left before
    drv.get(voila + "/voila/render/survival_explorer.ipynb")
    src0 = _wait(lambda: _img_src(drv), 120, "the KM figure")
    hr0 = _wait(lambda: _text(drv, "pdl1-hr"), 10, "the HR text")
    assert "HR high DLS vs low DLS" in hr0 and "log-rank p=" in hr0
    drv.save_screenshot(str(ART / f"{tag}voila_survival_before.png"))
    handle = drv.find_element(By.CSS_SELECTOR, ".pdl1-cutoff .noUi-handle")
    ActionChains(drv).click_and_hold(handle).move_by_offset(-90, 0).release().perform()
    src1 = _wait(lambda: (s := _img_src(drv)) != src0 and s, 60, "the KM figure to be redrawn")
    hr1 = _wait(lambda: (t := _text(drv, "pdl1-hr")) != hr0 and t, 30, "the HR to change")
    drv.save_screenshot(str(ART / f"{tag}voila_survival_after.png"))
    assert src1 != src0 and hr1 != hr0
    errs = [e for e in _errors(drv) if "favicon" not in e]
    assert not errs, errs


def _check_gradcam(drv, voila, tag):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    drv.get("about:blank"); time.sleep(1); _errors(drv)     # drop messages of the page left before
    drv.get(voila + "/voila/render/gradcam_explorer.ipynb")
    src0 = _wait(lambda: _img_src(drv), 120, "the Grad-CAM figure")
    info0 = _text(drv, "pdl1-info")
    assert "DLS" in info0 and "cutoff" in info0
    drv.save_screenshot(str(ART / f"{tag}voila_gradcam_before.png"))
    sel = Select(drv.find_element(By.CSS_SELECTOR, ".pdl1-patient select"))
    first = sel.first_selected_option.text
    sel.select_by_index(1)
    src1 = _wait(lambda: (s := _img_src(drv)) != src0 and s, 60, "the Grad-CAM image of the other patient")
    info1 = _wait(lambda: (t := _text(drv, "pdl1-info")) != info0 and t, 30, "the patient's scores")
    drv.save_screenshot(str(ART / f"{tag}voila_gradcam_after.png"))
    assert first not in info1 and sel.first_selected_option.text in info1
    errs = [e for e in _errors(drv) if "favicon" not in e]
    assert not errs, errs


# ---------------------------------------------------------------- offline docs site

QUICK_PAGES = "71_explore,51_stats_survival,mu2021_09_fig4_prognosis,loris_nsclc_ihc,survival_explorer"


@pytest.fixture(scope="module")
def docs_site(tmp_path_factory):
    """The site to check: `_docs/` when `make docs` built it after the last notebook change (every page),
    else a quick build of a few pages (index, an executed library page with figures, one of each other kind)."""
    import json
    site = REPO / "_docs"
    newest = max(p.stat().st_mtime for p in (REPO / "nbs").rglob("*.ipynb"))
    if (site / "pages.json").is_file() and (site / "pages.json").stat().st_mtime > newest:
        return site, json.loads((site / "pages.json").read_text())
    out = tmp_path_factory.mktemp("docs") / "site"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "docs.py"), "--out", str(out), "--execute", "71_explore",
                        "--only", QUICK_PAGES], capture_output=True, text=True, timeout=400, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "pages.json").read_text())


def test_docs_pages_load_and_show_figures(browser, docs_site):
    import http.server
    import threading
    from functools import partial
    site, pages = docs_site
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    th = threading.Thread(target=srv.serve_forever, daemon=True); th.start()
    drv, seen = browser, {}
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}/"
        drv.get("about:blank"); time.sleep(1); _errors(drv)     # drop messages of a page left before (e.g. Voila's kernel shutdown)
        for p in pages:
            drv.get(base + p["page"])
            _wait(lambda: drv.execute_script("return document.readyState") == "complete", 30, f"{p['page']} to load")
            imgs = drv.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 40)]);")
            bad = [i for i in imgs if not (i[0] and i[1] > 0)]
            assert not bad, f"{p['page']}: images that did not load: {bad}"
            errs = _errors(drv)
            assert not errs, f"{p['page']}: console errors: {errs}"
            nav = drv.execute_script("return document.querySelectorAll('#pdl1-nav a').length;")
            assert nav == len(pages), f"{p['page']}: navigation has {nav} links, the site {len(pages)} pages"
            seen[p["page"]] = len(imgs)
            if p["page"] in ("index.html", "71_explore.html"):
                drv.save_screenshot(str(ART / f"docs_{p['page'].replace('/', '_').replace('.html', '')}.png"))
    finally:
        srv.shutdown()
    assert "Quick start" in open(site / "index.html").read() and "make demo" in open(site / "index.html").read()
    assert seen.get("71_explore.html", 0) >= 1          # the executed explore page shows its KM figure
