"""Every verdict rule returns each verdict it names, on worked numbers (lorastyle.book.verdicts)."""

import pytest

from lorastyle.book.verdicts import MARGIN, VERDICTS, above_chance, at_least, beats, combine, ties


@pytest.mark.parametrize(
    "low, high, verdict",
    [
        (0.01, 0.20, "holds"),  # A ahead on every resample
        (-0.10, 0.03, "does not hold here"),  # any advantage is below the margin
        (-0.20, -0.05, "does not hold here"),  # B ahead
        (-0.02, 0.12, "inconclusive"),  # could be a tie or a real advantage
    ],
)
def test_beats(low, high, verdict):
    assert beats(low, high) == verdict


@pytest.mark.parametrize(
    "low, high, verdict",
    [
        (-0.03, 0.04, "holds"),  # inside the margin on both sides
        (0.06, 0.15, "does not hold here"),  # A clearly ahead
        (-0.30, -0.05, "does not hold here"),  # B clearly ahead (touching the margin counts as outside)
        (-0.08, 0.02, "inconclusive"),  # not significant, and still no tie: too wide
    ],
)
def test_ties(low, high, verdict):
    assert ties(low, high) == verdict


@pytest.mark.parametrize(
    "low, high, verdict", [(0.10, 0.30, "holds"), (0.01, 0.03, "does not hold here"), (0.02, 0.2, "inconclusive")]
)
def test_above_chance(low, high, verdict):
    assert above_chance(low, high, chance=0.037) == verdict


@pytest.mark.parametrize(
    "parts, verdict",
    [
        (["holds", "holds"], "holds"),
        (["holds", "does not hold here"], "holds in part"),
        (["holds", "inconclusive"], "holds in part"),
        (["inconclusive", "does not hold here"], "does not hold here"),
        (["inconclusive", "inconclusive"], "inconclusive"),
        (["does not hold here"], "does not hold here"),
        (["holds", "untestable here"], "untestable here"),
    ],
)
def test_combine(parts, verdict):
    assert combine(parts) == verdict


def test_combine_can_return_every_verdict():
    assert {combine([v]) for v in VERDICTS} == set(VERDICTS)


@pytest.mark.parametrize("value, verdict", [(1500, "holds"), (50, "holds in part"), (0.8, "does not hold here")])
def test_at_least(value, verdict):
    assert at_least(value, 1000, floor=1) == verdict


def test_rules_refuse_bad_input():
    with pytest.raises(ValueError, match="low <= high"):
        beats(0.2, 0.1)
    with pytest.raises(ValueError, match="margin"):
        ties(-0.1, 0.1, margin=0)
    with pytest.raises(ValueError, match="not verdicts"):
        combine(["maybe"])
    with pytest.raises(ValueError, match="at least one"):
        combine([])
    with pytest.raises(ValueError, match="floor"):
        at_least(1, 1, floor=2)
    assert MARGIN == pytest.approx(0.05)
