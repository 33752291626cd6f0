"""The claims ledger: its markdown, and verdicts that follow the numbers (they change when the numbers do)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lorastyle.book.ledger import DEFAULT_SCORER, _benchmark_rows, benchmark_ledger, markdown_table


def test_markdown_table_is_a_gfm_table_with_escaped_cells():
    text = markdown_table(pd.DataFrame({"claim": ["a | b", "c"], "n": [1, 2]}))
    assert text.splitlines() == ["| claim | n |", "|---|---|", "| a \\| b | 1 |", "| c | 2 |"]


def _write_results(folder, *, ratio, default_top1, default_low, concat_other_init, default_other_init=0.9):
    folder.mkdir(exist_ok=True)
    (folder / "b2.json").write_text(
        json.dumps({"encoders": {"x": {"ratio_to_gram": ratio}, "y": {"ratio_to_gram": ratio * 2}}})
    )
    default = {
        "top1": default_top1,
        "top1_ci": [default_low, 0.99],
        "n_queries": 72,
        "chance_top1": 0.07,
        "top1_other_init": default_other_init,
        "n_queries_other_init": 48,
    }
    concat = {"top1_other_init": concat_other_init, "n_queries_other_init": 12, "chance_top1": 0.057}
    (folder / "wild.json").write_text(json.dumps({"all": {DEFAULT_SCORER: default}, "rank4": {"concat": concat}}))


@pytest.mark.parametrize(
    "numbers, verdicts",
    [
        (dict(ratio=1500.0, default_top1=0.95, default_low=0.88, concat_other_init=0.0), ["holds"] * 3),
        (
            dict(ratio=40.0, default_top1=0.6, default_low=0.5, concat_other_init=0.9),
            ["holds in part", "holds in part", "does not hold here"],  # concat works across seeds here
        ),
        (
            dict(ratio=0.5, default_top1=0.1, default_low=0.03, concat_other_init=0.08, default_other_init=0.3),
            ["does not hold here", "does not hold here", "inconclusive"],
        ),
    ],
)
def test_benchmark_verdicts_follow_their_numbers(tmp_path, numbers, verdicts):
    """Each benchmark rule returns each of its verdicts on numbers made for it."""
    _write_results(tmp_path / "r", **numbers)
    rows = _benchmark_rows(tmp_path / "r")
    assert len(rows) == 3 and [r["verdict"] for r in rows] == verdicts


def test_benchmark_rows_quote_their_numbers(tmp_path):
    _write_results(tmp_path / "good", ratio=1500.0, default_top1=0.95, default_low=0.88, concat_other_init=0.0)
    good = {r["claim"]: r for r in _benchmark_rows(tmp_path / "good")}
    cost = next(r for c, r in good.items() if "cheaper" in c)
    assert "1,500-3,000 times" in cost["measured"]
    assert _benchmark_rows(tmp_path / "absent") == []
    assert list(benchmark_ledger(tmp_path / "absent").columns) == [
        "claim",
        "by",
        "measured",
        "verdict",
        "why",
        "chapter",
    ]


@pytest.mark.parametrize(
    "main_diff, across_diff, verdict",
    [  # intervals of gradient minus concat; the claim: the trained weights beat the gradient
        ((-0.12, -0.06), (-0.15, -0.01), "holds"),  # the weights ahead in both tests
        ((-0.03, 0.02), (-0.02, 0.03), "does not hold here"),  # any lead below the margin in both
        ((-0.12, -0.06), (-0.02, 0.03), "holds in part"),  # ahead only with the same painting allowed
        ((-0.10, 0.02), (-0.10, 0.02), "inconclusive"),  # too wide to tell
    ],
)
def test_base_model_verdict_follows_the_difference_intervals(monkeypatch, main_diff, across_diff, verdict):
    import pandas as pd

    from lorastyle.book import experiments as ex
    from lorastyle.book.ledger import _base_model_rows

    def table(coll, *, collection, encoders, across_paintings=False):
        low, high = across_diff if across_paintings else main_diff
        rows = [("LoRA concat", 0.9, 0.0, 0.0, None), (ex.ENCODER_NAMES["base_gradient"], 0.88, low, high, 0.3)]
        return pd.DataFrame(rows, columns=["representation", "top1", "diff_low", "diff_high", "p_mcnemar"])

    class Coll:
        baselines = ["colour", "pixels", "base_gradient"]

    monkeypatch.setattr(ex, "paired_top1_table", table)
    (row,) = _base_model_rows(Coll())
    assert row["verdict"] == verdict
    Coll.baselines = ["colour", "pixels"]
    assert _base_model_rows(Coll()) == []  # a collection built without it has no such row


@pytest.mark.parametrize(
    "few, many, verdict",
    [
        ([1.3, 1.4, 1.2, 1.5], [1.4, 1.5, 1.3, 1.6, 1.45], "untestable here"),  # both far from their own images
        ([0.2, 0.3, 0.25, 0.2], [1.0, 1.1, 0.9, 1.05, 1.0], "holds"),  # 3-image LoRAs nearer their own: copying
        ([0.9, 1.2, 0.8, 1.1], [1.0, 1.1, 0.9, 1.05, 1.0], "does not hold here"),  # near 1: no copying shown
    ],
)
def test_memorisation_verdict_follows_the_ratio_intervals(monkeypatch, few, many, verdict):
    from lorastyle.book import experiments as ex
    from lorastyle.book.ledger import _memorisation_row

    mem = pd.DataFrame(
        {
            "collection": ["memorisation"] * len(few) + ["main"] * len(many),
            "ratio": few + many,
            "d_own": 1.0,
            "d_others": 1.0,
        }
    )
    monkeypatch.setattr(ex, "memorisation_table", lambda coll: mem)
    row = _memorisation_row(None)
    assert row["verdict"] == verdict
    assert f"(n = {len(few)})" in row["measured"] and f"(n = {len(many)})" in row["measured"]


def _report(passed_flags):
    from lorastyle.book.fidelity import FidelityCheck, FidelityReport

    names = ["base luminance", "base contrast", "LoRAs learn"]
    return FidelityReport([FidelityCheck(n, 0.5, 0.1, ok) for n, ok in zip(names, passed_flags)])


@pytest.mark.parametrize(
    "flags, verdict",
    [((True, True, True), "holds"), ((True, False, True), "does not hold here"), (None, "untestable here")],
)
def test_the_fidelity_row_and_the_rows_it_gates(flags, verdict):
    """The gate's row can say each of its verdicts; a row about generated images keeps its own verdict only
    while the gate passes."""
    from lorastyle.book.ledger import _fidelity_row, _gated, _row

    report = None if flags is None else _report(flags)
    row = _fidelity_row(report)
    assert row["verdict"] == verdict
    generated = _row("S4", "paper", "0.5", "holds", "because", "x")
    gated = _gated(generated, report)
    if verdict == "holds":
        assert gated == generated
    else:
        assert gated["verdict"] == "untestable here" and "fidelity gate" in gated["why"]
        assert gated["measured"] == "0.5"  # the measurement is still shown
    if flags == (True, False, True):
        assert "base contrast" in row["why"] and "base contrast" in gated["why"]


def _paired(rows):
    """A paired_top1_table-like frame: (representation, kind, top1, low, high, diff_low, diff_high)."""
    cols = ["representation", "kind", "top1", "top1_low", "top1_high", "diff_low", "diff_high"]
    frame = pd.DataFrame(rows, columns=cols)
    frame["diff"] = (frame.diff_low + frame.diff_high) / 2
    frame["p_mcnemar"], frame["n"], frame["chance"] = 0.5, 108, 0.04
    return frame


@pytest.mark.parametrize(
    "encoder_diffs, colour_diff, across, verdicts",
    [  # intervals of encoder (or colour) minus concat; across: (concat low, high, colour minus concat)
        (
            [(-0.2, -0.1), (-0.3, -0.05)],
            (-0.02, 0.03),
            (0.10, 0.20, (-0.09, -0.01)),
            ["holds", "holds", "holds"],
        ),
        (
            [(-0.2, -0.1), (-0.02, 0.03)],
            (0.06, 0.2),
            (0.10, 0.20, (-0.1, 0.06)),
            ["holds in part", "does not hold here", "holds in part"],
        ),
        (
            [(0.05, 0.1), (-0.02, 0.03)],
            (-0.08, 0.02),
            (0.01, 0.03, (0.0, 0.03)),
            ["does not hold here", "inconclusive", "does not hold here"],
        ),
        (
            [(-0.1, 0.02), (-0.12, 0.01)],
            (-0.2, -0.06),
            (0.02, 0.10, (-0.1, 0.02)),
            ["inconclusive", "does not hold here", "inconclusive"],
        ),
    ],
)
def test_clustering_rows_return_each_verdict(monkeypatch, encoder_diffs, colour_diff, across, verdicts):
    from lorastyle.book import experiments as ex
    from lorastyle.book.ledger import _clustering_rows

    colour = ex.ENCODER_NAMES["colour"]

    def table(coll, *, collection, encoders, across_paintings=False):
        if across_paintings:
            low, high, (d_low, d_high) = across
            return _paired(
                [("LoRA concat", "descriptor", 0.15, low, high, 0, 0), (colour, "baseline", 0.1, 0, 1, d_low, d_high)]
            )
        rows = [("LoRA concat", "descriptor", 0.8, 0.7, 0.9, 0, 0), (colour, "baseline", 0.8, 0.7, 0.9, *colour_diff)]
        rows += [(f"enc{i}", "image encoder", 0.7, 0.6, 0.8, *d) for i, d in enumerate(encoder_diffs)]
        return _paired(rows)

    class Coll:
        baselines = ["colour", "pixels"]

        def ids(self, collection):
            return []

    monkeypatch.setattr(ex, "paired_top1_table", table)
    monkeypatch.setattr(
        ex,
        "style_reference_table",
        lambda coll, encoders: pd.DataFrame({"representation": ["LoRA concat"], "same_painting": [0.7]}),
    )
    rows = _clustering_rows(Coll(), ["enc0", "enc1"])
    assert [r["verdict"] for r in rows] == verdicts


def _ledger():
    rows = [
        (
            "weights beat images",
            "paper",
            "top-1 0.8 [0.7, 0.9]; more",
            "holds",
            "why a",
            "[Clustering](clustering.ipynb)",
        ),
        ("S4 depends on T", "paper", "S4 0.5; more", "untestable here", "gate", "[Retrieval](retrieval.ipynb)"),
        ("ff is strong", "paper", "0.7 <b>", "does not hold here", "random sets", "[Sub-networks](subnetworks.ipynb)"),
        ("gram finds strangers", "ours", "0.8", "holds", "why d", "[Invariance](invariance.ipynb)"),
    ]
    return pd.DataFrame(rows, columns=["claim", "by", "measured", "verdict", "why", "chapter"])


def test_reader_box_groups_the_papers_claims_by_verdict():
    from lorastyle.book.ledger import reader_box

    box = reader_box(_ledger(), resolution=32)
    assert box.startswith('<div class="admonition tip">') and box.endswith("</div>")
    assert "32-pixel" in box
    assert "<b>Untestable here.</b> S4 depends on T." in box
    assert "Hold: weights beat images." in box and "Do not hold: ff is strong." in box
    assert "Inconclusive: none." in box
    assert "gram finds strangers" not in box  # our findings are in the ledger, not in the paper's line


def test_compact_ledger_keeps_the_key_number_and_folds_the_rest():
    from lorastyle.book.ledger import compact_ledger

    text = compact_ledger(_ledger())
    short, details = text.split("<details>")
    assert "top-1 0.8 [0.7, 0.9]" in short and "more" not in short  # the measurement up to its first ";"
    assert '<a href="clustering.html">Clustering</a>' in short
    assert "0.7 &lt;b&gt;" in short  # cells are escaped
    assert "top-1 0.8 [0.7, 0.9]; more" in details and "random sets" in details
    assert short.count("<tr>") == details.count("<tr>") == 5  # a header and four claims each


@pytest.mark.parametrize(
    "drifts, top1s, verdict",
    [
        ((0.7, 1.02), (0.80, 0.90), "holds"),  # the norm restored and retrieval up by the margin
        ((0.7, 1.02), (1.00, 0.963), "holds in part"),  # the norm restored, retrieval not helped
        ((0.7, 1.02), (0.80, 0.82), "holds in part"),  # retrieval up, less than the margin
        ((0.9, 1.5), (0.9, 0.8), "does not hold here"),  # the norm further off, retrieval down
    ],
)
def test_calibration_row_returns_each_verdict(drifts, top1s, verdict):
    from lorastyle.book.ledger import _calibration_row

    s2 = pd.DataFrame({"setting": ["uncalibrated", "calibrated"], "drift": drifts, "top1": top1s, "n": [27, 27]})
    assert _calibration_row(s2)["verdict"] == verdict


def test_genre_row_says_holds_or_not_from_the_interval(monkeypatch):
    """Genre regions: a map where genres cluster beyond their artists holds; one where they do not, does not."""
    from lorastyle.book import experiments as ex
    from lorastyle.book.ledger import _genre_row

    rng = np.random.default_rng(0)
    artists = np.repeat([f"a{i}" for i in range(12)], 4)
    genres = np.repeat([f"g{i}" for i in range(3)], 16)  # four artists per genre

    class Coll:
        def ids(self, collection):
            return list(range(len(artists)))

        def labels(self, ids, level):
            return artists if level == "artist" else genres

    centres = {g: rng.normal(size=8) * 5 for g in set(genres)}
    clustered = np.stack([centres[g] for g in genres]) + rng.normal(size=(48, 8))
    monkeypatch.setattr(ex, "lora_embedding", lambda coll, ids, d, n_components: clustered[:, :n_components])
    assert _genre_row(Coll(), n_resamples=500)["verdict"] == "holds"
    monkeypatch.setattr(
        ex,
        "lora_embedding",
        lambda coll, ids, d, n_components: (
            rng.normal(size=(48, 8)) + np.repeat(rng.normal(size=(12, 8)) * 5, 4, axis=0)
        )[:, :n_components],
    )
    assert _genre_row(Coll(), n_resamples=500)["verdict"] in ("does not hold here", "inconclusive")
