"""Module names: from the many spellings of LoRA files to diffusers paths.

kohya-ss writes ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``:
the module path with every ``.`` turned into ``_``. Undoing that needs to know
which underscores belong to a name (``down_blocks``, ``to_q``) and which were
dots; :data:`COMPOUND_WORDS` lists the names of the models we read. Stable
Diffusion's original (SGM/LDM) layout (``input_blocks.4.1``) is mapped onto the
diffusers layout (``down_blocks.1.attentions.0``) so that files of both
spellings describe the same modules.

Canonical names are ``<part>.<path>``, where part is ``unet``,
``text_encoder``, ``text_encoder_2`` or ``transformer`` (Flux). Flux paths end
in diffusers naming (``transformer_blocks.0.attn.to_q``): :func:`unmangle`
gives BFL paths (``double_blocks.0.img_attn.qkv``) for kohya names, and
:func:`lorastyle.io.flux.canonical_flux_modules` renames them and splits the
fused projections by rows of the up factor, which is exact.
"""

from __future__ import annotations

import re

__all__ = ["COMPOUND_WORDS", "unmangle", "sgm_to_diffusers", "module_group"]

# Names that contain underscores, longest first within each length class.
COMPOUND_WORDS = sorted(
    {
        # SD U-Net (diffusers)
        "down_blocks",
        "up_blocks",
        "mid_block",
        "transformer_blocks",
        "proj_in",
        "proj_out",
        "to_q",
        "to_k",
        "to_v",
        "to_out",
        "time_emb_proj",
        "conv_shortcut",
        "conv_in",
        "conv_out",
        "time_embedding",
        "linear_1",
        "linear_2",
        "add_embedding",
        "conv_norm_out",
        "add_k_proj",
        "add_v_proj",
        "add_q_proj",
        "to_add_out",
        # SD U-Net (SGM / original)
        "input_blocks",
        "middle_block",
        "output_blocks",
        "in_layers",
        "out_layers",
        "emb_layers",
        "skip_connection",
        "time_embed",
        "label_emb",
        # CLIP / T5 text encoders
        "text_model",
        "self_attn",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "final_layer_norm",
        "token_embedding",
        "position_embedding",
        "text_projection",
        "layer_norm1",
        "layer_norm2",
        "SelfAttention",
        "DenseReluDense",
        # Flux (BFL and diffusers)
        "double_blocks",
        "single_blocks",
        "img_attn",
        "txt_attn",
        "img_mlp",
        "txt_mlp",
        "img_mod",
        "txt_mod",
        "final_layer",
        "adaLN_modulation",
        "img_in",
        "txt_in",
        "time_in",
        "vector_in",
        "guidance_in",
        "in_layer",
        "out_layer",
        "key_norm",
        "query_norm",
        "single_transformer_blocks",
        "ff_context",
        "norm1_context",
        "proj_mlp",
        "time_text_embed",
        "norm_out",
        "x_embedder",
        "context_embedder",
        "timestep_embedder",
        "text_embedder",
        "guidance_embedder",
        "norm_q",
        "norm_k",
        "norm_added_q",
        "norm_added_k",
    },
    key=lambda w: (-w.count("_"), w),
)
_COMPOUND_TOKENS = [tuple(w.split("_")) for w in COMPOUND_WORDS]
# the compounds by their first word, longest first (a file's every module name is unmangled: ~1,000 in SDXL)
_COMPOUNDS_BY_FIRST: dict[str, list[tuple[str, ...]]] = {}
for _words in _COMPOUND_TOKENS:
    _COMPOUNDS_BY_FIRST.setdefault(_words[0], []).append(_words)


def unmangle(name: str) -> str:
    """Turn a kohya-style underscored module path back into a dotted path.

    Parameters
    ----------
    name : str
        For example ``down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0``.

    Returns
    -------
    str
        For example ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0``.
    """
    tokens = name.split("_")
    out = []
    i = 0
    while i < len(tokens):
        for words in _COMPOUNDS_BY_FIRST.get(tokens[i], ()):  # longest compounds first
            if tuple(tokens[i : i + len(words)]) == words:
                out.append("_".join(words))
                i += len(words)
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


_RESNET_SUBLAYERS = {
    "in_layers.2": "conv1",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
    "in_layers.0": "norm1",
    "out_layers.0": "norm2",
}


def _resnet_or_attention(rest: str, layer: int) -> str:
    """Name the sub-module ``rest`` (after ``<block>.<sub>.``) of an SGM block."""
    for old, new in _RESNET_SUBLAYERS.items():
        if rest == old or rest.startswith(old + "."):
            return f"resnets.{layer}.{new}{rest[len(old) :]}"
    return ""


def sgm_to_diffusers(path: str, layers_per_block: int = 2) -> str:
    """Map an SGM/LDM U-Net path (``input_blocks.4.1...``) to the diffusers layout.

    Parameters
    ----------
    path : str
        A dotted path inside the U-Net. Paths that are not SGM are returned unchanged.
    layers_per_block : int, default=2
        ResNet layers per down block (2 for SD 1.x, 2.x and SDXL).

    Returns
    -------
    str
    """
    m = re.match(r"(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?\.(.*)$", path)
    if not m:
        return path
    kind, index, sub, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if kind == "middle_block":
        # middle_block.0 and .2 are ResNets around the attention at .1
        if index == 1:
            return f"mid_block.attentions.0.{sub + '.' if sub else ''}{rest}"
        return (
            _resnet_or_attention(f"{sub}.{rest}" if sub else rest, index // 2).replace(
                "resnets.", "mid_block.resnets.", 1
            )
            or path
        )
    sub_index = int(sub) if sub is not None else 0
    if kind == "input_blocks":
        if index == 0:
            return f"conv_in.{rest}" if sub is None else path
        block, layer = divmod(index - 1, layers_per_block + 1)
        prefix = f"down_blocks.{block}."
        if layer == layers_per_block:  # the downsampler: input_blocks.3.0.op
            return prefix + "downsamplers.0." + rest.replace("op", "conv", 1)
    else:
        block, layer = divmod(index, layers_per_block + 1)
        prefix = f"up_blocks.{block}."
    if sub_index == 0:
        mapped = _resnet_or_attention(rest, layer)
        return prefix + mapped if mapped else path
    if rest.startswith("conv"):  # output_blocks.k.1 or .2: the upsampler's conv
        return prefix + "upsamplers.0." + rest
    return prefix + f"attentions.{layer}.{rest}"


def module_group(name: str) -> tuple[str, str | None]:
    """Classify a canonical module name by layer type and U-Net stage.

    Parameters
    ----------
    name : str
        Canonical name such as ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``.

    Returns
    -------
    layer : {"self_attention", "cross_attention", "feed_forward", "other"}
        ``attn1`` and CLIP/T5 self-attention are self-attention, ``attn2`` is
        cross-attention, ``ff`` and text-encoder MLPs are feed-forward. Flux's
        joint attention counts as self-attention.
    block : {"down", "mid", "up"} or None
        The U-Net stage; None outside a U-Net.
    """
    parts = name.split(".")
    if "attn2" in parts:
        layer = "cross_attention"
    elif (
        "attn1" in parts
        or "self_attn" in parts
        or "SelfAttention" in parts
        or "attn" in parts
        or "img_attn" in parts
        or "txt_attn" in parts
    ):
        layer = "self_attention"
    elif {"ff", "mlp", "ff_context", "img_mlp", "txt_mlp", "DenseReluDense", "proj_mlp"} & set(parts):
        layer = "feed_forward"
    else:
        layer = "other"
    block = None
    for stage, key in (("down", "down_blocks"), ("mid", "mid_block"), ("up", "up_blocks")):
        if key in parts:
            block = stage
    return layer, block
