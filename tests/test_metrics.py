"""Tests for lorastyle.metrics against independent references.

References are hand-worked examples, brute-force loops, or scikit-learn /
SciPy implementations; no test compares a function with its own output except
for determinism and chunking invariance.
"""

import math

import numpy as np
import pytest
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist, squareform
from scipy.stats import ortho_group, pearsonr, spearmanr
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.metrics.pairwise import cosine_similarity, euclidean_distances

from lorastyle import metrics
from lorastyle.metrics import (
    cluster_labels,
    cluster_scores,
    cluster_table,
    knn_overlap,
    linear_cka,
    procrustes_disparity,
    purity_score,
    query_scores,
    retrieval_scores,
    rsa_mantel,
    similarity_matrix,
    structure_table,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def blobs(rng, n_per_class=10, n_classes=3, n_features=4, spread=0.1):
    """Well separated Gaussian blobs with integer class labels."""
    centres = 10.0 * rng.standard_normal((n_classes, n_features))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[labels] + spread * rng.standard_normal((labels.size, n_features))
    return X, labels


# --------------------------------------------------------------------------
# Clustering
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_cluster_labels_recovers_separated_blobs(rng, method):
    X, labels = blobs(rng)
    predicted = cluster_labels(X, 3, method=method, random_state=0)
    assert predicted.shape == labels.shape
    assert adjusted_rand_score(labels, predicted) == 1.0


def test_cluster_labels_accepts_seed_and_generator(rng):
    X = rng.standard_normal((30, 3))
    a = cluster_labels(X, 4, random_state=1)
    b = cluster_labels(X, 4, random_state=1)
    np.testing.assert_array_equal(a, b)
    c = cluster_labels(X, 4, random_state=np.random.default_rng(1))
    assert set(np.unique(c)) == {0, 1, 2, 3}


def test_purity_hand_worked():
    labels_true = [0, 0, 0, 1, 1, 2, 2, 2]
    labels_pred = [0, 0, 1, 1, 1, 2, 2, 0]
    # Contingency (rows: true class, columns: predicted cluster):
    #            pred 0  pred 1  pred 2
    #   true 0     2       1       0
    #   true 1     0       2       0
    #   true 2     1       0       2
    # Column maxima 2 + 2 + 2 = 6 of 8 samples -> purity 0.75.
    assert purity_score(labels_true, labels_pred) == pytest.approx(0.75)
    # Relabelling clusters or using strings does not matter.
    assert purity_score(list("aaabbccc"), [5, 5, 9, 9, 9, 7, 7, 5]) == pytest.approx(0.75)


def test_purity_brute_force(rng):
    labels_true = rng.integers(0, 4, size=50)
    labels_pred = rng.integers(0, 6, size=50)
    credited = 0
    for cluster in set(labels_pred.tolist()):
        members = labels_true[labels_pred == cluster].tolist()
        credited += max(members.count(c) for c in set(members))
    assert purity_score(labels_true, labels_pred) == pytest.approx(credited / 50)


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_cluster_scores_match_sklearn(rng, method):
    X, labels = blobs(rng, spread=4.0)  # overlapping, so scores are not all 1
    scores = cluster_scores(X, labels, method=method, random_state=0)
    predicted = cluster_labels(X, 3, method=method, random_state=0)
    assert set(scores) == {"ari", "nmi", "purity", "silhouette"}
    assert all(type(v) is float for v in scores.values())
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, predicted))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, predicted))
    assert scores["purity"] == pytest.approx(purity_score(labels, predicted))
    # Silhouette describes the true labels, whatever the clustering.
    assert scores["silhouette"] == pytest.approx(silhouette_score(X, labels))


def test_cluster_scores_n_clusters_and_undefined_silhouette(rng):
    X = rng.standard_normal((6, 2))
    one_label = cluster_scores(X, np.zeros(6), n_clusters=2, random_state=0)
    assert np.isnan(one_label["silhouette"])
    all_distinct = cluster_scores(X, np.arange(6), random_state=0)
    assert np.isnan(all_distinct["silhouette"])
    # 6 clusters for 6 distinct labels: every sample alone, a perfect match.
    assert all_distinct["ari"] == pytest.approx(1.0)
    assert all_distinct["purity"] == pytest.approx(1.0)


def test_cluster_table_rows(rng):
    X, artist = blobs(rng, spread=2.0)
    genre = artist // 2
    rows = cluster_table(X, {"genre": genre, "artist": artist}, random_state=0)
    assert [(r["level"], r["method"]) for r in rows] == [
        ("artist", "agglomerative"),
        ("artist", "kmeans"),
        ("genre", "agglomerative"),
        ("genre", "kmeans"),
    ]
    for row in rows:
        labels = artist if row["level"] == "artist" else genre
        expected = cluster_scores(X, labels, method=row["method"], random_state=0)
        assert {k: row[k] for k in expected} == pytest.approx(expected)


# --------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------


def test_similarity_matrix_matches_sklearn(rng):
    X = rng.standard_normal((5, 3))
    Y = rng.standard_normal((4, 3))
    Y[2] = 0.0  # zero row: similarity 0, not nan
    S = similarity_matrix(X, Y)
    np.testing.assert_allclose(S, cosine_similarity(X, Y), atol=1e-12)
    np.testing.assert_array_equal(S[:, 2], 0.0)
    np.testing.assert_allclose(similarity_matrix(X, metric="euclidean"), -euclidean_distances(X), atol=1e-12)


# Five points on a line, euclidean metric; labels a a b a b.
LINE_X = np.array([[0.0], [1.0], [2.0], [4.0], [7.0]])
LINE_LABELS = np.array(["a", "a", "b", "a", "b"])
# Rankings of the other items (nearest first, ties by index) and relevance:
#   q0 (x=0, a): 1(d1) 2(d2) 3(d4) 4(d7)    rel 1 0 1 0  n_rel 2
#        P@1 1  P@2 1/2  R@1 1/2  R@2 1/2  AP (1/1 + 2/3)/2 = 5/6
#   q1 (x=1, a): 0(d1) 2(d1) 3(d3) 4(d6)    rel 1 0 1 0  (0 before 2: tie)
#        P@1 1  P@2 1/2  R@1 1/2  R@2 1/2  AP 5/6
#   q2 (x=2, b): 1(d1) 0(d2) 3(d2) 4(d5)    rel 0 0 0 1  n_rel 1
#        P@1 0  P@2 0    R@1 0    R@2 0    AP 1/4
#   q3 (x=4, a): 2(d2) 1(d3) 4(d3) 0(d4)    rel 0 1 0 1  n_rel 2
#        P@1 0  P@2 1/2  R@1 0    R@2 1/2  AP (1/2 + 2/4)/2 = 1/2
#   q4 (x=7, b): 3(d3) 2(d5) 1(d6) 0(d7)    rel 0 1 0 0  n_rel 1
#        P@1 0  P@2 1/2  R@1 0    R@2 1    AP 1/2
# Means: P@1 2/5, P@2 2/5, R@1 1/5, R@2 5/2/5 = 1/2, mAP (35/12)/5 = 7/12.
LINE_EXPECTED = {
    "precision@1": 0.4,
    "recall@1": 0.2,
    "precision@2": 0.4,
    "recall@2": 0.5,
    "map": 7 / 12,
    "top1": 0.4,
}


def test_retrieval_hand_worked():
    scores = retrieval_scores(LINE_X, LINE_LABELS, k=(1, 2), metric="euclidean")
    assert scores == pytest.approx(LINE_EXPECTED)
    assert all(type(v) is float for v in scores.values())


def test_retrieval_excludes_queries_without_relevant_items():
    # A far-away singleton "c" has no relevant item: it is not a query that
    # counts, and it ranks last for every other query, so nothing changes.
    X = np.vstack([LINE_X, [[100.0]]])
    labels = np.append(LINE_LABELS, "c")
    scores = retrieval_scores(X, labels, k=(1, 2), metric="euclidean")
    assert scores == pytest.approx(LINE_EXPECTED)


def brute_force_retrieval(X_query, labels_query, X_index, labels_index, ks, metric, leave_one_out):
    """One query at a time with Python sorting."""
    S = cosine_similarity(X_query, X_index) if metric == "cosine" else -euclidean_distances(X_query, X_index)
    per_query = []
    for i in range(len(X_query)):
        candidates = [j for j in range(len(X_index)) if not (leave_one_out and j == i)]
        ranked = sorted(candidates, key=lambda j: (-S[i, j], j))
        rel = [labels_index[j] == labels_query[i] for j in ranked]
        n_rel = sum(rel)
        if n_rel == 0:
            continue
        row = {}
        for k in ks:
            row[f"precision@{k}"] = sum(rel[:k]) / k
            row[f"recall@{k}"] = sum(rel[:k]) / n_rel
        row["map"] = sum(sum(rel[: r + 1]) / (r + 1) for r in range(len(rel)) if rel[r]) / n_rel
        row["top1"] = float(rel[0])
        per_query.append(row)
    return {key: np.mean([row[key] for row in per_query]) for key in per_query[0]}


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_retrieval_brute_force(rng, metric):
    X = rng.standard_normal((40, 5))
    labels = rng.integers(0, 5, size=40)
    expected = brute_force_retrieval(X, labels, X, labels, (1, 3, 10), metric, leave_one_out=True)
    assert retrieval_scores(X, labels, k=(1, 3, 10), metric=metric) == pytest.approx(expected)


def test_retrieval_chunking_invariant(rng):
    X = rng.standard_normal((37, 4))
    labels = rng.integers(0, 4, size=37)
    full = retrieval_scores(X, labels, chunk_size=37)
    for chunk_size in (1, 5, 36):
        assert retrieval_scores(X, labels, chunk_size=chunk_size) == pytest.approx(full, abs=1e-12)


def test_retrieval_map_matches_sklearn_average_precision(rng):
    X = rng.standard_normal((30, 6))
    labels = rng.integers(0, 3, size=30)
    S = cosine_similarity(X)
    ap = []
    for i in range(30):
        others = np.arange(30) != i
        ap.append(average_precision_score(labels[others] == labels[i], S[i, others]))
    assert retrieval_scores(X, labels)["map"] == pytest.approx(np.mean(ap))


def test_retrieval_single_k_and_top1_always_reported(rng):
    X = rng.standard_normal((12, 3))
    labels = rng.integers(0, 2, size=12)
    scores = retrieval_scores(X, labels, k=3)
    assert set(scores) == {"precision@3", "recall@3", "map", "top1"}


def test_query_scores_brute_force(rng):
    X_index = rng.standard_normal((25, 4))
    labels_index = rng.integers(0, 4, size=25)
    X_query = rng.standard_normal((15, 4))
    labels_query = rng.integers(0, 5, size=15)  # label 4 is absent from the index
    expected = brute_force_retrieval(
        X_query,
        labels_query,
        X_index,
        labels_index,
        (1, 5, 25),
        "cosine",
        leave_one_out=False,
    )
    scores = query_scores(X_index, labels_index, X_query, labels_query, k=(1, 5, 25))
    assert scores == pytest.approx(expected)
    assert scores["recall@25"] == pytest.approx(1.0)  # k = n_index finds everything


def test_query_scores_query_identical_to_index_item_counts():
    # Unlike leave-one-out, an index item equal to the query is a real hit.
    X = np.array([[0.0, 1.0], [1.0, 0.0]])
    scores = query_scores(X, ["a", "b"], X, ["a", "b"], k=1)
    assert scores["top1"] == 1.0 and scores["map"] == 1.0


# --------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------


def hsic_cka(X, Y):
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    return np.trace(K @ H @ L @ H) / np.sqrt(np.trace(K @ H @ K @ H) * np.trace(L @ H @ L @ H))


@pytest.mark.parametrize("shape_x, shape_y", [((40, 5), (40, 3)), ((10, 30), (10, 20)), ((12, 4), (12, 50))])
def test_linear_cka_matches_hsic(rng, shape_x, shape_y):
    X = rng.standard_normal(shape_x)
    Y = X[:, :1] + rng.standard_normal(shape_y)  # partly related
    assert linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y))


def test_linear_cka_invariances(rng):
    X = rng.standard_normal((50, 6))
    Q = ortho_group.rvs(6, random_state=1)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0)
    assert linear_cka(X, 3 * X) == pytest.approx(1.0)
    assert linear_cka(X, X + 5.0) == pytest.approx(1.0)
    assert linear_cka(X, rng.standard_normal((50, 6))) < 0.2


def test_linear_cka_rejects_constant_input(rng):
    with pytest.raises(ValueError, match="all rows of X or of Y are identical"):
        linear_cka(np.ones((5, 2)), rng.standard_normal((5, 2)))


def test_rsa_mantel_correlation_matches_scipy(rng):
    X = rng.standard_normal((20, 4))
    Y = X[:, :2] + rng.standard_normal((20, 2))
    spearman = rsa_mantel(X, Y, n_permutations=9, random_state=0)
    assert spearman["r"] == pytest.approx(spearmanr(pdist(X), pdist(Y))[0])
    pearson = rsa_mantel(X, Y, metric="cosine", method="pearson", n_permutations=9, random_state=0)
    assert pearson["r"] == pytest.approx(pearsonr(pdist(X, "cosine"), pdist(Y, "cosine"))[0])


def test_rsa_mantel_p_value_brute_force(rng):
    X = rng.standard_normal((8, 3))
    Y = X + rng.standard_normal((8, 3))
    result = rsa_mantel(X, Y, n_permutations=50, random_state=7)
    # Same permutation stream, statistic recomputed from permuted square matrices.
    perm_rng = np.random.default_rng(7)
    DY = squareform(pdist(Y))
    observed = spearmanr(pdist(X), pdist(Y))[0]
    n_greater = 0
    for _ in range(50):
        perm = perm_rng.permutation(8)
        n_greater += spearmanr(pdist(X), squareform(DY[perm][:, perm]))[0] >= observed
    assert result["p_value"] == pytest.approx((1 + n_greater) / 51)
    assert result["n_permutations"] == 50


def test_rsa_mantel_significance(rng):
    X = rng.standard_normal((30, 5))
    related = rsa_mantel(X, X + 0.1 * rng.standard_normal((30, 5)), n_permutations=199, random_state=0)
    assert related["r"] > 0.9
    assert related["p_value"] < 0.01
    unrelated = rsa_mantel(X, rng.standard_normal((30, 5)), n_permutations=199, random_state=0)
    assert unrelated["p_value"] > 0.05


def test_rsa_mantel_deterministic(rng):
    X = rng.standard_normal((15, 3))
    Y = rng.standard_normal((15, 2))
    a = rsa_mantel(X, Y, n_permutations=99, random_state=3)
    b = rsa_mantel(X, Y, n_permutations=99, random_state=3)
    assert a == b
    c = rsa_mantel(X, Y, n_permutations=99, random_state=np.random.default_rng(3))
    assert c == a  # an int seed and the Generator it seeds agree


def test_knn_overlap_rotation_is_one(rng):
    X = rng.standard_normal((30, 4))
    Q = ortho_group.rvs(4, random_state=2)
    assert knn_overlap(X, X @ Q, k=5) == pytest.approx(1.0)


def test_knn_overlap_hand_worked():
    X = np.array([[0.0], [1.0], [3.0], [6.0]])
    Y = np.array([[0.0], [5.0], [6.0], [10.0]])
    # k=1 nearest other item (ties by index):
    #   X: 0->1, 1->0, 2->1, 3->2      Y: 0->1, 1->2, 2->1, 3->2
    #   overlaps 1, 0, 1, 1 -> 3/4
    assert knn_overlap(X, Y, k=1) == pytest.approx(0.75)
    # k=2:
    #   X: 0->{1,2}, 1->{0,2}, 2->{1,0} (0 and 3 tie at 3), 3->{2,1}
    #   Y: 0->{1,2}, 1->{2,0} (0 and 3 tie at 5), 2->{1,3}, 3->{2,1}
    #   overlaps 2, 2, 1, 2 of 2 -> (1 + 1 + 1/2 + 1)/4 = 0.875
    assert knn_overlap(X, Y, k=2) == pytest.approx(0.875)


def test_knn_overlap_brute_force(rng):
    X = rng.standard_normal((25, 3))
    Y = X + 0.5 * rng.standard_normal((25, 3))

    def neighbours(Z, i, k):
        others = sorted((np.linalg.norm(Z[i] - Z[j]), j) for j in range(len(Z)) if j != i)
        return {j for _, j in others[:k]}

    for k in (1, 4, 24):
        expected = np.mean([len(neighbours(X, i, k) & neighbours(Y, i, k)) / k for i in range(25)])
        assert knn_overlap(X, Y, k=k) == pytest.approx(expected)


def test_procrustes_similarity_transform_is_zero(rng):
    X = rng.standard_normal((20, 3))
    Q = ortho_group.rvs(3, random_state=4)
    assert procrustes_disparity(X, 2 * X @ Q + 7.0) == pytest.approx(0.0, abs=1e-12)


def test_procrustes_matches_scipy(rng):
    X = rng.standard_normal((20, 3))
    Y = rng.standard_normal((20, 3))
    assert procrustes_disparity(X, Y) == pytest.approx(procrustes(X, Y)[2])


def test_procrustes_pads_narrower_input(rng):
    X = rng.standard_normal((20, 2))
    # A 2-D configuration rotated into 3-D is the same shape.
    Q = ortho_group.rvs(3, random_state=5)
    Y = np.hstack([X, np.zeros((20, 1))]) @ Q
    assert procrustes_disparity(X, Y) == pytest.approx(0.0, abs=1e-12)
    Z = rng.standard_normal((20, 4))
    padded = np.hstack([X, np.zeros((20, 2))])
    assert procrustes_disparity(X, Z) == pytest.approx(procrustes(padded, Z)[2])
    assert procrustes_disparity(Z, X) == pytest.approx(procrustes(Z, padded)[2])


def test_structure_table(rng):
    X = rng.standard_normal((20, 4))
    Y = X @ rng.standard_normal((4, 3))
    table = structure_table(X, Y, k=3, n_permutations=49, random_state=0)
    rsa = rsa_mantel(X, Y, n_permutations=49, random_state=0)
    assert table == pytest.approx(
        {
            "cka": hsic_cka(X, Y),
            "rsa_r": spearmanr(pdist(X), pdist(Y))[0],
            "rsa_p": rsa["p_value"],
            "knn_overlap": knn_overlap(X, Y, k=3),
            "procrustes": procrustes(X, np.hstack([Y, np.zeros((20, 1))]))[2],
        }
    )


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

X6 = np.arange(12.0).reshape(6, 2) ** 1.5
Y5 = np.arange(10.0).reshape(5, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        # Not 2-D.
        (
            lambda: cluster_labels(np.zeros(6), 2),
            r"X must be a 2-D array .* got an array of shape \(6,\)",
        ),
        (
            lambda: retrieval_scores(np.zeros((2, 3, 2)), [0, 0]),
            r"X must be a 2-D array",
        ),
        (lambda: linear_cka(X6, np.zeros(6)), r"Y must be a 2-D array"),
        # Labels length.
        (
            lambda: retrieval_scores(X6, [0, 0, 1, 1, 2]),
            r"labels has 5 entries but X has 6 rows",
        ),
        (
            lambda: cluster_scores(X6, [0, 1, 0, 1, 0, 1, 0]),
            r"labels has 7 entries but X has 6 rows",
        ),
        (
            lambda: query_scores(X6, [0] * 6, Y5, [0] * 4),
            r"labels_query has 4 entries but X_query has 5 rows",
        ),
        (
            lambda: cluster_table(X6, {"genre": [0] * 5}),
            r"labels_by_level\['genre'\] has 5 entries but X has 6 rows",
        ),
        (
            lambda: purity_score([0, 1, 1], [0, 1]),
            r"labels_pred has 2 entries but labels_true has 3 rows",
        ),
        (lambda: retrieval_scores(X6, np.zeros((6, 1))), r"labels must be 1-D"),
        # Rows of X and Y.
        (lambda: linear_cka(X6, Y5), r"X has 6 rows but Y has 5"),
        (lambda: rsa_mantel(X6, Y5), r"X has 6 rows but Y has 5"),
        (lambda: knn_overlap(X6, Y5), r"X has 6 rows but Y has 5"),
        (lambda: procrustes_disparity(X6, Y5), r"X has 6 rows but Y has 5"),
        (lambda: structure_table(X6, Y5), r"X has 6 rows but Y has 5"),
        # Feature widths where they must agree.
        (
            lambda: similarity_matrix(X6, np.zeros((2, 3))),
            r"X has 2 features but Y has 3",
        ),
        (
            lambda: query_scores(X6, [0] * 6, np.zeros((2, 3)), [0, 0]),
            r"X_index has 2 features but X_query has 3",
        ),
        # k.
        (
            lambda: retrieval_scores(X6, [0] * 6, k=0),
            r"k must be a positive integer; got 0",
        ),
        (
            lambda: retrieval_scores(X6, [0] * 6, k=(1, 6)),
            r"k=6 is too large: each query ranks the other 5 items",
        ),
        (lambda: retrieval_scores(X6, [0] * 6, k=()), r"non-empty sequence"),
        (
            lambda: query_scores(Y5, [0] * 5, X6, [0] * 6, k=6),
            r"k=6 is too large: the index has only 5 items",
        ),
        (lambda: knn_overlap(X6, X6, k=6), r"k=6 must be < n_samples \(6\)"),
        (lambda: knn_overlap(X6, X6, k=-1), r"k must be a positive integer; got -1"),
        # Option names.
        (
            lambda: cluster_labels(X6, 2, method="dbscan"),
            r"Unknown method 'dbscan'; expected one of 'kmeans', 'agglomerative'",
        ),
        (
            lambda: cluster_table(X6, {"a": [0] * 6}, methods=("kmeans", "spectral")),
            r"Unknown method 'spectral'",
        ),
        (
            lambda: similarity_matrix(X6, metric="dot"),
            r"Unknown metric 'dot'; expected one of 'cosine', 'euclidean'",
        ),
        (
            lambda: retrieval_scores(X6, [0] * 6, k=1, metric="manhattan"),
            r"Unknown metric 'manhattan'",
        ),
        (lambda: rsa_mantel(X6, X6, method="kendall"), r"Unknown method 'kendall'"),
        (lambda: rsa_mantel(X6, X6, metric="hamming"), r"Unknown metric 'hamming'"),
        (
            lambda: knn_overlap(X6, X6, k=2, metric="jaccard"),
            r"Unknown metric 'jaccard'",
        ),
        # Non-finite values.
        (
            lambda: cluster_labels(np.where(X6 > 5, np.nan, X6), 2),
            r"X contains NaN or infinite values",
        ),
        (
            lambda: retrieval_scores(np.where(X6 > 5, np.inf, X6), [0] * 6),
            r"X contains NaN or infinite values",
        ),
        (
            lambda: linear_cka(X6, np.where(X6 > 5, -np.inf, X6)),
            r"Y contains NaN or infinite values",
        ),
        (
            lambda: query_scores(X6, [0] * 6, [[np.nan, 0.0]], [0]),
            r"X_query contains NaN or infinite values",
        ),
        # Too few samples.
        (
            lambda: cluster_labels(X6[:1], 1),
            r"X must have at least 2 sample\(s\); got 1",
        ),
        (
            lambda: retrieval_scores(X6[:1], [0]),
            r"X must have at least 2 sample\(s\); got 1",
        ),
        (
            lambda: linear_cka(X6[:1], X6[:1]),
            r"X must have at least 2 sample\(s\); got 1",
        ),
        (
            lambda: rsa_mantel(X6[:2], X6[:2]),
            r"X must have at least 3 sample\(s\); got 2",
        ),
        # Number of clusters.
        (
            lambda: cluster_labels(X6, 7),
            r"n_clusters=7 exceeds the number of samples \(6\)",
        ),
        (
            lambda: cluster_scores(X6, [0] * 6, n_clusters=0),
            r"n_clusters must be a positive integer; got 0",
        ),
        # Other options.
        (
            lambda: retrieval_scores(X6, [0] * 6, k=1, chunk_size=0),
            r"chunk_size must be a positive integer; got 0",
        ),
        (
            lambda: rsa_mantel(X6, X6, n_permutations=0),
            r"n_permutations must be a positive integer; got 0",
        ),
        (
            lambda: cluster_labels(X6, 2, random_state="seed"),
            r"random_state must be an int, a numpy.random.Generator or None; got str",
        ),
        (lambda: rsa_mantel(X6, X6, random_state=1.5), r"random_state must be an int"),
        (lambda: cluster_table(X6, {}), r"labels_by_level is empty"),
        (lambda: purity_score([], []), r"labels_true must be a non-empty 1-D array"),
        # Undefined results.
        (
            lambda: retrieval_scores(X6, np.arange(6), k=1),
            r"No query has a relevant item",
        ),
        (
            lambda: query_scores(X6, [0] * 6, Y5, [1] * 5, k=1),
            r"No query has a relevant item",
        ),
        (
            lambda: rsa_mantel(np.eye(3), X6[:3]),
            r"All pairwise distances in X are equal",
        ),
    ],
)
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------
# Paired comparison
# --------------------------------------------------------------------------


def _mcnemar_by_hand(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar from the binomial sum, written out."""
    n, m = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(m + 1)) / 2**n)


@pytest.mark.parametrize("a_only, b_only, both, neither", [(1, 9, 20, 3), (5, 5, 0, 0), (0, 7, 4, 1), (0, 0, 6, 2)])
def test_mcnemar_matches_the_binomial_sum(a_only, b_only, both, neither):
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    result = metrics.mcnemar_test(a, b)
    assert result["a_only"] == a_only and result["b_only"] == b_only and result["n"] == len(a)
    assert result["p_value"] == pytest.approx(_mcnemar_by_hand(a_only, b_only), rel=1e-12)
    assert metrics.mcnemar_test(b, a)["p_value"] == pytest.approx(result["p_value"])
    assert result["a"] == pytest.approx(np.mean(a)) and result["b"] == pytest.approx(np.mean(b))


def test_mcnemar_uses_the_pairing():
    # Same accuracies (0.25 and 0.45), different pairings: nested failures are significant, crossed ones not.
    a = [1] * 10 + [0] * 30
    nested = metrics.mcnemar_test(a, [1] * 18 + [0] * 22)  # 0 against 8 discordant
    crossed = metrics.mcnemar_test(a, [0] * 5 + [1] * 5 + [1] * 13 + [0] * 17)  # 5 against 13
    assert nested["a"] == crossed["a"] and nested["b"] == crossed["b"]
    assert nested["p_value"] < 0.05 < crossed["p_value"]


def test_mcnemar_rejects_non_binary_and_unequal_inputs():
    with pytest.raises(ValueError, match="True/False"):
        metrics.mcnemar_test([0.5, 1], [1, 0])
    with pytest.raises(ValueError, match="one length"):
        metrics.mcnemar_test([1, 0, 1], [1, 0])


def test_paired_bootstrap_of_independent_queries_matches_the_normal_interval():
    rng = np.random.default_rng(3)
    a = rng.random(4000) < 0.8
    b = np.where(rng.random(4000) < 0.85, a, ~a)  # agrees with a on 85% of the queries
    d = a.astype(float) - b.astype(float)
    half = 1.959964 * d.std(ddof=1) / np.sqrt(d.size)
    result = metrics.paired_bootstrap(a, b, np.arange(d.size), n_resamples=4000)
    assert result["difference"] == pytest.approx(d.mean())
    assert result["low"] == pytest.approx(d.mean() - half, abs=0.003)
    assert result["high"] == pytest.approx(d.mean() + half, abs=0.003)


def test_paired_bootstrap_with_two_groups_has_the_enumerable_extremes():
    # Two groups: a resample draws (2, 0), (1, 1) or (0, 2) copies with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are the two single-group differences.
    a = np.array([1, 1, 1, 0, 1, 0, 0])
    b = np.array([0, 0, 1, 0, 1, 1, 0])
    groups = np.array(["x", "x", "x", "x", "y", "y", "y"])
    result = metrics.paired_bootstrap(a, b, groups, n_resamples=3000, random_state=1)
    x = (a[:4] - b[:4]).mean()  # 0.5
    y = (a[4:] - b[4:]).mean()  # -1/3
    assert (result["low"], result["high"]) == pytest.approx((min(x, y), max(x, y)))
    assert result["n_groups"] == 2


def test_paired_bootstrap_widens_when_queries_of_a_group_move_together():
    a = np.repeat(np.arange(20) % 2, 5).astype(bool)  # whole artists right or wrong
    b = np.zeros(100, dtype=bool)
    by_artist = metrics.paired_bootstrap(a, b, np.repeat(np.arange(20), 5))
    by_query = metrics.paired_bootstrap(a, b, np.arange(100))
    assert by_artist["high"] - by_artist["low"] > 1.8 * (by_query["high"] - by_query["low"])


def test_group_bootstrap_matches_the_exact_distribution_of_resampled_groups():
    """Against enumeration: every way of drawing 4 groups from 4 with replacement, with its probability."""
    import itertools
    from math import factorial

    from lorastyle.metrics import group_bootstrap

    values = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=float)
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3])
    sums, sizes = np.array([2.0, 1.0, 0.0, 3.0]), np.array([3.0, 2.0, 1.0, 3.0])
    means, probs = [], []
    for counts in itertools.product(range(5), repeat=4):
        if sum(counts) != 4:
            continue
        p = factorial(4) / np.prod([factorial(c) for c in counts]) / 4**4
        c = np.array(counts, dtype=float)
        means.append(c @ sums / (c @ sizes))
        probs.append(p)
    means, probs = np.array(means), np.array(probs)
    out = group_bootstrap(values, groups, n_resamples=200_000, random_state=0)
    # each end is a 2.5% / 97.5% quantile of the exact distribution (to Monte Carlo error)
    for end, q in ((out["low"], 0.025), (out["high"], 0.975)):
        assert probs[means < end - 1e-12].sum() <= q + 0.005 and probs[means <= end + 1e-12].sum() >= q - 0.005
    assert out["mean"] == values.mean() and out["n_groups"] == 4


def test_group_bootstrap_is_wider_than_independent_intervals_when_groups_agree_within():
    """Queries of one group that all hit or all miss carry one group's worth of information, not n."""
    from scipy.stats import bootstrap

    from lorastyle.metrics import group_bootstrap

    rng = np.random.default_rng(3)
    hit_of_group = rng.random(20) < 0.6
    groups = np.repeat(np.arange(20), 10)
    values = hit_of_group[groups].astype(float)
    grouped = group_bootstrap(values, groups, random_state=0)
    plain = bootstrap((values,), np.mean, method="percentile", random_state=0).confidence_interval
    assert grouped["high"] - grouped["low"] > 2 * (plain.high - plain.low)
    # one query per group: the group bootstrap is the ordinary one (within Monte Carlo error)
    alone = group_bootstrap(values, np.arange(len(values)), n_resamples=20_000, random_state=0)
    assert alone["low"] == pytest.approx(plain.low, abs=0.02) and alone["high"] == pytest.approx(plain.high, abs=0.02)
