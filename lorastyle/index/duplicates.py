"""Which files of an index are the same weights, and which are near-duplicates of one another.

Two kinds, never mixed up, so that two versions of a model are never called duplicates:

* **same weights**: the same delta-W in every module, whatever the file name, dtype (float16 and
  bfloat16 rounding), key names, layout (kohya or diffusers/PEFT) or factor gauge
  (``A -> G A, B -> B G^-1``, and another rank with the same product). Found from the records:
  the same base family and modules, every module's ``||delta-W||_F`` equal within
  :data:`NORM_RTOL`, and descriptors whose score is at least :data:`SAME_SCORE`;
* **near-duplicates**: other pairs scoring at least the calibrated near-duplicate threshold
  (checkpoints of one run, rank-resized copies, small fine-tunes of one another), each with
  its score. A pair scoring 1 whose every module's ``||delta-W||_F`` differs by one factor is
  the same direction at another strength (a copy with another alpha, or its up factors scaled):
  :func:`strength_of` says so, with the factor.

Each same-weights group names the copy to keep and why (:func:`lorastyle.index.keep.choose_copy`,
the one rule); each family says which near-duplicate threshold it used and why
(:func:`near_thresholds`).

Byte-identical copies (same sha256) are same-weights groups too, and say so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..io.sidecars import file_facts
from .keep import choose_copy
from .store import LoraIndex
from .thresholds import NEAR_DEFAULT, near_threshold

__all__ = [
    "DuplicateReport",
    "find_duplicates",
    "near_thresholds",
    "strength_of",
    "same_weights",
    "NORM_RTOL",
    "SAME_SCORE",
    "NEAR_DEFAULT",
    "STRENGTH_RTOL",
]

# float16 keeps 11 significant bits: a module norm re-saved in float16 or bfloat16 moves by well under 1%
NORM_RTOL = 0.01
# the same delta-W gives the same sketch; only float16 storage of the sketches keeps it from exactly 1
SAME_SCORE = 0.999
# per-module strength ratios within this relative spread are one strength (float16 rounding: < 0.1%)
STRENGTH_RTOL = 2 * NORM_RTOL


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found.

    Attributes
    ----------
    same_weights : list of dict
        One per group of files of the same weights: ``base``, ``paths`` (sorted), ``identical_bytes``
        (all files have one sha256), ``score`` (the lowest score within the group), ``keep`` and
        ``keep_reason`` (:func:`lorastyle.index.keep.choose_copy`), ``stale`` (its paths that changed
        since they were indexed: the group may no longer hold).
    near : list of dict
        One per near-duplicate pair not in one same-weights group: ``base``, ``paths`` (two),
        ``score``, ``titles`` (each file's, from its sidecars or its header, as ``inspect`` shows it),
        ``stale`` (as above), and ``strength`` (:func:`strength_of`, or None).
    near_threshold : float or None
        The families' threshold where they share one, else None (see ``thresholds``).
    thresholds : dict of str to dict
        Per base family of the index: ``threshold`` and ``why`` (:func:`near_thresholds`).
    """

    same_weights: list
    near: list
    near_threshold: float | None
    thresholds: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The report as JSON-able data.

        Returns
        -------
        dict
            ``same_weights``, ``near_duplicates``, ``near_threshold``, ``thresholds``.
        """
        return {
            "same_weights": self.same_weights,
            "near_duplicates": self.near,
            "near_threshold": self.near_threshold,
            "thresholds": self.thresholds,
        }


def _same_norms(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(np.max(a, initial=0.0)), float(np.max(b, initial=0.0)), 1e-30)
    big = np.maximum(a, b) > 1e-6 * scale  # modules of (nearly) zero update: no relative test
    return bool(np.all(np.abs(a[big] - b[big]) <= NORM_RTOL * np.maximum(a[big], b[big])))


def same_weights(a, b, score: float) -> bool:
    """Whether two records are of the same weights: one sha256, or one module set of equal module norms scoring
    at least :data:`SAME_SCORE` (the rule of ``lorastyle duplicates``).

    Parameters
    ----------
    a, b : Record
    score : float
        Their score.

    Returns
    -------
    bool
    """
    return a.sha256 == b.sha256 or (
        score >= SAME_SCORE
        and list(a.layout.shapes) == list(b.layout.shapes)
        and _same_norms(np.asarray(a.module_norms), np.asarray(b.module_norms))
    )


def _groups(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return [sorted(g) for g in out.values() if len(g) > 1]


def strength_of(a: np.ndarray, b: np.ndarray) -> dict | None:
    """How a file's update compares in strength with another's of the same directions, from module norms.

    For two files whose descriptors score 1 (the gram descriptor is blind to scale), the ratio
    of every module's ``||delta-W||_F`` (:attr:`Record.module_norms`) says whether the second is
    the first at another strength.

    Parameters
    ----------
    a, b : ndarray of shape (n_modules,)
        The two files' module norms, in one module order.

    Returns
    -------
    dict or None
        ``{"relation": "same direction", "factor": s}`` when every module of ``b`` is ``s`` times
        ``a``'s (within :data:`STRENGTH_RTOL`); ``{"relation": "same directions per module",
        "factor_range": [lo, hi]}`` when the factors differ between modules; None when the norms
        cannot be compared (other modules, or no module of non-zero update in both).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size == 0:
        return None
    scale = max(float(a.max()), float(b.max()), 1e-30)
    both = (a > 1e-6 * scale) & (b > 1e-6 * scale)
    if not both.any():
        return None
    ratios = b[both] / a[both]
    lo, hi = float(ratios.min()), float(ratios.max())
    if hi - lo <= STRENGTH_RTOL * hi:
        return {"relation": "same direction", "factor": float(np.median(ratios))}
    return {"relation": "same directions per module", "factor_range": [lo, hi]}


def near_thresholds(index: LoraIndex, near_threshold_given: float | None = None) -> dict[str, dict]:
    """The near-duplicate threshold of each base family of an index, and why it is that one.

    Parameters
    ----------
    index : LoraIndex
    near_threshold_given : float, optional
        Given by the user (``--threshold``): used for every family.

    Returns
    -------
    dict of str to dict
        Per base family: ``threshold`` and ``why`` (one sentence: :func:`lorastyle.index.thresholds.near_threshold`).
    """
    out = {}
    for base in sorted({g.base for g in index.groups.values()}):
        value, why = near_threshold(index, base, given=near_threshold_given)
        out[base] = {"threshold": float(value), "why": why}
    return out


def _title(record) -> str | None:
    """The file's title as ``inspect`` and ``map`` show it: from its sidecars, else its header."""
    title = file_facts(record.path, record.info).get("title")
    return title["value"] if title else None


def find_duplicates(
    index: LoraIndex, *, near_threshold: float | None = None, changed: Iterable[str] = (), progress=None
) -> DuplicateReport:
    """Groups of files of the same weights, and near-duplicate pairs, in every base family of an index.

    Parameters
    ----------
    index : LoraIndex
        Gone files already left out (:func:`lorastyle.index.freshness.without_files`).
    near_threshold : float, optional
        Score from which a pair is a near-duplicate; default: per family
        (:func:`lorastyle.index.thresholds.near_threshold`).
    changed : iterable of str, default=()
        Paths that changed since they were indexed (:func:`lorastyle.index.freshness.check_files`):
        the groups and pairs holding one list it as ``stale``.
    progress : callable, optional
        ``progress(iterable, desc=..., total=...)`` wraps the blocks of pairs of a large family.

    Returns
    -------
    DuplicateReport
    """
    thresholds = near_thresholds(index, near_threshold)
    changed = set(changed)
    shared = {t["threshold"] for t in thresholds.values()}
    same_groups, near = [], []
    for group in index.groups.values():
        records = group.records
        n = len(records)
        if n < 2:
            continue
        cut = thresholds[group.base]["threshold"]
        # the pairs that can be either: those scoring at least the lower threshold (a block of pairs at a
        # time, never n x n; the ANN's candidates in a large group), and byte-identical files whatever
        # they score (an all-zero update scores 0)
        ii, jj, ss = group.pairs_at_least(min(cut, SAME_SCORE), progress=progress)
        score = dict(zip(zip(ii.tolist(), jj.tolist()), ss.tolist()))
        by_sha: dict[str, list[int]] = {}
        for k, r in enumerate(records):
            by_sha.setdefault(r.sha256, []).append(k)
        extra = [(a, b) for ks in by_sha.values() for x, a in enumerate(ks) for b in ks[x + 1 :] if (a, b) not in score]
        if extra:
            rows_a, rows_b = np.array(extra).T
            score.update(zip(extra, group.matrix.pair_cosines(rows_a, rows_b).tolist()))
        pairs = sorted(score)
        same_pairs = [(i, j) for i, j in pairs if same_weights(records[i], records[j], score[i, j])]
        member = {}
        for g in _groups(n, same_pairs):
            for i in g:
                member[i] = len(same_groups)
            within = np.array([(a, b) for x, a in enumerate(g) for b in g[x + 1 :]]).T
            choice = choose_copy([records[i] for i in g])
            same_groups.append(
                {
                    "base": group.base,
                    "paths": sorted(records[i].path for i in g),
                    "identical_bytes": len({records[i].sha256 for i in g}) == 1,
                    "score": float(group.matrix.pair_cosines(within[0], within[1]).min()),
                    "keep": choice.keep,
                    "keep_reason": choice.reason,
                    "stale": sorted(records[i].path for i in g if records[i].path in changed),
                }
            )
        first = {}  # each same-weights group appears in near pairs through its first file only
        for i in range(n):
            first.setdefault(member.get(i, -1 - i), i)
        for i, j in pairs:
            sc = score[i, j]
            representative = first[member.get(i, -1 - i)] == i and first[member.get(j, -1 - j)] == j
            if sc >= cut and representative and not (i in member and member.get(j) == member[i]):
                a, b = sorted((i, j), key=lambda k: records[k].path)
                strength = None
                if sc >= SAME_SCORE and list(records[a].layout.shapes) == list(records[b].layout.shapes):
                    strength = strength_of(np.asarray(records[a].module_norms), np.asarray(records[b].module_norms))
                near.append(
                    {
                        "base": group.base,
                        "paths": [records[a].path, records[b].path],
                        "score": float(sc),
                        "titles": [_title(records[k]) for k in (a, b)],
                        "strength": strength,
                        "stale": [records[k].path for k in (a, b) if records[k].path in changed],
                    }
                )
    near.sort(key=lambda x: (-x["score"], x["paths"]))
    same_groups.sort(key=lambda x: x["paths"])
    return DuplicateReport(
        same_weights=same_groups,
        near=near,
        near_threshold=shared.pop() if len(shared) == 1 else None,
        thresholds=thresholds,
    )
