"""Tests for lorastyle.io.safetensors: the strict, pickle-free safetensors reader and writer.

References are independent: files written by the ``safetensors`` library
itself (numpy and torch front ends) for the reader, ``safetensors.numpy.load_file``
for the writer, and raw header bytes crafted by hand for every malformed case.
No test ever unpickles anything.
"""

import json
import pickle
import pickletools
import re
import struct
import zipfile

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from lorastyle.io import safetensors as safetensors_io
from lorastyle.io.formats import load_lora
from lorastyle.io.safetensors import (
    LoraFormatError,
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)

READERS = {
    "read_safetensors": read_safetensors,
    "read_safetensors_header": read_safetensors_header,
    "load_lora": load_lora,
}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def raw_file(path, header_bytes, data=b"", length=None):
    """Write 8-byte little-endian header length + header bytes + data, exactly as given."""
    n = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header_bytes + data)
    return path


def json_file(path, header, data=b""):
    return raw_file(path, json.dumps(header).encode("utf-8"), data)


def assert_format_error(reader, path, reason):
    """``reader(path)`` raises LoraFormatError naming ``path`` and matching the regex ``reason``."""
    with pytest.raises(LoraFormatError, match=reason) as excinfo:
        reader(path)
    err = excinfo.value
    assert str(path) in str(err)
    assert err.path == str(path)
    assert re.search(reason, err.reason)
    return err


# --------------------------------------------------------------------------
# Files written by the safetensors library read back equal
# --------------------------------------------------------------------------


def test_reads_numpy_writer_float_and_int_dtypes(tmp_path, rng):
    x = rng.standard_normal((3, 5))
    tensors = {
        "f16": x.astype(np.float16),
        "f32": x.astype(np.float32),
        "f64": x,
        "i8": np.array([-128, -1, 0, 127], dtype=np.int8),
        "u8": np.array([0, 1, 255], dtype=np.uint8),
        "i16": np.array([-32768, 5, 32767], dtype=np.int16),
        "i32": np.array([[-(2**31), 7], [2**31 - 1, 0]], dtype=np.int32),
        "i64": np.array([-(2**63), 2**63 - 1, 42], dtype=np.int64),
        "bool": np.array([True, False, True]),
        "scalar": np.array(8.0, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "special": np.array([np.inf, -np.inf, -0.0, 6.0e-8, 65504.0], dtype=np.float16),
    }
    meta = {"ss_network_dim": "4", "note": "unicode ✓ text"}
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata=meta)

    got, got_meta = read_safetensors(path)
    assert got_meta == meta
    assert set(got) == set(tensors)
    for name, ref in tensors.items():
        assert got[name].dtype == ref.dtype, name
        assert got[name].shape == ref.shape, name
        np.testing.assert_array_equal(got[name], ref, err_msg=name)
    assert np.signbit(got["special"][2])  # -0.0 kept bit for bit


def test_header_offsets_match_safetensors(tmp_path, rng):
    tensors = {"b": rng.standard_normal((4, 2)).astype(np.float32), "a": np.arange(3, dtype=np.int16)}
    path = tmp_path / "ref.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    entries, meta, start = read_safetensors_header(path)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert start == 8 + n
    assert meta == {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert entries[name] == (info["dtype"], tuple(info["shape"]), *info["data_offsets"])


def test_reads_torch_bfloat16_as_exact_float32(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 7, generator=g) * 100
    special = torch.tensor([float("inf"), float("-inf"), -0.0, 1e-40, 3.0e38, float("nan")])
    tensors = {"w": values.to(torch.bfloat16), "s": special.to(torch.bfloat16), "h": values.to(torch.float16)}
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"k": "v"})

    got, meta = read_safetensors(path)
    assert meta == {"k": "v"}
    for name in ("w", "s"):
        ref = tensors[name].to(torch.float32).numpy()  # bf16 -> f32 is an exact widening
        assert got[name].dtype == np.float32
        assert got[name].shape == ref.shape
        np.testing.assert_array_equal(got[name], ref)
        assert np.array_equal(np.signbit(got[name]), np.signbit(ref))
    np.testing.assert_array_equal(got["h"], tensors["h"].numpy())
    assert got["h"].dtype == np.float16


# --------------------------------------------------------------------------
# Files written by write_safetensors read back equal with the safetensors library
# --------------------------------------------------------------------------


def test_written_file_reads_back_with_safetensors_library(tmp_path, rng):
    x = rng.standard_normal((4, 3))
    tensors = {
        "f16": x.astype(np.float16),
        "f32": x.astype(np.float32),
        "f64": x,
        "i8": np.array([-3, 4], dtype=np.int8),
        "u8": np.array([200, 1], dtype=np.uint8),
        "i16": np.array([-300, 4], dtype=np.int16),
        "i32": np.array([-(2**31), 4], dtype=np.int32),
        "i64": np.array([2**62, -5], dtype=np.int64),
        "bool": np.array([[True], [False]]),
        "one": np.array([8.0], dtype=np.float32),
        "empty": np.zeros((2, 0), dtype=np.float32),
        "transposed": np.asarray(x.astype(np.float32).T),  # non-contiguous input
        "big_endian": x.astype(">f4"),
    }
    meta = {"lorastyle.base": "tiny", "artist": "nobody"}
    path = tmp_path / "ours.safetensors"
    write_safetensors(path, tensors, meta)

    ref = safetensors.numpy.load_file(str(path))
    assert set(ref) == set(tensors)
    for name, arr in tensors.items():
        assert ref[name].shape == arr.shape, name
        np.testing.assert_array_equal(ref[name], arr, err_msg=name)
    assert ref["big_endian"].dtype == np.float32
    with safe_open(str(path), "np") as fh:
        assert fh.metadata() == meta


def test_written_scalar_keeps_shape(tmp_path):
    path = tmp_path / "scalar.safetensors"
    write_safetensors(path, {"alpha": np.array(8.0, dtype=np.float32)})
    ref = safetensors.numpy.load_file(str(path))["alpha"]
    assert ref == 8.0
    assert ref.shape == ()


def _torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    """The independent reference: torch's float32 -> bfloat16 rounding, as 16-bit patterns."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def _bf16_cases(rng) -> np.ndarray:
    """Random values over many magnitudes, exact ties, subnormals, the range's edges and specials."""
    random = rng.standard_normal(2000).astype(np.float32) * np.float32(10.0) ** rng.integers(-40, 38, 2000)
    bits = rng.integers(0, 2**16, 500, dtype=np.uint32) << 16
    ties = (bits | np.uint32(0x8000)).view(np.float32)  # exactly halfway between two bfloat16 values
    near = np.concatenate([(bits | np.uint32(d)).view(np.float32) for d in (0x7FFF, 0x8001, 0x0001, 0xFFFF)])
    edges = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17e-38, 3.38e38, 3.3895e38, 3.4e38, -3.4e38, 1.0, -1.0, 1.00390625],
        dtype=np.float32,
    )
    special = np.array([np.inf, -np.inf, np.nan, -np.nan], dtype=np.float32)
    return np.concatenate([random, ties[np.isfinite(ties)], near[np.isfinite(near)], edges, special])


def test_bfloat16_rounding_matches_torch_bit_for_bit(rng):
    torch = pytest.importorskip("torch")
    x = _bf16_cases(rng)
    ours = safetensors_io.bfloat16_bits(x)
    assert ours.dtype == np.uint16 and ours.shape == x.shape
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan].view(np.int16), _torch_bf16_bits(x[~nan]))
    # torch's NaN pattern depends on its code path (0xFFFF vectorised, 0x7FC0 scalar): ours is the scalar one
    scalar_nan = torch.tensor(float("nan"), dtype=torch.bfloat16).view(torch.int16).item()
    assert nan.sum() == 2 and (ours[nan].view(np.int16) == scalar_nan).all()
    assert safetensors_io.bfloat16_bits(np.float32(1.00390625)) == 0x3F80  # a tie rounds to the even neighbour
    assert safetensors_io.bfloat16_bits(np.array(8.0)).shape == ()


def test_written_bfloat16_bytes_are_torch_rounding_and_read_back(tmp_path, rng):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    x = rng.standard_normal((5, 7)) * 3  # float64 input: taken as float32 first, then rounded
    scalar = np.array(4.0, dtype=np.float32)
    path = tmp_path / "bf16.safetensors"
    write_safetensors(path, {"w": x, "alpha": scalar, "f": x.astype(np.float32)}, bfloat16=["w", "alpha"])
    entries, _, start = read_safetensors_header(path)
    assert entries["w"][:2] == ("BF16", (5, 7)) and entries["alpha"][:2] == ("BF16", ())
    assert entries["f"][0] == "F32"
    raw = path.read_bytes()[start + entries["w"][2] : start + entries["w"][3]]
    assert raw == _torch_bf16_bits(x.astype(np.float32)).astype("<i2").tobytes()
    ref = safetensors.torch.load_file(str(path))  # the library reads it as bfloat16
    assert ref["w"].dtype == torch.bfloat16 and ref["alpha"].shape == ()
    expected = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    assert torch.equal(ref["w"], expected) and ref["alpha"].item() == 4.0
    got, _ = read_safetensors(path)
    np.testing.assert_array_equal(got["w"], expected.float().numpy())


def test_bfloat16_names_must_be_tensors(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        write_safetensors(tmp_path / "x.safetensors", {"w": np.ones(2)}, bfloat16=["missing"])
    assert list(tmp_path.iterdir()) == []


def test_save_lora_bfloat16_loads_as_rounded_factors(tmp_path, rng):
    from lorastyle.io.formats import save_lora

    A = rng.standard_normal((4, 6)).astype(np.float32)
    B = rng.standard_normal((5, 4)).astype(np.float32)
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    for layout in ("kohya", "diffusers-peft"):
        path = tmp_path / f"{layout}.safetensors"
        save_lora(path, {name: (A, B)}, alpha=2.0, layout=layout, dtype="bfloat16")
        lora = load_lora(path)
        assert lora.dtype == "bfloat16" and lora.format == layout
        m = lora.modules[name]
        assert m.scale == 0.5
        np.testing.assert_array_equal(m.down.view(np.uint32) >> 16, _torch_bf16_bits(A).view(np.uint16))
        np.testing.assert_array_equal(m.up.view(np.uint32) >> 16, _torch_bf16_bits(B).view(np.uint16))
        assert not (m.down.view(np.uint32) & 0xFFFF).any()


def test_write_without_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    write_safetensors(path, {"a": np.ones(2, dtype=np.float32)})
    with safe_open(str(path), "np") as fh:
        assert not fh.metadata()
        np.testing.assert_array_equal(fh.get_tensor("a"), [1.0, 1.0])


def test_write_data_section_is_aligned(tmp_path):
    path = tmp_path / "aligned.safetensors"
    write_safetensors(path, {"odd": np.ones(3, dtype=np.float16)}, {"x": "y"})
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert n % 8 == 0


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path, rng):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old content")
    new = rng.standard_normal((2, 2)).astype(np.float32)
    write_safetensors(path, {"w": new})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
    np.testing.assert_array_equal(safetensors.numpy.load_file(str(path))["w"], new)


def test_write_refuses_unknown_dtype_without_touching_disk(tmp_path):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="complex"):
        write_safetensors(path, {"c": np.ones(2, dtype=np.complex64)})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "out.safetensors"
    write_safetensors(path, {"w": np.ones(2, dtype=np.float32)})
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors_io.os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_safetensors(path, {"w": np.zeros(4, dtype=np.float32)})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is intact (this part holds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


# --------------------------------------------------------------------------
# Malformed files: LoraFormatError naming the file and the reason
# --------------------------------------------------------------------------


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _valid_then_truncated(path):
    safetensors.numpy.save_file({"a": np.arange(8, dtype=np.float32), "b": np.ones(4, dtype=np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    return path


MALFORMED = {
    "empty": (lambda p: _bytes(p, b""), r"\bempty file$"),
    "shorter_than_8_bytes": (lambda p: _bytes(p, b"\x10\x00\x00"), r"3 bytes is too short"),
    "header_length_past_eof": (
        lambda p: raw_file(p, b'{"a":1}', length=10_000),
        r"header length 10000 is larger than the file \(15 bytes\)",
    ),
    "header_length_huge": (lambda p: raw_file(p, b"{}", length=2**63), r"header length \d+ is larger than the file"),
    "header_not_utf8": (lambda p: raw_file(p, b'{"\xff\xfe": 1}'), r"header is not UTF-8"),
    "header_not_json": (lambda p: raw_file(p, b'{"a": {"dtype": "F32",'), r"header is not valid JSON"),
    "header_json_list": (lambda p: raw_file(p, b"[1, 2, 3]"), r"header is not a JSON object"),
    "header_json_string": (lambda p: raw_file(p, b'"hello"'), r"header is not a JSON object"),
    "duplicate_names": (
        lambda p: raw_file(
            p,
            b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            b"\x00" * 8,
        ),
        r"duplicate tensor name 'w'",
    ),
    "unknown_dtype": (
        lambda p: json_file(p, {"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'w': unknown dtype 'F17'",
    ),
    "unsupported_fp8": (
        lambda p: json_file(p, {"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'w': dtype F8_E4M3 is not supported",
    ),
    "entry_lacks_shape": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'w': entry lacks dtype, shape or data_offsets",
    ),
    "shape_with_string": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [1, "2"], "data_offsets": [0, 8]}}, b"\0" * 8),
        r"tensor 'w': shape .* is not a list of non-negative ints",
    ),
    "shape_with_float": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8),
        r"tensor 'w': shape .* is not a list of non-negative ints",
    ),
    "shape_with_bool": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'w': shape .* is not a list of non-negative ints",
    ),
    "shape_negative": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
        r"tensor 'w': shape .* is not a list of non-negative ints",
    ),
    "shape_not_a_list": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8),
        r"tensor 'w': shape 2 is not a list of non-negative ints",
    ),
    "offsets_not_pair": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
        r"tensor 'w': data_offsets \[0\] is not \[begin, end\]",
    ),
    "offsets_do_not_fit_dtype_shape": (
        lambda p: json_file(p, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 12]}}, b"\0" * 24),
        r"tensor 'w': data_offsets \[0, 12\] do not fit F32 of shape \[2, 3\] \(24 bytes\)",
    ),
    "offsets_reversed": (
        lambda p: json_file(p, {"w": {"dtype": "F16", "shape": [2], "data_offsets": [4, 0]}}, b"\0" * 4),
        r"tensor 'w': data_offsets \[4, 0\] do not fit",
    ),
    "truncated_data": (
        _valid_then_truncated,
        r"truncated tensor data: '\w' ends at byte \d+ but the data section has \d+ bytes",
    ),
    "overlapping_tensors": (
        lambda p: json_file(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
        ),
        r"tensor 'b' overlaps the previous tensor's bytes",
    ),
    "same_bytes_twice": (
        lambda p: json_file(
            p,
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
            },
            b"\0" * 8,
        ),
        r"tensor '[ab]' overlaps the previous tensor's bytes",
    ),
    "metadata_not_strings": (
        lambda p: json_file(p, {"__metadata__": {"rank": 4}}),
        r"__metadata__ must map strings to strings",
    ),
    "pickle_content": (
        lambda p: _bytes(p, pickle.dumps({"a": 1})),
        r"pickle-based checkpoint: refusing to unpickle",
    ),
    "torch_zip_content": (
        lambda p: _torch_zip(p),
        r"pickle-based checkpoint: refusing to unpickle",
    ),
}


def _torch_zip(path):
    # torch.save's container: a zip archive holding data.pkl
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    return path


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_raises_lora_format_error(tmp_path, case, reader):
    make, reason = MALFORMED[case]
    path = make(tmp_path / f"{case}.safetensors")
    assert path.exists()
    assert_format_error(READERS[reader], path, reason)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth", ".CKPT"])
@pytest.mark.parametrize("reader", list(READERS))
def test_pickle_suffix_is_refused_without_reading(tmp_path, suffix, reader):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"a": 1}))
    err = assert_format_error(READERS[reader], path, r"refusing to unpickle it, because unpickling runs code")
    assert "convert it to .safetensors" in err.reason


def test_pickle_suffix_is_refused_even_when_content_is_safetensors(tmp_path):
    path = tmp_path / "really_safetensors.bin"
    safetensors.numpy.save_file({"a": np.ones(2, dtype=np.float32)}, str(path))
    assert_format_error(read_safetensors, path, r"refusing to unpickle")


def test_missing_file_is_a_format_error(tmp_path):
    path = tmp_path / "nope.safetensors"
    assert_format_error(read_safetensors, path, r"cannot read file")


def test_directory_is_a_format_error(tmp_path):
    path = tmp_path / "dir.safetensors"
    path.mkdir()
    assert_format_error(read_safetensors, path, r"not a regular file")


def test_header_length_limit_checked_before_reading(tmp_path, monkeypatch):
    # a header longer than the limit is refused, even when the file is long enough
    monkeypatch.setattr(safetensors_io, "MAX_HEADER_BYTES", 16)
    path = raw_file(tmp_path / "long.safetensors", b'{"__metadata__": {"a": "bbbbbbbbbbbbbbbbbbbbbbbbb"}}')
    assert_format_error(read_safetensors, path, r"exceeds the 16-byte limit")


@pytest.mark.parametrize("dtype", [["F32"], {"F": 32}])
def test_non_string_dtype_is_a_format_error(tmp_path, dtype):
    path = json_file(
        tmp_path / "dtype.safetensors", {"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
    )
    assert_format_error(read_safetensors, path, r"tensor 'w': .*dtype")


def test_deeply_nested_header_is_a_format_error(tmp_path):
    path = raw_file(tmp_path / "deep.safetensors", b"[" * 100_000 + b"]" * 100_000)
    assert_format_error(read_safetensors, path, r"header")


# --------------------------------------------------------------------------
# No code execution, ever
# --------------------------------------------------------------------------


class _CreatesFile:
    """Unpickling an instance calls open(marker, "w"): it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("name", ["x.safetensors", "x.ckpt", "x.pt", "x.bin", "x.pth"])
def test_malicious_pickle_never_runs(tmp_path, name, protocol):
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(_CreatesFile(marker), protocol=protocol)
    # The payload really calls open() on the marker path (checked by disassembly, never by loading).
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert any(op == "REDUCE" for op, _ in ops)
    assert any(arg == str(marker) for _, arg in ops)
    assert any(arg is not None and "open" in str(arg) for _, arg in ops)

    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(LoraFormatError) as excinfo:
        load_lora(path)
    assert str(path) in str(excinfo.value)
    if name != "x.safetensors" or protocol >= 2:
        assert "refusing to unpickle" in str(excinfo.value)
    with pytest.raises(LoraFormatError):
        read_safetensors(path)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_writing_takes_no_copy_of_the_tensors(tmp_path):
    """An index of 20,000 files is 0.7 GB: writing it must not hold it twice."""
    import subprocess
    import sys

    code = f"""
import resource, numpy as np
from lorastyle.io.safetensors import write_safetensors, read_safetensors
a = np.ones((300, 1 << 19), dtype=np.float16)  # 300 MiB, touched
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
write_safetensors({str(tmp_path / "big.safetensors")!r}, {{"a": a, "b": np.arange(5, dtype=np.int64)}}, {{"k": "v"}})
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(grew)
"""
    grew = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert grew < 100, f"peak grew by {grew:.0f} MiB while writing 300 MiB"
    from lorastyle.io.safetensors import read_safetensors

    tensors, meta = read_safetensors(tmp_path / "big.safetensors")
    assert meta == {"k": "v"} and tensors["a"].shape == (300, 1 << 19) and float(tensors["a"][-1, -1]) == 1.0
    assert tensors["b"].tolist() == [0, 1, 2, 3, 4]
