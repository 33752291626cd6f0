"""Atomic file replacement: after a crash a file is the old complete one or the new complete one.

Every file lorastyle writes (LoRAs, indexes, cache entries, the build's JSON
and arrays, feature caches) goes through :func:`atomic_write`: the bytes go to
a temporary file in the same folder, which is flushed and fsynced, renamed
over the destination, and the folder is fsynced so that the rename itself
survives a power cut.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_path", "fsync_folder", "remove_temporaries", "TEMPORARY_SUFFIX"]

# Temporary files are ".NAME.<random>.tmp" next to NAME: hidden, and recognisable after a kill.
TEMPORARY_SUFFIX = ".tmp"


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(path: str | os.PathLike) -> None:
    """Make a rename inside ``path``'s folder durable (POSIX); a no-op where folders cannot be opened.

    Parameters
    ----------
    path : str or path-like
        A file whose folder is fsynced.
    """
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to ``path``; on success it is fsynced and renamed over ``path``.

    For writers that want a file name rather than a file object (``np.savez``).

    Parameters
    ----------
    path : str or path-like
        The destination.
    suffix : str, default=""
        Added to the temporary name, for writers that append one
        (``np.savez`` adds ``.npz`` to names without it).

    Yields
    ------
    Path
        Where to write. On an exception it is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX + suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
    finally:
        os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object] | bytes | str) -> None:
    """Replace ``path`` atomically with what ``write`` writes (or with the given bytes or text).

    Parameters
    ----------
    path : str or path-like
    write : callable, bytes or str
        A function given the open binary file, or the content itself (``str``
        is written as UTF-8).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if callable(write):
            write(fh)
        else:
            fh.write(write.encode("utf-8") if isinstance(write, str) else write)
        fh.flush()


def remove_temporaries(folder: str | os.PathLike, name_pattern: str = ".*") -> int:
    """Delete temporary files that a killed writer left in ``folder``; return how many.

    Call it only where no other writer can be running (with the index's lock held).

    Parameters
    ----------
    folder : str or path-like
    name_pattern : str, default=".*"
        Regular expression the destination's name must match (the temporary
        file of NAME is ``.NAME.<random>.tmp``).
    """
    match = re.compile(rf"^\.(?:{name_pattern})\.[^.]+{re.escape(TEMPORARY_SUFFIX)}(?:\.\w+)?$").match
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if match(name):
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed
