"""PCA embedding of LoRA descriptors, with calibration for out-of-sample LoRAs.

Projection drift
----------------
A LoRA descriptor has far more dimensions (10^4 to 10^8) than a collection
has LoRAs (10^2 to 10^4). PCA fitted on such data places its components partly
along the training points' own noise, so a training LoRA's score on a leading
component is inflated, while a new LoRA, whose noise is orthogonal to the
fitted components, projects closer to the origin. New LoRAs therefore land
systematically inward of the fitted ones in the map ("projection drift"; in
statistics, the shrinkage of out-of-sample PC scores in high dimension, low
sample size). The paper applies "a calibration step to mitigate projection
drift" without defining it; this module's definition is ours:

**Calibration (lorastyle's definition).** For each component k,

    c_k = sqrt( sum_i s_ik^2 / sum_i t_ik^2 ),

where s_ik is fitted LoRA i's in-sample score and t_ik its score on the k-th
component of a PCA fitted without it (leave-one-out), over a random subset of
at most ``n_calibration`` fitted LoRAs. :meth:`StyleEmbedding.transform`
multiplies out-of-sample scores by c. Leave-one-out treats each fitted LoRA as
a new one, so c_k estimates how much a new LoRA's k-th score is shrunk. Ratios
of energies need no sign or rotation alignment between the leave-one-out and
full fits. All leave-one-out fits run on the n x n kernel, so the cost does not
grow with the descriptor's dimension.
"""

from __future__ import annotations

import numbers
import warnings
from functools import partial

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._validation import (
    EMBEDDING_STATE,
    STREAMED_PCA_STATE,
    RandomState,
    check_embedding_state,
    check_random_state,
    check_streamed_pca_state,
    sklearn_seed,
)

__all__ = ["StyleEmbedding", "StreamedPCA", "calibration_factors", "center_kernel"]

SOLVERS = ("full", "randomized", "incremental", "precomputed")


def center_kernel(K_test: np.ndarray, K_train: np.ndarray) -> np.ndarray:
    """Centre kernel rows against the training points' mean in feature space.

    Parameters
    ----------
    K_test : ndarray of shape (n_test, n_train)
        Inner products of test items with training items.
    K_train : ndarray of shape (n_train, n_train)

    Returns
    -------
    ndarray of shape (n_test, n_train)
        ``<phi(x) - mu, phi(x_j) - mu>`` with mu the training mean.
    """
    col = K_train.mean(axis=0)
    return K_test - col[None, :] - K_test.mean(axis=1, keepdims=True) + col.mean()


def _top_eigen(Kc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Largest k eigenpairs of a symmetric matrix, in descending order.

    Dense for small matrices; Lanczos (ARPACK, fixed start vector, so deterministic)
    when few components of a large matrix are wanted, which makes the n
    leave-one-out fits of the calibration O(n^2) each instead of O(n^3).
    The start vector is a fixed pseudo-random one: the vector of ones, the obvious fixed
    choice, is in the null space of every centred kernel, where Lanczos cannot start.
    """
    n = Kc.shape[0]
    if n > 300 and k < n // 10:
        v0 = np.random.default_rng(0).standard_normal(n)  # a local generator: no global state
        try:
            w, V = scipy.sparse.linalg.eigsh(Kc, k=k, which="LA", v0=v0, tol=1e-10)
        except scipy.sparse.linalg.ArpackError:
            # a kernel of (numerical) rank below k, e.g. many copies of one file: ARPACK's Krylov
            # space collapses ("starting vector is zero"); the dense solver has no such trouble
            pass
        else:
            order = np.argsort(w)[::-1]
            return w[order], V[:, order]
    w, V = scipy.linalg.eigh(Kc, subset_by_index=[n - k, n - 1])
    return w[::-1], V[:, ::-1]


def calibration_factors(K: np.ndarray, n_components: int, *, n_calibration: int = 100, random_state=None) -> np.ndarray:
    """Per-component calibration factors by leave-one-out (see the module docstring).

    Parameters
    ----------
    K : ndarray of shape (n_samples, n_samples)
        Uncentred linear kernel (inner products) of the fitted items.
    n_components : int
    n_calibration : int, default=100
        Leave-one-out fits on at most this many items (a random subset).
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    ndarray of shape (n_components,)
        Factors >= 0; 1 where a component cannot be estimated.
    """
    n = K.shape[0]
    if n - 1 <= n_components:
        warnings.warn(
            f"calibration needs more than n_components + 1 = {n_components + 1} fitted items "
            f"(got {n}); using factors of 1",
            stacklevel=2,
        )
        return np.ones(n_components)
    rng = check_random_state(random_state)
    items = np.sort(rng.choice(n, size=min(n, n_calibration), replace=False))
    w_full, V_full = _top_eigen(center_kernel(K, K), n_components)
    s2 = (V_full[items] ** 2) * np.clip(w_full, 0, None)  # in-sample scores squared
    t2 = np.zeros_like(s2)
    for row, i in enumerate(items):
        keep = np.delete(np.arange(n), i)
        K_rest = K[np.ix_(keep, keep)]
        w, V = _top_eigen(center_kernel(K_rest, K_rest), n_components)
        k_i = center_kernel(K[i, keep][None, :], K_rest)[0]
        good = w > 1e-12 * max(w[0], 1e-300)
        t2[row, good] = (V[:, good].T @ k_i) ** 2 / w[good]
    num, den = s2.sum(axis=0), t2.sum(axis=0)
    factors = np.ones(n_components)
    ok = den > 0
    factors[ok] = np.sqrt(num[ok] / den[ok])
    return factors


class StyleEmbedding(TransformerMixin, BaseEstimator):
    """PCA of LoRA descriptors, with calibrated out-of-sample projection.

    Parameters
    ----------
    n_components : int, default=2
        Dimension of the embedding; at most ``min(n_samples - 1, n_features)``.
    solver : {"full", "randomized", "incremental", "precomputed"}, default="full"
        ``full`` and ``randomized``: scikit-learn's PCA with that SVD solver;
        ``incremental``: IncrementalPCA in batches of ``batch_size``;
        ``precomputed``: kernel PCA on a linear kernel ``X`` of shape
        (n_samples, n_samples), as given by
        :func:`lorastyle.descriptors.delta_inner_products`; ``transform`` and
        ``project`` then take the kernel of new items against the fitted ones,
        of shape (n_new, n_samples).
    calibrate : bool, default=True
        Estimate the leave-one-out factors :attr:`calibration_` that
        :meth:`project` applies (ones when False).
    n_calibration : int, default=100
        Items used to estimate the calibration.
    batch_size : int, optional
        For ``incremental``; default is scikit-learn's ``5 * n_features``.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the randomized solver and the calibration subset (a Generator
        is drawn from once for each).

    Attributes
    ----------
    embedding_ : ndarray of shape (n_samples, n_components)
        In-sample scores of the fitted items (never calibrated).
    calibration_ : ndarray of shape (n_components,)
        Out-of-sample factors (ones when ``calibrate=False``).
    explained_variance_ : ndarray of shape (n_components,)
    explained_variance_ratio_ : ndarray of shape (n_components,)
    n_features_in_ : int
    dual_coef_, kernel_col_means_ : ndarray
        ``precomputed`` only: new kernel rows, centred by the column means, times ``dual_coef_``
        give the scores.

    Notes
    -----
    Two projections, as scikit-learn's contract needs:

    * :meth:`transform` is the plain PCA projection, so that
      ``fit_transform(X)`` equals ``fit(X).transform(X)``;
    * :meth:`project` is the projection of *new* items, multiplied by
      :attr:`calibration_` (see the module docstring): use it for LoRAs that
      were not fitted.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(20, 500))
    >>> emb = StyleEmbedding(n_components=2, random_state=0).fit(X)
    >>> emb.embedding_.shape, emb.transform(X[:3]).shape, emb.project(X[:3]).shape
    ((20, 2), (3, 2), (3, 2))
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "solver": [StrOptions(set(SOLVERS))],
        "calibrate": ["boolean"],
        "n_calibration": [Interval(numbers.Integral, 2, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "random_state": ["random_state", np.random.Generator],
    }

    def __init__(
        self,
        n_components: int = 2,
        *,
        solver: str = "full",
        calibrate: bool = True,
        n_calibration: int = 100,
        batch_size: int | None = None,
        random_state: RandomState = None,
    ):
        self.n_components = n_components
        self.solver = solver
        self.calibrate = calibrate
        self.n_calibration = n_calibration
        self.batch_size = batch_size
        self.random_state = random_state

    def _check_sizes(self, n_samples: int, n_features: int) -> None:
        limit = min(n_samples - 1, n_features)
        if self.n_components > limit:
            raise ValueError(
                f"n_components={self.n_components} must be at most min(n_samples - 1, n_features) "
                f"= {limit} for {n_samples} samples of {n_features} features"
            )
        if self.batch_size is not None and self.batch_size < self.n_components:
            raise ValueError(f"batch_size must be at least n_components={self.n_components}, got {self.batch_size}")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.solver == "precomputed"
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the PCA (and the calibration) on descriptors or a kernel.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or (n_samples, n_samples) for ``precomputed``
        y : ignored

        Returns
        -------
        self
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        n = X.shape[0]
        if self.solver == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ValueError(f"solver='precomputed' needs a square kernel, got shape {X.shape}")
            if not np.allclose(X, X.T, rtol=1e-6, atol=1e-8 * np.abs(X).max()):
                raise ValueError("solver='precomputed' needs a symmetric kernel")
        self._check_sizes(n, X.shape[1])
        k = self.n_components
        if self.solver == "precomputed":
            K = X.astype(np.float64)
            w, V = _top_eigen(center_kernel(K, K), k)
            w = np.clip(w, 0, None)
            self.embedding_ = V * np.sqrt(w)
            self.kernel_col_means_ = K.mean(axis=0)  # all that centring new kernel rows needs
            self.dual_coef_ = np.divide(V, np.sqrt(w), out=np.zeros_like(V), where=w > 0)
            total = np.trace(center_kernel(K, K))
            self.explained_variance_ = w / (n - 1)
            self.explained_variance_ratio_ = w / total if total > 0 else np.zeros(k)
        else:
            if self.solver == "incremental":
                self.pca_ = IncrementalPCA(n_components=k, batch_size=self.batch_size)
            else:
                self.pca_ = PCA(n_components=k, svd_solver=self.solver, random_state=sklearn_seed(self.random_state))
            self.embedding_ = self.pca_.fit_transform(X)
            self.explained_variance_ = self.pca_.explained_variance_
            self.explained_variance_ratio_ = self.pca_.explained_variance_ratio_
            K = None
        if self.calibrate:
            if K is None:
                Xd = X.astype(np.float64)
                K = Xd @ Xd.T
            self.calibration_ = calibration_factors(
                K, k, n_calibration=self.n_calibration, random_state=self.random_state
            )
        else:
            self.calibration_ = np.ones(k)
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """Fit and return the in-sample embedding :attr:`embedding_`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or (n_samples, n_samples) for ``precomputed``
        y : ignored

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        return self.fit(X).embedding_

    def transform(self, X) -> np.ndarray:
        """The plain PCA projection (no calibration): for fitted items, their in-sample scores.

        Parameters
        ----------
        X : array-like of shape (n_new, n_features), or (n_new, n_samples) kernel for ``precomputed``

        Returns
        -------
        ndarray of shape (n_new, n_components)
        """
        check_is_fitted(self, "embedding_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if self.solver == "precomputed":
            X = X.astype(np.float64)
            col = self.kernel_col_means_
            return (X - col[None, :] - X.mean(axis=1, keepdims=True) + col.mean()) @ self.dual_coef_
        return self.pca_.transform(X)

    def project(self, X, *, calibrated: bool = True) -> np.ndarray:
        """Project items that were not fitted: the PCA projection times :attr:`calibration_`.

        Parameters
        ----------
        X : array-like of shape (n_new, n_features), or (n_new, n_samples) kernel for ``precomputed``
        calibrated : bool, default=True
            False gives :meth:`transform` (to show the drift).

        Returns
        -------
        ndarray of shape (n_new, n_components)
        """
        Z = self.transform(X)
        return Z * self.calibration_ if calibrated else Z

    _STATE = EMBEDDING_STATE

    def get_state(self) -> dict[str, np.ndarray]:
        """The fitted ``precomputed`` embedding as named float64 arrays (for a file; never a pickle).

        Returns
        -------
        dict of str to ndarray
            :attr:`embedding_`, :attr:`calibration_`, ``dual_coef_``, ``kernel_col_means_``,
            :attr:`explained_variance_`, :attr:`explained_variance_ratio_`.
        """
        check_is_fitted(self, "embedding_")
        if self.solver != "precomputed":
            raise ValueError(f"get_state stores precomputed embeddings only, not solver={self.solver!r}")
        return {name: np.asarray(getattr(self, name), dtype=np.float64) for name in self._STATE}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], **params) -> StyleEmbedding:
        """A fitted ``precomputed`` embedding from :meth:`get_state`'s arrays, checked for consistency.

        Parameters
        ----------
        state : dict of str to ndarray
        **params
            Constructor parameters other than ``solver`` and ``n_components`` (taken from the arrays).

        Returns
        -------
        StyleEmbedding

        Raises
        ------
        ValueError
            When an array is missing, of the wrong shape, or not finite.
        """
        n, k = check_embedding_state(state)
        self = cls(n_components=k, solver="precomputed", **params)
        for name in cls._STATE:
            setattr(self, name, np.asarray(state[name], dtype=np.float64))
        self.n_features_in_ = n
        return self


# ---------------------------------------------------------------------------------------------
# PCA of rows read block by block: what an index fits, at any number of files
# ---------------------------------------------------------------------------------------------

# Rows turned into float32 at once while streaming: bounds the temporary copy (512 x 16,384 x 4 B = 32 MB).
_BLOCK_ROWS = 512


def _blocks(X, ids: np.ndarray, mean: np.ndarray | None = None):
    """``(position, float32 block)`` of the rows ``ids`` of X (minus ``mean``), a few hundred at a time."""
    for start in range(0, len(ids), _BLOCK_ROWS):
        B = np.asarray(X[ids[start : start + _BLOCK_ROWS]], dtype=np.float32)
        yield start, B if mean is None else B - mean


def _centred_pca(X, ids: np.ndarray, k: int, *, oversample: int, n_iter: int, seed: int):
    """Top-k PCA of the rows ``ids`` of X by a randomized block Krylov SVD of the centred rows.

    Only products of the centred rows with thin matrices are formed, each in one pass over X, so
    memory is O((n + d) * (k + oversample) * (n_iter + 1)) whatever n is. Where that width reaches
    ``min(n, d)`` the range is the whole row space and the result is exact. The products are taken
    in float32 (an index's sketches are float16) on rows centred first, so that no large mean is
    subtracted after the rounding; everything else is float64.

    Returns ``mean (d,), components (k, d), scores (len(ids), k), variances (k,), total variance``.
    """
    n, d = len(ids), X.shape[1]
    mean = np.zeros(d)
    for _, B in _blocks(X, ids):
        mean += B.sum(axis=0, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        raise ValueError("the rows hold NaN or Inf values")
    mean /= n
    centre = mean.astype(np.float32)
    total = 0.0  # trace of the centred rows' Gram matrix
    for _, B in _blocks(X, ids, centre):
        total += float(np.einsum("ij,ij->", B, B, dtype=np.float64))

    def times(M: np.ndarray) -> np.ndarray:  # centred rows @ M, shape (n, l)
        out = np.empty((n, M.shape[1]))
        M32 = M.astype(np.float32)
        for start, B in _blocks(X, ids, centre):
            out[start : start + len(B)] = B @ M32
        return out

    def times_t(M: np.ndarray) -> np.ndarray:  # centred rows.T @ M, shape (d, l)
        out = np.zeros((d, M.shape[1]))
        M32 = M.astype(np.float32)
        for start, B in _blocks(X, ids, centre):
            out += B.T @ M32[start : start + len(B)]
        return out

    # Block Krylov iteration (Musco and Musco 2015): the range of every power X X^T ... X Omega is
    # kept, not only the last, so that components are found even where the spectrum is flat (a
    # LoRA folder's is, past its first few components), which plain power iterations resolve slowly.
    width = min(k + oversample, n, d)
    rng = np.random.default_rng(seed)
    block = np.linalg.qr(times(rng.standard_normal((d, width))))[0]
    krylov = [block]
    for _ in range(n_iter):
        block = np.linalg.qr(times(times_t(block)))[0]
        krylov.append(block)
    Q = np.linalg.qr(np.concatenate(krylov, axis=1)[:, : min(n, d)])[0]
    Ub, s, Vt = np.linalg.svd(times_t(Q).T, full_matrices=False)
    scores = (Q @ Ub[:, :k]) * s[:k]
    components = Vt[:k]
    # a fixed sign per component (largest loading positive), so that refits agree
    flip = np.sign(components[np.arange(k), np.argmax(np.abs(components), axis=1)])
    flip[flip == 0] = 1
    return mean, components * flip[:, None], scores * flip, s[:k] ** 2, total


class StreamedPCA:
    """PCA of rows read block by block, with calibrated out-of-sample projection.

    What an index fits on its sketches: nothing n x n and no dense copy of the rows is made, so a
    family of 20,000 or 200,000 files is embedded in memory proportional to the rows themselves.
    The components come from a randomized SVD of the centred rows (exact when
    ``n_components + oversample`` reaches the rank).

    **Calibration** is the leave-one-out estimate of :func:`calibration_factors` (see the module
    docstring) with one change that keeps its cost at a few fits: the calibration items are left
    out in folds of at most ``max(1, n // 50)`` items, each fold refitted once. Leaving out 2% of
    the items instead of one shrinks the fitted space by 2% more, so the factors match
    leave-one-out's to within about that (tested); below 100 items the folds are single items and
    the estimate is leave-one-out itself.

    Parameters
    ----------
    n_components : int, default=8
    calibrate : bool, default=True
    n_calibration : int, default=100
        Items used to estimate the calibration (a random subset).
    oversample : int, default=10
        Extra random directions of the randomized SVD.
    n_iter : int, default=8
        Power iterations of the randomized SVD.
    random_state : int or None, default=0

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    components_ : ndarray of shape (n_components, n_features)
    embedding_ : ndarray of shape (n_samples, n_components)
        In-sample scores of the fitted rows (never calibrated).
    calibration_ : ndarray of shape (n_components,)
    explained_variance_, explained_variance_ratio_ : ndarray of shape (n_components,)

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(30, 400)).astype(np.float32)
    >>> emb = StreamedPCA(n_components=2).fit(X)
    >>> emb.embedding_.shape, emb.project(X[:3]).shape
    ((30, 2), (3, 2))
    """

    def __init__(
        self,
        n_components: int = 8,
        *,
        calibrate: bool = True,
        n_calibration: int = 100,
        oversample: int = 10,
        n_iter: int = 8,
        random_state: int | None = 0,
    ):
        self.n_components = n_components
        self.calibrate = calibrate
        self.n_calibration = n_calibration
        self.oversample = oversample
        self.n_iter = n_iter
        self.random_state = random_state

    def fit(self, X) -> StreamedPCA:
        """Fit on rows that ``X[ids]`` hands out as arrays (an ndarray, a memmap, an index's sketches).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Anything with ``shape`` whose indexing by an array of row ids gives those rows.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When ``n_components`` exceeds ``min(n_samples - 1, n_features)``, or a row is not finite.
        """
        n, d = X.shape
        k = int(self.n_components)
        if not 1 <= k <= min(n - 1, d):
            raise ValueError(f"n_components={k} must be between 1 and min(n_samples - 1, n_features) = {min(n - 1, d)}")
        rng = check_random_state(self.random_state)
        # the calibration items first, drawn as calibration_factors draws them: the same seed, the same items
        items = np.sort(rng.choice(n, size=min(n, self.n_calibration), replace=False))
        seed = int(rng.integers(2**31 - 1))
        fit = partial(_centred_pca, X, k=k, oversample=self.oversample, n_iter=self.n_iter, seed=seed)
        self.mean_, self.components_, self.embedding_, w, total = fit(np.arange(n))
        self.explained_variance_ = w / (n - 1)
        self.explained_variance_ratio_ = w / total if total > 0 else np.zeros(k)
        self.calibration_ = np.ones(k)
        fold = max(1, n // 50)
        if self.calibrate and n - fold > k:
            s2 = np.zeros(k)
            t2 = np.zeros(k)
            for start in range(0, len(items), fold):
                out = items[start : start + fold]
                mean, comps, _, _, _ = fit(np.setdiff1d(np.arange(n), out))
                t = (np.asarray(X[out], dtype=np.float64) - mean) @ comps.T
                t2 += (t**2).sum(axis=0)
                s2 += (self.embedding_[out] ** 2).sum(axis=0)
            ok = t2 > 0
            self.calibration_[ok] = np.sqrt(s2[ok] / t2[ok])
        return self

    def transform(self, X) -> np.ndarray:
        """The plain PCA projection (no calibration).

        Parameters
        ----------
        X : array-like of shape (n_new, n_features)

        Returns
        -------
        ndarray of shape (n_new, n_components)
        """
        return (np.asarray(X, dtype=np.float64) - self.mean_) @ self.components_.T

    def project(self, X, *, calibrated: bool = True) -> np.ndarray:
        """Project rows that were not fitted: the PCA projection times :attr:`calibration_`.

        Parameters
        ----------
        X : array-like of shape (n_new, n_features)
        calibrated : bool, default=True

        Returns
        -------
        ndarray of shape (n_new, n_components)
        """
        Z = self.transform(X)
        return Z * self.calibration_ if calibrated else Z

    def get_state(self) -> dict[str, np.ndarray]:
        """The fitted arrays, by name (for a file; never a pickle).

        Returns
        -------
        dict of str to ndarray
        """
        return {name: np.asarray(getattr(self, name), dtype=np.float64) for name in STREAMED_PCA_STATE}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> StreamedPCA:
        """A fitted embedding from :meth:`get_state`'s arrays, checked for consistency.

        Parameters
        ----------
        state : dict of str to ndarray

        Returns
        -------
        StreamedPCA

        Raises
        ------
        ValueError
            When an array is missing, of the wrong shape, or not finite.
        """
        _, k, _ = check_streamed_pca_state(state)
        self = cls(n_components=k)
        for name in STREAMED_PCA_STATE:
            setattr(self, name, np.asarray(state[name], dtype=np.float64))
        return self
