"""The index: records grouped by base family, searchable, saved as one safetensors file.

An index file is a safetensors file (never a pickle): per group, its records' unit sketches
(float16) and norms, each record's facts as JSON (one after another, with their offsets), the
fitted PCA embedding's and ANN index's arrays and the family's null; the header's metadata holds
the layouts, the settings and the files that were skipped for a lasting reason.

It is mapped, not read (format 4): a query of a library of 70,000 files decodes the records it
returns and reads the sketches of its candidates. It is hostile input like any other file: every
array's shape is checked when it is opened, and every value where it is read (a record when it is
decoded, sketches when they are scored).
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from .._validation import check_option, check_positive_int, check_streamed_pca_state
from ..comparability import Layout
from ..descriptors import ModuleSelection
from ..errors import IncomparableLorasError, LoraFormatError
from ..io.safetensors import read_safetensors, write_safetensors
from .ann import AnnIndex
from .null import MAX_PAIRS, FamilyNull, family_null
from .records import Record, record_from_row, record_row
from .search import SCORERS, SketchMatrix, rescore_exactly, score_group
from .settings import IndexSettings
from .sketches import Sketcher

__all__ = ["Group", "LoraIndex", "INDEX_FORMAT", "group_key", "StoredRecords", "CheckedRows"]

INDEX_FORMAT = "lorastyle-index-4"
# Index files this version reads: format 3 kept every record's JSON in the header (read whole);
# format 2 also held a kernel PCA (n x n to fit), which is not read: its files are used as they are
# and the PCA is refitted by the next `lorastyle index`.
READABLE_FORMATS = (INDEX_FORMAT, "lorastyle-index-3", "lorastyle-index-2")
# A family of at least NEAR_SEARCH_MIN files finds its near pairs among each file's NEAR_NEIGHBOURS nearest
# by a score estimated from NEAR_ESTIMATE_NUMBERS numbers of its sketches (within about
# 1/sqrt(1024) = 0.03), kept for an exact score when within NEAR_MARGIN (4 times that) of the threshold
NEAR_SEARCH_MIN = 10_000
NEAR_NEIGHBOURS = 32
NEAR_ESTIMATE_NUMBERS = 1024
NEAR_MARGIN = 0.12


def group_key(record: Record, descriptor: str) -> str:
    """The group a record belongs to: its base family (and, for ``concat``, its layout).

    Files of an unknown family are grouped by their exact module shapes: nothing says two
    unknown models are the same model.

    Parameters
    ----------
    record : Record
    descriptor : str

    Returns
    -------
    str
    """
    key = record.base
    if record.base == "unknown":
        key = f"unknown-{Layout(record.layout.shapes, (), []).key[:8]}"
    if descriptor == "concat":
        key = f"{key}/{record.layout.key[:8]}"
    return key


@dataclass
class Group:
    """The records of one base family (one section of an index), and their PCA embedding.

    Attributes
    ----------
    key : str
    records : list of Record
    embedding : StreamedPCA or None
        The paper's calibrated PCA of the group's descriptors (None for fewer than 3 files).
    ann : AnnIndex or None
        Candidates for ``similar`` in a large group (:mod:`lorastyle.index.ann`); None: exact search.
    null : FamilyNull
        The scores of pairs of its files (:mod:`lorastyle.index.null`), made once (kept in the index
        file: a query's p-values need not score 20,000 pairs again).
    """

    key: str
    records: list
    _embedding: object = field(default=None, repr=False)
    ann: object = None
    _matrix: SketchMatrix | None = field(default=None, repr=False)
    _null: FamilyNull | None = field(default=None, repr=False)
    # a loaded embedding's checked arrays, made a StreamedPCA when first asked for: its module imports
    # scikit-learn (1.5 s), and a query scored by cosine never needs it
    _embedding_state: dict | None = field(default=None, repr=False)

    @property
    def embedding(self):
        """The paper's calibrated PCA (:class:`~lorastyle.embedding.StreamedPCA`) of the group, or None."""
        if self._embedding is None and self._embedding_state is not None:
            from ..embedding import StreamedPCA

            self._embedding = StreamedPCA.from_state(self._embedding_state)
            self._embedding_state = None
        return self._embedding

    @embedding.setter
    def embedding(self, value) -> None:
        self._embedding, self._embedding_state = value, None

    @property
    def null(self) -> FamilyNull:
        """The family's null (:func:`lorastyle.index.null.family_null`), made when first asked for."""
        if self._null is None:
            self._null = family_null(self.matrix)
        return self._null

    def pairs_at_least(self, threshold: float, *, progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs ``i < j`` of its files scoring at least ``threshold`` (exact scores).

        Every pair, a block at a time (:meth:`SketchMatrix.pairs_at_least`), in a family of fewer
        than :data:`NEAR_SEARCH_MIN` files. In a larger one (at 70,000 files every pair is 2.5
        billion scores of 49,152 numbers), each file's :data:`NEAR_NEIGHBOURS` nearest by their
        scores estimated from :data:`NEAR_ESTIMATE_NUMBERS` numbers of each sketch
        (:meth:`SketchMatrix.prefix_vectors`, searched exactly by faiss), kept within
        :data:`NEAR_MARGIN` of ``threshold`` and then scored exactly. A file with more
        near-duplicates than that keeps its nearest ones.

        Parameters
        ----------
        threshold : float
        progress : callable, optional

        Returns
        -------
        i, j : ndarray of int
            In increasing order of ``(i, j)``.
        scores : ndarray of float
        """
        n = len(self.records)
        if n < NEAR_SEARCH_MIN:
            return self.matrix.pairs_at_least(threshold, progress=progress)
        import faiss

        V = self.matrix.prefix_vectors(max(64, NEAR_ESTIMATE_NUMBERS // len(self.matrix.parts)))
        search = faiss.IndexFlatIP(V.shape[1])
        search.add(V)
        found = []
        starts = range(0, n, 4096)
        if progress is not None:
            starts = progress(starts, desc="finding near pairs (blocks of files)", total=len(starts))
        for start in starts:
            estimate, ids = search.search(V[start : start + 4096], min(n, NEAR_NEIGHBOURS + 1))
            rows = np.broadcast_to(np.arange(start, start + len(ids))[:, None], ids.shape)
            keep = (ids >= 0) & (ids != rows) & (estimate >= threshold - NEAR_MARGIN)
            # a pair found from either of its files (nearest neighbours are not mutual)
            found.append(np.stack([np.minimum(rows, ids)[keep], np.maximum(rows, ids)[keep]], axis=1))
        del search, V
        pairs = np.unique(np.concatenate(found), axis=0)
        i, j = pairs[:, 0], pairs[:, 1]
        scores = self.matrix.pair_cosines(i, j)
        keep = scores >= threshold
        return i[keep], j[keep], scores[keep]

    @property
    def base(self) -> str:
        """The records' base family."""
        return self.records[0].base

    @property
    def matrix(self) -> SketchMatrix:
        """The records' sketches stacked for scoring (made once; the records' sketches become its rows)."""
        if self._matrix is None:
            self._matrix = SketchMatrix.of(self.records)
        return self._matrix


@dataclass
class LoraIndex:
    """Records of a collection, grouped by base family, with their settings.

    Attributes
    ----------
    descriptor : {"gram", "delta", "concat"}
    sketcher : Sketcher
    groups : dict of str to Group
    select : ModuleSelection or None
        The sub-network described.
    skipped : list of (path, identity, reason)
        Files not indexed for a reason that lasts while the file is unchanged.
    fitted_with : tuple or None
        The fit's settings (components, calibration, seed, ANN size): a re-run with the same ones
        keeps the fit of every group whose files are unchanged. None: unknown (always refitted).
    loaded_format : str or None
        The format of the file it was loaded from (None: made in memory).
    """

    descriptor: str
    sketcher: Sketcher
    groups: dict
    select: ModuleSelection | None = None
    skipped: list = field(default_factory=list)
    fitted_with: tuple | None = None
    loaded_format: str | None = field(default=None, repr=False, compare=False)

    @property
    def settings(self) -> IndexSettings:
        """The settings its records were made with (:class:`~lorastyle.index.settings.IndexSettings`)."""
        return IndexSettings(self.descriptor, self.sketcher, self.select)

    @property
    def records(self) -> list:
        """Every record, group by group."""
        return [r for g in self.groups.values() for r in g.records]

    @property
    def paths(self) -> list[str]:
        """Every indexed file's path, group by group."""
        return [r.path for r in self.records]

    def group_of(self, record: Record) -> Group:
        """The group a (query) record would belong to.

        Parameters
        ----------
        record : Record

        Returns
        -------
        Group

        Raises
        ------
        IncomparableLorasError
            When the index has no file of the record's base family (or, for ``concat``, layout).
        """
        key = group_key(record, self.descriptor)
        group = self.groups.get(key)
        if group is None:
            have = ", ".join(f"{k} ({len(g.records)} files)" for k, g in self.groups.items())
            what = "layout (modules and ranks)" if self.descriptor == "concat" else "base family"
            raise IncomparableLorasError(
                record.path, f"the index has no file of its {what} {key}; it holds {have or 'no group'}"
            )
        return group

    def similar(
        self,
        query: Record,
        k: int = 10,
        *,
        scorer: str = "cosine",
        rerank: int = 0,
        query_lora=None,
        rerank_budget: int | None = None,
        keep: Callable[[Record], bool] | None = None,
    ) -> list[dict]:
        """The ``k`` indexed files most similar to ``query``, best first.

        A query whose path is in the index is left out of its own results; another copy of the
        same file (another path) is not, so a duplicate never hides.

        Parameters
        ----------
        query : Record
        k : int, default=10
        scorer : {"cosine", "pca"}, default="cosine"
            ``cosine``: the cosine of the descriptors over the parts both adapt (the same in any
            folder); ``pca``: the cosine in the group's calibrated PCA embedding (the paper's
            method; depends on the folder).
        rerank : int, default=0
            With ``cosine``: read the ``rerank`` best-scored files again and score them by the exact
            descriptors (:func:`lorastyle.index.search.exact_cosines`) instead of their sketches,
            best first; for files whose scores are near the sketch's error (real files of
            strangers score 0.01-0.03). A file that cannot be read keeps its sketch's score.
        query_lora : LoRA, optional
            The query's loaded file, needed for ``rerank`` (with the index's selection applied).
        rerank_budget : int, optional
            Bytes: ``rerank`` reads the best-scored files in order while their sizes add up to at
            most this (the others keep their sketches' scores); None: no limit.
        keep : callable, optional
            ``keep(record)`` is asked of each file in order of score until ``k`` are kept: a file it
            refuses (one that is gone: :class:`lorastyle.index.freshness.FileChecks`) is never
            returned nor read again by ``rerank``, and the files after them are never asked about.

        Returns
        -------
        list of dict
            ``path``, ``score``, and for ``cosine`` ``p_value`` (under the family's null of this
            index: :mod:`lorastyle.index.null`) and ``verdict`` (``same weights``, ``same run``,
            ``related`` or ``nothing close``: :mod:`lorastyle.index.verdicts`); with ``rerank``,
            ``exact`` (whether the score is the exact one).
        """
        k = check_positive_int(k, "k")
        check_option(scorer, "scorer", SCORERS)
        group = self.group_of(query)
        scores, rows = score_group(group, query, scorer=scorer, k=k)
        own = os.path.abspath(query.path)
        # best first, ties in index order; records are decoded (and files checked) only as they are reached
        ranked = np.argsort(-scores, kind="stable") if rows is None else rows[np.argsort(-scores[rows], kind="stable")]
        wanted = max(k, rerank if rerank and scorer == "cosine" else 0)
        order = []
        for i in ranked.tolist():
            record = group.records[i]
            if record.path != own and (keep is None or keep(record)):
                order.append(i)
                if len(order) == wanted:
                    break
        exact = set()
        if rerank and scorer == "cosine" and self.descriptor in ("gram", "delta"):
            if query_lora is None:
                raise ValueError("rerank needs the query's loaded file (query_lora)")
            exact = rescore_exactly(
                scores,
                group,
                order[: check_positive_int(rerank, "rerank")],
                query_lora,
                settings=self.settings,
                budget=rerank_budget,
            )
            rank = {i: r for r, i in enumerate(order)}
            order = sorted(order, key=lambda i: (i not in exact, -scores[i], rank[i]))
        order = order[:k]
        out = []
        if scorer == "cosine" and order:
            from .thresholds import near_threshold
            from .verdicts import verdict

            null = group.null
            near, _ = near_threshold(self, group.base)
        for i in order:
            item = {"path": group.records[i].path, "score": float(scores[i])}
            if scorer == "cosine":
                item["p_value"] = null.p_value(scores[i])
                item["verdict"] = verdict(
                    query, group.records[i], float(scores[i]), near_threshold=near, p_value=item["p_value"]
                )
            if rerank:
                item["exact"] = i in exact
            out.append(item)
        return out

    # ------------------------------------------------------------------ saving

    def save(self, path: str | os.PathLike) -> None:
        """Write the index atomically as one safetensors file.

        Parameters
        ----------
        path : str or path-like
        """
        tensors: dict[str, np.ndarray] = {}
        layouts: dict[str, dict] = {}
        groups = []
        for gi, (key, g) in enumerate(self.groups.items()):
            m = g.matrix
            for p in m.parts:
                tensors[f"g{gi}/{p}/unit"] = getattr(m.unit[p], "raw", m.unit[p])  # a mapped file's rows: not read here
                tensors[f"g{gi}/{p}/norm"] = m.norms[p]
            mn = [np.asarray(r.module_norms, np.float32) for r in g.records]
            tensors[f"g{gi}/module_norms"] = np.concatenate(mn) if mn else np.zeros(0, np.float32)
            tensors[f"g{gi}/module_norm_offsets"] = np.cumsum([0] + [len(x) for x in mn]).astype(np.int64)
            inits = [r.init for r in g.records]
            if all(x is not None for x in inits) and inits:
                tensors[f"g{gi}/init"] = np.stack(inits).astype(np.float16)
            if g.embedding is not None:
                for name, arr in g.embedding.get_state().items():
                    tensors[f"g{gi}/pca/{name}"] = arr
            if g.ann is not None:
                for name, arr in g.ann.get_state().items():
                    tensors[f"g{gi}/ann/{name}"] = arr
            tensors[f"g{gi}/null"] = g.null.scores.astype(np.float64)
            rows = []
            for r in g.records:
                if r.layout.key not in layouts:
                    layouts[r.layout.key] = r.layout.to_json()
                row = record_row(r)
                del row["norms"]  # stacked with the sketches
                rows.append(json.dumps({**row, "layout": r.layout.key}, separators=(",", ":")).encode("utf-8"))
            # each record's JSON apart, so that a query decodes only the records it returns
            tensors[f"g{gi}/records"] = np.frombuffer(b"".join(rows), np.uint8)
            tensors[f"g{gi}/record_offsets"] = np.cumsum([0] + [len(x) for x in rows]).astype(np.int64)
            groups.append({"key": key, "parts": list(m.parts), "n": len(rows), "null_sampled": g.null.sampled})
        settings = self.settings.to_json()
        meta = {
            "format": INDEX_FORMAT,
            "version": __version__,
            "descriptor": settings["descriptor"],
            "sketch": json.dumps(settings["sketch"]),
            "select": json.dumps(settings["select"]),
            "groups": json.dumps(groups),
            "layouts": json.dumps(layouts),
            "skipped": json.dumps([[p, list(ident), reason] for p, ident, reason in self.skipped]),
            "fitted_with": json.dumps(self.fitted_with if _plain(self.fitted_with) else None),
        }
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LoraIndex:
        """Open an index written by :meth:`save`.

        The file is mapped, not read: a record's facts are decoded, and its sketches read and
        checked, when something uses them (a query of a library of 70,000 files reads its
        candidates, not the library). What is read is checked as hostile input like any file.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        LoraIndex

        Raises
        ------
        LoraFormatError
            If the file is not a lorastyle index, is of another format version, or any part of it
            is missing or inconsistent (an index is a file like any other: damaged or hostile);
            for a part read later, when it is read.
        """
        path = os.fspath(path)
        tensors, meta = read_safetensors(path, mapped=True)
        if meta.get("format") not in READABLE_FORMATS:
            found = meta.get("format")
            hint = "; rebuild it with `lorastyle index`" if str(found).startswith("lorastyle-index") else ""
            raise LoraFormatError(path, f"not a lorastyle index of format {INDEX_FORMAT} (format {found!r}){hint}")
        try:
            return cls._from_parts(path, tensors, meta)
        except _DAMAGE as exc:
            raise LoraFormatError(path, f"damaged lorastyle index ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_parts(cls, path: str, tensors: dict, meta: dict) -> LoraIndex:
        def need(condition: bool, what: str) -> None:
            if not condition:
                raise ValueError(what)

        settings = IndexSettings.from_json(
            {
                "descriptor": meta["descriptor"],
                "sketch": json.loads(meta["sketch"]),
                "select": json.loads(meta["select"]),
            }
        )
        descriptor, sketcher, select = settings.descriptor, settings.sketcher, settings.select
        layouts = {k: Layout.from_json(v) for k, v in json.loads(meta["layouts"]).items()}
        current = meta["format"] == INDEX_FORMAT
        groups = {}
        for gi, g in enumerate(json.loads(meta["groups"])):
            if current:
                n = int(g["n"])
                blob, offsets = tensors[f"g{gi}/records"], tensors[f"g{gi}/record_offsets"]
                need(
                    blob.dtype == np.uint8
                    and blob.ndim == 1
                    and offsets.shape == (n + 1,)
                    and offsets.dtype == np.int64
                    and offsets[0] == 0
                    and offsets[-1] == len(blob)
                    and bool(np.all(np.diff(offsets) >= 0)),
                    "the records' offsets",
                )
                row_of = _RowsOfBytes(blob, offsets)
            else:  # formats 2 and 3 keep the records' JSON in the header
                row_of = g["records"]
                n = len(row_of)
            need(n >= 1, "an empty group")
            parts = [str(p) for p in g["parts"]]
            unit, norms = {}, {}
            for p in parts:
                raw, norms[p] = tensors[f"g{gi}/{p}/unit"], tensors[f"g{gi}/{p}/norm"]
                need(raw.shape == (n, sketcher.dim) and raw.dtype == np.float16, f"sketches of {p}")
                need(norms[p].shape == (n,) and bool(np.all(np.isfinite(norms[p]))), f"norms of {p}")
                unit[p] = CheckedRows(raw, path, f"sketches of {p}")
            init = tensors.get(f"g{gi}/init")
            need(init is None or init.shape[0] == n, "init sketches")
            flat, norm_offsets = tensors[f"g{gi}/module_norms"], tensors[f"g{gi}/module_norm_offsets"]
            need(
                norm_offsets.shape == (n + 1,)
                and norm_offsets[0] == 0
                and norm_offsets[-1] == len(flat)
                and bool(np.all(np.diff(norm_offsets) >= 0)),
                "module norms",
            )

            def record(i: int, row: dict, unit=unit, norms=norms, flat=flat, norm_offsets=norm_offsets, init=init):
                rparts = [str(p) for p in row["parts"]]
                need(set(rparts) <= set(unit), "a record's parts")
                return record_from_row(
                    row,
                    layout=layouts[row["layout"]],
                    sketches={p: unit[p].raw[i] for p in rparts},  # read and checked where scored
                    norms={p: norms[p][i] for p in rparts},
                    module_norms=flat[norm_offsets[i] : norm_offsets[i + 1]],
                    init=None if init is None else init[i],
                    checked_sketches=True,
                )

            records = StoredRecords(path, row_of, record)
            if not current:
                records = list(records)  # the previous formats are checked whole, as they were
            state = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"g{gi}/pca/")}
            if meta["format"] == "lorastyle-index-2":
                state = {}  # a kernel PCA of the previous format: refitted by the next `lorastyle index`
            if state:
                rows, _, width = check_streamed_pca_state(state)
                need(rows == n and width == sketcher.dim * len(parts), "the PCA embedding's size")
            ann_state = {k.split("/", 2)[2]: v for k, v in tensors.items() if k.startswith(f"g{gi}/ann/")}
            ann = AnnIndex.from_state(ann_state) if ann_state else None
            need(ann is None or len(ann.reduced_) == n, "the ANN index's size")
            null_scores = tensors.get(f"g{gi}/null")
            null = None
            if null_scores is not None:  # absent from an index of format 2: made when first asked for
                sampled = bool(g.get("null_sampled", False))
                need(
                    null_scores.ndim == 1
                    and (len(null_scores) <= MAX_PAIRS if sampled else len(null_scores) == n * (n - 1) // 2)
                    and bool(np.all(np.isfinite(null_scores)))
                    and bool(np.all(np.diff(null_scores) >= 0)),
                    "the family's null",
                )
                null = FamilyNull(scores=null_scores, n_files=n, sampled=sampled)
            group = Group(key=str(g["key"]), records=records, ann=ann, _embedding_state=state or None, _null=null)
            group._matrix = SketchMatrix(parts=tuple(parts), unit=unit, norms=norms)
            groups[group.key] = group
        skipped = [
            (str(p), tuple(int(x) for x in ident), str(reason)) for p, ident, reason in json.loads(meta["skipped"])
        ]
        fitted_with = json.loads(meta.get("fitted_with", "null")) if meta["format"] != "lorastyle-index-2" else None
        need(fitted_with is None or (isinstance(fitted_with, list) and _plain(fitted_with)), "the fit's settings")
        return cls(
            descriptor=descriptor,
            sketcher=sketcher,
            groups=groups,
            select=select,
            skipped=skipped,
            fitted_with=None if fitted_with is None else tuple(fitted_with),
            loaded_format=meta["format"],
        )


# What a damaged index raises where it is decoded; each becomes a LoraFormatError naming the file.
_DAMAGE = (KeyError, ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError)


class _RowsOfBytes:
    """The records' JSON rows of an index file, each decoded when asked for."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self._blob, self._offsets = blob, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> dict:
        return json.loads(self._blob[self._offsets[i] : self._offsets[i + 1]].tobytes())


class StoredRecords(Sequence):
    """The records of one group of an index file, each made (and checked) when first used.

    A list in every way that matters (length, indexing, iteration); a query that returns ten
    files of 70,000 decodes ten records.

    Parameters
    ----------
    path : str
        The index file (named in errors).
    rows : sequence of dict
        The records' JSON rows.
    make : callable
        ``make(i, row)`` -> the :class:`Record` of row ``i``.
    """

    def __init__(self, path: str, rows, make):
        self._path, self._rows, self._make, self._made = path, rows, make, {}

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = operator.index(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        made = self._made.get(i)
        if made is None:
            try:
                made = self._made[i] = self._make(i, self._rows[i])
            except _DAMAGE as exc:
                raise LoraFormatError(
                    self._path, f"damaged lorastyle index (record {i}: {type(exc).__name__}: {exc})"
                ) from None
        return made


class CheckedRows:
    """Rows of a mapped index file's sketches, checked (finite) as they are read.

    Parameters
    ----------
    raw : ndarray of shape (n, dim)
        The mapped rows (not read until indexed).
    path : str
        The index file (named in errors).
    what : str

    Attributes
    ----------
    raw : ndarray
        The unchecked rows (written as they are when an index is saved again).
    """

    def __init__(self, raw: np.ndarray, path: str, what: str):
        self.raw, self._path, self._what = raw, path, what

    @property
    def shape(self) -> tuple:
        return self.raw.shape

    @property
    def dtype(self) -> np.dtype:
        return self.raw.dtype

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, rows) -> np.ndarray:
        out = self.raw[rows]
        if not np.all(np.isfinite(out)):
            raise LoraFormatError(self._path, f"damaged lorastyle index ({self._what} hold NaN or Inf)")
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _plain(values) -> bool:
    """Whether ``values`` is a sequence of None, bools, ints and floats (what a fit's settings may be in JSON)."""
    return isinstance(values, (list, tuple)) and all(v is None or isinstance(v, (bool, int, float)) for v in values)
