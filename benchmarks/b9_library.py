"""B9: a library of 20,000 real files: index, an unchanged re-run, similar, duplicates and map.

LoRA managers' users keep 30,000 to 70,000 files. 20,000 distinct tiny-family LoRAs are made from
the wild benchmark's 72 files (``data/wild/loras``): file ``k`` is file ``k mod 72`` with each up
factor plus Gaussian noise of its own standard deviation (seed ``k``), so that files of one source
are related but not copies, and files of different sources unrelated. They are written once to
``--tmp`` and kept for the next run, which resumes where the files stop (``--quick`` removes its own).
Each command is a fresh process whose peak resident memory its parent measures:

* ``lorastyle index DIR -o INDEX --no-cache`` (reads, hashes, sketches, fits);
* the same again over the unchanged folder (nothing is read; an unchanged family keeps its fit);
* ``lorastyle similar INDEX QUERY --rerank 0`` (one query, its read included);
* ``lorastyle duplicates INDEX --json``;
* ``lorastyle map INDEX -o PAGE`` under an address-space limit of 8 GiB: a family too large for it
  must be one error line, not a traceback or a killed process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import _common as c
import numpy as np

sys.path.insert(0, str(c.ROOT))

WILD = c.ROOT / "data" / "wild" / "loras"
MAP_LIMIT = 8 << 30
INDEX_GOAL_MB = 1500


def make_files(folder: Path, n: int) -> int:
    """Write the n files not yet in ``folder``; returns the bytes of all n."""
    from lorastyle.io.safetensors import read_safetensors, write_safetensors

    sources = sorted(WILD.glob("*.safetensors"))
    folder.mkdir(parents=True, exist_ok=True)
    loaded = {}
    total = 0
    for k in range(n):
        path = folder / f"f{k:05d}.safetensors"
        if not path.exists():
            src = sources[k % len(sources)]
            if src not in loaded:
                loaded[src] = read_safetensors(src)
            tensors, meta = loaded[src]
            rng = np.random.default_rng(k)
            out = {}
            for name, t in tensors.items():
                if name.endswith("lora_up.weight"):
                    t = (t + t.std() * rng.standard_normal(t.shape)).astype(t.dtype)
                out[name] = t
            tmp = path.with_suffix(".part")
            write_safetensors(tmp, out, {**meta, "file": path.name})
            os.replace(tmp, path)
        total += path.stat().st_size
    return total


def limited(cmd: list[str], limit: int) -> list[str]:
    """``cmd`` run under an address-space limit (set in the child before it starts)."""
    code = (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), resource.RLIM_INFINITY));"
        " os.execv(sys.argv[2], sys.argv[2:])"
    )
    return [c.python(), "-c", code, str(limit), *cmd]


def main() -> None:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=None, help="files (default 20,000)")
    args = p.parse_args()
    n = args.n or (300 if args.quick else 20_000)
    root = Path(args.tmp or tempfile.gettempdir()) / f"lorastyle-b9-{n}"
    folder, index, page = root / "loras", root / "library.index", root / "map.html"
    size = make_files(folder, n)
    lorastyle = str(Path(c.python()).with_name("lorastyle"))
    query = str(sorted(WILD.glob("*.safetensors"))[0])
    runs = {}

    def measure(name, cmd, *, ok=True):
        try:
            peak, wall, last = c.peak_rss_mb_of(cmd)
            runs[name] = {"peak_mb": peak, "wall_s": wall, "rc": 0, "last_line": last}
        except RuntimeError as exc:  # "CMD failed (RC): STDERR"
            if ok:
                raise
            said = str(exc).split("): ", 1)[-1].strip().splitlines()
            runs[name] = {"rc": "nonzero", "error": said[-1] if said else ""}
        print(name, runs[name], file=sys.stderr)

    if index.exists():
        index.unlink()
    measure("index", [lorastyle, "index", str(folder), "-o", str(index), "--no-cache"])
    measure("index again (unchanged)", [lorastyle, "index", str(folder), "-o", str(index)])
    measure("similar", [lorastyle, "similar", str(index), query, "--rerank", "0", "-k", "10"])
    measure("duplicates", [lorastyle, "duplicates", str(index), "--json"])
    measure("map (8 GiB limit)", limited([lorastyle, "map", str(index), "-o", str(page)], MAP_LIMIT), ok=False)
    rows = [
        [name, c.fmt(r["wall_s"]) if "wall_s" in r else "-", c.fmt(r["peak_mb"]) if "peak_mb" in r else "-"]
        for name, r in runs.items()
    ]
    met = runs["index"]["peak_mb"] <= INDEX_GOAL_MB
    map_run = runs["map (8 GiB limit)"]
    map_said = map_run.get("last_line") or map_run.get("error", "")
    body = c.table(["command", "seconds", "peak (MB)"], rows)
    body += (
        f"\n\n{n:,} files, {size / 1e9:.2f} GB. Goal: `lorastyle index` peaks at most at {INDEX_GOAL_MB:,} MB: "
        f"{c.fmt(runs['index']['peak_mb'])} MB, {c.verdict(met)}. The map under 8 GiB said: `{map_said}`; "
        f"traceback: {'yes' if 'Traceback' in json.dumps(map_run) else 'no'}."
    )
    if args.quick:  # a check of the script: nothing kept
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"the files are kept in {root} for the next run (remove it to free {size / 1e9:.1f} GB)", file=sys.stderr)
    c.write_results(
        "b9",
        f"a library of {n:,} files",
        {"n": n, "bytes": size, "runs": runs, "goal_index_mb": INDEX_GOAL_MB, "goal_met": met},
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
