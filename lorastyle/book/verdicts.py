"""The rules that turn the ledger's numbers into verdicts: each one can return each verdict it names.

A verdict follows from a test that could have gone the other way. The rules here are pure
functions of intervals and thresholds, so that a test can feed each one numbers that produce
each of its verdicts (``tests/book/test_verdicts.py``), and the ledger
(:mod:`lorastyle.book.ledger`) applies them to the collection's measurements.

Verdicts (:data:`VERDICTS`):

``holds``
    the test the claim implies came out in its favour;
``holds in part``
    a claim of several parts of which some hold and others do not;
``inconclusive``
    the interval is too wide to decide either way (neither the claim nor its negation shown);
``does not hold here``
    the test came out against the claim (for "A beats B": no advantage as large as the margin);
``untestable here``
    a precondition fails (the generator does not draw; no data for it).

Intervals are 95% intervals of a difference (bootstrap over artists in the ledger). "A beats B" holds
when the interval of A - B lies above 0 and does not hold when it lies below :data:`MARGIN` (A's
advantage, if any, is smaller than the margin: two one-sided tests in spirit); "A ties B" holds when
the interval lies inside ``(-MARGIN, MARGIN)`` and does not hold when it lies wholly outside it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "VERDICTS",
    "MARGIN",
    "beats",
    "ties",
    "above_chance",
    "combine",
    "at_least",
]

VERDICTS = ("holds", "holds in part", "inconclusive", "does not hold here", "untestable here")

#: The smallest difference in top-1 (a share of queries) that counts: 0.05, about 5 of 108 queries.
MARGIN = 0.05


def _check_interval(low: float, high: float) -> None:
    if not low <= high:
        raise ValueError(f"an interval needs low <= high, got [{low}, {high}]")


def beats(low: float, high: float, *, margin: float = MARGIN) -> str:
    """Verdict on "A beats B" from the interval of A - B.

    Parameters
    ----------
    low, high : float
        The interval of the difference A - B.
    margin : float, default=MARGIN
        The smallest advantage that counts.

    Returns
    -------
    {"holds", "does not hold here", "inconclusive"}
        ``holds`` when ``low > 0``; ``does not hold here`` when ``high < margin`` (no advantage
        as large as the margin, or B ahead); ``inconclusive`` otherwise.

    Raises
    ------
    ValueError
        For ``low > high`` or a negative margin.
    """
    _check_interval(low, high)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if low > 0:
        return "holds"
    if high < margin:
        return "does not hold here"
    return "inconclusive"


def ties(low: float, high: float, *, margin: float = MARGIN) -> str:
    """Verdict on "A ties B" (an equivalence claim) from the interval of A - B.

    Parameters
    ----------
    low, high : float
        The interval of the difference A - B.
    margin : float, default=MARGIN
        Differences smaller than this in size count as a tie.

    Returns
    -------
    {"holds", "does not hold here", "inconclusive"}
        ``holds`` when the interval lies inside ``(-margin, margin)``; ``does not hold here``
        when it lies wholly outside (``low >= margin`` or ``high <= -margin``);
        ``inconclusive`` otherwise. A difference that is merely not significant is not a tie.

    Raises
    ------
    ValueError
        For ``low > high`` or a margin that is not positive.
    """
    _check_interval(low, high)
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if -margin < low and high < margin:
        return "holds"
    if low >= margin or high <= -margin:
        return "does not hold here"
    return "inconclusive"


def above_chance(low: float, high: float, chance: float) -> str:
    """Verdict on "better than chance" from a top-1 interval.

    Parameters
    ----------
    low, high : float
        The top-1 interval.
    chance : float
        The top-1 of a random ranking.

    Returns
    -------
    {"holds", "does not hold here", "inconclusive"}
        ``holds`` when ``low > chance``; ``does not hold here`` when ``high <= chance``;
        ``inconclusive`` when the interval straddles chance.

    Raises
    ------
    ValueError
        For ``low > high``.
    """
    _check_interval(low, high)
    if low > chance:
        return "holds"
    if high <= chance:
        return "does not hold here"
    return "inconclusive"


def combine(parts: Sequence[str]) -> str:
    """One verdict for a claim made of several parts (each a verdict of its own).

    Parameters
    ----------
    parts : sequence of str
        Verdicts of :data:`VERDICTS`.

    Returns
    -------
    str
        ``untestable here`` if any part is; the common verdict when all parts agree;
        ``holds in part`` when some parts hold; ``does not hold here`` when none holds and some
        do not hold; ``inconclusive`` otherwise.

    Raises
    ------
    ValueError
        For no parts or a part that is not a verdict.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("combine needs at least one verdict")
    unknown = [p for p in parts if p not in VERDICTS]
    if unknown:
        raise ValueError(f"not verdicts: {unknown}; choose from {list(VERDICTS)}")
    if "untestable here" in parts:
        return "untestable here"
    if len(set(parts)) == 1:
        return parts[0]
    if "holds" in parts or "holds in part" in parts:
        return "holds in part"
    if "does not hold here" in parts:
        return "does not hold here"
    return "inconclusive"


def at_least(value: float, goal: float, *, floor: float) -> str:
    """Verdict on a measured value against a goal, with a floor below which the claim fails.

    Parameters
    ----------
    value : float
    goal : float
        At or above: ``holds``.
    floor : float
        At or below: ``does not hold here``; between floor and goal: ``holds in part``.

    Returns
    -------
    {"holds", "holds in part", "does not hold here"}

    Raises
    ------
    ValueError
        For ``floor >= goal``.
    """
    if floor >= goal:
        raise ValueError(f"floor must be below goal, got floor={floor}, goal={goal}")
    if value >= goal:
        return "holds"
    if value <= floor:
        return "does not hold here"
    return "holds in part"
