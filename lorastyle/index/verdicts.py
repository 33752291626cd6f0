"""What a result of ``similar`` is, in plain words: same weights, same run, related, or nothing close.

In this order, the first that holds:

``same weights``
    one sha256, or the same module set with equal module norms and a score of at least
    :data:`lorastyle.index.duplicates.SAME_SCORE` (:func:`lorastyle.index.duplicates.same_weights`);
``same run``
    a near-duplicate: a score at or above the family's near-duplicate threshold
    (:func:`lorastyle.index.duplicates.near_thresholds`): checkpoints of one run, rank-resized copies,
    the same update at another strength;
``related``
    a p-value at most :data:`ALPHA` under the family's null (:mod:`lorastyle.index.null`): the pair
    scores higher than all but a fraction ``ALPHA`` of pairs of the family's files in the index;
``nothing close``
    anything else.
"""

from __future__ import annotations

__all__ = ["ALPHA", "VERDICTS", "verdict", "verdict_text"]

# p-values at or below this are "related" (1% of the family's pairs of the index score as high)
ALPHA = 0.01
VERDICTS = ("same weights", "same run", "related", "nothing close")


def verdict(query, record, score: float, *, near_threshold: float, p_value: float) -> str:
    """The verdict of one result (see the module docstring).

    Parameters
    ----------
    query, record : Record
        The query's record and the result's.
    score : float
    near_threshold : float
        The family's near-duplicate threshold.
    p_value : float

    Returns
    -------
    str
        One of :data:`VERDICTS`.
    """
    from .duplicates import same_weights

    if same_weights(query, record, score):
        return "same weights"
    if score >= near_threshold:
        return "same run"
    if p_value <= ALPHA:
        return "related"
    return "nothing close"


def verdict_text(item: dict) -> str:
    """A result's verdict as ``similar`` prints it: ``same weights``, ``same run (near-duplicate)``,
    ``related (p=0.004)``, ``nothing close (p=0.31)``.

    Parameters
    ----------
    item : dict
        A result of :meth:`lorastyle.index.store.LoraIndex.similar` (``verdict``, ``p_value``).

    Returns
    -------
    str
    """
    v = item.get("verdict")
    if v is None:
        return ""
    if v == "same run":
        return "same run (near-duplicate)"
    if v in ("related", "nothing close"):
        return f"{v} (p={item['p_value']:.2g})"
    return v
