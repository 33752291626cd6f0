"""The errors lorastyle raises, one base class for all of them.

Every error carries the path it is about (a file, a folder, an index, or an
option such as ``--components``) and the reason in words, so that the command
line prints each one as ``error: PATH: reason`` and nothing else.

Each class is also the built-in exception a caller would expect (a bad file is
a ``ValueError``, a busy index a ``RuntimeError``), so ``except ValueError``
keeps working.
"""

from __future__ import annotations

import os

__all__ = [
    "LorastyleError",
    "LoraFormatError",
    "UnreadableFileError",
    "IncomparableLorasError",
    "NotEnoughLorasError",
    "IndexBusyError",
    "ClusterError",
    "WeightsChecksumError",
    "NotEnoughMemoryError",
]


class LorastyleError(Exception):
    """Base of every lorastyle error: ``path`` is what it is about, ``reason`` what went wrong.

    Parameters
    ----------
    path : str or path-like
        The file, folder or option the error is about.
    reason : str
        What went wrong, in words, without the path.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) across pickling (worker processes)
        return (type(self), (self.path, self.reason))


class LoraFormatError(LorastyleError, ValueError):
    """A file that is not a usable LoRA (or not a usable index): damaged, a pickle, an unknown layout."""


class UnreadableFileError(LoraFormatError):
    """A file that could not be read now (a permission, an I/O error, a file changing while read).

    The reason depends on the moment, so an index never remembers it: the file is tried again.
    """


class IncomparableLorasError(LorastyleError, ValueError):
    """LoRAs whose descriptors cannot share one space; ``path`` is the odd one out."""


class NotEnoughLorasError(LorastyleError, ValueError):
    """Fewer than two files could be embedded together; ``skipped`` says why the others were not.

    Parameters
    ----------
    path : str
        The folder (or the first file) that was being indexed.
    reason : str
    skipped : list of (path, reason)
    """

    def __init__(self, path: str | os.PathLike, reason: str, skipped: list[tuple[str, str]] | None = None):
        super().__init__(path, reason)
        self.skipped = list(skipped or [])

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.skipped))


class IndexBusyError(LorastyleError, RuntimeError):
    """Another process holds the lock of this index (it is writing it)."""

    def __init__(self, path: str | os.PathLike, reason: str = "another lorastyle index is writing it"):
        super().__init__(path, reason)


class WeightsChecksumError(LorastyleError, RuntimeError):
    """A packaged weight file whose sha256 is not the one lorastyle was checked against."""


class ClusterError(LorastyleError, RuntimeError):
    """A Dask cluster that cannot do the work: no scheduler at the address, no worker, a worker without lorastyle."""


class NotEnoughMemoryError(LorastyleError, MemoryError):
    """Work that would not fit in the memory this process may use, refused before it starts."""
