"""Which null gives a p-value for every family with no labels? Two candidates, checked against labels.

``rotation``
    the score's null for random updates of the same ranks and module shapes: each module's centred
    gram cosine has mean 0 and variance ``2 / ((d - 1)(d + 2))`` when either update is turned by a
    random rotation of its output space (exact, whatever the spectra), so the score ``sum_m c_m /
    sqrt(n_x n_y)`` has the standard deviation ``sqrt(sum_m 2 / ((d_m - 1)(d_m + 2))) / sqrt(n_x n_y)``;
    reported as z-scores;
``family``
    the empirical null of the index (:mod:`lorastyle.index.null`): the scores of every pair of the
    family's files in the index, ``p = (1 + #pairs at least as high) / (1 + #pairs)``.

Checked on the wild benchmark (``data/wild``; its labels only check: the p-values of pairs of different
training sets should be roughly uniform) and on ``../shared/real-loras`` with random files of the real SD
1.x layout at ranks 16-128 beside them (the p-value and verdict of each real query's partner, as
``lorastyle similar`` gives them).

    python benchmarks/wild/null_check.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _common as c  # noqa: E402
import evaluate  # noqa: E402
import rank_floor  # noqa: E402


def rotation_z(loras) -> tuple[np.ndarray, np.ndarray]:
    """Exact centred scores of all pairs, and their z-scores under the rotation null."""
    stats = rank_floor.all_stats(loras, spectral=False)
    S = rank_floor.scores(stats, rank_floor.CANDIDATES["gram, centred"])
    n = len(loras)
    var, count, present = np.zeros((n, n)), {}, {}
    for s in stats:
        K, N, _ = rank_floor._centred(s)
        nonzero = s.present & (N > 0)
        var += 2.0 / ((s.d - 1) * (s.d + 2)) * np.outer(nonzero, nonzero)
        count[s.part] = count.get(s.part, 0) + nonzero
        present[s.part] = present.get(s.part, np.zeros(n, bool)) | nonzero
    den = sum(np.outer(count[p], present[p]) for p in count)
    sd = np.sqrt(var) / np.sqrt(den * den.T)
    return S, np.divide(S, sd, out=np.zeros_like(S), where=sd > 0)


def index_of(paths):
    from lorastyle.index import build_index

    index, skipped, _ = build_index([str(p) for p in paths], calibrate=False)
    assert not skipped, skipped
    return index


def main(argv: list[str] | None = None) -> None:
    from scipy import stats

    from lorastyle.index import read_record
    from lorastyle.index.null import family_null
    from lorastyle.io.formats import load_lora

    p = c.parser(__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=evaluate.DATA)
    p.add_argument("--real", type=Path, default=c.ROOT.parent / "shared" / "real-loras")
    args = p.parse_args(argv)
    out: dict = {}
    rows = evaluate.read_manifest(args.data)
    if args.quick:
        rows = [r for r in rows if r["set_id"] in sorted({r["set_id"] for r in rows})[:4]]
    paths = [args.data / r["file"] for r in rows]
    labels = np.array([r["set_id"] for r in rows])
    a, b = np.triu_indices(len(rows), 1)
    unrelated = labels[a] != labels[b]
    _, Z = rotation_z([load_lora(x) for x in paths])
    out["wild_rotation_z"] = {
        name: [float(v) for v in np.percentile(Z[a, b][mask], [5, 50, 95])]
        for name, mask in (("unrelated", unrelated), ("same set", ~unrelated))
    }
    index = index_of(paths)
    (group,) = index.groups.values()
    where = {r.path: i for i, r in enumerate(group.records)}
    order = [where[str(x.resolve())] for x in paths]
    C = group.matrix.cosine_matrix()[np.ix_(order, order)]
    null = family_null(group.matrix)
    pv = np.array([null.p_value(s) for s in C[a, b]])
    out["wild_family_null"] = {
        "n_pairs": int(null.n_pairs),
        "ks_unrelated": float(stats.kstest(pv[unrelated], "uniform").statistic),
        "unrelated_p_le_0.05": float(np.mean(pv[unrelated] <= 0.05)),
        "unrelated_p_le_0.01": float(np.mean(pv[unrelated] <= 0.01)),
        "same_set_p_le_0.01": float(np.mean(pv[~unrelated] <= 0.01)),
        "same_set_p_le_0.05": float(np.mean(pv[~unrelated] <= 0.05)),
    }
    real_rows = []
    found = evaluate.real_groups(args.real)
    if found is not None and (args.real / "key-layouts").is_dir():
        real_loras, meta = found
        S, Z = rotation_z(real_loras)
        names = [m["file"] for m in meta]
        groups = [m["set_id"] for m in meta]
        tmp = Path(tempfile.mkdtemp(prefix="lorastyle-null-", dir=args.tmp))
        try:
            folder = tmp / "f"
            folder.mkdir()
            for name in names:
                (folder / name).symlink_to(args.real / name)
            rank_floor.random_files(folder, args.real / "key-layouts", (16, 128) if args.quick else (16, 32, 64, 128))
            index = index_of(sorted(folder.glob("*.safetensors")))
            for i, name in enumerate(names):
                partners = [j for j in range(len(names)) if j != i and groups[j] == groups[i]]
                if not partners:
                    continue
                query = read_record(folder / name, sketcher=index.sketcher)
                lora = load_lora(folder / name)
                results = index.similar(query, k=len(index.records), rerank=10, query_lora=lora)
                by_name = {Path(r["path"]).name: r for r in results}
                best = max(partners, key=lambda j: S[i, j])
                r = by_name[names[best]]
                unrelated_real = [j for j in range(len(names)) if groups[j] != groups[i]]
                top = results[0]
                real_rows.append(
                    {
                        "query": name,
                        "partner": names[best],
                        "score": r["score"],
                        "rotation_z": float(Z[i, best]),
                        "p_value": r["p_value"],
                        "verdict": r["verdict"],
                        "first": Path(top["path"]).name,
                        "max_rotation_z_unrelated_real": float(max(Z[i, j] for j in unrelated_real)),
                    }
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    out["real"] = real_rows
    w, f = out["wild_rotation_z"], out["wild_family_null"]
    body = (
        "Wild benchmark, exact centred scores in units of the rotation null's standard deviation (z), 5th / 50th / "
        f"95th percentile: unrelated pairs {w['unrelated'][0]:.0f} / {w['unrelated'][1]:.0f} / {w['unrelated'][2]:.0f}"
        f", same-set pairs {w['same set'][0]:.0f} / {w['same set'][1]:.0f} / {w['same set'][2]:.0f}: under the null "
        "of random updates every unrelated pair would be related (p below 1e-300).\n\n"
        f"The family null of the index (every pair of its {len(rows)} files' sketches, {f['n_pairs']} pairs): on "
        f"unrelated pairs, Kolmogorov-Smirnov distance from uniform {f['ks_unrelated']:.3f}; p <= 0.05 for "
        f"{f['unrelated_p_le_0.05']:.3f} of them, p <= 0.01 for {f['unrelated_p_le_0.01']:.3f} (conservative: the "
        f"null holds the same-set pairs too); same-set pairs: p <= 0.01 for {f['same_set_p_le_0.01']:.3f}, "
        f"p <= 0.05 for {f['same_set_p_le_0.05']:.3f}."
    )
    if real_rows:
        body += (
            "\n\nReal files with random ones of a real layout beside them (re-ranked exactly, as `similar` does): "
            "each real query's best partner, its score, z under the rotation null, p under the family null, the "
            "verdict; and the largest z of the query with an unrelated real file:\n\n"
            + c.table(
                [
                    "query",
                    "partner",
                    "score",
                    "z (rotation)",
                    "p (family)",
                    "verdict",
                    "first result",
                    "max z, unrelated real",
                ],
                [
                    [
                        r["query"],
                        r["partner"],
                        f"{r['score']:.4f}",
                        f"{r['rotation_z']:.1f}",
                        f"{r['p_value']:.3f}",
                        r["verdict"],
                        r["first"],
                        f"{r['max_rotation_z_unrelated_real']:.1f}",
                    ]
                    for r in real_rows
                ],
            )
        )
    c.write_results(
        "null_check",
        "p-values with no labels: the rotation null against the family null",
        out,
        body,
        args.out,
        args.quick,
    )


if __name__ == "__main__":
    main()
