"""Where readers run the chapters: Binder and Colab, from binder/requirements.txt (no torch).

`make test` runs nbval in a fresh virtual environment built from binder/requirements.txt
(``.venv-book``), so a chapter that needs a package the file lacks fails there. These tests check
the file itself and the Colab cell that opens every chapter: on a fresh kernel that says it is
Colab, the cell clones the repository (a local clone stands in for GitHub), asks pip for
binder/requirements.txt (a dry run: nothing is installed), moves to the chapter's folder and
makes the clone's ``lorastyle`` importable; run again in a fresh kernel (a restart), it finds the
clone and the data without cloning again.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from support import ROOT

BOOK = ROOT / "book"
# What no chapter may need: the torch side of lorastyle, which the chapters only read the results of.
HEAVY = {"torch", "torchvision", "diffusers", "peft", "transformers", "accelerate", "open-clip-torch", "timm"}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def _colab_cells() -> dict[str, str]:
    cells = {}
    for path in sorted(BOOK.glob("*.ipynb")):
        sources = [
            "".join(c["source"])
            for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code" and "google.colab" in "".join(c["source"])
        ]
        assert len(sources) == 1, f"{path.name}: {len(sources)} Colab cells, expected 1"
        cells[path.name] = sources[0]
    return cells


def test_reader_requirements_are_light_and_match_the_lock():
    pins = _pins(ROOT / "binder" / "requirements.txt")
    lock = _pins(ROOT / "requirements-lock.txt")
    assert not HEAVY & set(pins), f"binder/requirements.txt asks for {sorted(HEAVY & set(pins))}"
    for name, version in pins.items():
        assert lock.get(name) == version, f"{name}=={version} differs from requirements-lock.txt ({lock.get(name)})"
    assert {"numpy", "scikit-learn", "matplotlib", "pandas", "ipykernel"} <= set(pins)


def test_every_chapter_opens_with_the_same_colab_cell_and_the_configured_repository():
    cells = _colab_cells()
    assert len(set(cells.values())) == 1, "the Colab cells of the chapters differ"
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    (source,) = set(cells.values())
    assert re.findall(r'REPOSITORY = "([^"]+)"', source) == [url]


def _run(cells: list[str], cwd: Path) -> list[str]:
    """Execute code cells in a fresh kernel started in ``cwd``; the text each printed."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return ["".join(o.get("text", "") for o in c.outputs) for c in nb.cells]


@pytest.mark.skipif(
    subprocess.run(["git", "-C", str(ROOT), "rev-parse"], capture_output=True).returncode != 0,
    reason="needs the repository's git history (a local clone stands in for GitHub)",
)
def test_colab_cell_on_a_fresh_runtime_and_after_a_restart(tmp_path, monkeypatch):
    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    source = next(iter(_colab_cells().values()))
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    source = source.replace(f'"{url}"', repr(ROOT.as_uri()))
    monkeypatch.setenv("PIP_DRY_RUN", "1")  # pip resolves binder/requirements.txt but installs nothing
    monkeypatch.delenv("LORASTYLE_DATA", raising=False)
    pretend_colab = "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    check = (
        "import os, lorastyle\n"
        "print(os.path.realpath(lorastyle.__file__))\n"
        "print(os.path.realpath(os.getcwd()))\n"
        "print(os.path.isfile('../data/manifest.csv'))"
    )
    clone = (content / "lorastyle").resolve()
    for run in ("fresh runtime", "after a restart"):
        *_, printed = _run([pretend_colab, source, check], content)
        package, cwd, data = printed.split()
        assert Path(package) == clone / "lorastyle" / "__init__.py", run
        assert Path(cwd) == clone / "book", run
        assert data == "True", f"{run}: ../data/manifest.csv not found from the chapter's folder"
    # and a second run of the cell in the same kernel stays where it is
    *_, printed = _run([pretend_colab, source, source, check], content)
    assert Path(printed.split()[1]) == clone / "book"
