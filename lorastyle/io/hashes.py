"""Hashes of files, read in chunks (one pass, several hashes updated from the same bytes)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256", "CHUNK_BYTES"]

CHUNK_BYTES = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a whole file.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        64 hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()
