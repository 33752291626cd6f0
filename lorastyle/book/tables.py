"""Tables for the rendered book: long benchmark tables folded under a few rows a reader scans.

A benchmark writes its table as GitHub-flavoured markdown (``benchmarks/results/bN.md``);
:func:`folded_table` shows its text and first rows as HTML and folds the full table into a
``<details>`` block, so a 90-row table takes a screen, not seventeen.
"""

from __future__ import annotations

import html
import re

__all__ = ["markdown_table_rows", "folded_table"]

_DELIMITER = re.compile(r"^\s*\|?(\s*:?-+:?\s*\|)+\s*(:?-+:?\s*)?$")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def markdown_table_rows(text: str) -> tuple[str, list[str], list[list[str]], str]:
    """Split markdown text around its first table.

    Parameters
    ----------
    text : str
        Markdown with one GitHub-flavoured table (a header row, a delimiter row, body rows).

    Returns
    -------
    before : str
        The text above the table.
    header : list of str
    rows : list of list of str
        The body rows' cells (escaped pipes ``\\|`` read as ``|``).
    after : str
        The text below the table.

    Raises
    ------
    ValueError
        If the text holds no table.
    """
    lines = text.splitlines()
    for i in range(1, len(lines)):
        if _DELIMITER.match(lines[i]) and "|" in lines[i - 1]:
            end = i + 1
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            rows = [_cells(line) for line in lines[i + 1 : end]]
            return "\n".join(lines[: i - 1]), _cells(lines[i - 1]), rows, "\n".join(lines[end:])
    raise ValueError("no markdown table in the text")


def _inline(cell: str) -> str:
    """Escape a cell and keep the two marks the benchmark tables use: **bold** and `code`."""
    cell = html.escape(cell)
    cell = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", cell)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", cell)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="folded"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def folded_table(text: str, *, keep: int = 8, summary: str | None = None) -> str:
    """A markdown table as HTML: its first ``keep`` rows, then the whole table folded below.

    Parameters
    ----------
    text : str
        Markdown holding one table (text around it is kept as paragraphs, escaped).
    keep : int, default=8
        Body rows shown before the fold; a table no longer than that is shown whole.
    summary : str, optional
        The fold's label; default "All N rows".

    Returns
    -------
    str
        HTML.

    Raises
    ------
    ValueError
        If the text holds no table or more than one, or ``keep`` is below 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    before, header, rows, after = markdown_table_rows(text)
    if any(_DELIMITER.match(line) for line in after.splitlines()):
        raise ValueError("the text holds more than one table: fold them one by one")
    paragraphs = "".join(f"<p>{_inline(p.lstrip('#').strip())}</p>" for p in before.split("\n\n") if p.strip())
    tail = "".join(f"<p>{_inline(p.strip())}</p>" for p in after.split("\n\n") if p.strip())
    if len(rows) <= keep:
        return paragraphs + _html_table(header, rows) + tail
    label = html.escape(summary or f"All {len(rows)} rows")
    return (
        paragraphs
        + _html_table(header, rows[:keep])
        + f"<details><summary>{label}</summary>{_html_table(header, rows)}</details>"
        + tail
    )
