"""Tests for lorastyle.io.metadata: what a LoRA file is, from its header alone.

Independent references:

* hashes: :mod:`hashlib` over the file's bytes, sliced here as each reference defines them
  (AUTOMATIC1111 ``calculate_sha256`` / ``model_hash``; Civitai AutoV1/AutoV2/AutoV3; kohya's
  ``addnet_hash_safetensors`` over the data section that the ``safetensors`` library itself writes
  for the tensors and ``ss_`` metadata, as sd-scripts ``precalculate_safetensors_hashes`` does;
  OneTrainer's ``modelspec.hash_sha256`` over the tensors' bytes in sorted key order);
* ``load_lora(path).summary()`` for format, base, parts, module count, ranks, alphas and dtype,
  on every real file and every key layout of ``../shared/real-loras``;
* the bytes :func:`describe_file` reads, counted through a wrapped :func:`open`, and files whose
  tensor bytes (alphas aside) are overwritten with NaN;
* metadata written here as kohya sd-scripts, ai-toolkit, OneTrainer and ModelSpec write it
  (keys and value formats from their sources, named in lorastyle/io/metadata.py).
"""

import builtins
import hashlib
import json
import math
import re
import shutil
import struct
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy

from lorastyle.io.formats import LoraFormatError, load_lora
from lorastyle.io.metadata import describe_file, format_description
from lorastyle.io.safetensors import read_safetensors_header, write_safetensors
from support import KEY_LAYOUTS, REAL_LORAS

needs_real = pytest.mark.skipif(not REAL_LORAS.is_dir(), reason=f"real LoRA files not found at {REAL_LORAS}")
real_loras = pytest.mark.real_loras
SUMMARY_KEYS = ("format", "base", "parts", "n_modules", "ranks", "alphas", "dtype")
HASH_KEYS = ("sha256", "autov1", "autov2", "autov3", "tensor_sha256")
SD1_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
SD1_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def reference_hashes(path):
    """Every hash, computed here from the file's bytes as its reference defines it."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    sha = hashlib.sha256(data).hexdigest()  # AUTOMATIC1111 calculate_sha256
    tensor_sha = hashlib.sha256(data[8 + n :]).hexdigest()  # kohya addnet_hash_safetensors
    return {
        "sha256": sha,
        "autov1": hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8] if len(data) >= 2 << 20 else None,
        "autov2": sha[:10],
        "autov3": tensor_sha[:12],
        "tensor_sha256": tensor_sha,
    }


def kohya_sshs_model_hash(tensors, metadata):
    """sd-scripts precalculate_safetensors_hashes: the data section of safetensors.save(tensors, ss_ metadata)."""
    blob = safetensors.numpy.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    n = struct.unpack("<Q", blob[:8])[0]
    return hashlib.sha256(blob[8 + n :]).hexdigest()


def kohya_tensors(rng, rank=8, dtype=np.float16, big=False):
    """Three SD 1.x kohya modules (cross-attention in-features 768: base sd1), alpha 4."""
    out = {}
    for name, n_in, n_out in [(SD1_Q, 320, 320), (SD1_TO_K, 768, 320), (TE_Q, 768, 768)]:
        out[f"{name}.lora_down.weight"] = (0.1 * rng.standard_normal((rank, n_in))).astype(dtype)
        out[f"{name}.lora_up.weight"] = (0.1 * rng.standard_normal((n_out, rank))).astype(dtype)
        out[f"{name}.alpha"] = np.asarray(4.0, dtype)
    if big:  # past 2 MiB, where AutoV1 is defined
        name = "lora_unet_mid_block_attentions_0_proj_out"
        out[f"{name}.lora_down.weight"] = (0.1 * rng.standard_normal((512, 1280))).astype(dtype)
        out[f"{name}.lora_up.weight"] = (0.1 * rng.standard_normal((1280, 512))).astype(dtype)
        out[f"{name}.alpha"] = np.asarray(4.0, dtype)
    return out


TAGS = {
    "10_mychar girl": {"mychar": 40, "1girl": 40, "smile": 12, "red hair": 30, "outdoors": 3},
    "5_mychar casual": {"mychar": 20, "1girl": 19, "jeans": 9, "smile": 8, "a": 1, "b": 1, "c": 1, "d": 1, "e": 1},
}
KOHYA_META = {
    # as sd-scripts train_network.py writes them: str() of every value
    "ss_output_name": "mychar_v2",
    "ss_training_comment": "trigger: mychar",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_base_model_version": "sd_v1",
    "ss_v2": "False",
    "ss_steps": "3010",
    "ss_epoch": "10",
    "ss_num_epochs": "10",
    "ss_max_train_steps": "3010",
    "ss_resolution": "(768, 768)",
    "ss_learning_rate": "0.0003",
    "ss_unet_lr": "0.0003",
    "ss_text_encoder_lr": "None",
    "ss_num_train_images": "1204",
    "ss_dataset_dirs": json.dumps(
        {"10_mychar girl": {"n_repeats": 10, "img_count": 43}, "5_mychar casual": {"n_repeats": 5, "img_count": 12}}
    ),
    "ss_tag_frequency": json.dumps(TAGS),
    "ss_network_module": "networks.lora",
    "ss_network_dim": "8",
    "ss_network_alpha": "4.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}),
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
}


def write_kohya(path, rng, metadata=KOHYA_META, *, with_hash=True, big=False):
    tensors = kohya_tensors(rng, big=big)
    meta = dict(metadata)
    if with_hash:
        meta["sshs_model_hash"] = kohya_sshs_model_hash(tensors, meta)
        meta["sshs_legacy_hash"] = "e3b0c442"
    write_safetensors(path, tensors, meta)
    return path, tensors, meta


# --------------------------------------------------------------------------
# Key layouts of real files as sparse safetensors files (the data section reads as zeros)


def layout_shapes(name):
    keys = json.loads((KEY_LAYOUTS / f"{name}.json").read_text())["keys"]
    return {k: tuple(v["shape"] if isinstance(v, dict) else v) for k, v in keys.items()}


def sparse_safetensors(path, shapes, alpha=8.0, metadata=None):
    """A valid F16 safetensors file of these shapes: alphas hold ``alpha``, every other byte is 0.

    The header is written by hand after the format's definition (8-byte length, JSON, data); the
    zeros are a hole (``truncate``), so a 1 GB layout costs neither memory nor disk.
    """
    header, offset, alphas = {}, 0, []
    for key in sorted(shapes):
        n = 2 * math.prod(shapes[key])
        header[key] = {"dtype": "F16", "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
        if key.endswith(".alpha"):
            alphas.append((offset, np.full(shapes[key], alpha, np.float16).tobytes()))
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        start = 8 + len(raw)
        for at, blob in alphas:
            fh.seek(start + at)
            fh.write(blob)
        fh.truncate(start + offset)
    return path


LAYOUTS = sorted(p.stem for p in KEY_LAYOUTS.glob("*.json")) if KEY_LAYOUTS.is_dir() else []
SDXL = "invokeai_stripped__sdxl_kohya__Alien_Style"
FULL_LOKR = "invokeai__flux_lokr_bfl_format"  # lokr_w1 and lokr_w2 stored whole


@pytest.fixture(scope="session")
def layout_file(tmp_path_factory):
    """Each key layout as a full-size sparse file, written once per test session."""
    folder = tmp_path_factory.mktemp("key-layouts")
    made = {}

    def get(name):
        if name not in made:
            made[name] = sparse_safetensors(folder / f"{name}.safetensors", layout_shapes(name))
        return made[name]

    return get


# --------------------------------------------------------------------------
# Hashes


def test_hashes_against_hashlib(tmp_path, rng):
    path, tensors, meta = write_kohya(tmp_path / "kohya.safetensors", rng, big=True)
    assert path.stat().st_size > 2 << 20
    info = describe_file(path)
    expected = reference_hashes(path)
    assert {k: info[k] for k in HASH_KEYS} == expected
    assert info["autov1"] is not None and len(info["autov1"]) == 8
    assert info["file_size"] == path.stat().st_size
    # the hash sd-scripts stores is the data section of what safetensors itself writes: this file's too
    assert meta["sshs_model_hash"] == expected["tensor_sha256"]
    assert info["kohya_model_hash"] == {
        "stored": meta["sshs_model_hash"],
        "recomputed": expected["tensor_sha256"],
        "matches": True,
    }
    assert info["autov3"] == meta["sshs_model_hash"][:12]  # AUTOMATIC1111's LoRA short hash


def test_tensor_hash_ignores_metadata_edits(tmp_path, rng):
    tensors = kohya_tensors(rng)
    write_safetensors(tmp_path / "a.safetensors", tensors, {"ss_output_name": "a"})
    write_safetensors(tmp_path / "b.safetensors", tensors, {"ss_output_name": "b", "modelspec.title": "B" * 999})
    a, b = describe_file(tmp_path / "a.safetensors"), describe_file(tmp_path / "b.safetensors")
    assert a["sha256"] != b["sha256"] and a["autov2"] != b["autov2"]
    assert a["tensor_sha256"] == b["tensor_sha256"] and a["autov3"] == b["autov3"]


def test_autov1_is_absent_below_two_mebibytes(tmp_path, rng):
    path, _, _ = write_kohya(tmp_path / "small.safetensors", rng)
    assert path.stat().st_size < 2 << 20
    info = describe_file(path)
    assert info["autov1"] is None  # Civitai's scanner computes none there
    assert {k: info[k] for k in HASH_KEYS} == reference_hashes(path)


def test_stored_kohya_hash_that_does_not_match(tmp_path, rng):
    meta = {**KOHYA_META, "sshs_model_hash": "0" * 64}
    write_safetensors(tmp_path / "k.safetensors", kohya_tensors(rng), meta)
    info = describe_file(tmp_path / "k.safetensors")
    assert info["kohya_model_hash"]["matches"] is False
    assert info["kohya_model_hash"]["stored"] == "0" * 64
    assert info["kohya_model_hash"]["recomputed"] == info["tensor_sha256"]


def test_no_hashes(tmp_path, rng):
    path, _, meta = write_kohya(tmp_path / "k.safetensors", rng)
    info = describe_file(path, hashes=False)
    assert all(info[k] is None for k in HASH_KEYS)
    assert info["kohya_model_hash"] == {"stored": meta["sshs_model_hash"], "recomputed": None, "matches": None}
    assert "modelspec_hash" not in info


def test_no_kohya_hash_key_without_sshs_model_hash(tmp_path, rng):
    write_safetensors(tmp_path / "k.safetensors", kohya_tensors(rng), {"ss_output_name": "x"})
    assert "kohya_model_hash" not in describe_file(tmp_path / "k.safetensors")


@real_loras
@needs_real
@pytest.mark.parametrize("dim", [4, 8, 16])
def test_real_kohya_files_hash_as_they_say(dim):
    path = next(REAL_LORAS.glob(f"lycoris_lokr_sd1_dim{dim}__*.safetensors"))
    info = describe_file(path)
    assert {k: info[k] for k in HASH_KEYS} == reference_hashes(path)
    _, meta, _ = read_safetensors_header(path)
    assert info["kohya_model_hash"] == {
        "stored": meta["sshs_model_hash"],
        "recomputed": meta["sshs_model_hash"],
        "matches": True,
    }
    # MANIFEST.md's sha256
    manifest = (REAL_LORAS / "MANIFEST.md").read_text()
    assert f"sha256 {info['sha256']}" in manifest


# --------------------------------------------------------------------------
# What the metadata says


def test_kohya_fields(tmp_path, rng):
    path, _, _ = write_kohya(tmp_path / "k.safetensors", rng)
    info = describe_file(path)
    assert info["title"] == "mychar_v2"
    assert info["trainer"] == "kohya-ss/sd-scripts"
    assert info["base_model"] == "v1-5-pruned-emaonly.safetensors"
    assert info["base_model_version"] == "sd_v1"
    assert info["base"] == "sd1" and info["base_mismatch"] is None
    # kohya's training comment is a comment, never a trigger word
    assert info["comment"] == "trigger: mychar"
    words = info["trigger_words"]
    # tag counts summed over the dataset folders; ties keep their first appearance; at most 10
    tags = [(w["text"], w["count"]) for w in words]
    assert tags == [
        ("mychar", 60),
        ("1girl", 59),
        ("red hair", 30),
        ("smile", 20),
        ("jeans", 9),
        ("outdoors", 3),
        ("a", 1),
        ("b", 1),
        ("c", 1),
        ("d", 1),
    ]  # "e", also 1, is the 11th
    assert all(w["source"] == "ss_tag_frequency" for w in words)
    assert info["training"] == {
        "steps": 3010,
        "epoch": 10,
        "num_epochs": 10,
        "max_steps": 3010,
        "resolution": "768x768",
        "learning_rate": 0.0003,
        "unet_lr": 0.0003,  # ss_text_encoder_lr is "None": left out
        "num_train_images": 1204,
        "num_images": 55,
        "optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    }
    assert info["network"] == {
        "module": "networks.lora",
        "dim": 8,
        "alpha": 4.0,
        "args": {"conv_dim": "4", "conv_alpha": "1"},
    }
    assert info["kind"] == "LoRA"  # conv_dim in the args, but no convolution module in the file


def test_training_comment_none_and_unparsable_values_are_left_out(tmp_path, rng):
    meta = {
        "ss_training_comment": "None",
        "ss_tag_frequency": "{not json",
        "ss_steps": "many",
        "ss_learning_rate": "inf",
        "ss_resolution": "(512, 512, 3)",
        "ss_dataset_dirs": json.dumps({"x": {"img_count": "a lot"}}),
        "ss_network_args": "[1, 2]",
    }
    write_safetensors(tmp_path / "k.safetensors", kohya_tensors(rng), meta)
    info = describe_file(tmp_path / "k.safetensors")
    assert info["trigger_words"] == [] and info["comment"] is None
    assert info["training"] == {}
    assert info["network"] == {}
    json.dumps(info, allow_nan=False)  # no NaN or Infinity for other tools to choke on


def test_modelspec_fields_and_a_contradicting_architecture(tmp_path, rng):
    tensors = kohya_tensors(rng)
    blob = safetensors.numpy.save(tensors)
    n = struct.unpack("<Q", blob[:8])[0]
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": "My Character",
        "modelspec.trigger_phrase": "mychar, red hair",
        "modelspec.description": "A character LoRA.\nSecond paragraph.",
        "modelspec.author": "someone",
        "modelspec.resolution": "1024x1024",
        # ModelSpec: "a hash of all tensor content (ie excluding the header section), with 0x prefix"
        "modelspec.hash_sha256": "0x" + hashlib.sha256(blob[8 + n :]).hexdigest(),
        "ss_output_name": "file_name_title",
        "ss_training_comment": "comment",
    }
    write_safetensors(tmp_path / "m.safetensors", tensors, meta)
    info = describe_file(tmp_path / "m.safetensors")
    assert info["title"] == "My Character"
    assert info["description"] == "A character LoRA.\nSecond paragraph."
    assert info["author"] == "someone"
    assert [w["source"] for w in info["trigger_words"]] == ["modelspec.trigger_phrase"]
    assert info["comment"] == "comment"
    assert info["trigger_words"][0]["text"] == "mychar, red hair"
    assert info["training"]["resolution"] == "1024x1024"
    assert info["base"] == "sd1"
    assert info["base_model_version"] == "stable-diffusion-xl-v1-base/lora"
    assert info["base_mismatch"] == (
        "modelspec.architecture says 'stable-diffusion-xl-v1-base/lora' (sdxl), but the weights are sd1"
    )
    assert info["modelspec_hash"] == {
        "stored": hashlib.sha256(blob[8 + n :]).hexdigest(),
        "recomputed": info["tensor_sha256"],
        "matches": True,
    }


def _module_of(key):
    return key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]


def _layout_subset(name, n_modules, rng, starts=("",)):
    """The tensors of the first ``n_modules`` modules of a key layout under each of ``starts``, small values."""
    shapes = layout_shapes(name)
    chosen = set()
    for start in starts:
        modules = list(dict.fromkeys(_module_of(k) for k in sorted(shapes) if k.startswith(start)))
        chosen |= set(modules[:n_modules])
    out = {}
    for key, shape in shapes.items():
        if _module_of(key) in chosen:
            value = np.full(shape, 8.0) if key.endswith(".alpha") else 0.01 * rng.standard_normal(shape)
            out[key] = value.astype(np.float16)
    return out


@needs_real
def test_ai_toolkit_flux_file_that_says_sd15(tmp_path, rng):
    """ai-toolkit's add_base_model_info_to_meta writes ss_base_model_version 'sd_1.5' for a Flux LoRA."""
    tensors = _layout_subset("invokeai__flux_lora_aitoolkit_format", 6, rng)
    assert all(k.startswith("diffusion_model.") for k in tensors)
    meta = {
        "name": "my_flux_style",
        "version": "1.0",
        "software": json.dumps({"name": "ai-toolkit", "url": "https://github.com/ostris/ai-toolkit"}),
        "training_info": json.dumps({"step": 1500, "epoch": 3}),
        "ss_base_model_version": "sd_1.5",
        "sshs_model_hash": "f" * 64,  # of the state dict before ai-toolkit converted its keys
        "format": "pt",
    }
    write_safetensors(tmp_path / "flux.safetensors", tensors, meta)
    info = describe_file(tmp_path / "flux.safetensors")
    assert (info["format"], info["base"], info["parts"]) == ("ai-toolkit", "flux", ["transformer"])
    assert info["base_model_version"] == "sd_1.5"
    assert info["base_mismatch"] == "ss_base_model_version says 'sd_1.5' (sd1), but the weights are flux"
    assert info["title"] == "my_flux_style"
    assert info["trainer"] == "ostris/ai-toolkit"
    assert info["training"] == {"steps": 1500, "epoch": 3}
    assert info["kohya_model_hash"]["matches"] is False
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "flux.safetensors").summary()
    lines = format_description(info)
    assert any(line.startswith("  !! mismatch") and "sd_1.5" in line for line in lines)

    write_safetensors(tmp_path / "unnamed.safetensors", tensors, {**meta, "name": "[name]"})
    assert describe_file(tmp_path / "unnamed.safetensors")["title"] is None


@needs_real
def test_onetrainer_dora_file(tmp_path, rng):
    starts = ("lora_te1_", "lora_te2_", "lora_transformer_")
    tensors = _layout_subset("invokeai__flux_dora_onetrainer_format", 3, rng, starts)
    assert all(any(k.startswith(s) for k in tensors) for s in starts)
    assert any(k.endswith(".dora_scale") for k in tensors)
    # OneTrainer DtypeModelSaverMixin.__calculate_safetensors_hash: sha256 of each tensor's bytes, sorted by key
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(tensors[key].tobytes())
    ot_config = {
        "base_model_name": "black-forest-labs/FLUX.1-dev",
        "learning_rate": 0.0003,
        "epochs": 20,
        "resolution": "512",
        "batch_size": 2,
        "lora_rank": 4,
    }
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "Flux.1-dev/lora",
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": "ball",
        "modelspec.date": "2025-01-20",
        "modelspec.hash_sha256": f"0x{digest.hexdigest()}",
        "ot_branch": "master",
        "ot_revision": "0123abc",
        "ot_config": json.dumps(ot_config),
    }
    write_safetensors(tmp_path / "ot.safetensors", tensors, meta)
    info = describe_file(tmp_path / "ot.safetensors")
    assert info["kind"] == "DoRA"
    assert info["trainer"] == "Nerogar/OneTrainer"
    assert info["title"] == "ball"
    assert info["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert info["base"] == "flux" and info["base_mismatch"] is None
    assert info["training"] == {"num_epochs": 20, "resolution": "512x512", "learning_rate": 0.0003, "batch_size": 2}
    assert info["modelspec_hash"]["matches"] is True  # one dtype: tensor bytes in key order = the data section
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "ot.safetensors").summary()


def test_bundled_textual_inversion_tokens(tmp_path, rng):
    tensors = kohya_tensors(rng, dtype=np.float32)
    tensors["bundle_emb.mychar.string_to_param.*"] = rng.standard_normal((2, 768)).astype(np.float32)
    tensors["bundle_emb.style_x.clip_l"] = rng.standard_normal((1, 768)).astype(np.float32)
    tensors["bundle_emb.style_x.clip_g"] = rng.standard_normal((1, 1280)).astype(np.float32)
    write_safetensors(tmp_path / "b.safetensors", tensors)
    info = describe_file(tmp_path / "b.safetensors")
    assert info["textual_inversion_tokens"] == ["mychar", "style_x"]
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "b.safetensors").summary()


@real_loras
@needs_real
@pytest.mark.parametrize("name", ["lora_disney", "lora_disney_inpainting"])
def test_cloneofsimo_pivotal_tuning_tokens(name):
    info = describe_file(REAL_LORAS / f"cloneofsimo_rank1_with_ti__{name}.safetensors")
    assert info["textual_inversion_tokens"] == ["<s1>", "<s2>"]
    assert info["trainer"] == "cloneofsimo/lora"


# --------------------------------------------------------------------------
# Kind and ranks


def _write(path, tensors, metadata=None):
    write_safetensors(path, {k: np.asarray(v, np.float16) for k, v in tensors.items()}, metadata)
    return path


def test_locon_has_convolutions_beyond_one_by_one(tmp_path, rng):
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    tensors = kohya_tensors(rng)
    tensors[f"{conv}.lora_down.weight"] = 0.1 * rng.standard_normal((4, 320, 3, 3))
    tensors[f"{conv}.lora_up.weight"] = 0.1 * rng.standard_normal((320, 4, 1, 1))
    tensors[f"{conv}.alpha"] = np.asarray(1.0)
    info = describe_file(_write(tmp_path / "locon.safetensors", tensors))
    assert info["kind"] == "LoCon"
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "locon.safetensors").summary()
    # LyCORIS says so in its network args even when it adapted no convolution
    meta = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "locon"})}
    assert describe_file(_write(tmp_path / "l.safetensors", kohya_tensors(rng), meta))["kind"] == "LoCon"


def test_loha(tmp_path, rng):
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    r = 4
    tensors = {
        f"{name}.hada_w1_a": 0.1 * rng.standard_normal((320, r)),
        f"{name}.hada_w1_b": 0.1 * rng.standard_normal((r, 768)),
        f"{name}.hada_w2_a": 0.1 * rng.standard_normal((320, r)),
        f"{name}.hada_w2_b": 0.1 * rng.standard_normal((r, 768)),
        f"{name}.alpha": np.asarray(2.0),
    }
    info = describe_file(_write(tmp_path / "loha.safetensors", tensors))
    assert (info["kind"], info["ranks"], info["base"]) == ("LoHa", [4], "sd1")
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "loha.safetensors").summary()


def test_lokr_rank_is_the_decomposed_factor(tmp_path, rng):
    """LyCORIS's default LoKr: W1 whole, W2 = w2_a @ w2_b of inner size lora_dim."""
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {
        f"{name}.lokr_w1": 0.1 * rng.standard_normal((8, 8)),
        f"{name}.lokr_w2_a": 0.1 * rng.standard_normal((40, 6)),
        f"{name}.lokr_w2_b": 0.1 * rng.standard_normal((6, 96)),
        f"{name}.alpha": np.asarray(6.0),
    }
    info = describe_file(_write(tmp_path / "lokr.safetensors", tensors))
    assert (info["kind"], info["ranks"], info["base"]) == ("LoKr", [6], "sd1")  # 8*96 = 768 in-features
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(tmp_path / "lokr.safetensors").summary()


@real_loras
@needs_real
@pytest.mark.parametrize("dim", [4, 8, 16])
def test_real_lokr_ranks_are_the_trained_dim(dim):
    path = next(REAL_LORAS.glob(f"lycoris_lokr_sd1_dim{dim}__*.safetensors"))
    info = describe_file(path)
    assert info["kind"] == "LoKr"
    assert info["ranks"] == [int(info["network"]["dim"])] == [dim]
    assert info["network"]["args"]["algo"] == "lokr"


@real_loras
@needs_real
def test_full_factor_lokr_rank_is_that_of_w2(layout_file):
    """Both factors stored whole: no lora_dim in the file; the rank of W2 (min of its sides) is reported."""
    path = layout_file(FULL_LOKR)
    shapes = layout_shapes(FULL_LOKR)
    w2 = {min(s) for k, s in shapes.items() if k.endswith(".lokr_w2")}
    info = describe_file(path)
    assert info["kind"] == "LoKr"
    assert info["ranks"] == sorted(w2) == [32]
    # load_lora reports the same rank (one rule, formats.module_shape)
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(path).summary()


@real_loras
@needs_real
@pytest.mark.parametrize(
    "name, kind",
    [
        ("invokeai__flux_control_lora_format", "Control-LoRA"),
        ("invokeai__flux_dora_onetrainer_format", "DoRA"),
        (FULL_LOKR, "LoKr"),
        ("invokeai__flux_lora_kohya_format", "LoRA"),
        ("invokeai_stripped__sd1_kohya__shinkai_makoto_offset", "LoRA"),  # 1x1 proj_in/proj_out convs
        (SDXL, "LoRA"),
    ],
)
def test_kind_of_key_layouts(layout_file, name, kind):
    assert describe_file(layout_file(name), hashes=False)["kind"] == kind


# --------------------------------------------------------------------------
# The same summary as load_lora


@real_loras
@needs_real
@pytest.mark.parametrize(
    "name", sorted(p.name for p in REAL_LORAS.glob("*.safetensors")) if REAL_LORAS.is_dir() else []
)
def test_summary_of_real_files_is_load_loras(name):
    info = describe_file(REAL_LORAS / name)
    assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(REAL_LORAS / name).summary()


@real_loras
@needs_real
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != FULL_LOKR])
def test_summary_of_key_layouts_is_load_loras(layout_file, name):
    path = layout_file(name)
    info = describe_file(path, hashes=False)
    lora = load_lora(path)
    assert {k: info[k] for k in SUMMARY_KEYS} == lora.summary()
    del lora


# --------------------------------------------------------------------------
# Header only


class _Counting:
    """A file object that counts the bytes read through it."""

    def __init__(self, fh, counter):
        self._fh, self._counter = fh, counter

    def read(self, *args):
        data = self._fh.read(*args)
        self._counter[0] += len(data)
        return data

    def readinto(self, buf):
        n = self._fh.readinto(buf)
        self._counter[0] += n or 0
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


@real_loras
@needs_real
def test_reads_only_the_header_and_the_alphas(layout_file, monkeypatch):
    path = layout_file(SDXL)
    entries, _, data_start = read_safetensors_header(path)
    alpha_bytes = sum(end - begin for k, (_, _, begin, end) in entries.items() if k.endswith(".alpha"))
    assert alpha_bytes == 2 * 986
    counter, real_open = [0], builtins.open

    def counting_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return _Counting(fh, counter) if str(file) == str(path) else fh

    monkeypatch.setattr(builtins, "open", counting_open)
    describe_file(path, hashes=False)
    assert counter[0] == data_start + alpha_bytes
    counter[0] = 0
    describe_file(path)
    assert counter[0] == data_start + alpha_bytes + path.stat().st_size  # plus one pass for the hashes


def _garbage_copy(src, dst):
    """A copy whose tensor bytes, alphas aside, are all 0xFF (NaN in F16, F32 and BF16)."""
    shutil.copyfile(src, dst)
    entries, _, start = read_safetensors_header(dst)
    with open(dst, "r+b") as fh:
        for key, (_, _, begin, end) in entries.items():
            if not key.endswith(".alpha"):
                fh.seek(start + begin)
                fh.write(b"\xff" * (end - begin))
    return dst


def _without_hashes(info):
    return {k: v for k, v in info.items() if k not in (*HASH_KEYS, "path", "kohya_model_hash", "modelspec_hash")}


def test_nan_tensor_bytes_describe_the_same(tmp_path, rng):
    path, _, _ = write_kohya(tmp_path / "k.safetensors", rng, big=True)
    bad = _garbage_copy(path, tmp_path / "garbage.safetensors")
    with pytest.raises(LoraFormatError, match="NaN or Inf"):
        load_lora(bad)  # the garbage is real
    good, garbage = describe_file(path), describe_file(bad)
    assert _without_hashes(garbage) == _without_hashes(good)
    assert garbage["sha256"] != good["sha256"] and garbage["kohya_model_hash"]["matches"] is False


@real_loras
@needs_real
def test_nan_tensor_bytes_of_a_real_file_describe_the_same(tmp_path):
    path = next(REAL_LORAS.glob("lycoris_lokr_sd1_dim16__*.safetensors"))
    bad = _garbage_copy(path, tmp_path / "garbage.safetensors")
    assert _without_hashes(describe_file(bad)) == _without_hashes(describe_file(path))


@real_loras
@needs_real
def test_memory_does_not_grow_with_the_file(layout_file):
    path = layout_file(SDXL)
    describe_file(path, hashes=False)  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        describe_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size > 200e6
    assert peak < 24e6, f"peak {peak / 1e6:.1f} MB of Python allocations for a {path.stat().st_size / 1e6:.0f} MB file"


# --------------------------------------------------------------------------
# Refusals


def test_refusals_match_load_lora(tmp_path, rng):
    cases = {
        "ab": (
            {f"{SD1_Q}.lora_down.weight": np.zeros((4, 320)), f"{SD1_Q}.lora_up.weight": np.zeros((320, 2))},
            "A/B shape mismatch",
        ),
        "only_down": ({f"{SD1_Q}.lora_down.weight": np.zeros((4, 320))}, r"up \(B\) factor is missing"),
        "unknown": ({"model.weight": np.zeros((4, 4))}, "unknown layout"),
        "nan_alpha": (
            {
                f"{SD1_Q}.lora_down.weight": np.zeros((4, 320)),
                f"{SD1_Q}.lora_up.weight": np.zeros((320, 4)),
                f"{SD1_Q}.alpha": np.asarray(np.nan),
            },
            "NaN or Inf",
        ),
        "vector_alpha": (
            {
                f"{SD1_Q}.lora_down.weight": np.zeros((4, 320)),
                f"{SD1_Q}.lora_up.weight": np.zeros((320, 4)),
                f"{SD1_Q}.alpha": np.ones(2),
            },
            "expected a scalar",
        ),
    }
    for case, (tensors, reason) in cases.items():
        path = _write(tmp_path / f"{case}.safetensors", tensors)
        with pytest.raises(LoraFormatError, match=reason):
            load_lora(path)
        with pytest.raises(LoraFormatError, match=reason):
            describe_file(path)
    ints = {f"{SD1_Q}.lora_down.weight": np.zeros((4, 320), np.int32), f"{SD1_Q}.lora_up.weight": np.zeros((320, 4))}
    write_safetensors(tmp_path / "int.safetensors", ints)
    for read in (load_lora, describe_file):
        with pytest.raises(LoraFormatError, match="not a floating-point type"):
            read(tmp_path / "int.safetensors")


def test_text_block(tmp_path, rng):
    path, _, meta = write_kohya(tmp_path / "k.safetensors", rng)
    lines = format_description(describe_file(path))
    text = "\n".join(lines)
    assert lines[0] == str(path)
    for pattern in [
        r"^  title +mychar_v2  \[header\]$",
        r"^  kind +LoRA$",
        r"^  base +sd1$",
        r"^  base model +v1-5-pruned-emaonly\.safetensors  \[header\]$",
        r"^  trigger words +mychar \(60\)  \[header ss_tag_frequency\]$",
        r"^ +1girl \(59\)$",
        r"^  comment +trigger: mychar  \[header ss_training_comment\]$",
        r"^  training +3010 steps, epoch 10 of 10, 768x768, lr 0\.0003, 55 images \(1204 with repeats\)$",
        r"^  format +kohya$",
        r"^  ranks +8$",
        r"^  sha256 +[0-9a-f]{64}$",
        r"^  AutoV2 +[0-9a-f]{10}$",
        rf"^  AutoV3 +{meta['sshs_model_hash'][:12]} ",
        r"^  sshs_model_hash +[0-9a-f]{64} \(matches the tensor data\)$",
    ]:
        assert re.search(pattern, text, re.M), pattern


# --------------------------------------------------------------------------
# Comments and placeholder hashes


def test_a_resize_note_in_the_training_comment_is_a_comment_not_a_trigger_word(tmp_path, rng):
    # sd-scripts networks/resize_lora.py appends "dimension is resized from {old} to {new}" to ss_training_comment
    note = "dimension is resized from 256 to 16; CC BY-NC 4.0"
    write_safetensors(tmp_path / "r.safetensors", kohya_tensors(rng), {"ss_training_comment": note})
    info = describe_file(tmp_path / "r.safetensors")
    assert info["comment"] == note
    assert note not in [w["text"] for w in info["trigger_words"]]
    text = "\n".join(format_description(info))
    assert re.search(
        r"^  comment +dimension is resized from 256 to 16; CC BY-NC 4\.0  \[header ss_training_comment\]$", text, re.M
    )
    assert "trigger words" not in text


def test_the_sha256_of_empty_input_is_named_a_placeholder(tmp_path, rng):
    empty = hashlib.sha256(b"").hexdigest()  # e3b0c442...b855: a hash of nothing, not of the tensors
    assert empty.startswith("e3b0c442") and empty.endswith("b855")
    write_safetensors(tmp_path / "p.safetensors", kohya_tensors(rng), {"sshs_model_hash": empty})
    info = describe_file(tmp_path / "p.safetensors")
    assert info["kohya_model_hash"] == {
        "stored": empty,
        "recomputed": info["tensor_sha256"],
        "matches": None,
        "placeholder": True,
    }
    assert info["tensor_sha256"] != empty
    text = "\n".join(format_description(info))
    assert f"  sshs_model_hash {empty} (a placeholder: the sha256 of empty input, not a hash of this file)" in text
    assert "does NOT match" not in text
