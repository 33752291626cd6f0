"""Fuzzing the file readers: every input is a loaded LoRA or a LoraFormatError, nothing else.

Two generators, one contract (:func:`tools.fuzz.fuzzing.check_file`: ``read_safetensors``,
``load_lora``, ``lorastyle inspect --json`` and ``LoraIndex.load`` on the same file):

* hypothesis builds safetensors files from scratch: headers, names in every
  layout, dtypes, shapes, offsets, metadata, values, length fields;
* the mutation fuzzer (:mod:`tools.fuzz.fuzzing`) edits valid seed files of every
  layout. A short run is here; ``make fuzz`` runs 100,000 inputs.

Independent references: the ``safetensors`` library (a file it reads must read
the same here) and delta-W computed with numpy from the generated factors.
Every kind of failure the fuzzer has found is fixed; its input stays below as a
regression test, and :data:`tools.fuzz.fuzzing.KNOWN_BUGS` is empty.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorastyle.io.formats import LoraFormatError, load_lora
from lorastyle.io.safetensors import read_safetensors, write_safetensors
from support import REAL_LORAS as REAL
from tools.fuzz import fuzzing
from tools.fuzz.fuzzing import KNOWN_BUGS, check_file, encode, pack

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _check(workdir, blob, name="input.safetensors"):
    path = str(workdir / name)
    Path(path).write_bytes(blob)
    return check_file(path)


def _assert_no_unknown(failures):
    unknown = [f for f in failures if not f.known]
    assert not unknown, "\n".join(f"{f.stage}: {f.signature}: {f.message}" for f in unknown)


# ---------------------------------------------------------------------------
# hypothesis: files built from scratch

MODULES = [
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "diffusion_model.double_blocks.0.img_attn.qkv",
    "double_blocks.0.processor",
    "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
    "x",
]
ROLES = [
    ".lora_down.weight",
    ".lora_up.weight",
    ".alpha",
    ".lora_A.weight",
    ".lora_B.weight",
    ".dora_scale",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".qkv_lora1.down.weight",
    ".to_q_lora.up.weight",
    ".lora_mid.weight",
    "",
]
KEYS = st.one_of(
    st.builds(str.__add__, st.sampled_from(MODULES), st.sampled_from(ROLES)),
    st.sampled_from(["unet:0:down", "unet:0:up", "text_encoder:0:down", "text_encoder:1:up"]),
    st.text(max_size=12),
)
GOOD_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"]
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
DTYPES = st.one_of(
    st.sampled_from(GOOD_DTYPES),
    st.sampled_from(["F8_E4M3", "U32", "C64", "f32", ""]),
    st.integers(-1, 64),
    st.none(),
    st.lists(st.just("F32"), max_size=2),
)
SMALL_SHAPES = st.lists(st.integers(0, 6), max_size=4)
ODD_SHAPES = st.one_of(
    st.lists(st.integers(-3, 2**64), max_size=3),
    st.lists(st.one_of(st.floats(allow_nan=True), st.booleans(), st.text(max_size=2)), max_size=3),
    st.integers(),
    st.none(),
    st.text(max_size=3),
)
JSON_JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
META_VALUES = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["sd1", "sdxl", "flux", "tiny", "[]", "5", "[[1]]", '["CLIPAttention"]']),
    st.builds(
        json.dumps,
        st.fixed_dictionaries({}, optional={"r": JSON_JUNK, "lora_alpha": JSON_JUNK, "unet.lora_alpha": JSON_JUNK}),
    ),
    JSON_JUNK.map(json.dumps),
)
METADATA = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(
            ["lorastyle.base", "lora_adapter_metadata", "unet", "text_encoder", "format", "ss_network_dim"]
        ),
        META_VALUES,
        max_size=3,
    ),
    JSON_JUNK,
)
FINITE = st.floats(-2, 2, width=32)
SPECIAL = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 65504.0, 1e-45])


KOHYA_NAMES = [
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
    "lora_unet_down_blocks_0_resnets_0_conv1",
    "lora_unet_double_blocks_0_img_attn_qkv",
    "lora_te2_text_model_encoder_layers_0_mlp_fc1",
]
PEFT_NAMES = [
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
    "transformer.transformer_blocks.0.attn.to_q",
    "base_model.model.down_blocks.0.attentions.0.proj_in",
]
# layout: (module names, {role suffix: shape rule}); rule letters: r = rank, o = out, i = in, a/b = LoKr W1 sides
LAYOUTS = {
    "kohya": (KOHYA_NAMES, {".lora_down.weight": "ri", ".lora_up.weight": "or", ".alpha": "", ".dora_scale": "1i"}),
    "peft": (PEFT_NAMES, {".lora_A.weight": "ri", ".lora_B.weight": "or"}),
    "lokr": (KOHYA_NAMES, {".lokr_w1": "ab", ".lokr_w2_a": "or", ".lokr_w2_b": "ri", ".alpha": ""}),
    "lokr_full": (KOHYA_NAMES, {".lokr_w1": "ab", ".lokr_w2": "oi"}),
    "loha": (
        KOHYA_NAMES,
        {".hada_w1_a": "or", ".hada_w1_b": "ri", ".hada_w2_a": "or", ".hada_w2_b": "ri", ".alpha": ""},
    ),
}


@st.composite
def lora_entries(draw):
    """(name, dtype, shape) of one to three LoRA modules of one layout; shapes fit, but not always."""
    names, roles = LAYOUTS[draw(st.sampled_from(sorted(LAYOUTS)))]
    dtype = draw(st.sampled_from(["F32", "F32", "F16", "BF16", "F64", "I8"]))
    entries = []
    for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        dims = {
            "r": draw(st.integers(0, 4)),
            "o": draw(st.integers(1, 6)),
            "i": draw(st.integers(1, 6)),
            "a": draw(st.integers(1, 3)),
            "b": draw(st.integers(1, 3)),
            "1": 1,
        }
        conv = draw(st.booleans()) and name.endswith("conv1")
        for role, rule in roles.items():
            if draw(st.integers(0, 9)) == 0:
                continue  # a missing factor
            shape = [dims[c] for c in rule]
            if conv and rule == "ri":
                shape += [3, 3]  # a 3x3 convolution's down factor
            if draw(st.integers(0, 6)) == 0:
                shape = draw(SMALL_SHAPES)  # a shape that does not fit
            entries.append((name + role, dtype, shape))
    return entries


@st.composite
def safetensors_blobs(draw):
    """A safetensors file: consistent by construction, then maybe broken in one place."""
    entries = draw(
        st.one_of(
            lora_entries(),
            lora_entries(),
            st.lists(st.tuples(KEYS, st.sampled_from(GOOD_DTYPES), SMALL_SHAPES), max_size=6, unique_by=lambda e: e[0]),
        )
    )
    header: dict = {}
    meta = draw(st.one_of(st.none(), st.none(), METADATA))
    if meta is not None:
        header["__metadata__"] = meta
    blobs, offset = [], 0
    for name, dtype, shape in entries:
        n = int(np.prod(shape, dtype=np.int64))
        if dtype.startswith("F") and draw(st.integers(0, 4)):  # mostly numbers, sometimes raw bytes
            # mostly finite values; in one tensor of five, specials (nan, inf, huge, tiny) too
            values = draw(
                st.lists(st.one_of(FINITE, SPECIAL) if draw(st.integers(0, 4)) == 0 else FINITE, min_size=n, max_size=n)
            )
            np_dtype = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<f4"}[dtype]
            with np.errstate(over="ignore"):
                arr = np.asarray(values, dtype=np.float64).astype(np_dtype)
            raw = (arr.view("<u4") >> 16).astype("<u2").tobytes() if dtype == "BF16" else arr.tobytes()
        else:
            raw = draw(st.binary(min_size=n * ITEMSIZE[dtype], max_size=n * ITEMSIZE[dtype]))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    names = [k for k in header if k != "__metadata__"]
    edit = draw(
        st.sampled_from(
            ["none"] * 6 + ["dtype", "shape", "offsets", "entry", "length", "trailing", "truncate", "not_object"]
        )
    )
    length = None
    data = b"".join(blobs)
    if edit in ("dtype", "shape", "offsets", "entry") and names:
        key = draw(st.sampled_from(names))
        if edit == "dtype":
            header[key]["dtype"] = draw(DTYPES)
        elif edit == "shape":
            header[key]["shape"] = draw(ODD_SHAPES)
        elif edit == "offsets":
            header[key]["data_offsets"] = draw(st.one_of(st.lists(st.integers(-8, 2**64), max_size=3), JSON_JUNK))
        else:
            header[key] = draw(JSON_JUNK)
    elif edit == "length":
        length = draw(st.integers(0, 2**64 - 1))
    elif edit == "trailing":
        data += draw(st.binary(min_size=1, max_size=16))
    elif edit == "not_object":
        header = draw(JSON_JUNK)
    blob = pack(header, data, length)
    if edit == "truncate":
        blob = blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
    return blob


@FUZZ
@given(blob=safetensors_blobs())
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the known non-finite-factors bug
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_any_generated_file_is_loaded_or_refused(workdir, blob):
    _, failures = _check(workdir, blob)
    _assert_no_unknown(failures)


@FUZZ
@given(data=st.data())
def test_reader_agrees_with_the_safetensors_library(workdir, data):
    """A file the reference library reads is read here too, to the same bits."""
    entries = data.draw(
        st.lists(
            st.tuples(
                st.text(min_size=1, max_size=8), st.sampled_from([d for d in GOOD_DTYPES if d != "BF16"]), SMALL_SHAPES
            ),
            max_size=5,
            unique_by=lambda e: e[0],
        )
    )
    meta = data.draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
    tensors = {}
    for name, dtype, shape in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
        tensors[name] = (dtype, shape, data.draw(st.binary(min_size=nbytes, max_size=nbytes)))
    blob = encode(tensors, meta or None)
    try:
        reference = safetensors.numpy.load(blob)
    except Exception:  # noqa: BLE001 - the reference refuses (e.g. bytes that are not a valid bool)
        return
    path = workdir / "agree.safetensors"
    path.write_bytes(blob)
    ours, our_meta = read_safetensors(path)
    assert sorted(ours) == sorted(reference)
    for name, arr in reference.items():
        assert ours[name].shape == arr.shape and ours[name].dtype == arr.dtype
        assert ours[name].tobytes() == arr.tobytes()
    assert our_meta == meta


@FUZZ
@given(
    rank=st.integers(1, 4),
    out_in=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    alpha=st.one_of(st.none(), st.sampled_from([0.0, 1.0, 3.0, 16.0, -2.0])),
    layout=st.sampled_from(["kohya", "peft"]),
    dtype=st.sampled_from(["F32", "F16"]),
    data=st.data(),
)
def test_generated_lora_delta_matches_numpy(workdir, rank, out_in, alpha, layout, dtype, data):
    """A well-formed generated LoRA loads, with delta-W = scale * B @ A by the documented alpha convention."""
    out, inp = out_in
    vals = st.floats(-2, 2, width=16)
    A = np.asarray(data.draw(st.lists(vals, min_size=rank * inp, max_size=rank * inp)), np.float16).reshape(rank, inp)
    B = np.asarray(data.draw(st.lists(vals, min_size=out * rank, max_size=out * rank)), np.float16).reshape(out, rank)
    np_dtype = np.float32 if dtype == "F32" else np.float16
    if layout == "kohya":
        key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
        tensors = {f"{key}.lora_down.weight": A.astype(np_dtype), f"{key}.lora_up.weight": B.astype(np_dtype)}
        if alpha is not None:
            tensors[f"{key}.alpha"] = np.asarray(alpha, np_dtype)
        meta = None
    else:
        key = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
        tensors = {f"{key}.lora_A.weight": A.astype(np_dtype), f"{key}.lora_B.weight": B.astype(np_dtype)}
        meta = None if alpha is None else {"lora_adapter_metadata": json.dumps({"lora_alpha": alpha, "r": rank})}
    path = workdir / "delta.safetensors"
    write_safetensors(path, tensors, meta)
    lora = load_lora(path)
    (m,) = lora.modules.values()
    scale = 1.0 if not alpha else alpha / rank  # no alpha, or kohya's alpha = 0: scale 1
    expected = scale * (B.astype(np.float64) @ A.astype(np.float64))
    np.testing.assert_allclose(m.delta(), expected, rtol=1e-5, atol=1e-6)
    assert m.rank == rank and lora.format == ("kohya" if layout == "kohya" else "diffusers-peft")


# ---------------------------------------------------------------------------
# The mutation fuzzer


@pytest.fixture(scope="module")
def seeds():
    return fuzzing.seed_files(REAL if REAL.is_dir() else None)


def test_every_seed_is_valid(workdir, seeds):
    """Seeds must load (the index seed is not a LoRA: refused by load_lora, read by LoraIndex.load)."""
    from lorastyle.index import LoraIndex

    for name, blob in seeds.items():
        outcome, failures = _check(workdir, blob, "seed.safetensors")
        assert failures == [], (name, failures)
        if name == "index":
            assert outcome == "rejected"
            assert LoraIndex.load(workdir / "seed.safetensors").descriptor == "delta"
        else:
            assert outcome == "loaded", name
    formats = {load_lora(_write(workdir, blob)).format for name, blob in seeds.items() if name != "index"}
    assert formats == fuzzing.FORMATS  # every layout the reader knows is seeded


def _write(workdir, blob):
    path = workdir / "w.safetensors"
    path.write_bytes(blob)
    return path


def test_short_mutation_run(workdir, seeds):
    """A few hundred mutants: no unknown failure, and the mutants reach both outcomes."""
    report = fuzzing.run(seeds, 400, random_state=7, workdir=workdir, time_limit=10.0)
    assert report.inputs == 400 + len(seeds)
    _assert_no_unknown(report.failures)
    # a fuzzer whose mutants all fail at the header, or all load, tests little
    assert report.loaded > 0.1 * report.inputs and report.rejected > 0.3 * report.inputs
    assert set(report.mutations) >= {"bitflip", "truncate", "length", "json", "reencode", "huge", "splice"}


def test_mutations_are_reproducible(seeds):
    a = fuzzing.Mutator(seeds, np.random.default_rng(3))
    b = fuzzing.Mutator(seeds, np.random.default_rng(3))
    assert [a.mutate() for _ in range(50)] == [b.mutate() for _ in range(50)]


def test_fuzzer_reports_a_failure(workdir, monkeypatch):
    """The harness itself: an exception other than LoraFormatError is caught and named."""

    def broken(path):
        raise KeyError("boom")

    monkeypatch.setattr(fuzzing, "load_lora", broken)
    path = workdir / "any.safetensors"
    path.write_bytes(b"\0" * 16)
    outcome, failures = check_file(str(path), inspect=False, index=False)
    assert outcome == "failed"
    assert [(f.stage, f.signature) for f in failures] == [("load_lora", ("KeyError", "broken"))]


def test_fuzzer_time_limit_catches_a_hang(workdir, monkeypatch):
    import time

    monkeypatch.setattr(fuzzing, "check_file", lambda *a, **k: time.sleep(30))
    report = fuzzing.run({"x": b"\0" * 16}, 0, time_limit=0.2, workdir=workdir)
    assert [f.signature[0] for f in report.failures] == ["timeout"]


# ---------------------------------------------------------------------------
# Huge declared sizes: refused before any allocation


@pytest.mark.parametrize("shape", [[2**20, 2**20], [2**31, 2**31], [2**62], [2**40, 0]])
def test_declared_gigabytes_are_refused_without_allocating(workdir, shape):
    """The header promises terabytes; the file has 16 bytes. Refused by offsets, memory untouched."""
    n = int(np.prod(shape, dtype=object)) * 4
    header = {"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, n]}}
    path = workdir / "huge.safetensors"
    path.write_bytes(pack(header, b"\0" * 16))
    tracemalloc.start()
    try:
        with pytest.raises(LoraFormatError) as excinfo:
            load_lora(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    if max(shape) > 2**31 - 1:  # no LoRA side is that long: refused from the shape alone
        assert "is beyond any LoRA" in excinfo.value.reason
    elif n:
        assert "truncated tensor data" in excinfo.value.reason
    else:  # a zero-size tensor: no bytes to lie about; refused later, as a LoRA with no usable factor
        assert excinfo.value.path == str(path)


def test_inspect_of_a_gigabyte_header_under_a_memory_limit(workdir):
    """``lorastyle inspect`` in a process limited to 1 GiB of address space: an error line, no MemoryError."""
    shape = [2**16, 2**16]  # 16 GiB of float32 declared
    n = 2**32 * 4
    header = {
        "lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, n]},
        "lora_unet_x.lora_up.weight": {"dtype": "F32", "shape": shape, "data_offsets": [n, 2 * n]},
    }
    path = workdir / "gigabytes.safetensors"
    path.write_bytes(pack(header, b"\0" * 64))
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from lorastyle.cli import main
        sys.exit(main(["inspect", {str(path)!r}, "--json"]))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {path}: truncated tensor data"), proc.stderr


def test_header_length_field_is_checked_before_the_header_is_read(workdir, monkeypatch):
    """A length field of 2**63 - 1 on a 24-byte file: refused without reading (or allocating) the header."""
    path = workdir / "len.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63 - 1) + b"{}" + b"\0" * 14)
    reads = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Spy(real_open(*a, **k)))
    with pytest.raises(LoraFormatError, match="header length"):
        read_safetensors(path)
    monkeypatch.undo()
    assert reads == [8]


# ---------------------------------------------------------------------------
# Bugs the fuzzer found in formats.py and safetensors_io.py, now fixed: each input stays a regression test

KOHYA = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
PEFT = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
F32 = np.float32


def _peft_with_adapter_metadata(blob):
    return (
        {f"{PEFT}.lora_A.weight": np.ones((1, 4), F32), f"{PEFT}.lora_B.weight": np.ones((4, 1), F32)},
        {"lora_adapter_metadata": blob},
    )


FORMER_BUG_FILES = {
    ("ZeroDivisionError", "build_module"): (
        {
            f"{KOHYA}.lora_down.weight": np.zeros((0, 16), F32),
            f"{KOHYA}.lora_up.weight": np.zeros((16, 0), F32),
            f"{KOHYA}.alpha": np.asarray(4.0, F32),
        },
        None,
    ),
    ("IndexError", "_as_matrix"): (
        {f"{KOHYA}.lora_down.weight": np.asarray(1.0, F32), f"{KOHYA}.lora_up.weight": np.ones((16, 1), F32)},
        None,
    ),
    ("ValueError", "_as_matrix"): (
        {f"{KOHYA}.lora_down.weight": np.zeros((0, 3, 3), F32), f"{KOHYA}.lora_up.weight": np.zeros((16, 0), F32)},
        None,
    ),
    ("AttributeError", "_apply_peft_alpha"): _peft_with_adapter_metadata("[1]"),
    ("TypeError", "_apply_peft_alpha"): _peft_with_adapter_metadata('{"lora_alpha": null}'),
    ("ValueError", "_apply_peft_alpha"): _peft_with_adapter_metadata('{"lora_alpha": "abc"}'),
    ("TypeError", "_split_cloneofsimo"): (
        {"text_encoder:0:down": np.ones((1, 4), F32), "text_encoder:0:up": np.ones((4, 1), F32)},
        {"text_encoder": "5"},
    ),
    ("KeyError", "load_lora"): (
        {
            **{f"text_encoder:{i}:down": np.ones((1, 4), F32) for i in range(4)},
            **{f"text_encoder:{i}:up": np.ones((4, 1), F32) for i in range(3)},
        },
        None,
    ),
    ("IndexError", "build_module"): (
        {
            f"{KOHYA}.lokr_w1": np.ones((2, 2), F32),
            f"{KOHYA}.lokr_w2": np.ones((2, 2), F32),
            f"{KOHYA}.lokr_w2_b": np.asarray(1.0, F32),
        },
        None,
    ),
    ("ValueError", "_decode"): ({f"{KOHYA}.lora_down.weight": ("F32", [2**40, 0, 2**40], b"")}, None),
    ("invariant", "non-finite factors"): (
        {f"{KOHYA}.lokr_w1": np.full((2, 2), 3e38, F32), f"{KOHYA}.lokr_w2": np.full((2, 2), 10.0, F32)},
        None,
    ),
}


def _write_case(path, tensors, meta):
    """float32 arrays, or (dtype, shape, raw bytes) for what numpy cannot even hold, laid out consistently."""
    laid_out = {
        k: v if isinstance(v, tuple) else ("F32", list(v.shape), v.astype("<f4").tobytes()) for k, v in tensors.items()
    }
    path.write_bytes(encode(laid_out, meta))
    return path


def test_no_bug_is_left_known():
    assert KNOWN_BUGS == {}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("signature", list(FORMER_BUG_FILES), ids="-".join)
def test_former_bug(workdir, signature):
    """Each of these files (once a crash of the listed kind) is refused with a LoraFormatError, or loads finite."""
    path = _write_case(workdir / "bug.safetensors", *FORMER_BUG_FILES[signature])
    outcome, failures = check_file(str(path), inspect=False, index=False)
    assert [f.signature for f in failures] == []
    with pytest.raises(LoraFormatError):
        load_lora(path)


def test_lokr_memory_is_proportional_to_the_file(workdir):
    """Memory amplification: load_lora's peak memory stays within 64x the file's size (plus 16 MB).

    Its expanded low-rank form would be (16384 x 1024) and (1024 x 16384) floats, 128 MB, for this
    64 kB file: modules keep the stored factors and their Kronecker structure instead.
    """
    rng = np.random.default_rng(0)
    r, d = 32, 128
    tensors = {
        f"{KOHYA}.lokr_w1_a": rng.standard_normal((d, r)).astype(F32),
        f"{KOHYA}.lokr_w1_b": rng.standard_normal((r, d)).astype(F32),
        f"{KOHYA}.lokr_w2_a": rng.standard_normal((d, r)).astype(F32),
        f"{KOHYA}.lokr_w2_b": rng.standard_normal((r, d)).astype(F32),
    }
    path = workdir / "lokr_amplifies.safetensors"
    write_safetensors(path, tensors)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        load_lora(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * size + (16 << 20), f"{size} bytes on disk, peak {peak >> 20} MB"


@pytest.mark.parametrize("header_length", [640, 896, 1152, 1408, 65536 + 640])
def test_valid_file_whose_length_field_looks_like_a_pickle(workdir, header_length):
    """A valid safetensors file written by the reference library, its header padded to ``header_length`` bytes."""
    path = workdir / "looks_like_pickle.safetensors"
    tensors = {"w": np.ones(2, np.float32)}
    pad = 0
    while True:  # the reference library pads the header to 8 bytes: grow the metadata until it fits
        safetensors.numpy.save_file(tensors, str(path), metadata={"p": "x" * pad})
        n = struct.unpack("<Q", path.read_bytes()[:8])[0]
        if n >= header_length:
            break
        pad += max(1, header_length - n - 8)
    assert n == header_length
    assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    np.testing.assert_array_equal(safetensors.numpy.load_file(str(path))["w"], tensors["w"])
    ours, _ = read_safetensors(path)
    np.testing.assert_array_equal(ours["w"], tensors["w"])
