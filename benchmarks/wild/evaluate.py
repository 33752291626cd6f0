"""Wild benchmark: does a scorer find the LoRAs trained on the same training set, whoever trained them?

Every LoRA of ``data/wild`` (made by ``benchmarks/wild/generate.py``) queries all
the others (leave-one-out); the relevant ones are those of its training set,
trained with other seeds, ranks, alphas, learning rates, steps, layouts and
dtypes. Per scorer: top-1 (the most similar other LoRA is of the same set)
with a 95% Wilson interval, mean average precision with a 95% bootstrap
interval over training sets (2000 resamples, seed 0), top-1 of the queries
whose same-set LoRAs all have another initialisation seed, top-1 when the
candidates of the query's own run (its other checkpoint) are removed, and the
scores of same-set and unrelated pairs.

Scorers: cosine-normalised kernels of the library's descriptors (``concat``
only between LoRAs of equal ranks, so on the rank-4 subset; ``delta``,
``gram``), this folder's experimental ones (:mod:`scorers`: per-module
normalised gram and delta, subspace overlap), and the skeptic's baseline:
colour statistics of each LoRA's training images (no weights at all).

``--quick`` evaluates 4 sets x 3 LoRAs of ``data/wild`` plus a planted exact
duplicate (one LoRA re-saved in the other layout) in seconds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/_common
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402
import scorers  # noqa: E402

DATA = c.ROOT / "data" / "wild"
N_BOOTSTRAP = 2000
QUICK_SETS, QUICK_RUNS = 4, (("a", 60), ("b", 30), ("e", 20))  # (run, checkpoint)


# ---------------------------------------------------------------------------
# Scorers: list of LoRAs -> (n, n) similarity


def descriptor_scorer(name: str) -> Callable[[Sequence], np.ndarray]:
    """The library's descriptor kernel, cosine-normalised."""
    from lorastyle.descriptors import descriptor_kernel

    return lambda loras: scorers.cosine(descriptor_kernel(name, list(loras)))


def colour_embedding(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour statistics standardised over the evaluated LoRAs (one row per LoRA), and their cosines."""
    from lorastyle.metrics import similarity_matrix

    sd = features.std(axis=0)
    z = (features - features.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return z, similarity_matrix(z, metric="cosine")


WEIGHT_SCORERS: dict[str, Callable[[Sequence], np.ndarray]] = {
    "concat": descriptor_scorer("concat"),
    "delta": descriptor_scorer("delta"),
    "gram": descriptor_scorer("gram"),
    "gram, per-module normalised": lambda loras: scorers.cosine(scorers.normalised_kernel(loras, "gram")),
    "gram, per-module normalised, centred": lambda loras: scorers.cosine(
        scorers.normalised_kernel(loras, "gram", centre=True)
    ),
    "delta, per-module normalised": lambda loras: scorers.cosine(scorers.normalised_kernel(loras, "delta")),
    "subspace overlap (top-r)": lambda loras: scorers.cosine(scorers.subspace_kernel(loras)),
    "subspace overlap (top-2)": lambda loras: scorers.cosine(scorers.subspace_kernel(loras, k=2)),
}
COLOUR = "colour statistics of the training images (no weights)"
# What `lorastyle similar` scores with: cosines of the index's fixed-size records (the default first)
INDEX_DEFAULT = "index: gram sketch, per-module normalised, centred (default)"
INDEX_SCORERS = {  # (descriptor, normalise, centre)
    INDEX_DEFAULT: ("gram", "module", True),
    "index: gram sketch, per-module normalised, not centred": ("gram", "module", False),
    "index: gram sketch, not normalised, not centred": ("gram", "none", False),
    "index: delta sketch, per-module normalised": ("delta", "module", False),
}
# The exact scorer each sketch estimates (for its error)
SKETCH_OF = {
    INDEX_DEFAULT: "gram, per-module normalised, centred",
    "index: gram sketch, per-module normalised, not centred": "gram, per-module normalised",
    "index: gram sketch, not normalised, not centred": "gram",
    "index: delta sketch, per-module normalised": "delta, per-module normalised",
}
# Same-source groups among the real files of ../shared/real-loras (MANIFEST.md): one LoKr character trained
# at three dims, and the two disney files; the others are singletons (queries with no relevant file are skipped).
REAL_GROUPS = {"smart_falcon": "lycoris_lokr_sd1_dim", "disney": "cloneofsimo_rank1_with_ti__lora_disney"}


def index_scores(loras: Sequence, descriptor: str, normalise: str, centre: bool = True) -> np.ndarray:
    """All-pairs scores exactly as ``lorastyle similar`` computes them: from each file's record."""
    from lorastyle.index.records import describe_lora
    from lorastyle.index.search import SketchMatrix
    from lorastyle.index.sketches import Sketcher

    sketcher = Sketcher(normalise=normalise, centre=centre)
    records = [
        describe_lora(x, sha256="0" * 64, identity=(0, 0, 0, 0), sketcher=sketcher, descriptor=descriptor)
        for x in loras
    ]
    matrix = SketchMatrix.of(records)
    return np.array([matrix.cosines(r.sketches, r.norms) for r in records])


def sketch_error(S: np.ndarray, exact: np.ndarray) -> dict:
    """How far a sketch's scores are from the exact ones: RMS and largest error, rank correlation, top-1 agreement."""
    from scipy.stats import spearmanr

    n = len(S)
    off = ~np.eye(n, dtype=bool)
    err = (S - exact)[off]
    rho = [spearmanr(S[i][off[i]], exact[i][off[i]]).statistic for i in range(n)]
    top_s = np.where(off, S, -np.inf).argmax(axis=1)
    top_e = np.where(off, exact, -np.inf).argmax(axis=1)
    return {
        "rms": float(np.sqrt(np.mean(err**2))),
        "max": float(np.abs(err).max()),
        "spearman_mean": float(np.mean(rho)),
        "top1_agreement": float(np.mean(top_s == top_e)),
    }


def calibration(S: np.ndarray, rows: Sequence[dict], fpr: float = 0.01) -> dict:
    """The null of unrelated pairs' scores (quantiles), the score above which pairs are flagged, and the
    near-duplicate threshold: halfway between the highest unrelated score and the lowest score of two
    checkpoints of one run (the closest relatives the benchmark has)."""
    labels = np.array([r["set_id"] for r in rows])
    runs = np.array([f"{r['set_id']}/{r['run']}" for r in rows])
    iu = np.triu_indices(len(S), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    same_run = (runs[:, None] == runs[None, :])[iu]
    null, hits = S[iu][~same], S[iu][same]
    threshold = float(np.quantile(null, 1 - fpr))
    checkpoints = S[iu][same_run]
    near = float((null.max() + checkpoints.min()) / 2) if len(checkpoints) else float("nan")
    return {
        "quantiles": [float(q) for q in np.quantile(null, np.linspace(0, 1, 1001))],
        "n_null": int(len(null)),
        "threshold": threshold,
        "false_positive_rate": fpr,
        "true_positive_rate": float(np.mean(hits >= threshold)),
        "n_same_source_pairs": int(len(hits)),
        "near_duplicate_threshold": near,
        "max_unrelated": float(null.max()),
        "checkpoint_pairs": [float(x) for x in np.sort(checkpoints)],
    }


def real_groups(folder: Path) -> tuple[list, list[dict]] | None:
    """The real files and their rows (set_id = their same-source group, or their own name)."""
    from lorastyle.io.formats import load_lora

    paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not paths:
        return None
    rows = []
    for p in paths:
        group = next((g for g, prefix in REAL_GROUPS.items() if p.name.startswith(prefix)), p.stem)
        rows.append({"set_id": group, "init_seed": str(len(rows)), "run": p.stem, "file": p.name})
    return [load_lora(p) for p in paths], rows


# ---------------------------------------------------------------------------
# Metrics on a similarity matrix, through the library's retrieval functions


def kernel_embedding(S: np.ndarray) -> np.ndarray:
    """Rows X with ``X X^T = S`` (S positive semi-definite, unit diagonal): cosine of rows is S."""
    w, V = np.linalg.eigh((S + S.T) / 2)
    return V * np.sqrt(np.clip(w, 0.0, None))


def per_query(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out top-1 hit and average precision of every query (``lorastyle.metrics.query_scores``).

    Queries with no other item of their label get NaN.
    """
    from lorastyle.metrics import query_scores

    n = len(labels)
    hit, ap = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        rest = np.arange(n) != i
        if not (labels[rest] == labels[i]).any():
            continue
        s = query_scores(X[rest], labels[rest], X[i : i + 1], labels[i : i + 1], k=1)
        hit[i], ap[i] = s["top1"], s["map"]
    return hit, ap


def bootstrap_map(ap: np.ndarray, groups: np.ndarray, n: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mAP, resampling training sets (all their queries) with replacement."""
    ok = ~np.isnan(ap)
    names = np.unique(groups[ok])
    sums = np.array([ap[ok & (groups == g)].sum() for g in names])
    counts = np.array([(ok & (groups == g)).sum() for g in names])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), (n, len(names)))
    values = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def pair_scores(S: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Median, 5th and 95th percentile of the scores of same-set pairs and of unrelated pairs."""
    i, j = np.triu_indices(len(labels), 1)
    same = labels[i] == labels[j]
    out = {}
    for name, mask in (("same_set", same), ("unrelated", ~same)):
        v = S[i[mask], j[mask]]
        p5, p50, p95 = np.percentile(v, [5, 50, 95]) if len(v) else (np.nan,) * 3
        out[name] = {"n_pairs": int(mask.sum()), "p5": float(p5), "median": float(p50), "p95": float(p95)}
    return out


def evaluate(S: np.ndarray, rows: Sequence[dict], X: np.ndarray | None = None) -> dict:
    """Every metric of one scorer's similarity matrix over the LoRAs of ``rows`` (manifest rows).

    Parameters
    ----------
    S : ndarray of shape (n, n)
        Similarities, unit diagonal.
    rows : sequence of dict
        ``set_id``, ``init_seed`` and ``run`` of each LoRA.
    X : ndarray, optional
        Rows whose cosine is S (default: :func:`kernel_embedding` of S).
    """
    from lorastyle.book.experiments import restricted_top1, wilson_interval
    from lorastyle.metrics import retrieval_scores

    labels = np.array([r["set_id"] for r in rows])
    seeds = np.array([int(r["init_seed"]) for r in rows])
    X = kernel_embedding(S) if X is None else X
    hit, ap = per_query(X, labels)
    queried = ~np.isnan(hit)
    n = int(queried.sum())
    top1 = float(hit[queried].mean())
    overall = retrieval_scores(X, labels, k=1)  # the same numbers, computed in one pass by the library
    if not (np.isclose(overall["top1"], top1) and np.isclose(overall["map"], ap[queried].mean())):
        raise AssertionError(f"per-query and library scores disagree: {overall} vs {top1}, {ap[queried].mean()}")
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other_init = queried & ~(same & (seeds[:, None] == seeds[None, :])).any(axis=1)
    other_runs, hit_other, _, _ = restricted_top1(X, labels, seeds[:, None] != seeds[None, :])
    nearest = restricted_top1(X, labels, np.ones_like(same))[3]
    n_init, n_other = int(other_init.sum()), int(other_runs.sum())
    return {
        "n_queries": n,
        "top1": top1,
        "top1_ci": wilson_interval(top1, n),
        "map": float(ap[queried].mean()),
        "map_ci": bootstrap_map(ap, labels),
        "n_queries_other_init": n_init,
        "top1_other_init": float(hit[other_init].mean()) if n_init else float("nan"),
        "top1_other_init_ci": wilson_interval(float(hit[other_init].mean()), n_init) if n_init else None,
        "n_queries_other_runs": n_other,
        "top1_other_runs": float(hit_other[other_runs].mean()) if n_other else float("nan"),
        "chance_top1": _chance(labels),
        "pairs": pair_scores(S, labels),
        "per_query_hit": [None if np.isnan(h) else bool(h) for h in hit],
        "per_query_nearest": [int(j) for j in nearest],  # index (in the evaluated rows) of the most similar other
    }


def _chance(labels: np.ndarray) -> float:
    from lorastyle.book.experiments import nearest_neighbour_chance

    return nearest_neighbour_chance(labels)


# ---------------------------------------------------------------------------
# Data


def read_manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def quick_subset(root: Path, rows: list[dict], tmp: Path) -> list[dict]:
    """4 sets x 3 LoRAs, plus an exact duplicate of the first (re-saved in the other layout, float32)."""
    from lorastyle.io.formats import load_lora, save_lora

    sets = sorted({r["set_id"] for r in rows})[:QUICK_SETS]
    wanted = {(run, str(step)) for run, step in QUICK_RUNS}
    chosen = [dict(r) for r in rows if r["set_id"] in sets and (r["run"], r["checkpoint"]) in wanted]
    for r in chosen:
        r["path"] = str(root / r["file"])
    src = chosen[0]
    lora = load_lora(src["path"])
    layout = "kohya" if lora.format == "diffusers-peft" else "diffusers-peft"
    (alpha,) = {m.alpha if m.alpha is not None else float(m.rank) for m in lora.modules.values()}
    dup = tmp / "planted-duplicate.safetensors"
    save_lora(dup, {n: (m.down, m.up) for n, m in lora.modules.items()}, alpha=alpha, layout=layout, base=lora.base)
    chosen.append({**src, "file": dup.name, "path": str(dup), "layout": layout, "dtype": "float32", "planted": "1"})
    return chosen


def colour_matrix(root: Path, rows: Sequence[dict]) -> np.ndarray:
    sets = json.loads((root / "training_sets.json").read_text())["training_sets"]
    features = {s["set_id"]: s["colour_features"] for s in sets}
    return np.array([features[r["set_id"]] for r in rows], dtype=np.float64)


# ---------------------------------------------------------------------------
# Report


def _interval(value: float, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def results_table(results: dict[str, dict]) -> str:
    header = [
        "scorer",
        "n queries",
        "top-1 [95% CI]",
        "mAP [95% CI]",
        "top-1, other init seed (n)",
        "top-1, other runs only",
        "same-set median [p5, p95]",
        "unrelated median [p5, p95]",
    ]
    rows = []
    for name, r in results.items():
        same, other = r["pairs"]["same_set"], r["pairs"]["unrelated"]
        rows.append(
            [
                name,
                r["n_queries"],
                _interval(r["top1"], r["top1_ci"]),
                _interval(r["map"], r["map_ci"]),
                f"{r['top1_other_init']:.3f} ({r['n_queries_other_init']})",
                f"{r['top1_other_runs']:.3f}",
                f"{same['median']:.3f} [{same['p5']:.3f}, {same['p95']:.3f}]",
                f"{other['median']:.3f} [{other['p5']:.3f}, {other['p95']:.3f}]",
            ]
        )
    return c.table(header, rows)


def by_run_table(results: dict[str, dict], rows: Sequence[dict]) -> str:
    """Top-1 per query's run and checkpoint (what kind of stranger's LoRA is hard to place)."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(f"{r['run']}: r{r['rank']} a{r['alpha']} lr{r['lr']} step {r['checkpoint']}", []).append(i)
    header = ["scorer"] + list(groups)
    body = []
    for name, res in results.items():
        hits = res["per_query_hit"]
        cells = []
        for idx in groups.values():
            h = [hits[i] for i in idx if hits[i] is not None]
            cells.append(f"{np.mean(h):.2f}" if h else "-")
        body.append([name] + cells)
    return c.table(header, body)


def _runs_of(rows: Sequence[dict]) -> str:
    """'run a step 30, run a step 60, ...': the runs and checkpoints among ``rows``."""
    found = sorted({(r["run"], int(r["checkpoint"])) for r in rows if not r.get("planted")})
    planted = " and the planted duplicate" if any(r.get("planted") for r in rows) else ""
    return ", ".join(f"run {run} step {step}" for run, step in found) + " of each set" + planted


def main(argv: list[str] | None = None) -> None:
    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder of generate.py (manifest.csv, loras/)")
    p.add_argument("--matrices", type=Path, default=None, help="also save every similarity matrix here (.npz)")
    p.add_argument(
        "--real",
        type=Path,
        default=None,
        help="real LoRA files with same-source groups (default ../shared/real-loras, skipped when absent; "
        "--quick skips them unless given)",
    )
    p.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        help="write the default scorer's null of unrelated pairs here (lorastyle/index/score_calibration.json)",
    )
    args = p.parse_args(argv)
    from lorastyle.io.formats import load_lora

    t0 = time.perf_counter()
    load_average = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="lorastyle-wild-", dir=args.tmp))
    try:
        rows = read_manifest(args.data)
        if args.quick:
            rows = quick_subset(args.data, rows, tmp)
        else:
            rows = [{**r, "path": str(args.data / r["file"])} for r in rows]
        loras = [load_lora(r["path"]) for r in rows]
        load_s = time.perf_counter() - t0
        rank4 = [i for i, r in enumerate(rows) if r["rank"] == "4"]
        colour = colour_matrix(args.data, rows)
        results_all, results_rank4, matrices, seconds = {}, {}, {}, {}
        for name, scorer in WEIGHT_SCORERS.items():
            t = time.perf_counter()
            if name != "concat":
                S = scorer(loras)
                results_all[name] = evaluate(S, rows)
                matrices[f"all/{name}"] = S
                results_rank4[name] = evaluate(S[np.ix_(rank4, rank4)], [rows[i] for i in rank4])
            else:  # concat compares stored factors entry by entry: equal ranks only
                S4 = scorer([loras[i] for i in rank4])
                results_rank4[name] = evaluate(S4, [rows[i] for i in rank4])
                matrices[f"rank4/{name}"] = S4
            seconds[name] = time.perf_counter() - t
        sketch_errors = {}
        for name, (descriptor, normalise, centre) in INDEX_SCORERS.items():
            t = time.perf_counter()
            S = index_scores(loras, descriptor, normalise, centre)
            seconds[name] = time.perf_counter() - t
            results_all[name] = evaluate(S, rows)
            results_rank4[name] = evaluate(S[np.ix_(rank4, rank4)], [rows[i] for i in rank4])
            matrices[f"all/{name}"] = S
            sketch_errors[name] = sketch_error(S, matrices[f"all/{SKETCH_OF[name]}"])
        default_null = calibration(matrices[f"all/{INDEX_DEFAULT}"], rows)
        real_folder = args.real or (None if args.quick else c.ROOT.parent / "shared" / "real-loras")
        real = real_groups(real_folder) if real_folder is not None else None
        results_real = {}
        if real is not None:
            real_loras, real_rows = real
            for name in ("gram", "gram, per-module normalised", "gram, per-module normalised, centred"):
                results_real[name] = evaluate(WEIGHT_SCORERS[name](real_loras), real_rows)
            for name, (descriptor, normalise, centre) in INDEX_SCORERS.items():
                results_real[name] = evaluate(index_scores(real_loras, descriptor, normalise, centre), real_rows)
        z, S = colour_embedding(colour)
        results_all[COLOUR] = evaluate(S, rows, X=z)
        z4, S4 = colour_embedding(colour[rank4])
        results_rank4[COLOUR] = evaluate(S4, [rows[i] for i in rank4], X=z4)
        matrices[f"all/{COLOUR}"], matrices[f"rank4/{COLOUR}"] = S, S4
        planted = [i for i, r in enumerate(rows) if r.get("planted")]
        if args.matrices is not None:
            args.matrices.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                args.matrices,
                labels=np.array([r["set_id"] for r in rows]),
                rank4=np.array(rank4),
                planted=np.array(planted),
                **matrices,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_sets = len({r["set_id"] for r in rows})
    data = {
        "n_loras": len(rows),
        "n_sets": n_sets,
        "n_rank4": len(rank4),
        "files": [r["file"] for r in rows],
        "rank4_rows": rank4,
        "planted_duplicate": planted,
        "load_s": load_s,
        "load_average_at_start": load_average,
        "scorer_s": seconds,
        "all": results_all,
        "rank4": results_rank4,
        "real": results_real,
        "sketch_error": sketch_errors,
        "default_scorer_null": {k: v for k, v in default_null.items() if k != "quantiles"},
        "variations": sorted({(r["run"], r["rank"], r["alpha"], r["lr"], r["steps"], r["checkpoint"]) for r in rows}),
        "layouts": sorted({r["layout"] for r in rows}),
        "dtypes": sorted({r["dtype"] for r in rows}),
    }
    body = (
        f"All {len(rows)} LoRAs of {n_sets} training sets ({len(rows) // max(n_sets, 1)} per set), leave-one-out; "
        f"relevant = same training set. Chance top-1: {results_all['delta']['chance_top1']:.3f}. "
        "concat compares stored factors entry by entry, so it needs equal ranks: it is in the second table only.\n\n"
        + results_table(results_all)
        + f"\n\nThe rank-4 subset ({len(rank4)} LoRAs: {_runs_of([rows[i] for i in rank4])}; "
        f"chance top-1 {results_rank4['delta']['chance_top1']:.3f}), every scorer including concat:\n\n"
        + results_table(results_rank4)
        + "\n\nTop-1 by the query's run (all LoRAs):\n\n"
        + by_run_table(results_all, rows)
        + "\n\nThe index's sketches against the exact scores they estimate (all pairs of the "
        f"{len(rows)} LoRAs):\n\n"
        + sketch_table(sketch_errors)
        + "\n\nCalibration of the default score (pairs of LoRAs of different training sets as the null): "
        f"{default_null['n_null']} unrelated pairs; at a false-positive rate of "
        f"{default_null['false_positive_rate']:.0%} the threshold is {default_null['threshold']:.3f}, above which "
        f"{default_null['true_positive_rate']:.1%} of the {default_null['n_same_source_pairs']} same-set pairs fall. "
        f"Two checkpoints of one run score {min(default_null['checkpoint_pairs'], default=float('nan')):.3f}-"
        f"{max(default_null['checkpoint_pairs'], default=float('nan')):.3f} and the highest unrelated pair "
        f"{default_null['max_unrelated']:.3f}: `lorastyle duplicates` calls pairs above "
        f"{default_null['near_duplicate_threshold']:.3f} (halfway) near-duplicates."
        + (real_section(results_real) if results_real else "")
        + "\n\ntop-1 CI: Wilson 95%; mAP CI: bootstrap over training sets, "
        f"{N_BOOTSTRAP} resamples, seed 0. 'other init seed': queries none of whose same-set LoRAs shares "
        "their initialisation seed (the two checkpoints of one run share it, so those queries are left out). "
        "'other runs only': the query's own run is removed from its candidates. Scores are cosine-normalised "
        "kernels; the colour baseline's features (per-channel mean and std of the training images) are "
        "standardised over the evaluated LoRAs and are identical within a set, since a set's LoRAs share "
        "their images. "
        f"Reading the {len(rows)} files took {load_s:.1f} s, the scorers {sum(seconds.values()):.1f} s "
        f"(1-minute load average at the start: {load_average[0]:.2f} on {os.cpu_count()} cores)."
    )
    title = "Wild benchmark: same-training-set retrieval across seeds, ranks, alphas, schedules, layouts, dtypes"
    c.write_results("wild", title, data, body, args.out, args.quick)
    if args.calibrate is not None:
        from lorastyle.index.sketches import Sketcher

        entry = {
            **default_null,
            "sketch": Sketcher().settings,
            "calibrated_on": f"the tiny model's wild benchmark ({len(rows)} LoRAs, {n_sets} training sets)",
            "base": loras[0].base,
        }
        args.calibrate.write_text(json.dumps({"gram": entry}, indent=1) + "\n")
        print(f"wrote {args.calibrate}")


def sketch_table(errors: dict) -> str:
    rows = [
        [
            name,
            SKETCH_OF[name],
            f"{e['rms']:.4f}",
            f"{e['max']:.4f}",
            f"{e['spearman_mean']:.3f}",
            f"{e['top1_agreement']:.3f}",
        ]
        for name, e in errors.items()
    ]
    return c.table(
        ["index scorer", "exact scorer", "RMS error", "max error", "rank correlation (mean per query)", "same top-1"],
        rows,
    )


def real_section(results: dict) -> str:
    any_result = next(iter(results.values()))
    lines = [
        f"\n\nReal files of other people ({len(any_result['per_query_hit'])} SD 1.x files of "
        "../shared/real-loras; same source: the three LoKr dims of one character, and the two disney files). "
        f"Queries with a same-source file: {any_result['n_queries']}.\n\n"
    ]
    rows = [
        [
            name,
            f"{r['n_queries']}",
            _interval(r["top1"], r["top1_ci"]),
            f"{r['pairs']['same_set']['median']:.3f}",
            f"{r['pairs']['unrelated']['median']:.3f}",
        ]
        for name, r in results.items()
    ]
    return lines[0] + c.table(["scorer", "queries", "top-1 [95% CI]", "same-source median", "unrelated median"], rows)


if __name__ == "__main__":
    main()
