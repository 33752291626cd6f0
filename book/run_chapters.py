"""Execute chapters in place, so that their committed outputs are fresh (`make chapters`).

nbval (in `make test`) re-executes every chapter and compares its text outputs with the
committed ones; run this after changing a chapter or the data, then commit the notebooks.
Prints each chapter's execution time and the total.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(paths: list[str]) -> int:
    total = 0.0
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        seconds = time.perf_counter() - start
        total += seconds
        for cell in nb.cells:  # timestamps change on every run and say nothing about the chapter
            cell.metadata.pop("execution", None)
        nbformat.write(nb, path)
        print(f"{path}: {seconds:.1f} s", flush=True)
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
