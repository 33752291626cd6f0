"""B3: peak memory of indexing, and the time and memory of one query, over 500 and 2,000 SDXL-size files.

2,000 files of 100 GB cannot sit on this disk, so the collection is simulated: SDXL kohya LoRAs of the
real key layout at rank 8 (57 MB each, float16) written as sparse files (the factors are holes that
read as zeros; a few values differ per file), which an index reads, hashes and sketches exactly as it
would real files. Each measurement is a fresh process whose peak resident memory its parent measures
(``RUSAGE_CHILDREN``): ``lorastyle index DIR -o INDEX --no-cache`` over the first N files, then
``lorastyle similar INDEX QUERY --rerank 0`` with a query that is a real (dense, random) SDXL file of
the same layout, its read included: the index's own search, without the default re-reading of the 10
best files (measured by ``b7_rerank.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.ROOT))
from tools.layouts import layout_shapes, write_layout_file  # noqa: E402

INDEX_LIMIT_MB = 1500
QUERY_LIMIT_MB = 1000
QUERY_LIMIT_S = 2.0
SDXL = "invokeai_stripped__sdxl_kohya__Alien_Style"
RANK = 8


def main() -> None:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="collection sizes (default 500 2000)")
    args = p.parse_args()
    sizes = args.sizes or ([2, 4] if args.quick else [500, 2000])
    shapes = layout_shapes(SDXL)
    tmp = Path(tempfile.mkdtemp(prefix="lorastyle-b3-", dir=args.tmp))
    lorastyle = str(Path(c.python()).with_name("lorastyle"))
    env = {**os.environ, "TQDM_DISABLE": "1"}
    results, rows = [], []
    try:
        pool = tmp / "all"
        pool.mkdir()
        size = 0
        for i in range(max(sizes)):
            size = write_layout_file(pool / f"l{i:05d}.safetensors", shapes, rank=RANK, seed=i, sparse=True)
        query = tmp / "query.safetensors"
        write_layout_file(query, shapes, rank=RANK, seed=10**6)
        for n in sizes:
            folder = tmp / f"n{n}"
            folder.mkdir()
            for i in range(n):
                os.link(pool / f"l{i:05d}.safetensors", folder / f"l{i:05d}.safetensors")
            out = tmp / f"n{n}.index"
            peak, wall, _ = c.peak_rss_mb_of([lorastyle, "index", str(folder), "-o", str(out), "--no-cache"], env=env)
            q_peak, q_wall, _ = c.peak_rss_mb_of(
                [lorastyle, "similar", str(out), str(query), "-k", "10", "--rerank", "0"], env=env
            )
            record = {
                "n": n,
                "collection_gb": n * size / 1e9,
                "index_peak_rss_mb": peak,
                "index_wall_s": wall,
                "index_file_mb": out.stat().st_size / 1e6,
                "query_peak_rss_mb": q_peak,
                "query_wall_s": q_wall,
            }
            results.append(record)
            rows.append(
                [
                    n,
                    c.fmt(n * size / 1e9),
                    c.fmt(peak),
                    c.verdict(peak <= INDEX_LIMIT_MB),
                    c.fmt(wall),
                    c.fmt(out.stat().st_size / 1e6),
                    c.fmt(q_wall),
                    c.fmt(q_peak),
                    c.verdict(q_wall <= QUERY_LIMIT_S and q_peak <= QUERY_LIMIT_MB),
                ]
            )
            shutil.rmtree(folder)
            out.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = c.table(
        [
            "N files",
            "collection GB",
            "index peak RSS MB",
            f"<= {INDEX_LIMIT_MB} MB",
            "index wall s",
            "index file MB",
            "query s",
            "query peak RSS MB",
            f"query <= {QUERY_LIMIT_S:g} s and <= {QUERY_LIMIT_MB} MB",
        ],
        rows,
    )
    growth = (results[-1]["index_peak_rss_mb"] - results[0]["index_peak_rss_mb"]) / results[0]["index_peak_rss_mb"]
    body += (
        f"\n\nFrom N = {sizes[0]} to N = {sizes[-1]} the indexing peak grows by {100 * growth:.0f}%: one file's bytes "
        "and its sketching at a time, plus one record per file (three parts of 32 kB here). Files: SDXL kohya "
        f"LoRAs of the key layout {SDXL} at rank {RANK}, float16, {size / 1e6:.0f} MB each, sparse (see above); "
        "the query is a dense random file of the same layout, read, hashed and sketched in the measured time, "
        "which includes Python's start-up and imports."
    )
    c.write_results(
        "b3",
        "Memory of indexing and querying SDXL-size collections",
        {
            "sizes": sizes,
            "rank": RANK,
            "file_mb": size / 1e6,
            "results": results,
            "limits": {"index_mb": INDEX_LIMIT_MB, "query_mb": QUERY_LIMIT_MB, "query_s": QUERY_LIMIT_S},
        },
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
