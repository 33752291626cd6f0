"""Which correction of the gram score removes its rank floor and keeps same-source pairs first?

The per-module normalised gram score (the cosine of each module's ``G = dW dW^T``) of two unrelated
updates has a floor near ``sqrt(e_x e_y) / d`` (``e = tr(G)^2 / ||G||^2``, the effective rank; ``d`` =
out): one random rank-128 SD 1.x file became everyone's nearest neighbour. Candidates, all exact
(computed from the files' factors, LoKr through its Kronecker factors):

``gram``
    the uncentred per-module cosine (the default before this measurement);
``gram, centred``
    the cosine of the centred Gram matrices ``G - tr(G)/d I``: ``<G_x, G_y> - t_x t_y / d`` over
    ``sqrt((||G_x||^2 - t_x^2/d)(||G_y||^2 - t_y^2/d))``, ``t = tr G``;
``gram, expectation removed``
    the numerator alone centred (``<G_x, G_y>`` less its expectation when one update is turned by a
    random rotation of the output space), the denominator not: the score less its value for random
    updates of the same ranks and shapes;
``gram, centred, modules weighted by d``
    the centred cosines summed with weights ``d`` (each module's cosine in units of its standard
    deviation under that rotation null, ``sqrt(2) / d``);
``gram, centred, not normalised``
    no per-module normalisation: modules weigh by their energy;
``subspace overlap, centred``
    spectral whitening: the projector onto the top-k left singular vectors (k = the module's rank,
    at most 64), centred (``||U_x^T U_y||^2 - k_x k_y / d``);
``sqrt-gram, centred``
    half whitening: ``(dW dW^T)^(1/2)`` (singular values, not squared) on the top 64 singular
    vectors, centred.

Measured on: the wild benchmark (``data/wild``: top-1 and mAP of same training set, and the scores of
unrelated pairs); the 7 files of ``../shared/real-loras`` (same source: the LoKr trio, the two
disney files) with random files of the real SD 1.x kohya layout (``tools/layouts.py``, the
shinkai layout) at ranks 16, 32, 64 and 128 beside them: which file comes first for each real query,
whether a random file is ever first, and the largest score of a random file.

    python benchmarks/wild/rank_floor.py [--quick] [--real ../shared/real-loras] [--out benchmarks/results]

``--quick`` uses 12 files of the wild benchmark and random files of ranks 16 and 128 only.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # tools/

import _common as c  # noqa: E402
import evaluate  # noqa: E402

RANDOM_RANKS = (16, 32, 64, 128)
SHINKAI = "invokeai_stripped__sd1_kohya__shinkai_makoto_offset"
SPECTRAL_K = 64  # singular vectors kept by the spectral candidates


# ---------------------------------------------------------------------------
# Per-module quantities, exact, from the factors


class ModuleStats:
    """One module's exact quantities for n files: Gram inner products, traces, norms, top singular pairs."""

    def __init__(self, loras: Sequence, name: str, spectral: bool):
        from lorastyle.module_products import factored, gram_inner

        self.d = next(lora.modules[name].shape[0] for lora in loras if name in lora.modules)
        n = len(loras)
        self.present = np.array([name in lora.modules for lora in loras])
        fm = [factored(lora.modules[name]) if name in lora.modules else None for lora in loras]
        self.G = np.zeros((n, n))
        for i in range(n):
            for j in range(i, n):
                if fm[i] is not None and fm[j] is not None:
                    self.G[i, j] = self.G[j, i] = gram_inner(fm[i], fm[j])
        self.t = np.array([0.0 if f is None else f.delta2 for f in fm])
        self.spectra = [
            None if f is None else _top_singular(f.low, lora_rank(lora, name)) for f, lora in zip(fm, loras)
        ]
        if not spectral:
            self.spectra = None
        self.part = name.split(".", 1)[0]


def lora_rank(lora, name: str) -> int:
    m = lora.modules.get(name)
    return 0 if m is None else int(m.rank)


def _top_singular(low, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``SPECTRAL_K`` left singular vectors and values of ``U V``, and the module's rank k (at most SPECTRAL_K)."""
    qu, ru = np.linalg.qr(low.U)
    _, rv = np.linalg.qr(low.V.T)
    u, s, _ = np.linalg.svd(ru @ rv.T)
    keep = min(SPECTRAL_K, int(np.sum(s > 1e-9 * s[0])) if s[0] > 0 else 0)
    return qu @ u[:, :keep], s[:keep], min(rank, keep)


# Each candidate: ModuleStats -> (inner products I (n x n), squared norms N (n,), weights w (n,)); the score of a
# pair is sum_m w_i w_j I_ij / sqrt(N_i N_j) over sqrt(sum_m w_i^2 . sum_m w_j^2), over the parts both adapt.


def _gram(s: ModuleStats):
    return s.G, np.diag(s.G).copy(), np.ones(len(s.t))


def _centred(s: ModuleStats):
    K = s.G - np.outer(s.t, s.t) / s.d
    return K, np.diag(K).copy(), np.ones(len(s.t))


def _expectation_removed(s: ModuleStats):
    return s.G - np.outer(s.t, s.t) / s.d, np.diag(s.G).copy(), np.ones(len(s.t))


def _weighted_by_d(s: ModuleStats):
    K, N, _ = _centred(s)
    return K, N, np.full(len(s.t), float(s.d))


def _not_normalised(s: ModuleStats):
    K, N, _ = _centred(s)
    return K, N, np.sqrt(np.clip(N, 0.0, None))


def _spectral(s: ModuleStats, power: float):
    """Centred ``U diag(sigma^power) U^T`` (power 0: the projector on the top-k vectors)."""
    n = len(s.t)
    K, tr = np.zeros((n, n)), np.zeros(n)
    mats = []
    for sp in s.spectra:
        if sp is None:
            mats.append(None)
            continue
        U, sigma, k = sp
        w = np.ones(k) if power == 0 else sigma[:k] ** power
        mats.append((U[:, :k], w))
    for i, a in enumerate(mats):
        if a is None:
            continue
        tr[i] = a[1].sum()
        for j in range(i, n):
            b = mats[j]
            if b is not None:
                P = a[0].T @ b[0]
                K[i, j] = K[j, i] = float(np.sum((a[1][:, None] * P * b[1][None, :]) * P))
    K = K - np.outer(tr, tr) / s.d
    return K, np.diag(K).copy(), np.ones(n)


CANDIDATES: dict[str, Callable] = {
    "gram (before)": _gram,
    "gram, centred": _centred,
    "gram, expectation removed": _expectation_removed,
    "gram, centred, modules weighted by d": _weighted_by_d,
    "gram, centred, not normalised": _not_normalised,
    "subspace overlap, centred": lambda s: _spectral(s, 0.0),
    "sqrt-gram, centred": lambda s: _spectral(s, 1.0),
}


def scores(stats: list[ModuleStats], candidate: Callable) -> np.ndarray:
    """All-pairs scores of one candidate, combined over the modules of the parts both files adapt."""
    n = len(stats[0].t)
    num = np.zeros((n, n))
    energy, present = {}, {}
    for s in stats:
        K, N, w = candidate(s)
        nonzero = s.present & (N > 1e-9 * np.max(np.abs(N), initial=0.0)) & (N > 0)
        root = np.sqrt(np.where(nonzero, N, 1.0))
        C = np.where(np.outer(nonzero, nonzero), K / np.outer(root, root), 0.0)
        num += np.outer(w, w) * C
        energy[s.part] = energy.get(s.part, 0.0) + np.where(nonzero, w**2, 0.0)
        present[s.part] = present.get(s.part, np.zeros(n, bool)) | nonzero
    den = np.zeros((n, n))
    for p in energy:
        den += np.outer(energy[p], present[p].astype(float))  # row i's energy on the parts column j also has
    with np.errstate(divide="ignore", invalid="ignore"):
        S = num / np.sqrt(den * den.T)
    return np.nan_to_num(S, nan=0.0)


def all_stats(loras: Sequence, spectral: bool = True) -> list[ModuleStats]:
    names = sorted({n for lora in loras for n in lora.modules})
    return [ModuleStats(loras, name, spectral) for name in names]


# ---------------------------------------------------------------------------
# The real files with random ones


def random_files(folder: Path, layouts: Path, ranks: Sequence[int]) -> list[Path]:
    """Random float16 files of the shinkai SD 1.x kohya layout at these ranks (no style at all)."""
    from tools.layouts import layout_shapes, write_layout_file

    shapes = layout_shapes(SHINKAI, layouts)
    out = []
    for i, rank in enumerate(ranks):
        path = folder / f"random-rank{rank}.safetensors"
        write_layout_file(path, shapes, rank=rank, alpha=rank / 2, seed=100 + i)
        out.append(path)
    return out


def real_report(S: np.ndarray, names: list[str], groups: list[str], is_random: np.ndarray) -> dict:
    """Per real query: the first result, the rank of its partner; and the random files' best scores."""
    n = len(names)
    out = {"queries": {}, "partner_first": 0, "n_with_partner": 0, "random_first": 0}
    real = np.flatnonzero(~is_random)
    for i in real:
        order = [j for j in np.argsort(-S[i], kind="stable") if j != i]
        partners = [j for j in range(n) if j != i and groups[j] == groups[i] and not is_random[j]]
        entry = {"first": names[order[0]], "first_score": float(S[i, order[0]])}
        if partners:
            rank = min(order.index(j) for j in partners) + 1
            entry.update(partner_rank=rank, partner_score=float(max(S[i, j] for j in partners)))
            out["n_with_partner"] += 1
            out["partner_first"] += rank == 1
        if is_random[order[0]]:
            out["random_first"] += 1
        out["queries"][names[i]] = entry
    if is_random.any():
        out["max_random_vs_real"] = float(S[np.ix_(is_random, ~is_random)].max())
    unrelated = [
        S[i, j] for i in real for j in real if i < j and groups[i] != groups[j]
    ]  # real pairs of different sources
    out["max_unrelated_real"] = float(max(unrelated))
    d = [i for i in real if groups[i] == "disney"]
    out["disney_mutual_first"] = len(d) == 2 and all(out["queries"][names[i]].get("partner_rank") == 1 for i in d)
    return out


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=evaluate.DATA, help="the wild benchmark's folder")
    p.add_argument("--real", type=Path, default=c.ROOT.parent / "shared" / "real-loras")
    args = p.parse_args(argv)
    from lorastyle.io.formats import load_lora

    t0 = time.perf_counter()
    results: dict = {"wild": {}, "real": {}}
    seconds: dict = {}
    # the wild benchmark
    rows = evaluate.read_manifest(args.data)
    if args.quick:
        sets = sorted({r["set_id"] for r in rows})[:4]
        rows = [r for r in rows if r["set_id"] in sets][:12]
    loras = [load_lora(args.data / r["file"]) for r in rows]
    stats = all_stats(loras)
    for name, cand in CANDIDATES.items():
        t = time.perf_counter()
        S = scores(stats, cand)
        r = evaluate.evaluate(S, rows)
        results["wild"][name] = {k: r[k] for k in ("n_queries", "top1", "top1_ci", "map", "map_ci", "pairs")}
        seconds[f"wild/{name}"] = time.perf_counter() - t
    # the real files with random ones of a real layout
    found = evaluate.real_groups(args.real)
    tmp = Path(tempfile.mkdtemp(prefix="lorastyle-rank-floor-", dir=args.tmp))
    try:
        if found is not None and (args.real / "key-layouts").is_dir():
            real_loras, real_rows = found
            ranks = (16, 128) if args.quick else RANDOM_RANKS
            rand = [load_lora(x) for x in random_files(tmp, args.real / "key-layouts", ranks)]
            everything = real_loras + rand
            names = [r["file"] for r in real_rows] + [Path(x.path).name for x in rand]
            groups = [r["set_id"] for r in real_rows] + [f"random{k}" for k in ranks]
            is_random = np.array([False] * len(real_loras) + [True] * len(rand))
            t = time.perf_counter()
            stats = all_stats(everything)
            seconds["real/module stats"] = time.perf_counter() - t
            for name, cand in CANDIDATES.items():
                S = scores(stats, cand)
                results["real"][name] = real_report(S, names, groups, is_random)
                results["real"][name]["matrix"] = S.round(6).tolist()
            results["real_names"] = names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    body = report(results)
    body += f"\n\nTotal {time.perf_counter() - t0:.0f} s (one thread)."
    title = "Rank floor of the gram score: candidate corrections on the wild benchmark, real files and random files"
    c.write_results("rank_floor", title, {**results, "seconds": seconds}, body, args.out, args.quick)


def report(results: dict) -> str:
    wild = [
        [
            name,
            f"{r['top1']:.3f} [{r['top1_ci'][0]:.3f}, {r['top1_ci'][1]:.3f}]",
            f"{r['map']:.3f}",
            f"{r['pairs']['same_set']['median']:.3f}",
            f"{r['pairs']['unrelated']['median']:.3f} [{r['pairs']['unrelated']['p5']:.3f}, "
            f"{r['pairs']['unrelated']['p95']:.3f}]",
        ]
        for name, r in results["wild"].items()
    ]
    n = next(iter(results["wild"].values()))["n_queries"]
    out = f"Wild benchmark ({n} LoRAs, leave-one-out, relevant = same training set):\n\n" + c.table(
        ["candidate", "top-1 [95% CI]", "mAP", "same-set median", "unrelated median [p5, p95]"], wild
    )
    if results["real"]:
        names = results["real_names"]
        body = []
        for name, r in results["real"].items():
            q = r["queries"]
            partner = ", ".join(
                f"{k.split('__')[-1].removesuffix('.safetensors')} {v['partner_rank']} ({v['partner_score']:.4f})"
                for k, v in q.items()
                if "partner_rank" in v
            )
            body.append(
                [
                    name,
                    f"{r['partner_first']} of {r['n_with_partner']}",
                    "yes" if r["disney_mutual_first"] else "no",
                    f"{r['random_first']} of {len(q)}",
                    f"{r['max_random_vs_real']:.4f}",
                    f"{r['max_unrelated_real']:.4f}",
                    partner,
                ]
            )
        n_random = sum("random-rank" in x for x in names)
        out += (
            f"\n\nThe {len(names) - n_random} files of ../shared/real-loras with {n_random} random files of the real "
            "SD 1.x kohya layout (ranks "
            + ", ".join(x.split("rank")[1].split(".")[0] for x in names if "random-rank" in x)
            + "), exact scores: for each real query whose source has another file, the rank of its best partner "
            "(score); whether a random file is first for a real query; the largest score of a random file with a "
            "real one, and of two real files of different sources:\n\n"
            + c.table(
                [
                    "candidate",
                    "partner first",
                    "disney mutual first",
                    "random first",
                    "max random-real",
                    "max unrelated real",
                    "partner rank (score) per query",
                ],
                body,
            )
        )
    return out


if __name__ == "__main__":
    main()
