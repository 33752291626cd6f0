"""Finding the LoRA files of a folder: recursively, following symbolic links, never looping.

LoRA managers and ComfyUI set-ups often link folders into one another (``models/loras/sdxl`` ->
``/mnt/big/sdxl-loras``), so links to folders are followed. Each real folder is visited once
(by device and inode), so a link back up the tree, or two links to one folder, neither loops
nor lists a file twice. A link that would revisit a folder is not an error and not a skipped
file: it is listed in :attr:`FolderWalk.repeated` (the folder's files are listed once, under the
path it was first reached by; the folder itself is listed there too when a link reached it first).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..io.formats import LORA_SUFFIXES

__all__ = ["find_lora_files", "FolderWalk", "file_kind", "identity"]


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``a named pipe``, ``a socket``, ``a device``).

    Parameters
    ----------
    mode : int
        ``st_mode`` of the file.

    Returns
    -------
    str
    """
    for test, name in (
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a file"


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns) of a file: changes whenever the file is replaced or written.

    Parameters
    ----------
    st : os.stat_result

    Returns
    -------
    tuple of int
    """
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class FolderWalk:
    """What :func:`find_lora_files` found under a folder.

    Attributes
    ----------
    files : list of str
        Regular files (or links to them) with a LoRA suffix, pickle suffixes included so that
        they are reported as refused rather than ignored; depth first, in name order. Names
        that are not valid UTF-8 come back as ``str`` with surrogate escapes (``os.fsdecode``),
        which ``open`` accepts. A file reached twice through links is listed once.
    refused : list of (path, reason)
        Entries with a LoRA suffix that cannot be read: not regular files (a FIFO would block
        the reader forever), or that cannot be examined (a dangling link, a link loop). Each is
        a LoRA-like file that is not indexed.
    unlisted : list of (path, reason)
        Folders that could not be listed (their files, if any, are unknown).
    repeated : list of (path, path)
        Folders already walked, reached again (a second link to one folder, a link back up the
        tree, or the folder itself after a link to it), with the path it was walked by: read once.
    identities : dict of str to tuple
        Each listed file's :func:`identity` when it was walked (the index compares it with its
        records' instead of asking the system again: one ``stat`` per unchanged file).
    """

    files: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    unlisted: list = field(default_factory=list)
    repeated: list = field(default_factory=list)
    identities: dict = field(default_factory=dict)

    @property
    def n_files(self) -> int:
        """LoRA-like files found: the listed ones and the refused ones."""
        return len(self.files) + len(self.refused)


def find_lora_files(root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = ()) -> FolderWalk:
    """Every LoRA-like file under ``root``, recursively, in walk order; and what could not be walked.

    Parameters
    ----------
    root : str or path-like
    exclude : iterable of paths, optional
        Files or folders to leave out (an index's own file, lock and cache).

    Returns
    -------
    FolderWalk
        The files, the refused entries, the folders that could not be listed and the links to
        folders already walked.
    """
    root = os.fspath(root)
    skip = {os.path.abspath(os.fspath(p)) for p in exclude}
    walk = FolderWalk()
    found, refused = walk.files, walk.refused
    seen_folders: dict[tuple[int, int], str] = {}
    seen_files: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
        seen_folders[(st.st_dev, st.st_ino)] = root
    except OSError:
        pass  # reported by scandir below
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            walk.unlisted.append((folder, f"cannot list folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            if os.path.abspath(entry.path) in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    st = os.stat(entry.path)
                    key = (st.st_dev, st.st_ino)
                    if key in seen_folders:  # a link to it (or a link walked before it): walked once already
                        walk.repeated.append((entry.path, seen_folders[key]))
                        continue
                    seen_folders[key] = entry.path
                    subfolders.append(entry.path)
                    continue
                if not entry.name.lower().endswith(LORA_SUFFIXES) or entry.name.startswith("."):
                    continue
                st = os.stat(entry.path)  # follows links: the file that would be read
            except OSError as exc:
                refused.append((entry.path, f"cannot read file: {exc.strerror or exc}"))
                continue
            if not stat.S_ISREG(st.st_mode):
                refused.append((entry.path, f"not a regular file ({file_kind(st.st_mode)})"))
                continue
            if (st.st_dev, st.st_ino) in seen_files:
                continue  # the same file through another link (hard links too)
            seen_files.add((st.st_dev, st.st_ino))
            found.append(entry.path)
            walk.identities[entry.path] = identity(st)
        stack.extend(reversed(subfolders))  # depth first, in name order, like os.walk
    return walk
