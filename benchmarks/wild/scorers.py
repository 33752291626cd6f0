"""Experimental LoRA similarity scores of the wild benchmark, exact and in low rank (numpy only).

Each module of a LoRA is ``dW = s B A`` with ``B`` of shape (out, r), ``A`` of
shape (r, in) and ``s`` the scale (``alpha / r``); a LoRA is anything with a
``modules`` mapping of name to an object with ``up`` (B), ``down`` (A) and
``scale`` (:class:`lorastyle.io.formats.LoraModule` is one). No function here
forms an (out x in) matrix: every product is taken between stacked factors, so
a module costs O((out + in) (sum of ranks)^2).

``normalised_kernel(loras, "gram")``
    Per module, the Gram matrices ``G = dW dW^T`` scaled to unit Frobenius norm,
    then summed: ``K_ij = sum_m <G_i, G_j> / (||G_i|| ||G_j||)``; ``"delta"``
    does the same with ``dW`` itself. Every module weighs the same, whatever
    its size or the LoRA's alpha and learning rate. ``centre=True``: of the
    centred ``G - tr(G)/d I`` (the index's default score, no rank floor).
``subspace_kernel(loras)``
    Per module, the projector ``P`` onto the top-k left singular vectors of
    ``dW`` (k = the module's rank unless given), compared by
    ``trace(P_i P_j) / sqrt(k_i k_j)`` and averaged over modules.

Both are positive semi-definite kernels with diagonal 1 when every LoRA has
every module; :func:`cosine` normalises any kernel that way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "cosine",
    "module_names",
    "module_kernel",
    "centred_gram_kernel",
    "normalised_kernel",
    "left_singular_basis",
    "subspace_kernel",
]


def cosine(K: np.ndarray) -> np.ndarray:
    """``K_ij / sqrt(K_ii K_jj)``; rows of a zero diagonal entry are 0.

    Parameters
    ----------
    K : ndarray of shape (n, n)

    Returns
    -------
    ndarray of shape (n, n)
    """
    d = np.sqrt(np.clip(np.diag(K), 0.0, None))
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    return K * inv[:, None] * inv[None, :]


def module_names(loras: Sequence) -> list[str]:
    """Sorted names of the modules any of ``loras`` adapts."""
    return sorted({name for lora in loras for name in lora.modules})


def _indicator(widths: np.ndarray) -> np.ndarray:
    """(n, sum widths) one-hot block membership: E @ M @ E.T sums M's blocks."""
    return np.repeat(np.eye(len(widths)), widths, axis=1)


def _stacked(loras: Sequence, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scaled B's side by side, A's stacked, and each LoRA's width (0 where it lacks the module)."""
    ups, downs, widths = [], [], []
    for lora in loras:
        m = lora.modules.get(name)
        if m is None:
            widths.append(0)
            continue
        ups.append(m.scale * np.asarray(m.up, dtype=np.float64))
        downs.append(np.asarray(m.down, dtype=np.float64))
        widths.append(m.up.shape[1])
    return np.hstack(ups), np.vstack(downs), np.asarray(widths)


def module_kernel(loras: Sequence, name: str, kind: str) -> np.ndarray:
    """One module's kernel between all ``loras``, in low rank.

    ``delta``: ``<dW_i, dW_j>_F = sum((B_i^T B_j) * (A_i A_j^T))``; ``gram``:
    ``<G_i, G_j>_F = ||dW_i^T dW_j||_F^2 = sum((R_i M) * (M R_j))`` with
    ``M = B_i^T B_j`` and ``R = A A^T`` (scales inside the B's).

    Parameters
    ----------
    loras : sequence of LoRA
    name : str
        A module name; LoRAs without it get a zero row and column.
    kind : {"delta", "gram"}

    Returns
    -------
    ndarray of shape (n, n)
    """
    if kind not in ("delta", "gram"):
        raise ValueError(f"kind must be 'delta' or 'gram', got {kind!r}")
    if not any(name in lora.modules for lora in loras):
        return np.zeros((len(loras), len(loras)))
    U, V, widths = _stacked(loras, name)
    E = _indicator(widths)
    P = U.T @ U
    if kind == "delta":
        return E @ (P * (V @ V.T)) @ E.T
    R = (V @ V.T) * (E.T @ E)  # block-diagonal A_i A_i^T
    return E @ ((R @ P) * (P @ R)) @ E.T


def centred_gram_kernel(loras: Sequence, name: str) -> np.ndarray:
    """One module's kernel of centred Gram matrices ``G - tr(G)/d I``: ``<G_i, G_j> - t_i t_j / d`` (``t = tr G``).

    Parameters
    ----------
    loras : sequence of LoRA
    name : str

    Returns
    -------
    ndarray of shape (n, n)
    """
    G = module_kernel(loras, name, "gram")
    t = np.diag(module_kernel(loras, name, "delta"))  # tr(dW dW^T) = ||dW||^2
    d = next(lora.modules[name].up.shape[0] for lora in loras if name in lora.modules)
    return G - np.outer(t, t) / d


def normalised_kernel(loras: Sequence, kind: str, centre: bool = False) -> np.ndarray:
    """Sum over modules of each module's cosine kernel (``delta`` or ``gram``).

    Parameters
    ----------
    loras : sequence of LoRA
    kind : {"delta", "gram"}
    centre : bool, default=False
        ``gram`` only: of the centred Gram matrices (:func:`centred_gram_kernel`), the index's default.

    Returns
    -------
    ndarray of shape (n, n)
        Diagonal: the number of modules each LoRA has. Pass through :func:`cosine`
        for the mean of per-module cosines.
    """
    if centre and kind == "gram":
        return sum(cosine(centred_gram_kernel(loras, name)) for name in module_names(loras))
    return sum(cosine(module_kernel(loras, name, kind)) for name in module_names(loras))


def left_singular_basis(up: np.ndarray, down: np.ndarray, k: int | None = None) -> np.ndarray:
    """Orthonormal top-k left singular vectors of ``up @ down``, without forming it.

    With ``up = Q_u R_u`` and ``down^T = Q_d R_d`` (thin QR), ``dW = Q_u (R_u R_d^T) Q_d^T``:
    the SVD of the small core ``R_u R_d^T`` gives dW's. A positive scale of dW
    changes no singular vector, so it is left out.

    Parameters
    ----------
    up : ndarray of shape (out, r)
    down : ndarray of shape (r, in)
    k : int, optional
        Defaults to r; at most min(out, in, r).

    Returns
    -------
    ndarray of shape (out, k)
    """
    up = np.asarray(up, dtype=np.float64)
    down = np.asarray(down, dtype=np.float64)
    k = up.shape[1] if k is None else k
    if not 1 <= k <= min(up.shape[0], down.shape[1], up.shape[1]):
        raise ValueError(f"k={k} must be between 1 and min(out, in, rank) for up {up.shape} and down {down.shape}")
    q_up, r_up = np.linalg.qr(up)
    _, r_down = np.linalg.qr(down.T)
    u, _, _ = np.linalg.svd(r_up @ r_down.T)
    return q_up @ u[:, :k]


def subspace_kernel(loras: Sequence, k: int | None = None) -> np.ndarray:
    """Mean over modules of ``trace(P_i P_j) / sqrt(k_i k_j)`` (top-k left singular subspaces of dW).

    Parameters
    ----------
    loras : sequence of LoRA
    k : int, optional
        Singular vectors per module: ``min(k, rank)``; default each module's rank.

    Returns
    -------
    ndarray of shape (n, n)
        Diagonal 1 for a LoRA with every module; a module a LoRA lacks counts 0.
    """
    names = module_names(loras)
    n = len(loras)
    K = np.zeros((n, n))
    for name in names:
        bases, widths = [], []
        for lora in loras:
            m = lora.modules.get(name)
            if m is None:
                widths.append(0)
                continue
            kk = m.up.shape[1] if k is None else min(k, m.up.shape[1])
            bases.append(left_singular_basis(m.up, m.down, kk))
            widths.append(kk)
        widths = np.asarray(widths)
        E = _indicator(widths)
        W = np.hstack(bases)
        overlap = E @ (W.T @ W) ** 2 @ E.T  # ||U_i^T U_j||_F^2 = trace(P_i P_j)
        root = np.sqrt(widths.astype(np.float64))
        K += np.divide(overlap, np.outer(root, root), out=np.zeros_like(overlap), where=np.outer(root, root) > 0)
    return K / len(names)
