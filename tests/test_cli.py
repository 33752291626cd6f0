"""Tests for the ``lorastyle`` command (lorastyle.cli).

The command runs in-process through ``lorastyle.cli.main`` with ``capsys``;
one test runs the installed console script to prove the entry point works.
Its contract: ``inspect FILE --json`` prints one JSON object; ``index DIR -o
INDEX`` skips and reports bad files; ``similar INDEX QUERY --json`` prints
``[{"path", "score"}, ...]`` best first; bad input gives one line
``error: FILE: reason`` on stderr and exit status 2.
"""

import contextlib
import hashlib
import io
import json
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from lorastyle.cli import EXIT_BAD_INPUT, main
from lorastyle.io.formats import load_lora, save_lora

DESCRIPTORS = ["concat", "delta", "gram"]
RANK = 4
TINY = {
    # canonical name: (out, in); a made-up "tiny" model, so base comes from metadata
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (16, 16),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (16, 12),
    "unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (32, 16),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (12, 12),
}
SUMMARY_KEYS = {"format", "base", "parts", "n_modules", "ranks", "alphas", "dtype"}


def random_factors(seed):
    rng = np.random.default_rng(seed)
    return {
        n: (
            (0.1 * rng.standard_normal((RANK, i))).astype(np.float32),
            (0.1 * rng.standard_normal((o, RANK))).astype(np.float32),
        )
        for n, (o, i) in TINY.items()
    }


def write_good(path, seed, base="tiny"):
    save_lora(path, random_factors(seed), alpha=4.0, base=base)
    return path


# ---- bad files --------------------------------------------------------------

_KOHYA = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"


def _raw(path, header: bytes, data=b"", length=None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


def _bad_empty(path):
    path.write_bytes(b"")


def _bad_header_too_long(path):
    _raw(path, b'{"a": 1}', length=1 << 20)


def _bad_header_not_json(path):
    _raw(path, b"{not json at all}")


def _bad_duplicate(path):
    _raw(
        path,
        b'{"w.lora_down.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"w.lora_down.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        b"\0" * 8,
    )


def _bad_truncated(path):
    write_good(path, 99)
    path.write_bytes(path.read_bytes()[:-7])


def _bad_ab_mismatch(path):
    safetensors.numpy.save_file(
        {
            f"{_KOHYA}.lora_down.weight": np.zeros((4, 16), np.float32),
            f"{_KOHYA}.lora_up.weight": np.zeros((16, 2), np.float32),
        },
        str(path),
    )


def _bad_value(value):
    def make(path):
        down = np.full((4, 16), 0.1, np.float32)
        down[1, 1] = value
        safetensors.numpy.save_file(
            {f"{_KOHYA}.lora_down.weight": down, f"{_KOHYA}.lora_up.weight": np.ones((16, 4), np.float32)}, str(path)
        )

    return make


def _bad_unknown_layout(path):
    safetensors.numpy.save_file({"model.weight": np.ones((4, 4), np.float32)}, str(path))


def _bad_pickle(path):
    path.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}))


# name: (file name, maker, reason regex)
BAD = {
    "empty": ("empty.safetensors", _bad_empty, r"empty file"),
    "header_too_long": ("hlen.safetensors", _bad_header_too_long, r"header length \d+ is larger than the file"),
    "header_not_json": ("nojson.safetensors", _bad_header_not_json, r"header is not valid JSON"),
    "duplicate_names": ("dup.safetensors", _bad_duplicate, r"duplicate tensor name"),
    "truncated": ("trunc.safetensors", _bad_truncated, r"truncated tensor data"),
    "ab_mismatch": ("ab.safetensors", _bad_ab_mismatch, r"A/B shape mismatch"),
    "nan": ("nan.safetensors", _bad_value(np.nan), r"holds NaN or Inf values"),
    "inf": ("inf.safetensors", _bad_value(np.inf), r"holds NaN or Inf values"),
    "unknown_layout": ("unknown.safetensors", _bad_unknown_layout, r"unknown layout"),
    "pickle": ("model.ckpt", _bad_pickle, r"refusing to unpickle"),
}


def make_bad(folder, case):
    name, maker, _ = BAD[case]
    path = folder / name
    maker(path)
    return path


def error_lines(stderr):
    return [line for line in stderr.split("\n") if line.startswith("error: ")]


def assert_single_error(captured, path, reason):
    """stderr is exactly one line 'error: <path>: <reason>'; stdout is empty."""
    lines = captured.err.strip("\n").split("\n")
    assert len(lines) == 1, captured.err
    prefix = f"error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(reason, lines[0][len(prefix) :]), lines[0]
    assert captured.out == ""


def run_json(capsys, argv):
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out), captured.err


# ---- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """6 good tiny LoRAs (some in a subfolder), every bad file, 2 LoRAs of the sd1 family."""
    root = tmp_path_factory.mktemp("collection")
    (root / "sub").mkdir()
    good = [write_good(root / ("sub" if i % 2 else ".") / f"good{i}.safetensors", seed=i) for i in range(6)]
    bad = {case: make_bad(root / ("sub" if i % 2 else "."), case) for i, case in enumerate(BAD)}
    other = [write_good(root / f"sd1_{i}.safetensors", seed=50 + i, base="sd1") for i in range(2)]
    outside = write_good(tmp_path_factory.mktemp("outside") / "query.safetensors", seed=100)
    return {
        "root": root,
        "good": [str(p) for p in good],
        "bad": {k: str(p) for k, p in bad.items()},
        "other": [str(p) for p in other],
        "outside": str(outside),
    }


@pytest.fixture(scope="module")
def built_indexes(collection, tmp_path_factory):
    """One index per descriptor, built through the command; its stderr is kept for the tests."""
    out = {}
    folder = tmp_path_factory.mktemp("indexes")
    for descriptor in DESCRIPTORS:
        path = folder / f"{descriptor}.safetensors"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = main(["index", str(collection["root"]), "-o", str(path), "--descriptor", descriptor])
        out[descriptor] = (status, str(path), err.getvalue())
    return out


# ---- inspect --------------------------------------------------------------------


def test_inspect_json(tmp_path, capsys):
    path = tmp_path / "mixed.safetensors"
    rng = np.random.default_rng(0)
    tensors = {}
    # three kohya modules with ranks 8, 2, 4 and alphas 1, 8, 8 (fp16)
    for name, rank, alpha in [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 8, 1.0),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 2, 8.0),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 4, 8.0),
    ]:
        tensors[f"{name}.lora_down.weight"] = rng.standard_normal((rank, 768 if "attn2" in name else 320)).astype(
            np.float16
        )
        tensors[f"{name}.lora_up.weight"] = rng.standard_normal((320, rank)).astype(np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float16)
    safetensors.numpy.save_file(tensors, str(path))

    status = main(["inspect", str(path), "--json"])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.err == ""
    assert captured.out.count("\n") == 1
    info = json.loads(captured.out)
    assert SUMMARY_KEYS <= set(info)  # the contract's keys, among the description's
    summary = {k: info[k] for k in SUMMARY_KEYS}
    assert summary == {
        "format": "kohya",
        "base": "sd1",
        "parts": ["text_encoder", "unet"],
        "n_modules": 3,
        "ranks": [2, 4, 8],
        "alphas": [1.0, 8.0],
        "dtype": "float16",
    }
    assert all(type(r) is int for r in summary["ranks"])


def test_inspect_text(tmp_path, capsys):
    path = write_good(tmp_path / "g.safetensors", 0)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(path)
    assert re.search(r"^\s+format\s+diffusers-peft$", out, re.M)
    assert re.search(r"^\s+base\s+tiny$", out, re.M)


def test_console_script_inspect(tmp_path):
    script = Path(sys.executable).parent / "lorastyle"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    path = write_good(tmp_path / "g.safetensors", 3)
    out = subprocess.run([str(script), "inspect", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert {k: info[k] for k in SUMMARY_KEYS} == {
        "format": "diffusers-peft",
        "base": "tiny",
        "parts": ["text_encoder", "unet"],
        "n_modules": 4,
        "ranks": [4],
        "alphas": [4.0],
        "dtype": "float32",
    }


# Cases whose fault is in tensor values: inspect reads the header (and alphas) only, --check reads them all.
VALUE_FAULTS = {"nan", "inf"}


@pytest.mark.parametrize("case", list(BAD))
def test_inspect_bad_file(tmp_path, capsys, case):
    path = make_bad(tmp_path, case)
    assert main(["inspect", str(path), "--json", "--check"]) == 2
    assert_single_error(capsys.readouterr(), path, BAD[case][2])
    if case in VALUE_FAULTS:
        assert main(["inspect", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["format"] == "kohya" and info["n_modules"] == 1
    else:
        assert main(["inspect", str(path), "--json"]) == 2
        assert_single_error(capsys.readouterr(), path, BAD[case][2])


def test_inspect_missing_file(tmp_path, capsys):
    path = tmp_path / "missing.safetensors"
    assert main(["inspect", str(path)]) == 2
    assert_single_error(capsys.readouterr(), path, r"cannot read file")


def _described_kohya(path):
    """An SD 1.x kohya LoRA with the metadata sd-scripts writes, and the sshs_model_hash it would store."""
    rng = np.random.default_rng(5)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors = {
        f"{name}.lora_down.weight": rng.standard_normal((4, 768)).astype(np.float16),
        f"{name}.lora_up.weight": rng.standard_normal((320, 4)).astype(np.float16),
        f"{name}.alpha": np.asarray(4.0, np.float16),
    }
    meta = {
        "ss_output_name": "mychar",
        "ss_training_comment": "mychar, red hair",
        "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 12, "red hair": 7}}),
        "ss_sd_model_name": "v1-5-pruned.safetensors",
        "ss_base_model_version": "sd_v1",
        "ss_steps": "1000",
        "ss_resolution": "(512, 512)",
    }
    blob = safetensors.numpy.save(tensors, meta)
    n = struct.unpack("<Q", blob[:8])[0]
    meta["sshs_model_hash"] = hashlib.sha256(blob[8 + n :]).hexdigest()
    safetensors.numpy.save_file(tensors, str(path), meta)
    return path, meta


def test_inspect_json_describes_the_file(tmp_path, capsys):
    path, meta = _described_kohya(tmp_path / "mychar.safetensors")
    info, err = run_json(capsys, ["inspect", str(path), "--json"])
    assert err == ""
    data = path.read_bytes()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["autov2"] == info["sha256"][:10]
    assert info["autov3"] == meta["sshs_model_hash"][:12]
    assert info["kohya_model_hash"]["matches"] is True
    assert info["title"] == "mychar"
    # the training comment is a comment; the trigger words are the caption tags, most frequent first
    assert info["comment"] == "mychar, red hair"
    assert [w["text"] for w in info["trigger_words"]] == ["mychar", "red hair"]
    assert info["facts"]["title"] == {"value": "mychar", "source": "header"}
    assert info["sidecars"] == [] and info["sidecar_mismatch"] == []
    assert info["training"] == {"steps": 1000, "resolution": "512x512"}
    assert info["file_size"] == len(data)
    assert info["kind"] == "LoRA" and info["base"] == "sd1" and info["base_mismatch"] is None


def test_inspect_text_block(tmp_path, capsys):
    path, meta = _described_kohya(tmp_path / "mychar.safetensors")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == str(path)
    for pattern in (
        r"^  title +mychar  \[header\]$",
        r"^  kind +LoRA$",
        r"^  base +sd1$",
        r"^  base version +sd_v1  \[header\]$",
        r"^  trigger words +mychar \(12\)  \[header ss_tag_frequency\]$",
        r"^ +red hair \(7\)$",
        r"^  comment +mychar, red hair  \[header ss_training_comment\]$",
        r"^  training +1000 steps, 512x512$",
        r"^  format +kohya$",
        r"^  size +\d+ bytes$|^  size +[\d.]+ kB \(\d+ bytes\)$",
        rf"^  AutoV3 +{meta['sshs_model_hash'][:12]} ",
        r"^  sshs_model_hash +[0-9a-f]{64} \(matches the tensor data\)$",
    ):
        assert re.search(pattern, out, re.M), (pattern, out)
    assert "mismatch" not in out


def test_inspect_shows_sidecar_facts_with_their_source(tmp_path, capsys):
    """A Civitai Helper NAME.civitai.info (scripts/ch_lib/model.py write_model_info: the API's model-version JSON,
    json.dumps(indent=4)) and an AUTOMATIC1111 NAME.json (ui_edit_user_metadata.py save_lora_user_metadata, written
    with json.dump(indent=4, ensure_ascii=False)) beside the kohya file."""
    path, _ = _described_kohya(tmp_path / "mychar.safetensors")
    version = {
        "id": 2,
        "modelId": 1,
        "name": "v3",
        "baseModel": "Pony",
        "trainedWords": ["mychar_pony"],
        "model": {"name": "My Character", "type": "LORA"},
        "files": [{"hashes": {"SHA256": hashlib.sha256(path.read_bytes()).hexdigest().upper()}}],
    }
    (tmp_path / "mychar.civitai.info").write_text(json.dumps(version, indent=4))
    user = {"description": "", "sd version": "Unknown", "activation text": "", "preferred weight": 0.6,
            "negative text": "", "notes": "keep at 0.6"}  # fmt: skip
    (tmp_path / "mychar.json").write_text(json.dumps(user, indent=4, ensure_ascii=False), encoding="utf8")
    info, err = run_json(capsys, ["inspect", str(path), "--json"])
    assert err == ""
    assert {k: (f["value"], f["source"]) for k, f in info["facts"].items()} == {
        "title": ("My Character (v3)", "mychar.civitai.info"),
        "trigger_words": (["mychar_pony"], "mychar.civitai.info"),
        "base_model": ("Pony", "mychar.civitai.info"),
        "base_model_version": ("sd_v1", "header"),  # A1111's "Unknown" is no claim
        "preferred_weight": (0.6, "mychar.json"),
        "notes": ("keep at 0.6", "mychar.json"),
        "comment": ("mychar, red hair", "header"),
        "civitai_url": ("https://civitai.com/models/1?modelVersionId=2", "mychar.civitai.info"),
    }
    assert [sc["kind"] for sc in info["sidecars"]] == ["a1111", "civitai-helper"]
    assert info["sidecar_mismatch"] == []  # Civitai's SHA256 is this file's
    assert info["title"] == "mychar"  # the header's own, as before
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    for line in (
        "  title           My Character (v3)  [mychar.civitai.info]",
        "  base model      Pony  [mychar.civitai.info]",
        "  base version    sd_v1  [header]",
        "  trigger words   mychar_pony  [mychar.civitai.info]",
        "  weight          0.6 (preferred)  [mychar.json]",
        "  notes           keep at 0.6  [mychar.json]",
        "  comment         mychar, red hair  [header ss_training_comment]",
        "  sidecars        mychar.json, mychar.civitai.info",
    ):
        assert line in out, (line, out)


def test_inspect_warns_of_a_broken_sidecar_and_goes_on(tmp_path, capsys):
    path, _ = _described_kohya(tmp_path / "mychar.safetensors")
    (tmp_path / "mychar.metadata.json").write_text('{"model_name": "half')
    assert main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().split("\n")
    assert len(lines) == 1
    assert lines[0].startswith(f"warning: {tmp_path / 'mychar.metadata.json'}: sidecar not read: not valid JSON")
    assert "Traceback" not in captured.err
    assert re.search(r"^  title +mychar  \[header\]$", captured.out, re.M)


def test_inspect_check_says_what_it_checked(tmp_path, capsys):
    path, _ = _described_kohya(tmp_path / "mychar.safetensors")  # 3 tensors, 1 module
    assert main(["inspect", str(path), "--check"]) == 0
    captured = capsys.readouterr()
    expected = (
        "check passed: read all 3 tensors as index does; the factors of 1 module fit together and hold no NaN or Inf"
    )
    assert captured.out.splitlines()[-1] == expected
    info, err = run_json(capsys, ["inspect", str(path), "--json", "--check"])
    assert err.strip() == expected  # stdout stays one JSON object
    assert info["check"] == {"passed": True, "tensors": 3, "modules": 1}
    assert main(["inspect", str(path)]) == 0
    assert "check passed" not in capsys.readouterr().out  # not without --check


def test_similar_given_a_folder_says_what_it_expects(collection, built_indexes, tmp_path, capsys):
    _, index_path, _ = built_indexes["gram"]
    folder = tmp_path / "loras"
    folder.mkdir()
    assert main(["similar", index_path, str(folder)]) == 2
    assert_single_error(
        capsys.readouterr(),
        folder,
        r"^is a folder: similar's QUERY is one LoRA file "
        rf"\(to index a folder: lorastyle index {re.escape(str(folder))} -o INDEX\)$",
    )
    assert main(["similar", str(folder), collection["good"][0]]) == 2
    assert_single_error(capsys.readouterr(), folder, r"^is a folder: similar's INDEX is an index file ")


def test_index_of_three_files_says_one_component(tmp_path, capsys):
    folder = tmp_path / "three"
    folder.mkdir()
    for seed in range(3):
        write_good(folder / f"g{seed}.safetensors", seed)
    assert main(["index", str(folder), "-o", str(tmp_path / "idx.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "tiny: 3 files (gram; PCA of 1 component)" in err.splitlines()
    assert "indexed 3 of 3 files in 1 base family; skipped 0;" in err


def test_inspect_flags_a_base_the_weights_contradict(tmp_path, capsys):
    rng = np.random.default_rng(6)
    tensors = {  # an ai-toolkit Flux module
        "diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": rng.standard_normal((4, 3072)),
        "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": rng.standard_normal((3072, 4)),
    }
    path = tmp_path / "flux.safetensors"
    meta = {"ss_base_model_version": "sd_1.5", "software": json.dumps({"name": "ai-toolkit"})}
    safetensors.numpy.save_file({k: v.astype(np.float16) for k, v in tensors.items()}, str(path), meta)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  base +flux$", out, re.M)
    assert re.search(
        r"^  !! mismatch +ss_base_model_version says 'sd_1.5' \(sd1\), but the weights are flux$", out, re.M
    )
    info, _ = run_json(capsys, ["inspect", str(path), "--json"])
    assert info["base_mismatch"] == "ss_base_model_version says 'sd_1.5' (sd1), but the weights are flux"


def test_inspect_no_hashes(tmp_path, capsys):
    path, meta = _described_kohya(tmp_path / "mychar.safetensors")
    info, _ = run_json(capsys, ["inspect", str(path), "--json", "--no-hashes"])
    assert all(info[k] is None for k in ("sha256", "autov1", "autov2", "autov3", "tensor_sha256"))
    assert info["kohya_model_hash"] == {"stored": meta["sshs_model_hash"], "recomputed": None, "matches": None}
    assert main(["inspect", str(path), "--no-hashes"]) == 0
    out = capsys.readouterr().out
    assert "sha256 " not in out and "AutoV2" not in out
    assert re.search(r"^  sshs_model_hash +[0-9a-f]{64} \(not checked\)$", out, re.M)


def test_inspect_json_summary_equals_load_lora(tmp_path, capsys):
    for seed in range(3):
        path = write_good(tmp_path / f"g{seed}.safetensors", seed, base="tiny" if seed else "sd1")
        info, _ = run_json(capsys, ["inspect", str(path), "--json"])
        assert {k: info[k] for k in SUMMARY_KEYS} == load_lora(path).summary()


# ---- index and similar -------------------------------------------------------------


@pytest.mark.parametrize("descriptor", DESCRIPTORS)
def test_index_skips_and_reports_bad_files_and_groups_families(collection, built_indexes, descriptor):
    status, index_path, stderr = built_indexes[descriptor]
    assert status == 0, stderr
    lines = error_lines(stderr)
    for case, path in collection["bad"].items():
        mine = [line for line in lines if line.startswith(f"error: {path}: ")]
        assert len(mine) == 1, (path, lines)
        assert re.search(BAD[case][2], mine[0])
    assert len(lines) == len(collection["bad"])  # no good file is reported, nor a file of another family
    # the index is a safetensors file (read by the safetensors library); each family is a group
    with safe_open(index_path, "np") as fh:
        meta = fh.metadata()
        groups = {}
        for gi, g in enumerate(json.loads(meta["groups"])):  # each record's JSON, one after another
            blob, offsets = fh.get_tensor(f"g{gi}/records").tobytes(), fh.get_tensor(f"g{gi}/record_offsets")
            rows = [json.loads(blob[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
            groups[g["key"].split("/")[0]] = sorted(r["path"] for r in rows)
    assert meta["descriptor"] == descriptor
    assert groups == {"tiny": sorted(collection["good"]), "sd1": sorted(collection["other"])}
    # one report line per group (concat groups also by layout: tiny/<layout>)
    report = [re.sub(r"^(\w+)/\w+:", r"\1:", line) for line in stderr.split("\n") if line.startswith(("tiny", "sd1"))]
    assert report == [
        f"tiny: 6 files ({descriptor}; PCA of 4 components)",
        f"sd1: 2 files ({descriptor}; no PCA (fewer than 3 files))",
    ]


@pytest.mark.parametrize("descriptor", DESCRIPTORS)
def test_similar_in_index_query(collection, built_indexes, capsys, descriptor):
    index_path = built_indexes[descriptor][1]
    good = collection["good"]
    for query in good[:2]:
        results, _ = run_json(capsys, ["similar", index_path, query, "-k", "3", "--json"])
        assert isinstance(results, list) and len(results) == 3
        assert all({"path", "score"} <= set(r) for r in results)
        paths = [r["path"] for r in results]
        scores = [r["score"] for r in results]
        assert query not in paths
        assert set(paths) <= set(good)
        assert len(set(paths)) == 3
        assert all(a >= b for a, b in zip(scores, scores[1:]))
        assert all(-1.0 - 1e-9 <= s <= 1.0 + 1e-9 for s in scores)


def test_a_cosine_query_does_not_import_scikit_learn_and_a_pca_query_does(collection, built_indexes):
    """scikit-learn takes about 1.5 s to import: the default query must not pay it (the PCA scorer must)."""
    index_path = built_indexes["gram"][1]
    probe = (
        "import sys\nfrom lorastyle.cli import main\n"
        "status = main(['similar', sys.argv[1], sys.argv[2], '-k', '2', '--json', '--scorer', sys.argv[3]])\n"
        "print(status, 'sklearn' in sys.modules, file=sys.stderr)\n"
    )
    for scorer, imported in (("cosine", "False"), ("pca", "True")):
        proc = subprocess.run(
            [sys.executable, "-c", probe, index_path, collection["outside"], scorer], capture_output=True, text=True
        )
        assert proc.stderr.strip().splitlines()[-1] == f"0 {imported}", proc.stderr


@pytest.mark.parametrize("descriptor", DESCRIPTORS)
def test_similar_out_of_index_query(collection, built_indexes, capsys, descriptor):
    index_path = built_indexes[descriptor][1]
    results, _ = run_json(capsys, ["similar", index_path, collection["outside"], "-k", "4", "--json"])
    assert len(results) == 4
    assert {r["path"] for r in results} <= set(collection["good"])
    scores = [r["score"] for r in results]
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    # k larger than the index: every indexed file once
    results, _ = run_json(capsys, ["similar", index_path, collection["outside"], "-k", "50", "--json"])
    assert sorted(r["path"] for r in results) == sorted(collection["good"])


@pytest.mark.parametrize("descriptor", DESCRIPTORS)
def test_similar_searches_the_query_family(collection, built_indexes, capsys, descriptor):
    index_path = built_indexes[descriptor][1]
    query, other = collection["other"]
    results, _ = run_json(capsys, ["similar", index_path, query, "-k", "3", "--json"])
    assert [r["path"] for r in results] == [other]


def test_similar_query_of_a_family_the_index_lacks(collection, tmp_path, capsys):
    out = tmp_path / "tiny-only.safetensors"
    assert main(["index", str(collection["root"]), "-o", str(out), "--base", "tiny"]) == 0
    err = capsys.readouterr().err
    assert all(f"error: {p}: base family sd1, not tiny (--base tiny)" in err for p in collection["other"])
    query = collection["other"][0]
    assert main(["similar", str(out), query, "-k", "3", "--json"]) == 2
    assert_single_error(capsys.readouterr(), query, r"the index has no file of its base family sd1; it holds tiny")


@pytest.mark.parametrize("case", list(BAD))
def test_similar_bad_query(collection, built_indexes, capsys, case):
    index_path = built_indexes["gram"][1]
    query = collection["bad"][case]
    assert main(["similar", index_path, query, "--json"]) == 2
    assert_single_error(capsys.readouterr(), query, BAD[case][2])


def test_similar_bad_index(collection, tmp_path, capsys):
    not_index = collection["good"][0]  # a LoRA, not an index
    assert main(["similar", not_index, collection["good"][1]]) == 2
    assert_single_error(capsys.readouterr(), not_index, r"not a lorastyle index")
    empty = make_bad(tmp_path, "empty")
    assert main(["similar", str(empty), collection["good"][1]]) == 2
    assert_single_error(capsys.readouterr(), empty, r"empty file")


def test_index_with_one_good_file_is_searchable(tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    only = write_good(folder / "only.safetensors", 0)
    bad = make_bad(folder, "nan")
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(folder), "-o", str(out)]) == 0
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and "holds NaN or Inf values" in lines[0]
    query = write_good(tmp_path / "q.safetensors", 1)
    results, _ = run_json(capsys, ["similar", str(out), str(query), "--json"])
    assert [r["path"] for r in results] == [str(only)]


def test_index_with_only_bad_files(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    bad = make_bad(folder, "nan")
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(folder), "-o", str(out)]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines[0].startswith(f"error: {bad}: ")
    assert lines[-1] == f"error: {folder}: no LoRA file could be indexed"
    assert not out.exists()


def test_index_empty_folder(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a LoRA")
    out = tmp_path / "idx.safetensors"
    assert main(["index", str(folder), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [f"error: {folder}: no LoRA files (.safetensors) found"]
    assert not out.exists()


def test_bad_k_and_components(collection, built_indexes, capsys, tmp_path):
    assert main(["similar", built_indexes["gram"][1], collection["good"][0], "-k", "0"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: -k: must be at least 1, got 0 (see lorastyle similar --help)"
    ]
    assert main(["index", str(collection["root"]), "-o", str(tmp_path / "i.safetensors"), "--components", "0"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        "error: --components: must be at least 1, got 0 (see lorastyle index --help)"
    ]


# ---- retrieval sanity ----------------------------------------------------------------


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """3 styles x 4 LoRAs: each LoRA is its style's random (A0, B0) plus small seeded noise."""
    root = tmp_path_factory.mktemp("styles")
    labels = {}
    for s in range(3):
        base = random_factors(1000 + s)
        for j in range(4):
            rng = np.random.default_rng(2000 + 10 * s + j)
            factors = {
                n: (
                    (A + 0.02 * rng.standard_normal(A.shape)).astype(np.float32),
                    (B + 0.02 * rng.standard_normal(B.shape)).astype(np.float32),
                )
                for n, (A, B) in base.items()
            }
            path = root / f"s{s}" / f"lora{j}.safetensors"
            path.parent.mkdir(exist_ok=True)
            save_lora(path, factors, alpha=4.0, base="tiny")
            labels[str(path)] = s
    return root, labels


@pytest.mark.parametrize("descriptor", DESCRIPTORS)
def test_top1_is_same_style(styles, tmp_path, capsys, descriptor):
    root, labels = styles
    index_path = str(tmp_path / "styles.safetensors")
    assert main(["index", str(root), "-o", index_path, "--descriptor", descriptor]) == 0
    assert error_lines(capsys.readouterr().err) == []
    for query, style in labels.items():
        (top,), _ = run_json(capsys, ["similar", index_path, query, "-k", "1", "--json"])
        assert top["path"] != query
        assert labels[top["path"]] == style, (query, top)


def test_the_commands_scorers_are_the_index_scorers():
    import lorastyle.cli
    from lorastyle.index.search import SCORERS

    assert lorastyle.cli.SCORERS == SCORERS


def test_the_command_line_installs_without_torch_and_each_extra_is_declared():
    """pip install lorastyle pulls numpy and scikit-learn, not torch; the extras the CLI names exist."""
    import tomllib

    from lorastyle.cli import OPTIONAL_EXTRAS

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[\[<>=!~ ]", d)[0].lower() for d in project["dependencies"]}
    assert not base & {"torch", "torchvision", "diffusers", "transformers", "pandas", "matplotlib", "plotly"}
    extras = project["optional-dependencies"]
    pip_names = {"PIL": "pillow", "umap": "umap-learn", "dask": "dask[distributed]", "distributed": "dask[distributed]"}
    for module, extra in OPTIONAL_EXTRAS.items():
        assert pip_names.get(module, module) in extras[extra], (module, extra)
    assert "torch" in extras["collection"] and "torch" not in extras["map"] + extras["book"]


def test_a_command_missing_its_extra_names_it(collection, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if plotly were not installed
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    rc = main(["map", str(collection["root"]), "-o", str(tmp_path / "map.html")])
    err = capsys.readouterr().err
    assert rc == EXIT_BAD_INPUT
    assert "pip install 'lorastyle[map]'" in err and "Traceback" not in err
