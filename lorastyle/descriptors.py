"""Style descriptors computed from LoRA weights.

Three descriptors, from the paper's to two of this project's:

``concat``
    The paper's: the flattened A and B factors of every module, concatenated
    into one vector (:func:`concat_vectors`). It depends on A's random
    initialisation and on the gauge ``A -> G A, B -> B G^-1``.
``delta``
    delta-W = scale * B A of every module, compared by the Frobenius inner
    product ``<dW_i, dW_j> = sum((B_i^T B_j) * (A_i A_j^T))``, computed in low
    rank: never an out x in matrix (:func:`delta_inner_products`). Invariant to
    the gauge.
``gram``
    The output-side Gram matrix dW dW^T of every module, compared by
    ``<dW_i dW_i^T, dW_j dW_j^T> = ||dW_i^T dW_j||_F^2``, also in low rank
    (:func:`gram_inner_products`). Invariant to the gauge and to any rotation
    of the input side, so largely to A's random initialisation.

``delta`` and ``gram`` are kernels: :class:`lorastyle.embedding.StyleEmbedding`
takes them with ``solver="precomputed"``. A module that one LoRA adapts and
another does not counts as a zero update in those kernels; ``concat`` needs the
same modules and ranks in every LoRA, and says which file differs.

Sub-networks are chosen with :class:`ModuleSelection` (self-attention,
cross-attention, feed-forward; down/mid/up blocks; U-Net or text encoder).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .formats import LoRA, LoraModule
from .naming import module_group

__all__ = [
    "DESCRIPTORS",
    "LAYER_TYPES",
    "BLOCKS",
    "ModuleSelection",
    "IncomparableLorasError",
    "check_comparable",
    "concat_vectors",
    "delta_inner_products",
    "gram_inner_products",
    "descriptor_kernel",
]

DESCRIPTORS = ("concat", "delta", "gram")
LAYER_TYPES = ("self_attention", "cross_attention", "feed_forward", "other")
BLOCKS = ("down", "mid", "up")


class IncomparableLorasError(ValueError):
    """LoRAs whose descriptors cannot be compared; the message names the files and why."""


@dataclass(frozen=True)
class ModuleSelection:
    """Which modules of a LoRA a descriptor uses. ``None`` means all.

    Parameters
    ----------
    parts : collection of str, optional
        Model parts: ``unet``, ``text_encoder``, ``text_encoder_2``, ``transformer``.
    layers : collection of str, optional
        Layer types from :data:`LAYER_TYPES`.
    blocks : collection of str, optional
        U-Net stages from :data:`BLOCKS`; modules outside the U-Net stages are
        dropped when this is given.

    Examples
    --------
    >>> ModuleSelection(layers=["feed_forward"]).accepts("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    True
    """

    parts: Collection[str] | None = None
    layers: Collection[str] | None = None
    blocks: Collection[str] | None = None

    def __post_init__(self):
        for value, allowed, what in ((self.layers, LAYER_TYPES, "layers"), (self.blocks, BLOCKS, "blocks")):
            if value is not None:
                bad = sorted(set(value) - set(allowed))
                if bad:
                    raise ValueError(f"unknown {what} {bad}; choose from {list(allowed)}")
        for name in ("parts", "layers", "blocks"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    value = [value]
                object.__setattr__(self, name, tuple(sorted(value)))

    def accepts(self, name: str) -> bool:
        """True if the module of canonical ``name`` is selected."""
        part = name.split(".", 1)[0]
        layer, block = module_group(name)
        return (
            (self.parts is None or part in self.parts)
            and (self.layers is None or layer in self.layers)
            and (self.blocks is None or block in self.blocks)
        )

    def modules(self, lora: LoRA) -> dict[str, LoraModule]:
        """The selected modules of ``lora``, in canonical order."""
        return {name: m for name, m in lora.modules.items() if self.accepts(name)}


ALL_MODULES = ModuleSelection()


def check_comparable(loras: Sequence[LoRA], *, descriptor: str = "delta",
                     select: ModuleSelection | None = None) -> None:
    """Raise :class:`IncomparableLorasError` unless the LoRAs can share a descriptor space.

    All must have the same base family and, per module name, the same delta-W
    shape; ``concat`` further needs identical modules, factor names and shapes.

    Parameters
    ----------
    loras : sequence of LoRA
    descriptor : {"concat", "delta", "gram"}, default="delta"
    select : ModuleSelection, optional

    Raises
    ------
    IncomparableLorasError
        Naming the first file that differs from the first file and how.
    ValueError
        For an unknown descriptor or an empty sequence.
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {descriptor!r}; choose from {list(DESCRIPTORS)}")
    if len(loras) == 0:
        raise ValueError("no LoRAs given")
    select = select or ALL_MODULES
    ref = loras[0]
    ref_mods = select.modules(ref)
    shapes = {name: m.shape for name, m in ref_mods.items()}
    for lora in loras[1:]:
        if lora.base != ref.base:
            raise IncomparableLorasError(
                f"{lora.path}: base family {lora.base} differs from {ref.base} of {ref.path}")
        mods = select.modules(lora)
        if descriptor == "concat":
            a, b = _factor_signature(ref_mods), _factor_signature(mods)
            if a != b:
                raise IncomparableLorasError(
                    f"{lora.path}: concat needs the same modules, factors and ranks as {ref.path} "
                    f"({_first_difference(a, b)})")
        for name, m in mods.items():
            other = shapes.setdefault(name, m.shape)
            if other != m.shape:
                raise IncomparableLorasError(
                    f"{lora.path}: module {name} has shape {m.shape}, not {other} as in the other files")
    if not any(select.modules(lora) for lora in loras):
        raise IncomparableLorasError(f"{ref.path}: no module matches the selection {select}")


def _factor_signature(mods: dict[str, LoraModule]) -> list[tuple]:
    return [(name, role, f.shape) for name, m in mods.items() for role, f in sorted(m.factors.items())]


def _first_difference(a: list[tuple], b: list[tuple]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"{y[0]} {y[1]} {y[2]} where the first has {x[0]} {x[1]} {x[2]}"
    return f"{len(b)} factors against {len(a)}"


def concat_vectors(loras: Sequence[LoRA], *, select: ModuleSelection | None = None) -> np.ndarray:
    """The paper's descriptor: every selected module's stored factors, flattened and concatenated.

    Parameters
    ----------
    loras : sequence of LoRA
        LoRAs with identical modules and ranks (checked).
    select : ModuleSelection, optional
        Sub-network to use (default: all modules).

    Returns
    -------
    ndarray of shape (n_loras, n_features), float32
        Module order is canonical (sorted names); within a module, factors in
        sorted role order (``lora_down`` = A before ``lora_up`` = B).
    """
    check_comparable(loras, descriptor="concat", select=select)
    select = select or ALL_MODULES
    rows = []
    for lora in loras:
        mods = select.modules(lora)
        rows.append(np.concatenate([f.ravel() for m in mods.values() for _, f in sorted(m.factors.items())]))
    return np.stack(rows).astype(np.float32, copy=False)


def _module_names(loras: Sequence[LoRA], select: ModuleSelection) -> list[str]:
    names: set[str] = set()
    for lora in loras:
        names.update(select.modules(lora))
    return sorted(names)


def _stack(loras: Sequence[LoRA], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal stack of scaled up-factors, vertical stack of down-factors, and block starts."""
    ups, downs, widths = [], [], []
    for lora in loras:
        m = lora.modules.get(name)
        if m is None:
            widths.append(0)
            continue
        ups.append(m.scale * m.up.astype(np.float64))
        downs.append(m.down.astype(np.float64))
        widths.append(m.up.shape[1])
    return np.hstack(ups), np.vstack(downs), np.asarray(widths)


def _block_sum(M: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Sum the (wx[i] x wy[j]) blocks of M into a (len(wx), len(wy)) matrix; empty blocks give 0."""
    ex = np.repeat(np.eye(len(wx)), wx, axis=1)  # one-hot block membership
    ey = np.repeat(np.eye(len(wy)), wy, axis=1)
    return ex @ M @ ey.T


def _kernel(kind: str, X: Sequence[LoRA], Y: Sequence[LoRA] | None, select: ModuleSelection | None,
            batch_size: int) -> np.ndarray:
    select = select or ALL_MODULES
    symmetric = Y is None
    Y = X if Y is None else Y
    check_comparable(list(X) + ([] if symmetric else list(Y)), descriptor=kind, select=select)
    names = _module_names(list(X) + ([] if symmetric else list(Y)), select)
    K = np.zeros((len(X), len(Y)))
    for i0 in range(0, len(X), batch_size):
        xs = X[i0:i0 + batch_size]
        j_start = i0 if symmetric else 0
        for j0 in range(j_start, len(Y), batch_size):
            ys = Y[j0:j0 + batch_size]
            K[i0:i0 + len(xs), j0:j0 + len(ys)] = _kernel_tile(kind, xs, ys, names)
            if symmetric and j0 != i0:
                K[j0:j0 + len(ys), i0:i0 + len(xs)] = K[i0:i0 + len(xs), j0:j0 + len(ys)].T
    return K


def _kernel_tile(kind: str, xs: Sequence[LoRA], ys: Sequence[LoRA], names: list[str]) -> np.ndarray:
    tile = np.zeros((len(xs), len(ys)))
    for name in names:
        if not any(name in lora.modules for lora in xs) or not any(name in lora.modules for lora in ys):
            continue  # a zero update on one side contributes nothing
        ux, vx, wx = _stack(xs, name)
        uy, vy, wy = _stack(ys, name)
        P = ux.T @ uy  # blocks B_i^T B_j (scales included)
        if kind == "delta":
            tile += _block_sum(P * (vx @ vy.T), wx, wy)
        else:  # gram: trace(M^T R_i M R_j) with M = B_i^T B_j, R = A A^T
            rx = _block_diag_products(vx, wx)
            ry = _block_diag_products(vy, wy)
            tile += _block_sum((rx @ P) * (P @ ry), wx, wy)
    return tile


def _block_diag_products(v: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Block-diagonal matrix of A_i A_i^T for the stacked down-factors v."""
    out = np.zeros((v.shape[0], v.shape[0]))
    start = 0
    for w in widths:
        block = v[start:start + w]
        out[start:start + w, start:start + w] = block @ block.T
        start += w
    return out


def delta_inner_products(X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *,
                         select: ModuleSelection | None = None, batch_size: int = 64) -> np.ndarray:
    """Frobenius inner products of delta-W, summed over modules, in low rank.

    ``K[i, j] = sum_modules <s_i B_i A_i, s_j B_j A_j>_F``
    ``= sum_modules s_i s_j sum((B_i^T B_j) * (A_i A_j^T))``: the cost per module is
    O((out + in) r^2), never O(out * in).

    Parameters
    ----------
    X : sequence of LoRA
    Y : sequence of LoRA, optional
        Defaults to ``X`` (a symmetric kernel).
    select : ModuleSelection, optional
    batch_size : int, default=64
        LoRAs per tile; memory grows with ``(batch_size * rank)^2``.

    Returns
    -------
    ndarray of shape (len(X), len(Y))
    """
    return _kernel("delta", X, Y, select, batch_size)


def gram_inner_products(X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *,
                        select: ModuleSelection | None = None, batch_size: int = 64) -> np.ndarray:
    """Inner products of output-side Gram matrices ``dW dW^T``, summed over modules, in low rank.

    ``K[i, j] = sum_modules ||dW_i^T dW_j||_F^2 = trace(M^T R_i M R_j)`` with
    ``M = s_i s_j B_i^T B_j`` and ``R = A A^T``: all r x r matrices.

    Parameters
    ----------
    X : sequence of LoRA
    Y : sequence of LoRA, optional
        Defaults to ``X``.
    select : ModuleSelection, optional
    batch_size : int, default=64

    Returns
    -------
    ndarray of shape (len(X), len(Y))
    """
    return _kernel("gram", X, Y, select, batch_size)


def descriptor_kernel(descriptor: str, X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *,
                      select: ModuleSelection | None = None) -> np.ndarray:
    """Linear-kernel matrix of any descriptor: ``concat`` as X_c Y_c^T, ``delta``/``gram`` in low rank.

    Parameters
    ----------
    descriptor : {"concat", "delta", "gram"}
    X, Y : sequence of LoRA
    select : ModuleSelection, optional

    Returns
    -------
    ndarray of shape (len(X), len(Y))
    """
    if descriptor == "concat":
        vx = concat_vectors(X, select=select).astype(np.float64)
        vy = vx if Y is None else concat_vectors(Y, select=select).astype(np.float64)
        if Y is not None:
            check_comparable([X[0], *Y], descriptor="concat", select=select)
        return vx @ vy.T
    if descriptor == "delta":
        return delta_inner_products(X, Y, select=select)
    if descriptor == "gram":
        return gram_inner_products(X, Y, select=select)
    raise ValueError(f"unknown descriptor {descriptor!r}; choose from {list(DESCRIPTORS)}")
