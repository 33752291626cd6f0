"""StreamedPCA against scikit-learn's exact PCA and the kernel leave-one-out calibration."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from lorastyle._validation import check_streamed_pca_state
from lorastyle.embedding import StreamedPCA, calibration_factors


def spiked(rng, n, dim, sd=(20.0, 12.0, 8.0), noise=1.0):
    U = np.linalg.qr(rng.standard_normal((dim, len(sd))))[0]
    return ((rng.standard_normal((n, len(sd))) * np.asarray(sd)) @ U.T + noise * rng.standard_normal((n, dim))).astype(
        np.float32
    )


def same_up_to_sign(a, b, **kw):
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a, b * signs, **kw)


class RowReader:
    """An array-like that hands out rows and remembers the largest request (no dense copy is taken)."""

    def __init__(self, X):
        self.X, self.shape, self.largest = X, X.shape, 0

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        self.largest = max(self.largest, len(rows))
        return self.X[rows]


def test_scores_components_and_variances_match_exact_pca():
    X = spiked(np.random.default_rng(0), 1200, 700)
    fitted = StreamedPCA(n_components=3, calibrate=False).fit(X)
    ref = PCA(n_components=3, svd_solver="full").fit(X.astype(np.float64))
    same_up_to_sign(fitted.embedding_, ref.transform(X.astype(np.float64)), rtol=1e-5, atol=1e-4)
    same_up_to_sign(fitted.components_.T, ref.components_.T, atol=1e-6)
    np.testing.assert_allclose(fitted.explained_variance_, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(fitted.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-6)


def test_rows_are_read_a_few_hundred_at_a_time():
    """The fit never asks for more than a block of rows: no dense copy, no n x n."""
    reader = RowReader(spiked(np.random.default_rng(1), 1500, 300))
    StreamedPCA(n_components=2, n_calibration=40).fit(reader)
    assert 0 < reader.largest <= 512


def test_below_100_items_the_calibration_is_exact_leave_one_out():
    X = spiked(np.random.default_rng(2), 60, 2000, noise=3.0)
    fitted = StreamedPCA(n_components=3, n_calibration=60).fit(X)
    Xd = X.astype(np.float64)
    reference = calibration_factors(Xd @ Xd.T, 3, n_calibration=60, random_state=0)
    assert np.all(reference > 1.05)  # drift to correct: the test could fail
    np.testing.assert_allclose(fitted.calibration_, reference, rtol=1e-6)


def test_folds_estimate_leave_one_out_within_a_few_percent():
    """At 600 items the calibration items are left out 12 at a time; leave-one-out on the same items is the
    reference."""
    X = spiked(np.random.default_rng(3), 600, 3000, noise=2.0)
    fitted = StreamedPCA(n_components=3, n_calibration=100, random_state=5).fit(X)  # the same items
    Xd = X.astype(np.float64)
    reference = calibration_factors(Xd @ Xd.T, 3, n_calibration=100, random_state=5)
    assert np.all(reference > 1.03)
    np.testing.assert_allclose(fitted.calibration_, reference, rtol=0.03)


def test_calibrated_projection_of_fresh_items_matches_the_fitted_spread():
    """Truth known: fresh items from the same distribution; uncalibrated they land inward, calibrated not."""
    rng = np.random.default_rng(4)
    sd, dim = (15.0, 11.0, 8.0), 5000
    U = np.linalg.qr(rng.standard_normal((dim, 3)))[0]
    draw = lambda n: ((rng.standard_normal((n, 3)) * sd) @ U.T + rng.standard_normal((n, dim))).astype(np.float32)  # noqa: E731
    fitted = StreamedPCA(n_components=3, n_calibration=100).fit(draw(100))
    fresh = draw(2000)
    energy = lambda Z: (Z**2).mean(axis=0)  # noqa: E731
    inside = energy(fitted.embedding_)
    raw, cal = energy(fitted.project(fresh, calibrated=False)), energy(fitted.project(fresh))
    assert np.sqrt(raw.sum() / inside.sum()) < 0.8
    assert abs(np.sqrt(cal.sum() / inside.sum()) - 1) < 0.1


def test_state_round_trips_and_is_checked():
    X = spiked(np.random.default_rng(5), 50, 200)
    fitted = StreamedPCA(n_components=2).fit(X)
    again = StreamedPCA.from_state(fitted.get_state())
    np.testing.assert_array_equal(again.project(X[:5]), fitted.project(X[:5]))
    assert check_streamed_pca_state(fitted.get_state()) == (50, 2, 200)
    for name, bad in [("mean_", np.zeros(3)), ("components_", np.full((2, 200), np.nan)), ("calibration_", np.ones(5))]:
        with pytest.raises(ValueError, match=name):
            StreamedPCA.from_state({**fitted.get_state(), name: bad})
    with pytest.raises(ValueError, match="lacks calibration_"):
        StreamedPCA.from_state({k: v for k, v in fitted.get_state().items() if k != "calibration_"})


def test_same_seed_same_fit_and_bad_sizes_refused():
    X = spiked(np.random.default_rng(6), 80, 100)
    a, b = StreamedPCA(3, random_state=7).fit(X), StreamedPCA(3, random_state=7).fit(X)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    np.testing.assert_array_equal(a.calibration_, b.calibration_)
    with pytest.raises(ValueError, match="n_components=80"):
        StreamedPCA(80).fit(X)
    with pytest.raises(ValueError, match="NaN or Inf"):
        StreamedPCA(2).fit(np.where(np.arange(100) == 3, np.nan, X))
