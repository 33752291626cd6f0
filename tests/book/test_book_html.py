"""The rendered book in a real browser: every chapter shows its figures, tables and formulas, no error.

The book is built from the outputs committed in the notebooks (no re-execution: nbval already
re-executes every chapter in `make test`), then each page is opened in headless Chromium
(Debian's chromium and chromium-driver; `.ci/run` installs them). Checked on every chapter:
no image fails to load, every image output is shown, no error output, no markdown table left as
raw ``| --- |`` text and every table of a markdown output rendered as a table, every formula
typeset by MathJax, and nothing requested from the network. Checked on every built page: no
script, stylesheet or other embedded resource from http(s) (a CDN). MathJax is fetched once
from the npm registry by ``book/fetch_mathjax.py`` (as `make book` does). A screenshot of the
Figure 1 page is kept in ``_build/screenshots/``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from support import CHROMEDRIVER, CHROMIUM, ROOT, chromium_driver

SCREENSHOTS = ROOT / "_build" / "screenshots"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = toc.get("chapters", []) + [c for part in toc.get("parts", []) for c in part["chapters"]]
    return [toc["root"]] + [c["file"] for c in chapters]


def _outputs(notebook: Path) -> list[dict]:
    nb = json.loads(notebook.read_text())
    return [out for cell in nb["cells"] for out in cell.get("outputs", [])]


def _figure_count(notebook: Path) -> int:
    """Number of image outputs saved in a notebook: what its page must show."""
    return sum("image/png" in out.get("data", {}) for out in _outputs(notebook))


# The delimiter row of a markdown table, one line: |---|:-:| as written, or with its dashes turned
# into en or em dashes by Sphinx's smartquotes when the table was rendered as a paragraph.
# Both Python's re and JavaScript's RegExp read it.
_CELL = r"[ \t]*:?[-\u2013\u2014]+:?[ \t]*"
TABLE_DELIMITER = rf"^[ \t]*\|?(?:{_CELL}\|)+(?:{_CELL})?$"


def _markdown_table_count(notebook: Path) -> int:
    """Number of tables in a notebook's text/markdown outputs: tables its page must render."""
    delimiter = re.compile(TABLE_DELIMITER, re.MULTILINE)
    return sum(
        len(delimiter.findall("".join(out["data"]["text/markdown"])))
        for out in _outputs(notebook)
        if "text/markdown" in out.get("data", {})
    )


class _RemoteResources(HTMLParser):
    """Collects (tag, attribute, url) of every resource a page loads from http(s) when it opens."""

    LOADED = {
        "script": ("src",),
        "link": ("href",),
        "img": ("src", "srcset"),
        "source": ("src", "srcset"),
        "iframe": ("src",),
        "embed": ("src",),
        "video": ("src", "poster"),
        "audio": ("src",),
        "track": ("src",),
        "object": ("data",),
    }

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.LOADED.get(tag, ()) and value and re.match(r"\s*(https?:)?//", value, re.IGNORECASE):
                self.found.append((tag, name, value))


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    # MathJax is served from the book (_config.yml: html_static_path, mathjax_path): fetch it once
    fetch = subprocess.run(
        [sys.executable, str(ROOT / "book" / "fetch_mathjax.py")], capture_output=True, text=True, cwd=ROOT
    )
    assert fetch.returncode == 0, fetch.stdout[-2000:] + fetch.stderr[-2000:]
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # show the committed outputs
    config_path = out / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jb = Path(sys.executable).with_name("jupyter-book")
    run = subprocess.run(
        [
            str(jb),
            "build",
            str(ROOT),
            "--path-output",
            str(out),
            "--config",
            str(config_path),
            "-W",
            "-n",
            "--keep-going",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


BROKEN_IMAGES = "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);"
OUTPUT_IMAGES = "return document.querySelectorAll('.cell_output img').length;"
ERROR_OUTPUTS = (
    "return Array.from(document.querySelectorAll('.cell_output .output.traceback, .cell_output .ansi-red-fg,"
    " .output.error')).map(e => e.innerText.slice(0, 200));"
)
# Text outside code that holds a markdown table's delimiter row: a table rendered as a paragraph.
RAW_TABLES = (
    "const delimiter = new RegExp(arguments[0], 'm'); const found = [];"
    " const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);"
    " for (let n = walk.nextNode(); n; n = walk.nextNode()) {"
    "   if (n.parentElement.closest('pre, code, script, style, textarea')) continue;"
    "   if (delimiter.test(n.textContent)) found.push(n.parentElement.tagName + ': ' + n.textContent.slice(0, 200));"
    " } return found;"
)
# Tables of markdown outputs (those of DataFrames are inside .text_html)
MARKDOWN_TABLES = (
    "return Array.from(document.querySelectorAll('.cell_output table')).filter(t => !t.closest('.text_html')).length;"
)
# Requests to the network (failed ones included); pages opened from file:// list no local file here
REMOTE_REQUESTS = (
    "return performance.getEntriesByType('resource').map(e => e.name).filter(u => /^(https?|wss?):/i.test(u));"
)
# Formulas (Sphinx writes each into a .math element) and how many MathJax has typeset
FORMULAS = (
    "const math = Array.from(document.querySelectorAll('span.math, div.math'));"
    " return [math.length, math.filter(e => e.querySelector('mjx-container')).length,"
    " document.querySelectorAll('mjx-merror').length];"
)


def _wait_for_formulas(browser, timeout: float = 30.0) -> list[int]:
    """[formulas, typeset, TeX errors] once MathJax has typeset every formula (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        formulas, typeset, errors = browser.execute_script(FORMULAS)
        if typeset == formulas or time.monotonic() > deadline:
            return [formulas, typeset, errors]
        time.sleep(0.2)


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_renders_its_figures_and_no_errors(chapter, html, browser):
    page = html / f"{chapter}.html"
    assert page.exists(), f"{page} was not built"
    browser.get(page.as_uri())
    assert browser.execute_script(BROKEN_IMAGES) == []
    expected = _figure_count(ROOT / f"{chapter}.ipynb")
    assert browser.execute_script(OUTPUT_IMAGES) == expected
    assert browser.execute_script(ERROR_OUTPUTS) == []
    assert "Traceback (most recent call last)" not in browser.find_element("tag name", "body").text


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_renders_its_tables_and_formulas_offline(chapter, html, browser):
    browser.get((html / f"{chapter}.html").as_uri())
    assert browser.execute_script(RAW_TABLES, TABLE_DELIMITER) == []
    assert browser.execute_script(MARKDOWN_TABLES) == _markdown_table_count(ROOT / f"{chapter}.ipynb")
    formulas, typeset, errors = _wait_for_formulas(browser)
    assert (typeset, errors) == (formulas, 0), f"MathJax typeset {typeset} of {formulas} formulas, {errors} errors"
    assert browser.execute_script(REMOTE_REQUESTS) == []


def test_no_page_loads_anything_from_the_network(html):
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > len(_chapters())
    remote = {}
    for page in pages:
        parser = _RemoteResources()
        parser.feed(page.read_text(encoding="utf-8"))
        if parser.found:
            remote[str(page.relative_to(html))] = parser.found
    assert remote == {}


def test_mathjax_is_served_by_the_book_and_typesets(html, browser):
    browser.get((html / "book" / "intro.html").as_uri())  # the chapter with the most formulas
    formulas, typeset, errors = _wait_for_formulas(browser)
    assert formulas > 0 and typeset == formulas and errors == 0
    assert browser.execute_script("return document.querySelectorAll('mjx-container').length;") >= formulas
    src = browser.execute_script("return document.querySelector('script[src*=\"mathjax\"]').src;")
    assert src.startswith("file:") and "/_static/mathjax/tex-chtml.js" in src
    assert browser.execute_script("return MathJax.version;").startswith("3.")
    # the TeX web fonts came from _static/mathjax/output/chtml/fonts (a formula drawn in fallback fonts would not)
    fonts = browser.execute_script(
        "return Array.from(document.fonts).filter(f => f.family.startsWith('MJX') && f.status == 'loaded').length;"
    )
    assert fonts > 0


def test_figure_1_page_shows_the_static_and_the_interactive_map(html, browser):
    browser.get((html / "book" / "style_map.html").as_uri())
    # plotly draws into SVG once its inlined script has run: the interactive map is live. Drawing can
    # finish after the load event on a busy machine, so wait for it (up to a minute), then check
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    count = "return document.querySelectorAll('.plotly-graph-div .main-svg').length;"
    try:
        WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda b: b.execute_script(count) > 0)
    except TimeoutException:  # the assertion below says what is missing
        pass
    assert browser.execute_script(count) > 0
    points = browser.execute_script(
        "return document.querySelectorAll('.plotly-graph-div .scatterlayer .point').length;"
    )
    assert points >= 108  # every main LoRA is a hoverable point
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    figure = browser.find_elements("css selector", ".cell_output img")[0]
    browser.execute_script("arguments[0].scrollIntoView();", figure)
    assert browser.save_screenshot(str(SCREENSHOTS / "figure1.png"))


def test_a_reader_grasps_the_book_in_a_minute(html, browser):
    """Under the intro's title the box (substituted, untestable, the paper's claims by verdict), then the
    compact ledger with its details folded; no page shows the Colab cell or nbval's markers; the
    performance chapter sits in the appendix."""
    browser.get((html / "book" / "intro.html").as_uri())
    box = browser.find_elements("css selector", ".admonition")
    assert box, "no box on the intro page"
    text = box[0].text
    assert "Substituted here" in text and "Untestable here" in text and "The paper's claims here" in text
    ledger = browser.find_elements("css selector", "table.ledger")
    assert len(ledger) >= 2  # the compact claims table and its folded details (and the benchmarks')
    heads = [h.text for h in ledger[0].find_elements("css selector", "th")]
    assert heads == ["claim", "verdict", "key number", "chapter"]
    details = browser.find_element("css selector", "details")
    assert details.get_attribute("open") is None  # folded until the reader opens it
    # the box comes before the ledger on the page
    assert browser.execute_script(
        "return arguments[0].compareDocumentPosition(arguments[1]) & Node.DOCUMENT_POSITION_FOLLOWING;",
        box[0],
        ledger[0],
    )
    for chapter in _chapters():
        source = (html / f"{chapter}.html").read_text()
        assert "google.colab" not in source and "NBVAL" not in source, chapter
    sidebar = browser.find_element("css selector", "nav.bd-links, .bd-sidebar").text
    assert "Appendix" in sidebar
    assert sidebar.index("Appendix") < sidebar.index("Performance")
