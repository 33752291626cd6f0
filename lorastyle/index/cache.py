"""The records of an interrupted run, kept so that a re-run does not read those files again.

While ``lorastyle index`` runs, each record it makes is written to ``INDEX.cache/`` (one small
file per record, each written atomically); after the index file is written the folder is
removed, since the index itself then holds every record. After a crash or a kill the next run
finds the records there, by path and file identity (device, inode, size, mtime), and reads only
the files they lack. An entry is at most a few hundred kB (a record, never the factors), so the
cache is never a second copy of the collection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..comparability import Layout
from ..errors import LoraFormatError
from ..io.safetensors import read_safetensors, write_safetensors
from .records import Record, record_from_row, record_row

__all__ = ["RecordCache", "CACHE_FORMAT", "CACHE_SUFFIX"]

CACHE_FORMAT = "lorastyle-record-1"
CACHE_SUFFIX = ".lorastyle-record"


class RecordCache:
    """Records on disk, keyed by file path, identity and the settings that made them.

    Parameters
    ----------
    directory : str or path-like
        Created on the first write.
    settings : dict
        What the records depend on (descriptor, sketch settings, module selection): entries of
        other settings are misses.

    Attributes
    ----------
    hits : int
        Look-ups answered from the cache.
    """

    def __init__(self, directory: str | os.PathLike, settings: dict):
        self.directory = Path(directory)
        self.settings = json.dumps(settings, sort_keys=True)
        self.hits = 0
        self._write_error: str | None = None

    def _entry(self, path: str, ident: tuple) -> Path:
        key = hashlib.sha256(json.dumps([os.path.abspath(path), list(ident), self.settings]).encode()).hexdigest()
        return self.directory / f"{key}{CACHE_SUFFIX}"

    def get(self, path: str, ident: tuple) -> Record | None:
        """The record of this file as it is now, or None.

        Parameters
        ----------
        path : str
        ident : tuple of int
            The file's identity now (:func:`lorastyle.index.walk.identity`).

        Returns
        -------
        Record or None
        """
        entry = self._entry(path, ident)
        if not entry.exists():
            return None
        try:
            tensors, meta = read_safetensors(entry)
            record = _decode(tensors, meta, self.settings)
        except (LoraFormatError, KeyError, ValueError, TypeError, IndexError):
            return None  # a damaged or foreign entry: the file is read again
        if record is None or record.path != os.path.abspath(path) or record.identity != tuple(ident):
            return None
        self.hits += 1
        return record

    def put(self, record: Record) -> None:
        """Keep a record. A cache that cannot be written is one warning, and the run goes on.

        Parameters
        ----------
        record : Record
        """
        if self._write_error is not None:
            return
        tensors = {f"sketch/{p}": v for p, v in record.sketches.items()}
        if record.init is not None:
            tensors["init"] = record.init
        tensors["module_norms"] = np.asarray(record.module_norms, np.float32)
        row = {**record_row(record), "layout": record.layout.to_json()}
        meta = {"format": CACHE_FORMAT, "version": __version__, "settings": self.settings, "record": json.dumps(row)}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_safetensors(self._entry(record.path, record.identity), tensors, meta)
        except OSError as exc:
            self._write_error = f"{exc.strerror or exc}"
            warnings.warn(
                f"{self.directory}: cannot write the cache ({self._write_error}); going on without it", stacklevel=2
            )

    def clear(self) -> None:
        """Remove the cache folder (the index now holds every record)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _decode(tensors: dict, meta: dict, settings: str) -> Record | None:
    if (meta.get("format"), meta.get("version"), meta.get("settings")) != (CACHE_FORMAT, __version__, settings):
        return None
    row = json.loads(meta["record"])
    return record_from_row(
        row,
        layout=Layout.from_json(row["layout"]),
        sketches={str(p): tensors[f"sketch/{p}"] for p in row["parts"]},
        module_norms=tensors["module_norms"],
        init=tensors.get("init"),
    )
