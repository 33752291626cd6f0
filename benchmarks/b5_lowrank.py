"""B5: ``delta`` and ``gram`` inner products in low rank against materialised delta-W.

For SD 1.5 layer shapes and ranks 4-128, two random LoRA modules are compared with the
library's :func:`delta_inner_products` and :func:`gram_inner_products` (low rank) and by
materialising delta-W = scale * B A (float64): ``<dW1, dW2>_F`` and ``||dW1^T dW2||_F^2``.
Time: median of ``--repeats`` runs; memory: peak traced allocation (``tracemalloc``, numpy
reports its buffers to it); agreement: relative difference.
"""

from __future__ import annotations

import tracemalloc

import _common as c
import numpy as np

from lorastyle.descriptors import delta_inner_products, gram_inner_products
from lorastyle.io.formats import LoRA, build_module

TOL = 1e-5
# (name, in, out) of SD 1.5 layers (U-Net and text encoder)
SHAPES = [
    ("attn 320", 320, 320),
    ("cross-attn k/v 768->320", 768, 320),
    ("attn 1280", 1280, 1280),
    ("ff 320->2560", 320, 2560),
    ("ff 1280->10240", 1280, 10240),
    ("ff 5120->1280", 5120, 1280),
    ("text mlp 768->3072", 768, 3072),
]


def lora(rng, cin, cout, rank, tag):
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"
    roles = {
        "lora_down": (0.05 * rng.standard_normal((rank, cin))).astype(np.float32),
        "lora_up": (0.05 * rng.standard_normal((cout, rank))).astype(np.float32),
        "alpha": np.asarray(rank / 2, dtype=np.float32),
    }
    m = build_module(tag, name, "unet", roles)
    return LoRA(path=tag, format="kohya", base="sd1", modules={name: m}, dtype="float32")


def dense(m):
    """delta-W = scale * B A, materialised in float64."""
    return m.scale * (m.up.astype(np.float64) @ m.down.astype(np.float64))


def dense_delta(x, y):
    a, b = next(iter(x.modules.values())), next(iter(y.modules.values()))
    return float(np.sum(dense(a) * dense(b)))


def dense_gram(x, y):
    a, b = next(iter(x.modules.values())), next(iter(y.modules.values()))
    M = dense(a).T @ dense(b)
    return float(np.sum(M * M))


def measure(fn, repeats):
    tracemalloc.start()
    value = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t, _ = c.median_time(fn, repeats=repeats, warmup=0)
    return value, t, peak


def main() -> None:
    args = c.parser(__doc__.split("\n")[0]).parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    shapes = SHAPES[:2] if args.quick else SHAPES
    ranks = [4, 8] if args.quick else [4, 8, 16, 32, 64, 128]
    rng = np.random.default_rng(0)
    results, rows = [], []
    worst = 0.0
    for label, cin, cout in shapes:
        for rank in ranks:
            x, y = lora(rng, cin, cout, rank, "x"), lora(rng, cin, cout, rank, "y")
            for kind, low, full in (
                ("delta", delta_inner_products, dense_delta),
                ("gram", gram_inner_products, dense_gram),
            ):
                v_low, t_low, m_low = measure(lambda low=low, x=x, y=y: float(low([x], [y])[0, 0]), repeats)
                v_den, t_den, m_den = measure(lambda full=full, x=x, y=y: full(x, y), repeats)
                rel = abs(v_low - v_den) / max(abs(v_den), 1e-300)
                worst = max(worst, rel)
                results.append(
                    {
                        "layer": label,
                        "in": cin,
                        "out": cout,
                        "rank": rank,
                        "kernel": kind,
                        "low_rank_s": t_low,
                        "dense_s": t_den,
                        "low_rank_peak_bytes": m_low,
                        "dense_peak_bytes": m_den,
                        "relative_difference": rel,
                    }
                )
                rows.append(
                    [
                        label,
                        rank,
                        kind,
                        c.fmt(t_low * 1e3),
                        c.fmt(t_den * 1e3),
                        c.fmt(t_den / t_low),
                        c.fmt(m_low / 1e6),
                        c.fmt(m_den / 1e6),
                        f"{rel:.1e}",
                        c.verdict(rel <= TOL),
                    ]
                )
    body = c.table(
        [
            "layer (in->out)",
            "rank",
            "kernel",
            "low-rank ms",
            "dense ms",
            "speed-up",
            "low-rank peak MB",
            "dense peak MB",
            "relative difference",
            f"agree to {TOL:g}",
        ],
        rows,
    )
    body += (
        f"\n\nTwo random modules per cell (factors float32, scale alpha / rank), compared once in low "
        "rank (the library's kernels, O((in + out) r^2)) and once through dense float64 delta-W "
        f"(O(in x out x r), and in x in for gram). Medians of {repeats} runs; peak memory traced by "
        f"tracemalloc during one call. Largest relative difference: {worst:.1e} "
        f"({c.verdict(worst <= TOL)} the {TOL:g} goal)."
    )
    c.write_results(
        "b5",
        "Low-rank kernels against materialised delta-W",
        {"results": results, "ranks": ranks, "worst_relative_difference": worst, "tolerance": TOL},
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
