"""Real-browser checks (Debian's chromium + chromedriver through selenium): the explorers served by Voila
react to their controls, and every page of the offline docs site loads without console errors and shows
its figures. Screenshots go to test-artifacts/. Browser tests skip with the reason when chromium,
chromedriver or selenium is missing (`make test` installs them).

The guards of the explorer server (token, Host header, kernel cap, stopping with `pdl1-dls`) are checked
over plain HTTP against the same live Voila: they need Voila but no browser."""
import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
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

NO_BROWSER = (None if CHROMIUM and DRIVER and _SELENIUM is None else
              f"browser tests need Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) "
              f"and selenium (pip): chromium={CHROMIUM}, chromedriver={DRIVER}, selenium={'missing' if _SELENIUM else 'ok'}")


@pytest.fixture(scope="module")
def browser():
    if NO_BROWSER: pytest.skip(NO_BROWSER)
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
def _served(run, **kw):
    "The explorers served for `run` as `pdl1-dls explore RUN` serves them (an `ExplorerServer`); stopped on exit."
    pytest.importorskip("voila")
    from pdl1_dls.explore import serve
    with serve(run, port=_free_port(), block=False, quiet=True, **kw) as srv:
        yield srv
    assert not srv.tmp.exists()


@pytest.fixture(scope="module")
def voila_run(tmp_path_factory):
    "A small finished run (made as test_explore does)."
    sys.path.insert(0, str(Path(__file__).parent))
    from test_explore import make_run
    return make_run(tmp_path_factory.mktemp("voila"))


@pytest.fixture(scope="module")
def voila(voila_run):
    "The explorers served for a small finished run."
    with _served(voila_run) as srv:
        yield srv


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
    with _served(run) as srv:
        yield srv


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
    drv.get(voila.url("survival_explorer.ipynb"))
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
    _leave(drv, voila)


def _check_gradcam(drv, voila, tag):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    drv.get("about:blank"); time.sleep(1); _errors(drv)     # drop messages of the page left before
    drv.get(voila.url("gradcam_explorer.ipynb"))
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
    _leave(drv, voila)


def _leave(drv, voila):
    "Leave the page: its kernel is shut down (the page's beacon is accepted), so it does not count against the cap."
    kernel = drv.execute_script("return JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId;")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in drv.get_cookies())
    url = voila.base_url + f"/api/kernels/{kernel}"
    assert _get(url, Cookie=cookie)[0] == 200
    drv.get("about:blank")
    _wait(lambda: _get(url, Cookie=cookie)[0] == 404, 30, "the page's kernel to be shut down")


# ---------------------------------------------------------------- the explorer server's guards (plain HTTP)

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw): return None


def _client(jar=None):
    "An HTTP client that never uses a proxy, never follows redirects and keeps cookies in `jar`."
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                       urllib.request.HTTPCookieProcessor(jar if jar is not None else http.cookiejar.CookieJar()))


def _get(url, client=None, method="GET", data=None, **headers):
    "(status, headers, body) of one request (`data`: a form to POST)."
    import urllib.parse
    req = urllib.request.Request(url, headers=headers, method=method,
                                 data=urllib.parse.urlencode(data).encode() if data is not None else None)
    try:
        with (client or _client()).open(req, timeout=180) as r: return r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode(errors="replace")


def _websocket(url, cookie=None):
    "Open a kernel websocket (tornado's client): 101 when it connects, else the HTTP status it was refused with."
    import asyncio
    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect
    async def go():
        try: ws = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookie} if cookie else {}, connect_timeout=30))
        except HTTPClientError as e: return e.code
        ws.close()
        return 101
    return asyncio.run(go())


NO_KERNEL = "00000000-0000-4000-8000-000000000000"


def test_voila_refuses_requests_without_the_token(voila):
    "No token (or a wrong one): the page redirects to the login form, the APIs and the kernel websocket answer 403."
    page = voila.url("survival_explorer.ipynb", token=False)
    for url in (page, page + "?token=wrong", voila.base_url + "/", voila.base_url + "/voila/tree"):
        status, headers, _ = _get(url)
        assert status == 302 and headers["Location"].startswith("/login?next="), (url, status)
    for path in ("/voila/api/contents/", f"/api/kernels/{NO_KERNEL}"):
        assert _get(voila.base_url + path)[0] == 403, path
    assert _get(voila.base_url + f"/voila/api/shutdown/{NO_KERNEL}", method="POST", data={})[0] == 403
    assert _websocket(f"ws://127.0.0.1:{voila.port}/api/kernels/{NO_KERNEL}/channels") == 403


def test_voila_refuses_a_foreign_host_header(voila):
    "DNS rebinding: any Host but 127.0.0.1/localhost/[::1] with the server's port is refused, even with the token."
    port = voila.port
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"localhost:{port + 1}", "127.0.0.1"):
        for url in (voila.url("survival_explorer.ipynb"), voila.base_url + "/voila/static/voila.js",
                    voila.base_url + f"/api/kernels/{NO_KERNEL}"):
            status, _, body = _get(url, Host=host)
            assert status == 403 and "answers only to" in body, (host, url, status)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert _get(voila.base_url + "/voila/static/voila.js", Host=host)[0] == 200, host


def test_voila_with_the_token_page_static_files_and_kernel(voila):
    """The first `?token=` request renders the page and sets the login cookie; with the cookie alone the static
    files, the kernel API and the kernel websocket work (what the page itself uses); the page's kernel is then
    shut down as the page does when it is left (a POST carrying the page's `_xsrf` cookie; refused without)."""
    jar = http.cookiejar.CookieJar()
    c = _client(jar)
    status, _, html = _get(voila.url("survival_explorer.ipynb"), c)
    assert status == 200 and "application/vnd.jupyter.widget-view+json" in html
    cookies = {k.name: k.value for k in jar}
    assert set(cookies) == {f"username-127-0-0-1-{voila.port}", "_xsrf"}, cookies
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    kernel = re.search(r'"kernelId": "([0-9a-f-]{36})"', html).group(1)
    assert _get(voila.base_url + "/voila/static/voila.js", c)[0] == 200
    status, _, body = _get(voila.base_url + f"/api/kernels/{kernel}", c)
    assert status == 200 and json.loads(body)["id"] == kernel
    ws = f"ws://127.0.0.1:{voila.port}/api/kernels/{kernel}/channels"
    assert _websocket(ws, cookie) == 101 and _websocket(ws) == 403
    shutdown = voila.base_url + f"/voila/api/shutdown/{kernel}"
    assert _get(shutdown, c, method="POST", data={})[0] == 403                          # cross-site request forgery
    assert _get(shutdown, c, method="POST", data={"_xsrf": cookies["_xsrf"]})[0] == 204
    assert _get(voila.base_url + f"/api/kernels/{kernel}", c)[0] == 404


def test_voila_kernel_cap(voila_run):
    "With max_kernels=1, a second page load while the first page's kernel lives gets 503 and says why."
    with _served(voila_run, max_kernels=1) as srv:
        c = _client()
        assert _get(srv.url("survival_explorer.ipynb"), c)[0] == 200
        status, _, body = _get(srv.url("gradcam_explorer.ipynb"), c)
        assert status == 503 and re.search(r'class="pdl1-refused">this explorer server runs at most 1 kernel', body)


def _alive(q) -> bool:
    import psutil
    try: return q.is_running() and q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error: return False


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_explore_command_leaves_nothing_behind(voila_run, tmp_path, sig):
    """`pdl1-dls explore RUN` prints the two URLs with the token once; after SIGTERM or SIGINT it exits 0, and
    after any of them (SIGKILL included: Voila watches its parent) no Voila or kernel process is left and the
    temp folder is gone."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("voila")
    port = _free_port()
    log = tmp_path / "voila.log"
    with open(log, "w") as err:
        p = subprocess.Popen([sys.executable, "-c", "import sys; from pdl1_dls.cli import main; sys.exit(main(sys.argv[1:]))",
                              "explore", str(voila_run), "--port", str(port)], stdout=subprocess.PIPE, stderr=err, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        _wait(lambda: sum("?token=" in l for l in lines) == 2, 120, "the two URLs")
        urls = [l.strip() for l in lines if "?token=" in l]
        token = urls[0].split("?token=")[1]
        assert urls == [f"http://127.0.0.1:{port}/voila/render/{n}?token={token}"
                        for n in ("survival_explorer.ipynb", "gradcam_explorer.ipynb")]
        assert len(token) >= 32 and token not in log.read_text()        # printed once, not in Voila's log
        assert _get(urls[0])[0] == 200                                   # a page: a kernel
        procs = psutil.Process(p.pid).children(recursive=True)
        voila = [q for q in procs if "voila_main" in " ".join(q.cmdline())]
        kernels = [q for q in procs if "ipykernel" in " ".join(q.cmdline())]
        assert len(voila) == 1 and len(kernels) == 1, [q.cmdline() for q in procs]
        tmp = Path(next(a.split("=", 1)[1] for a in voila[0].cmdline() if a.startswith("--PDL1Voila.owned_dir=")))
        assert tmp.name.startswith("pdl1-voila-") and tmp.is_dir()
        p.send_signal(getattr(signal, sig))
        rc = p.wait(60)
        if sig != "SIGKILL": assert rc == 0, log.read_text()[-3000:]
        _wait(lambda: not any(map(_alive, procs)), 30, "Voila and its kernel to end")
        _wait(lambda: not tmp.exists(), 10, f"{tmp} to be removed")
        with pytest.raises(OSError): socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if p.poll() is None: p.kill()


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


# ---------------------------------------------------------------- report figures

def _report_run(out: Path) -> dict:
    "A run folder with the paper figures' KM and ROC (drawn by pdl1_dls.plots and saved as the notebooks save them) and its index."
    import matplotlib
    matplotlib.use("Agg")
    import numpy as np
    from pdl1_dls.plots import PALETTE, finish, panels, plot_km, plot_roc
    from pdl1_dls.report import write_index
    rng = np.random.default_rng(1)
    n = 80
    grp = np.where(rng.random(n) < 0.5, "high DLS", "low DLS")
    tt = rng.exponential(np.where(grp == "high DLS", 20, 8)); cc = rng.exponential(25, n)
    fig, ax = panels(1, width=5.6, height=4.8)
    kp = plot_km(ax[0], np.minimum(tt, cc), (tt <= cc).astype(int), grp, order=["high DLS", "low DLS"], xlabel="PFS (months)")
    km = finish(fig, "fig4_km_pfs", out, title="PFS by DLS group")
    y = rng.integers(0, 2, 120); s = y + rng.normal(0, 1.1, 120)
    fig, ax = panels(1, width=4.6, height=4.6)
    roc = plot_roc(ax[0], y, s, "DLS", color=PALETTE["DLS"])
    roc_png = finish(fig, "fig3_roc", out, title="ROC of the DLS (95 % bootstrap band)")
    index = write_index(out, study_name="browser check", paper="mu2021")
    return dict(km=km, roc=roc_png, index=index, at_risk=kp.at_risk, auc=roc)


def test_report_and_figure_pages_in_a_browser(browser, tmp_path):
    "The KM figure, the ROC figure and the report index open in chromium (no console error, images decoded); screenshots kept."
    r = _report_run(tmp_path / "run")
    drv = browser
    drv.get("about:blank"); _errors(drv)
    shots = {}
    for name, png in (("report_km_figure", r["km"]), ("report_roc_figure", r["roc"])):
        drv.get(png.as_uri())
        size = _wait(lambda: drv.execute_script("const i=document.images[0]; return i && i.complete && i.naturalWidth > 0 ? "
                                                "[i.naturalWidth, i.naturalHeight] : null;"), 30, f"{png.name} to decode")
        assert size[0] > 400 and size[1] > 400
        drv.save_screenshot(str(ART / f"{name}.png")); shots[name] = size
    drv.get(r["index"].as_uri())
    _wait(lambda: drv.execute_script("return document.readyState") == "complete", 30, "the index to load")
    imgs = drv.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    assert sorted(imgs) == [["figures/fig3_roc.png", True], ["figures/fig4_km_pfs.png", True]]
    assert not _errors(drv)
    heads = drv.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.innerText);")
    assert "Figure: fig4_km_pfs" in heads and "Figure: fig3_roc" in heads
    for _ in range(3):                                   # the whole page in one screenshot: grow the window to the page
        h = drv.execute_script("return document.documentElement.scrollHeight;")
        if drv.execute_script("return window.innerHeight;") >= h: break
        drv.set_window_size(1280, h + (drv.get_window_size()["height"] - drv.execute_script("return window.innerHeight;")) + 20)
    drv.save_screenshot(str(ART / "report_index.png"))
    drv.set_window_size(1280, 1400)
    for f in ("report_km_figure", "report_roc_figure", "report_index"):
        assert (ART / f"{f}.png").stat().st_size > 10_000
