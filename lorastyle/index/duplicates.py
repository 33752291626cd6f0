"""Which files of an index are the same weights, and which are near-duplicates of one another.

Two kinds, never mixed up, so that two versions of a model are never called duplicates:

* **same weights**: the same delta-W in every module, whatever the file name, dtype (float16 and
  bfloat16 rounding), key names, layout (kohya or diffusers/PEFT) or factor gauge
  (``A -> G A, B -> B G^-1``, and another rank with the same product). Found from the records:
  the same base family and modules, every module's ``||delta-W||_F`` equal within
  :data:`NORM_RTOL`, and descriptors whose score is at least :data:`SAME_SCORE`;
* **near-duplicates**: other pairs scoring at least the calibrated near-duplicate threshold
  (checkpoints of one run, rank-resized copies, small fine-tunes of one another), each with
  its score.

Byte-identical copies (same sha256) are same-weights groups too, and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.sidecars import file_facts
from .calibration import load_calibration
from .store import LoraIndex

__all__ = ["DuplicateReport", "find_duplicates", "NORM_RTOL", "SAME_SCORE", "NEAR_DEFAULT"]

# float16 keeps 11 significant bits: a module norm re-saved in float16 or bfloat16 moves by well under 1%
NORM_RTOL = 0.01
# the same delta-W gives the same sketch; only float16 storage of the sketches keeps it from exactly 1
SAME_SCORE = 0.999
# without a calibration for the index's settings (see lorastyle.index.calibration)
NEAR_DEFAULT = 0.7


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found.

    Attributes
    ----------
    same_weights : list of dict
        One per group of files of the same weights: ``base``, ``paths`` (sorted), ``identical_bytes``
        (all files have one sha256), ``score`` (the lowest score within the group).
    near : list of dict
        One per near-duplicate pair not in one same-weights group: ``base``, ``paths`` (two),
        ``score``, ``titles`` (each file's, from its sidecars or its header, as ``inspect`` shows it).
    near_threshold : float
    """

    same_weights: list
    near: list
    near_threshold: float

    def to_json(self) -> dict:
        """The report as JSON-able data.

        Returns
        -------
        dict
        """
        return {"same_weights": self.same_weights, "near_duplicates": self.near, "near_threshold": self.near_threshold}


def _same_norms(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = max(float(np.max(a, initial=0.0)), float(np.max(b, initial=0.0)), 1e-30)
    big = np.maximum(a, b) > 1e-6 * scale  # modules of (nearly) zero update: no relative test
    return bool(np.all(np.abs(a[big] - b[big]) <= NORM_RTOL * np.maximum(a[big], b[big])))


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


def _title(record) -> str | None:
    """The file's title as ``inspect`` and ``map`` show it: from its sidecars, else its header."""
    title = file_facts(record.path, record.info).get("title")
    return title["value"] if title else None


def find_duplicates(index: LoraIndex, *, near_threshold: float | None = None) -> DuplicateReport:
    """Groups of files of the same weights, and near-duplicate pairs, in every base family of an index.

    Parameters
    ----------
    index : LoraIndex
    near_threshold : float, optional
        Score from which a pair is a near-duplicate; default: the calibrated one for the index's
        settings (from the wild benchmark), else :data:`NEAR_DEFAULT`.

    Returns
    -------
    DuplicateReport
    """
    if near_threshold is None:
        calibration = load_calibration(index.descriptor, index.sketcher.settings)
        near_threshold = calibration.near_duplicate if calibration is not None else NEAR_DEFAULT
    same_groups, near = [], []
    for group in index.groups.values():
        records = group.records
        n = len(records)
        if n < 2:
            continue
        C = group.matrix.cosine_matrix()
        iu, ju = np.triu_indices(n, 1)
        same_pairs = [
            (i, j)
            for i, j in zip(iu.tolist(), ju.tolist())
            if records[i].sha256 == records[j].sha256
            or (
                C[i, j] >= SAME_SCORE
                and list(records[i].layout.shapes) == list(records[j].layout.shapes)
                and _same_norms(np.asarray(records[i].module_norms), np.asarray(records[j].module_norms))
            )
        ]
        member = {}
        for g in _groups(n, same_pairs):
            for i in g:
                member[i] = len(same_groups)
            sub = C[np.ix_(g, g)]
            same_groups.append(
                {
                    "base": group.base,
                    "paths": sorted(records[i].path for i in g),
                    "identical_bytes": len({records[i].sha256 for i in g}) == 1,
                    "score": float(sub[np.triu_indices(len(g), 1)].min()),
                }
            )
        first = {}  # each same-weights group appears in near pairs through its first file only
        for i in range(n):
            first.setdefault(member.get(i, -1 - i), i)
        for i, j in zip(iu.tolist(), ju.tolist()):
            representative = first[member.get(i, -1 - i)] == i and first[member.get(j, -1 - j)] == j
            if C[i, j] >= near_threshold and representative and not (i in member and member.get(j) == member[i]):
                near.append(
                    {
                        "base": group.base,
                        "paths": sorted([records[i].path, records[j].path]),
                        "score": float(C[i, j]),
                        "titles": [_title(records[k]) for k in (i, j)],
                    }
                )
    near.sort(key=lambda x: (-x["score"], x["paths"]))
    same_groups.sort(key=lambda x: x["paths"])
    return DuplicateReport(same_weights=same_groups, near=near, near_threshold=float(near_threshold))
