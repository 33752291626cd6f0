"""The package's architecture as rules a test can check.

* the numpy core (io, descriptors, embedding, metrics, index, cli) never imports torch, matplotlib
  or pandas, so ``lorastyle inspect`` starts fast and the core installs light;
* the pipeline (collection) never imports the book's helpers; nothing imports a chapter or the fuzzer;
* every public module lists its public functions and classes in ``__all__``, and each public
  function that takes parameters documents them in a numpydoc ``Parameters`` section.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lorastyle

PACKAGE = Path(lorastyle.__file__).resolve().parent
# What `lorastyle inspect`, `index` and `similar` import: not even scikit-learn (which imports pandas).
CORE = ("lorastyle.index", "lorastyle.cli", "lorastyle.io", "lorastyle.descriptors")
HEAVY = ("torch", "matplotlib", "pandas", "diffusers", "sklearn", "plotly")
# The estimator and the metrics build on scikit-learn, but never on the torch or plotting side.
SKLEARN_CORE = ("lorastyle.embedding", "lorastyle.metrics")
TORCH_SIDE = ("torch", "matplotlib", "diffusers", "plotly")


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        names.append(".".join(parts))
    return names


def _imports(path: Path) -> set[str]:
    """Absolute names of the lorastyle modules a file imports (at any level of the file)."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


@pytest.mark.parametrize("modules, heavy", [(CORE, HEAVY), (SKLEARN_CORE, TORCH_SIDE)])
def test_the_core_imports_no_heavy_library(modules, heavy):
    code = (
        "import json, sys\n"
        f"import {', '.join(modules)}\n"
        f"print(json.dumps([m for m in {list(heavy)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "collection").rglob("*.py")), ids=lambda p: p.name)
def test_the_pipeline_never_imports_the_book_helpers(path):
    assert not [m for m in _imports(path) if m.startswith("lorastyle.book")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_imports_no_chapter_and_no_tool(path):
    assert not [m for m in _imports(path) if m.startswith(("tools", "book", "tests", "benchmarks"))]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_modules_import_only_the_core(path):
    """The numpy core never imports the torch side or the book (module by module, not only at run time)."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if name.startswith(("lorastyle.collection", "lorastyle.book")):
        pytest.skip("not the core")
    assert not [m for m in _imports(path) if m.startswith(("lorastyle.collection", "lorastyle.book"))]


@pytest.mark.parametrize("name", _modules())
def test_public_names_are_listed_and_documented(name):
    module = importlib.import_module(name)
    listed = set(getattr(module, "__all__", ()))
    assert listed, f"{name} has no __all__"
    assert not [n for n in listed if not hasattr(module, n)], "names in __all__ that do not exist"
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == name
    }
    assert sorted(defined - listed) == [], f"public in {name} but not in __all__"
    undocumented = []
    for n in sorted(defined):
        obj = getattr(module, n)
        if inspect.isfunction(obj):
            params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
            doc = inspect.getdoc(obj) or ""
            if not doc:
                undocumented.append(f"{n}: no docstring")
            elif params and "Parameters\n----------" not in doc and not doc.startswith("``"):
                undocumented.append(f"{n}: no Parameters section")
    assert undocumented == []
