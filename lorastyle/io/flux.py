"""Flux LoRA modules in one naming: diffusers' ``FluxTransformer2DModel`` paths, fused projections split.

Flux LoRAs come in two namings. Black Forest Labs' (kohya ``lora_unet_double_blocks_0_img_attn_qkv``,
XLabs, LyCORIS ``diffusion_model.``, ai-toolkit, the BFL control LoRAs) names the layers of BFL's
reference model, which fuses projections that diffusers keeps apart: ``img_attn.qkv`` holds the rows
of ``to_q``, ``to_k``, ``to_v`` and a single block's ``linear1`` the rows of ``to_q``, ``to_k``,
``to_v``, ``proj_mlp``. Because delta-W = ``scale * up @ down``, the rows of a fused delta-W are the
rows of ``up`` with the same ``down``, so splitting ``up`` by rows (``down``, rank, alpha and scale
unchanged) is exact, and every module gets its diffusers name.

The correspondence is the one of diffusers' own converters
(``diffusers.loaders.lora_conversion_utils``: ``_convert_kohya_flux_lora_to_diffusers``,
``_convert_xlabs_flux_lora_to_diffusers``, ``_convert_bfl_flux_control_lora_to_diffusers``):

==========================================  ==========================================================  =====
BFL path                                    diffusers path                                              rows
==========================================  ==========================================================  =====
``double_blocks.{i}.img_attn.qkv``          ``transformer_blocks.{i}.attn.to_q``, ``to_k``, ``to_v``    (1)
``double_blocks.{i}.txt_attn.qkv``          ``... .attn.add_q_proj``, ``add_k_proj``, ``add_v_proj``    (1)
``double_blocks.{i}.img_attn.proj``         ``... .attn.to_out.0``
``double_blocks.{i}.txt_attn.proj``         ``... .attn.to_add_out``
``double_blocks.{i}.img_mlp.0``, ``.2``     ``... .ff.net.0.proj``, ``... .ff.net.2``
``double_blocks.{i}.txt_mlp.0``, ``.2``     ``... .ff_context.net.0.proj``, ``... .ff_context.net.2``
``double_blocks.{i}.img_mod.lin``           ``... .norm1.linear``
``double_blocks.{i}.txt_mod.lin``           ``... .norm1_context.linear``
``single_blocks.{i}.linear1``               ``single_transformer_blocks.{i}.attn.to_q``, ``to_k``,      (2)
                                            ``to_v``, ``... .proj_mlp``
``single_blocks.{i}.linear2``               ``... .proj_out``
``single_blocks.{i}.modulation.lin``        ``... .norm.linear``
``single_blocks.{i}.qkv`` (XLabs)           ``... .attn.to_q``, ``to_k``, ``to_v``                      (1)
``single_blocks.{i}.proj`` (XLabs)          ``... .proj_out``
``img_in``, ``txt_in``                      ``x_embedder``, ``context_embedder``
``time_in.in_layer``, ``.out_layer``        ``time_text_embed.timestep_embedder.linear_1``, ``_2``
``vector_in.in_layer``, ``.out_layer``      ``time_text_embed.text_embedder.linear_1``, ``_2``
``guidance_in.in_layer``, ``.out_layer``    ``time_text_embed.guidance_embedder.linear_1``, ``_2``
``final_layer.linear``                      ``proj_out``
``final_layer.adaLN_modulation.1``          ``norm_out.linear``                                         (3)
==========================================  ==========================================================  =====

Rows of ``up``, with ``in`` the module's in-features (Flux's hidden size, 3072 for dev and schnell):
(1) split in three blocks of ``in`` rows, the module must have ``out = 3 in``; (2) split in
``in, in, in, out - 3 in`` rows (3072, 3072, 3072, 12288), the module must have ``out > 3 in``;
(3) the two halves of rows swapped, the module must have ``out = 2 in``.

BFL's final layer computes ``shift, scale = adaLN_modulation(vec).chunk(2)``, diffusers'
``AdaLayerNormContinuous`` ``scale, shift = linear(emb).chunk(2)``: ``norm_out.linear`` holds the two
halves of rows in the other order (diffusers' ``swap_scale_shift``), applied here to ``up`` only, as
the kohya converter does (the control-LoRA converter also swaps the rows of ``lora_A``, which changes
delta-W).

Kept under their own name (never guessed): a fused module whose shape does not fit the rule in the
table (the split sizes come from its in-features, the hidden size), every BFL path not in the table,
and every path already in diffusers naming. Text-encoder modules are not touched.

Factors (the raw tensors the ``concat`` descriptor reads) follow the rows of ``up``: a LoRA's
``lora_up`` and a LoHa's ``hada_w1_a``, ``hada_w2_a`` are row-sliced, ``lora_down`` and the other
factors are shared. A LoKr's rows are ``kron(W1, W2)``'s: a block of rows is ``kron(W1[rows], W2)``
when its bounds are multiples of W2's row count, and then ``lokr_w1`` (or ``lokr_w1_a``) is sliced;
otherwise each split module keeps the fused module's factors unchanged, so ``concat`` sees the fused
factors once per split module (3 or 4 times), while ``up``/``down`` (what ``delta`` and ``gram`` read)
are still the exact split.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..errors import LoraFormatError

if TYPE_CHECKING:
    from .formats import LoraModule

__all__ = ["canonical_flux_modules"]

_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
# BFL sub-path -> diffusers sub-paths, the row rule of the split (see _row_blocks)
_DOUBLE = {
    "img_attn.qkv": (_QKV, "qkv"),
    "txt_attn.qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "qkv"),
    "img_attn.proj": (("attn.to_out.0",), None),
    "txt_attn.proj": (("attn.to_add_out",), None),
    "img_mlp.0": (("ff.net.0.proj",), None),
    "img_mlp.2": (("ff.net.2",), None),
    "txt_mlp.0": (("ff_context.net.0.proj",), None),
    "txt_mlp.2": (("ff_context.net.2",), None),
    "img_mod.lin": (("norm1.linear",), None),
    "txt_mod.lin": (("norm1_context.linear",), None),
}
_SINGLE = {
    "linear1": ((*_QKV, "proj_mlp"), "qkv_mlp"),
    "linear2": (("proj_out",), None),
    "modulation.lin": (("norm.linear",), None),
    "qkv": (_QKV, "qkv"),  # XLabs: a LoRA on the q, k, v rows of linear1
    "proj": (("proj_out",), None),  # XLabs: on linear2
}
_GLOBAL = {
    "img_in": (("x_embedder",), None),
    "txt_in": (("context_embedder",), None),
    "time_in.in_layer": (("time_text_embed.timestep_embedder.linear_1",), None),
    "time_in.out_layer": (("time_text_embed.timestep_embedder.linear_2",), None),
    "vector_in.in_layer": (("time_text_embed.text_embedder.linear_1",), None),
    "vector_in.out_layer": (("time_text_embed.text_embedder.linear_2",), None),
    "guidance_in.in_layer": (("time_text_embed.guidance_embedder.linear_1",), None),
    "guidance_in.out_layer": (("time_text_embed.guidance_embedder.linear_2",), None),
    "final_layer.linear": (("proj_out",), None),
    "final_layer.adaLN_modulation.1": (("norm_out.linear",), "swap_halves"),
}
_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")


def _target(path: str) -> tuple[list[str], str | None] | None:
    """Diffusers paths and row rule of a BFL transformer path; None when it is not one of the table."""
    path = path.removeprefix("diffusion_model.")
    m = _BLOCK.match(path)
    if m:
        kind, index, sub = m.groups()
        table, prefix = (
            (_DOUBLE, f"transformer_blocks.{index}.")
            if kind == "double_blocks"
            else (_SINGLE, f"single_transformer_blocks.{index}.")
        )
        if sub not in table:
            return None
        subs, rule = table[sub]
        return [prefix + s for s in subs], rule
    if path in _GLOBAL:
        subs, rule = _GLOBAL[path]
        return list(subs), rule
    return None


def _row_blocks(rule: str | None, out: int, inner: int) -> list[list[tuple[int, int]]] | None:
    """For each diffusers module, the row ranges of the BFL module's delta-W it consists of, in order.

    ``inner`` is the module's in-features: Flux's hidden size for every fused module. None when the
    shape does not fit the rule.
    """
    if rule is None:
        return [[(0, out)]]
    if rule == "qkv":
        if out != 3 * inner:
            return None
        return [[(i * inner, (i + 1) * inner)] for i in range(3)]
    if rule == "qkv_mlp":
        if out <= 3 * inner:
            return None
        return [[(i * inner, (i + 1) * inner)] for i in range(3)] + [[(3 * inner, out)]]
    if rule == "swap_halves":
        if out != 2 * inner:
            return None
        return [[(inner, out), (0, inner)]]
    raise ValueError(f"unknown row rule {rule!r}")


def _take_rows(arr: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    if len(ranges) == 1:
        return arr[ranges[0][0] : ranges[0][1]]
    return np.concatenate([arr[a:b] for a, b in ranges], axis=0)


def _split_factors(m: LoraModule, ranges: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The stored factors of the rows ``ranges`` of ``m``; the fused factors when they cannot be split."""
    out = m.shape[0]
    f = m.factors
    if m.kind == "lora" and "lora_up" in f and f["lora_up"].shape[0] == out:
        return {**f, "lora_up": _take_rows(f["lora_up"], ranges)}
    if m.kind == "loha" and all(k in f and f[k].shape[0] == out for k in ("hada_w1_a", "hada_w2_a")):
        return {**f, **{k: _take_rows(f[k], ranges) for k in ("hada_w1_a", "hada_w2_a")}}
    if m.kind == "lokr":
        rows1 = "lokr_w1" if "lokr_w1" in f else "lokr_w1_a"
        rows2 = "lokr_w2" if "lokr_w2" in f else "lokr_w2_a"
        if rows1 in f and rows2 in f:
            c = f[rows2].shape[0]  # kron(W1, W2)[i1 * c + i2] = W1[i1] (x) W2[i2]
            if f[rows1].shape[0] * c == out and all(a % c == 0 and b % c == 0 for a, b in ranges):
                return {**f, rows1: _take_rows(f[rows1], [(a // c, b // c) for a, b in ranges])}
    return f


def _split(path: str, m: LoraModule, name: str, ranges: list[tuple[int, int]]) -> LoraModule:
    if ranges == [(0, m.shape[0])]:  # a renamed module: the same factors
        return replace(m, name=name, part="transformer")
    factors = _split_factors(m, ranges)
    # factors that could not be split stay fused: the module is then the rows ``ranges`` of their delta-W
    rows = tuple(ranges) if factors is m.factors else None
    return replace(
        m, name=name, part="transformer", factors=factors, rows=rows, out_features=sum(b - a for a, b in ranges)
    )


def canonical_flux_modules(modules: dict[str, LoraModule], path: str) -> dict[str, LoraModule]:
    """A Flux LoRA's modules with every BFL transformer module in diffusers naming, fused ones split.

    Parameters
    ----------
    modules : dict of str to LoraModule
        Keyed by canonical name ``<part>.<path>``, as :func:`lorastyle.io.formats.load_lora` builds
        them for a file of base family ``flux``.
    path : str
        The file, for error messages.

    Returns
    -------
    dict of str to LoraModule
        Sorted by name. Modules already in diffusers naming, text-encoder modules and modules kept
        under their BFL name (see the module docstring) are the same objects.

    Raises
    ------
    LoraFormatError
        When two modules of the file become the same diffusers module (a file holding a layer in both
        namings), or a split module's dense delta-W overflows float32.
    """
    result: dict[str, LoraModule] = {}
    source: dict[str, str] = {}
    for name, m in modules.items():
        new = [(name, m)]
        part, _, mpath = name.partition(".")
        # kohya's lora_unet_img_in, lora_unet_final_layer_linear ... are read as part unet: Flux's too
        if part == "transformer" or (part == "unet" and mpath.removeprefix("diffusion_model.") in _GLOBAL):
            target = _target(mpath)
            blocks = _row_blocks(target[1], *m.shape) if target else None
            if target and blocks:
                names = [f"transformer.{p}" for p in target[0]]
                new = [(n, _split(path, m, n, rows)) for n, rows in zip(names, blocks)]
        for new_name, module in new:
            if new_name in result:
                raise LoraFormatError(
                    path, f"modules {source[new_name]} and {name} are both the Flux module {new_name}"
                )
            result[new_name] = module
            source[new_name] = name
    return dict(sorted(result.items()))
