"""Approximate nearest neighbours for large groups: candidates from faiss, scores from the records.

Exact search reads every record of a group per query, which is fine up to tens of thousands of
files. Past :data:`ANN_MIN_RECORDS`, an :class:`AnnIndex` proposes candidates and the exact
score (:meth:`lorastyle.index.search.SketchMatrix.cosines`) ranks them, so a score never comes
from the approximation. The settings follow the collection's size, as autofaiss chooses them:

* the vectors are projected on their top ``reduce_dim`` right singular vectors (uncentred, so
  that inner products are kept as well as a projection can keep them), fitted by a randomized
  SVD on a sample of at most ``fit_sample`` rows;
* an inverted file (``faiss.IndexIVFFlat``, inner product) of about ``4 * sqrt(n)`` lists,
  trained on at most ``64`` points per list;
* ``n_probe`` is the fewest lists for which recall@k of the re-ranked answer, against exact
  search on the full vectors of held-out records, reaches ``target_recall``.

An index file keeps the fitted arrays (never a faiss serialisation, which is not checked input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["AnnIndex", "ANN_MIN_RECORDS", "choose_n_lists"]

# Groups at least this large get an ANN index; below it exact search is fast enough (a few
# hundred ms per query at the default sketch size).
ANN_MIN_RECORDS = 50_000
_CHUNK = 8192
# Bytes of float32 full vectors held at once: the fit's sample, and each block of rows read (an SDXL
# record's full vector is 49,152 numbers: 8,192 of them would be 1.6 GB)
_FULL_BYTES = 256 << 20


def _full_rows(d: int, most: int = _CHUNK) -> int:
    """How many full vectors of ``d`` numbers fit in :data:`_FULL_BYTES` (at most ``most``, at least 1)."""
    return int(max(1, min(most, _FULL_BYTES // (4 * max(d, 1)))))


def choose_n_lists(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest ``4 * sqrt(n)`` (at least 1, at most n // 39).

    Parameters
    ----------
    n : int

    Returns
    -------
    int
    """
    target = 4 * math.sqrt(max(n, 1))
    lists = 2 ** round(math.log2(target))
    return int(max(1, min(lists, n // 39)))  # faiss wants 39 training points per list


def _rows(X, start: int, stop: int) -> np.ndarray:
    return np.ascontiguousarray(X[start:stop], dtype=np.float32)


@dataclass
class AnnIndex:
    """Candidates for the nearest neighbours (by inner product) of vectors, from faiss.

    Parameters
    ----------
    reduce_dim : int, default=256
    n_lists : int, optional
        Default: :func:`choose_n_lists`.
    target_recall : float, default=0.95
        Recall@k of the re-ranked answer that ``n_probe`` is tuned for.
    k : int, default=10
        The k of that recall.
    candidates : int, default=100
        Candidates re-ranked exactly per query.
    fit_sample : int, default=100_000
        Rows the projection is fitted on, at most (and at most 256 MB of them).
    random_state : int, default=0

    Attributes
    ----------
    components_ : ndarray of shape (reduce_dim, d), float32
    centroids_ : ndarray of shape (n_lists, reduce_dim), float32
    reduced_ : ndarray of shape (n, reduce_dim), float32
        Each row's compact vector (float32: what faiss takes, so a mapped index file's rows go to it as
        they are; an index of 70,000 files holds 72 MB of them).
    lists_ : ndarray of shape (n,), int64
    n_probe_ : int
    recall_ : float
        The recall@k measured when ``n_probe_`` was chosen.
    """

    reduce_dim: int = 256
    n_lists: int | None = None
    target_recall: float = 0.95
    k: int = 10
    candidates: int = 100
    fit_sample: int = 100_000
    random_state: int = 0
    _faiss: object = field(default=None, repr=False)

    def fit(self, X, exact_top=None) -> AnnIndex:
        """Fit the projection and the lists, add every row, tune ``n_probe``.

        Parameters
        ----------
        X : array-like of shape (n, d)
            Rows to index (float16 or float32, read in chunks).
        exact_top : callable, optional
            ``exact_top(queries, k)`` -> ids of the exact top k rows for each query row index
            (default: inner products with every row of X).

        Returns
        -------
        self
        """
        from sklearn.utils.extmath import randomized_svd

        rng = np.random.default_rng(self.random_state)
        n, d = X.shape
        dim = min(self.reduce_dim, d, n)
        # the sample: at most fit_sample rows and _FULL_BYTES, and never fewer rows than components
        size = min(n, max(_full_rows(d, self.fit_sample), 2 * self.reduce_dim))
        sample = np.sort(rng.choice(n, size=size, replace=False))
        S = np.asarray(X[sample], dtype=np.float32)
        _, _, Vt = randomized_svd(S, dim, n_iter=4, random_state=self.random_state)
        self.components_ = Vt.astype(np.float32)
        del S
        reduced = np.empty((n, dim), np.float32)
        step = _full_rows(d)
        for start in range(0, n, step):
            reduced[start : start + step] = _rows(X, start, start + step) @ self.components_.T
        self.reduced_ = reduced
        lists = self.n_lists or choose_n_lists(n)
        train = reduced[np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))].astype(np.float32)
        self.centroids_ = self._kmeans(train, lists)
        self.lists_ = self._assign(reduced)
        self._build()
        self._tune(X, rng, exact_top)
        return self

    def _kmeans(self, train: np.ndarray, lists: int) -> np.ndarray:
        import faiss

        if lists == 1:
            return train.mean(axis=0, keepdims=True)
        km = faiss.Kmeans(train.shape[1], lists, niter=10, seed=self.random_state, spherical=False, verbose=False)
        km.train(train)
        return np.ascontiguousarray(km.centroids, dtype=np.float32)

    def _assign(self, reduced: np.ndarray) -> np.ndarray:
        import faiss

        q = faiss.IndexFlatL2(self.centroids_.shape[1])  # IVF assigns by L2, as faiss trains it
        q.add(self.centroids_)
        out = np.empty(len(reduced), np.int64)
        for start in range(0, len(reduced), _CHUNK):
            out[start : start + _CHUNK] = q.search(_rows(reduced, start, start + _CHUNK), 1)[1][:, 0]
        return out

    def _build(self) -> None:
        """The faiss index, from the fitted arrays (the lists as assigned, not recomputed)."""
        import faiss

        dim, lists = self.centroids_.shape[1], self.centroids_.shape[0]
        quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(self.centroids_)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True
        for start in range(0, len(self.reduced_), _CHUNK):
            x = _rows(self.reduced_, start, start + _CHUNK)
            a = np.ascontiguousarray(self.lists_[start : start + _CHUNK])
            ids = np.arange(start, start + len(x), dtype=np.int64)
            index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(a))
        self._faiss = (index, quantizer)  # the quantizer must outlive the index
        self.n_probe_ = getattr(self, "n_probe_", 1)

    def _tune(self, X, rng, exact_top) -> None:
        n = len(self.reduced_)
        queries = np.sort(rng.choice(n, size=min(n, 200), replace=False))
        Q = np.asarray(X[queries], dtype=np.float32)
        k = min(self.k, n - 1)
        if exact_top is None:
            step = _full_rows(X.shape[1])
            scores = np.concatenate(
                [Q @ _rows(X, s, s + step).T for s in range(0, n, step)], axis=1
            )  # (queries, n): exact, on the full vectors
            scores[np.arange(len(queries)), queries] = -np.inf  # a record is not its own neighbour
            truth = np.argsort(-scores, axis=1)[:, :k]
        else:
            truth = exact_top(queries, k)
        lists = self.centroids_.shape[0]
        probe = 1
        while True:
            self.n_probe_ = probe
            found = self.search(Q, k, X=X, exclude=queries)
            hits = [len(set(f) & set(t)) for f, t in zip(found, truth, strict=True)]
            self.recall_ = float(np.sum(hits) / truth.size)
            if self.recall_ >= self.target_recall or probe >= lists:
                return
            probe = min(2 * probe, lists)

    def candidates_of(self, q: np.ndarray, n_candidates: int | None = None) -> np.ndarray:
        """Row ids proposed for one query (its full vector): at most ``candidates`` of them.

        Parameters
        ----------
        q : ndarray of shape (d,)
        n_candidates : int, optional

        Returns
        -------
        ndarray of int64
        """
        index, _ = self._faiss
        index.nprobe = self.n_probe_
        z = (np.asarray(q, np.float32) @ self.components_.T)[None, :]
        _, ids = index.search(np.ascontiguousarray(z), n_candidates or self.candidates)
        return ids[0][ids[0] >= 0]

    def search(self, Q: np.ndarray, k: int, *, X, exclude=None) -> list[np.ndarray]:
        """Top ``k`` rows of X per query: candidates re-ranked by exact inner products on X.

        Parameters
        ----------
        Q : ndarray of shape (m, d)
        k : int
        X : array-like of shape (n, d)
            The full vectors.
        exclude : sequence of int, optional
            Per query, a row to leave out (the query itself).

        Returns
        -------
        list of ndarray
        """
        out = []
        for i, q in enumerate(Q):
            ids = self.candidates_of(q, self.candidates + 1)
            if exclude is not None:
                ids = ids[ids != exclude[i]]
            ids = np.sort(ids)  # rows in file order: X may be a memory map
            exact = np.asarray(X[ids], np.float32) @ q
            out.append(ids[np.argsort(-exact)[:k]])
        return out

    def get_state(self) -> dict:
        """The fitted arrays (what an index file keeps).

        Returns
        -------
        dict of str to ndarray
        """
        return {
            "components": self.components_,
            "centroids": self.centroids_,
            "reduced": self.reduced_,
            "lists": self.lists_,
            "settings": np.array([self.n_probe_, self.k, self.candidates], np.int64),
            "recall": np.array([self.recall_], np.float64),
        }

    @classmethod
    def from_state(cls, state: dict) -> AnnIndex:
        """An index from :meth:`get_state`'s arrays, checked as untrusted input.

        Parameters
        ----------
        state : dict of str to ndarray

        Returns
        -------
        AnnIndex

        Raises
        ------
        ValueError
            If the arrays do not fit together.
        """
        C, M, R, L = state["components"], state["centroids"], state["reduced"], state["lists"]
        n_probe, k, candidates = (int(x) for x in state["settings"])
        ok = (
            C.ndim == 2
            and M.ndim == 2
            and R.ndim == 2
            and M.shape[1] == C.shape[0] == R.shape[1]
            and L.shape == (len(R),)
            and L.dtype == np.int64
            and len(M) >= 1
            and bool(np.all((L >= 0) & (L < len(M))))
            and 1 <= n_probe <= len(M)
            and k >= 1
            and candidates >= 1
            and all(bool(np.all(np.isfinite(a))) for a in (C, M, R))
        )
        if not ok:
            raise ValueError("ANN arrays do not fit together")
        ann = cls(k=k, candidates=candidates, reduce_dim=C.shape[0], n_lists=len(M))
        ann.components_, ann.centroids_ = C.astype(np.float32), M.astype(np.float32)
        ann.reduced_, ann.lists_ = R.astype(np.float32, copy=False), L
        ann.n_probe_, ann.recall_ = n_probe, float(state["recall"][0])
        ann._build()
        return ann
