"""Module-name canonicalisation on worked examples."""

import pytest

from lorastyle.io.naming import module_group, sgm_to_diffusers, unmangle


@pytest.mark.parametrize(
    "mangled, dotted",
    [
        (
            "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ),
        (
            "mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
        ),
        ("up_blocks_3_resnets_2_time_emb_proj", "up_blocks.3.resnets.2.time_emb_proj"),
        ("text_model_encoder_layers_11_self_attn_q_proj", "text_model.encoder.layers.11.self_attn.q_proj"),
        ("input_blocks_4_1_transformer_blocks_1_attn2_to_k", "input_blocks.4.1.transformer_blocks.1.attn2.to_k"),
        ("double_blocks_0_img_attn_qkv", "double_blocks.0.img_attn.qkv"),
        ("single_transformer_blocks_3_proj_mlp", "single_transformer_blocks.3.proj_mlp"),
        ("transformer_blocks_9_norm1_context_linear", "transformer_blocks.9.norm1_context.linear"),
    ],
)
def test_unmangle(mangled, dotted):
    assert unmangle(mangled) == dotted


@pytest.mark.parametrize(
    "sgm, diffusers",
    [
        # SD/SDXL: input_blocks 1,2 -> down_blocks.0 layers 0,1; 3 -> its downsampler; 4,5 -> down_blocks.1 ...
        ("input_blocks.1.0.in_layers.2", "down_blocks.0.resnets.0.conv1"),
        ("input_blocks.2.0.emb_layers.1", "down_blocks.0.resnets.1.time_emb_proj"),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
        (
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        ("input_blocks.8.1.proj_in", "down_blocks.2.attentions.1.proj_in"),
        ("input_blocks.4.0.skip_connection", "down_blocks.1.resnets.0.conv_shortcut"),
        ("middle_block.0.out_layers.3", "mid_block.resnets.0.conv2"),
        ("middle_block.1.transformer_blocks.3.ff.net.2", "mid_block.attentions.0.transformer_blocks.3.ff.net.2"),
        ("middle_block.2.in_layers.2", "mid_block.resnets.1.conv1"),
        # output_blocks k -> up_blocks.(k // 3), layer k % 3
        ("output_blocks.0.0.in_layers.2", "up_blocks.0.resnets.0.conv1"),
        (
            "output_blocks.5.1.transformer_blocks.1.attn2.to_v",
            "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_v",
        ),
        ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
        ("down_blocks.0.attentions.0.proj_in", "down_blocks.0.attentions.0.proj_in"),  # already diffusers
    ],
)
def test_sgm_to_diffusers(sgm, diffusers):
    assert sgm_to_diffusers(sgm) == diffusers


@pytest.mark.parametrize(
    "name, group",
    [
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", ("self_attention", "down")),
        ("unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0", ("cross_attention", "up")),
        ("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.2", ("feed_forward", "mid")),
        ("unet.down_blocks.0.resnets.0.conv1", ("other", "down")),
        ("text_encoder.text_model.encoder.layers.0.mlp.fc1", ("feed_forward", None)),
        ("text_encoder.text_model.encoder.layers.0.self_attn.k_proj", ("self_attention", None)),
        ("transformer.double_blocks.0.img_attn.qkv", ("self_attention", None)),
    ],
)
def test_module_group(name, group):
    assert module_group(name) == group
