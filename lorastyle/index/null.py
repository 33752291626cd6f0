"""The null of a base family's scores, from the index's own files: what a p-value is, with no labels.

A score says how alike two files are; a p-value says how unusual that is for two files of their
base family. The null is the distribution of the scores of pairs of the family's files in the index
(all pairs, or a seeded sample of :data:`MAX_PAIRS` of them in a large family): most pairs of a
library are of different sources, and no label is needed. ``p = (1 + #{null pairs scoring at least
s}) / (1 + #null pairs)``, the empirical p-value: valid, and conservative (the few pairs of one
source among the null only raise it), at any size; its smallest value is ``1 / (1 + #pairs)``, so a
family of few files can never show a small one.

Why not the null of random updates of the same ranks and module shapes: for the centred gram score
(:mod:`lorastyle.module_products`) that null is exact and simple (each module's cosine has mean 0 and
variance ``2 / ((d - 1)(d + 2))`` when either update is turned by a random rotation of its output
space, whatever the ranks), but files of one base family share the base model's structure: two
unrelated real SD 1.x files score 69 of its standard deviations, unrelated LoRAs of the wild
benchmark 42 to 149 (5th to 95th percentile), so that most pairs would be called related
(``benchmarks/wild/null_check.py``). Scores stay folder-independent; p-values compare a pair with
the other pairs of its family in the same index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FamilyNull", "family_null", "MAX_PAIRS"]

# Pairs a family's null is made of, at most (a seeded sample beyond): a p-value's resolution of 5e-5
MAX_PAIRS = 20000


@dataclass(frozen=True)
class FamilyNull:
    """The scores of pairs of a base family's files (sorted), and how many files they are of.

    Attributes
    ----------
    scores : ndarray
        Increasing.
    n_files : int
    sampled : bool
        Whether the pairs are a sample of all pairs.
    """

    scores: np.ndarray
    n_files: int
    sampled: bool = False

    @property
    def n_pairs(self) -> int:
        """Pairs in the null."""
        return len(self.scores)

    def p_value(self, score: float) -> float:
        """``(1 + #{pairs scoring at least score}) / (1 + #pairs)``.

        Parameters
        ----------
        score : float

        Returns
        -------
        float
            In ``(0, 1]``; 1 for a family of one file.
        """
        at_least = len(self.scores) - np.searchsorted(self.scores, float(score), side="left")
        return float((1 + at_least) / (1 + len(self.scores)))

    def threshold(self, alpha: float) -> float | None:
        """The lowest score whose p-value is at most ``alpha``, or None when no score's can be.

        Parameters
        ----------
        alpha : float

        Returns
        -------
        float or None
            None when ``1 / (1 + #pairs) > alpha``: too few pairs for so small a p-value.
        """
        n = len(self.scores)
        allowed = int(np.floor(alpha * (1 + n) + 1e-9)) - 1  # pairs that may score at least the threshold
        if allowed < 0:
            return None
        if allowed >= n:
            return -1.0
        return float(np.nextafter(self.scores[n - allowed - 1], np.inf))


def family_null(matrix, *, max_pairs: int = MAX_PAIRS, seed: int = 0) -> FamilyNull:
    """The null of one group's scores: every pair of its files, or ``max_pairs`` of them drawn with ``seed``.

    Parameters
    ----------
    matrix : SketchMatrix
        The group's sketches (:attr:`lorastyle.index.store.Group.matrix`).
    max_pairs : int, default=MAX_PAIRS
    seed : int, default=0

    Returns
    -------
    FamilyNull
    """
    n = len(matrix)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        a, b = np.triu_indices(n, 1)
        sampled = False
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, size=2 * max_pairs)
        b = rng.integers(0, n, size=2 * max_pairs)
        keep = a != b
        pairs = np.unique(np.sort(np.stack([a[keep], b[keep]], axis=1), axis=1), axis=0)
        pairs = pairs[rng.permutation(len(pairs))[:max_pairs]]
        a, b = pairs[:, 0], pairs[:, 1]
        sampled = True
    scores = matrix.pair_cosines(a, b) if len(a) else np.zeros(0)
    return FamilyNull(scores=np.sort(scores), n_files=n, sampled=sampled)
