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
* Never unpickle: ``.ckpt``, ``.pt``, ``.bin`` ... are refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import LoraFormatError
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


@dataclass(frozen=True, eq=False)
class LoraModule:
    """One adapted layer: delta-W = ``scale * up @ down``.

    Attributes
    ----------
    name : str
        Canonical name ``<part>.<diffusers path>``.
    part : str
        ``unet``, ``text_encoder``, ``text_encoder_2`` or ``transformer``.
    kind : {"lora", "lokr", "loha"}
    up : ndarray of shape (out_features, k)
    down : ndarray of shape (k, in_features)
        Low-rank factors of delta-W (float32). For LoRA, ``up`` is B and ``down`` is A.
    rank : int
        The file's rank (``lora_dim``); for LoKr/LoHa the factorisation dimension.
    alpha : float or None
        As stored; None when the file has none.
    scale : float
        The multiplier of ``up @ down`` (see the module's conventions).
    factors : dict of str to ndarray
        The raw stored tensors (float32), keyed by their role (``lora_down``,
        ``lora_up``, ``lokr_w1`` ...), for the paper's ``concat`` descriptor.
    """

    name: str
    part: str
    kind: str
    up: np.ndarray
    down: np.ndarray
    rank: int
    alpha: float | None
    scale: float
    factors: dict[str, np.ndarray] = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of delta-W (convolutions flattened)."""
        return self.up.shape[0], self.down.shape[1]

    @property
    def group(self) -> tuple[str, str | None]:
        """(layer type, U-Net stage) from :func:`lorastyle.io.naming.module_group`."""
        return module_group(self.name)

    def delta(self) -> np.ndarray:
        """Materialise delta-W (out_features x in_features). Only for small layers and tests."""
        return self.scale * (self.up @ self.down)


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


@lru_cache(maxsize=1 << 16)  # pure, and the same few hundred names recur in every file of a collection
def _canonical_kohya(raw: str) -> tuple[str, str]:
    for prefix, part in _KOHYA_PREFIXES.items():
        if raw.startswith(prefix):
            path = unmangle(raw[len(prefix) :])
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


def _as_matrix(arr: np.ndarray, path: str, what: str) -> np.ndarray:
    """Flatten a conv factor to 2-D (out, in*kh*kw); keep matrices; refuse empty or other shapes."""
    if arr.ndim not in (2, 4) or arr.size == 0:
        raise LoraFormatError(
            path, f"{what} has shape {tuple(arr.shape)}: a factor must be a non-empty matrix or 4-D conv kernel"
        )
    return arr.reshape(arr.shape[0], -1) if arr.ndim == 4 else arr


def _khatri_rao_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # (m, r1), (m, r2) -> (m, r1*r2): row-wise Kronecker product; overflow is caught by build_module
    with np.errstate(over="ignore", invalid="ignore"):
        return (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)


def build_module(path: str, name: str, part: str, roles: dict[str, np.ndarray]) -> LoraModule:
    """Build a :class:`LoraModule` from its stored tensors, keyed by role.

    Roles: ``lora_down``/``lora_up``, ``lokr_w1[_a|_b]``/``lokr_w2[_a|_b]``,
    ``hada_w1_a``... and optionally ``alpha``. ``path`` is only for error messages.
    """
    alpha_arr = roles.get("alpha")
    alpha = None
    if alpha_arr is not None:
        if alpha_arr.size != 1:
            raise LoraFormatError(path, f"module {name}: alpha has shape {alpha_arr.shape}, expected a scalar")
        alpha = float(alpha_arr.reshape(-1)[0])
    factors = {k: v for k, v in roles.items() if k not in ("alpha", "dora_scale")}
    for role in ("lora_mid", "lokr_t2", "hada_t1", "hada_t2"):
        if role in roles:
            raise LoraFormatError(path, f"module {name}: Tucker-decomposed conv factors ({role}) are not supported")

    dim_key = None
    if "lora_down" in roles or "lora_up" in roles:
        kind = "lora"
        if "lora_down" not in roles or "lora_up" not in roles:
            missing = "down (A)" if "lora_down" not in roles else "up (B)"
            raise LoraFormatError(path, f"module {name}: {missing} factor is missing")
        down_raw, up_raw = roles["lora_down"], roles["lora_up"]
        if up_raw.ndim == 4 and up_raw.shape[2:] != (1, 1):
            raise LoraFormatError(path, f"module {name}: up factor with a {up_raw.shape[2:]} kernel is not supported")
        down = _as_matrix(down_raw, path, f"module {name}: down factor")
        up = _as_matrix(up_raw, path, f"module {name}: up factor")
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise LoraFormatError(
                path, f"module {name}: A/B shape mismatch: up {tuple(up_raw.shape)} and down {tuple(down_raw.shape)}"
            )
        rank = down.shape[0]
    elif any(k.startswith("lokr_") for k in factors):
        kind = "lokr"
        w1 = _lokr_factor(path, name, roles, "1")
        w2 = _lokr_factor(path, name, roles, "2")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below, with a reason
            if w1[1] is not None and w2[1] is not None:
                # kron(U1 V1, U2 V2) = kron(U1, U2) @ kron(V1, V2): exact low-rank form
                up, down = np.kron(w1[0], w2[0]), np.kron(w1[1], w2[1])
            else:  # a full factor: no useful low-rank form, keep the dense Kronecker product
                dense = np.kron(w1[0] if w1[1] is None else w1[0] @ w1[1], w2[0] if w2[1] is None else w2[0] @ w2[1])
                up, down = _dense_factors(dense)
        # lora_dim as LyCORIS and ComfyUI read it, from a factor actually used; two full factors have none
        dim_key = next((f"lokr_w{i}_b" for i, w in (("2", w2), ("1", w1)) if w[1] is not None), None)
        rank = roles[dim_key].shape[0] if dim_key else min(up.shape[0], down.shape[1])
    elif any(k.startswith("hada_") for k in factors):
        kind = "loha"
        need = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        if not all(k in roles for k in need):
            raise LoraFormatError(path, f"module {name}: LoHa needs {', '.join(need)}")
        a1, b1, a2, b2 = (_as_matrix(roles[k], path, f"module {name}: {k}") for k in need)
        if (
            a1.shape[1] != b1.shape[0]
            or a2.shape[1] != b2.shape[0]
            or a1.shape[0] != a2.shape[0]
            or b1.shape[1] != b2.shape[1]
        ):
            raise LoraFormatError(path, f"module {name}: LoHa factor shapes do not fit together")
        # (A1 B1) * (A2 B2) elementwise = khatri_rao_rows(A1, A2) @ khatri_rao_cols(B1, B2)
        up = _khatri_rao_rows(a1, a2)
        down = _khatri_rao_rows(b1.T, b2.T).T
        rank = b1.shape[0]
    else:
        raise LoraFormatError(path, f"module {name}: no LoRA factors")

    if rank == 0:
        raise LoraFormatError(path, f"module {name}: rank 0")
    if alpha is None or alpha == 0 or (kind == "lokr" and dim_key is None):
        scale = 1.0  # no alpha; kohya's alpha = 0; LyCORIS's full-factor LoKr
    else:
        scale = alpha / rank
    with np.errstate(over="ignore", invalid="ignore"):
        if up.shape[1] > min(up.shape[0], down.shape[1]):
            # the factorisation is wider than the matrix: the dense delta-W is cheaper
            up, down = _dense_factors(up @ down)
        up, down = up.astype(np.float32, copy=False), down.astype(np.float32, copy=False)
        finite = np.isfinite(up).all() and np.isfinite(down).all() and np.isfinite(scale)
    if not finite:
        raise LoraFormatError(path, f"module {name}: delta-W overflows float32 (factors too large)")
    return LoraModule(
        name=name,
        part=part,
        kind=kind,
        up=up,
        down=down,
        rank=int(rank),
        alpha=alpha,
        scale=float(scale),
        factors=factors,
    )


def _dense_factors(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense matrix as (up, down) with an identity on its smaller side (k = min(out, in))."""
    m, n = dense.shape
    return (np.eye(m, dtype=dense.dtype), dense) if m <= n else (dense, np.eye(n, dtype=dense.dtype))


def _lokr_factor(path: str, name: str, roles: dict, i: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One Kronecker factor W_i: (U_i, V_i) when stored decomposed, (W_i, None) when stored whole."""
    if f"lokr_w{i}" in roles:
        if f"lokr_w{i}_a" in roles or f"lokr_w{i}_b" in roles:
            raise LoraFormatError(path, f"module {name}: both lokr_w{i} and its factors lokr_w{i}_a/_b are stored")
        return _as_matrix(roles[f"lokr_w{i}"], path, f"module {name}: lokr_w{i}"), None
    a, b = roles.get(f"lokr_w{i}_a"), roles.get(f"lokr_w{i}_b")
    if a is None or b is None:
        raise LoraFormatError(path, f"module {name}: LoKr needs lokr_w{i} or lokr_w{i}_a and lokr_w{i}_b")
    a, b = _as_matrix(a, path, f"module {name}: lokr_w{i}_a"), _as_matrix(b, path, f"module {name}: lokr_w{i}_b")
    if a.shape[1] != b.shape[0]:
        raise LoraFormatError(path, f"module {name}: lokr_w{i}_a {a.shape} and lokr_w{i}_b {b.shape} do not fit")
    return a, b


# ---------------------------------------------------------------------------
# Base family

_CROSS_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_DIMS = {768: "sd1", 1024: "sd2"}


def _detect_base(modules: dict[str, LoraModule], metadata: dict[str, str]) -> str:
    declared = metadata.get(BASE_METADATA_KEY)
    if declared in BASE_FAMILIES:
        return declared
    parts = {m.part for m in modules.values()}
    if "transformer" in parts:
        return "flux"
    if "text_encoder_2" in parts:
        return "sdxl"
    for name, m in modules.items():
        if name.endswith(("attn2.to_k", "attn2.to_v")):
            return _CROSS_DIMS.get(m.shape[1], "unknown")
    for name, m in modules.items():
        if name.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            return _TEXT_DIMS.get(m.shape[1], "unknown")
    return "unknown"


def _dtype_name(dtypes: set[str]) -> str:
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    found = {names.get(d, d.lower()) for d in dtypes}
    return found.pop() if len(found) == 1 else "mixed"


# ---------------------------------------------------------------------------


def load_lora(path: str | os.PathLike) -> LoRA:
    """Read a LoRA file of any supported layout.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file. Pickle-based files (``.ckpt``, ``.pt``, ``.bin``)
        are refused, never unpickled.

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
    entries, header_metadata, start = read_safetensors_header(path)
    if not entries:
        raise LoraFormatError(path, "the file holds no tensors")
    keys = sorted(entries)
    layout = _detect_layout(keys)
    if layout is None:
        raise LoraFormatError(path, f"unknown layout: no LoRA key pattern recognised (first keys: {keys[:3]})")
    tensors, metadata = read_safetensors(path, _header=(entries, header_metadata, start))

    grouped, rest = _split_layout(path, layout, keys, metadata, tensors)
    modules: dict[str, LoraModule] = {}
    factor_dtypes: set[str] = set()
    for (part, mpath), roles in sorted(grouped.items()):
        name = f"{part}.{mpath}"
        arrays = {}
        for role, key in roles.items():
            dtype = entries[key][0] if key in entries else "F32"  # alphas from metadata are synthetic keys
            if dtype not in FLOAT_DTYPES:
                raise LoraFormatError(path, f"tensor {key!r}: dtype {dtype} is not a floating-point type")
            with np.errstate(over="ignore"):
                arr = tensors[key].astype(np.float32, copy=False)  # F64 beyond float32's range becomes inf here
            if not np.all(np.isfinite(arr)):
                raise LoraFormatError(path, f"tensor {key!r} holds NaN or Inf values (or values beyond float32)")
            if role not in ("alpha", "dora_scale"):
                factor_dtypes.add(dtype)
            arrays[role] = arr
        modules[name] = build_module(path, name, part, arrays)
        if "dora_scale" in roles:
            rest.append(roles["dora_scale"])
    if not modules:
        raise LoraFormatError(path, "unknown layout: no complete LoRA module found")
    lora = LoRA(
        path=path,
        format=layout,
        base="unknown",
        modules=dict(sorted(modules.items())),
        dtype=_dtype_name(factor_dtypes),
        metadata=metadata,
        extras={k: tensors[k] for k in sorted(rest)},
    )
    lora.base = _detect_base(lora.modules, metadata)
    return lora


def _split_layout(path, layout, keys, metadata, tensors) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    """Group keys into modules {(part, path): {role: key}} for one layout; return the other keys too."""
    if layout == "cloneofsimo":
        return _split_cloneofsimo(path, keys, metadata)
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
        _apply_peft_alpha(path, raw, metadata, tensors)
    grouped = {}
    for raw_name, roles in raw.items():
        if set(roles) <= {"alpha", "dora_scale"}:  # an alpha with no factors: not a module
            rest.extend(roles.values())
            continue
        key = canon(raw_name)
        if key in grouped:
            raise LoraFormatError(path, f"module {'.'.join(map(str, key))} appears twice under different key spellings")
        grouped[key] = roles
    # A prefix-less denoiser path (proj_out, img_in) is Flux's if the file has any Flux module.
    denoiser = "transformer" if any(part == "transformer" for part, _ in grouped) else "unet"
    return {(part or denoiser, mpath): roles for (part, mpath), roles in grouped.items()}, rest


def _apply_peft_alpha(path: str, raw: dict, metadata: dict[str, str], tensors: dict) -> None:
    """PEFT files keep lora_alpha outside the tensors; diffusers >= 0.35 puts it in metadata."""
    blob = metadata.get("lora_adapter_metadata")
    if not blob:
        return
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
                tensors[key] = np.asarray(float(alpha), dtype=np.float32)
                roles["alpha"] = key
                break


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
    dtype : numpy dtype, default=float32
    """
    if layout not in WRITE_LAYOUTS:
        raise ValueError(f"layout must be one of {list(WRITE_LAYOUTS)}, got {layout!r}")
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
    write_safetensors(path, tensors, meta)
