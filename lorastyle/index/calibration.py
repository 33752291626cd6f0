"""The tiny model's calibrated thresholds, from the wild benchmark's labelled pairs.

``benchmarks/wild/evaluate.py --calibrate`` writes ``lorastyle/index/score_calibration.json``:
for each descriptor, quantiles of the scores of pairs of LoRAs trained on *different* training
sets, the score above which 1% of those pairs fall (:attr:`ScoreCalibration.threshold`: what
``lorastyle map`` clusters at), and the near-duplicate threshold (halfway between the highest
unrelated pair and the lowest pair of two checkpoints of one run: what ``lorastyle duplicates``
and ``similar``'s ``same run`` verdict use).

The benchmark's LoRAs are of the project's tiny model, and scores of unrelated LoRAs depend on the
model: in ``benchmarks/results/wild.md`` unrelated tiny-model pairs score 0.10-0.37 (5th to 95th
percentile), unrelated real SD 1.5 files of ``../shared/real-loras`` about 0 (median). The p-values
of ``similar`` need no labels and hold for every family: :mod:`lorastyle.index.null`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

__all__ = ["ScoreCalibration", "load_calibration", "CALIBRATION_FILE"]

CALIBRATION_FILE = "score_calibration.json"


@dataclass(frozen=True)
class ScoreCalibration:
    """The null distribution of one descriptor's scores.

    Attributes
    ----------
    quantiles : ndarray
        Increasing scores of unrelated pairs at evenly spaced probabilities 0..1.
    n_null : int
        Unrelated pairs they were computed from.
    threshold : float
        Scores at or above it are flagged ``same_source_likely``.
    near_duplicate : float
        Pairs scoring at or above it are near-duplicates (``lorastyle duplicates``): halfway between
        the highest unrelated pair and the lowest pair of two checkpoints of one run.
    calibrated_on : str
        Which LoRAs (base family, benchmark) the null comes from.
    """

    quantiles: np.ndarray
    n_null: int
    threshold: float
    near_duplicate: float
    calibrated_on: str

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """Fraction of unrelated pairs scoring at least ``scores`` (with the +1 of an empirical p-value).

        Parameters
        ----------
        scores : array-like

        Returns
        -------
        ndarray
        """
        probs = np.linspace(0.0, 1.0, len(self.quantiles))
        below = np.interp(np.asarray(scores, dtype=np.float64), self.quantiles, probs, left=0.0, right=1.0)
        return (1.0 + self.n_null * (1.0 - below)) / (1.0 + self.n_null)


@cache
def _table() -> dict:
    try:
        text = resources.files("lorastyle.index").joinpath(CALIBRATION_FILE).read_text()
    except (FileNotFoundError, OSError):
        return {}
    return json.loads(text)


def load_calibration(descriptor: str, sketch: dict, base: str | None = None) -> ScoreCalibration | None:
    """The calibration of a descriptor at these sketch settings, or None when there is none.

    Parameters
    ----------
    descriptor : str
    sketch : dict
        :attr:`lorastyle.index.sketches.Sketcher.settings` of the index.
    base : str, optional
        The base family the scores are of: None unless the calibration was made on it (scores of
        unrelated LoRAs differ between families, so a null of one family says little of another).

    Returns
    -------
    ScoreCalibration or None
    """
    entry = _table().get(descriptor)
    if not entry or entry.get("sketch") != sketch:
        return None
    if base is not None and entry.get("base") != base:
        return None
    return ScoreCalibration(
        quantiles=np.asarray(entry["quantiles"], dtype=np.float64),
        n_null=int(entry["n_null"]),
        threshold=float(entry["threshold"]),
        near_duplicate=float(entry["near_duplicate_threshold"]),
        calibrated_on=str(entry["calibrated_on"]),
    )
