"""How long must a record's sketch be for real files' scores? The default index score on ../shared/real-loras.

Real LoRAs made by strangers score cosines of 0.01-0.03 even within one source (the three LoKr
dims of one character, the two disney files), where the wild benchmark's LoRAs score 0.3-0.9. The
index's sketch estimates each cosine with an error near 1/sqrt(dim); at the default dim that error
is the size of the signal. This script measures, for sketch lengths from the default up, the RMS
error of the index's all-pairs cosines against the exact per-module normalised, centred gram kernel
(the default score), and the leave-one-out top-1 of "same source" (the wild benchmark's
evaluation), over three hash seeds at the default. It prints a markdown table; it needs the real
files (skipped when absent).

    python benchmarks/wild/real_sketch_dims.py [--real ../shared/real-loras]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import evaluate  # noqa: E402
import scorers  # noqa: E402

SETTINGS = [(16384, 1024, 0), (16384, 1024, 1), (16384, 1024, 2), (65536, 1024, 0), (262144, 4096, 0)]


def main() -> None:
    from lorastyle.index.records import describe_lora
    from lorastyle.index.search import SketchMatrix
    from lorastyle.index.sketches import Sketcher

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "real-loras")
    args = p.parse_args()
    found = evaluate.real_groups(args.real)
    if found is None:
        print(f"no real LoRA files in {args.real}: nothing to measure")
        return
    loras, rows = found
    exact = scorers.cosine(scorers.normalised_kernel(loras, "gram", centre=True))
    off = ~np.eye(len(loras), dtype=bool)
    print("| sketch dim | module dim | hash seed | record kB per part | RMS error of a cosine | top-1 same source |")
    print("|---|---|---|---|---|---|")
    for dim, module_dim, seed in SETTINGS:
        sketcher = Sketcher(dim=dim, module_dim=module_dim, seed=seed)
        records = [
            describe_lora(x, sha256="0" * 64, identity=(0, 0, 0, 0), sketcher=sketcher, descriptor="gram")
            for x in loras
        ]
        matrix = SketchMatrix.of(records)
        S = np.array([matrix.cosines(r.sketches, r.norms) for r in records])
        result = evaluate.evaluate(S, rows)
        rms = float(np.sqrt(np.mean((S - exact)[off] ** 2)))
        print(f"| {dim:,} | {module_dim:,} | {seed} | {dim * 2 // 1024:,} | {rms:.4f} | {result['top1']:.3f} |")
    result = evaluate.evaluate(exact, rows)
    print(f"| exact kernel | - | - | - | 0 | {result['top1']:.3f} |")
    sets = [r["set_id"] for r in rows]
    n_queries = sum(sets.count(s) > 1 for s in sets)
    print(f"\n{len(loras)} files; {n_queries} queries have a same-source file.")


if __name__ == "__main__":
    main()
