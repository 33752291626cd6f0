"""Similarity of records: the cosine of their descriptors, over the model parts both adapt.

The score of two files is the cosine of their descriptor sketches restricted to the model parts
both adapt (a U-Net-only file and a U-Net plus text-encoder file are compared on the U-Net). It
depends on the two files only: adding or removing other files never changes it. The paper's
calibrated PCA embedding is a second scorer (``pca``), whose scores do depend on the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SketchMatrix", "SketchRows", "FullVectors", "SCORERS", "exact_cosines", "score_group", "rescore_exactly"]

SCORERS = ("cosine", "pca")
# Files re-read by one batch of re-ranking (their factors in memory together)
RERANK_BATCH_BYTES = 512 << 20
# Rows converted from float16 at once: bounds the temporary float32 copy of a group's sketches.
_CHUNK_ROWS = 512


class SketchRows:
    """Where records' sketches live while an index is built: rows of blocks of :data:`BLOCK_ROWS`.

    Each record's sketch, a few tens of kB, would otherwise be its own small allocation; once
    stacked into a family's :class:`SketchMatrix` those are freed but, small, stay in the process's
    heap: a library's sketches were held twice (measured: 1.29 GB for 20,000 sketches of 32 kB,
    instead of 0.70 GB). A block is one allocation, returned to the system when the last record
    viewing it has been stacked.
    """

    BLOCK_ROWS = 1024

    def __init__(self):
        self._blocks: dict = {}  # (part, dim, dtype) -> (block, next free row)

    def take(self, record) -> None:
        """Copy the record's sketches into the current blocks; the record keeps views of its rows.

        Parameters
        ----------
        record : Record
        """
        for part, sketch in record.sketches.items():
            key = (part, len(sketch), sketch.dtype.str)
            block, row = self._blocks.get(key, (None, self.BLOCK_ROWS))
            if row == self.BLOCK_ROWS:
                block, row = np.empty((self.BLOCK_ROWS, len(sketch)), dtype=sketch.dtype), 0
            block[row] = sketch
            record.sketches[part] = block[row]
            self._blocks[key] = (block, row + 1)

    def close(self) -> None:
        """Drop the pool's own references: a block now lives as long as a record views it."""
        self._blocks.clear()


@dataclass
class SketchMatrix:
    """The unit sketches and norms of a group's records, per model part, ready for scoring.

    Attributes
    ----------
    parts : tuple of str
    unit : dict of str to ndarray of shape (n, dim), float16
        Zero rows where a record lacks the part.
    norms : dict of str to ndarray of shape (n,), float64
        Zero where a record lacks the part.
    """

    parts: tuple
    unit: dict = field(repr=False)
    norms: dict = field(repr=False)

    @classmethod
    def of(cls, records: list) -> SketchMatrix:
        """Stack the records' sketches; each record's sketch then is a view of its row.

        The records give their sketches up as they are copied, so that the sketches are held once
        even while they are stacked (at 20,000 SDXL files, 1.3 GB instead of 2.6 GB).

        Parameters
        ----------
        records : list of Record

        Returns
        -------
        SketchMatrix
        """
        parts = tuple(sorted({p for r in records for p in r.parts}))
        dim = len(next(iter(records[0].sketches.values())))
        unit = {p: np.zeros((len(records), dim), dtype=np.float16) for p in parts}
        norms = {p: np.zeros(len(records)) for p in parts}
        for i, r in enumerate(records):
            for p in r.sketches:
                if not np.all(np.isfinite(r.sketches[p])):  # a record of a mapped index is checked when read
                    raise ValueError(f"{r.path}: its sketch of {p} holds NaN or Inf")
                unit[p][i] = r.sketches[p]
                norms[p][i] = r.norms[p]
            r.sketches = {p: unit[p][i] for p in r.sketches}
        return cls(parts=parts, unit=unit, norms=norms)

    def __len__(self) -> int:
        return len(next(iter(self.norms.values()))) if self.norms else 0

    def _dots(self, part: str, q: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Inner products of the unit rows of ``part`` (or only ``rows``) with a unit vector, in float32 chunks."""
        stored = self.unit[part]
        # a mapped index's rows (CheckedRows) are read unchecked here and checked through their products:
        # a NaN or an infinity in a row makes its product NaN or infinite (0 * inf is NaN), at no extra pass
        raw = getattr(stored, "raw", stored)
        U = raw if rows is None else raw[rows]
        out = np.empty(len(U))
        q32 = q.astype(np.float32)
        for start in range(0, len(U), _CHUNK_ROWS):
            # einsum, not BLAS: each row's sum in one order whatever the number of rows (a score never
            # depends on what else is indexed, to the last bit; BLAS's float32 kernels round by block)
            out[start : start + _CHUNK_ROWS] = np.einsum(
                "ij,j->i", U[start : start + _CHUNK_ROWS].astype(np.float32), q32
            )
        if raw is not stored and not np.all(np.isfinite(out)):
            stored[
                np.flatnonzero(~np.isfinite(out)) if rows is None else rows[~np.isfinite(out)]
            ]  # raises, naming the file
        return out

    def cosines(self, sketches: dict, norms: dict, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine of one query with every row (or only ``rows``), over the parts both have (0 where none is shared).

        Parameters
        ----------
        sketches : dict of str to ndarray of shape (dim,)
            The query's unit sketches per part.
        norms : dict of str to float
        rows : ndarray of int, optional

        Returns
        -------
        ndarray of shape (n,) or (len(rows),)
        """
        n = len(self) if rows is None else len(rows)
        num, den_q, den_r = np.zeros(n), np.zeros(n), np.zeros(n)
        for p, u in sketches.items():
            if p not in self.unit or not norms[p] > 0:
                continue
            N = self.norms[p] if rows is None else self.norms[p][rows]
            shared = N > 0
            num += norms[p] * N * self._dots(p, u, rows)
            den_q += np.where(shared, norms[p] ** 2, 0.0)
            den_r += N**2
        with np.errstate(divide="ignore", invalid="ignore"):
            out = num / np.sqrt(den_q * den_r)
        return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0)

    def cosine_matrix(self) -> np.ndarray:
        """Every pair's score at once, as :meth:`cosines` gives each row (for maps of small families).

        n x n: a large family's pairs are found by :meth:`pairs_at_least`, a block at a time.

        Returns
        -------
        ndarray of shape (n, n)
        """
        every = np.arange(len(self))
        return self.cosine_block(every, every)

    def cosine_block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The scores of every row of ``rows`` with every row of ``cols``, as :meth:`cosines` gives them.

        Parameters
        ----------
        rows, cols : ndarray of int

        Returns
        -------
        ndarray of shape (len(rows), len(cols))
        """
        rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
        num = np.zeros((len(rows), len(cols)))
        sq_rows, sq_cols = np.zeros_like(num), np.zeros_like(num)
        for p in self.parts:
            N = self.norms[p]
            A = self.unit[p][rows].astype(np.float32)
            B = A if rows is cols else self.unit[p][cols].astype(np.float32)
            num += np.outer(N[rows], N[cols]) * (A @ B.T).astype(np.float64)
            sq_rows += np.outer(N[rows] ** 2, N[cols] > 0)  # each side's energy on the parts the other also has
            sq_cols += np.outer(N[rows] > 0, N[cols] ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = num / np.sqrt(sq_rows * sq_cols)
        return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0)

    def pairs_at_least(
        self, threshold: float, *, block: int = 2048, progress=None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every pair ``i < j`` scoring at least ``threshold``, found a block of pairs at a time.

        The scores are :meth:`cosine_block`'s; memory is a few ``block x block`` arrays whatever the
        family's size (at 20,000 files the n x n of :meth:`cosine_matrix` is 3.2 GB per copy).

        Parameters
        ----------
        threshold : float
        block : int, default=2048
        progress : callable, optional
            ``progress(iterable, desc=..., total=...)`` wraps the row blocks (for example ``tqdm``).

        Returns
        -------
        i, j : ndarray of int
            The pairs, ``i < j``, in increasing order of ``(i, j)``.
        scores : ndarray of float
        """
        n = len(self)
        found_i, found_j, found_s = [], [], []
        starts = range(0, n, block)
        if progress is not None and len(starts) > 1:
            starts = progress(starts, desc="scoring pairs (blocks of rows)", total=len(starts))
        for r0 in starts:
            rows = np.arange(r0, min(n, r0 + block))
            for c0 in range(r0, n, block):
                cols = rows if c0 == r0 else np.arange(c0, min(n, c0 + block))
                S = self.cosine_block(rows, cols)
                a, b = np.nonzero(S >= threshold)
                keep = rows[a] < cols[b]
                found_i.append(rows[a[keep]])
                found_j.append(cols[b[keep]])
                found_s.append(S[a[keep], b[keep]])
        if not found_i:
            return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
        i, j, scores = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
        order = np.lexsort((j, i))
        return i[order], j[order], scores[order]

    def pair_cosines(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """The scores of the pairs ``(rows_a[t], rows_b[t])``, as :meth:`cosine_matrix` gives them, without the n x n.

        Parameters
        ----------
        rows_a, rows_b : ndarray of int, of one length

        Returns
        -------
        ndarray of shape (len(rows_a),)
        """
        rows_a, rows_b = np.asarray(rows_a, dtype=np.intp), np.asarray(rows_b, dtype=np.intp)
        num, sq_a, sq_b = np.zeros(len(rows_a)), np.zeros(len(rows_a)), np.zeros(len(rows_a))
        for p in self.parts:
            N = self.norms[p]
            na, nb = N[rows_a], N[rows_b]
            for start in range(0, len(rows_a), _CHUNK_ROWS):
                part = slice(start, start + _CHUNK_ROWS)
                A = self.unit[p][rows_a[part]].astype(np.float32)
                B = self.unit[p][rows_b[part]].astype(np.float32)
                num[part] += na[part] * nb[part] * np.einsum("ij,ij->i", A, B).astype(np.float64)
            sq_a += np.where(nb > 0, na**2, 0.0)  # each side's energy on the parts the other also has
            sq_b += np.where(na > 0, nb**2, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = num / np.sqrt(sq_a * sq_b)
        return np.clip(np.nan_to_num(out, nan=0.0), -1.0, 1.0)

    def prefix_vectors(self, dims: int) -> np.ndarray:
        """Each row's full unit sketch estimated from the first ``dims`` numbers of each part's.

        A sketch's numbers are buckets into which every module's terms were hashed at random
        (:mod:`lorastyle.index.sketches`), so any ``dims`` of them are a smaller sketch of the same
        descriptor: the inner product of two rows of this matrix estimates their score within
        about ``1 / sqrt(dims * parts)`` (exactly where the two files adapt the same parts; a part
        only one has lowers the estimate). It reads ``dims`` numbers per file and part, not all of
        them: what :meth:`lorastyle.index.store.Group.pairs_at_least` searches a large family with.

        Parameters
        ----------
        dims : int
            Numbers of each part's sketch used (at most its length).

        Returns
        -------
        ndarray of shape (n, dims * len(parts)), float32
            Unit rows (zero for a row of no part).
        """
        n = len(self)
        dims = min(int(dims), self.unit[self.parts[0]].shape[1])
        V = np.zeros((n, dims * len(self.parts)), np.float32)
        for k, p in enumerate(self.parts):
            for start in range(0, n, _CHUNK_ROWS * 16):
                rows = slice(start, start + _CHUNK_ROWS * 16)
                P = self.unit[p][rows, :dims].astype(np.float32)
                length = np.linalg.norm(P, axis=1, keepdims=True)
                P = np.divide(P, length, out=np.zeros_like(P), where=length > 0)
                V[rows, k * dims : (k + 1) * dims] = P * self.norms[p][rows, None].astype(np.float32)
        norm = np.linalg.norm(V, axis=1, keepdims=True)
        return np.divide(V, norm, out=np.zeros_like(V), where=norm > 0)

    def feature_vector(self, sketches: dict, norms: dict) -> np.ndarray:
        """A query's full sketch over this matrix's parts, norms restored (zeros for a part it lacks): the PCA's input.

        Parameters
        ----------
        sketches : dict of str to ndarray of shape (dim,)
        norms : dict of str to float

        Returns
        -------
        ndarray of shape (dim * len(parts),), float32
        """
        dim = self.unit[self.parts[0]].shape[1]
        return np.concatenate(
            [
                norms[p] * sketches[p].astype(np.float32) if p in sketches else np.zeros(dim, np.float32)
                for p in self.parts
            ]
        )

    def full_vector(self, sketches: dict, norms: dict) -> np.ndarray:
        """:meth:`feature_vector` made unit: what the ANN index holds.

        Parameters
        ----------
        sketches : dict of str to ndarray of shape (dim,)
        norms : dict of str to float

        Returns
        -------
        ndarray of shape (dim * len(parts),), float32
        """
        v = self.feature_vector(sketches, norms)
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    @property
    def full(self) -> FullVectors:
        """The rows' full unit sketches, made on demand (an array-like for :class:`~lorastyle.index.ann.AnnIndex`)."""
        return FullVectors(self)

    @property
    def features(self) -> FullVectors:
        """Each row's :meth:`feature_vector`, made on demand (the PCA's input)."""
        return FullVectors(self, unit=False)


@dataclass
class FullVectors:
    """Rows of a :class:`SketchMatrix` as full sketches (parts concatenated, norms restored), float32.

    Indexing with a slice or an array of row ids makes only those rows. With ``unit`` (the default)
    each row is scaled to unit norm.
    """

    matrix: SketchMatrix
    unit: bool = True

    @property
    def shape(self) -> tuple:
        m = self.matrix
        return (len(m), m.unit[m.parts[0]].shape[1] * len(m.parts))

    def __getitem__(self, rows) -> np.ndarray:
        m = self.matrix
        blocks = [m.norms[p][rows, None].astype(np.float32) * m.unit[p][rows].astype(np.float32) for p in m.parts]
        V = np.concatenate(blocks, axis=1)
        if not self.unit:
            return V
        norm = np.linalg.norm(V, axis=1, keepdims=True)
        return np.divide(V, norm, out=np.zeros_like(V), where=norm > 0)


def exact_cosines(descriptor: str, query, candidates: list, *, select=None, centre: bool = True) -> np.ndarray:
    """The score :meth:`SketchMatrix.cosines` estimates, computed exactly from the files' factors.

    Every module's descriptor scaled to unit norm (:func:`lorastyle.descriptors.module_cosines`),
    the modules of the model parts both files adapt summed: ``sum_m cos_m / sqrt(n_q n_c)`` with
    ``n`` the number of non-zero modules each file has in those parts.

    Parameters
    ----------
    descriptor : {"gram", "delta"}
    query : LoRA
    candidates : list of LoRA
    select : ModuleSelection, optional
    centre : bool, default=True
        ``gram`` only: centre each module's Gram matrix, as the index's sketches do unless made by
        an earlier version (:attr:`lorastyle.index.sketches.Sketcher.centre`).

    Returns
    -------
    ndarray of shape (len(candidates),)

    Raises
    ------
    IncomparableLorasError
        When the files cannot be compared (:func:`lorastyle.comparability.check_comparable`).
    """
    from ..descriptors import module_cosine_table

    table = module_cosine_table(descriptor, [query], candidates, select=select, centre=centre)
    mine = {n: query.modules[n].part for n, v in table.x_norms.items() if v[0] > 0}
    out = np.zeros(len(candidates))
    for j, cand in enumerate(candidates):
        theirs = {n: cand.modules[n].part for n, v in table.y_norms.items() if v[j] > 0}
        shared = set(mine.values()) & set(theirs.values())
        n_q = sum(part in shared for part in mine.values())
        n_c = sum(part in shared for part in theirs.values())
        num = sum(table.cosines[name][0, j] for name, part in mine.items() if part in shared and name in theirs)
        out[j] = num / np.sqrt(n_q * n_c) if n_q and n_c else 0.0
    return np.clip(out, -1.0, 1.0)


def score_group(group, query, *, scorer: str = "cosine", k: int = 10) -> tuple[np.ndarray, np.ndarray | None]:
    """The scores of a query against the files of its group, as ``similar`` ranks them.

    ``cosine``: the exact score of every file (:meth:`SketchMatrix.cosines`), or, in a group with an
    ANN index, of its candidates only (the others score ``-inf``): a score never comes from the
    approximation. ``pca``: the cosine in the group's calibrated PCA embedding.

    Parameters
    ----------
    group : Group
    query : Record
    scorer : {"cosine", "pca"}, default="cosine"
    k : int, default=10
        Results wanted (the ANN proposes at least ``k + 1`` candidates).

    Returns
    -------
    scores : ndarray of shape (n,)
    rows : ndarray of int or None
        The candidates scored (sorted), or None where every file was.

    Raises
    ------
    IncomparableLorasError
        For ``pca`` in a group without an embedding.
    """
    if scorer == "cosine" and group.ann is not None:
        q = group.matrix.full_vector(query.sketches, query.norms)
        rows = np.sort(group.ann.candidates_of(q, max(group.ann.candidates, k + 1)))
        scores = np.full(len(group.records), -np.inf)
        scores[rows] = group.matrix.cosines(query.sketches, query.norms, rows=rows)
        return scores, rows
    if scorer == "cosine":
        return group.matrix.cosines(query.sketches, query.norms), None
    if group.embedding is None:
        from ..errors import IncomparableLorasError

        raise IncomparableLorasError(
            query.path,
            f"group {group.key} of {len(group.records)} files has no PCA embedding "
            "(it needs 3 files, and an index of format 3 or later: re-run `lorastyle index`): --scorer cosine",
        )
    z = group.embedding.project(group.matrix.feature_vector(query.sketches, query.norms)[None, :])[0]
    Z = group.embedding.embedding_
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(Z @ z / (np.linalg.norm(Z, axis=1) * np.linalg.norm(z))), None


def rescore_exactly(scores: np.ndarray, group, rows: list, query_lora, *, settings, budget: int | None = None) -> set:
    """Replace the scores of ``rows`` by exact ones (:func:`exact_cosines`), from the files read again.

    Files are read in the order of ``rows`` while their sizes add up to at most ``budget`` bytes
    (None: no limit), and scored in batches of at most :data:`RERANK_BATCH_BYTES` (memory holds
    one batch's files, not all of them). A file that cannot be read, or changed so that it no longer
    compares, keeps its sketch's score (with a warning).

    Parameters
    ----------
    scores : ndarray
        Changed in place.
    group : Group
    rows : list of int
    query_lora : LoRA
        The query's loaded file, with the index's selection applied.
    settings : IndexSettings
        The index's (descriptor, sketcher, selection).
    budget : int, optional

    Returns
    -------
    set of int
        The rows rescored.
    """
    import os
    import warnings

    from ..errors import IncomparableLorasError, LoraFormatError
    from ..io.formats import load_lora

    chosen, total = [], 0
    for i in rows:
        try:
            size = os.stat(group.records[i].path).st_size
        except OSError:
            size = 0  # reported when it is read
        if budget is not None and total + size > budget:
            break
        chosen.append((i, size))
        total += size
    batches, current, current_bytes = [], [], 0
    for i, size in chosen:
        if current and current_bytes + size > RERANK_BATCH_BYTES:
            batches.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += size
    if current:
        batches.append(current)
    rescored = set()
    for batch in batches:
        loaded = {}
        for i in batch:
            try:
                lora = load_lora(group.records[i].path)
            except (LoraFormatError, OSError) as exc:
                warnings.warn(f"{group.records[i].path}: not rescored, it cannot be read ({exc})", stacklevel=3)
                continue
            loaded[i] = settings.selected(lora)
        if not loaded:
            continue
        try:
            exact = exact_cosines(
                settings.descriptor, query_lora, list(loaded.values()), select=None, centre=settings.sketcher.centre
            )
        except IncomparableLorasError as exc:  # a file changed since it was indexed
            warnings.warn(f"not rescored: {exc}", stacklevel=3)
            continue
        for i, score in zip(loaded, exact):
            scores[i] = score
        rescored |= set(loaded)
    return rescored
