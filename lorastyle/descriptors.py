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
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ._validation import check_option, check_options, check_positive_int
from .comparability import check_comparable
from .errors import IncomparableLorasError
from .io.formats import LoRA, LoraModule
from .io.naming import module_group
from .module_products import delta_inner, factored, gram_inner, inner, norm2

__all__ = [
    "DESCRIPTORS",
    "DEFAULT_DESCRIPTOR",
    "LAYER_TYPES",
    "BLOCKS",
    "PARTS",
    "ModuleSelection",
    "concat_vectors",
    "delta_inner_products",
    "gram_inner_products",
    "descriptor_kernel",
    "module_cosines",
    "module_cosine_table",
    "ModuleCosines",
]

DESCRIPTORS = ("concat", "delta", "gram")
# For files made by strangers: invariant to the factor gauge and, largely, to the initialisation seed.
DEFAULT_DESCRIPTOR = "gram"
PARTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer")
LAYER_TYPES = ("self_attention", "cross_attention", "feed_forward", "other")
BLOCKS = ("down", "mid", "up")


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
    names : collection of str, optional
        Canonical module names, for selections no rule describes (a random control of
        a given size, say).

    Examples
    --------
    >>> ModuleSelection(layers=["feed_forward"]).accepts("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    True
    """

    parts: Collection[str] | None = None
    layers: Collection[str] | None = None
    blocks: Collection[str] | None = None
    names: Collection[str] | None = None

    def __post_init__(self):
        for name, allowed in (("parts", PARTS), ("layers", LAYER_TYPES), ("blocks", BLOCKS)):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_options(value, name, allowed))
        if self.names is not None:
            if isinstance(self.names, str) or not all(isinstance(n, str) for n in self.names):
                raise ValueError("names must be a collection of module names (str)")
            object.__setattr__(self, "names", frozenset(self.names))

    def accepts(self, name: str) -> bool:
        """True if the module of canonical ``name`` is selected."""
        part = name.split(".", 1)[0]
        layer, block = module_group(name)
        return (
            (self.parts is None or part in self.parts)
            and (self.layers is None or layer in self.layers)
            and (self.blocks is None or block in self.blocks)
            and (self.names is None or name in self.names)
        )

    def modules(self, lora: LoRA) -> dict[str, LoraModule]:
        """The selected modules of ``lora``, in canonical order."""
        return {name: m for name, m in lora.modules.items() if self.accepts(name)}


ALL_MODULES = ModuleSelection()


def _selected(loras: Sequence[LoRA], select: ModuleSelection | None) -> list[LoRA]:
    """The LoRAs restricted to the selected modules (the same objects when nothing is deselected)."""
    if select is None or select == ALL_MODULES:
        return list(loras)
    out = []
    for lora in loras:
        mods = select.modules(lora)
        out.append(lora if len(mods) == len(lora.modules) else replace(lora, modules=mods))
    return out


def _checked(loras: Sequence[LoRA], descriptor: str, select: ModuleSelection | None) -> list[LoRA]:
    """Select modules, then apply the comparability rule (:func:`lorastyle.comparability.check_comparable`)."""
    check_option(descriptor, "descriptor", DESCRIPTORS)
    if len(loras) == 0:
        raise ValueError("no LoRAs given")
    chosen = _selected(loras, select)
    check_comparable(chosen, descriptor=descriptor)
    if not any(lora.modules for lora in chosen):
        raise IncomparableLorasError(chosen[0].path, f"no module matches the selection {select}")
    return chosen


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
    rows = [
        np.concatenate([f.ravel() for m in lora.modules.values() for _, f in sorted(m.factors.items())])
        for lora in _checked(loras, "concat", select)
    ]
    return np.stack(rows).astype(np.float32, copy=False)


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


def _kernel(
    kind: str, X: Sequence[LoRA], Y: Sequence[LoRA] | None, select: ModuleSelection | None, batch_size: int
) -> np.ndarray:
    batch_size = check_positive_int(batch_size, "batch_size")
    symmetric = Y is None
    both = _checked(list(X) + ([] if symmetric else list(Y)), kind, select)
    X = both[: len(X)]
    Y = X if symmetric else both[len(X) :]
    names = sorted({name for lora in both for name in lora.modules})
    K = np.zeros((len(X), len(Y)))
    for i0 in range(0, len(X), batch_size):
        xs = X[i0 : i0 + batch_size]
        j_start = i0 if symmetric else 0
        for j0 in range(j_start, len(Y), batch_size):
            ys = Y[j0 : j0 + batch_size]
            K[i0 : i0 + len(xs), j0 : j0 + len(ys)] = _kernel_tile(kind, xs, ys, names)
            if symmetric and j0 != i0:
                K[j0 : j0 + len(ys), i0 : i0 + len(xs)] = K[i0 : i0 + len(xs), j0 : j0 + len(ys)].T
    return K


def _kernel_tile(kind: str, xs: Sequence[LoRA], ys: Sequence[LoRA], names: list[str]) -> np.ndarray:
    tile = np.zeros((len(xs), len(ys)))
    for name in names:
        if not any(name in lora.modules for lora in xs) or not any(name in lora.modules for lora in ys):
            continue  # a zero update on one side contributes nothing
        kx, ky = _kronecker_rows(xs, name), _kronecker_rows(ys, name)
        if kx or ky:  # LoKr modules through their Kronecker factors (lorastyle.module_products), never expanded
            _add_factored(tile, kind, xs, ys, name, kx, ky)
            continue
        tile += _stacked_tile(kind, xs, ys, name)
    return tile


def _stacked_tile(kind: str, xs: Sequence[LoRA], ys: Sequence[LoRA], name: str) -> np.ndarray:
    """One module's kernel between low-rank modules, from their factors stacked side by side."""
    ux, vx, wx = _stack(xs, name)
    uy, vy, wy = _stack(ys, name)
    P = ux.T @ uy  # blocks B_i^T B_j (scales included)
    if kind == "delta":
        return _block_sum(P * (vx @ vy.T), wx, wy)
    # gram: trace(M^T R_i M R_j) with M = B_i^T B_j, R = A A^T
    rx = _block_diag_products(vx, wx)
    ry = _block_diag_products(vy, wy)
    return _block_sum((rx @ P) * (P @ ry), wx, wy)


def _kronecker_rows(loras: Sequence[LoRA], name: str) -> set[int]:
    """Which of ``loras`` hold ``name`` as a Kronecker product (a LoKr module, not a row slice of one)."""
    return {i for i, lora in enumerate(loras) if name in lora.modules and lora.modules[name].kronecker() is not None}


def _add_factored(
    tile: np.ndarray, kind: str, xs: Sequence[LoRA], ys: Sequence[LoRA], name: str, kx: set, ky: set
) -> None:
    """Add one module's kernel to ``tile``: pairs with a Kronecker side one by one, the other pairs stacked."""
    px = [i for i, lora in enumerate(xs) if name in lora.modules and i not in kx]
    py = [j for j, lora in enumerate(ys) if name in lora.modules and j not in ky]
    if px and py:
        tile[np.ix_(px, py)] += _stacked_tile(kind, [xs[i] for i in px], [ys[j] for j in py], name)
    made = {}

    def prepared(module):
        if id(module) not in made:
            made[id(module)] = factored(module)
        return made[id(module)]

    product = delta_inner if kind == "delta" else gram_inner
    for i in sorted(kx | set(px)):
        for j in sorted(ky | set(py)):
            if i in kx or j in ky:
                tile[i, j] += product(prepared(xs[i].modules[name]), prepared(ys[j].modules[name]))


def _block_diag_products(v: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Block-diagonal matrix of A_i A_i^T for the stacked down-factors v."""
    out = np.zeros((v.shape[0], v.shape[0]))
    start = 0
    for w in widths:
        block = v[start : start + w]
        out[start : start + w, start : start + w] = block @ block.T
        start += w
    return out


def delta_inner_products(
    X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *, select: ModuleSelection | None = None, batch_size: int = 64
) -> np.ndarray:
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


def gram_inner_products(
    X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *, select: ModuleSelection | None = None, batch_size: int = 64
) -> np.ndarray:
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


class ModuleCosines(NamedTuple):
    """Per module, the cosines of X's and Y's descriptors and the squared norms they were divided by.

    Attributes
    ----------
    cosines : dict of str to ndarray of shape (len(X), len(Y))
    x_norms, y_norms : dict of str to ndarray
        Per module, each LoRA's squared descriptor norm (:func:`lorastyle.module_products.norm2`):
        0 where it lacks the module or its descriptor is zero.
    """

    cosines: dict
    x_norms: dict
    y_norms: dict


def module_cosine_table(
    descriptor: str,
    X: Sequence[LoRA],
    Y: Sequence[LoRA],
    *,
    select: ModuleSelection | None = None,
    centre: bool = True,
) -> ModuleCosines:
    """:func:`module_cosines` with the squared norms of every module's descriptor (what tells a zero module).

    Parameters
    ----------
    descriptor : {"delta", "gram"}
    X, Y : sequence of LoRA
    select : ModuleSelection, optional
    centre : bool, default=True
        As in :func:`module_cosines`.

    Returns
    -------
    ModuleCosines

    Raises
    ------
    ValueError
        For a descriptor other than ``delta`` or ``gram``.
    IncomparableLorasError
        As :func:`descriptor_kernel`.
    """
    if descriptor not in ("delta", "gram"):
        raise ValueError(f"module cosines are defined for delta and gram, not {descriptor!r}")
    both = _checked(list(X) + list(Y), descriptor, select)
    X, Y = both[: len(X)], both[len(X) :]
    out = ModuleCosines({}, {}, {})
    for name in sorted({name for lora in both for name in lora.modules}):
        # one module at a time: its factors (widened to float64) are dropped before the next
        made = {}
        fx = [_factored_once(made, x.modules.get(name)) for x in X]
        fy = [_factored_once(made, y.modules.get(name)) for y in Y]
        nx = np.array([0.0 if f is None else norm2(f, descriptor, centre=centre) for f in fx])
        ny = np.array([0.0 if f is None else norm2(f, descriptor, centre=centre) for f in fy])
        C = np.zeros((len(X), len(Y)))
        for i, j in zip(*np.nonzero(np.outer(nx > 0, ny > 0))):
            C[i, j] = np.clip(inner(fx[i], fy[j], descriptor, centre=centre) / np.sqrt(nx[i] * ny[j]), -1.0, 1.0)
        out.cosines[name], out.x_norms[name], out.y_norms[name] = C, nx, ny
    return out


def _factored_once(made: dict, module: LoraModule | None):
    """The module prepared for exact products, once per module object (a query may be in X and Y); None stays None."""
    if module is None:
        return None
    if id(module) not in made:
        made[id(module)] = factored(module)
    return made[id(module)]


def module_cosines(
    descriptor: str,
    X: Sequence[LoRA],
    Y: Sequence[LoRA],
    *,
    select: ModuleSelection | None = None,
    centre: bool = True,
) -> dict[str, np.ndarray]:
    """Per module, the exact cosine of the ``delta`` or ``gram`` descriptors of X's and Y's LoRAs.

    ``C[name][i, j] = <D_i, D_j> / (||D_i|| ||D_j||)`` with ``D`` the module's delta-W (``delta``)
    or its Gram matrix ``dW dW^T`` (``gram``), centred by default (``G - tr(G)/d I``: no floor that
    grows with the files' ranks, :mod:`lorastyle.module_products`); 0 where either LoRA lacks the
    module or its descriptor is zero. What the index's per-module normalised sketches estimate
    (:mod:`lorastyle.index.sketches`). Computed from the factors: LoKr modules through their Kronecker
    factors, LoHa modules through their Khatri-Rao products, never as an out x in matrix where the
    factors are cheaper.

    Parameters
    ----------
    descriptor : {"delta", "gram"}
    X, Y : sequence of LoRA
    select : ModuleSelection, optional
    centre : bool, default=True
        ``gram`` only: centre each module's Gram matrix (False: the uncentred cosine of earlier versions).

    Returns
    -------
    dict of str to ndarray of shape (len(X), len(Y))
        One entry per module name either side has.

    Raises
    ------
    ValueError
        For a descriptor other than ``delta`` or ``gram``.
    IncomparableLorasError
        As :func:`descriptor_kernel`.
    """
    return module_cosine_table(descriptor, X, Y, select=select, centre=centre).cosines


def descriptor_kernel(
    descriptor: str, X: Sequence[LoRA], Y: Sequence[LoRA] | None = None, *, select: ModuleSelection | None = None
) -> np.ndarray:
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
    check_option(descriptor, "descriptor", DESCRIPTORS)
    if descriptor == "concat":
        if Y is None:
            v = concat_vectors(X, select=select).astype(np.float64)
            return v @ v.T
        v = concat_vectors(list(X) + list(Y), select=select).astype(np.float64)
        return v[: len(X)] @ v[len(X) :].T
    if descriptor == "delta":
        return delta_inner_products(X, Y, select=select)
    if descriptor == "gram":
        return gram_inner_products(X, Y, select=select)
    raise ValueError(f"unknown descriptor {descriptor!r}; choose from {list(DESCRIPTORS)}")
