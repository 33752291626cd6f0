"""StyleEmbedding against scikit-learn, and the calibration against a known truth."""

import numpy as np
import pytest
from sklearn.decomposition import PCA, IncrementalPCA, KernelPCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from lorastyle.embedding import StyleEmbedding, calibration_factors


def spiked(rng, n, dim=3000, sd=(20.0, 12.0, 8.0), U=None):
    """n points with three strong directions (std sd) plus unit isotropic noise in dim dimensions."""
    if U is None:
        U = np.linalg.qr(rng.standard_normal((dim, len(sd))))[0]
    return (rng.standard_normal((n, len(sd))) * np.asarray(sd)) @ U.T + rng.standard_normal((n, dim)), U


def same_up_to_sign(a, b, **kw):
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a, b * signs, **kw)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X, U = spiked(rng, 40, dim=500)
    Xt, _ = spiked(rng, 10, dim=500, U=U)
    return X, Xt


def test_full_matches_sklearn_pca(data):
    X, Xt = data
    emb = StyleEmbedding(n_components=3, calibrate=False).fit(X)
    ref = PCA(n_components=3, svd_solver="full").fit(X)
    same_up_to_sign(emb.embedding_, ref.transform(X), rtol=1e-6, atol=1e-8)
    same_up_to_sign(emb.project(Xt, calibrated=False), ref.transform(Xt), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(emb.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-8)


def test_randomized_and_incremental_agree_with_exact(data):
    X, _ = data
    exact = StyleEmbedding(n_components=2, calibrate=False).fit_transform(X)
    rand = StyleEmbedding(n_components=2, solver="randomized", calibrate=False, random_state=0).fit_transform(X)
    same_up_to_sign(rand, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())
    inc = StyleEmbedding(n_components=2, solver="incremental", batch_size=10, calibrate=False).fit_transform(X)
    ref = IncrementalPCA(n_components=2, batch_size=10).fit_transform(X)
    same_up_to_sign(inc, ref, rtol=1e-6, atol=1e-8)
    # the strong directions dominate, so incremental batches recover the exact components closely
    same_up_to_sign(inc, exact, rtol=0.05, atol=0.05 * np.abs(exact).max())


def test_precomputed_kernel_equals_feature_pca(data):
    X, Xt = data
    kern = StyleEmbedding(n_components=3, solver="precomputed").fit(X @ X.T)
    feat = StyleEmbedding(n_components=3).fit(X)
    same_up_to_sign(kern.embedding_, feat.embedding_, rtol=1e-6, atol=1e-8)
    same_up_to_sign(kern.transform(Xt @ X.T), feat.transform(Xt), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kern.calibration_, feat.calibration_, rtol=1e-8)
    np.testing.assert_allclose(kern.explained_variance_ratio_, feat.explained_variance_ratio_, rtol=1e-6)
    # and sklearn's KernelPCA on the same precomputed kernel
    ref = KernelPCA(n_components=3, kernel="precomputed").fit(X @ X.T)
    same_up_to_sign(kern.project(Xt @ X.T, calibrated=False), ref.transform(Xt @ X.T), rtol=1e-6, atol=1e-8)


def test_pipeline_and_random_state(data):
    X, Xt = data
    pipe = make_pipeline(FunctionTransformer(np.tanh), StyleEmbedding(n_components=2, random_state=0))
    Z = pipe.fit_transform(X)
    assert Z.shape == (40, 2)
    assert pipe.transform(Xt).shape == (10, 2)
    a = StyleEmbedding(2, solver="randomized", random_state=3, n_calibration=10).fit(X)
    b = StyleEmbedding(2, solver="randomized", random_state=3, n_calibration=10).fit(X)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    np.testing.assert_array_equal(a.calibration_, b.calibration_)


def test_calibration_equals_brute_force_leave_one_out(data):
    """The kernel leave-one-out equals refitting sklearn PCA without each item."""
    X, _ = data
    n, k = 15, 2
    Xs = X[:n]
    num = np.zeros(k)
    den = np.zeros(k)
    full = PCA(k).fit(Xs)
    num = (full.transform(Xs) ** 2).sum(axis=0)
    for i in range(n):
        loo = PCA(k).fit(np.delete(Xs, i, axis=0))
        den += loo.transform(Xs[i : i + 1])[0] ** 2
    np.testing.assert_allclose(calibration_factors(Xs @ Xs.T, k, n_calibration=n), np.sqrt(num / den), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_removes_projection_drift(seed):
    """Truth known: 2000 fresh points from the same distribution measure the real drift.

    Uncalibrated, new points land inside the fitted cloud (RMS score ratio < 0.86 on every
    component, < 0.8 in total); calibrated, the ratio is within 25% of 1 per component and 10% in
    total (each factor is an estimate from 100 leave-one-out fits, so it carries noise).
    """
    rng = np.random.default_rng(seed)
    sd = (15.0, 11.0, 8.0)
    X, U = spiked(rng, 100, dim=5000, sd=sd)
    fresh, _ = spiked(rng, 2000, dim=5000, sd=sd, U=U)
    emb = StyleEmbedding(n_components=3, n_calibration=100, random_state=0).fit(X)
    energy = lambda Z: (Z**2).mean(axis=0)  # noqa: E731
    inside = energy(emb.embedding_)
    raw, cal = energy(emb.project(fresh, calibrated=False)), energy(emb.project(fresh))
    assert np.all(np.sqrt(raw / inside) < 0.86), np.sqrt(raw / inside)
    assert np.sqrt(raw.sum() / inside.sum()) < 0.8
    assert np.all(np.abs(np.sqrt(cal / inside) - 1) < 0.25), np.sqrt(cal / inside)
    assert abs(np.sqrt(cal.sum() / inside.sum()) - 1) < 0.1


def test_no_drift_no_correction():
    """With few dimensions and many items there is no drift: factors are close to 1."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 5)) * [5, 4, 3, 2, 1]
    emb = StyleEmbedding(n_components=3, n_calibration=80, random_state=0).fit(X)
    np.testing.assert_allclose(emb.calibration_, 1, atol=0.03)


def test_calibration_needs_enough_items():
    X = np.random.default_rng(2).standard_normal((4, 50))
    with pytest.warns(UserWarning, match="calibration needs more than n_components"):
        emb = StyleEmbedding(n_components=3).fit(X)
    np.testing.assert_array_equal(emb.calibration_, 1)


@pytest.mark.parametrize(
    "params, X, match",
    [
        (
            dict(n_components=0),
            np.ones((5, 4)),
            "The 'n_components' parameter of StyleEmbedding must be an int in the range \\[1, inf\\)",
        ),
        (dict(n_components=2.5), np.ones((5, 4)), "The 'n_components' parameter of StyleEmbedding must be an int"),
        (dict(random_state="a"), np.ones((5, 4)), "The 'random_state' parameter of StyleEmbedding must be"),
        (dict(n_components=5), np.eye(5), r"n_components=5 must be at most min\(n_samples - 1, n_features\) = 4"),
        (dict(solver="svd"), np.eye(5), "The 'solver' parameter of StyleEmbedding must be a str among"),
        (
            dict(n_calibration=1),
            np.eye(5),
            "The 'n_calibration' parameter of StyleEmbedding must be an int in the range \\[2, inf\\)",
        ),
        (
            dict(solver="incremental", batch_size=1, n_components=2),
            np.eye(5),
            "batch_size must be at least n_components=2, got 1",
        ),
        (dict(solver="precomputed"), np.ones((5, 4)), "needs a square kernel"),
        (dict(solver="precomputed"), np.triu(np.ones((5, 5))), "needs a symmetric kernel"),
        (dict(), np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), "NaN"),
    ],
)
def test_invalid_parameters(params, X, match):
    with pytest.raises(ValueError, match=match):
        StyleEmbedding(**params).fit(X)


def test_transform_checks_width(data):
    X, _ = data
    emb = StyleEmbedding(2).fit(X)
    for method in (emb.transform, emb.project):
        with pytest.raises(ValueError, match="X has 7 features, but StyleEmbedding is expecting 500 features"):
            method(np.ones((2, 7)))


def test_transform_is_the_plain_projection_and_project_calibrates(data):
    """scikit-learn's contract: fit_transform(X) == fit(X).transform(X); project() applies the calibration."""
    X, Xt = data
    emb = StyleEmbedding(n_components=3, random_state=0).fit(X)
    np.testing.assert_allclose(emb.transform(X), emb.embedding_, rtol=1e-9, atol=1e-9)
    assert not np.allclose(emb.calibration_, 1)
    np.testing.assert_allclose(emb.project(Xt), emb.transform(Xt) * emb.calibration_, rtol=1e-12)


def test_a_generator_random_state_is_accepted_and_follows_its_seed(data):
    X, _ = data
    fits = [
        StyleEmbedding(2, solver="randomized", n_calibration=10, random_state=np.random.default_rng(4)).fit(X)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(fits[0].calibration_, fits[1].calibration_)
    np.testing.assert_array_equal(fits[0].embedding_, fits[1].embedding_)


@parametrize_with_checks(
    [
        StyleEmbedding(),
        StyleEmbedding(solver="randomized", random_state=0),
        StyleEmbedding(solver="incremental", calibrate=False),
        StyleEmbedding(solver="precomputed"),
    ]
)
def test_scikit_learn_estimator_checks(estimator, check):
    """Every check of scikit-learn's check_estimator passes (no expected failures to declare)."""
    check(estimator)


def test_large_kernels_use_lanczos_with_the_same_result():
    """Above 300 items the top eigenpairs come from ARPACK: same scores and factors as the dense solver."""
    from lorastyle import embedding

    rng = np.random.default_rng(5)
    X, _ = spiked(rng, 400, dim=600)
    K = X @ X.T
    w_l, V_l = embedding._top_eigen(embedding.center_kernel(K, K), 3)
    import scipy.linalg

    w_d, V_d = scipy.linalg.eigh(embedding.center_kernel(K, K), subset_by_index=[397, 399])
    np.testing.assert_allclose(w_l, w_d[::-1], rtol=1e-8)
    same_up_to_sign(V_l, V_d[:, ::-1], atol=1e-6)


def test_lanczos_starts_on_an_exactly_centred_kernel():
    """The vector of ones is an exact null vector of a centred kernel: the solver must not start there.

    Rows X and -X give column means of exactly 0, so the kernel is centred exactly and
    Kc @ ones == 0 in floating point (this made `lorastyle index` fail at 2,000 files).
    """
    import scipy.linalg

    from lorastyle import embedding

    rng = np.random.default_rng(6)
    Y = rng.integers(-3, 4, size=(200, 8)).astype(float)
    X = np.vstack([Y, -Y])
    Kc = X @ X.T
    assert not (Kc @ np.ones(len(X))).any()
    w_l, V_l = embedding._top_eigen(Kc, 3)
    w_d, V_d = scipy.linalg.eigh(Kc, subset_by_index=[len(X) - 3, len(X) - 1])
    np.testing.assert_allclose(w_l, w_d[::-1], rtol=1e-8)
    same_up_to_sign(V_l, V_d[:, ::-1], atol=1e-6)


@pytest.mark.parametrize("rank", [0, 1])
def test_lanczos_falls_back_on_a_kernel_of_too_low_rank(rank):
    """Many copies of one file give a centred kernel of rank 0 or 1: ARPACK cannot start there."""
    from lorastyle import embedding

    rng = np.random.default_rng(9)
    x = rng.normal(size=(400, 1)) if rank else np.zeros((400, 1))
    Kc = x @ x.T
    w, V = embedding._top_eigen(Kc, 5)
    assert w.shape == (5,) and V.shape == (400, 5)
    np.testing.assert_allclose(w[0], float(x[:, 0] @ x[:, 0]), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(w[1:], 0, atol=1e-8)


def test_a_fit_on_400_identical_items_does_not_fail():
    X = np.tile(np.arange(6.0), (400, 1))
    Z = StyleEmbedding(4, solver="precomputed", calibrate=False).fit_transform(X @ X.T)
    np.testing.assert_allclose(Z, 0, atol=1e-6)
