"""Tests for lorastyle.io.formats: reading every LoRA layout into one normalised object.

Independent references:

* real LoRA files from public repositories (``../shared/real-loras``), with
  the expected summary written out by hand from that folder's MANIFEST.md;
* the layer shapes of Stable Diffusion 1.5 and SDXL U-Nets built by diffusers
  on the meta device (no weights), and CLIP text-encoder shapes written by hand:
  every canonical module name must exist there with the same (out, in) shape;
* key-to-shape skeletons of real files (InvokeAI's test data) rebuilt as
  synthetic safetensors files written by the ``safetensors`` library;
* delta-W computed in the test with numpy from the raw stored tensors.
"""

import json
import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from lorastyle.io.formats import LoraFormatError, load_lora, save_lora
from lorastyle.io.safetensors import write_safetensors
from support import REAL_LORAS as REAL

LAYOUTS = REAL / "key-layouts"
real_loras = pytest.mark.real_loras
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real LoRA files not found at {REAL}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------
# Reference layer shapes
# --------------------------------------------------------------------------


def clip_shapes(hidden, intermediate, layers):
    """(out, in) of every CLIP text-encoder Linear a LoRA adapts, by hand."""
    table = {}
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            table[p + "self_attn." + proj] = (hidden, hidden)
        table[p + "mlp.fc1"] = (intermediate, hidden)
        table[p + "mlp.fc2"] = (hidden, intermediate)
    return table


SD1_TEXT = clip_shapes(768, 3072, 12)  # CLIP ViT-L/14 text model
SDXL_TEXT_2 = clip_shapes(1280, 5120, 32)  # OpenCLIP ViT-bigG/14 text model


def _meta_unet_shapes(**config):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**config)
    table = {}
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            shape = tuple(module.weight.shape)
            table[name] = (shape[0], math.prod(shape[1:]))  # convs flattened: (out, in*kh*kw)
    return table


@pytest.fixture(scope="module")
def sd15_unet():
    table = _meta_unet_shapes(
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    # Known SD 1.5 layers, as a check on the reference itself
    assert table["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == (320, 768)
    assert table["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"] == (2560, 320)
    assert table["mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"] == (10240, 1280)
    assert table["mid_block.attentions.0.transformer_blocks.0.attn1.to_q"] == (1280, 1280)
    assert table["down_blocks.0.attentions.0.proj_in"] == (320, 320)
    assert table["down_blocks.1.resnets.0.conv1"] == (640, 320 * 9)
    return table


@pytest.fixture(scope="module")
def sdxl_unet():
    table = _meta_unet_shapes(
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    assert table["down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k"] == (1280, 2048)
    assert table["down_blocks.1.attentions.0.proj_in"] == (640, 640)
    return table


def shape_mismatches(lora, tables):
    """Modules whose canonical name is missing from the reference or has another (out, in)."""
    bad = []
    for name, module in lora.modules.items():
        part, path = name.split(".", 1)
        ref = tables[part].get(path)
        if ref != module.shape:
            bad.append((name, module.shape, ref))
    return bad


# --------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------

TE_UNET = ["text_encoder", "unet"]
# From ../shared/real-loras/MANIFEST.md. Module counts follow from its tensor counts:
# cloneofsimo 384 tensors = 192 x (up, down); diffusers legacy 256 = 128 x (up, down);
# LoKr 1750 = 350 x (alpha, w1_a, w1_b, w2_a, w2_b). All are SD 1.x LoRAs.
REAL_EXPECTED = {
    # file: (format, base, parts, n_modules, ranks, alphas, dtype, n_tensors)
    "cloneofsimo_rank4__analog_svd_rank4.safetensors": ("cloneofsimo", "sd1", TE_UNET, 192, [4], [], "float16", 384),
    "cloneofsimo_rank1_with_ti__lora_disney.safetensors": ("cloneofsimo", "sd1", TE_UNET, 192, [1], [], "float32", 386),
    # mixed file: F16 LoRA factors, F32 token embeddings; dtype names the factors
    "cloneofsimo_rank1_with_ti__lora_disney_inpainting.safetensors": (
        "cloneofsimo",
        "sd1",
        TE_UNET,
        192,
        [1],
        [],
        "float16",
        386,
    ),
    "diffusers_legacy_attnproc_sd15__catundchat.safetensors": (
        "diffusers-legacy",
        "sd1",
        ["unet"],
        128,
        [4],
        [],
        "float32",
        256,
    ),
    "lycoris_lokr_sd1_dim4__smart_falcon_4_lokr.safetensors": (
        "lycoris-lokr",
        "sd1",
        TE_UNET,
        350,
        [4],
        [4.0],
        "float16",
        1750,
    ),
    "lycoris_lokr_sd1_dim8__smart_falcon_8_lokr.safetensors": (
        "lycoris-lokr",
        "sd1",
        TE_UNET,
        350,
        [8],
        [8.0],
        "float16",
        1750,
    ),
    "lycoris_lokr_sd1_dim16__smart_falcon_16_lokr.safetensors": (
        "lycoris-lokr",
        "sd1",
        TE_UNET,
        350,
        [16],
        [16.0],
        "float16",
        1750,
    ),
}


@real_loras
@needs_real
def test_every_real_file_has_an_expected_row():
    assert sorted(p.name for p in REAL.glob("*.safetensors")) == sorted(REAL_EXPECTED)


@real_loras
@needs_real
@pytest.mark.parametrize("name", sorted(REAL_EXPECTED))
def test_real_file_summary(name):
    fmt, base, parts, n_modules, ranks, alphas, dtype, n_tensors = REAL_EXPECTED[name]
    path = REAL / name
    with safe_open(str(path), "np") as fh:
        assert len(list(fh.keys())) == n_tensors
    lora = load_lora(path)
    assert lora.summary() == {
        "format": fmt,
        "base": base,
        "parts": parts,
        "n_modules": n_modules,
        "ranks": ranks,
        "alphas": alphas,
        "dtype": dtype,
    }
    assert lora.path == str(path)
    assert all(m.rank == ranks[0] for m in lora.modules.values())


@real_loras
@needs_real
@pytest.mark.parametrize("name", sorted(REAL_EXPECTED))
def test_real_file_module_names_have_sd15_shapes(name, sd15_unet):
    lora = load_lora(REAL / name)
    assert shape_mismatches(lora, {"unet": sd15_unet, "text_encoder": SD1_TEXT}) == []


@real_loras
@needs_real
@pytest.mark.parametrize(
    "name",
    [
        "cloneofsimo_rank1_with_ti__lora_disney.safetensors",
        "cloneofsimo_rank1_with_ti__lora_disney_inpainting.safetensors",
    ],
)
def test_textual_inversion_tokens_kept_as_extras(name):
    path = REAL / name
    lora = load_lora(path)
    raw = safetensors.numpy.load_file(str(path))
    assert set(lora.extras) == {"<s1>", "<s2>"}
    for token in ("<s1>", "<s2>"):
        assert lora.extras[token].shape == (768,)
        np.testing.assert_array_equal(lora.extras[token], raw[token])
    assert all(m.part in ("unet", "text_encoder") for m in lora.modules.values())


@real_loras
@needs_real
def test_cloneofsimo_names_cover_every_attention_block(sd15_unet):
    # GEGLU targets: attn1 (4) + ff.net.0.proj + attn2 (4) in each of 16 transformer blocks,
    # and q, k, v, out of the 12 CLIP layers.
    lora = load_lora(REAL / "cloneofsimo_rank4__analog_svd_rank4.safetensors")
    blocks = [n.removesuffix(".attn1.to_q") for n in sd15_unet if n.endswith("transformer_blocks.0.attn1.to_q")]
    assert len(blocks) == 16
    expected = {
        f"unet.{b}.{leaf}"
        for b in blocks
        for leaf in (
            "attn1.to_q",
            "attn1.to_k",
            "attn1.to_v",
            "attn1.to_out.0",
            "ff.net.0.proj",
            "attn2.to_q",
            "attn2.to_k",
            "attn2.to_v",
            "attn2.to_out.0",
        )
    }
    expected |= {f"text_encoder.{n}" for n in SD1_TEXT if "self_attn" in n}
    assert set(lora.modules) == expected


@real_loras
@needs_real
def test_cloneofsimo_factors_are_the_stored_tensors():
    path = REAL / "cloneofsimo_rank4__analog_svd_rank4.safetensors"
    raw = safetensors.numpy.load_file(str(path))
    lora = load_lora(path)
    # index 0 of the text encoder is layer 0's k_proj (CLIPAttention defines k, v, q, out)
    m = lora.modules["text_encoder.text_model.encoder.layers.0.self_attn.k_proj"]
    np.testing.assert_array_equal(m.down, raw["text_encoder:0:down"].astype(np.float32))
    np.testing.assert_array_equal(m.up, raw["text_encoder:0:up"].astype(np.float32))
    assert m.scale == 1.0 and m.alpha is None
    np.testing.assert_allclose(
        m.delta(),
        raw["text_encoder:0:up"].astype(np.float64) @ raw["text_encoder:0:down"].astype(np.float64),
        rtol=1e-5,
        atol=1e-7,
    )


@real_loras
@needs_real
@pytest.mark.parametrize(
    "module",
    [
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_unet_down_blocks_1_resnets_0_conv1",
    ],
)
def test_real_lokr_delta(module):
    path = REAL / "lycoris_lokr_sd1_dim16__smart_falcon_16_lokr.safetensors"
    raw = {
        k: v.astype(np.float64) for k, v in safetensors.numpy.load_file(str(path)).items() if k.startswith(module + ".")
    }
    t = lambda role: raw[f"{module}.{role}"]  # noqa: E731
    dim = 16  # ss_network_dim of this file
    expected = (float(t("alpha")) / dim) * np.kron(t("lokr_w1_a") @ t("lokr_w1_b"), t("lokr_w2_a") @ t("lokr_w2_b"))
    lora = load_lora(path)
    name = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
        ),
        "lora_unet_down_blocks_1_resnets_0_conv1": "unet.down_blocks.1.resnets.0.conv1",
    }[module]
    m = lora.modules[name]
    assert m.kind == "lokr"
    assert m.alpha == 16.0 and m.rank == 16
    assert m.shape == expected.shape
    delta = m.delta()
    np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


# --------------------------------------------------------------------------
# Key layouts of real files, rebuilt as synthetic files
# --------------------------------------------------------------------------

FLUX_T = ["transformer"]
# name: (format, base, parts, ranks or None)
LAYOUT_EXPECTED = {
    "invokeai__flux_control_lora_format": ("diffusers-peft", "flux", FLUX_T, None),
    "invokeai__flux_dora_onetrainer_format": (
        "kohya-dora",
        "flux",
        ["text_encoder", "text_encoder_2", "transformer"],
        None,
    ),
    "invokeai__flux_lokr_bfl_format": ("lycoris-lokr", "flux", FLUX_T, None),
    "invokeai__flux_lora_aitoolkit_format": ("ai-toolkit", "flux", FLUX_T, None),
    "invokeai__flux_lora_diffusers_base_model_format": ("diffusers-peft", "flux", FLUX_T, None),
    "invokeai__flux_lora_diffusers_format": ("diffusers-peft", "flux", FLUX_T, None),
    "invokeai__flux_lora_diffusers_no_proj_mlp_format": ("diffusers-peft", "flux", FLUX_T, None),
    "invokeai__flux_lora_kohya_format": ("kohya", "flux", FLUX_T, None),
    "invokeai__flux_lora_kohya_with_te1_format": ("kohya", "flux", ["text_encoder", "transformer"], None),
    "invokeai__flux_lora_xlabs_format": ("xlabs", "flux", FLUX_T, None),
    "invokeai_stripped__flux_peft_base_model__peft_adapter_model": ("diffusers-peft", "flux", FLUX_T, None),
    "invokeai_stripped__sd1_kohya__shinkai_makoto_offset": ("kohya", "sd1", ["text_encoder", "unet"], [128]),
    "invokeai_stripped__sdxl_kohya__Alien_Style": ("kohya", "sdxl", ["text_encoder", "text_encoder_2", "unet"], [32]),
}
# Modules that BFL-named Flux files gain in diffusers naming (lorastyle.io.flux): a double block's img_attn.qkv
# and txt_attn.qkv become 3 modules each (+2), a single block's linear1 4 (+3), XLabs' qkv 3 (+2).
FLUX_SPLIT_EXTRA = {
    "invokeai__flux_control_lora_format": 19 * 2 * 2 + 38 * 3,
    "invokeai__flux_lora_aitoolkit_format": 19 * 2 * 2 + 38 * 3,
    "invokeai__flux_lora_kohya_format": 19 * 2 * 2 + 38 * 3,
    "invokeai__flux_lora_kohya_with_te1_format": 19 * 2 * 2 + 38 * 3,
    "invokeai__flux_lora_xlabs_format": 3 * 2 * 2,
    # invokeai__flux_lokr_bfl_format: its qkv and linear1 shapes fit no split, they keep their names
}
# Suffixes of the tensors that are LoRA factors (not alpha, bias, norm scale or DoRA magnitude)
from tools.layouts import FACTOR_SUFFIXES  # noqa: E402

# The full-factor LoKr layout (lokr_w1 and lokr_w2, no _a/_b) loads in a child process with a memory
# limit, so a loader that materialises in x in identities fails fast instead of swapping.
SLOW_LAYOUTS = {"invokeai__flux_lokr_bfl_format"}


def layout_keys(name):
    keys = json.loads((LAYOUTS / f"{name}.json").read_text())["keys"]
    return {k: tuple(v["shape"] if isinstance(v, dict) else v) for k, v in keys.items()}


def distinct_module_prefixes(keys):
    prefixes = set()
    for key in keys:
        for suffix in FACTOR_SUFFIXES:
            if key.endswith(suffix):
                prefixes.add(key[: -len(suffix)].removesuffix(".lora").removesuffix("_lora"))
                break
    return prefixes


_POOL = (np.random.default_rng(1234).standard_normal(1 << 22) * 0.02).astype(np.float16)


def synthetic_file(path, keys, alpha=8.0):
    """A safetensors file (written by the safetensors library) with exactly these names and shapes."""
    tensors, offset = {}, 0
    for key, shape in keys.items():
        n = math.prod(shape)
        if key.endswith(".alpha"):
            tensors[key] = np.full(shape, alpha, dtype=np.float16)
            continue
        if offset + n > _POOL.size:
            offset = 0
        tensors[key] = (
            np.resize(_POOL, n).reshape(shape) if n > _POOL.size else _POOL[offset : offset + n].reshape(shape)
        )
        offset += n
    safetensors.numpy.save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def sd_layout_loras(tmp_path_factory):
    """The SD1 and SDXL kohya layouts, built and loaded once for the table and shape tests."""
    cache = {}

    def get(name):
        if name not in cache:
            path = synthetic_file(tmp_path_factory.mktemp("layouts") / f"{name}.safetensors", layout_keys(name))
            cache[name] = load_lora(path)
        return cache[name]

    yield get
    cache.clear()


@real_loras
@needs_real
def test_every_key_layout_has_an_expected_row():
    assert sorted(p.stem for p in LAYOUTS.glob("*.json")) == sorted(LAYOUT_EXPECTED)


@real_loras
@needs_real
@pytest.mark.parametrize("name", sorted(LAYOUT_EXPECTED))
def test_key_layout(name, tmp_path, sd_layout_loras):
    fmt, base, parts, ranks = LAYOUT_EXPECTED[name]
    keys = layout_keys(name)
    n_modules = len(distinct_module_prefixes(keys)) + FLUX_SPLIT_EXTRA.get(name, 0)
    # every tensor that is neither a factor nor an alpha (biases, norm scales, DoRA magnitudes) is an extra
    extras = sorted(k for k in keys if not k.endswith((".alpha", *FACTOR_SUFFIXES)))
    if name in SLOW_LAYOUTS:
        summary, got_extras = _summary_in_subprocess(synthetic_file(tmp_path / f"{name}.safetensors", keys))
    elif name in ("invokeai_stripped__sd1_kohya__shinkai_makoto_offset", "invokeai_stripped__sdxl_kohya__Alien_Style"):
        lora = sd_layout_loras(name)
        summary, got_extras = lora.summary(), sorted(lora.extras)
    else:
        lora = load_lora(synthetic_file(tmp_path / f"{name}.safetensors", keys))
        summary, got_extras = lora.summary(), sorted(lora.extras)
        del lora
    assert (summary["format"], summary["base"], summary["parts"]) == (fmt, base, parts)
    assert summary["n_modules"] == n_modules
    assert summary["dtype"] == "float16"
    assert got_extras == extras
    if ranks is not None:
        assert summary["ranks"] == ranks
    if any(k.endswith(".alpha") for k in keys):
        assert summary["alphas"] == [8.0]


def _summary_in_subprocess(path, timeout=120, memory=4 << 30):
    """load_lora(path).summary() in a child with an address-space limit, so a blow-up fails fast."""
    code = (
        "import json, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
        "from lorastyle.io.formats import load_lora\n"
        "lora = load_lora(sys.argv[1])\n"
        "print(json.dumps([lora.summary(), sorted(lora.extras)]))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@real_loras
@needs_real
def test_sd1_kohya_layout_names_have_sd15_shapes(sd_layout_loras, sd15_unet):
    name = "invokeai_stripped__sd1_kohya__shinkai_makoto_offset"
    lora = sd_layout_loras(name)
    assert shape_mismatches(lora, {"unet": sd15_unet, "text_encoder": SD1_TEXT}) == []
    # proj_in/proj_out are 1x1 convs in SD 1.x: 4-D factors, flattened
    proj = [m for n, m in lora.modules.items() if n.endswith(("proj_in", "proj_out"))]
    assert len(proj) == 32
    assert all(m.factors["lora_down"].ndim == 4 and m.factors["lora_down"].shape[2:] == (1, 1) for m in proj)


@real_loras
@needs_real
def test_sdxl_kohya_sgm_names_become_diffusers_paths(sd_layout_loras, sdxl_unet):
    name = "invokeai_stripped__sdxl_kohya__Alien_Style"
    keys = layout_keys(name)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_middle_block_") for k in keys)
    lora = sd_layout_loras(name)
    unet = [n for n in lora.modules if n.startswith("unet.")]
    assert len(unet) == len({k for k in distinct_module_prefixes(keys) if k.startswith("lora_unet_")})
    assert not any(w in n for n in unet for w in ("input_blocks", "output_blocks", "middle_block"))
    tables = {"unet": sdxl_unet, "text_encoder": SD1_TEXT, "text_encoder_2": SDXL_TEXT_2}
    assert shape_mismatches(lora, tables) == []
    # The SGM -> diffusers map must send different SGM modules to different diffusers modules
    assert len(set(lora.modules)) == len(distinct_module_prefixes(keys))


# --------------------------------------------------------------------------
# Our own layouts: save_lora round trips
# --------------------------------------------------------------------------

MODULES = {
    # canonical name: (out, in)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 16),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (16, 24),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": (16, 16),
    "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (64, 16),
    "unet.up_blocks.1.resnets.0.time_emb_proj": (32, 40),
    "unet.up_blocks.2.attentions.1.proj_out": (16, 16),
    "text_encoder.text_model.encoder.layers.3.self_attn.q_proj": (24, 24),
    "text_encoder.text_model.encoder.layers.11.mlp.fc1": (48, 24),
    "text_encoder_2.text_model.encoder.layers.0.self_attn.out_proj": (32, 32),
}


def random_factors(rng, modules=MODULES, rank=4, scale=0.1):
    return {
        name: (
            (scale * rng.standard_normal((rank, i))).astype(np.float32),
            (scale * rng.standard_normal((o, rank))).astype(np.float32),
        )
        for name, (o, i) in modules.items()
    }


@pytest.mark.parametrize("layout", ["diffusers-peft", "kohya"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_lora_round_trip(tmp_path, rng, layout, dtype):
    factors = random_factors(rng)
    path = tmp_path / "mine.safetensors"
    meta = {"artist": "someone", "seed": "7"}
    save_lora(path, factors, alpha=8.0, layout=layout, base="tiny", metadata=meta, dtype=dtype)

    lora = load_lora(path)
    assert lora.format == layout
    assert lora.base == "tiny"
    assert lora.dtype == np.dtype(dtype).name
    assert lora.parts == ["text_encoder", "text_encoder_2", "unet"]
    assert set(lora.modules) == set(factors)
    for name, (A, B) in factors.items():
        m = lora.modules[name]
        np.testing.assert_array_equal(m.down, A.astype(dtype).astype(np.float32))
        np.testing.assert_array_equal(m.up, B.astype(dtype).astype(np.float32))
        assert m.rank == 4
        assert m.alpha == 8.0
        assert m.scale == 2.0  # alpha / r
        assert m.shape == MODULES[name]
        np.testing.assert_allclose(
            m.delta(), 2.0 * B.astype(dtype).astype(np.float64) @ A.astype(dtype), rtol=1e-5, atol=1e-7
        )
    assert lora.metadata["artist"] == "someone" and lora.metadata["seed"] == "7"
    assert lora.metadata["lorastyle.base"] == "tiny"


def test_save_lora_kohya_keys_are_kohya(tmp_path, rng):
    factors = random_factors(rng)
    path = tmp_path / "k.safetensors"
    save_lora(path, factors, alpha=4.0, layout="kohya")
    raw = safetensors.numpy.load_file(str(path))
    A, B = factors["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    np.testing.assert_array_equal(raw[f"{key}.lora_down.weight"], A)
    np.testing.assert_array_equal(raw[f"{key}.lora_up.weight"], B)
    assert float(raw[f"{key}.alpha"].reshape(-1)[0]) == 4.0
    assert "lora_te_text_model_encoder_layers_3_self_attn_q_proj.lora_down.weight" in raw
    assert "lora_te2_text_model_encoder_layers_0_self_attn_out_proj.lora_up.weight" in raw
    assert len(raw) == 3 * len(factors)


def test_save_lora_peft_keys_and_adapter_metadata(tmp_path, rng):
    factors = random_factors(rng)
    path = tmp_path / "p.safetensors"
    save_lora(path, factors, alpha=2.0, layout="diffusers-peft")
    raw = safetensors.numpy.load_file(str(path))
    assert set(raw) == {f"{n}.lora_{ab}.weight" for n in factors for ab in "AB"}
    with safe_open(str(path), "np") as fh:
        adapter = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 2.0
    lora = load_lora(path)
    assert all(m.scale == 0.5 for m in lora.modules.values())


def test_save_lora_kohya_round_trip_of_flux_transformer(tmp_path, rng):
    modules = {
        "transformer.transformer_blocks.0.attn.to_q": (16, 16),
        "transformer.single_transformer_blocks.0.attn.to_q": (16, 16),
        "transformer.proj_out": (8, 16),
    }
    path = tmp_path / "flux.safetensors"
    save_lora(path, random_factors(rng, modules), alpha=4.0, layout="kohya", base="flux")
    lora = load_lora(path)
    assert set(lora.modules) == set(modules)
    assert lora.parts == ["transformer"]


def test_save_lora_refuses_unknown_layout_and_rank_mismatch(tmp_path, rng):
    factors = random_factors(rng)
    with pytest.raises(ValueError, match="layout must be one of"):
        save_lora(tmp_path / "x.safetensors", factors, alpha=1.0, layout="xlabs")
    bad = {"unet.x.to_q": (np.zeros((4, 8), np.float32), np.zeros((8, 3), np.float32))}
    with pytest.raises(ValueError, match="do not share a rank"):
        save_lora(tmp_path / "y.safetensors", bad, alpha=1.0)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# Hand-built files of other layouts
# --------------------------------------------------------------------------


def test_diffusers_legacy_lora_layer_layout(tmp_path, rng):
    names = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": (320, 320),
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_v": (1280, 1280),
    }
    tensors = {}
    for n, (o, i) in names.items():
        tensors[f"unet.{n}.lora.down.weight"] = rng.standard_normal((4, i)).astype(np.float32)
        tensors[f"unet.{n}.lora.up.weight"] = rng.standard_normal((o, 4)).astype(np.float32)
    path = tmp_path / "legacy.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    lora = load_lora(path)
    assert lora.format == "diffusers-legacy"
    assert lora.base == "sd1"  # attn2.to_k reads 768-dim text features
    assert set(lora.modules) == {f"unet.{n}" for n in names}
    for n in names:
        m = lora.modules[f"unet.{n}"]
        assert m.scale == 1.0 and m.alpha is None
        expected = tensors[f"unet.{n}.lora.up.weight"].astype(np.float64) @ tensors[f"unet.{n}.lora.down.weight"]
        np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_legacy_attention_processor_layout(tmp_path, rng):
    base = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    tensors = {}
    for proj, (o, i) in {"to_q": (640, 640), "to_k": (640, 768), "to_v": (640, 768), "to_out": (640, 640)}.items():
        tensors[f"{base}.processor.{proj}_lora.down.weight"] = rng.standard_normal((2, i)).astype(np.float32)
        tensors[f"{base}.processor.{proj}_lora.up.weight"] = rng.standard_normal((o, 2)).astype(np.float32)
    path = tmp_path / "proc.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    lora = load_lora(path)
    assert lora.format == "diffusers-legacy"
    assert set(lora.modules) == {f"unet.{base}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")}
    assert lora.modules[f"unet.{base}.to_k"].shape == (640, 768)


def test_peft_base_model_prefix(tmp_path, rng):
    names = {
        "base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (640, 768),
        "base_model.model.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": (320, 1280),
        "base_model.model.text_model.encoder.layers.5.self_attn.v_proj": (768, 768),
    }
    tensors = {}
    for n, (o, i) in names.items():
        tensors[f"{n}.lora_A.weight"] = rng.standard_normal((8, i)).astype(np.float16)
        tensors[f"{n}.lora_B.weight"] = rng.standard_normal((o, 8)).astype(np.float16)
    path = tmp_path / "peft.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
    lora = load_lora(path)
    assert lora.format == "diffusers-peft"
    assert lora.base == "sd1"
    assert set(lora.modules) == {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        "unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2",
        "text_encoder.text_model.encoder.layers.5.self_attn.v_proj",
    }
    assert lora.parts == ["text_encoder", "unet"]
    assert lora.dtype == "float16"
    m = lora.modules["unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"]
    np.testing.assert_array_equal(m.down, tensors[f"{list(names)[1]}.lora_A.weight"].astype(np.float32))
    assert m.shape == (320, 1280)


def test_peft_alpha_from_adapter_metadata(tmp_path, rng):
    n = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = {
        f"{n}.lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32),
        f"{n}.lora_B.weight": rng.standard_normal((32, 4)).astype(np.float32),
    }
    path = tmp_path / "peft.safetensors"
    safetensors.numpy.save_file(
        tensors, str(path), metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 16})}
    )
    m = load_lora(path).modules[n]
    assert m.alpha == 16.0 and m.scale == 4.0


def test_loha_delta(tmp_path, rng):
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    dim, out, inp = 4, 12, 10
    w1a, w1b = rng.standard_normal((out, dim)), rng.standard_normal((dim, inp))
    w2a, w2b = rng.standard_normal((out, dim)), rng.standard_normal((dim, inp))
    tensors = {
        f"{prefix}.hada_w1_a": w1a,
        f"{prefix}.hada_w1_b": w1b,
        f"{prefix}.hada_w2_a": w2a,
        f"{prefix}.hada_w2_b": w2b,
        f"{prefix}.alpha": np.array(2.0),
    }
    path = tmp_path / "loha.safetensors"
    safetensors.numpy.save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path))
    lora = load_lora(path)
    assert lora.format == "lycoris-loha"
    m = lora.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert m.kind == "loha" and m.rank == dim and m.alpha == 2.0
    f32 = lambda x: x.astype(np.float32).astype(np.float64)  # noqa: E731
    expected = (f32(w1a) @ f32(w1b)) * (f32(w2a) @ f32(w2b)) * (2.0 / dim)
    np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-5)


def test_lokr_factorised_delta(tmp_path, rng):
    prefix = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    # W1 = a1 b1 (6 x 4), W2 = a2 b2 (8 x 5): delta-W = kron(W1, W2) of 48 x 20
    parts = {"lokr_w1_a": (6, 3), "lokr_w1_b": (3, 4), "lokr_w2_a": (8, 3), "lokr_w2_b": (3, 5)}
    raw = {f"{prefix}.{k}": rng.standard_normal(s).astype(np.float32) for k, s in parts.items()}
    raw[f"{prefix}.alpha"] = np.array(6.0, dtype=np.float32)
    path = tmp_path / "lokr.safetensors"
    safetensors.numpy.save_file(raw, str(path))
    m = load_lora(path).modules["text_encoder.text_model.encoder.layers.0.mlp.fc1"]
    t = lambda r: raw[f"{prefix}.{r}"].astype(np.float64)  # noqa: E731
    expected = (6.0 / 3) * np.kron(t("lokr_w1_a") @ t("lokr_w1_b"), t("lokr_w2_a") @ t("lokr_w2_b"))
    assert m.shape == (48, 20)
    np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-5)


def _full_lokr_file(path, rng, w1_shape, w2_shape):
    prefix = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    raw = {
        f"{prefix}.lokr_w1": rng.standard_normal(w1_shape).astype(np.float32),
        f"{prefix}.lokr_w2": rng.standard_normal(w2_shape).astype(np.float32),
        f"{prefix}.alpha": np.array(8.0, dtype=np.float32),
    }
    safetensors.numpy.save_file(raw, str(path))
    return raw[f"{prefix}.lokr_w1"], raw[f"{prefix}.lokr_w2"]


def test_full_factor_lokr_delta(tmp_path, rng):
    # Both Kronecker factors stored whole: LyCORIS uses scale 1 (alpha is ignored)
    path = tmp_path / "full.safetensors"
    w1, w2 = _full_lokr_file(path, rng, (4, 6), (3, 5))
    m = load_lora(path).modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert m.shape == (12, 30)
    np.testing.assert_allclose(m.delta(), np.kron(w1.astype(np.float64), w2), rtol=1e-5, atol=1e-5)


def test_full_factor_lokr_does_not_materialise_an_identity(tmp_path, rng):
    path = tmp_path / "full.safetensors"
    w1, w2 = _full_lokr_file(path, rng, (8, 48), (8, 64))  # delta-W 64 x 3072
    dense_bytes = 64 * 3072 * 8
    tracemalloc.start()
    try:
        m = load_lora(path).modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(m.delta(), np.kron(w1.astype(np.float64), w2), rtol=1e-5, atol=1e-5)
    # an in x in identity would be 3072^2 * 8 bytes = 75 MB
    assert peak < 10 * dense_bytes


def test_kohya_conv_factors_are_flattened(tmp_path, rng):
    prefix = "lora_unet_down_blocks_1_resnets_0_conv1"
    down = rng.standard_normal((4, 32, 3, 3)).astype(np.float32)
    up = rng.standard_normal((64, 4, 1, 1)).astype(np.float32)
    path = tmp_path / "conv.safetensors"
    safetensors.numpy.save_file(
        {
            f"{prefix}.lora_down.weight": down,
            f"{prefix}.lora_up.weight": up,
            f"{prefix}.alpha": np.array(2.0, dtype=np.float32),
        },
        str(path),
    )
    m = load_lora(path).modules["unet.down_blocks.1.resnets.0.conv1"]
    assert m.shape == (64, 32 * 9)
    expected = 0.5 * up.reshape(64, 4).astype(np.float64) @ down.reshape(4, -1)
    np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-5)


def test_rank_larger_than_layer(tmp_path, rng):
    # a rank-8 LoRA of a 4 x 6 layer: delta-W is still scale * B A
    prefix = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    A, B = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    path = tmp_path / "wide.safetensors"
    safetensors.numpy.save_file(
        {
            f"{prefix}.lora_down.weight": A,
            f"{prefix}.lora_up.weight": B,
            f"{prefix}.alpha": np.array(4.0, dtype=np.float32),
        },
        str(path),
    )
    m = load_lora(path).modules["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]
    assert m.rank == 8 and m.shape == (4, 6)
    np.testing.assert_allclose(m.delta(), 0.5 * B.astype(np.float64) @ A, rtol=1e-5, atol=1e-5)


def test_bfloat16_factors(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    prefix = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 768, generator=g).bfloat16(), torch.randn(1280, 4, generator=g).bfloat16()
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file(
        {
            f"{prefix}.lora_down.weight": down,
            f"{prefix}.lora_up.weight": up,
            f"{prefix}.alpha": torch.tensor(2.0).bfloat16(),
        },
        str(path),
    )
    lora = load_lora(path)
    assert lora.summary() == {
        "format": "kohya",
        "base": "sd1",
        "parts": ["unet"],
        "n_modules": 1,
        "ranks": [4],
        "alphas": [2.0],
        "dtype": "bfloat16",
    }
    m = lora.modules["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"]
    np.testing.assert_array_equal(m.down, down.float().numpy())
    np.testing.assert_allclose(m.delta(), 0.5 * up.double().numpy() @ down.double().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cross_dim, base", [(768, "sd1"), (1024, "sd2"), (2048, "sdxl"), (512, "unknown")])
def test_base_from_cross_attention_width(tmp_path, rng, cross_dim, base):
    n = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    path = tmp_path / "b.safetensors"
    save_lora(path, random_factors(rng, {n: (640, cross_dim)}), alpha=1.0)
    assert load_lora(path).base == base


# --------------------------------------------------------------------------
# alpha conventions
# --------------------------------------------------------------------------


def _kohya_file(path, rng, alpha=None, rank=4, dtype=np.float32, extra=None):
    prefix = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{prefix}.lora_down.weight": (0.1 * rng.standard_normal((rank, 16))).astype(dtype),
        f"{prefix}.lora_up.weight": (0.1 * rng.standard_normal((16, rank))).astype(dtype),
    }
    if alpha is not None:
        tensors[f"{prefix}.alpha"] = np.array(alpha, dtype=dtype)
    tensors.update(extra or {})
    safetensors.numpy.save_file(tensors, str(path))
    return tensors, prefix


@pytest.mark.parametrize("alpha, scale", [(None, 1.0), (0.0, 1.0), (8.0, 2.0), (2.0, 0.5), (4.0, 1.0)])
def test_alpha_conventions(tmp_path, rng, alpha, scale):
    path = tmp_path / "a.safetensors"
    tensors, prefix = _kohya_file(path, rng, alpha=alpha)
    lora = load_lora(path)
    m = lora.modules["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert m.scale == scale
    assert m.alpha == alpha
    assert lora.alphas == ([] if alpha is None else [alpha])
    expected = scale * tensors[f"{prefix}.lora_up.weight"].astype(np.float64) @ tensors[f"{prefix}.lora_down.weight"]
    np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------
# Bad content
# --------------------------------------------------------------------------


def _bad_ab_mismatch(path, rng):
    p = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    safetensors.numpy.save_file(
        {f"{p}.lora_down.weight": np.zeros((4, 16), np.float32), f"{p}.lora_up.weight": np.zeros((16, 3), np.float32)},
        str(path),
    )


def _bad_value(value):
    def make(path, rng):
        p = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
        down = rng.standard_normal((4, 16)).astype(np.float16)
        down[2, 5] = value
        safetensors.numpy.save_file(
            {f"{p}.lora_down.weight": down, f"{p}.lora_up.weight": np.ones((16, 4), np.float16)}, str(path)
        )

    return make


def _bad_unknown_layout(path, rng):
    safetensors.numpy.save_file(
        {"model.weight": np.ones((4, 4), np.float32), "model.bias": np.ones(4, np.float32)}, str(path)
    )


def _bad_no_tensors(path, rng):
    safetensors.numpy.save_file({}, str(path), metadata={"lorastyle.base": "tiny"})


def _bad_int_factor(path, rng):
    p = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    safetensors.numpy.save_file(
        {f"{p}.lora_down.weight": np.ones((4, 16), np.int32), f"{p}.lora_up.weight": np.ones((16, 4), np.float32)},
        str(path),
    )


def _bad_only_down(path, rng):
    p = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    safetensors.numpy.save_file(
        {f"{p}.lora_down.weight": np.ones((4, 16), np.float32), f"{p}.alpha": np.array(4.0, np.float32)}, str(path)
    )


def _bad_nan_alpha(path, rng):
    p = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    safetensors.numpy.save_file(
        {
            f"{p}.lora_down.weight": np.ones((4, 16), np.float32),
            f"{p}.lora_up.weight": np.ones((16, 4), np.float32),
            f"{p}.alpha": np.array(np.nan, np.float32),
        },
        str(path),
    )


BAD_CONTENT = {
    "ab_shape_mismatch": (_bad_ab_mismatch, r"A/B shape mismatch: up \(16, 3\) and down \(4, 16\)"),
    "nan_weight": (_bad_value(np.nan), r"lora_down\.weight' holds NaN or Inf values"),
    "inf_weight": (_bad_value(np.inf), r"lora_down\.weight' holds NaN or Inf values"),
    "neg_inf_weight": (_bad_value(-np.inf), r"holds NaN or Inf values"),
    "nan_alpha": (_bad_nan_alpha, r"alpha' holds NaN or Inf values"),
    "unknown_layout": (_bad_unknown_layout, r"unknown layout: no LoRA key pattern recognised.*model\.bias"),
    "no_tensors": (_bad_no_tensors, r"the file holds no tensors"),
    "integer_factor": (_bad_int_factor, r"lora_down\.weight': dtype I32 is not a floating-point type"),
    "only_down_factor": (
        _bad_only_down,
        r"module unet\.mid_block\.attentions\.0\.transformer_blocks\.0\.attn1\.to_q: "
        r"up \(B\) factor is missing",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONTENT))
def test_bad_content(tmp_path, rng, case):
    make, reason = BAD_CONTENT[case]
    path = tmp_path / f"{case}.safetensors"
    make(path, rng)
    with pytest.raises(LoraFormatError, match=reason) as excinfo:
        load_lora(path)
    assert excinfo.value.path == str(path)
    assert str(excinfo.value).startswith(f"{path}: ")


def test_lone_alpha_is_not_a_module(tmp_path, rng):
    # an alpha without factors is kept as an extra, the complete module is read
    path = tmp_path / "x.safetensors"
    _kohya_file(path, rng, alpha=4.0, extra={"lora_unet_conv_in.alpha": np.array(1.0, np.float32)})
    lora = load_lora(path)
    assert list(lora.modules) == ["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert "lora_unet_conv_in.alpha" in lora.extras


def test_kohya_names_with_a_doubled_unet_prefix_are_read(tmp_path):
    """A user-made conversion that kept its source's prefix (lora_unet_unet_down_blocks_...) reads as the U-Net."""
    rng = np.random.default_rng(0)
    key = "lora_unet_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    path = tmp_path / "doubled.safetensors"
    write_safetensors(
        path,
        {
            f"{key}.lora_down.weight": rng.standard_normal((4, 768)).astype(np.float32),
            f"{key}.lora_up.weight": rng.standard_normal((320, 4)).astype(np.float32),
        },
    )
    lora = load_lora(path)
    assert list(lora.modules) == ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    assert lora.base == "sd1"  # from the cross-attention's 768 inputs, which the doubled name hid before


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.int8, np.uint8])
def test_integer_alphas_are_read_as_floats(tmp_path, rng, dtype):
    """diffusers' convert_state_dict_to_kohya (src/diffusers/utils/state_dict_utils.py) stores each module's alpha as
    ``torch.tensor(len(weight))``: an int64 rank, which AUTOMATIC1111 and ComfyUI read as a float."""
    from lorastyle.io.metadata import describe_file

    rank = 4
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    down = (0.1 * rng.standard_normal((rank, 768))).astype(np.float16)
    up = (0.1 * rng.standard_normal((320, rank))).astype(np.float16)
    tensors = {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": np.array(8, dtype)}
    path = tmp_path / "from_diffusers.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    with safe_open(str(path), "np") as fh:  # the file holds the integer, as diffusers writes it
        assert fh.get_tensor(f"{key}.alpha").dtype == dtype
    lora = load_lora(path)
    m = lora.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"]
    assert m.alpha == 8.0 and isinstance(m.alpha, float) and m.scale == 2.0  # alpha / rank
    assert lora.alphas == [8.0] and lora.dtype == "float16"  # the factors' dtype, not the alpha's
    np.testing.assert_allclose(m.delta(), 2.0 * up.astype(np.float64) @ down.astype(np.float64), rtol=1e-5, atol=1e-6)
    assert describe_file(path, hashes=False)["alphas"] == [8.0]


def test_kohya_names_with_a_repeated_prefix_are_read(tmp_path, rng):
    """Hand conversions that prefixed names which had a prefix already, where the repeat can mean only one thing."""
    q_k = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    names = {
        # the kohya prefix twice
        "lora_unet_lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": q_k,
        # the original (LDM) checkpoint's own prefix kept: input_blocks.1.1 is diffusers' down_blocks.0.attentions.0
        "lora_unet_model_diffusion_model_input_blocks_1_1_transformer_blocks_0_attn2_to_k": q_k,
        "lora_te_text_encoder_text_model_encoder_layers_0_self_attn_q_proj": (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
        ),
    }
    for i, (key, expected) in enumerate(names.items()):
        path = tmp_path / f"repeated{i}.safetensors"
        inner = 320 if key.startswith("lora_unet") else 768
        write_safetensors(
            path,
            {
                f"{key}.lora_down.weight": rng.standard_normal((4, 768)).astype(np.float32),
                f"{key}.lora_up.weight": rng.standard_normal((inner, 4)).astype(np.float32),
            },
        )
        assert list(load_lora(path).modules) == [expected], key


@pytest.mark.parametrize(
    "key, doubled, renamed",
    [
        (
            "lora_unet_lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_unet_lora_te_",
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        ),
        (
            "lora_te_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
            "lora_te_unet_",
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
        ),
    ],
)
def test_a_prefix_doubled_with_another_part_is_refused_with_the_rename(tmp_path, rng, key, doubled, renamed):
    """Two parts named in one key: refused (not guessed), and the message says what is doubled and the fix."""
    path = tmp_path / "doubled.safetensors"
    write_safetensors(
        path,
        {
            f"{key}.lora_down.weight": rng.standard_normal((4, 768)).astype(np.float32),
            f"{key}.lora_up.weight": rng.standard_normal((320, 4)).astype(np.float32),
        },
    )
    with pytest.raises(LoraFormatError) as excinfo:
        load_lora(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: tensor {key!r}: doubled prefix {doubled!r}: ")
    assert f"rename the keys to keep one prefix (here {renamed!r} if it adapts the " in message
