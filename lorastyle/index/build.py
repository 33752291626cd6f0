"""Building an index from files: read each once, group by base family, fit each group's PCA.

Collections from the internet are messy: :func:`build_index` skips files it cannot read, files
whose modules have another shape than the rest of their family, and files too large to
describe, and reports each with the reason; it indexes the rest, every base family in its own
group. With ``base=`` only that family is indexed.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np

from .._validation import check_option, check_positive_int
from ..comparability import comparable_subset
from ..descriptors import DEFAULT_DESCRIPTOR, DESCRIPTORS, ModuleSelection
from ..errors import NotEnoughLorasError
from ..io.formats import BASE_FAMILIES
from .ann import ANN_MIN_RECORDS, AnnIndex
from .cache import RecordCache
from .distributed import read_files_on_cluster
from .records import Record, read_files
from .search import SketchRows
from .settings import IndexSettings
from .sketches import Sketcher
from .store import Group, LoraIndex, group_key
from .walk import identity

__all__ = ["build_index", "BuildStats", "fit_group_embedding"]

Progress = Callable[..., Iterable]


@dataclass
class BuildStats:
    """Where each record of a build came from.

    Attributes
    ----------
    read : int
        Files read now (usable or not).
    reused : int
        Unchanged files whose record came from the previous index (not read).
    from_cache : int
        Records found in the cache of an interrupted run (not read).
    """

    read: int = 0
    reused: int = 0
    from_cache: int = 0


def _no_progress(items, **_):
    return items


def fit_group_embedding(group: Group, n_components: int, *, calibrate: bool = True, random_state=0):
    """The paper's calibrated PCA of a group's descriptors (from their sketches), or None below 3 files.

    Fitted on the sketches themselves, a few hundred rows at a time
    (:class:`lorastyle.embedding.StreamedPCA`): memory grows with the sketches, never with n x n.

    Parameters
    ----------
    group : Group
    n_components : int
        Capped at (number of files - 2), so that calibration can be estimated.
    calibrate : bool, default=True
    random_state : int or None, default=0

    Returns
    -------
    StreamedPCA or None
    """
    n = len(group.records)
    if n < 3:
        return None
    from ..embedding import StreamedPCA  # scikit-learn: imported only when a PCA is fitted

    k = max(1, min(n_components, n - 2))
    return StreamedPCA(n_components=k, calibrate=calibrate, random_state=random_state).fit(group.matrix.features)


def build_index(
    paths: Iterable[str],
    *,
    descriptor: str = DEFAULT_DESCRIPTOR,
    n_components: int = 8,
    select: ModuleSelection | None = None,
    sketcher: Sketcher | None = None,
    base: str | None = None,
    calibrate: bool = True,
    random_state=0,
    previous: LoraIndex | None = None,
    cache: RecordCache | None = None,
    progress: Progress | None = None,
    client=None,
    ann_min_records: int = ANN_MIN_RECORDS,
    identities: dict | None = None,
) -> tuple[LoraIndex, list[tuple[str, str]], BuildStats]:
    """Read, check, group and embed LoRA files.

    Parameters
    ----------
    paths : iterable of str
        LoRA files.
    descriptor : {"gram", "delta", "concat"}, default="gram"
        ``gram`` (invariant: for files made by strangers), ``delta``, or the paper's ``concat``
        (meaningful only for files of one initialisation; say so when they are not).
    n_components : int, default=8
        Dimension of each group's PCA embedding.
    select : ModuleSelection, optional
        Sub-network to describe.
    sketcher : Sketcher, optional
        Sketch settings (default: :class:`lorastyle.index.sketches.Sketcher`'s).
    base : str, optional
        Index only this base family.
    calibrate : bool, default=True
        Estimate each PCA's out-of-sample calibration.
    random_state : int, default=0
    previous : LoraIndex, optional
        An earlier index of the same settings: files unchanged since (same path and identity) are
        not read again, and files it skipped for a lasting reason are reported without a read.
    cache : RecordCache, optional
        Records of an interrupted run are taken from it; records made now are added.
    progress : callable, optional
        ``progress(iterable, desc=..., total=...)`` wraps each pass (for example ``tqdm``).
    client : distributed.Client, optional
        Read the files on this Dask cluster's workers (:mod:`lorastyle.index.distributed`); the
        records, and so the index, are those of a run in one process. Everything after the reads
        (cache, grouping, fit) happens here, from the records.
    ann_min_records : int, default=ANN_MIN_RECORDS
        Groups of at least this many files get an approximate-nearest-neighbour index
        (:class:`~lorastyle.index.ann.AnnIndex`) for ``similar``; scores stay exact.
    identities : dict of str to tuple, optional
        Each path's identity, as a walk of the folder just found it
        (:attr:`lorastyle.index.walk.FolderWalk.identities`); a path not in it is asked about.
        A file that is read is checked again around its read whatever this says.

    Returns
    -------
    index : LoraIndex
    skipped : list of (path, reason)
        Files that were not indexed, and why.
    stats : BuildStats

    Raises
    ------
    NotEnoughLorasError
        If no file could be indexed (``skipped`` has every reason).
    ValueError
        For an unknown descriptor or base family, or ``n_components < 1``.
    """
    check_option(descriptor, "descriptor", DESCRIPTORS)
    n_components = check_positive_int(n_components, "n_components")
    if base is not None:
        check_option(base, "base family", BASE_FAMILIES)
    sketcher = sketcher or Sketcher()
    progress = progress or _no_progress
    paths = list(paths)
    same_settings = previous is not None and previous.settings == IndexSettings(descriptor, sketcher, select)
    known = {(r.path, r.identity): r for r in previous.records} if same_settings else {}
    refused = {(p, ident): reason for p, ident, reason in previous.skipped} if same_settings else {}
    stats = BuildStats()
    # First what is known without a read (previous index, cache), then the reads (here or on a
    # cluster), then every file in its place: the result does not depend on who read what.
    found: dict[int, tuple] = {}  # position -> ("record", Record) | ("skip", reason, lasting identity or None)
    layouts: dict = {}  # one Layout object per layout: a record's own copy is about 1 MB for an SDXL file

    rows = SketchRows()  # the records' sketches in a few large blocks, not one allocation each

    def shared(record: Record) -> Record:
        record.layout = layouts.setdefault(record.layout.key, record.layout)
        rows.take(record)
        return record

    to_read: list[int] = []
    idents: dict[int, tuple] = {}
    for i, path in enumerate(paths):
        absolute = os.path.abspath(path)
        try:
            ident = identities[path] if identities and path in identities else identity(os.stat(path))
        except OSError as exc:
            found[i] = ("skip", f"cannot read file: {exc.strerror or exc}", None)
            continue
        idents[i] = ident
        record = known.get((absolute, ident))
        if record is not None:
            stats.reused += 1
            found[i] = ("record", record)
        elif (absolute, ident) in refused:
            found[i] = ("skip", refused[(absolute, ident)], (absolute, ident))
        else:
            record = cache.get(path, ident) if cache is not None else None
            if record is not None:
                stats.from_cache += 1
                found[i] = ("record", shared(record))
            else:
                to_read.append(i)
    reads = read_files if client is None else partial(read_files_on_cluster, client=client)
    outcomes = reads(
        [paths[i] for i in to_read], sketcher=sketcher, descriptor=descriptor, select=select, progress=progress
    )
    for j, outcome in outcomes:  # as each file is read: into the cache at once (a killed run resumes)
        i = to_read[j]
        stats.read += outcome.counted
        if outcome.record is not None:
            if cache is not None:
                cache.put(outcome.record)
            found[i] = ("record", shared(outcome.record))
        else:
            lasting = (os.path.abspath(paths[i]), idents[i]) if outcome.lasting else None
            found[i] = ("skip", outcome.reason, lasting)
    rows.close()
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    lasting_skips: list[tuple[str, tuple, str]] = []  # skipped for a reason that holds while the file is unchanged
    for i, path in enumerate(paths):
        kind, *rest = found[i]
        if kind == "skip":
            reason, lasting = rest
            skipped.append((path, reason))
            if lasting is not None:
                lasting_skips.append((*lasting, reason))
            continue
        record = rest[0]
        if base is not None and record.base != base:
            skipped.append((path, f"base family {record.base}, not {base} (--base {base})"))
            continue
        records.append(record)
    if not records:
        raise NotEnoughLorasError("index", "no LoRA file could be indexed", skipped)
    by_key: dict[str, list[Record]] = {}
    for record in records:
        by_key.setdefault(group_key(record, descriptor), []).append(record)
    groups = {}
    for key in sorted(by_key, key=lambda k: (-len(by_key[k]), k)):
        kept, more = comparable_subset(by_key[key], descriptor=descriptor)
        skipped.extend(more)
        if kept:
            groups[key] = Group(key=key, records=kept)
    fits = (n_components, calibrate, random_state, ann_min_records)
    unchanged = previous.groups if same_settings and previous.fitted_with == fits else {}
    to_fit = []
    for key, group in list(groups.items()):
        before = unchanged.get(key)
        if before is not None and _members(before) == _members(group):
            # the same files: the same group, its stacked sketches, fit and null kept as they are (not
            # stacked again: an unchanged library of 20,000 files would hold its sketches twice)
            groups[key] = before
        else:
            to_fit.append(group)
    for group in progress(to_fit, desc="fitting PCA per base family", total=len(to_fit)):
        group.embedding = fit_group_embedding(group, n_components, calibrate=calibrate, random_state=random_state)
        if len(group.records) >= max(ann_min_records, 2):
            group.ann = AnnIndex(random_state=random_state).fit(group.matrix.full)
    index = LoraIndex(
        descriptor=descriptor,
        sketcher=sketcher,
        groups=groups,
        select=select,
        skipped=lasting_skips,
        fitted_with=fits,
    )
    if descriptor == "concat":
        _warn_mixed_scales(index)
        _warn_unshared_initialisation(index)
    return index, skipped, stats


def _members(group: Group) -> list:
    """What a group's fit depends on: its records, in order, by path and identity."""
    return [(r.path, r.identity) for r in group.records]


def _scales(record: Record) -> tuple:
    """The record's distinct module scales alpha / rank, each module's own (concat leaves them out)."""
    return tuple(record.scales) if record.scales is not None else ()


def _warn_mixed_scales(index: LoraIndex) -> None:
    """concat compares stored factors, which leave alpha out: say so when a group's scales differ."""
    parts = []
    for group in index.groups.values():
        scales = [_scales(r) for r in group.records]
        counts = Counter(sc for sc in scales if sc)  # () for a record of an index too old to know them
        if len(counts) > 1:
            parts += [
                f"{n} with {', '.join(f'{x:g}' for x in sc)} (such as {group.records[scales.index(sc)].path})"
                for sc, n in counts.most_common()
            ]
    if parts:
        warnings.warn(
            "concat compares the stored factors and leaves alpha out, but the files' scales (alpha / rank) "
            f"differ: {'; '.join(parts)}; --descriptor gram or delta include the scale",
            stacklevel=3,
        )


def _warn_unshared_initialisation(index: LoraIndex) -> None:
    """concat is meaningful only between LoRAs whose A started from one seed: say so, once, when they did not."""
    pairs = shared = 0
    for group in index.groups.values():
        inits = [r.init for r in group.records if r.init is not None]
        if len(inits) < 2:
            continue
        A = np.stack(inits).astype(np.float64)
        C = np.abs(A @ A.T)
        iu = np.triu_indices(len(A), 1)
        pairs += len(iu[0])
        shared += int(np.sum(C[iu] > 0.5))  # same seed: cosine near 1; different seeds: near 0
    if pairs and shared < pairs:
        warnings.warn(
            f"{pairs - shared} of {pairs} pairs of indexed files do not share one initialisation of their A "
            "factors (their A sketches are nearly orthogonal); concat compares such files by their random "
            "initialisation, not their style: --descriptor gram compares them",
            stacklevel=3,
        )
