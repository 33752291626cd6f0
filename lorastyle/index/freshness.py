"""Whether an index still describes its files: one ``os.stat`` per file, never a read or a hash.

Every record keeps the file's identity when it was read (:attr:`Record.identity`: device, inode,
size and mtime in ns). A command that reads an index file checks each file's size and mtime
against it (:func:`check_files`; ``similar`` checks only the files it ranks: :class:`FileChecks`):

* **gone**: the path no longer names a regular file (deleted, moved, its folder unmounted). Such a
  file is left out of every result (:func:`without_files`), never reported as a live result or
  as a duplicate;
* **changed**: its size or mtime differs, so its record may describe other weights: results that
  involve it are marked stale.

A command given the folder instead re-indexes it (:func:`lorastyle.index.index_folder`), which
reads new and changed files again and drops gone ones; :func:`refresh_of` says what that changed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from .records import Record
from .search import SketchMatrix
from .store import Group, LoraIndex

__all__ = ["Freshness", "FileChecks", "Refresh", "check_files", "is_changed", "refresh_of", "without_files"]


def is_changed(record: Record, st: os.stat_result) -> bool:
    """Whether a file's size or mtime differs from what its record says (the cheap test: no read).

    Parameters
    ----------
    record : Record
    st : os.stat_result
        The file's ``os.stat`` now.

    Returns
    -------
    bool
    """
    return (int(st.st_size), int(st.st_mtime_ns)) != (int(record.identity[2]), int(record.identity[3]))


@dataclass
class Freshness:
    """What :func:`check_files` found.

    Attributes
    ----------
    gone : list of str
        Indexed paths that no longer name a regular file, in index order.
    changed : list of str
        Indexed files whose size or mtime differs from the index's, in index order.
    n_files : int
        Files checked.
    """

    gone: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    n_files: int = 0

    @property
    def stale(self) -> bool:
        """Whether any file is gone or changed."""
        return bool(self.gone or self.changed)


class FileChecks:
    """Files checked one at a time, when first asked about: a query checks the files it ranks.

    ``similar`` over 70,000 files looks at a few of them; one ``os.stat`` per indexed file would
    cost more than the query. Give :meth:`keep` to :meth:`lorastyle.index.LoraIndex.similar`.

    Attributes
    ----------
    freshness : Freshness
        What the checks found so far (``n_files``: the files checked).
    """

    def __init__(self):
        self.freshness = Freshness()
        self._seen: dict = {}

    def keep(self, record: Record) -> bool:
        """Whether the record's file is still there (it is checked once: gone or changed is noted).

        Parameters
        ----------
        record : Record

        Returns
        -------
        bool
            False for a file that is gone.
        """
        seen = self._seen.get(record.path)
        if seen is None:
            seen = self._seen[record.path] = _check(record, self.freshness)
        return seen


def _check(record: Record, out: Freshness) -> bool:
    """Check one file into ``out``; whether it is still there."""
    out.n_files += 1
    try:
        st = os.stat(record.path)
    except (OSError, ValueError):  # gone, unreachable, or a name the system cannot take
        out.gone.append(record.path)
        return False
    if not stat.S_ISREG(st.st_mode):
        out.gone.append(record.path)
        return False
    if is_changed(record, st):
        out.changed.append(record.path)
    return True


def check_files(index: LoraIndex) -> Freshness:
    """Check every indexed file with one ``os.stat`` (size and mtime against its record).

    Parameters
    ----------
    index : LoraIndex

    Returns
    -------
    Freshness
    """
    out = Freshness()
    for record in index.records:
        _check(record, out)
    return out


def without_files(index: LoraIndex, paths: Iterable[str]) -> LoraIndex:
    """The index without the records of ``paths`` (for example the gone files), for scoring by cosine.

    A group that loses records keeps its other records' sketches, but not its PCA embedding or its
    ANN index (both were fitted with the removed files); a group that loses every record is left
    out. ``index`` itself is not changed.

    Parameters
    ----------
    index : LoraIndex
    paths : iterable of str
        Indexed paths (others are ignored).

    Returns
    -------
    LoraIndex
        ``index`` itself when none of ``paths`` is indexed.
    """
    drop = set(paths)
    if not drop.intersection(index.paths):
        return index
    groups = {}
    for key, group in index.groups.items():
        rows = [i for i, r in enumerate(group.records) if r.path not in drop]
        if len(rows) == len(group.records):
            groups[key] = group
        elif rows:
            records = [group.records[i] for i in rows]
            groups[key] = Group(key=key, records=records, _matrix=SketchMatrix.of(records))
    return LoraIndex(
        descriptor=index.descriptor,
        sketcher=index.sketcher,
        groups=groups,
        select=index.select,
        skipped=list(index.skipped),
    )


@dataclass
class Refresh:
    """What re-indexing a folder into an existing index changed (:func:`refresh_of`).

    Attributes
    ----------
    new : list of str
        Files indexed now that the previous index did not hold.
    changed : list of str
        Files of the previous index read again because their size, mtime or inode changed.
    gone : list of str
        Files of the previous index that are no longer indexed (deleted, moved, or now unreadable).
    """

    new: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    gone: list = field(default_factory=list)

    @property
    def any(self) -> bool:
        """Whether anything changed."""
        return bool(self.new or self.changed or self.gone)


def refresh_of(previous: LoraIndex, index: LoraIndex) -> Refresh:
    """What changed between a previous index of a folder and the one made from it now.

    Parameters
    ----------
    previous, index : LoraIndex

    Returns
    -------
    Refresh
        Paths sorted.
    """
    before = {r.path: tuple(r.identity) for r in previous.records}
    now = {r.path: tuple(r.identity) for r in index.records}
    return Refresh(
        new=sorted(p for p in now if p not in before),
        changed=sorted(p for p in now if p in before and now[p] != before[p]),
        gone=sorted(p for p in before if p not in now),
    )
