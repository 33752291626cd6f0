"""Which copy of a group of same-weights files to keep, and why: one rule, decided here only.

:func:`choose_copy` is the rule (its docstring states it); ``lorastyle duplicates`` shows its
choice and reason for every group, and ``duplicates --script`` moves the other copies aside.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..io.sidecars import file_facts, find_preview
from .records import Record

__all__ = ["Choice", "choose_copy", "DTYPE_PRECISION", "metadata_count"]

#: Rank of a factor dtype's precision (higher keeps more of the weights); ``mixed`` and unknown: 0.
DTYPE_PRECISION = {"float64": 4, "float32": 3, "float16": 2, "bfloat16": 1}


def metadata_count(record: Record) -> int:
    """How much a file's metadata says: its facts (sidecars and header, see ``inspect``), plus 1 for a preview image.

    Parameters
    ----------
    record : Record
        An indexed file (its sidecar files and preview image are looked up now).

    Returns
    -------
    int
    """
    return len(file_facts(record.path, record.info)) + (find_preview(record.path) is not None)


@dataclass(frozen=True)
class Choice:
    """The copy to keep of a group, and why.

    Attributes
    ----------
    keep : str
        Its path.
    reason : str
        The first criterion of :func:`choose_copy` that sets it before the next-best copy, in words.
    others : list of str
        The other copies, in the rule's order.
    """

    keep: str
    reason: str
    others: list


def _depth(path: str) -> int:
    return len([p for p in os.path.normpath(path).split(os.sep) if p])


def choose_copy(records: list[Record]) -> Choice:
    """The copy to keep of files with the same weights, and why.

    The rule, each step deciding only between copies that the previous steps left tied:

    1. **the most metadata**: the most facts from its sidecar files and header (title, trigger
       words, base model, preferred weight, tags ...; :func:`lorastyle.io.sidecars.file_facts`),
       plus one for a preview image: the copy a LoRA manager knows, whose page a user has seen;
    2. **the most precise dtype** (float32 over float16 over bfloat16): a re-save in a narrower
       dtype rounded the weights, so the wider copy is the source or as good as it;
    3. **the shallowest folder** (fewest path components): copies tend to sit in download, backup
       or ``old`` subfolders, the one in use higher up;
    4. **the oldest modification time** (when it was indexed): the first download; copies are
       made later;
    5. **the path**, in code-point order, so that the choice never depends on the walk's order.

    Parameters
    ----------
    records : list of Record
        At least one; the records of the copies (their sidecars are read now).

    Returns
    -------
    Choice

    Raises
    ------
    ValueError
        For an empty list.
    """
    if not records:
        raise ValueError("choose_copy needs at least one record")
    meta = {r.path: metadata_count(r) for r in records}

    def key(r: Record) -> tuple:
        return (-meta[r.path], -DTYPE_PRECISION.get(r.dtype, 0), _depth(r.path), int(r.identity[3]), r.path)

    ordered = sorted(records, key=key)
    best = ordered[0]
    others = [r.path for r in ordered[1:]]
    if len(ordered) == 1:
        return Choice(best.path, "the only copy", others)
    nxt = ordered[1]
    if meta[best.path] != meta[nxt.path]:
        reason = (
            f"most metadata: {meta[best.path]} against {meta[nxt.path]}, "
            "counting facts of its sidecars and header and a preview"
        )
    elif DTYPE_PRECISION.get(best.dtype, 0) != DTYPE_PRECISION.get(nxt.dtype, 0):
        reason = f"most precise dtype: {best.dtype}, the next copy {nxt.dtype}"
    elif _depth(best.path) != _depth(nxt.path):
        reason = "shallowest folder"
    elif int(best.identity[3]) != int(nxt.identity[3]):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(best.identity[3]) / 1e9))
        reason = f"oldest: modified {when}"
    else:
        reason = "first by path: the copies are alike otherwise"
    return Choice(best.path, reason, others)
