"""Indexing a folder safely: one writer at a time, atomic output, resumable after a kill.

* the index file is replaced atomically (:func:`lorastyle.io.atomic.atomic_write`), so after a
  crash or a ``kill -9`` it is the previous complete index or the new complete one;
* a re-run does not read files that are unchanged since the previous index (same path, device,
  inode, size and mtime), and records made by an interrupted run are taken from
  ``INDEX.cache/`` (:class:`~lorastyle.index.cache.RecordCache`), which is removed once the
  index is written;
* ``INDEX.lock`` (``flock``) lets one run at a time write an index: a second run is refused at
  once (:class:`~lorastyle.errors.IndexBusyError`); the lock file is removed when the run ends,
  however it ends short of a kill.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..descriptors import DEFAULT_DESCRIPTOR, ModuleSelection
from ..errors import IndexBusyError, LoraFormatError, NotEnoughLorasError
from ..io.atomic import remove_temporaries
from .build import BuildStats, Progress, build_index
from .cache import CACHE_SUFFIX, RecordCache
from .freshness import Refresh, refresh_of
from .settings import IndexSettings
from .sketches import Sketcher
from .store import INDEX_FORMAT, LoraIndex
from .walk import find_lora_files

try:  # POSIX; elsewhere index runs are not serialised (documented)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["IndexRun", "index_folder", "index_lock"]


@contextmanager
def index_lock(output: str | os.PathLike) -> Iterator[None]:
    """Hold ``OUTPUT.lock`` while an index is written; refuse if another process holds it.

    The lock is ``flock`` on the lock file, released by the kernel when the holder exits, however
    it exits (``kill -9`` included), so a crashed run never blocks the next one. The holder
    removes the file when it is done; a run that locks a file another run has just removed
    notices (the path no longer names the locked file) and locks the new one instead.

    Parameters
    ----------
    output : str or path-like
        The index file.

    Raises
    ------
    IndexBusyError
        If another process holds the lock.
    OSError
        If the lock file cannot be created.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    lock = f"{os.fspath(output)}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise IndexBusyError(output) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed it after we opened it: lock the current file
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a person who wonders
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)  # releases the lock


@dataclass
class IndexRun:
    """What :func:`index_folder` did.

    Attributes
    ----------
    index : LoraIndex
    skipped : list of (path, reason)
        Every LoRA-like file not indexed: entries the walk could not use, then files that could
        not be indexed. ``len(index.paths) + len(skipped) == n_files``.
    n_files : int
        LoRA-like files found (indexed or skipped).
    stats : BuildStats
        Files read now, reused from the previous index, found in the cache.
    unlisted : list of (path, reason)
        Folders that could not be listed (not files: not in ``skipped``).
    repeated : list of (path, path)
        Folders reached again through links, and the path each was walked by (read once; not
        errors, not files).
    refresh : Refresh or None
        What changed since the previous index at the output (new, changed and gone files); None
        when there was none to compare with (a first run, ``use_cache=False``, or an index of
        another format or settings, which is rebuilt).
    written : bool
        Whether the index file was written (not when the previous one, of this format, already
        held exactly this index).
    """

    index: LoraIndex
    skipped: list
    n_files: int
    stats: BuildStats
    unlisted: list = field(default_factory=list)
    repeated: list = field(default_factory=list)
    refresh: Refresh | None = None
    written: bool = True


def _previous(output: str) -> LoraIndex | None:
    """The index at ``output`` if there is a readable one of this format (else None: start afresh)."""
    if not os.path.exists(output):
        return None
    try:
        return LoraIndex.load(output)
    except LoraFormatError:
        return None


def _same_index(previous: LoraIndex | None, index: LoraIndex) -> bool:
    """Whether ``index`` is ``previous`` again: the same groups (kept whole), skips and fit, in this format."""
    return (
        previous is not None
        and previous.loaded_format == INDEX_FORMAT
        and previous.settings == index.settings
        and previous.fitted_with == index.fitted_with
        and previous.skipped == index.skipped
        and list(previous.groups) == list(index.groups)
        and all(index.groups[k] is g for k, g in previous.groups.items())
    )


def index_folder(
    root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    descriptor: str = DEFAULT_DESCRIPTOR,
    n_components: int = 8,
    select: ModuleSelection | None = None,
    base: str | None = None,
    sketcher: Sketcher | None = None,
    use_cache: bool = True,
    calibrate: bool = True,
    random_state=0,
    progress: Progress | None = None,
    client=None,
) -> IndexRun:
    """Index every LoRA file under a folder into ``output``, safely (what ``lorastyle index`` runs).

    Parameters
    ----------
    root, output : str or path-like
        The folder, and the index file to write (its folder must exist).
    descriptor, n_components, select, base, sketcher, calibrate, random_state, progress, client
        As in :func:`~lorastyle.index.build.build_index` (``client``: read the files on a Dask
        cluster; the lock, the cache and the index file stay with this process).
    use_cache : bool, default=True
        Keep records in ``OUTPUT.cache/`` while running (for a resume after a kill) and reuse the
        previous index's records of unchanged files.

    Returns
    -------
    IndexRun

    Raises
    ------
    IndexBusyError
        If another run holds the lock.
    NotEnoughLorasError
        If no file was found or none could be indexed; ``skipped`` has every reason (refused
        entries and folders that could not be listed).
    LoraFormatError
        If the output's folder does not exist (named in the error).
    OSError
        If the index or its lock cannot be written.
    """
    output = os.path.abspath(os.fspath(output))
    folder = os.path.dirname(output)
    if not os.path.isdir(folder):
        raise NotEnoughLorasError(folder, "the folder of the index file does not exist")
    sketcher = sketcher or Sketcher()
    cache_dir = f"{output}.cache"
    with index_lock(output):
        remove_temporaries(folder, re.escape(os.path.basename(output)))
        remove_temporaries(cache_dir, ".*" + re.escape(CACHE_SUFFIX))
        walk = find_lora_files(root, exclude=[output, cache_dir, f"{output}.lock"])
        problems = walk.refused + walk.unlisted
        if not walk.files:
            raise NotEnoughLorasError(root, "no LoRA files (.safetensors) found", problems)
        settings = IndexSettings(descriptor, sketcher, select)
        cache = RecordCache(cache_dir, {**settings.to_json(), "format": "records"}) if use_cache else None
        previous = _previous(output) if use_cache else None
        try:
            index, skipped, stats = build_index(
                walk.files,
                descriptor=descriptor,
                n_components=n_components,
                select=select,
                sketcher=sketcher,
                base=base,
                calibrate=calibrate,
                random_state=random_state,
                previous=previous,
                cache=cache,
                progress=progress,
                client=client,
                identities=walk.identities,
            )
        except NotEnoughLorasError as exc:
            raise NotEnoughLorasError(root, exc.reason, problems + exc.skipped) from None
        written = not _same_index(previous, index)
        if written:  # an unchanged library is not written again (GBs at 70,000 files)
            index.save(output)
        if cache is not None:
            cache.clear()
    same_settings = previous is not None and previous.settings == index.settings
    return IndexRun(
        index=index,
        skipped=walk.refused + skipped,
        n_files=walk.n_files,
        stats=stats,
        unlisted=walk.unlisted,
        repeated=walk.repeated,
        refresh=refresh_of(previous, index) if same_settings else None,
        written=written,
    )
