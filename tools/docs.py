#!/usr/bin/env python
"""Build the documentation site offline (no Quarto): nbdev's doc processors + nbconvert HTML, with a navigation bar.

    python tools/docs.py                       # every library notebook executed (cached), into _docs/
    python tools/docs.py --execute none        # render without executing (fast)
    python tools/docs.py --execute 51_stats_survival,71_explore --out /tmp/site

Pages: index (README quick start), one page per library module (nbs/NN_*.ipynb, executed as `nbdev-test` runs
them: `#| eval: false` and `slow`/`notest` cells skipped, outputs cached in .cache/docs keyed by the notebook and
its module), the reproduction notebooks (executed copies from a `pdl1-dls reproduce` run in runs/ when there is
one, else the source with a note), the real-data notebooks and the explorers (source, with a note). Nothing is
fetched from the internet: the pages reference no CDN. Where Quarto exists, `nbdev-docs` builds the full nbdev
site from nbs/_quarto.yml instead.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import sys
import time
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"

CSS = """
body{margin:0;font-family:system-ui,-apple-system,'Segoe UI',sans-serif}
#pdl1-nav{position:fixed;top:0;left:0;bottom:0;width:250px;overflow-y:auto;background:#f6f8fa;border-right:1px solid #ddd;
 padding:12px 10px;font-size:13px;box-sizing:border-box}
#pdl1-nav h2{font-size:15px;margin:4px 0 10px}#pdl1-nav h3{font-size:12px;text-transform:uppercase;color:#555;margin:14px 0 4px}
#pdl1-nav a{display:block;padding:2px 4px;color:#0550ae;text-decoration:none;border-radius:3px}
#pdl1-nav a.current{background:#dbe9ff;font-weight:600}#pdl1-nav a:hover{background:#e8eef6}
#pdl1-main{margin-left:260px;padding:8px 24px;max-width:1100px}
.pdl1-note{border-left:4px solid #d4a72c;background:#fff8c5;padding:8px 12px;margin:10px 0}
.pdl1-fail{border-left:4px solid #cf222e;background:#ffebe9;padding:8px 12px;margin:10px 0}
"""


# ------------------------------------------------------------------ pages

def page_list(run_dir: Path | None) -> list[dict]:
    "Every page of the site: section, source notebook (or README), output name, how to render it."
    pages = [dict(section="Start", title="Quick start", src=REPO / "README.md", out="index.html", kind="readme")]
    lib = list(NBS.glob("[0-9]*.ipynb")) + [p for sub in ("petct", "mri", "papers") for p in (NBS / sub).glob("[0-9]*.ipynb")]
    for nb in sorted(lib, key=lambda p: p.name):                      # data-flow order across the subfolders
        m = re.search(r'"#\s+([^"\\]+?)\s*(?:\\n)?"', nb.read_text())    # the page title: the first '# heading'
        pages.append(dict(section="Library", title=m.group(1) if m else nb.stem, src=nb, out=f"{nb.stem}.html", kind="library"))
    for sub, section, kind in (("reproduce", "Reproduction", "reproduce"), ("real", "Real data", "real"),
                               ("explore", "Explorers", "explore")):
        for nb in sorted((NBS / sub).glob("*.ipynb")):
            if nb.name.startswith((".", "_")): continue
            pages.append(dict(section=section, title=nb.stem, src=nb, out=f"{sub}/{nb.stem}.html", kind=kind))
    return pages


def find_demo_run(runs: Path = REPO / "runs") -> Path | None:
    "The most recent run folder with executed reproduction notebooks (runs/demo preferred)."
    cands = [d for d in runs.glob("*") if (d / "notebooks").is_dir() and any((d / "notebooks").glob("*.ipynb"))]
    if not cands: return None
    demo = [d for d in cands if d.name == "demo"]
    return demo[0] if demo else max(cands, key=lambda d: d.stat().st_mtime)


# ------------------------------------------------------------------ execution (as nbdev-test does), cached

def _module_of(nb_path: Path) -> Path | None:
    m = re.search(r"#\|\s*default_exp\s+([\w.]+)", nb_path.read_text())
    if not m: return None
    p = REPO / "pdl1_dls" / (m.group(1).replace(".", "/") + ".py")
    return p if p.is_file() else None


def exec_key(nb_path: Path) -> str:
    "Cache key of a notebook's executed outputs: the notebook and the module it exports."
    h = hashlib.sha256(nb_path.read_bytes())
    mod = _module_of(nb_path)
    if mod is not None: h.update(mod.read_bytes())
    return h.hexdigest()[:20]


def _execute(args) -> tuple[str, str | None, float]:
    "Run one notebook's testable cells in a fresh IPython shell (worker process); write it with outputs to dst."
    src, dst, timeout = args
    os.environ["IN_TEST"] = "1"
    os.environ.setdefault("MPLBACKEND", "agg")
    from execnb.shell import CaptureShell
    from fastcore.nbio import write_nb
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    src, dst = Path(src), Path(dst)
    t0 = time.time()
    cfg = get_config(src.parent)
    flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    nb = NBProcessor(src, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, flags)
    sys.path.insert(0, str(REPO))
    k = CaptureShell(src)
    cwd = os.getcwd()
    try:
        os.chdir(src.parent)
        k.run_all(nb, exc_stop=True, preproc=skip, cell_timeout=timeout)
        err = None
    except Exception as e:
        err = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
    finally:
        os.chdir(cwd)
    if err is None:
        for c in nb.cells: c.pop("directives_", None)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".part")
        write_nb(nb, tmp)
        os.replace(tmp, dst)
    return str(src), err, time.time() - t0


def execute_all(nbs: list[Path], cache: Path, n_workers: int = 2, timeout: int = 600, log=print) -> dict:
    "Executed copy of each notebook (from the cache when unchanged): {path: executed path or error string}."
    todo, res = [], {}
    for nb in nbs:
        dst = cache / f"{nb.stem}-{exec_key(nb)}.ipynb"
        if dst.is_file(): res[nb] = dst
        else: todo.append((str(nb), str(dst), timeout))
    if todo:
        log(f"executing {len(todo)} notebook(s) with {n_workers} worker(s) ({len(res)} cached)")
        def one(job):   # each notebook in its own interpreter: a crash or a leaked thread cannot take the build down
            src, dst, tmo = job
            t0 = time.time()
            r = subprocess.run([sys.executable, __file__, "--exec-one", src, dst, str(tmo)], capture_output=True, text=True)
            err = None if r.returncode == 0 else (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or ["failed"])[-1]
            return src, err, time.time() - t0
        with ThreadPoolExecutor(max_workers=max(1, n_workers)) as ex:
            for src, err, secs in ex.map(one, todo):
                log(f"  {Path(src).name}: {'ok' if err is None else 'FAILED: ' + err} ({secs:.0f} s)")
                res[Path(src)] = err if err is not None else Path(next(d for s, d, _ in todo if s == src))
    return res


# ------------------------------------------------------------------ rendering

def _md_cell(text: str, cls: str = "pdl1-note") -> dict:
    import nbformat
    return nbformat.v4.new_markdown_cell(f"<div class='{cls}'>\n\n{text}\n\n</div>")


def _title_and_desc(nb) -> tuple[str | None, str | None]:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.match(r"\s*#\s+(.+)", c.source)
            if m:
                d = re.search(r"^>\s*(.+)$", c.source, re.M)
                return m.group(1).strip(), d.group(1).strip() if d else None
            return None, None
    return None, None


def _nbdev_process(nb_path: Path, nb):
    "nbdev's doc processors (show_doc for exported names, hide/export directives, ...) on an in-memory notebook."
    from nbdev.processors import FilterDefaults, exec_show_docs
    from nbdev.process import NBProcessor

    class tolerant_exec_show_docs(exec_show_docs):
        "nbdev's show_doc executor, which also runs example cells with imports; a failing example does not stop the page."
        def __call__(self, cell):
            try: super().__call__(cell)
            except Exception:
                if hasattr(self, "k"): self.k.exc = None
    procs = [tolerant_exec_show_docs if p is exec_show_docs else p for p in FilterDefaults().procs()]
    cwd = os.getcwd()
    try:
        os.chdir(nb_path.parent)
        os.environ["IN_TEST"] = "1"
        p = NBProcessor(nb_path, procs=procs, nb=nb, rm_directives="quarto")
        p.process()
        return p.nb
    finally:
        os.environ.pop("IN_TEST", None)
        os.chdir(cwd)


def _to_plain_nb(nb):
    "A clean nbformat notebook from fastcore's AttrDict notebook (drops processor bookkeeping)."
    import nbformat
    d = json.loads(json.dumps(nb, default=lambda o: None))
    cells = []
    for c in d.get("cells", []):
        for k in [k for k in c if k not in _CELL_KEYS]: c.pop(k)
        c["metadata"] = {k: v for k, v in (c.get("metadata") or {}).items() if k in ("tags", "jupyter")}
        if isinstance(c.get("source"), list): c["source"] = "".join(c["source"])
        if c["cell_type"] == "raw" and c["source"].lstrip().startswith("---"):   # nbdev's Quarto front matter
            import yaml
            try: fm = yaml.safe_load(c["source"].strip().strip("-")) or {}
            except yaml.YAMLError: fm = {}
            c = dict(cell_type="markdown", metadata={}, source=f"# {fm.get('title', '')}" + (f"\n\n> {fm['description']}" if fm.get("description") else ""))
            if not fm.get("title"): continue
        for o in c.get("outputs", []):         # Quarto link attributes of show_doc's "source" link -> plain HTML
            md = o.get("data", {}).get("text/markdown")
            if md is not None:
                md = "".join(md) if isinstance(md, list) else md
                o["data"]["text/markdown"] = re.sub(r'\[source\]\(([^)]+)\)\{target="_blank" style="([^"]*)"\}',
                                                    r'<a href="\1" target="_blank" style="\2">source</a>', md)
        if c["cell_type"] == "code":          # Quarto cell options nbconvert does not know: apply them here
            lines = c["source"].splitlines()
            opts = dict(m.groups() for m in (re.match(r"#\|\s*([\w-]+)\s*:\s*(.*?)\s*$", l) for l in lines) if m)
            c["source"] = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
            if opts.get("include") == "false": continue
            if opts.get("echo") == "false": c["metadata"].setdefault("tags", []).append("remove_input")
            if opts.get("output") == "false": c["outputs"] = []
            if not c["source"] and not c.get("outputs"): continue
        cells.append(c)
    d["cells"] = cells
    for c in cells:
        if c["cell_type"] == "code":
            c.setdefault("outputs", []); c.setdefault("execution_count", None)
        else:
            c.pop("outputs", None); c.pop("execution_count", None)
        if isinstance(c.get("source"), list): c["source"] = "".join(c["source"])
    d.setdefault("metadata", {}); d["metadata"].pop("widgets", None)   # else nbconvert loads the widget manager from unpkg
    d.setdefault("nbformat", 4); d.setdefault("nbformat_minor", 5)
    return nbformat.from_dict(d)


_CELL_KEYS = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}
_EXT = re.compile(r"""<(script|link)\b[^>]*(?:src|href)\s*=\s*["']https?://[^"']*["'][^>]*>(?:\s*</script>)?""", re.I)


def _nav(pages: list[dict], current: dict) -> str:
    depth = current["out"].count("/")
    up = "../" * depth
    parts, section = ["<nav id='pdl1-nav'><h2>pdl1_dls</h2>"], None
    for p in pages:
        if p["section"] != section:
            section = p["section"]; parts.append(f"<h3>{html.escape(section)}</h3>")
        cls = " class='current'" if p is current else ""
        parts.append(f"<a href='{up}{p['out']}'{cls}>{html.escape(p['title'])}</a>")
    parts.append("</nav>")
    return "".join(parts)


def render_page(page: dict, nb, pages: list[dict], out: Path):
    "Convert a notebook to one standalone HTML page (no external resources) with the navigation bar."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config
    cfg = Config()
    cfg.TagRemovePreprocessor.remove_input_tags = {"remove_input"}
    cfg.TagRemovePreprocessor.remove_cell_tags = {"remove_cell", "hide"}
    cfg.TagRemovePreprocessor.enabled = True
    ex = HTMLExporter(template_name="lab", config=cfg)
    ex.register_preprocessor(TagRemovePreprocessor(config=cfg), enabled=True)
    ex.exclude_input_prompt = True
    ex.exclude_output_prompt = True
    body, _ = ex.from_notebook_node(nb, resources={"metadata": {"name": page["title"]}})
    body = _EXT.sub("", body)
    body = re.sub(r"<title>.*?</title>", f"<title>pdl1_dls: {html.escape(page['title'])}</title>", body, count=1, flags=re.S)
    body = body.replace("</head>", f"<link rel='icon' href='data:,'><style>{CSS}</style></head>", 1)
    body = re.sub(r"<body([^>]*)>", lambda m: f"<body{m.group(1)}>{_nav(pages, page)}<div id='pdl1-main'>", body, count=1)
    body = body.replace("</body>", "</div></body>", 1)
    dst = out / page["out"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(body)


def build(out: str | Path = REPO / "_docs",  # output folder (replaced)
          execute: str = "all",  # "all", "none", or comma-separated notebook stems to execute
          cache: str | Path = REPO / ".cache" / "docs",  # executed-notebook cache
          run_dir: str | Path | None = None,  # run with executed reproduction notebooks; default: found in runs/
          n_workers: int = 2,  # notebooks executed at once
          timeout: int = 600,  # seconds per cell
          only: str | None = None,  # comma-separated notebook stems: build only these pages (and the index)
          log=print,
         ) -> dict:
    "Build the offline site; returns {'pages': [...], 'failed': [...], 'out': path}."
    import warnings
    import nbformat
    warnings.filterwarnings("ignore", message="Found cells containing imports")
    warnings.filterwarnings("ignore", message="Cell is missing an id field")
    t0 = time.time()
    out = Path(out)
    run = Path(run_dir) if run_dir else find_demo_run()
    pages = page_list(run)
    if only:
        keep = {s.strip() for s in only.split(",")}
        pages = [p for p in pages if p["kind"] == "readme" or p["src"].stem in keep]
    libs = [p["src"] for p in pages if p["kind"] == "library"]
    want = libs if execute == "all" else [] if execute in ("none", "") else \
        [n for n in libs if n.stem in {s.strip() for s in execute.split(",")}]
    executed = execute_all(want, Path(cache), n_workers, timeout, log) if want else {}
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    failed = []
    for page in pages:
        src, notes = page["src"], []
        if page["kind"] == "readme":
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(src.read_text())])
            render_page(page, nb, pages, tmp); continue
        if page["kind"] == "library":
            r = executed.get(src)
            if isinstance(r, Path): nb_path = r
            else:
                nb_path = src
                if isinstance(r, str):
                    failed.append(dict(page=page["title"], error=r))
                    notes.append((f"Executing this notebook failed ({html.escape(r)}); shown without outputs.", "pdl1-fail"))
                else:
                    notes.append(("Shown without outputs (built with `--execute none`).", "pdl1-note"))
            from fastcore.nbio import read_nb
            nb = _to_plain_nb(_nbdev_process(src, read_nb(nb_path)))
        else:
            nb_path = src
            if page["kind"] == "reproduce":
                ex = run / "notebooks" / src.name if run else None
                if ex is not None and ex.is_file():
                    nb_path = ex
                    notes.append((f"Executed by `pdl1-dls reproduce` in `{run.relative_to(REPO) if run.is_relative_to(REPO) else run}`.", "pdl1-note"))
                else:
                    notes.append(("Not executed here: run `make demo` (or `pdl1-dls reproduce`) and rebuild the docs "
                                  "to see this notebook's outputs on the synthetic demo study.", "pdl1-note"))
            elif page["kind"] == "real":
                notes.append(("Real-data notebook, shown without outputs: it runs on the public data in `../shared/data` "
                              "(or `$PDL1_DLS_DATA`); see the README.", "pdl1-note"))
            else:
                notes.append(("Interactive explorer: `pdl1-dls explore RUN_DIR` serves it with Voila "
                              "(after `make demo`: `pdl1-dls explore runs/demo`).", "pdl1-note"))
            nb = nbformat.read(nb_path, as_version=4)
        pos = 1 if nb.cells and nb.cells[0].cell_type in ("markdown", "raw") else 0
        for i, (txt, cls) in enumerate(notes): nb.cells.insert(pos + i, _md_cell(txt, cls))
        render_page(page, nb, pages, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    (out / "pages.json").write_text(json.dumps([dict(title=p["title"], section=p["section"], page=p["out"]) for p in pages], indent=1))
    log(f"docs: {len(pages)} pages in {out} ({time.time() - t0:.0f} s); {len(failed)} notebook(s) failed to execute")
    for f in failed: log(f"  failed: {f['page']}: {f['error']}")
    return dict(pages=[p["out"] for p in pages], failed=failed, out=str(out))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--exec-one"]:                       # worker: execute one notebook
        src, err, secs = _execute((argv[1], argv[2], int(argv[3])))
        if err: print(err)
        return 1 if err else 0
    ap = argparse.ArgumentParser(description="Build the pdl1_dls docs offline (nbdev processors + nbconvert).")
    ap.add_argument("--out", default=str(REPO / "_docs"))
    ap.add_argument("--execute", default="all", help="all | none | comma-separated notebook stems (e.g. 51_stats_survival)")
    ap.add_argument("--cache", default=str(REPO / ".cache" / "docs"))
    ap.add_argument("--run", default=None, help="run folder with executed reproduction notebooks (default: runs/demo or the newest)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    ap.add_argument("--only", default=None, help="comma-separated notebook stems: build only these pages (and the index)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a notebook fails to execute")
    a = ap.parse_args(argv)
    r = build(a.out, a.execute, a.cache, a.run, a.workers, a.timeout, a.only)
    return 1 if a.strict and r["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
