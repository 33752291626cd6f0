"""Exact inner products of two modules' delta-W, and of their Gram matrices, from the stored factors.

A module's delta-W is kept as the factors its file stores (:class:`lorastyle.io.formats.LoraModule`):
a plain LoRA's ``U V`` (a LoHa's Hadamard product ``(A1 B1) * (A2 B2)`` is one too, with the row-wise
Khatri-Rao products ``U = A1 (.) A2`` and ``V = (B1^T (.) B2^T)^T`` of width ``r1 r2``), and a LoKr's
``s kron(W1, W2)`` with each ``W_i = U_i V_i`` or stored whole. This module computes

* ``<dW_x, dW_y>_F`` (:func:`delta_inner`) and
* ``<G_x, G_y>_F = ||dW_x^T dW_y||_F^2`` with ``G = dW dW^T`` (:func:`gram_inner`),

never forming an out x in matrix where the factors are cheaper:

* two Kronecker products of one split: ``<kron(A, B), kron(C, D)> = <A, C> <B, D>`` and, since
  ``kron(A, B) kron(A, B)^T = kron(A A^T, B B^T)``, ``<G_x, G_y> = <A A^T, C C^T> <B B^T, D D^T>``:
  products of matrices of about ``sqrt(out) x sqrt(in)``;
* a Kronecker product and a low-rank one ``U V`` of width ``k``: ``kron(A, B) vec(Z) = vec(A Z B^T)``
  (row-major ``vec``) on each of the ``k`` columns, ``O(k (out + in) (a + b))`` for factors of sides
  ``a`` and ``b``;
* two low-rank products: ``<U_x V_x, U_y V_y> = sum((U_x^T U_y) * (V_x V_y^T))`` and
  ``<G_x, G_y> = tr(Q_x P Q_y P^T)`` with ``P = U_x^T U_y`` and ``Q = V V^T``: ``k x k`` matrices.

:func:`cosine` is the per-module score the index's sketches estimate. For ``gram`` it is centred by
default: the Gram matrix less its mean eigenvalue times the identity, ``G - tr(G)/d I``, so that
``<G_x, G_y> - tr(G_x) tr(G_y) / d``. That is the Gram product less its expectation when either update
is turned by a random rotation of the output space: without it the cosine of two unrelated updates has
a floor near ``sqrt(e_x e_y) / d`` (``e = tr(G)^2 / ||G||^2``, the effective rank), so that a random
high-rank file was every file's nearest neighbour (``benchmarks/wild/rank_floor.py`` measures it).

Two LoKr modules of different splits fall back on the low-rank form of one of them (the narrower).
Every formula is tested against the materialised delta-W (``tests/test_module_products.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .io.formats import LoraModule

__all__ = [
    "Factor",
    "FactoredModule",
    "factored",
    "delta_inner",
    "gram_inner",
    "norm2",
    "inner",
    "cosine",
    "ZERO_FRACTION",
]

# A centred Gram matrix whose squared norm is below this fraction of the Gram matrix's is a multiple of the
# identity up to rounding (an isotropic update, which says nothing of a direction): it counts as zero.
ZERO_FRACTION = 1e-9


def _mm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A @ B`` in the factors' own precision (float32 BLAS: one pass over long factors), returned in float64.

    Only for products whose result is small (``k x k``, or a side of a Kronecker factor): its
    rounding (relative 1e-7) is far below any score's resolution.
    """
    return np.asarray(A @ B, dtype=np.float64)


def _dot(A: np.ndarray, B: np.ndarray) -> float:
    """``sum(A * B)`` accumulated in float64."""
    return float(np.sum(np.multiply(A, B, dtype=np.float64)))


@dataclass(frozen=True, eq=False)
class Factor:
    """A matrix ``W = scale * U V`` kept as its factors; ``V`` None for a matrix stored whole (``W = scale * U``).

    The factors keep their precision (float32 as :meth:`lorastyle.io.formats.LoraModule.low_rank`
    gives them); products come back in float64.

    Attributes
    ----------
    U : ndarray of shape (a, k)
    V : ndarray of shape (k, b) or None
    scale : float
    """

    U: np.ndarray
    V: np.ndarray | None = None
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """``(a, b)``: the shape of ``W``."""
        return self.U.shape[0], (self.U.shape[1] if self.V is None else self.V.shape[1])

    def left(self, X: np.ndarray) -> np.ndarray:
        """``W @ X`` for a stack of matrices ``X`` of shape (..., b, n).

        Parameters
        ----------
        X : ndarray of shape (..., b, n)

        Returns
        -------
        ndarray of shape (..., a, n)
        """
        out = self.U @ X if self.V is None else self.U @ (self.V @ X)
        return self.scale * out

    def right_t(self, X: np.ndarray) -> np.ndarray:
        """``X @ W^T`` for a stack of matrices ``X`` of shape (..., n, b).

        Parameters
        ----------
        X : ndarray of shape (..., n, b)

        Returns
        -------
        ndarray of shape (..., n, a)
        """
        out = X @ self.U.T if self.V is None else (X @ self.V.T) @ self.U.T
        return self.scale * out

    @cached_property
    def P(self) -> np.ndarray:
        """``U^T U`` (k x k, float64, without the scale): kept, since a module's own products need it twice."""
        return _mm(self.U.T, self.U)

    @cached_property
    def Q(self) -> np.ndarray | None:
        """``V V^T`` (k x k, float64, without the scale), None for a matrix stored whole (the identity)."""
        return None if self.V is None else _mm(self.V, self.V.T)

    def gram(self) -> np.ndarray:
        """``W W^T`` (a x a), dense, float64.

        Returns
        -------
        ndarray of shape (a, a)
        """
        if self.Q is None:
            return self.scale**2 * _mm(self.U, self.U.T)
        U = self.U.astype(np.float64)
        return self.scale**2 * ((U @ self.Q) @ U.T)


def _factor_delta(x: Factor, y: Factor) -> float:
    """``<W_x, W_y>_F`` of two factored matrices of one shape."""
    s = x.scale * y.scale
    if x.V is None and y.V is None:
        return s * _dot(x.U, y.U)
    if x.V is None:  # <U_x, U_y V_y> = sum((U_x V_y^T) * U_y)
        return s * _dot(x.U @ y.V.T, y.U)
    if y.V is None:
        return s * _dot(y.U @ x.V.T, x.U)
    if x is y:
        return s * _dot(x.P, x.Q)
    return s * _dot(_mm(x.U.T, y.U), _mm(x.V, y.V.T))


def _factor_gram(x: Factor, y: Factor) -> float:
    """``<W_x W_x^T, W_y W_y^T>_F = tr(Q_x P Q_y P^T)``, ``P = U_x^T U_y`` (``Q`` the identity for a whole matrix)."""
    s = (x.scale * y.scale) ** 2
    if x.V is None and y.V is None:
        a, b = x.shape
        if a <= b:  # the smaller side's Gram matrices
            return _dot(x.gram(), y.gram())
        P = x.P if x is y else _mm(x.U.T, y.U)
        return s * _dot(P, P)
    P = x.P if x is y else _mm(x.U.T, y.U)
    left = P if x.Q is None else x.Q @ P
    right = P if y.Q is None else P @ y.Q
    return s * _dot(left, right)


class FactoredModule:
    """One module's delta-W as factors for exact products, with its exact squared norms.

    A LoKr module (not a row slice of one) keeps its Kronecker structure, with the scale folded into
    ``W1``; every other module (LoRA, LoHa, a row slice) is the low-rank form ``scale * U V`` of
    :meth:`lorastyle.io.formats.LoraModule.low_rank`, made when first needed.

    Parameters
    ----------
    module : LoraModule

    Attributes
    ----------
    shape : tuple of int
        ``(out, in)`` of delta-W.
    kron : tuple of Factor or None
        ``(W1, W2)`` with delta-W = ``kron(W1, W2)`` (scale in ``W1``), or None.
    """

    def __init__(self, module: LoraModule):
        self.module = module
        self.shape = tuple(module.shape)
        k = module.kronecker()
        self.kron = None
        if k is not None:
            U1, V1, U2, V2 = k
            self.kron = (Factor(U1, V1, float(module.scale)), Factor(U2, V2))

    @cached_property
    def low(self) -> Factor:
        """The low-rank form ``scale * U V``, for products with modules of another structure."""
        U, V = self.module.low_rank()
        return Factor(U, V, float(self.module.scale))

    @property
    def width(self) -> int:
        """The width of :attr:`low` without making it (``k1 k2`` for a LoKr)."""
        if self.kron is not None:
            return self.kron[0].U.shape[1] * self.kron[1].U.shape[1]
        return self.low.U.shape[1]

    @cached_property
    def delta2(self) -> float:
        """``||dW||_F^2`` (the trace of the Gram matrix)."""
        return delta_inner(self, self)

    @cached_property
    def gram2(self) -> float:
        """``||dW dW^T||_F^2``."""
        return gram_inner(self, self)


def factored(module: LoraModule) -> FactoredModule:
    """A module prepared for :func:`delta_inner` and :func:`gram_inner`.

    Parameters
    ----------
    module : LoraModule

    Returns
    -------
    FactoredModule
    """
    return FactoredModule(module)


def _same_split(x: FactoredModule, y: FactoredModule) -> bool:
    return x.kron is not None and y.kron is not None and all(a.shape == b.shape for a, b in zip(x.kron, y.kron))


def _kron_and_low(x: FactoredModule, y: FactoredModule) -> tuple[FactoredModule, Factor] | None:
    """``(the Kronecker module, the other's low-rank form)`` when one side is kept as a Kronecker product."""
    if x.kron is not None and (y.kron is None or y.width <= x.width):
        return x, y.low
    if y.kron is not None:
        return y, x.low
    return None


def _check_shapes(x: FactoredModule, y: FactoredModule) -> None:
    if x.shape != y.shape:
        raise ValueError(f"modules of different shapes {x.shape} and {y.shape} have no inner product")


def delta_inner(x: FactoredModule, y: FactoredModule) -> float:
    """``<dW_x, dW_y>_F`` from the two modules' factors.

    Parameters
    ----------
    x, y : FactoredModule
        Of one shape.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For modules of different shapes.
    """
    _check_shapes(x, y)
    if _same_split(x, y):
        return _factor_delta(x.kron[0], y.kron[0]) * _factor_delta(x.kron[1], y.kron[1])
    pair = _kron_and_low(x, y)
    if pair is None:
        return _factor_delta(x.low, y.low)
    kron, low = pair
    W1, W2 = kron.kron
    (a1, b1), (a2, b2) = W1.shape, W2.shape
    X = low.U.T.reshape(-1, a1, a2)  # columns u_j of U as a1 x a2 matrices
    Z = low.V.reshape(-1, b1, b2)  # rows v_j of V as b1 x b2 matrices
    T = W1.left(W2.right_t(Z))  # kron(W1, W2) v_j = vec(W1 Z_j W2^T)
    return low.scale * _dot(X, T)


def gram_inner(x: FactoredModule, y: FactoredModule) -> float:
    """``<dW_x dW_x^T, dW_y dW_y^T>_F = ||dW_x^T dW_y||_F^2`` from the two modules' factors.

    Parameters
    ----------
    x, y : FactoredModule
        Of one shape.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For modules of different shapes.
    """
    _check_shapes(x, y)
    if _same_split(x, y):
        return _factor_gram(x.kron[0], y.kron[0]) * _factor_gram(x.kron[1], y.kron[1])
    pair = _kron_and_low(x, y)
    if pair is None:
        return _factor_gram(x.low, y.low)
    kron, low = pair
    W1, W2 = kron.kron
    a1, a2 = W1.shape[0], W2.shape[0]
    X = low.U.T.reshape(-1, a1, a2)
    M1, M2 = (W.gram().astype(low.U.dtype) for W in (W1, W2))
    KU = (M1 @ X @ M2.T).reshape(len(X), -1)  # kron(M1, M2) u_j = vec(M1 X_j M2^T)
    return low.scale**2 * _dot(low.Q, _mm(low.U.T, KU.T))  # tr(Q U^T kron(M1, M2) U)


def norm2(m: FactoredModule, descriptor: str, *, centre: bool = True) -> float:
    """The squared Frobenius norm of a module's descriptor: delta-W, or its (centred) Gram matrix.

    Parameters
    ----------
    m : FactoredModule
    descriptor : {"gram", "delta"}
    centre : bool, default=True
        ``gram`` only: of ``G - tr(G)/d I`` (``d`` = out), ``||G||^2 - tr(G)^2/d``.

    Returns
    -------
    float
        0 for a zero update, and for a centred Gram matrix that is (to rounding) a multiple of the
        identity.
    """
    if descriptor == "delta":
        return max(m.delta2, 0.0)
    value = m.gram2 - (m.delta2**2 / m.shape[0] if centre else 0.0)
    return value if value > ZERO_FRACTION * m.gram2 else 0.0


def inner(x: FactoredModule, y: FactoredModule, descriptor: str, *, centre: bool = True) -> float:
    """The inner product of two modules' descriptors (:func:`delta_inner`, or the (centred) :func:`gram_inner`).

    Parameters
    ----------
    x, y : FactoredModule
        Of one shape.
    descriptor : {"gram", "delta"}
    centre : bool, default=True
        ``gram`` only: ``<G_x - t_x/d I, G_y - t_y/d I> = <G_x, G_y> - t_x t_y / d`` with ``t = tr G``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For modules of different shapes.
    """
    if descriptor == "delta":
        return delta_inner(x, y)
    g = gram_inner(x, y)
    return g - x.delta2 * y.delta2 / x.shape[0] if centre else g


def cosine(x: FactoredModule, y: FactoredModule, descriptor: str, *, centre: bool = True) -> float:
    """The cosine of two modules' descriptors; 0 where either is zero (:func:`norm2`).

    Parameters
    ----------
    x, y : FactoredModule
        Of one shape.
    descriptor : {"gram", "delta"}
    centre : bool, default=True
        As in :func:`inner`.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For modules of different shapes.
    """
    nx, ny = norm2(x, descriptor, centre=centre), norm2(y, descriptor, centre=centre)
    if not (nx > 0 and ny > 0):
        return 0.0
    return float(np.clip(inner(x, y, descriptor, centre=centre) / np.sqrt(nx * ny), -1.0, 1.0))
