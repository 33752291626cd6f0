"""B1: throughput of ``lorastyle index`` against reading the same files, on SDXL-size LoRAs of the real layout.

30 SDXL kohya LoRAs (the key layout of a real file: U-Net and both text encoders, 2,958 tensors) at
ranks 8, 16 and 32, float16, random weights, are written once to a temporary folder. In the same
run, each a fresh process on a warm page cache: ``cat`` of every file, a loop of
``safetensors.numpy.load_file`` over them (the reference: reading every tensor into numpy), and
``lorastyle index DIR -o INDEX --no-cache`` for the default descriptor (gram) and the paper's concat;
with the peak resident memory of each, the index file's size per record, and ``lorastyle inspect``
of the largest file. Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.ROOT))
from tools.layouts import layout_shapes, write_layout_file  # noqa: E402

GOAL = 0.5  # index throughput at least half a load_file loop's
RECORD_LIMIT = 256 * 1024  # bytes per file in the index, whatever the file's size
SDXL = "invokeai_stripped__sdxl_kohya__Alien_Style"

LOAD_LOOP = "import sys, safetensors.numpy as s\nfor f in sys.argv[1:]:\n    s.load_file(f)\n"
# What any index that hashes each file and computes in float32 must do at least, without threads: the
# load_file loop, a sha256 of the bytes, every float16 tensor widened to float32 once.
FLOOR_LOOP = (
    "import hashlib, sys, numpy as np, safetensors.numpy as s\n"
    "for f in sys.argv[1:]:\n"
    "    hashlib.sha256(open(f, 'rb').read()).hexdigest()\n"
    "    [t.astype(np.float32) for t in s.load_file(f).values()]\n"
)


def run_s(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    args = c.parser(__doc__.split("\n")[0]).parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    ranks = [8] if args.quick else [8, 16, 32]  # --quick checks the script, not the machine: two small files
    n = 2 if args.quick else 30
    shapes = layout_shapes(SDXL)
    tmp = Path(tempfile.mkdtemp(prefix="lorastyle-b1-", dir=args.tmp))
    lorastyle = str(Path(c.python()).with_name("lorastyle"))
    try:
        folder = tmp / "sdxl"
        folder.mkdir()
        nbytes = sum(
            write_layout_file(
                folder / f"l{i:03d}-r{ranks[i % len(ranks)]}.safetensors", shapes, rank=ranks[i % len(ranks)], seed=i
            )
            for i in range(n)
        )
        files = [str(p) for p in sorted(folder.iterdir())]
        mb = nbytes / 1e6
        timings = {
            "cat": lambda: run_s(["bash", "-c", 'cat "$@" > /dev/null', "cat", *files]),
            "load_file loop": lambda: run_s([c.python(), "-c", LOAD_LOOP, *files]),
            "floor: load_file + sha256 + float32, one thread": lambda: run_s([c.python(), "-c", FLOOR_LOOP, *files]),
        }
        for descriptor in ("gram", "concat"):
            out = tmp / f"{descriptor}.index"
            timings[f"lorastyle index ({descriptor})"] = lambda d=descriptor, o=out: run_s(
                [lorastyle, "index", str(folder), "-o", str(o), "--no-cache", "--descriptor", d]
            )
        for fn in timings.values():  # warm the page cache and the imports' caches
            fn()
        medians = {name: statistics.median(fn() for _ in range(repeats)) for name, fn in timings.items()}
        peaks = {
            "load_file loop": c.peak_rss_mb_of([c.python(), "-c", LOAD_LOOP, *files])[0],
            **{
                f"lorastyle index ({d})": c.peak_rss_mb_of(
                    [
                        lorastyle,
                        "index",
                        str(folder),
                        "-o",
                        str(tmp / f"{d}-rss.index"),
                        "--no-cache",
                        "--descriptor",
                        d,
                    ]
                )[0]
                for d in ("gram", "concat")
            },
        }
        record_bytes = {d: (tmp / f"{d}.index").stat().st_size / n for d in ("gram", "concat")}
        biggest = max(files, key=lambda f: Path(f).stat().st_size)
        biggest_mb = Path(biggest).stat().st_size / 1e6
        inspect_peak, inspect_s, _ = c.peak_rss_mb_of([lorastyle, "inspect", biggest, "--json", "--no-hashes"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref = medians["load_file loop"]
    ref_floor = medians["floor: load_file + sha256 + float32, one thread"] / ref
    rows, results = [], {}
    for name, t in medians.items():
        ratio_load, ratio_cat = ref / t, medians["cat"] / t
        results[name] = {
            "median_s": t,
            "mb_per_s": mb / t,
            "files_per_s": n / t,
            "ratio_to_load_file": ratio_load,
            "ratio_to_cat": ratio_cat,
            "peak_rss_mb": peaks.get(name),
        }
        goal = c.verdict(ratio_load >= GOAL) if name == "lorastyle index (gram)" else "-"
        rows.append(
            [
                name,
                c.fmt(t),
                c.fmt(mb / t),
                c.fmt(n / t),
                c.fmt(ratio_load, 2),
                c.fmt(ratio_cat, 2),
                c.fmt(peaks[name]) if name in peaks else "-",
                goal,
            ]
        )
    body = c.table(
        [
            "reads every file",
            "seconds (median)",
            "MB/s",
            "files/s",
            "ratio to load_file",
            "ratio to cat",
            "peak RSS MB",
            f"index >= {GOAL}x load_file",
        ],
        rows,
    )
    body += (
        f"\n\n{n} SDXL kohya LoRAs of the real key layout ({SDXL}: U-Net and both text encoders), ranks "
        f"{', '.join(map(str, ranks))} in turn, float16, random weights: {mb:,.0f} MB. Fresh processes on a warm "
        f"page cache, medians of {repeats} runs after a warm-up; `lorastyle index DIR -o INDEX --no-cache "
        "--descriptor D` includes Python's start-up and imports. Index size per file: "
        + ", ".join(f"{d} {record_bytes[d] / 1024:,.0f} kB" for d in record_bytes)
        + f" (limit {RECORD_LIMIT // 1024} kB: {c.verdict(max(record_bytes.values()) <= RECORD_LIMIT)}). "
        f"`lorastyle inspect --json --no-hashes` of the largest file ({biggest_mb:.0f} MB): {inspect_s:.2f} s, "
        f"peak RSS {inspect_peak:.0f} MB (it reads the header and the alphas only).\n\n"
        "What an index does beyond a read, per file: sha256 (in a thread beside the parser), the strict reader, "
        "and the sketch of every module: float16 factors widened to float32 once, their k x k Gram matrices "
        "(BLAS), two count sketches and FFTs of the output factor, modules of one shape in one call per step, "
        "on one thread per core; the next file is parsed while this one is sketched. The floor row is what any "
        "index that hashes the files and computes in float32 must do at least (on one thread): it alone takes "
        f"{ref_floor:.1f}x the load_file loop, so on this machine a ratio of 0.5 is out of reach for float16 files."
    )
    c.write_results(
        "b1",
        "Indexing throughput against reading the files",
        {
            "files": n,
            "bytes": nbytes,
            "ranks": ranks,
            "repeats": repeats,
            "results": results,
            "record_bytes": record_bytes,
            "inspect": {"seconds": inspect_s, "peak_rss_mb": inspect_peak, "file_mb": biggest_mb},
            "goal_ratio_to_load_file": GOAL,
        },
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
