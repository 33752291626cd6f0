"""Tests for lorastyle.io.flux: Flux LoRAs of every layout come out in diffusers naming.

Independent references:

* the module names and (out, in) shapes of diffusers' ``FluxTransformer2DModel`` built on the meta
  device (no weights) from the FLUX.1-dev configuration (diffusers' defaults with
  ``guidance_embeds=True``; ``in_channels=128`` for the FLUX.1 Depth/Canny control LoRAs);
* diffusers' own converters (``_convert_kohya_flux_lora_to_diffusers``,
  ``_convert_xlabs_flux_lora_to_diffusers``): a BFL-named file and its diffusers conversion must load
  with the same module names and the same delta-W per module;
* key-to-shape skeletons of real Flux files (InvokeAI's test data in ``../shared/real-loras``);
* delta-W computed here with numpy from the stored tensors.
"""

import json
import math

import numpy as np
import pytest

from lorastyle.io.flux import canonical_flux_modules
from lorastyle.io.formats import LoraFormatError, load_lora
from lorastyle.io.safetensors import write_safetensors
from support import KEY_LAYOUTS

needs_layouts = pytest.mark.skipif(not KEY_LAYOUTS.is_dir(), reason=f"key layouts not found at {KEY_LAYOUTS}")
HIDDEN = 3072  # FLUX.1 dev/schnell: 24 heads x 128


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _flux_linears(**config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(guidance_embeds=True, **config)
    return {
        f"transformer.{name}": tuple(m.weight.shape)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


@pytest.fixture(scope="module")
def flux_dev():
    """transformer.<name>: (out, in) of every Linear of FLUX.1-dev."""
    table = _flux_linears()
    assert len(table) == 19 * 14 + 38 * 6 + 10  # double and single blocks, embedders and output layers
    assert table["transformer.single_transformer_blocks.0.proj_mlp"] == (4 * HIDDEN, HIDDEN)
    return table


@pytest.fixture(scope="module")
def flux_control():
    """The same for FLUX.1 Depth/Canny dev, whose x_embedder takes the image and the control latents."""
    return _flux_linears(in_channels=128, out_channels=64)


def write(path, tensors, metadata=None):
    write_safetensors(path, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata)
    return path


# --------------------------------------------------------------------------
# Key layouts of real files
# --------------------------------------------------------------------------

# name: number of transformer modules, counted by hand: a double block's img_attn.qkv and txt_attn.qkv
# become 3 modules each, a single block's linear1 4, XLabs' qkv 3, every other module 1.
FLUX_LAYOUTS = {
    "invokeai__flux_control_lora_format": 19 * 14 + 38 * 6 + 10,  # every Linear of the model
    "invokeai__flux_dora_onetrainer_format": 19 * 8 + 38 * 3,  # diffusers names already
    "invokeai__flux_lokr_bfl_format": 6,  # no shape fits a split (see below)
    "invokeai__flux_lora_aitoolkit_format": 19 * (6 + 2 * 3) + 38 * (1 + 4),
    "invokeai__flux_lora_diffusers_base_model_format": 19 * 10 + 38 * 5 + 1,  # diffusers names already
    "invokeai__flux_lora_diffusers_format": 19 * 14 + 38 * 6,
    "invokeai__flux_lora_diffusers_no_proj_mlp_format": 19 * 12 + 38 * 3,
    "invokeai__flux_lora_kohya_format": 19 * (8 + 2 * 3) + 38 * (2 + 4),
    "invokeai__flux_lora_kohya_with_te1_format": 19 * (8 + 2 * 3) + 38 * (2 + 4),
    "invokeai__flux_lora_xlabs_format": 3 * (2 + 2 * 3),
    "invokeai_stripped__flux_peft_base_model__peft_adapter_model": 19 * 10 + 38 * 5 + 1,
}
# The LoKr skeleton's Kronecker factors make (1024, 27648) for img_attn.qkv and (1024, 16384) for
# linear1, not a (3 h, h) or (3 h + m, h) shape: they keep their BFL names; its other modules are renamed.
LOKR_KEPT = {"transformer.double_blocks.0.img_attn.qkv", "transformer.single_blocks.0.linear1"}
DOWN = (".lora_A.weight", ".lora_down.weight", ".down.weight")
UP = (".lora_B.weight", ".lora_up.weight", ".up.weight")


def layout_file(path, name, rng, rank=2):
    """A safetensors file with the skeleton's keys and layer shapes, the LoRA rank cut to ``rank``."""
    keys = json.loads((KEY_LAYOUTS / f"{name}.json").read_text())["keys"]
    tensors = {}
    for key, shape in keys.items():
        shape = list(shape["shape"] if isinstance(shape, dict) else shape)
        if key.endswith(DOWN) and len(shape) == 2:
            shape[0] = min(shape[0], rank)
        elif key.endswith(UP) and len(shape) == 2:
            shape[1] = min(shape[1], rank)
        tensors[key] = np.full(shape, 4.0) if key.endswith(".alpha") else 0.01 * rng.standard_normal(shape)
    return write(path, tensors)


def test_layout_table_is_complete():
    if not KEY_LAYOUTS.is_dir():
        pytest.skip(f"key layouts not found at {KEY_LAYOUTS}")
    assert sorted(p.stem for p in KEY_LAYOUTS.glob("*flux*.json")) == sorted(FLUX_LAYOUTS)


@needs_layouts
@pytest.mark.parametrize("name", sorted(FLUX_LAYOUTS))
def test_every_flux_layout_has_diffusers_names(name, tmp_path, rng, flux_dev, flux_control):
    lora = load_lora(layout_file(tmp_path / f"{name}.safetensors", name, rng))
    assert lora.base == "flux"
    transformer = {n: m for n, m in lora.modules.items() if m.part == "transformer"}
    assert len(transformer) == FLUX_LAYOUTS[name]
    assert all(n.startswith("transformer.") for n in transformer)
    assert not [n for n, m in lora.modules.items() if m.part not in ("transformer", "text_encoder", "text_encoder_2")]
    table = flux_control if "control" in name else flux_dev
    if name == "invokeai__flux_lokr_bfl_format":
        assert set(transformer) - set(table) == LOKR_KEPT
        return  # its shapes are not Flux's
    assert sorted(set(transformer) - set(table)) == []
    assert {n: m.shape for n, m in transformer.items()} == {n: table[n] for n in transformer}
    if "control" in name:
        assert set(transformer) == set(table)


# --------------------------------------------------------------------------
# Equivalence with diffusers' own conversion
# --------------------------------------------------------------------------

# kohya module (lora_unet_<name>): (out, in), FLUX.1-dev shapes; one double and one single block
KOHYA_FLUX = {
    "double_blocks_0_img_attn_qkv": (3 * HIDDEN, HIDDEN),
    "double_blocks_0_img_attn_proj": (HIDDEN, HIDDEN),
    "double_blocks_0_img_mlp_0": (4 * HIDDEN, HIDDEN),
    "double_blocks_0_img_mlp_2": (HIDDEN, 4 * HIDDEN),
    "double_blocks_0_img_mod_lin": (6 * HIDDEN, HIDDEN),
    "double_blocks_0_txt_attn_qkv": (3 * HIDDEN, HIDDEN),
    "double_blocks_0_txt_attn_proj": (HIDDEN, HIDDEN),
    "double_blocks_0_txt_mlp_0": (4 * HIDDEN, HIDDEN),
    "double_blocks_0_txt_mlp_2": (HIDDEN, 4 * HIDDEN),
    "double_blocks_0_txt_mod_lin": (6 * HIDDEN, HIDDEN),
    "single_blocks_37_linear1": (7 * HIDDEN, HIDDEN),
    "single_blocks_37_linear2": (HIDDEN, 5 * HIDDEN),
    "single_blocks_37_modulation_lin": (3 * HIDDEN, HIDDEN),
    "img_in": (HIDDEN, 64),
    "txt_in": (HIDDEN, 4096),
    "time_in_in_layer": (HIDDEN, 256),
    "time_in_out_layer": (HIDDEN, HIDDEN),
    "vector_in_in_layer": (HIDDEN, 768),
    "vector_in_out_layer": (HIDDEN, HIDDEN),
    "guidance_in_in_layer": (HIDDEN, 256),
    "guidance_in_out_layer": (HIDDEN, HIDDEN),
    "final_layer_linear": (64, HIDDEN),
    "final_layer_adaLN_modulation_1": (2 * HIDDEN, HIDDEN),
}


def kohya_flux(rng, rank=4, alpha=6.0):
    """A kohya Flux state dict: rank 4, alpha 6 (scale 1.5, not a power of two, so baking it rounds)."""
    sd = {}
    for name, (out, inp) in KOHYA_FLUX.items():
        r = 6 if name == "double_blocks_0_txt_attn_qkv" else rank
        down = 0.05 * rng.standard_normal((r, inp))
        up = 0.05 * rng.standard_normal((out, r))
        if name == "double_blocks_0_txt_attn_qkv":
            # block-diagonal B: kohya's split_qkv, which diffusers converts to three rank-2 modules
            mask = np.kron(np.eye(3), np.ones((HIDDEN, 2)))
            up = up * mask
        sd[f"lora_unet_{name}.lora_down.weight"] = down
        sd[f"lora_unet_{name}.lora_up.weight"] = up
        # diffusers' converter drops the final layer's alphas (its "TODO: alphas"); alpha = rank means scale 1
        sd[f"lora_unet_{name}.alpha"] = np.asarray(float(r) if name.startswith("final_layer") else alpha)
    return {k: v.astype(np.float32) for k, v in sd.items()}


def _gram_distance(a, b):
    """||delta_a - delta_b||_F / ||delta_a||_F from the low-rank factors, in float64 (nothing materialised)."""
    terms = [(a.scale, a.up, a.down), (-b.scale, b.up, b.down)]
    prods = {}
    for i, (si, ui, di) in enumerate(terms):
        for j, (sj, uj, dj) in enumerate(terms):
            ui64, uj64, di64, dj64 = (x.astype(np.float64) for x in (ui, uj, di, dj))
            prods[i, j] = si * sj * np.sum((ui64.T @ uj64) * (di64 @ dj64.T))
    diff = prods[0, 0] + prods[1, 1] + 2 * prods[0, 1]
    return math.sqrt(max(diff, 0.0) / prods[0, 0])


def test_kohya_and_diffusers_conversion_load_the_same(tmp_path, rng):
    torch = pytest.importorskip("torch")
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    sd = kohya_flux(rng)
    converted = conversion._convert_kohya_flux_lora_to_diffusers({k: torch.from_numpy(v) for k, v in sd.items()})
    converted = {k: v.numpy() for k, v in converted.items()}
    assert "transformer.single_transformer_blocks.37.proj_mlp.lora_A.weight" in converted
    assert converted["transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight"].shape == (2, HIDDEN)

    bfl = load_lora(write(tmp_path / "kohya.safetensors", sd))
    ref = load_lora(write(tmp_path / "diffusers.safetensors", converted))
    assert (bfl.format, ref.format) == ("kohya", "diffusers-peft")
    assert bfl.base == ref.base == "flux"
    assert list(bfl.modules) == list(ref.modules)
    assert len(bfl.modules) == len(KOHYA_FLUX) + 2 + 2 + 3
    assert {m.part for m in bfl.modules.values()} == {"transformer"}
    for name, m in bfl.modules.items():
        assert m.shape == ref.modules[name].shape, name
        assert _gram_distance(m, ref.modules[name]) < 1e-6, name
    # the split modules, materialised
    for name in [n for n in bfl.modules if n.endswith(("to_q", "to_k", "to_v", "_proj"))]:
        a, b = bfl.modules[name].delta(), ref.modules[name].delta()
        assert a.shape == (HIDDEN, HIDDEN)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_xlabs_and_diffusers_conversion_load_the_same(tmp_path, rng):
    torch = pytest.importorskip("torch")
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    h = 16  # any hidden size: the split comes from the module's shape
    shapes = {
        "double_blocks.0.processor.qkv_lora1": (3 * h, h),
        "double_blocks.0.processor.qkv_lora2": (3 * h, h),
        "double_blocks.0.processor.proj_lora1": (h, h),
        "double_blocks.0.processor.proj_lora2": (h, h),
        "single_blocks.5.processor.qkv_lora": (3 * h, h),
        "single_blocks.5.processor.proj_lora": (h, 5 * h),
    }
    sd = {}
    for key, (out, inp) in shapes.items():
        sd[f"{key}.down.weight"] = rng.standard_normal((4, inp)).astype(np.float32)
        sd[f"{key}.up.weight"] = rng.standard_normal((out, 4)).astype(np.float32)
    converted = conversion._convert_xlabs_flux_lora_to_diffusers({k: torch.from_numpy(v) for k, v in sd.items()})
    bfl = load_lora(write(tmp_path / "xlabs.safetensors", sd))
    ref = load_lora(write(tmp_path / "diffusers.safetensors", {k: v.numpy() for k, v in converted.items()}))
    assert bfl.format == "xlabs"
    assert list(bfl.modules) == list(ref.modules)
    assert len(bfl.modules) == 3 + 3 + 2 + 3 + 1
    for name, m in bfl.modules.items():
        np.testing.assert_allclose(m.delta(), ref.modules[name].delta(), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------
# Splits, factors and what stays
# --------------------------------------------------------------------------

H = 16  # a small hidden size: the split sizes come from each module's in-features


def _fused_lora(rng, out, inp, rank=3):
    return rng.standard_normal((rank, inp)).astype(np.float32), rng.standard_normal((out, rank)).astype(np.float32)


def test_fused_lora_modules_split_by_rows_in_diffusers_order(tmp_path, rng):
    fused = {
        "double_blocks.2.img_attn.qkv": (3 * H, H),
        "double_blocks.2.txt_attn.qkv": (3 * H, H),
        "single_blocks.4.linear1": (3 * H + 4 * H, H),
        "final_layer.adaLN_modulation.1": (2 * H, H),
    }
    factors = {k: _fused_lora(rng, *shape) for k, shape in fused.items()}
    tensors = {}
    for key, (A, B) in factors.items():
        tensors[f"diffusion_model.{key}.lora_A.weight"] = A
        tensors[f"diffusion_model.{key}.lora_B.weight"] = B
        tensors[f"diffusion_model.{key}.alpha"] = np.asarray(6.0)
    lora = load_lora(write(tmp_path / "bfl.safetensors", tensors))
    assert lora.format == "ai-toolkit"
    expected_rows = {
        "double_blocks.2.img_attn.qkv": [
            ("transformer_blocks.2.attn.to_q", H),
            ("transformer_blocks.2.attn.to_k", H),
            ("transformer_blocks.2.attn.to_v", H),
        ],
        "double_blocks.2.txt_attn.qkv": [
            ("transformer_blocks.2.attn.add_q_proj", H),
            ("transformer_blocks.2.attn.add_k_proj", H),
            ("transformer_blocks.2.attn.add_v_proj", H),
        ],
        "single_blocks.4.linear1": [
            ("single_transformer_blocks.4.attn.to_q", H),
            ("single_transformer_blocks.4.attn.to_k", H),
            ("single_transformer_blocks.4.attn.to_v", H),
            ("single_transformer_blocks.4.proj_mlp", 4 * H),
        ],
    }
    assert sorted(lora.modules) == sorted(
        ["transformer." + n for rows in expected_rows.values() for n, _ in rows] + ["transformer.norm_out.linear"]
    )
    for key, rows in expected_rows.items():
        A, B = factors[key]
        delta = 2.0 * B.astype(np.float64) @ A  # alpha 6 / rank 3
        parts = [lora.modules[f"transformer.{n}"] for n, _ in rows]
        assert [m.shape[0] for m in parts] == [n for _, n in rows]
        np.testing.assert_allclose(np.vstack([m.delta() for m in parts]), delta, rtol=1e-5, atol=1e-5)
        start = 0
        for m, (_, n) in zip(parts, rows):
            assert (m.rank, m.alpha, m.scale, m.kind) == (3, 6.0, 2.0, "lora")
            np.testing.assert_array_equal(m.factors["lora_down"], A)  # shared
            np.testing.assert_array_equal(m.factors["lora_up"], B[start : start + n])  # row-sliced
            start += n
    # norm_out.linear holds BFL's (shift, scale) rows as (scale, shift)
    A, B = factors["final_layer.adaLN_modulation.1"]
    delta = 2.0 * B.astype(np.float64) @ A
    m = lora.modules["transformer.norm_out.linear"]
    np.testing.assert_allclose(m.delta(), np.vstack([delta[H:], delta[:H]]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(m.factors["lora_up"], np.vstack([B[H:], B[:H]]))


def test_loha_and_lokr_split_their_factors(tmp_path, rng):
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    tensors = {
        # LoHa on img_attn.qkv: (W1a W1b) * (W2a W2b), rows of W1a and W2a
        "lycoris_double_blocks_0_img_attn_qkv.hada_w1_a": f(3 * H, 2),
        "lycoris_double_blocks_0_img_attn_qkv.hada_w1_b": f(2, H),
        "lycoris_double_blocks_0_img_attn_qkv.hada_w2_a": f(3 * H, 2),
        "lycoris_double_blocks_0_img_attn_qkv.hada_w2_b": f(2, H),
        "lycoris_double_blocks_0_img_attn_qkv.alpha": np.asarray(2.0),
    }
    lora = load_lora(write(tmp_path / "loha.safetensors", tensors))
    t = {k.split(".")[-1]: v.astype(np.float64) for k, v in tensors.items()}
    delta = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    names = [f"transformer.transformer_blocks.0.attn.to_{p}" for p in "qkv"]
    assert list(lora.modules) == sorted(names)
    for i, name in enumerate(names):
        m = lora.modules[name]
        rows = slice(i * H, (i + 1) * H)
        np.testing.assert_allclose(m.delta(), delta[rows], rtol=1e-5, atol=1e-5)
        g = m.factors
        np.testing.assert_allclose(
            (g["hada_w1_a"] @ g["hada_w1_b"]) * (g["hada_w2_a"] @ g["hada_w2_b"]), delta[rows], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_array_equal(g["hada_w1_b"], tensors["lycoris_double_blocks_0_img_attn_qkv.hada_w1_b"])

    # LoKr on linear1 (3 h + 4 h = 112 rows): kron(W1 (7 x 4), W2 (16 x 4)); the bounds 16, 32, 48 are
    # multiples of W2's 16 rows, so W1's rows split (1, 1, 1, 4)
    w1, w2a, w2b = f(7, 4), f(16, 2), f(2, 4)
    tensors = {
        "diffusion_model.single_blocks.0.linear1.lokr_w1": w1,
        "diffusion_model.single_blocks.0.linear1.lokr_w2_a": w2a,
        "diffusion_model.single_blocks.0.linear1.lokr_w2_b": w2b,
        "diffusion_model.single_blocks.0.linear1.alpha": np.asarray(1.0),
    }
    lora = load_lora(write(tmp_path / "lokr.safetensors", tensors))
    delta = 0.5 * np.kron(w1.astype(np.float64), w2a @ w2b)  # alpha 1 / lora_dim 2
    names = [
        f"transformer.single_transformer_blocks.0.{p}" for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
    ]
    assert list(lora.modules) == sorted(names)
    for name, (a, b) in zip(names, [(0, 1), (1, 2), (2, 3), (3, 7)]):
        m = lora.modules[name]
        np.testing.assert_allclose(m.delta(), delta[a * H : b * H], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(m.factors["lokr_w1"], w1[a:b])
        np.testing.assert_array_equal(m.factors["lokr_w2_a"], w2a)
        assert (m.rank, m.scale) == (2, 0.5)

    # LoKr on img_attn.qkv with W2 of 24 rows: the bounds 16 and 32 cut through W2's blocks, so each split
    # module keeps the fused factors (what concat then reads), while delta-W is still split exactly
    w1, w2 = f(2, 4), f(24, 4)
    tensors = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lokr_w1": w1,
        "diffusion_model.double_blocks.0.img_attn.qkv.lokr_w2": w2,
    }
    lora = load_lora(write(tmp_path / "lokr2.safetensors", tensors))
    delta = np.kron(w1.astype(np.float64), w2)
    for i, p in enumerate("qkv"):
        m = lora.modules[f"transformer.transformer_blocks.0.attn.to_{p}"]
        np.testing.assert_allclose(m.delta(), delta[i * H : (i + 1) * H], rtol=1e-5, atol=1e-5)
        assert set(m.factors) == {"lokr_w1", "lokr_w2"}
        np.testing.assert_array_equal(m.factors["lokr_w1"], w1)
        np.testing.assert_array_equal(m.factors["lokr_w2"], w2)


def test_modules_that_do_not_fit_keep_their_names(tmp_path, rng):
    shapes = {
        "double_blocks.0.img_attn.qkv": (3 * H + 1, H),  # not 3 x in
        "single_blocks.0.linear1": (3 * H, H),  # no mlp rows
        "final_layer.adaLN_modulation.1": (2 * H + 2, H),  # not 2 x in
        "double_blocks.0.img_attn.norm.query_norm": (H, H),  # not a BFL Linear diffusers maps
        "single_blocks.0.img_attn.qkv": (3 * H, H),  # a double-block path in a single block
        "double_blocks.0.img_attn.proj": (H, H),
    }
    tensors = {}
    for key, (out, inp) in shapes.items():
        A, B = _fused_lora(rng, out, inp)
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = A, B
    lora = load_lora(write(tmp_path / "odd.safetensors", tensors))
    assert lora.base == "flux"
    expected = [f"transformer.{k}" for k in shapes if k != "double_blocks.0.img_attn.proj"]
    assert sorted(lora.modules) == sorted(expected + ["transformer.transformer_blocks.0.attn.to_out.0"])
    for key, (A, B) in ((k, (tensors[f"{k}.lora_A.weight"], tensors[f"{k}.lora_B.weight"])) for k in shapes):
        name = "transformer.transformer_blocks.0.attn.to_out.0" if key.endswith("proj") else f"transformer.{key}"
        np.testing.assert_allclose(lora.modules[name].delta(), B.astype(np.float64) @ A, rtol=1e-5, atol=1e-5)


def test_text_encoder_and_diffusers_named_modules_are_untouched(tmp_path, rng):
    tensors = {}
    keys = [
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_transformer_transformer_blocks_0_attn_to_q",  # OneTrainer: diffusers names
        "lora_unet_double_blocks_1_img_attn_proj",
    ]
    for key in keys:
        A, B = _fused_lora(rng, 12, 12)
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = A, B
    path = write(tmp_path / "mixed.safetensors", tensors)
    lora = load_lora(path)
    assert sorted(lora.modules) == [
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
        "transformer.transformer_blocks.0.attn.to_q",
        "transformer.transformer_blocks.1.attn.to_out.0",
    ]
    again = canonical_flux_modules(lora.modules, str(path))
    assert list(again) == list(lora.modules)
    assert all(again[n] is lora.modules[n] for n in again)  # diffusers names in, same objects out


def test_a_layer_in_both_namings_is_refused(tmp_path, rng):
    tensors = {}
    for key, (out, inp) in {
        "transformer.transformer_blocks.0.attn.to_q": (H, H),
        "transformer.double_blocks.0.img_attn.qkv": (3 * H, H),
    }.items():
        A, B = _fused_lora(rng, out, inp)
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = A, B
    with pytest.raises(LoraFormatError, match=r"both the Flux module transformer\.transformer_blocks\.0\.attn\.to_q"):
        load_lora(write(tmp_path / "both.safetensors", tensors))


def test_non_flux_files_are_not_renamed(tmp_path, rng):
    # a U-Net has no img_in or final_layer, but a file declared as another base keeps every name
    A, B = _fused_lora(rng, 3 * H, H)
    path = write(
        tmp_path / "tiny.safetensors",
        {
            "transformer.double_blocks.0.img_attn.qkv.lora_A.weight": A,
            "transformer.double_blocks.0.img_attn.qkv.lora_B.weight": B,
        },
        {"lorastyle.base": "tiny"},
    )
    lora = load_lora(path)
    assert lora.base == "tiny"
    assert list(lora.modules) == ["transformer.double_blocks.0.img_attn.qkv"]
