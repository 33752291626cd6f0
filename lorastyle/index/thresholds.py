"""A base family's thresholds, and why they are those: one rule for ``similar``, ``duplicates`` and ``map``.

Two scores matter for a family of an index:

``near``
    From this score a pair is a near-duplicate (checkpoints of one run, rank-resized copies):
    ``duplicates`` lists such pairs, ``similar`` says ``same run``. The calibrated value of the
    wild benchmark (:mod:`lorastyle.index.calibration`), its own where the family was calibrated,
    else that of the tiny model (unrelated files of real families score far lower), else
    :data:`lorastyle.index.duplicates.NEAR_DEFAULT`.
``related``
    From this score a pair is related: ``similar`` says ``related``, ``map`` joins clusters
    whose average score reaches it. The calibrated "same source likely" score where the family
    was calibrated, else the score from which a pair's p-value under the family's own null
    (:mod:`lorastyle.index.null`) is at most :data:`lorastyle.index.verdicts.ALPHA`, else (a
    family of too few files for such a p-value) the tiny model's calibrated score.
"""

from __future__ import annotations

from .calibration import load_calibration

__all__ = ["near_threshold", "related_threshold", "NEAR_DEFAULT", "RELATED_DEFAULT"]

# Near-duplicate and related scores without any calibration at the index's settings.
NEAR_DEFAULT = 0.7
RELATED_DEFAULT = 0.5


def near_threshold(index, base: str, *, given: float | None = None) -> tuple[float, str]:
    """A base family's near-duplicate threshold in an index, and why it is that one.

    Parameters
    ----------
    index : LoraIndex
    base : str
    given : float, optional
        Given by the user (``--threshold``): used as it is.

    Returns
    -------
    threshold : float
    why : str
        One sentence.
    """
    if given is not None:
        return float(given), "given with --threshold"
    settings = index.sketcher.settings
    tiny = load_calibration(index.descriptor, settings)
    if tiny is None:
        return NEAR_DEFAULT, f"the default: no calibration for the {index.descriptor} descriptor at these settings"
    own = load_calibration(index.descriptor, settings, base)
    if own is not None:
        return own.near_duplicate, (
            f"calibrated on {own.calibrated_on}: halfway between the highest score of two unrelated LoRAs and "
            "the lowest of two checkpoints of one run"
        )
    return tiny.near_duplicate, (
        f"no calibration of its own: the value of {tiny.calibrated_on}; unrelated files of real families "
        "score far lower, so a pair above it shares most of its update"
    )


def related_threshold(index, group, *, given: float | None = None) -> tuple[float, str]:
    """The score from which two files of a group of an index are related, and why it is that one.

    Parameters
    ----------
    index : LoraIndex
    group : Group
    given : float, optional
        Given by the user (``--threshold``): used as it is.

    Returns
    -------
    threshold : float
    why : str
        One sentence.
    """
    from .verdicts import ALPHA

    if given is not None:
        return float(given), "given with --threshold"
    settings = index.sketcher.settings
    own = load_calibration(index.descriptor, settings, group.base)
    if own is not None:
        return own.threshold, f"the 'same source likely' score of {own.calibrated_on}"
    null = group.null
    from_null = null.threshold(ALPHA)
    if from_null is not None:
        return from_null, (
            f"the score from which a pair's p-value is at most {ALPHA:g} among the family's "
            f"{null.n_pairs:,} pairs in this index"
        )
    tiny = load_calibration(index.descriptor, settings)
    if tiny is not None:
        return tiny.threshold, (
            f"too few files for a null of their own ({null.n_pairs} pairs): the 'same source likely' score of "
            f"{tiny.calibrated_on}"
        )
    return RELATED_DEFAULT, f"the default {RELATED_DEFAULT} (no calibration, and too few files for a null)"
