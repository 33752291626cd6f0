"""Folding long benchmark tables (lorastyle.book.tables) on worked examples."""

import pytest

from lorastyle.book.tables import folded_table, markdown_table_rows

TEXT = """### B9: a title

| a | b \\| c |
|---|---:|
| 1 | **met** |
| 2 | `x` |
| 3 | 3 |

A note below.
"""


def test_markdown_table_rows_splits_text_and_cells():
    before, header, rows, after = markdown_table_rows(TEXT)
    assert before.strip() == "### B9: a title"
    assert header == ["a", "b | c"]
    assert rows == [["1", "**met**"], ["2", "`x`"], ["3", "3"]]
    assert after.strip() == "A note below."
    with pytest.raises(ValueError, match="no markdown table"):
        markdown_table_rows("just text")


def test_folded_table_keeps_the_first_rows_and_folds_all():
    out = folded_table(TEXT, keep=2)
    shown, folded = out.split("<details>")
    assert shown.count("<tr>") == 3 and "<td>3</td>" not in shown  # header + 2 rows
    assert "<summary>All 3 rows</summary>" in folded and folded.count("<tr>") == 4
    assert "<b>met</b>" in shown and "<code>x</code>" in shown and "b | c" in shown
    assert out.startswith("<p>B9: a title</p>") and out.endswith("<p>A note below.</p>")
    whole = folded_table(TEXT, keep=3)
    assert "<details>" not in whole and whole.count("<tr>") == 4
    with pytest.raises(ValueError, match="keep"):
        folded_table(TEXT, keep=0)


def test_folded_table_refuses_two_tables():
    with pytest.raises(ValueError, match="more than one table"):
        folded_table(TEXT + "\n| x |\n|---|\n| 1 |\n")
