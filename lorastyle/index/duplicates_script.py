"""A reviewable POSIX shell script that sets the extra copies of same-weights files aside.

``lorastyle duplicates ... --script PATH`` writes it; lorastyle never runs it and never deletes
anything. For each group of files with the same weights (never near-duplicates: two versions of
a model are never called copies), the script keeps the copy
:func:`lorastyle.index.keep.choose_copy` chose and

* moves every other copy into a folder (``--to``), under its path relative to the folder all
  the groups' files share, with its sidecar files and preview images (they describe that copy);
* or, with ``--link``, moves it there all the same and puts a hard link to the kept file at its
  path, so that every path a workflow names still loads the same weights.

The space is freed when the user deletes that folder. The script is ``set -eu``; every path is
quoted with :func:`shlex.quote`; a comment line per group names the kept file and why. At run
time it stops before a group whose kept file is gone, and leaves alone a copy whose size changed,
a copy that is already gone, and a destination that exists (nothing is overwritten), saying so.
Groups with a file that changed since it was indexed are left out, with a comment.
"""

from __future__ import annotations

import os
import shlex

from .. import __version__
from ..io.sidecars import PREVIEW_SUFFIXES, SIDECARS, VIDEO_PREVIEW_SUFFIXES, sidecar_path

__all__ = ["duplicates_script", "companion_files", "DEFAULT_FOLDER", "LINK_SUFFIX"]

#: Where the copies go by default (made absolute when the script is written).
DEFAULT_FOLDER = "./lorastyle-duplicates"
#: The hard link is made under this name next to the copy first, so that a link that cannot be made
#: (another file system) stops the script before the copy moves.
LINK_SUFFIX = ".lorastyle-link"

_FUNCTIONS = r"""
say() { printf '%s\n' "$*"; }

# keep FILE: stop before a group whose kept file is gone (its copies would be the last ones)
keep() {
    if [ ! -f "$1" ]; then
        say "lorastyle: the kept file $1 is gone: stopping before its copies" >&2
        exit 1
    fi
}

# ready FILE SIZE DEST: whether FILE should move to DEST (it is there, unchanged, and DEST is free)
ready() {
    if [ ! -f "$1" ]; then
        say "left alone (already gone): $1"
        return 1
    fi
    if [ "$(wc -c < "$1")" -ne "$2" ]; then
        say "left alone (its size changed since it was indexed): $1"
        return 1
    fi
    if [ -e "$3" ] || [ -L "$3" ]; then
        say "left alone ($3 exists, not overwritten): $1"
        return 1
    fi
    return 0
}

# move FILE DEST: move FILE to DEST, making DEST's folder
move() {
    mkdir -p -- "${2%/*}"
    mv -- "$1" "$2"
    say "moved: $1 -> $2"
}

# set_aside FILE SIZE DEST: move a copy aside
set_aside() {
    moved=0
    if ready "$1" "$2" "$3"; then
        move "$1" "$3"
        moved=1
    fi
}

# also FILE DEST: with the copy just moved, move its sidecar file or preview image too
also() {
    if [ "$moved" = 1 ] && [ -f "$1" ] && [ ! -e "$2" ]; then
        move "$1" "$2"
    fi
}

# link_aside KEPT FILE SIZE DEST: move a copy aside and put a hard link to KEPT at its path
link_aside() {
    if ready "$2" "$3" "$4"; then
        ln -- "$1" "$2__LINK__"
        move "$2" "$4"
        mv -- "$2__LINK__" "$2"
        say "linked: $2 -> $1"
    fi
}
""".replace("__LINK__", LINK_SUFFIX)


def _comment(text: str) -> str:
    """Text safe on a comment line: a newline or other control character in a name cannot end it."""
    return "".join(c if c.isprintable() else "?" for c in text)


def companion_files(path: str) -> list[str]:
    """The sidecar files and preview images of a LoRA file that exist (they move with it).

    Parameters
    ----------
    path : str
        The LoRA file.

    Returns
    -------
    list of str
        ``NAME.json``, ``NAME.metadata.json``, ``NAME.civitai.info`` and ``NAME.preview.png``,
        ``NAME.png`` ... (:data:`lorastyle.io.sidecars.PREVIEW_SUFFIXES`), its preview video
        (:data:`~lorastyle.io.sidecars.VIDEO_PREVIEW_SUFFIXES`), that are regular files.
    """
    stem = os.path.splitext(path)[0]
    candidates = [sidecar_path(path, kind) for kind in SIDECARS]
    candidates += [stem + s for s in PREVIEW_SUFFIXES + VIDEO_PREVIEW_SUFFIXES]
    return [c for c in dict.fromkeys(candidates) if os.path.isfile(c)]


def duplicates_script(
    index, report, *, to: str = DEFAULT_FOLDER, link: bool = False, command: str = "lorastyle duplicates"
) -> str:
    """The text of the shell script that sets aside the extra copies of each same-weights group.

    Parameters
    ----------
    index : LoraIndex
        The index the report was made from (the records' sizes are checked again at run time).
    report : DuplicateReport
        From :func:`lorastyle.index.duplicates.find_duplicates`; only its ``same_weights`` groups are
        used: each group's ``keep`` is kept (:func:`lorastyle.index.keep.choose_copy`), and a group
        with ``stale`` paths is left out.
    to : str, default=DEFAULT_FOLDER
        The folder the copies go to (made absolute now, from the current folder).
    link : bool, default=False
        Also put a hard link to the kept file at each copy's path.
    command : str, default="lorastyle duplicates"
        The command line that wrote it, for its first comment.

    Returns
    -------
    str
        The script (POSIX ``sh``), ending with a newline.
    """
    to = os.path.abspath(to)
    by_path = {r.path: r for r in index.records}
    groups = [g for g in report.same_weights if not g.get("stale")]
    every = [p for g in groups for p in g["paths"]]
    root = os.path.commonpath([os.path.dirname(p) for p in every]) if every else "/"
    action = (
        "moves it into the folder below and puts a hard link to the kept file in its place"
        if link
        else ("moves it, with its sidecar files and preview images, into the folder below")
    )
    lines = [
        "#!/bin/sh",
        f"# Written by lorastyle {__version__}: {_comment(command)}",
        "# Review it, then run it with sh. It deletes nothing: for each group of files with the same weights it",
        f"# keeps one copy and {action}; delete that folder",
        "# yourself to free the space. Near-duplicates (other versions of a model) are never listed.",
        "# The kept copy: the most metadata (sidecar facts, a preview), then the most precise dtype, then the",
        "# shallowest folder, then the oldest modification time, then the path (lorastyle.index.keep).",
        "set -eu",
        _FUNCTIONS.rstrip("\n"),
        "",
        f"to={shlex.quote(to)}",
    ]
    n = 0
    for g in report.same_weights:
        lines.append("")
        if g.get("stale"):
            lines.append(
                "# left out: "
                + _comment(", ".join(g["stale"]))
                + " changed since it was indexed: re-run lorastyle on the folder first"
            )
            continue
        kept, reason = g["keep"], g["keep_reason"]
        how = "identical files" if g["identical_bytes"] else "same weights"
        lines.append(f"# {how}, {g['base']}: keep {_comment(kept)}; why: {_comment(reason)}")
        lines.append(f"keep {shlex.quote(kept)}")
        for path in g["paths"]:
            if path == kept:
                continue
            n += 1
            rel = os.path.relpath(path, root)
            dest = '"$to"/' + shlex.quote(rel)
            size = by_path[path].size
            if link:
                lines.append(f"link_aside {shlex.quote(kept)} {shlex.quote(path)} {size} {dest}")
            else:
                lines.append(f"set_aside {shlex.quote(path)} {size} {dest}")
                for extra in companion_files(path):
                    lines.append(f"also {shlex.quote(extra)} " + '"$to"/' + shlex.quote(os.path.relpath(extra, root)))
    if not n:
        lines += ["", "# nothing to set aside"]
    return "\n".join(lines) + "\n"
