"""The built book in a browser: every page loads, shows its figures and logs no JavaScript error.

How, and the choices made:

* The book is built from the chapters that ``tests/test_notebooks.py`` executed earlier in
  the same session (it leaves each passing chapter in ``_build/executed/``; a hook in
  ``tests/conftest.py`` runs this file after it). The book's sources (``_config.yml`` with
  ``execute_notebooks: "off"``, ``_toc.yml``, ``book/``, the executed chapters in place of
  ``notebooks/``) are copied into a temporary folder and built there with
  ``jupyter-book build -W --keep-going``: no chapter runs twice. With execution off,
  Jupyter Book 1 (myst-nb) renders the outputs stored in the notebooks. A chapter whose
  executed copy is missing or older than its notebook (this file run on its own) is
  executed here with papermill in fast mode (a copy newer than its notebook is reused even when
  ``ccad_tutorial/`` changed since: re-running the chapters is the notebook tests' job, and
  in CI they always run first). ``make book`` still re-executes every chapter.
* plotly: the pages keep loading plotly.js from the CDN (``interactive.show_plotly``
  writes ``include_plotlyjs="cdn"``), which keeps the published book light. This machine cannot
  reach the CDN, so the browser answers the request for ``cdn.plot.ly/plotly-<version>.min.js``
  with the ``plotly.min.js`` shipped inside the installed ``plotly`` package (the same
  version, checked). Every other request that leaves the local server (MathJax, require.js
  and the widget manager from jsDelivr, the Colab badge) is aborted; the console messages
  that report exactly those aborted loads are the only ones not counted as errors.
* The browser is Debian's ``chromium`` (``/usr/bin/chromium``, or ``$CCAD_CHROMIUM``),
  driven by playwright; playwright never downloads a browser here.

Full-page screenshots land in ``_build/screenshots/`` (one per page): look at them.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "_build" / "executed"  # written by tests/test_notebooks.py
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CCAD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PLOTLY_CDN = re.compile(r"^https://cdn\.plot\.ly/plotly-(?P<version>[\w.-]+?)\.min\.js$")
BUILD_TIMEOUT_S = 600
EXECUTE_TIMEOUT_S = 900  # one chapter, when its executed copy is missing
FIGURE_TIMEOUT_MS = 20_000  # how long plotly may take to draw every figure of a page
VIEWPORT = {"width": 1280, "height": 900}  # a laptop window: the narrowest the checks allow
MAX_ASPECT = 4.0  # a figure wider than 4:1 shrinks to unreadable text in the book's column
# Known upstream errors, each matched exactly and only here. Sphinx 7.4 (Jupyter Book 1 pins
# sphinx~=7.0) writes every inline script that an extension adds after the builder starts
# twice; sphinx-thebe's `const THEBE_JS_URL = ...` then throws on its second copy (harmless:
# the first copy ran). Fixed in Sphinx 8 by sphinx-doc/sphinx#13402.
KNOWN_UPSTREAM_ERRORS = {"uncaught: Identifier 'THEBE_JS_URL' has already been declared"}
# matplotlib's text stand-in for a figure: what a kernel without an image backend stores.
LOST_FIGURE = re.compile(r"<Figure size \d+x\d+ with \d+ Axes>")


def toc_files() -> list[str]:
    """Every page of ``_toc.yml`` in book order, as written there (no suffix)."""

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    yield node[key]
            for value in node.values():
                if isinstance(value, (dict, list)):
                    yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return list(dict.fromkeys(walk(yaml.safe_load((ROOT / "_toc.yml").read_text()))))


PAGES = toc_files()
CHAPTERS = [page for page in PAGES if (ROOT / page).parent.name == "notebooks"]


# --------------------------------------------------------------------------- executed chapters


def _ran_in_this_session(session: pytest.Session, stem: str) -> bool:
    """Was a notebook test of this chapter selected in this session? It ran before this
    file (see conftest.py), so a missing executed copy means that it failed."""
    return any(
        item.get_closest_marker("notebook") and f"[{stem}]" in item.nodeid for item in session.items
    )


def _execute(notebook: Path, out: Path) -> str | None:
    """Run one chapter with papermill in fast mode into ``out``; an error message or None."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # inline figures
    env["CCAD_MODE"] = "fast"
    command = [
        sys.executable, "-m", "papermill", str(notebook), str(out), "-p", "MODE", "fast",
        "--kernel", "python3", "--cwd", str(notebook.parent), "--no-progress-bar",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=EXECUTE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"{notebook.name} ran past {EXECUTE_TIMEOUT_S} s under papermill."
    if done.returncode != 0:
        return f"{notebook.name} failed under papermill:\n{done.stderr[-3000:]}"
    return None


def executed_chapter(page: str, session: pytest.Session) -> tuple[Path | None, str | None]:
    """The executed copy of a chapter (executing it if missing or older than the notebook),
    or None and why not."""
    notebook = ROOT / f"{page}.ipynb"
    if not notebook.exists():
        return None, f"_toc.yml lists {page}, but {notebook.relative_to(ROOT)} does not exist."
    copy = EXECUTED / notebook.name
    ran = _ran_in_this_session(session, notebook.stem)
    if copy.exists() and (ran or copy.stat().st_mtime >= notebook.stat().st_mtime):
        return copy, None
    if ran:
        return None, (
            f"{notebook.name} did not pass tests/test_notebooks.py in this session "
            "(see that failure): the book cannot show its outputs."
        )
    EXECUTED.mkdir(parents=True, exist_ok=True)
    partial = EXECUTED / f"{notebook.stem}.partial.ipynb"
    error = _execute(notebook, partial)
    if error:
        partial.unlink(missing_ok=True)
        return None, error
    partial.replace(copy)
    return copy, None


def _strip_injected_parameters(src: Path, dst: Path) -> None:
    """Copy a papermill output without its "injected-parameters" cell (not in the book)."""
    nb = nbformat.read(src, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    nbformat.write(nb, dst)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def book(request, tmp_path_factory):
    """Build the book from the executed chapters, execution off: (html folder, failures)."""
    src = tmp_path_factory.mktemp("book")
    failures = {}
    chapter_dirs = {Path(page).parts[0] for page in CHAPTERS}
    for top in dict.fromkeys(Path(page).parts[0] for page in PAGES):  # book/, notebooks/
        skip = shutil.ignore_patterns("*.ipynb") if top in chapter_dirs else None
        if (ROOT / top).is_dir():
            shutil.copytree(ROOT / top, src / top, ignore=skip)
    for page in CHAPTERS:
        copy, failures[page] = executed_chapter(page, request.session)
        original = ROOT / f"{page}.ipynb"
        target = src / f"{page}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy is not None:
            _strip_injected_parameters(copy, target)
        elif original.exists():  # keep the book buildable: its page is failed below
            shutil.copy(original, target)
    if (ROOT / "_static").is_dir():  # the book's CSS
        shutil.copytree(ROOT / "_static", src / "_static")
    shutil.copy(ROOT / "_toc.yml", src / "_toc.yml")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    start = time.perf_counter()
    done = subprocess.run(
        [str(jupyter_book), "build", str(src), "-W", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"jupyter-book build failed:\n{output[-6000:]}"
    print(f"book built from the executed chapters in {time.perf_counter() - start:.0f} s")
    return src / "_build" / "html", failures


@pytest.fixture(scope="module")
def server(book):
    """The built HTML over http://127.0.0.1 (as a reader gets it, not file://)."""
    html, _ = book

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=html))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"No Chromium at {CHROMIUM}: the browser test of the book needs Debian's chromium. "
            "Install it with `apt-get install -y chromium chromium-driver` (as root), or point "
            "$CCAD_CHROMIUM at a Chromium binary. Never `playwright install`."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


# --------------------------------------------------------------------------- one page


def _plotly_js() -> tuple[str, bytes]:
    """(version, contents) of the plotly.min.js inside the installed plotly package."""
    from plotly.offline import get_plotlyjs_version

    path = Path(__import__("plotly").__file__).parent / "package_data" / "plotly.min.js"
    return get_plotlyjs_version(), path.read_bytes()


class PageLog:
    """Console errors, uncaught exceptions and the requests blocked while a page loads."""

    def __init__(self, page, base_url: str):
        self.base_url = base_url
        self.version, self.plotly_js = _plotly_js()
        self.errors: list[str] = []
        self.blocked: list[str] = []
        self.served_plotly = 0
        page.on("pageerror", self._uncaught)
        page.on("console", self._console)
        page.route("**/*", self._route)

    def _uncaught(self, exc):
        message = f"uncaught: {exc}"
        if message not in KNOWN_UPSTREAM_ERRORS:
            self.errors.append(message)

    def _route(self, route):
        url = route.request.url
        cdn = PLOTLY_CDN.match(url)
        if url.startswith(self.base_url):
            route.continue_()
        elif cdn and cdn["version"] == self.version:
            self.served_plotly += 1
            route.fulfill(status=200, content_type="text/javascript", body=self.plotly_js)
        else:  # the internet, unreachable here; a plotly.js of another version lands here too
            self.blocked.append(url)
            route.abort("blockedbyclient")

    def _console(self, message):
        if message.type != "error":
            return
        source = message.location.get("url", "")
        if message.text.startswith("Failed to load resource") and source in self.blocked:
            return  # the aborted request itself: expected offline
        self.errors.append(f"console: {message.text} ({source})")


def expected_outputs(notebook: Path) -> dict:
    """What a chapter's stored outputs should put on its page, by myst-nb's HTML priority."""
    priority = ["application/vnd.jupyter.widget-view+json", "application/javascript",
                "text/html", "image/svg+xml", "image/png", "image/gif", "image/jpeg",
                "text/markdown", "text/latex", "text/plain"]  # fmt: skip
    counts = {"images": 0, "plotly": 0, "lost_figures": 0}
    for cell in nbformat.read(notebook, as_version=4).cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or {"remove-cell", "remove-output", "remove_cell"} & set(tags):
            continue
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            shown = next((mime for mime in priority if mime in data), None)
            if shown and shown.startswith("image/"):
                counts["images"] += 1
            elif shown == "text/html" and "plotly-graph-div" in str(data[shown]):
                counts["plotly"] += str(data[shown]).count('class="plotly-graph-div"')
            elif shown == "text/plain" and LOST_FIGURE.search(str(data[shown])):
                counts["lost_figures"] += 1
    return counts


FIGURES_JS = """
() => {
  const article = document.querySelector('article') || document.body;
  const images = [...article.querySelectorAll('img')].map(img => ({
    src: img.currentSrc || img.src, width: img.naturalWidth, complete: img.complete,
    in_output: !!img.closest('.cell_output'),
  }));
  const plots = [...article.querySelectorAll('.plotly-graph-div')].map(div => ({
    id: div.id, drawn: !!div.querySelector('svg.main-svg'),
  }));
  const outputs = [...article.querySelectorAll('.cell_output')].map(o => o.innerText);
  // Markdown shown as text: a pipe table, a heading or a list marker at the start of a
  // paragraph is what a cell's Markdown looks like when it was not parsed.
  const raw = [...article.querySelectorAll('p')].map(p => p.innerText.trim())
    .filter(text => /^(\\| |#{1,6} |[-*+] \\S|\\d+\\. \\S)/.test(text))
    .map(text => text.slice(0, 100));
  const shapes = [...article.querySelectorAll('img')].filter(img => img.naturalHeight > 0)
    .map(img => ({src: (img.currentSrc || img.src).slice(-60), width: img.naturalWidth,
                  height: img.naturalHeight}));
  // code cells whose lines do not fit the column (the reader would have to scroll)
  const cut = [...article.querySelectorAll('div.cell_input pre')]
    .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
    .map(pre => pre.innerText.split('\\n').reduce((a, b) => (b.length > a.length ? b : a)));
  return {images, plots, outputs, raw, shapes, cut};
}
"""
PLOTS_DRAWN_JS = """
() => [...document.querySelectorAll('.plotly-graph-div')]
        .every(div => div.querySelector('svg.main-svg'))
"""


@pytest.mark.book
@pytest.mark.parametrize("page", PAGES)
def test_page_shows_its_figures_without_javascript_errors(page, book, server, browser):
    html, failures = book
    if failures.get(page):
        pytest.fail(failures[page])
    context = browser.new_context(viewport=VIEWPORT)
    try:
        tab = context.new_page()
        log = PageLog(tab, server)
        response = tab.goto(f"{server}/{page}.html", wait_until="load")
        assert response is not None and response.ok, f"{page}: HTTP {response and response.status}"
        try:
            tab.wait_for_function(PLOTS_DRAWN_JS, timeout=FIGURE_TIMEOUT_MS)
        except Exception:  # reported with the details below
            pass
        tab.wait_for_timeout(300)  # late console errors (plotly draws asynchronously)
        found = tab.evaluate(FIGURES_JS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=SCREENSHOTS / f"{Path(page).name}.png", full_page=True)
    finally:
        context.close()

    local = [i for i in found["images"] if i["src"].startswith((server, "data:"))]
    broken = [i["src"][:120] for i in local if not (i["complete"] and i["width"] > 0)]
    undrawn = [p["id"] for p in found["plots"] if not p["drawn"]]
    lost = [text[:80] for text in found["outputs"] if LOST_FIGURE.search(text)]
    summary = {
        "images": len(local),
        "output_images": sum(i["in_output"] for i in local),
        "plotly": len(found["plots"]),
        "plotly.js served": log.served_plotly,
        "blocked": sorted({re.sub(r"\?.*", "", u) for u in log.blocked}),
    }
    print(f"{page}: {json.dumps(summary)}")

    assert not log.errors, f"{page} logged JavaScript errors:\n" + "\n".join(log.errors)
    assert not broken, f"{page}: images that did not load: {broken}"
    assert not undrawn, (
        f"{page}: plotly figures not drawn within {FIGURE_TIMEOUT_MS} ms: {undrawn} "
        f"(plotly.js served {log.served_plotly} times; blocked: {summary['blocked']})"
    )
    assert not found["raw"], (
        f"{page} shows Markdown as text (a table, heading or list that was not parsed): "
        f"{found['raw']}"
    )
    assert not found["cut"], (
        f"{page}: code cells wider than the column at {VIEWPORT['width']} px (keep notebook "
        f"lines within 88 characters): {[line[:90] for line in found['cut']]}"
    )
    strips = [f"{i['width']}x{i['height']} ({i['src']})" for i in found["shapes"]
              if i["width"] > MAX_ASPECT * i["height"]]  # fmt: skip
    assert not strips, (
        f"{page}: figures wider than {MAX_ASPECT}:1 are unreadable in the column; lay "
        f"their panels out in a grid: {strips}"
    )
    assert not lost, (
        f"{page} shows matplotlib's text instead of figures: {lost}. The kernel drew with a "
        "non-inline backend (is MPLBACKEND=Agg set for the kernel?)."
    )
    if page in CHAPTERS:
        expected = expected_outputs(html.parent.parent / f"{page}.ipynb")
        assert expected["lost_figures"] == 0, (
            f"{page}: {expected['lost_figures']} outputs are matplotlib's text stand-in "
            "'<Figure size ...>' instead of an image: the kernel ran without the inline backend."
        )
        # Every figure the notebook holds is on the page (so a chapter with figures shows
        # at least one): an output dropped by the build (e.g. an unknown mime type) fails here.
        assert summary["output_images"] >= expected["images"], (summary, expected)
        assert summary["plotly"] == expected["plotly"], (summary, expected)
