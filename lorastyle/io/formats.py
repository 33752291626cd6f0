"""Read LoRA files of every common layout into one normalised object.

Supported layouts (the ``format`` reported by :func:`load_lora`):

====================  ================================================================
``kohya``             ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
                      (kohya-ss sd-scripts, also ``lora_te_``, ``lora_te1_``, ``lora_te2_``)
``kohya-dora``        the same with ``.dora_scale`` (OneTrainer DoRA)
``diffusers-peft``    ``[unet.|text_encoder.|transformer.|base_model.model.]<path>.lora_A.weight``
``ai-toolkit``        ``diffusion_model.<path>.lora_A.weight`` (ostris ai-toolkit, Flux)
``diffusers-legacy``  ``<path>.processor.to_q_lora.down.weight`` (attention processors),
                      ``<path>.lora_linear_layer.down.weight``, ``<path>.lora.down.weight``
``cloneofsimo``       ``unet:<i>:down`` / ``text_encoder:<i>:up`` (lora_diffusion), with
                      textual-inversion tokens kept as extras
``xlabs``             ``double_blocks.<i>.processor.qkv_lora1.down.weight`` (XLabs Flux)
``lycoris-lokr``      ``.lokr_w1[_a|_b]``, ``.lokr_w2[_a|_b]``: delta-W = scale * kron(W1, W2)
``lycoris-loha``      ``.hada_w1_a`` ... : delta-W = scale * (W1a W1b) * (W2a W2b) (elementwise)
====================  ================================================================

Every module becomes a :class:`LoraModule` whose delta-W is ``scale * up @ down``
in low-rank form (LoKr and LoHa are rewritten exactly as such products), with
its raw stored factors kept for the paper's ``concat`` descriptor.

Conventions
-----------
* ``scale = alpha / rank``. A file with no alpha has scale 1 (the PEFT and
  diffusers default when ``lora_alpha == r``). **alpha = 0 means scale 1**, as
  in kohya-ss sd-scripts (``alpha = lora_dim if alpha is None or alpha == 0``),
  the trainer that writes alpha keys; the literal reading (scale 0) would erase
  the LoRA, which no trainer intends.
* Convolution factors are flattened to 2-D: down ``(r, in*kh*kw)``, up ``(out, r)``.
* DoRA magnitude vectors (``dora_scale``) need the base weights to apply; they
  are kept as extras and the descriptor uses the direction update ``B A``.
* Flux (base family ``flux``): transformer modules are named as in diffusers'
  ``FluxTransformer2DModel`` whatever the layout; BFL-named modules (kohya,
  XLabs, LyCORIS, ai-toolkit, control LoRAs) are renamed, their fused
  projections (``qkv``, ``linear1``) split by rows of ``up``, which is exact
  (:func:`lorastyle.io.flux.canonical_flux_modules`).
* An integer ``alpha`` (``I64`` ... ``U8``) is read as a float: diffusers'
  ``convert_state_dict_to_kohya`` (src/diffusers/utils/state_dict_utils.py) stores
  ``torch.tensor(len(weight))``, an int64 rank, and AUTOMATIC1111 and ComfyUI read it so.
  Factors must be floating point.
* Kohya names that repeat a prefix (a hand conversion that prefixed names which already had
  one) are read when the repeat can mean only one thing: ``lora_unet_unet_...``,
  ``lora_unet_model_diffusion_model_...``, ``lora_unet_lora_unet_...`` and the same for the
  text encoders; a prefix followed by another part's prefix (``lora_unet_lora_te_...``) is
  refused with what is doubled and how to rename it.
* Never unpickle: ``.ckpt``, ``.pt``, ``.bin`` ... are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

from ..errors import LoraFormatError
from .flux import canonical_flux_modules
from .naming import module_group, sgm_to_diffusers, unmangle
from .safetensors import FLOAT_DTYPES, read_safetensors, read_safetensors_header, write_safetensors

__all__ = [
    "LoraFormatError",
    "LoraModule",
    "LoRA",
    "load_lora",
    "save_lora",
    "build_module",
    "BASE_FAMILIES",
    "LAYOUTS",
    "LORA_SUFFIXES",
    "HeaderLayout",
    "ModuleShape",
    "header_dims",
    "module_shape",
    "read_layout",
    "ParsedHeader",
    "parse_header",
]

BASE_FAMILIES = ("sd1", "sd2", "sdxl", "flux", "tiny", "unknown")
# Files `index` looks at when it walks a folder (pickles are listed so they are reported, not silently ignored).
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Layout names load_lora reports (the ``format`` of a LoRA), as in the module docstring's table.
LAYOUTS = (
    "kohya",
    "kohya-dora",
    "diffusers-peft",
    "ai-toolkit",
    "diffusers-legacy",
    "cloneofsimo",
    "xlabs",
    "lycoris-lokr",
    "lycoris-loha",
)
# Metadata key our own training code writes to name its base model.
BASE_METADATA_KEY = "lorastyle.base"
# Integer dtypes an ``alpha`` may have (read as float; see the module docstring).
INTEGER_ALPHA_DTYPES = frozenset({"I64", "I32", "I16", "I8", "U8"})


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted layer: delta-W = ``scale * up @ down``, kept as the factors the file stores.

    ``up`` and ``down`` (a low-rank form of delta-W, in float32) are computed from the stored
    factors when asked for and not kept, so a LoKr or LoHa file takes memory in proportion to
    its size, not to its expanded form: LoKr through ``kron(A, B) kron(C, D) = kron(AC, BD)``,
    LoHa through row-wise Khatri-Rao products.

    Attributes
    ----------
    name : str
        Canonical name ``<part>.<diffusers path>``.
    part : str
        ``unet``, ``text_encoder``, ``text_encoder_2`` or ``transformer``.
    kind : {"lora", "lokr", "loha"}
    rank : int
        What the file was trained with: LoRA's and LoHa's ``lora_dim``, LoKr's inner dimension
        of the decomposed factor (:func:`module_shape`).
    alpha : float or None
        As stored; None when the file has none.
    scale : float
        The multiplier of ``up @ down`` (see the module's conventions).
    factors : dict of str to ndarray
        The stored tensors in their stored dtype (float16 stays float16; bfloat16 is widened to
        float32), keyed by role (``lora_down``, ``lora_up``, ``lokr_w1`` ...): what the paper's
        ``concat`` descriptor flattens.
    out_features, in_features : int
        Shape of delta-W (convolutions flattened).
    rows : tuple of (int, int), optional
        Row ranges of the stored factors' delta-W that this module is (a fused Flux projection
        split into its parts; :mod:`lorastyle.io.flux`); None for all rows.
    """

    name: str
    part: str
    kind: str
    rank: int
    alpha: float | None
    scale: float
    factors: dict[str, np.ndarray] = field(repr=False)
    out_features: int = 0
    in_features: int = 0
    rows: tuple | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of delta-W (convolutions flattened)."""
        return self.out_features, self.in_features

    @property
    def group(self) -> tuple[str, str | None]:
        """(layer type, U-Net stage) from :func:`lorastyle.io.naming.module_group`."""
        return module_group(self.name)

    def low_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """``(up, down)`` in float32 with delta-W = ``scale * up @ down``, computed now.

        Returns
        -------
        up : ndarray of shape (out_features, k)
        down : ndarray of shape (k, in_features)
        """
        up, down = _low_rank(self.kind, self.factors)
        if self.rows is not None:
            up = (
                np.concatenate([up[a:b] for a, b in self.rows], axis=0)
                if len(self.rows) > 1
                else up[self.rows[0][0] : self.rows[0][1]]
            )
        if up.shape[1] > min(up.shape[0], down.shape[1]):
            with np.errstate(over="ignore", invalid="ignore"):
                up, down = _dense_factors(up @ down)  # the factorisation is wider than the matrix
        return up, down

    def kronecker(self) -> tuple | None:
        """A LoKr's ``(U1, V1, U2, V2)`` with delta-W = ``scale * kron(U1 V1, U2 V2)``; None otherwise.

        ``V1`` (or ``V2``) is None for a factor stored whole (``W1 = U1``).

        What kernels use to keep the Kronecker structure (``kron(A, B) kron(C, D) = kron(AC, BD)``)
        rather than expand it. None for a LoKr that is a row slice of one (:attr:`rows`).

        Returns
        -------
        tuple of (ndarray, ndarray or None, ndarray, ndarray or None), or None
        """
        if self.kind != "lokr" or self.rows is not None:
            return None
        return _kronecker(self.factors)

    @property
    def up(self) -> np.ndarray:
        """The up factor of :meth:`low_rank` (B for a LoRA), float32."""
        return self.low_rank()[0]

    @property
    def down(self) -> np.ndarray:
        """The down factor of :meth:`low_rank` (A for a LoRA), float32."""
        return self.low_rank()[1]

    def delta(self) -> np.ndarray:
        """Materialise delta-W (out_features x in_features). Only for small layers and tests."""
        up, down = self.low_rank()
        return self.scale * (up @ down)


@dataclass(eq=False)
class LoRA:
    """A LoRA file, normalised.

    Attributes
    ----------
    path : str
    format : str
        Layout name, see the module docstring.
    base : str
        One of :data:`BASE_FAMILIES`.
    modules : dict of str to LoraModule
        Keyed by canonical name, in sorted order.
    dtype : str
        numpy name of the stored LoRA factors' dtype (``float16``, ``bfloat16``,
        ``float32`` ...), or ``mixed``.
    metadata : dict of str to str
        The file's ``__metadata__``.
    extras : dict of str to ndarray
        Tensors that are not LoRA factors (textual-inversion embeddings, DoRA
        magnitudes, biases, norm scales), keyed by their original names.
    """

    path: str
    format: str
    base: str
    modules: dict[str, LoraModule]
    dtype: str
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    extras: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def parts(self) -> list[str]:
        """Sorted model parts the LoRA adapts."""
        return sorted({m.part for m in self.modules.values()})

    @property
    def ranks(self) -> list[int]:
        """Sorted distinct module ranks."""
        return sorted({m.rank for m in self.modules.values()})

    @property
    def alphas(self) -> list[float]:
        """Sorted distinct stored alphas (empty when the file stores none)."""
        return sorted({m.alpha for m in self.modules.values() if m.alpha is not None})

    def summary(self) -> dict:
        """The ``lorastyle inspect --json`` object."""
        return {
            "format": self.format,
            "base": self.base,
            "parts": self.parts,
            "n_modules": len(self.modules),
            "ranks": self.ranks,
            "alphas": self.alphas,
            "dtype": self.dtype,
        }


# ---------------------------------------------------------------------------
# Layouts: each parser groups tensor keys into modules {raw module name: {role: key}}.

_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
    "lycoris_": "unet",
}
_KOHYA_ROLES = {
    "lora_down.weight": "lora_down",
    "lora_up.weight": "lora_up",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    "lora_mid.weight": "lora_mid",
}
_LYCORIS_ROLES = {
    r: r
    for r in (
        "lokr_w1",
        "lokr_w1_a",
        "lokr_w1_b",
        "lokr_w2",
        "lokr_w2_a",
        "lokr_w2_b",
        "lokr_t2",
        "hada_w1_a",
        "hada_w1_b",
        "hada_w2_a",
        "hada_w2_b",
        "hada_t1",
        "hada_t2",
        "alpha",
        "dora_scale",
    )
}
_PEFT_PREFIXES = {
    "base_model.model.": None,  # part inferred from the file's module names
    "unet.": "unet",
    "text_encoder.": "text_encoder",
    "text_encoder_2.": "text_encoder_2",
    "transformer.": "transformer",
    "diffusion_model.": "transformer",
}
_FLUX_WORDS = ("double_blocks", "single_blocks", "single_transformer_blocks", "x_embedder", "context_embedder")
_CLONEOFSIMO_KEY = re.compile(r"^(unet|text_encoder):(\d+):(up|down)$")
_XLABS_KEY = re.compile(r"^(.*)\.processor\.(qkv|proj)_lora(\d?)\.(up|down)\.weight$")
_XLABS_TARGET = {
    ("qkv", "1"): "img_attn.qkv",
    ("qkv", "2"): "txt_attn.qkv",
    ("proj", "1"): "img_attn.proj",
    ("proj", "2"): "txt_attn.proj",
    ("qkv", ""): "qkv",
    ("proj", ""): "proj",
}


def _split_role(key: str, roles: dict[str, str]) -> tuple[str, str] | None:
    for suffix, role in roles.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], role
    return None


def _group(keys, split) -> tuple[dict[str, dict[str, str]], list[str]]:
    modules: dict[str, dict[str, str]] = {}
    rest = []
    for key in keys:
        hit = split(key)
        if hit is None:
            rest.append(key)
        else:
            modules.setdefault(hit[0], {})[hit[1]] = key
    return modules, rest


def _infer_part(path: str) -> str | None:
    """The part a prefix-less path belongs to; None for a denoiser path (U-Net or Flux: decided per file)."""
    if path.startswith("text_model."):
        return "text_encoder"
    if any(w in path.split(".") for w in _FLUX_WORDS) or path.startswith("transformer_blocks."):
        return "transformer"
    return None


# The name a part has in its own model's files, as a hand conversion may leave it after a kohya prefix
# (lora_unet_unet_down_blocks_..., lora_unet_model_diffusion_model_input_blocks_..., lora_te_text_encoder_...).
_OWN_PREFIXES = {
    "unet": ("unet_", "model_diffusion_model_", "diffusion_model_"),
    "text_encoder": ("text_encoder_",),
    "text_encoder_2": ("text_encoder_2_",),
    "text_encoder_3": ("text_encoder_3_",),
}  # not "transformer_": Flux names start with transformer_blocks_


class _DoubledPrefix(ValueError):
    """A kohya name whose prefix is followed by another part's prefix: which part it adapts is unknown."""


_PART_PREFIX = {
    "unet": "lora_unet_",
    "text_encoder": "lora_te1_",
    "text_encoder_2": "lora_te2_",
    "text_encoder_3": "lora_te3_",
}


def _doubled(doubled: str, what: str, part: str, renamed: str) -> _DoubledPrefix:
    return _DoubledPrefix(
        f"doubled prefix {doubled!r}: {what}, so which model part it adapts is unclear. A conversion added a "
        f"prefix to names that had one: rename the keys to keep one prefix (here {renamed[:70]!r} if it adapts "
        f"the {part}) and read the file again"
    )


def _strip_doubled(prefix: str, part: str, rest: str) -> str:
    """``rest`` (a kohya name after ``prefix``) without a repeat of its prefix or of its part's own name.

    Raises ``_DoubledPrefix`` when what follows names another part (``lora_unet_lora_te_...``,
    ``lora_te_unet_...``): the name then says two things and is not guessed.
    """
    for again, again_part in _KOHYA_PREFIXES.items():
        if rest.startswith(again):
            if again_part != part:
                what = f"the name carries the kohya prefixes of the {part} and of the {again_part}"
                raise _doubled(prefix + again, what, again_part, rest)
            rest = rest[len(again) :]
            break
    mine = _OWN_PREFIXES.get(part, ())
    others = [(p, own) for p, owns in _OWN_PREFIXES.items() for own in owns if p != part]
    for other, own in sorted(others, key=lambda x: -len(x[1])):
        if rest.startswith(own) and not any(rest.startswith(o) for o in mine):
            what = f"a {other} name under the {part} prefix {prefix!r}"
            raise _doubled(prefix + own, what, other, _PART_PREFIX[other] + rest[len(own) :])
    for own in sorted(mine, key=len, reverse=True):
        if rest.startswith(own):
            return rest[len(own) :]
    return rest


@lru_cache(maxsize=1 << 16)  # pure, and the same few hundred names recur in every file of a collection
def _canonical_kohya(raw: str) -> tuple[str, str]:
    for prefix, part in _KOHYA_PREFIXES.items():
        if raw.startswith(prefix):
            # a user-made conversion that kept the source's own prefix: lora_unet_unet_down_blocks_...
            path = unmangle(_strip_doubled(prefix, part, raw[len(prefix) :]))
            if part == "unet":
                if any(w in path.split(".") for w in _FLUX_WORDS) or path.startswith("transformer_blocks."):
                    part = "transformer"  # a U-Net path never starts with transformer_blocks
                else:
                    path = sgm_to_diffusers(path)
            return part, path
    if raw.startswith("diffusion_model."):  # BFL-style dotted LyCORIS names (Flux)
        return "transformer", raw[len("diffusion_model.") :]
    for prefix, part in _PEFT_PREFIXES.items():
        if raw.startswith(prefix):
            path = raw[len(prefix) :]
            return part or _infer_part(path), path
    return _infer_part(raw), raw


def _canonical_peft(raw: str) -> tuple[str, str]:
    for prefix, part in _PEFT_PREFIXES.items():
        if raw.startswith(prefix):
            path = raw[len(prefix) :]
            return part or _infer_part(path), sgm_to_diffusers(path)
    return _infer_part(raw), sgm_to_diffusers(raw)


def _detect_layout(keys: list[str]) -> str | None:
    ends = lambda *suffixes: any(k.endswith(suffixes) for k in keys)  # noqa: E731
    if any(_CLONEOFSIMO_KEY.match(k) for k in keys):
        return "cloneofsimo"
    if ends(".lokr_w1", ".lokr_w1_a", ".lokr_w2", ".lokr_w2_a"):
        return "lycoris-lokr"
    if ends(".hada_w1_a"):
        return "lycoris-loha"
    if ends(".lora_down.weight"):
        return "kohya-dora" if ends(".dora_scale") else "kohya"
    if any(_XLABS_KEY.match(k) for k in keys):
        return "xlabs"
    if ends(".lora_A.weight", ".lora_A.default.weight"):
        return "ai-toolkit" if all(k.startswith("diffusion_model.") for k in keys) else "diffusers-peft"
    if ends("_lora.down.weight", ".lora_linear_layer.down.weight", ".lora.down.weight"):
        return "diffusers-legacy"
    return None


def _legacy_split(key: str) -> tuple[str, str] | None:
    m = re.match(r"^(.*?)(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(up|down)\.weight$", key)
    if m:
        target = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        return f"{m.group(1)}.{target}", "lora_" + m.group(3)
    m = re.match(r"^(.*)\.(?:lora_linear_layer|lora)\.(up|down)\.weight$", key)
    if m:
        return m.group(1), "lora_" + m.group(2)
    return None


def _peft_split(key: str) -> tuple[str, str] | None:
    m = re.match(r"^(.*)\.lora_([AB])(?:\.default)?\.weight$", key)
    if m:
        return m.group(1), {"A": "lora_down", "B": "lora_up"}[m.group(2)]
    if key.endswith(".alpha"):
        return key[: -len(".alpha")], "alpha"
    return None


def _xlabs_split(key: str) -> tuple[str, str] | None:
    m = _XLABS_KEY.match(key)
    if not m:
        return None
    return f"{m.group(1)}.{_XLABS_TARGET[(m.group(2), m.group(3))]}", "lora_" + m.group(4)


def _cloneofsimo_names(part: str, count: int, targets: set[str]) -> list[str]:
    """Module names of cloneofsimo's index order for SD 1.x/2.x.

    lora_diffusion numbers the Linear layers it wraps in the order of
    ``model.modules()`` in diffusers 0.x, where a BasicTransformerBlock held
    ``attn1, ff, attn2`` in that order and the U-Net registered
    ``down_blocks, up_blocks`` before ``mid_block``. CLIPAttention defines
    ``k_proj, v_proj, q_proj, out_proj`` in that order.
    """
    if part == "text_encoder":
        per_layer = ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"]
        if count % len(per_layer):
            return []
        return [f"text_model.encoder.layers.{i}.{p}" for i in range(count // 4) for p in per_layer]
    blocks = (
        [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)]
        + [f"up_blocks.{b}.attentions.{a}" for b in range(1, 4) for a in range(3)]
        + ["mid_block.attentions.0"]
    )
    attn = lambda k: [f"attn{k}.to_q", f"attn{k}.to_k", f"attn{k}.to_v", f"attn{k}.to_out.0"]  # noqa: E731
    per_block = attn(1) + (["ff.net.0.proj"] if "GEGLU" in targets or not targets else []) + attn(2)
    if not targets and count == 128:  # older default target set without GEGLU
        per_block = attn(1) + attn(2)
    if count != len(blocks) * len(per_block):
        return []
    return [f"{blk}.transformer_blocks.0.{p}" for blk in blocks for p in per_block]


# ---------------------------------------------------------------------------
# Building modules from factors


def _khatri_rao_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # (m, r1), (m, r2) -> (m, r1*r2): row-wise Kronecker product; overflow is caught by build_module
    with np.errstate(over="ignore", invalid="ignore"):
        return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)


def _matrix32(arr: np.ndarray) -> np.ndarray:
    """A stored factor as a float32 matrix (conv kernels flattened to (out, in*kh*kw))."""
    arr = np.asarray(arr, dtype=np.float32)
    return arr.reshape(arr.shape[0], -1) if arr.ndim == 4 else arr


def _low_rank(kind: str, f: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(up, down)`` of a module's stored factors, without the scale (see :class:`LoraModule`)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by build_module, once
        if kind == "lora":
            return _matrix32(f["lora_up"]), _matrix32(f["lora_down"])
        if kind == "loha":
            a1, b1, a2, b2 = (_matrix32(f[k]) for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
            # (A1 B1) * (A2 B2) elementwise = khatri_rao_rows(A1, A2) @ khatri_rao_cols(B1, B2)
            return _khatri_rao_rows(a1, a2), _khatri_rao_rows(b1.T, b2.T).T
        U1, V1, U2, V2 = _kronecker(f)
        if V1 is None and V2 is None:
            return _dense_factors(np.kron(U1, U2))  # two whole factors: the dense product
        V1 = np.eye(U1.shape[1], dtype=np.float32) if V1 is None else V1
        V2 = np.eye(U2.shape[1], dtype=np.float32) if V2 is None else V2
        return np.kron(U1, U2), np.kron(V1, V2)  # kron(U1 V1, U2 V2) = kron(U1, U2) kron(V1, V2)


def _kronecker(f: dict[str, np.ndarray]) -> tuple:
    """LoKr's ``W1 = U1 V1`` and ``W2 = U2 V2`` in float32; ``V`` is None for a factor stored whole."""
    out = []
    for i in ("1", "2"):
        if f"lokr_w{i}" in f:
            out += [_matrix32(f[f"lokr_w{i}"]), None]
        else:
            out += [_matrix32(f[f"lokr_w{i}_a"]), _matrix32(f[f"lokr_w{i}_b"])]
    return tuple(out)


def _fits_float32(m: LoraModule) -> bool:
    """delta-W's entries are within float32's range, checked without expanding a Kronecker product."""
    if m.kind == "lora":
        return True  # its stored factors are finite, and kernels check their own results
    if m.kind == "lokr":
        U1, V1, U2, V2 = m.kronecker()
        W1 = U1.astype(np.float64) if V1 is None else U1.astype(np.float64) @ V1
        W2 = U2.astype(np.float64) if V2 is None else U2.astype(np.float64) @ V2
        top = np.abs(W1).max() * np.abs(W2).max()  # the largest entry of kron(W1, W2)
        return bool(np.isfinite(top) and top < 3.4e38)
    return all(np.isfinite(x).all() for x in m.low_rank())


def build_module(path: str, name: str, part: str, roles: dict[str, np.ndarray]) -> LoraModule:
    """Build a :class:`LoraModule` from its stored tensors, keyed by role.

    Parameters
    ----------
    path : str
        The file, for error messages only.
    name : str
        Canonical module name ``<part>.<path>``.
    part : str
    roles : dict of str to ndarray
        ``lora_down``/``lora_up``, ``lokr_w1[_a|_b]``/``lokr_w2[_a|_b]``, ``hada_w1_a`` ... and
        optionally ``alpha`` (a scalar) and ``dora_scale`` (kept by the caller as an extra).

    Returns
    -------
    LoraModule

    Raises
    ------
    LoraFormatError
        For factors that do not fit together (:func:`module_shape`), a non-scalar alpha, or a
        delta-W beyond float32's range.
    """
    alpha_arr = roles.get("alpha")
    alpha = None
    if alpha_arr is not None:
        if np.size(alpha_arr) != 1:
            raise LoraFormatError(path, f"module {name}: alpha has shape {np.shape(alpha_arr)}, expected a scalar")
        alpha = float(np.asarray(alpha_arr).reshape(-1)[0])
    factors = {k: v for k, v in roles.items() if k not in ("alpha", "dora_scale")}
    ms = module_shape(path, name, {r: tuple(np.shape(v)) for r, v in roles.items()})
    full_lokr = ms.kind == "lokr" and not any(k in factors for k in ("lokr_w1_b", "lokr_w2_b"))
    if alpha is None or alpha == 0 or full_lokr:
        scale = 1.0  # no alpha; kohya's alpha = 0; LyCORIS's full-factor LoKr (no lora_dim)
    else:
        scale = alpha / ms.rank
    module = LoraModule(
        name=name,
        part=part,
        kind=ms.kind,
        rank=ms.rank,
        alpha=alpha,
        scale=float(scale),
        factors=factors,
        out_features=ms.shape[0],
        in_features=ms.shape[1],
    )
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(scale) and _fits_float32(module)
    if not finite:
        raise LoraFormatError(path, f"module {name}: delta-W overflows float32 (factors too large)")
    return module


def _dense_factors(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense matrix as (up, down) with an identity on its smaller side (k = min(out, in))."""
    m, n = dense.shape
    return (np.eye(m, dtype=dense.dtype), dense) if m <= n else (dense, np.eye(n, dtype=dense.dtype))


# ---------------------------------------------------------------------------
# Base family

_CROSS_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_DIMS = {768: "sd1", 1024: "sd2"}


def _detect_base(modules: dict[str, tuple[str, int]], metadata: dict[str, str]) -> str:
    """Base family from ``{name: (part, in_features)}`` (sorted by name) and the metadata.

    Shapes only, so :func:`load_lora` and :func:`lorastyle.io.metadata.describe_file` share it:
    both pass the in-features :func:`module_shape` reads from the header.
    """
    declared = metadata.get(BASE_METADATA_KEY)
    if declared in BASE_FAMILIES:
        return declared
    parts = {part for part, _ in modules.values()}
    if "transformer" in parts:
        return "flux"
    if "text_encoder_2" in parts:
        return "sdxl"
    for name, (_, n_in) in modules.items():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            return _CROSS_DIMS.get(n_in, "unknown")
    for name, (_, n_in) in modules.items():
        if name.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            return _TEXT_DIMS.get(n_in, "unknown")
    return "unknown"


def header_dims(path: str, entries: dict, layout: HeaderLayout) -> dict[str, tuple[str, int]]:
    """``{name: (part, in_features)}`` of every module of ``layout``, sorted by name, from shapes alone.

    Parameters
    ----------
    path : str
        The file, for error messages.
    entries : dict
        The header's entries (:func:`lorastyle.io.safetensors.read_safetensors_header`).
    layout : HeaderLayout

    Returns
    -------
    dict of str to (str, int)
    """
    dims = {}
    for (part, mpath), roles in layout.modules.items():
        name = f"{part}.{mpath}"
        shapes = {role: entries[key][1] if key in entries else () for role, key in roles.items()}
        dims[name] = (part, module_shape(path, name, shapes).shape[1])
    return dict(sorted(dims.items()))


@dataclass(frozen=True)
class ModuleShape:
    """What a module's tensor shapes alone say (see :func:`module_shape`).

    Attributes
    ----------
    kind : {"lora", "lokr", "loha"}
    rank : int
    shape : (int, int)
        (out_features, in_features) of delta-W, convolutions flattened as in :func:`build_module`.
    kernel : tuple of int
        Spatial kernel of a LoRA's down factor (``(3, 3)`` for a 3x3 convolution), ``()`` otherwise.
    """

    kind: str
    rank: int
    shape: tuple[int, int]
    kernel: tuple[int, ...]


def _matrix_shape(shape: tuple, path: str, what: str) -> tuple[int, int]:
    """The 2-D shape :func:`_as_matrix` gives a factor of this shape (same refusals)."""
    if len(shape) not in (2, 4) or math.prod(shape) == 0:
        raise LoraFormatError(
            path, f"{what} has shape {tuple(shape)}: a factor must be a non-empty matrix or 4-D conv kernel"
        )
    return shape[0], math.prod(shape[1:])


def module_shape(path: str, name: str, shapes: dict[str, tuple]) -> ModuleShape:
    """Kind, rank and delta-W shape of one module from its tensors' shapes, without their bytes.

    The header-only view of :func:`build_module`: the same roles, the same flattening and the same
    refusals for factors that cannot fit together (a missing factor, mismatched A/B, Tucker factors).

    ``rank`` is what the user trained with: LoRA's ``lora_dim`` (rows of ``lora_down``), LoHa's
    (rows of ``hada_w1_b``) and LoKr's ``lora_dim``, the inner dimension of the decomposed factor
    (``lokr_w2_b`` rows, else ``lokr_w1_b`` rows: LyCORIS decomposes W2, and W1 with
    ``decompose_both``). A LoKr whose two factors are both stored whole (LyCORIS keeps W2 whole when
    ``lora_dim`` is at least half its sides, or with ``full_matrix``) has no stored ``lora_dim``; its
    rank is then that of the W2 factor, ``min`` of its sides. :func:`build_module` uses this
    function, so :func:`load_lora` and ``lorastyle inspect`` report the same ranks.

    Parameters
    ----------
    path : str
        The file, for error messages.
    name : str
        The module's canonical name.
    shapes : dict of str to tuple of int
        Shape of each stored tensor, by role.

    Returns
    -------
    ModuleShape
    """
    for role in ("lora_mid", "lokr_t2", "hada_t1", "hada_t2"):
        if role in shapes:
            raise LoraFormatError(path, f"module {name}: Tucker-decomposed conv factors ({role}) are not supported")
    factors = [r for r in shapes if r not in ("alpha", "dora_scale")]
    kernel: tuple[int, ...] = ()
    if "lora_down" in shapes or "lora_up" in shapes:
        kind = "lora"
        if "lora_down" not in shapes or "lora_up" not in shapes:
            missing = "down (A)" if "lora_down" not in shapes else "up (B)"
            raise LoraFormatError(path, f"module {name}: {missing} factor is missing")
        down_raw, up_raw = tuple(shapes["lora_down"]), tuple(shapes["lora_up"])
        if len(up_raw) == 4 and up_raw[2:] != (1, 1):
            raise LoraFormatError(path, f"module {name}: up factor with a {up_raw[2:]} kernel is not supported")
        down = _matrix_shape(down_raw, path, f"module {name}: down factor")
        up = _matrix_shape(up_raw, path, f"module {name}: up factor")
        if up[1] != down[0]:
            raise LoraFormatError(path, f"module {name}: A/B shape mismatch: up {up_raw} and down {down_raw}")
        rank, out, n_in = down[0], up[0], down[1]
        kernel = down_raw[2:]
    elif any(r.startswith("lokr_") for r in factors):
        kind = "lokr"
        (o1, i1, r1), (o2, i2, r2) = (_lokr_factor_shape(path, name, shapes, i) for i in ("1", "2"))
        out, n_in = o1 * o2, i1 * i2
        rank = r2 if r2 is not None else r1 if r1 is not None else min(o2, i2)
    elif any(r.startswith("hada_") for r in factors):
        kind = "loha"
        need = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        if not all(k in shapes for k in need):
            raise LoraFormatError(path, f"module {name}: LoHa needs {', '.join(need)}")
        a1, b1, a2, b2 = (_matrix_shape(tuple(shapes[k]), path, f"module {name}: {k}") for k in need)
        if a1[1] != b1[0] or a2[1] != b2[0] or a1[0] != a2[0] or b1[1] != b2[1]:
            raise LoraFormatError(path, f"module {name}: LoHa factor shapes do not fit together")
        rank, out, n_in = b1[0], a1[0], b1[1]
    else:
        raise LoraFormatError(path, f"module {name}: no LoRA factors")
    if rank == 0:
        raise LoraFormatError(path, f"module {name}: rank 0")
    return ModuleShape(kind=kind, rank=int(rank), shape=(int(out), int(n_in)), kernel=tuple(kernel))


def _lokr_factor_shape(path: str, name: str, shapes: dict, i: str) -> tuple[int, int, int | None]:
    """(out, in, inner dimension or None when stored whole) of LoKr factor W_i, as :func:`_lokr_factor` reads it."""
    if f"lokr_w{i}" in shapes:
        if f"lokr_w{i}_a" in shapes or f"lokr_w{i}_b" in shapes:
            raise LoraFormatError(path, f"module {name}: both lokr_w{i} and its factors lokr_w{i}_a/_b are stored")
        return (*_matrix_shape(tuple(shapes[f"lokr_w{i}"]), path, f"module {name}: lokr_w{i}"), None)
    a, b = shapes.get(f"lokr_w{i}_a"), shapes.get(f"lokr_w{i}_b")
    if a is None or b is None:
        raise LoraFormatError(path, f"module {name}: LoKr needs lokr_w{i} or lokr_w{i}_a and lokr_w{i}_b")
    a = _matrix_shape(tuple(a), path, f"module {name}: lokr_w{i}_a")
    b = _matrix_shape(tuple(b), path, f"module {name}: lokr_w{i}_b")
    if a[1] != b[0]:
        raise LoraFormatError(path, f"module {name}: lokr_w{i}_a {a} and lokr_w{i}_b {b} do not fit")
    return a[0], b[1], b[0]


def _all_finite(arr: np.ndarray) -> bool:
    """No NaN or Inf, without a float32 copy of a float16 tensor (its exponent bits tell)."""
    if arr.dtype == np.float16:  # all exponent bits set: Inf or NaN
        return arr.size == 0 or int((arr.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(arr).all())


def _dtype_name(dtypes: set[str]) -> str:
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    found = {names.get(d, d.lower()) for d in dtypes}
    return found.pop() if len(found) == 1 else "mixed"


# ---------------------------------------------------------------------------


def load_lora(
    path: str | os.PathLike, *, data: bytes | memoryview | None = None, _header: ParsedHeader | None = None
) -> LoRA:
    """Read a LoRA file of any supported layout.

    Factors keep their stored dtype (float16 stays float16, as views of the bytes read; bfloat16
    is widened to float32, which numpy lacks), so a LoRA takes about its file's size in memory.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file. Pickle-based files (``.ckpt``, ``.pt``, ``.bin``)
        are refused, never unpickled.
    data : bytes, optional
        The file's bytes, already read (the index reads each file once): the file is then
        not opened, and the factors are views of these bytes.

    Returns
    -------
    LoRA
        The normalised LoRA.

    Raises
    ------
    LoraFormatError
        With the file name and the reason: a malformed or truncated file, a
        pickle, an unknown layout, mismatched A/B shapes, NaN or Inf weights.

    Examples
    --------
    >>> lora = load_lora("style.safetensors")  # doctest: +SKIP
    >>> lora.format, lora.base, lora.ranks  # doctest: +SKIP
    ('kohya', 'sd1', [8])
    """
    path = os.fspath(path)
    # _header: parse_header's for these bytes (the index interprets a header once for two readers)
    header = _header if _header is not None else parse_header(path, data=data)
    entries, layout = header.entries, header.layout
    tensors, metadata = read_safetensors(path, data=data, _header=(entries, header.metadata, header.data_start))
    for key, alpha in layout.metadata_alphas.items():
        tensors[key] = np.asarray(alpha, dtype=np.float32)

    modules: dict[str, LoraModule] = {}
    for (part, mpath), roles in layout.modules.items():
        name = f"{part}.{mpath}"
        arrays = {}
        for role, key in roles.items():
            arr = tensors[key]
            if role == "alpha" and arr.dtype.kind in "iu":  # an integer alpha (INTEGER_ALPHA_DTYPES)
                arr = arr.astype(np.float32)
            if arr.dtype == np.float64:  # no LoRA needs float64; beyond float32's range it is refused below
                with np.errstate(over="ignore"):
                    arr = arr.astype(np.float32)
            if not _all_finite(arr):
                raise LoraFormatError(path, f"tensor {key!r} holds NaN or Inf values (or values beyond float32)")
            arrays[role] = arr
        modules[name] = build_module(path, name, part, arrays)
    lora = LoRA(
        path=path,
        format=layout.format,
        base="unknown",
        modules=dict(sorted(modules.items())),
        dtype=layout.dtype,
        metadata=metadata,
        extras={k: tensors[k] for k in layout.extras},
    )
    lora.base = header.base
    if lora.base == "flux":
        lora.modules = canonical_flux_modules(lora.modules, path)
    return lora


@dataclass(frozen=True, eq=False)
class HeaderLayout:
    """What a file's header alone (tensor names, shapes, dtypes; metadata) says of its LoRA.

    :func:`load_lora` reads the tensors of these modules; :func:`lorastyle.io.metadata.describe_file`
    reads none: both start here (:func:`read_layout`).

    Attributes
    ----------
    format : str
        Layout name (:data:`LAYOUTS`).
    modules : dict of (str, str) to dict of str to str
        ``{(part, path): {role: tensor key}}``, sorted.
    extras : list of str
        Sorted keys of the tensors that are no LoRA factor or alpha (they become ``LoRA.extras``).
    metadata_alphas : dict of str to float
        Alphas PEFT files keep in ``lora_adapter_metadata``, under the synthetic role keys of ``modules``.
    dtype : str
        ``LoRA.dtype``: numpy name of the stored factors' dtype, or ``mixed``.
    """

    format: str
    modules: dict[tuple[str, str], dict[str, str]]
    extras: list[str]
    metadata_alphas: dict[str, float]
    dtype: str


@dataclass(frozen=True, eq=False)
class ParsedHeader:
    """A file's header read and interpreted once: where :func:`load_lora` and ``describe_file`` both start.

    Made by :func:`parse_header`. The index reads each file once and hands both readers this, so
    that the header is parsed, grouped into modules and its base family detected once per file.

    Attributes
    ----------
    path : str
    entries, metadata, data_start
        What :func:`lorastyle.io.safetensors.read_safetensors_header` returned.
    layout : HeaderLayout
    """

    path: str
    entries: dict
    metadata: dict
    data_start: int
    layout: HeaderLayout

    @cached_property
    def dims(self) -> dict[str, tuple[str, int]]:
        """Each module's part and input width, from the shapes (:func:`header_dims`)."""
        return header_dims(self.path, self.entries, self.layout)

    @cached_property
    def base(self) -> str:
        """The base family the shapes and the metadata say (``unknown`` if none)."""
        return _detect_base(self.dims, self.metadata)


def parse_header(path: str | os.PathLike, *, data: bytes | memoryview | None = None) -> ParsedHeader:
    """Read a safetensors file's header and group its tensors into modules, without reading their bytes.

    Parameters
    ----------
    path : str or path-like
    data : bytes, optional
        The file's bytes, already read: then the file is not opened.

    Returns
    -------
    ParsedHeader

    Raises
    ------
    LoraFormatError
        As :func:`lorastyle.io.safetensors.read_safetensors_header` and :func:`read_layout`.
    """
    path = os.fspath(path)
    entries, metadata, start = read_safetensors_header(path, data=data)
    return ParsedHeader(path, entries, metadata, start, read_layout(path, entries, metadata))


def read_layout(path: str, entries: dict, metadata: dict[str, str]) -> HeaderLayout:
    """Group a header's tensors into modules (:class:`HeaderLayout`) without reading their bytes.

    Parameters
    ----------
    path : str
        The file, for error messages.
    entries, metadata
        What :func:`lorastyle.io.safetensors.read_safetensors_header` returned for it.

    Raises
    ------
    LoraFormatError
        No tensors, an unknown layout, no complete module, a module under two spellings, a
        non-float tensor among a module's roles, bad cloneofsimo or PEFT-alpha metadata.
    """
    if not entries:
        raise LoraFormatError(path, "the file holds no tensors")
    keys = sorted(entries)
    layout = _detect_layout(keys)
    if layout is None:
        raise LoraFormatError(path, f"unknown layout: no LoRA key pattern recognised (first keys: {keys[:3]})")
    grouped, rest, metadata_alphas = _split_layout(path, layout, keys, metadata)
    if not grouped:
        raise LoraFormatError(path, "unknown layout: no complete LoRA module found")
    factor_dtypes: set[str] = set()
    for roles in grouped.values():
        for role, key in roles.items():
            dtype = entries[key][0] if key in entries else "F32"  # alphas from metadata are synthetic keys
            if role == "alpha" and dtype in INTEGER_ALPHA_DTYPES:
                continue  # diffusers' convert_state_dict_to_kohya writes torch.tensor(rank): int64; read as a float
            if dtype not in FLOAT_DTYPES:
                raise LoraFormatError(path, f"tensor {key!r}: dtype {dtype} is not a floating-point type")
            if role not in ("alpha", "dora_scale"):
                factor_dtypes.add(dtype)
        if "dora_scale" in roles:
            rest.append(roles["dora_scale"])
    return HeaderLayout(
        format=layout,
        modules=dict(sorted(grouped.items())),
        extras=sorted(rest),
        metadata_alphas=metadata_alphas,
        dtype=_dtype_name(factor_dtypes),
    )


def _split_layout(
    path, layout, keys, metadata
) -> tuple[dict[tuple[str, str], dict[str, str]], list[str], dict[str, float]]:
    """Group keys into modules {(part, path): {role: key}} for one layout; return the other keys too.

    The third item: alphas from metadata (PEFT), under the synthetic keys the modules' roles name.
    """
    metadata_alphas: dict[str, float] = {}
    if layout == "cloneofsimo":
        return (*_split_cloneofsimo(path, keys, metadata), metadata_alphas)
    if layout in ("kohya", "kohya-dora"):
        raw, rest = _group(keys, lambda k: _split_role(k, _KOHYA_ROLES))
        canon = _canonical_kohya
    elif layout.startswith("lycoris"):
        raw, rest = _group(keys, lambda k: _split_role(k, _LYCORIS_ROLES))
        canon = _canonical_kohya
    elif layout == "xlabs":
        raw, rest = _group(keys, _xlabs_split)
        canon = lambda r: ("transformer", r)  # noqa: E731
    elif layout == "diffusers-legacy":
        raw, rest = _group(keys, _legacy_split)
        canon = _canonical_peft
    else:  # diffusers-peft, ai-toolkit
        raw, rest = _group(keys, _peft_split)
        canon = _canonical_peft
        metadata_alphas = _apply_peft_alpha(path, raw, metadata)
    grouped = {}
    for raw_name, roles in raw.items():
        if set(roles) <= {"alpha", "dora_scale"}:  # an alpha with no factors: not a module
            rest.extend(roles.values())
            continue
        try:
            key = canon(raw_name)
        except _DoubledPrefix as exc:
            raise LoraFormatError(path, f"tensor {raw_name!r}: {exc}") from None
        if key in grouped:
            raise LoraFormatError(path, f"module {'.'.join(map(str, key))} appears twice under different key spellings")
        grouped[key] = roles
    # A prefix-less denoiser path (proj_out, img_in) is Flux's if the file has any Flux module.
    denoiser = "transformer" if any(part == "transformer" for part, _ in grouped) else "unet"
    return {(part or denoiser, mpath): roles for (part, mpath), roles in grouped.items()}, rest, metadata_alphas


def _apply_peft_alpha(path: str, raw: dict, metadata: dict[str, str]) -> dict[str, float]:
    """PEFT files keep lora_alpha outside the tensors; diffusers >= 0.35 puts it in metadata.

    Gives each module without an alpha the role ``alpha`` under a synthetic key; returns {key: alpha}.
    """
    found: dict[str, float] = {}
    blob = metadata.get("lora_adapter_metadata")
    if not blob:
        return found
    try:
        config = json.loads(blob)
    except (ValueError, RecursionError):
        raise LoraFormatError(path, "lora_adapter_metadata is not valid JSON") from None
    if not isinstance(config, dict):
        raise LoraFormatError(path, "lora_adapter_metadata is not a JSON object")
    # Either {"r": .., "lora_alpha": ..} or {"unet.r": .., "unet.lora_alpha": ..}
    alphas = {k.rsplit(".", 1)[0] if "." in k else "": v for k, v in config.items() if k.endswith("lora_alpha")}
    for value in alphas.values():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < 3.4e38:
            raise LoraFormatError(path, f"lora_adapter_metadata: lora_alpha {value!r} is not a finite float32")
    for raw_name, roles in raw.items():
        if "alpha" in roles:
            continue
        for prefix, alpha in alphas.items():
            if not prefix or raw_name.startswith(prefix + "."):
                key = f"__metadata__.{raw_name}.alpha"
                found[key] = float(alpha)
                roles["alpha"] = key
                break
    return found


def _split_cloneofsimo(path, keys, metadata):
    indices: dict[str, set[int]] = {"unet": set(), "text_encoder": set()}
    rest = []
    for key in keys:
        m = _CLONEOFSIMO_KEY.match(key)
        if m:
            indices[m.group(1)].add(int(m.group(2)))
        else:
            rest.append(key)
    grouped = {}
    key_set = set(keys)
    for part, found in indices.items():
        if not found:
            continue
        count = max(found) + 1
        if found != set(range(count)):
            raise LoraFormatError(path, f"cloneofsimo {part} indices are not contiguous from 0")
        try:
            targets = json.loads(metadata.get(part, "[]"))
        except (ValueError, RecursionError):
            targets = None
        if not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
            raise LoraFormatError(path, f"cloneofsimo metadata {part!r} is not a JSON list of class names")
        targets = set(targets)
        names = _cloneofsimo_names(part, count, targets)
        if not names:
            raise LoraFormatError(
                path,
                f"cloneofsimo {part}: {count} modules do not match the SD U-Net/CLIP order "
                f"for targets {sorted(targets)}",
            )
        for i, mpath in enumerate(names):
            roles = {"lora_down": f"{part}:{i}:down", "lora_up": f"{part}:{i}:up"}
            missing = [k for k in roles.values() if k not in key_set]
            if missing:
                raise LoraFormatError(path, f"cloneofsimo factor {missing[0]} is missing")
            grouped[(part, mpath)] = roles
    return grouped, rest


# ---------------------------------------------------------------------------
# Writing

WRITE_LAYOUTS = ("diffusers-peft", "kohya")
_KOHYA_WRITE_PREFIX = {
    "unet": "lora_unet_",
    "text_encoder": "lora_te_",
    "text_encoder_2": "lora_te2_",
    "transformer": "lora_transformer_",
}  # OneTrainer's prefix for Flux


def save_lora(
    path: str | os.PathLike,
    factors: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    alpha: float,
    layout: str = "diffusers-peft",
    base: str | None = None,
    metadata: dict[str, str] | None = None,
    dtype=np.float32,
) -> None:
    """Write a plain LoRA (A, B per module) as safetensors, in the diffusers/PEFT or kohya layout.

    Parameters
    ----------
    path : str or path-like
    factors : dict of str to (A, B)
        Canonical module name (``unet.down_blocks.0...attn1.to_q``) to the
        down factor A of shape (r, in) and the up factor B of shape (out, r).
    alpha : float
        LoRA alpha; the scale is alpha / r. kohya stores it per module, the
        diffusers layout in the ``lora_adapter_metadata`` block as diffusers does.
    layout : {"diffusers-peft", "kohya"}, default="diffusers-peft"
    base : str, optional
        Base family, stored under ``lorastyle.base`` so :func:`load_lora` reports
        it (needed for the project's tiny model, which has no public signature).
    metadata : dict of str to str, optional
        Extra metadata (artist, genre, seed ...).
    dtype : numpy dtype or "bfloat16", default=float32
        Stored dtype of the factors (and kohya's alphas). ``"bfloat16"``, which
        numpy lacks, rounds to nearest even (:func:`lorastyle.io.safetensors.bfloat16_bits`).
    """
    if layout not in WRITE_LAYOUTS:
        raise ValueError(f"layout must be one of {list(WRITE_LAYOUTS)}, got {layout!r}")
    bf16 = isinstance(dtype, str) and dtype == "bfloat16"
    if bf16:
        dtype = np.float32  # rounded when written
    meta = dict(metadata or {})
    if base is not None:
        meta[BASE_METADATA_KEY] = base
    tensors: dict[str, np.ndarray] = {}
    ranks: dict[str, int] = {}
    for name, (A, B) in factors.items():
        part, mpath = name.split(".", 1)
        if A.shape[0] != B.shape[1]:
            raise ValueError(f"module {name}: A {A.shape} and B {B.shape} do not share a rank")
        ranks[part] = A.shape[0]
        if layout == "kohya":
            key = _KOHYA_WRITE_PREFIX.get(part, f"lora_{part}_") + mpath.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = np.asarray(A, dtype=dtype)
            tensors[f"{key}.lora_up.weight"] = np.asarray(B, dtype=dtype)
            tensors[f"{key}.alpha"] = np.asarray(alpha, dtype=dtype)
        else:
            tensors[f"{name}.lora_A.weight"] = np.asarray(A, dtype=dtype)
            tensors[f"{name}.lora_B.weight"] = np.asarray(B, dtype=dtype)
    if layout == "diffusers-peft":
        adapter = {}
        for part, r in ranks.items():
            adapter[f"{part}.r"] = r
            adapter[f"{part}.lora_alpha"] = alpha
        meta["lora_adapter_metadata"] = json.dumps(adapter, sort_keys=True)
        meta.setdefault("format", "pt")
    write_safetensors(path, tensors, meta, bfloat16=tensors.keys() if bf16 else ())
