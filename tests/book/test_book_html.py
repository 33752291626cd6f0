"""The rendered book in a real browser: every chapter shows its figures, no chapter shows an error.

The book is built from the outputs committed in the notebooks (no re-execution: nbval already
re-executes every chapter in `make test`), then each page is opened in headless Chromium
(Debian's chromium and chromium-driver; `.ci/run` installs them). A screenshot of the
Figure 1 page is kept in ``_build/screenshots/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import ROOT

SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


def _chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for c in toc.get("chapters", [])]


def _figure_count(notebook: Path) -> int:
    """Number of image outputs saved in a notebook: what its page must show."""
    nb = json.loads(notebook.read_text())
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
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
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


BROKEN_IMAGES = "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);"
OUTPUT_IMAGES = "return document.querySelectorAll('.cell_output img').length;"
ERROR_OUTPUTS = (
    "return Array.from(document.querySelectorAll('.cell_output .output.traceback, .cell_output .ansi-red-fg,"
    " .output.error')).map(e => e.innerText.slice(0, 200));"
)


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


def test_figure_1_page_shows_the_static_and_the_interactive_map(html, browser):
    browser.get((html / "book" / "style_map.html").as_uri())
    # plotly draws into SVG once its inlined script has run: the interactive map is live
    svgs = browser.execute_script("return document.querySelectorAll('.plotly-graph-div .main-svg').length;")
    assert svgs > 0
    points = browser.execute_script(
        "return document.querySelectorAll('.plotly-graph-div .scatterlayer .point').length;"
    )
    assert points >= 108  # every main LoRA is a hoverable point
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    figure = browser.find_elements("css selector", ".cell_output img")[0]
    browser.execute_script("arguments[0].scrollIntoView();", figure)
    assert browser.save_screenshot(str(SCREENSHOTS / "figure1.png"))
