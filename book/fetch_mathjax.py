"""Fetch MathJax once from the npm registry, so that the book renders formulas offline (`make book`).

``python book/fetch_mathjax.py [FOLDER]`` (default ``_build/mathjax``, gitignored) runs
``npm pack mathjax@VERSION``, checks the tarball's sha256, and unpacks the part of MathJax's
``es5/`` build that the book loads into ``FOLDER/mathjax/``: ``tex-chtml.js`` (TeX input, HTML
output, menu), the TeX extensions it loads on demand, the CHTML web fonts, the accessibility
components of its menu with the English speech rules, and the license (Apache-2.0). `_config.yml`
lists ``FOLDER`` in ``html_static_path`` and points ``mathjax_path`` at ``mathjax/tex-chtml.js``.
Nothing is done when ``FOLDER/mathjax/VERSION`` already names this version.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.2.2"
SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"  # of mathjax-3.2.2.tgz
ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "_build" / "mathjax"
# Members of the npm tarball kept, relative to package/ (folders: everything under them).
KEEP = (
    "LICENSE",
    "es5/tex-chtml.js",
    "es5/input/tex/extensions/",
    "es5/output/chtml/fonts/woff-v2/",
    "es5/ui/",
    "es5/a11y/",
    "es5/sre/mathmaps/base.json",
    "es5/sre/mathmaps/en.json",
)


def _kept(name: str) -> str | None:
    """Where a tarball member goes under mathjax/ (None: not kept)."""
    if not name.startswith("package/"):
        return None
    rel = name[len("package/") :]
    if not any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP):
        return None
    return rel[len("es5/") :] if rel.startswith("es5/") else rel


def fetch(folder: Path = DEFAULT) -> Path:
    """Make ``folder/mathjax/tex-chtml.js`` (MathJax VERSION) exist; return its path."""
    target = folder / "mathjax"
    stamp = target / "VERSION"
    if stamp.is_file() and stamp.read_text().strip() == VERSION and (target / "tex-chtml.js").is_file():
        return target / "tex-chtml.js"
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch MathJax for the book (apt-get install npm; .ci/run does)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        subprocess.run(
            [npm, "pack", f"mathjax@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = Path(tmp) / f"mathjax-{VERSION}.tgz"
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != SHA256:
            raise SystemExit(f"{tarball.name}: sha256 {digest}, expected {SHA256}")
        staging = Path(tmp) / "mathjax"
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                rel = _kept(member.name)
                if rel is None or not member.isfile():
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
        (staging / "VERSION").write_text(VERSION + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    files = sum(1 for p in target.rglob("*") if p.is_file())
    print(f"MathJax {VERSION}: {files} files, {size / 1e6:.1f} MB in {target}")
    return target / "tex-chtml.js"


if __name__ == "__main__":
    fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
