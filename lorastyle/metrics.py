"""Evaluation metrics for embeddings of LoRA style descriptors.

Three families of metrics, all taking plain arrays of shape
``(n_samples, n_features)``:

Clustering
    :func:`cluster_labels` clusters an embedding (k-means or Ward
    agglomerative), :func:`purity_score` is the classic purity of a
    clustering, :func:`cluster_scores` compares a clustering with known labels
    (ARI, NMI, purity, silhouette) and :func:`cluster_table` tabulates that
    for several label levels (e.g. artist, genre) and methods.

Retrieval
    :func:`similarity_matrix` computes cosine or negative-euclidean
    similarities. :func:`retrieval_scores` runs leave-one-out retrieval (every
    item queries all the others; items sharing its label are relevant) and
    :func:`query_scores` does the same for queries held out of the index.
    Both report precision@k, recall@k, mean average precision and top-1
    accuracy.

Structure
    Agreement between two embeddings of the same items (rows aligned):
    :func:`linear_cka`, :func:`rsa_mantel` (representational similarity with a
    Mantel permutation test), :func:`knn_overlap`,
    :func:`procrustes_disparity`, and :func:`structure_table` with all of them.

Paired comparison
    Two methods on the same queries: :func:`mcnemar_test` (exact McNemar on the
    queries where they disagree) and :func:`paired_bootstrap` (interval of the
    difference in accuracy, resampling whole groups such as artists).

Inputs are validated at the boundary; invalid inputs raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import procrustes
from scipy.spatial.distance import cdist, pdist, squareform
from scipy.stats import rankdata
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.metrics.cluster import contingency_matrix

__all__ = [
    "cluster_labels",
    "purity_score",
    "cluster_scores",
    "cluster_table",
    "similarity_matrix",
    "retrieval_scores",
    "query_scores",
    "linear_cka",
    "rsa_mantel",
    "knn_overlap",
    "procrustes_disparity",
    "structure_table",
    "mcnemar_test",
    "group_bootstrap",
    "paired_bootstrap",
]

RandomState = int | np.random.Generator | None

_CLUSTER_METHODS = ("kmeans", "agglomerative")
_SIMILARITY_METRICS = ("cosine", "euclidean")
_DISTANCE_METRICS = ("euclidean", "sqeuclidean", "cosine", "correlation", "cityblock")
_CORRELATION_METHODS = ("spearman", "pearson")
# Queries per block in query_scores, which has no chunk_size option.
_QUERY_CHUNK_SIZE = 1024


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _check_array(X: ArrayLike, name: str = "X", *, min_samples: int = 2) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got an array of shape {X.shape}"
        )
    if X.shape[0] < min_samples:
        raise ValueError(f"{name} must have at least {min_samples} sample(s); got {X.shape[0]}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _check_labels(labels: ArrayLike, n_rows: int, name: str = "labels", x_name: str = "X") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got an array of shape {labels.shape}")
    if labels.shape[0] != n_rows:
        raise ValueError(f"{name} has {labels.shape[0]} entries but {x_name} has {n_rows} rows")
    return labels


def _check_pair(X: ArrayLike, Y: ArrayLike, *, min_samples: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X = _check_array(X, "X", min_samples=min_samples)
    Y = _check_array(Y, "Y", min_samples=min_samples)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; rows must describe the same items in the same order"
        )
    return X, Y


def _check_option(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        expected = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"Unknown {name} {value!r}; expected one of {expected}")


def _check_positive_int(value, name: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def _check_ks(k: int | Iterable[int], n_candidates: int, what: str) -> list[int]:
    """Validate one or several cut-offs against the number of ranked candidates."""
    ks = list(k) if isinstance(k, Iterable) else [k]
    if not ks:
        raise ValueError("k must be a positive integer or a non-empty sequence of them")
    for value in ks:
        _check_positive_int(value, "k")
        if value > n_candidates:
            raise ValueError(f"k={value} is too large: {what}")
    return sorted({int(value) for value in ks})


def _check_random_state(random_state: RandomState) -> RandomState:
    valid_int = isinstance(random_state, Integral) and not isinstance(random_state, bool)
    if not (random_state is None or valid_int or isinstance(random_state, np.random.Generator)):
        raise ValueError(
            f"random_state must be an int, a numpy.random.Generator or None; got {type(random_state).__name__}"
        )
    return random_state


def _sklearn_seed(random_state: RandomState) -> int | None:
    """Turn ``random_state`` into what scikit-learn accepts (it rejects Generators)."""
    random_state = _check_random_state(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    return random_state


# --------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------


def cluster_labels(
    X: ArrayLike,
    n_clusters: int,
    *,
    method: str = "kmeans",
    random_state: RandomState = None,
) -> np.ndarray:
    """Cluster the rows of ``X``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embedding to cluster.
    n_clusters : int
        Number of clusters, between 1 and ``n_samples``.
    method : {"kmeans", "agglomerative"}, default="kmeans"
        ``"kmeans"`` runs :class:`sklearn.cluster.KMeans` with ``n_init=10``;
        ``"agglomerative"`` runs :class:`sklearn.cluster.AgglomerativeClustering`
        with Ward linkage (deterministic, ignores ``random_state``).
    random_state : int, numpy.random.Generator or None, default=None
        Seed for the k-means initialisation.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        Cluster index of each row, in ``range(n_clusters)``.
    """
    X = _check_array(X)
    _check_option(method, "method", _CLUSTER_METHODS)
    n_clusters = _check_positive_int(n_clusters, "n_clusters")
    if n_clusters > X.shape[0]:
        raise ValueError(f"n_clusters={n_clusters} exceeds the number of samples ({X.shape[0]})")
    if method == "kmeans":
        model = KMeans(n_clusters=n_clusters, n_init=10, random_state=_sklearn_seed(random_state))
    else:
        model = AgglomerativeClustering(n_clusters=n_clusters, linkage="ward")
    return model.fit_predict(X)


def purity_score(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Purity of a clustering with respect to reference classes.

    Each predicted cluster is credited with its most frequent true class;
    purity is the fraction of samples so credited. It is 1 for a perfect
    clustering but also for one singleton cluster per sample.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Reference classes.
    labels_pred : array-like of shape (n_samples,)
        Predicted clusters.

    Returns
    -------
    purity : float
        In ``(0, 1]``.
    """
    labels_true = np.asarray(labels_true)
    if labels_true.ndim != 1 or labels_true.shape[0] == 0:
        raise ValueError(f"labels_true must be a non-empty 1-D array; got shape {labels_true.shape}")
    labels_pred = _check_labels(labels_pred, labels_true.shape[0], "labels_pred", "labels_true")
    # Rows are true classes, columns predicted clusters.
    contingency = contingency_matrix(labels_true, labels_pred)
    return float(contingency.max(axis=0).sum() / labels_true.shape[0])


def cluster_scores(
    X: ArrayLike,
    labels: ArrayLike,
    *,
    n_clusters: int | None = None,
    method: str = "kmeans",
    random_state: RandomState = None,
) -> dict[str, float]:
    """Cluster ``X`` and compare the clusters with known labels.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embedding to cluster.
    labels : array-like of shape (n_samples,)
        Known labels (e.g. artist of each LoRA).
    n_clusters : int or None, default=None
        Number of clusters; ``None`` uses the number of distinct labels.
    method : {"kmeans", "agglomerative"}, default="kmeans"
        Clustering method, see :func:`cluster_labels`.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for k-means.

    Returns
    -------
    scores : dict
        ``"ari"``, ``"nmi"`` and ``"purity"`` compare the predicted clusters
        with ``labels``; ``"silhouette"`` is the euclidean silhouette of the
        true ``labels`` in ``X`` (independent of the clustering), ``nan`` when
        there are fewer than 2 distinct labels or every sample has its own.
    """
    X = _check_array(X)
    labels = _check_labels(labels, X.shape[0])
    n_labels = np.unique(labels).shape[0]
    if n_clusters is None:
        n_clusters = n_labels
    predicted = cluster_labels(X, n_clusters, method=method, random_state=random_state)
    if 2 <= n_labels < X.shape[0]:
        silhouette = float(silhouette_score(X, labels, metric="euclidean"))
    else:
        silhouette = float("nan")
    return {
        "ari": float(adjusted_rand_score(labels, predicted)),
        "nmi": float(normalized_mutual_info_score(labels, predicted)),
        "purity": purity_score(labels, predicted),
        "silhouette": silhouette,
    }


def cluster_table(
    X: ArrayLike,
    labels_by_level: Mapping[str, ArrayLike],
    *,
    methods: Iterable[str] = ("kmeans", "agglomerative"),
    random_state: RandomState = None,
) -> list[dict]:
    """Clustering scores for several label levels and clustering methods.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embedding to cluster.
    labels_by_level : mapping of str to array-like of shape (n_samples,)
        Labels per level, e.g. ``{"artist": artists, "genre": genres}``. Each
        level is clustered into as many clusters as it has distinct labels.
    methods : iterable of str, default=("kmeans", "agglomerative")
        Clustering methods to run, each "kmeans" or "agglomerative".
    random_state : int, numpy.random.Generator or None, default=None
        Seed for k-means; a Generator is drawn from once, so every row uses
        the same seed.

    Returns
    -------
    rows : list of dict
        One row per (level, method), sorted by level then method, with keys
        ``"level"``, ``"method"``, ``"ari"``, ``"nmi"``, ``"purity"`` and
        ``"silhouette"`` (see :func:`cluster_scores`).
    """
    X = _check_array(X)
    if not labels_by_level:
        raise ValueError("labels_by_level is empty; pass e.g. {'artist': labels}")
    methods = list(methods)
    if not methods:
        raise ValueError("methods is empty; pass e.g. ('kmeans', 'agglomerative')")
    for method in methods:
        _check_option(method, "method", _CLUSTER_METHODS)
    seed = _sklearn_seed(random_state)
    rows = []
    for level, labels in labels_by_level.items():
        labels = _check_labels(labels, X.shape[0], f"labels_by_level[{level!r}]")
        for method in methods:
            scores = cluster_scores(X, labels, method=method, random_state=seed)
            rows.append({"level": level, "method": method, **scores})
    return sorted(rows, key=lambda row: (row["level"], row["method"]))


# --------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------


def similarity_matrix(X: ArrayLike, Y: ArrayLike | None = None, *, metric: str = "cosine") -> np.ndarray:
    """Pairwise similarities between the rows of ``X`` and of ``Y``.

    Parameters
    ----------
    X : array-like of shape (n_samples_X, n_features)
        First set of rows.
    Y : array-like of shape (n_samples_Y, n_features) or None, default=None
        Second set of rows; ``None`` uses ``X``.
    metric : {"cosine", "euclidean"}, default="cosine"
        ``"cosine"``: cosine similarity, where an all-zero row has similarity
        0 to everything (rather than ``nan``). ``"euclidean"``: negative
        euclidean distance, so that larger always means more similar.

    Returns
    -------
    S : ndarray of shape (n_samples_X, n_samples_Y)
        ``S[i, j]`` is the similarity of ``X[i]`` to ``Y[j]``.
    """
    _check_option(metric, "metric", _SIMILARITY_METRICS)
    X = _check_array(X, "X", min_samples=1)
    Y = X if Y is None else _check_array(Y, "Y", min_samples=1)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X has {X.shape[1]} features but Y has {Y.shape[1]}")
    if metric == "euclidean":
        return -cdist(X, Y)
    return _unit_rows(X) @ _unit_rows(Y).T


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    # Dividing zero rows by 1 keeps them zero, hence similarity 0, not nan.
    return X / np.where(norms > 0, norms, 1.0)


def retrieval_scores(
    X: ArrayLike,
    labels: ArrayLike,
    *,
    k: int | Iterable[int] = (1, 5, 10),
    metric: str = "cosine",
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Leave-one-out retrieval scores.

    Every item is used as a query against all the other items, ranked by
    decreasing similarity; items sharing the query's label are relevant and
    the query itself never counts. Ties are broken by item index, so results
    are deterministic. Queries whose label occurs only once (no relevant
    item) are excluded from all averages.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Embedding.
    labels : array-like of shape (n_samples,)
        Label of each item.
    k : int or iterable of int, default=(1, 5, 10)
        Cut-offs for precision and recall, each in ``[1, n_samples - 1]``.
    metric : {"cosine", "euclidean"}, default="cosine"
        Similarity, see :func:`similarity_matrix`.
    chunk_size : int, default=1024
        Queries processed at a time; memory is ``O(chunk_size * n_samples)``.

    Returns
    -------
    scores : dict
        ``"precision@K"`` (relevant items in the top K, divided by K) and
        ``"recall@K"`` (divided by the query's number of relevant items) for
        each K, ``"map"`` (mean over queries of the average precision: the
        mean of the precision at the rank of each relevant item) and
        ``"top1"`` (same as precision@1). All averaged over the queries that
        have at least one relevant item.
    """
    X = _check_array(X)
    labels = _check_labels(labels, X.shape[0])
    n = X.shape[0]
    ks = _check_ks(
        k,
        n - 1,
        f"each query ranks the other {n - 1} items, so k must be < n_samples ({n})",
    )
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    _check_option(metric, "metric", _SIMILARITY_METRICS)
    return _ranking_scores(X, labels, X, labels, ks, metric, chunk_size, leave_one_out=True)


def query_scores(
    X_index: ArrayLike,
    labels_index: ArrayLike,
    X_query: ArrayLike,
    labels_query: ArrayLike,
    *,
    k: int | Iterable[int] = (1, 5, 10),
    metric: str = "cosine",
) -> dict[str, float]:
    """Retrieval scores for queries held out of the index.

    Each query ranks all index items by decreasing similarity (ties broken by
    index order); index items sharing the query's label are relevant. Queries
    with no relevant item in the index are excluded from all averages.

    Parameters
    ----------
    X_index : array-like of shape (n_index, n_features)
        Embedding of the searchable items.
    labels_index : array-like of shape (n_index,)
        Their labels.
    X_query : array-like of shape (n_queries, n_features)
        Embedding of the queries.
    labels_query : array-like of shape (n_queries,)
        Their labels.
    k : int or iterable of int, default=(1, 5, 10)
        Cut-offs for precision and recall, each in ``[1, n_index]``.
    metric : {"cosine", "euclidean"}, default="cosine"
        Similarity, see :func:`similarity_matrix`.

    Returns
    -------
    scores : dict
        Same keys as :func:`retrieval_scores`.
    """
    X_index = _check_array(X_index, "X_index", min_samples=1)
    labels_index = _check_labels(labels_index, X_index.shape[0], "labels_index", "X_index")
    X_query = _check_array(X_query, "X_query", min_samples=1)
    labels_query = _check_labels(labels_query, X_query.shape[0], "labels_query", "X_query")
    if X_index.shape[1] != X_query.shape[1]:
        raise ValueError(f"X_index has {X_index.shape[1]} features but X_query has {X_query.shape[1]}")
    n = X_index.shape[0]
    ks = _check_ks(k, n, f"the index has only {n} items")
    _check_option(metric, "metric", _SIMILARITY_METRICS)
    return _ranking_scores(
        X_query,
        labels_query,
        X_index,
        labels_index,
        ks,
        metric,
        _QUERY_CHUNK_SIZE,
        leave_one_out=False,
    )


def _ranking_scores(
    X_query,
    labels_query,
    X_index,
    labels_index,
    ks,
    metric,
    chunk_size,
    *,
    leave_one_out,
):
    """Shared ranking loop; with ``leave_one_out`` query ``i`` is index item ``i``."""
    cutoffs = sorted(set(ks) | {1})  # top1 is always reported
    sums = {f"{name}@{c}": 0.0 for c in cutoffs for name in ("precision", "recall")}
    sums["map"] = 0.0
    n_used = 0
    ranks = np.arange(1, X_index.shape[0] + 1)
    for start in range(0, X_query.shape[0], chunk_size):
        stop = min(start + chunk_size, X_query.shape[0])
        sim = similarity_matrix(X_query[start:stop], X_index, metric=metric)
        relevant = labels_query[start:stop, None] == labels_index[None, :]
        if leave_one_out:
            rows = np.arange(stop - start)
            # Rank each query last among its own candidates and never as
            # relevant, so it cannot contribute to any score.
            sim[rows, start + rows] = -np.inf
            relevant[rows, start + rows] = False
        n_relevant = relevant.sum(axis=1)
        keep = n_relevant > 0
        if not keep.any():
            continue
        n_relevant = n_relevant[keep]
        order = np.argsort(-sim[keep], axis=1, kind="stable")
        hits = np.take_along_axis(relevant[keep], order, axis=1)
        cum_hits = np.cumsum(hits, axis=1)
        for c in cutoffs:
            sums[f"precision@{c}"] += np.sum(cum_hits[:, c - 1] / c)
            sums[f"recall@{c}"] += np.sum(cum_hits[:, c - 1] / n_relevant)
        precision_at_hits = np.where(hits, cum_hits / ranks, 0.0)
        sums["map"] += np.sum(precision_at_hits.sum(axis=1) / n_relevant)
        n_used += int(keep.sum())
    if n_used == 0:
        raise ValueError(
            "No query has a relevant item (no other item shares its label); retrieval scores are undefined"
        )
    scores = {}
    for c in ks:
        scores[f"precision@{c}"] = float(sums[f"precision@{c}"] / n_used)
        scores[f"recall@{c}"] = float(sums[f"recall@{c}"] / n_used)
    scores["map"] = float(sums["map"] / n_used)
    scores["top1"] = float(sums["precision@1"] / n_used)
    return scores


# --------------------------------------------------------------------------
# Structure between two embeddings
# --------------------------------------------------------------------------


def linear_cka(X: ArrayLike, Y: ArrayLike) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with ``Xc`` and ``Yc``
    the column-centred inputs. Invariant to orthogonal transforms and
    isotropic scaling of either input.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_X)
        First embedding.
    Y : array-like of shape (n_samples, n_features_Y)
        Second embedding of the same items, rows aligned with ``X``.

    Returns
    -------
    cka : float
        In ``[0, 1]``; 1 when the embeddings agree up to rotation and scale.
    """
    X, Y = _check_pair(X, Y)
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    if not Xc.any() or not Yc.any():
        raise ValueError("CKA is undefined when all rows of X or of Y are identical")
    if X.shape[0] < max(X.shape[1], Y.shape[1]):
        # Wide data: the (n, n) Gram matrices are smaller and give the same
        # value, since ||A^T B||_F^2 = tr(A A^T B B^T).
        K, L = Xc @ Xc.T, Yc @ Yc.T
        cross = np.sum(K * L)
    else:
        K, L = Xc.T @ Xc, Yc.T @ Yc
        cross = np.linalg.norm(Yc.T @ Xc) ** 2
    return float(cross / (np.linalg.norm(K) * np.linalg.norm(L)))


def rsa_mantel(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    metric: str = "euclidean",
    method: str = "spearman",
    n_permutations: int = 999,
    random_state: RandomState = None,
) -> dict:
    """Representational similarity analysis with a Mantel permutation test.

    Correlates the condensed pairwise distances of ``X`` with those of ``Y``.
    The p-value permutes the items of ``Y`` (rows and columns of its distance
    matrix jointly) and is one-sided:
    ``(1 + #{permuted r >= observed r}) / (1 + n_permutations)``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_X)
        First embedding, at least 3 samples.
    Y : array-like of shape (n_samples, n_features_Y)
        Second embedding of the same items, rows aligned with ``X``.
    metric : str, default="euclidean"
        Distance passed to :func:`scipy.spatial.distance.pdist`, one of
        "euclidean", "sqeuclidean", "cosine", "correlation", "cityblock".
    method : {"spearman", "pearson"}, default="spearman"
        Correlation coefficient.
    n_permutations : int, default=999
        Number of permutations for the p-value.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for the permutations.

    Returns
    -------
    result : dict
        ``"r"`` (float, the correlation), ``"p_value"`` (float) and
        ``"n_permutations"`` (int).
    """
    X, Y = _check_pair(X, Y, min_samples=3)
    _check_option(metric, "metric", _DISTANCE_METRICS)
    _check_option(method, "method", _CORRELATION_METHODS)
    n_permutations = _check_positive_int(n_permutations, "n_permutations")
    rng = np.random.default_rng(_check_random_state(random_state))

    def standardized_square(points: np.ndarray, name: str) -> np.ndarray:
        d = pdist(points, metric=metric)
        if method == "spearman":
            # Ranks commute with permutations, so ranking once suffices.
            d = rankdata(d)
        d = d - d.mean()
        norm = np.linalg.norm(d)
        if norm == 0:
            raise ValueError(f"All pairwise distances in {name} are equal; the correlation is undefined")
        return squareform(d / norm, checks=False)

    # With unit-norm, zero-mean condensed vectors the correlation is their dot
    # product, i.e. half the sum over the symmetric (zero-diagonal) squares.
    DX = standardized_square(X, "X")
    DY = standardized_square(Y, "Y")
    observed = 0.5 * np.sum(DX * DY)
    n_greater = 0
    for _ in range(n_permutations):
        perm = rng.permutation(X.shape[0])
        # Same formula as the observed value so an identity permutation ties exactly.
        n_greater += 0.5 * np.sum(DX * DY[np.ix_(perm, perm)]) >= observed
    return {
        "r": float(observed),
        "p_value": float((1 + n_greater) / (1 + n_permutations)),
        "n_permutations": n_permutations,
    }


def knn_overlap(X: ArrayLike, Y: ArrayLike, *, k: int = 10, metric: str = "euclidean") -> float:
    """Mean overlap of k-nearest-neighbour sets in two embeddings.

    For each item ``i``, ``|N_k^X(i) & N_k^Y(i)| / k`` where ``N_k^X(i)`` are
    the ``k`` nearest other items in ``X`` (ties broken by index), averaged
    over items.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_X)
        First embedding.
    Y : array-like of shape (n_samples, n_features_Y)
        Second embedding of the same items, rows aligned with ``X``.
    k : int, default=10
        Number of neighbours, in ``[1, n_samples - 1]``.
    metric : str, default="euclidean"
        Distance passed to :func:`scipy.spatial.distance.pdist`, one of
        "euclidean", "sqeuclidean", "cosine", "correlation", "cityblock".

    Returns
    -------
    overlap : float
        In ``[0, 1]``; 1 when every item has the same neighbours in both.
    """
    X, Y = _check_pair(X, Y)
    _check_option(metric, "metric", _DISTANCE_METRICS)
    n = X.shape[0]
    k = _check_positive_int(k, "k")
    if k >= n:
        raise ValueError(f"k={k} must be < n_samples ({n}): each item has only {n - 1} neighbours")

    def neighbour_mask(points: np.ndarray) -> np.ndarray:
        distances = squareform(pdist(points, metric=metric))
        np.fill_diagonal(distances, np.inf)  # an item is not its own neighbour
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        mask = np.zeros((n, n), dtype=bool)
        np.put_along_axis(mask, nearest, True, axis=1)
        return mask

    shared = np.sum(neighbour_mask(X) & neighbour_mask(Y), axis=1)
    return float(np.mean(shared / k))


def procrustes_disparity(X: ArrayLike, Y: ArrayLike) -> float:
    """Procrustes disparity between two embeddings of the same items.

    Both inputs are centred and scaled to unit Frobenius norm, ``Y`` is
    optimally rotated (and reflected) onto ``X``, and the disparity is the
    remaining sum of squared differences (:func:`scipy.spatial.procrustes`).
    If the widths differ, the narrower input is zero-padded with extra
    columns first, which leaves its geometry unchanged.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_X)
        First embedding.
    Y : array-like of shape (n_samples, n_features_Y)
        Second embedding of the same items, rows aligned with ``X``.

    Returns
    -------
    disparity : float
        In ``[0, 1]``; 0 when the embeddings agree up to translation,
        rotation, reflection and scale.
    """
    X, Y = _check_pair(X, Y)
    width = max(X.shape[1], Y.shape[1])
    X = np.pad(X, ((0, 0), (0, width - X.shape[1])))
    Y = np.pad(Y, ((0, 0), (0, width - Y.shape[1])))
    _, _, disparity = procrustes(X, Y)
    return float(disparity)


def structure_table(
    X: ArrayLike,
    Y: ArrayLike,
    *,
    k: int = 10,
    n_permutations: int = 999,
    random_state: RandomState = None,
) -> dict[str, float]:
    """All structure-agreement metrics between two embeddings.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features_X)
        First embedding.
    Y : array-like of shape (n_samples, n_features_Y)
        Second embedding of the same items, rows aligned with ``X``.
    k : int, default=10
        Neighbours for :func:`knn_overlap`.
    n_permutations : int, default=999
        Permutations for the Mantel test of :func:`rsa_mantel`.
    random_state : int, numpy.random.Generator or None, default=None
        Seed for the Mantel permutations.

    Returns
    -------
    scores : dict
        ``"cka"`` (:func:`linear_cka`), ``"rsa_r"`` and ``"rsa_p"``
        (:func:`rsa_mantel`, euclidean distances, Spearman),
        ``"knn_overlap"`` (:func:`knn_overlap`, euclidean) and
        ``"procrustes"`` (:func:`procrustes_disparity`).
    """
    X, Y = _check_pair(X, Y)
    rsa = rsa_mantel(X, Y, n_permutations=n_permutations, random_state=random_state)
    return {
        "cka": linear_cka(X, Y),
        "rsa_r": rsa["r"],
        "rsa_p": rsa["p_value"],
        "knn_overlap": knn_overlap(X, Y, k=k),
        "procrustes": procrustes_disparity(X, Y),
    }


# --------------------------------------------------------------------------
# Paired comparison of two representations on the same queries
# --------------------------------------------------------------------------


def _check_hits(hits_a: ArrayLike, hits_b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(hits_a), np.asarray(hits_b)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"hits_a and hits_b must be non-empty 1-d arrays of one length; got {a.shape} and {b.shape}")
    for name, h in (("hits_a", a), ("hits_b", b)):
        if not np.isin(h, (0, 1)).all():
            raise ValueError(f"{name} must hold only True/False (or 0/1): one entry per query, hit or miss")
    return a.astype(bool), b.astype(bool)


def mcnemar_test(hits_a: ArrayLike, hits_b: ArrayLike) -> dict[str, float]:
    """Exact McNemar test: do two methods succeed on the same queries equally often?

    Only the discordant queries count: ``b`` where A hits and B misses, ``c`` where B hits
    and A misses. Under the null hypothesis each discordant query is a fair coin, so the
    two-sided p-value is that of ``min(b, c)`` under Binomial(b + c, 1/2) (doubled, at most 1;
    1 when there is no discordant query). Unlike overlapping confidence intervals this uses
    the pairing: two methods of 0.90 and 0.93 top-1 can differ significantly when they fail on
    nested sets of queries, or not at all when they fail on disjoint ones.

    Parameters
    ----------
    hits_a : array-like of bool, shape (n_queries,)
        Whether method A answered each query correctly.
    hits_b : array-like of bool, shape (n_queries,)
        The same for method B, on the same queries in the same order.

    Returns
    -------
    dict
        ``"n"`` (queries), ``"a"`` and ``"b"`` (accuracies), ``"a_only"`` and ``"b_only"``
        (discordant counts) and ``"p_value"``.
    """
    from scipy.stats import binomtest

    a, b = _check_hits(hits_a, hits_b)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(min(a_only, b_only), discordant, 0.5).pvalue)
    return {"n": a.size, "a": float(a.mean()), "b": float(b.mean()), "a_only": a_only, "b_only": b_only, "p_value": p}


def group_bootstrap(
    values: ArrayLike,
    groups: ArrayLike,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state: RandomState = 0,
) -> dict[str, float]:
    """Bootstrap interval of the mean of per-query values, resampling whole groups.

    Queries of one group (one artist) are not independent: they share paintings and neighbours,
    so an interval that treats them as independent (Wilson's, the ordinary bootstrap) is too
    narrow. Each resample draws as many groups as there are, with replacement, and keeps every
    query of each group drawn; the interval is the percentile interval of the resampled means
    (each a ratio of the drawn groups' sums to their sizes).

    Parameters
    ----------
    values : array-like of float, shape (n_queries,)
        Per-query values (a hit as 1 or 0, a difference of two hits).
    groups : array-like of shape (n_queries,)
        The group (e.g. artist) of each query.
    n_resamples : int, default=2000
    confidence : float, default=0.95
        Coverage of the percentile interval, in (0, 1).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the resampling.

    Returns
    -------
    dict
        ``"mean"`` (observed), ``"low"``, ``"high"`` and ``"n_groups"``.

    Raises
    ------
    ValueError
        For no values, values and groups of different lengths, or a confidence outside (0, 1).
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("values must be a non-empty array of finite numbers")
    groups = _check_labels(groups, v.size, "groups", "values")
    n_resamples = _check_positive_int(n_resamples, "n_resamples")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    rng = np.random.default_rng(_check_random_state(random_state))
    _, index = np.unique(groups, return_inverse=True)
    n_groups = int(index.max()) + 1
    # Per-group sums and sizes: a resample's mean is a ratio of sums over the groups drawn.
    total = np.bincount(index, weights=v, minlength=n_groups)
    size = np.bincount(index, minlength=n_groups).astype(float)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    means = (counts @ total) / (counts @ size)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(v.mean()), "low": float(low), "high": float(high), "n_groups": n_groups}


def paired_bootstrap(
    hits_a: ArrayLike,
    hits_b: ArrayLike,
    groups: ArrayLike,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state: RandomState = 0,
) -> dict[str, float]:
    """Bootstrap interval of ``mean(hits_a) - mean(hits_b)``, resampling whole groups.

    :func:`group_bootstrap` of the per-query differences: both methods are resampled at once
    (the pairing is kept).

    Parameters
    ----------
    hits_a, hits_b : array-like of bool, shape (n_queries,)
        Per-query success of methods A and B on the same queries.
    groups : array-like of shape (n_queries,)
        The group (e.g. artist) of each query.
    n_resamples : int, default=2000
        Bootstrap resamples.
    confidence : float, default=0.95
        Coverage of the percentile interval, in (0, 1).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the resampling.

    Returns
    -------
    dict
        ``"difference"`` (observed, A minus B), ``"low"``, ``"high"`` and ``"n_groups"``.
    """
    a, b = _check_hits(hits_a, hits_b)
    boot = group_bootstrap(
        a.astype(float) - b.astype(float),
        groups,
        n_resamples=n_resamples,
        confidence=confidence,
        random_state=random_state,
    )
    return {
        "difference": float(a.mean() - b.mean()),
        "low": boot["low"],
        "high": boot["high"],
        "n_groups": boot["n_groups"],
    }
