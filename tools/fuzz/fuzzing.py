"""Mutation fuzzing of lorastyle's file readers (``make fuzz``, and a short run in the tests).

LoRA files come from strangers, so every reader must turn any byte string
into either a result or a :class:`~lorastyle.io.formats.LoraFormatError` naming
the file and the reason. This module checks that promise by mutating valid
seed files and feeding every mutant to:

* :func:`lorastyle.io.safetensors.read_safetensors`,
* :func:`lorastyle.io.formats.load_lora`,
* ``lorastyle inspect FILE --json`` (:func:`lorastyle.cli.main`, in-process),
* :func:`lorastyle.index.records.read_record` (what ``lorastyle index`` does with a file:
  one read, hashed and parsed from the same bytes, then sketched),
* :meth:`lorastyle.index.LoraIndex.load` (an index is a file too).

An input *fails* when a reader raises anything other than ``LoraFormatError``,
returns an object that breaks its own invariants (non-finite factors, shapes
that do not fit), runs past the per-input time limit, or when ``inspect``
does not print exactly one JSON object or one ``error: FILE: reason`` line.

Seeds are built synthetically (kohya, diffusers-PEFT, ai-toolkit, legacy,
xlabs, cloneofsimo, DoRA, conv, float16, bfloat16, LoKr, LoHa and a
``lorastyle`` index), from the key skeletons of real files, and from real LoRA
files when a folder of them is given. Mutations: bit flips, byte overwrites,
truncation, appended bytes, header-length edits, JSON edits (dtypes, shapes,
offsets, names, metadata, entry structure), consistent re-encodings with new
shapes, dtypes and values, huge declared sizes, and splices of two seeds.

Run ``python -m tools.fuzz.fuzzing --inputs 100000`` (what ``make fuzz`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorastyle.io.formats import BASE_FAMILIES, LAYOUTS, LoraFormatError, load_lora, save_lora
from lorastyle.io.safetensors import MAX_HEADER_BYTES, read_safetensors

__all__ = ["Failure", "FuzzReport", "KNOWN_BUGS", "Mutator", "check_file", "format_report", "seed_files", "run", "main"]

# Summary keys of ``lorastyle inspect --json`` (the command's contract).
SUMMARY_KEYS = {"format", "base", "parts", "n_modules", "ranks", "alphas", "dtype"}
FORMATS = set(LAYOUTS)

# Bugs found by this fuzzer in modules it does not own, keyed by failure signature
# (exception type, innermost lorastyle function). Each has a strict-xfail test in
# tests/test_fuzz.py that reproduces it; when a bug is fixed that test passes,
# pytest reports the XPASS as a failure, and the entry must go from this table.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


@dataclass
class Failure:
    """One input that broke the contract.

    Attributes
    ----------
    stage : str
        ``read_safetensors``, ``load_lora``, ``inspect`` or ``index``.
    signature : tuple of str
        (exception type or ``invariant``/``timeout``/``output``, innermost lorastyle function or detail):
        failures with one signature are one bug.
    message : str
    mutation : str
        How the input was made.
    """

    stage: str
    signature: tuple[str, str]
    message: str
    mutation: str = ""

    @property
    def known(self) -> bool:
        """True if the signature is one of :data:`KNOWN_BUGS`."""
        return self.signature in KNOWN_BUGS


@dataclass
class FuzzReport:
    """Counts and failures of a fuzzing run."""

    inputs: int = 0
    loaded: int = 0
    rejected: int = 0
    failed_inputs: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    mutations: Counter = field(default_factory=Counter)

    def unknown(self) -> list[Failure]:
        """Failures whose signature is not in :data:`KNOWN_BUGS`."""
        return [f for f in self.failures if not f.known]

    def by_signature(self) -> dict[tuple[str, str], list[Failure]]:
        """Failures grouped by signature."""
        groups: dict[tuple[str, str], list[Failure]] = {}
        for f in self.failures:
            groups.setdefault(f.signature, []).append(f)
        return groups


class FuzzTimeout(BaseException):
    """Raised by the interval timer when one input runs past its time limit.

    A BaseException, so that no ``except Exception`` in the code under test swallows it.
    """


# ---------------------------------------------------------------------------
# Encoding safetensors by hand (seeds are trusted; mutants are not)


def pack(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """8-byte little-endian header length, header JSON, data: exactly as given (``length`` may lie)."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack("<Q", len(raw) if length is None else length & (2**64 - 1)) + raw + data


def split(blob: bytes) -> tuple[int, bytes, bytes] | None:
    """(declared header length, header bytes, data bytes), or None if the blob is too short."""
    if len(blob) < 8:
        return None
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        return None
    return n, blob[8 : 8 + n], blob[8 + n :]


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_NUMPY = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def decode(blob: bytes) -> tuple[dict[str, tuple[str, list[int], bytes]], dict] | None:
    """A well-formed file as ``({name: (dtype, shape, raw bytes)}, metadata)``; None if it is not well-formed."""
    parts = split(blob)
    if parts is None:
        return None
    _, raw, data = parts
    try:
        header = json.loads(raw)
        meta = header.pop("__metadata__", {}) or {}
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            tensors[name] = (info["dtype"], list(info["shape"]), data[begin:end])
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return tensors, meta


def encode(tensors: dict[str, tuple[str, list, bytes]], metadata: dict | None = None) -> bytes:
    """Lay ``{name: (dtype, shape, raw bytes)}`` out with consistent offsets (shapes are not checked)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs, offset = [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    raw_header = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw_header += b" " * (-len(raw_header) % 8)
    return pack(raw_header, b"".join(blobs))


def _t(arr: np.ndarray, dtype: str = "F32") -> tuple[str, list[int], bytes]:
    if dtype == "BF16":  # numpy has no bfloat16: keep the top 16 bits of float32
        raw = (np.asarray(arr, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    else:
        raw = np.asarray(arr, _NUMPY[dtype]).tobytes()
    return dtype, list(np.shape(arr)), raw


# ---------------------------------------------------------------------------
# Seeds


def _save_lora_bytes(factors, **kwargs) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.safetensors"
        save_lora(path, factors, **kwargs)
        return path.read_bytes()


def synthetic_seeds(random_state: int = 0) -> dict[str, bytes]:
    """Small valid files of every layout ``load_lora`` reads, plus a ``lorastyle`` index.

    Kept small (a few kB each) so that a mutant loads in about a millisecond.
    """
    rng = np.random.default_rng(random_state)
    g = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0."
    sd_like = {
        attn + "attn1.to_q": (g(4, 32), g(32, 4)),
        attn + "attn2.to_k": (g(4, 24), g(32, 4)),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (g(4, 16), g(16, 4)),
    }
    seeds = {
        "kohya": _save_lora_bytes(sd_like, alpha=2.0, layout="kohya"),
        "kohya-f16": _save_lora_bytes(sd_like, alpha=4.0, layout="kohya", dtype=np.float16),
        "peft": _save_lora_bytes(sd_like, alpha=8.0, layout="diffusers-peft", base="sd1"),
        "peft-flux": _save_lora_bytes(
            {"transformer.transformer_blocks.0.attn.to_q": (g(2, 16), g(16, 2))}, alpha=2.0, base="flux"
        ),
    }
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    c = "lora_unet_down_blocks_0_resnets_0_conv1"
    seeds["kohya-conv-dora-bf16"] = encode(
        {
            f"{c}.lora_down.weight": _t(g(4, 8, 3, 3), "BF16"),
            f"{c}.lora_up.weight": _t(g(16, 4, 1, 1), "BF16"),
            f"{c}.alpha": _t(np.float32(4.0), "BF16"),
            f"{k}.lora_down.weight": _t(g(2, 16), "BF16"),
            f"{k}.lora_up.weight": _t(g(16, 2), "BF16"),
            f"{k}.dora_scale": _t(g(1, 16), "BF16"),
            f"{k}.alpha": _t(np.float32(1.0), "BF16"),
        },
        {"ss_network_dim": "4"},
    )
    seeds["lokr"] = encode(
        {
            f"{k}.lokr_w1": _t(g(2, 2)),
            f"{k}.lokr_w2_a": _t(g(8, 2)),
            f"{k}.lokr_w2_b": _t(g(2, 8)),
            f"{k}.alpha": _t(np.float32(2.0)),
            f"{c}.lokr_w1_a": _t(g(2, 1)),
            f"{c}.lokr_w1_b": _t(g(1, 2)),
            f"{c}.lokr_w2_a": _t(g(4, 1)),
            f"{c}.lokr_w2_b": _t(g(1, 4, 3, 3)),
            f"{c}.alpha": _t(np.float32(1.0)),
        }
    )
    seeds["lokr-full"] = encode({f"{k}.lokr_w1": _t(g(4, 4), "F16"), f"{k}.lokr_w2": _t(g(4, 4), "F16")})
    seeds["loha"] = encode(
        {
            f"{k}.hada_w1_a": _t(g(16, 2)),
            f"{k}.hada_w1_b": _t(g(2, 16)),
            f"{k}.hada_w2_a": _t(g(16, 2)),
            f"{k}.hada_w2_b": _t(g(2, 16)),
            f"{k}.alpha": _t(np.float32(2.0)),
        }
    )
    seeds["ai-toolkit"] = encode(
        {
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": _t(g(2, 16)),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": _t(g(48, 2)),
        }
    )
    seeds["legacy"] = encode(
        {
            "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": _t(g(2, 16)),
            "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": _t(g(16, 2)),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": _t(g(2, 16)),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": _t(g(32, 2)),
        }
    )
    seeds["xlabs"] = encode(
        {
            "double_blocks.0.processor.qkv_lora1.down.weight": _t(g(2, 16)),
            "double_blocks.0.processor.qkv_lora1.up.weight": _t(g(48, 2)),
            "double_blocks.0.processor.proj_lora2.down.weight": _t(g(2, 16)),
            "double_blocks.0.processor.proj_lora2.up.weight": _t(g(16, 2)),
        }
    )
    seeds["cloneofsimo-te"] = encode(
        {f"text_encoder:{i}:{s}": _t(g(2, 16) if s == "down" else g(16, 2)) for i in range(4) for s in ("down", "up")},
        {"text_encoder": json.dumps(["CLIPAttention"])},
    )
    seeds["index"] = _index_seed(rng)
    return seeds


def _index_seed(rng: np.random.Generator) -> bytes:
    from lorastyle.index import build_index
    from lorastyle.index.sketches import Sketcher

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(4):
            path = Path(tmp) / f"l{i}.safetensors"
            save_lora(
                path,
                {
                    "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q": (
                        rng.standard_normal((2, 8)).astype(np.float32),
                        rng.standard_normal((8, 2)).astype(np.float32),
                    )
                },
                alpha=2.0,
                base="tiny",
            )
            paths.append(str(path))
        # small sketches keep the seed small (an index's size is its records' sketches)
        index, _, _ = build_index(paths, descriptor="delta", n_components=1, sketcher=Sketcher(dim=64, module_dim=16))
        index.save(Path(tmp) / "index.safetensors")
        return (Path(tmp) / "index.safetensors").read_bytes()


from tools.layouts import ROLE_SUFFIXES as _ROLE_SUFFIXES  # noqa: E402  (one list, beside the layouts)


def _small(d: int) -> int:
    # A deterministic shrink keeps equal dimensions equal, so A and B still fit together.
    return d if d <= 8 else 8 + d % 5


def layout_seeds(folder: str | os.PathLike, max_modules: int = 6) -> dict[str, bytes]:
    """Seeds from key skeletons of real files (JSON ``{"keys": {name: shape}}``), shapes shrunk.

    The key names are the real ones; every dimension is shrunk deterministically
    (equal dimensions stay equal) and only the first ``max_modules`` modules are
    kept, so a seed is a few kB.
    """
    seeds = {}
    rng = np.random.default_rng(1)
    for path in sorted(Path(folder).glob("*.json")):
        try:
            keys = json.loads(path.read_text())["keys"]
        except (OSError, ValueError, KeyError):
            continue
        modules: dict[str, list[str]] = {}
        for key in sorted(keys):
            prefix = next((key[: -len(s)] for s in _ROLE_SUFFIXES if key.endswith(s)), key)
            modules.setdefault(prefix, []).append(key)
        tensors = {}
        for prefix in list(modules)[:max_modules]:
            for key in modules[prefix]:
                shape = keys[key]["shape"] if isinstance(keys[key], dict) else keys[key]
                shape = [_small(int(d)) for d in shape]
                value = np.float32(8.0) if key.endswith(".alpha") else 0.1 * rng.standard_normal(shape)
                tensors[key] = _t(np.asarray(value, np.float32).reshape(shape), "F16")
        seeds[f"layout:{path.stem}"] = encode(tensors)
    return seeds


def seed_files(real_dir: str | os.PathLike | None = None, *, max_real_bytes: int = 1 << 20) -> dict[str, bytes]:
    """Every seed: synthetic ones, plus real ``*.safetensors`` files and key skeletons under ``real_dir``.

    Real files larger than ``max_real_bytes`` are left out: loading one takes
    seconds (a real 1.8 MB LoKr file expands to 1.2 GB of factors), which a
    run of 100,000 inputs cannot afford.
    """
    seeds = synthetic_seeds()
    if real_dir is not None and Path(real_dir).is_dir():
        for path in sorted(Path(real_dir).glob("*.safetensors")):
            if path.stat().st_size <= max_real_bytes:
                seeds[f"real:{path.name}"] = path.read_bytes()
        if (Path(real_dir) / "key-layouts").is_dir():
            seeds.update(layout_seeds(Path(real_dir) / "key-layouts"))
    return seeds


# ---------------------------------------------------------------------------
# Mutations

_DTYPES = list(_ITEMSIZE)
_ODD_DTYPES = ["F8_E4M3", "F8_E5M2", "U16", "U32", "C64", "f32", "float32", "", "F32 ", 4, None, ["F32"], {"F": 32}]
_ROLES = [
    ".lora_down.weight",
    ".lora_up.weight",
    ".alpha",
    ".dora_scale",
    ".lora_mid.weight",
    ".lora_A.weight",
    ".lora_B.weight",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w2_b",
    ".hada_w1_a",
    ".hada_t1",
    "",
]
_PREFIXES = [
    "lora_unet_",
    "lora_te_",
    "lora_te2_",
    "lora_transformer_",
    "lycoris_",
    "unet.",
    "text_encoder.",
    "transformer.",
    "diffusion_model.",
    "base_model.model.",
    "",
    "unet:0:",
    "text_encoder:3:",
]
_HUGE = [2**31, 2**32 + 1, 2**40, 2**53, 2**62, 2**63 - 1]
_JSON_JUNK = [None, True, 0, -1, 1.5, 1e308, "", "x", [], {}, [1, 2], {"a": 1}, "NaN"]
_FLOAT_SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 65504.0, 1e30]


class Mutator:
    """Turns a seed into a mutant; every choice comes from ``rng``, so a run is reproducible.

    Parameters
    ----------
    seeds : dict of str to bytes
        Seeds named ``real:...`` are real files.
    rng : numpy Generator
    real_share : float, default=0.05
        Fraction of mutants made from real files.
    """

    def __init__(self, seeds: dict[str, bytes], rng: np.random.Generator, *, real_share: float = 0.05):
        self.names = sorted(seeds)
        self.seeds = seeds
        # Real files are 100 to 1000 times larger than the synthetic seeds and as slow to load,
        # so together they get a small share of the draws.
        real = np.array([name.startswith("real:") for name in self.names])
        p = np.where(real, real_share / max(real.sum(), 1), (1 - real_share) / max((~real).sum(), 1))
        self.seed_p = p / p.sum()
        self.decoded = {name: decode(blob) for name, blob in seeds.items()}
        self.rng = rng
        self.ops: dict[str, Callable[[bytes, str], tuple[bytes, str]]] = {
            "bitflip": self._bitflip,
            "bytes": self._bytes,
            "truncate": self._truncate,
            "append": self._append,
            "length": self._length,
            "json": self._json,
            "reencode": self._reencode,
            "huge": self._huge,
            "splice": self._splice,
            "stack": self._stack,
        }
        # weights: structural edits reach deeper code than random bytes, so they are drawn more often
        self.weights = np.array([2, 1, 1, 0.5, 1, 4, 4, 0.5, 1, 1], float)
        self.weights /= self.weights.sum()

    def mutate(self) -> tuple[bytes, str]:
        """One mutant of a random seed, and a description of how it was made."""
        name = self.names[self.rng.choice(len(self.names), p=self.seed_p)]
        op = list(self.ops)[self.rng.choice(len(self.ops), p=self.weights)]
        data, how = self.ops[op](self.seeds[name], name)
        return data, f"{name} | {op}: {how}"

    def _choice(self, seq):
        return seq[self.rng.integers(len(seq))]

    def _header_end(self, blob: bytes) -> int:
        parts = split(blob)
        return len(blob) if parts is None else 8 + parts[0]

    def _bitflip(self, blob: bytes, name: str) -> tuple[bytes, str]:
        out = bytearray(blob)
        if not out:
            return bytes(out), "empty"
        k = int(self.rng.integers(1, 9))
        # half of the flips land in the length field and header, where a file's promises are
        end = self._header_end(blob) if self.rng.random() < 0.5 else len(out)
        pos = self.rng.integers(0, max(1, min(end, len(out))), size=k)
        for p in pos:
            out[p] ^= 1 << int(self.rng.integers(8))
        return bytes(out), f"{k} bits at {sorted(int(p) for p in pos)[:4]}"

    def _bytes(self, blob: bytes, name: str) -> tuple[bytes, str]:
        out = bytearray(blob)
        if not out:
            return bytes(out), "empty"
        for _ in range(int(self.rng.integers(1, 5))):
            out[self.rng.integers(len(out))] = self._choice([0x00, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B, 0x7D, 0x30])
        return bytes(out), "overwrite"

    def _truncate(self, blob: bytes, name: str) -> tuple[bytes, str]:
        n = int(self.rng.integers(0, max(1, len(blob))))
        return blob[:n], f"to {n} of {len(blob)} bytes"

    def _append(self, blob: bytes, name: str) -> tuple[bytes, str]:
        extra = self.rng.bytes(int(self.rng.integers(1, 65))) if self.rng.random() < 0.5 else b"\0" * 64
        return blob + extra, f"{len(extra)} bytes"

    def _length(self, blob: bytes, name: str) -> tuple[bytes, str]:
        parts = split(blob)
        n = parts[0] if parts else 0
        value = self._choice(
            [
                n + 1,
                n - 1,
                n + 8,
                n - 8,
                0,
                1,
                7,
                len(blob) - 8,
                len(blob),
                MAX_HEADER_BYTES + 1,
                *_HUGE,
                2**64 - 1,
                int(self.rng.integers(0, 2**31)),
            ]
        )
        return struct.pack("<Q", value % 2**64) + blob[8:], f"header length {value}"

    def _json(self, blob: bytes, name: str) -> tuple[bytes, str]:
        """Edit the header JSON and keep the data bytes: offsets may no longer match."""
        parts = split(blob)
        if parts is None:
            return self._bitflip(blob, name)
        _, raw, data = parts
        try:
            header = json.loads(raw)
        except ValueError:
            return self._bitflip(blob, name)
        if not isinstance(header, dict):
            return self._bitflip(blob, name)
        names = [k for k in header if k != "__metadata__"]
        edit = self._choice(
            [
                "dtype",
                "shape",
                "offsets",
                "drop_field",
                "drop_entry",
                "rename",
                "entry_junk",
                "metadata",
                "duplicate",
                "top_junk",
            ]
        )
        how = edit
        if names and edit in ("dtype", "shape", "offsets", "drop_field", "entry_junk"):
            key = self._choice(names)
            info = header[key]
            if not isinstance(info, dict):
                return self._bitflip(blob, name)
            if edit == "dtype":
                info["dtype"] = self._choice(_DTYPES + _ODD_DTYPES)
            elif edit == "shape":
                info["shape"] = self._odd_shape(info.get("shape"))
            elif edit == "offsets":
                info["data_offsets"] = self._odd_offsets(info.get("data_offsets"), len(data))
            elif edit == "drop_field":
                info.pop(self._choice(["dtype", "shape", "data_offsets"]), None)
            else:
                header[key] = self._choice(_JSON_JUNK)
            how = f"{edit} of {key!r} -> {json.dumps(header[key])[:120]}"
        elif names and edit == "drop_entry":
            header.pop(self._choice(names))
        elif names and edit == "rename":
            key = self._choice(names)
            header[self._rename(key)] = header.pop(key)
        elif names and edit == "duplicate":
            key = self._choice(names)
            header[self._rename(key)] = header[key]  # two names on the same bytes
        elif edit == "metadata":
            header["__metadata__"] = self._odd_metadata(header.get("__metadata__"))
        else:
            header = self._choice([[], "x", 3, None, {"__metadata__": {}}, {}])
        return pack(header, data), how

    def _odd_shape(self, shape):
        shape = list(shape) if isinstance(shape, list) else [1]
        kind = self._choice(
            ["reverse", "drop", "add1", "zero", "small", "huge", "negative", "float", "str", "bool", "scalar", "many"]
        )
        if kind == "reverse":
            return shape[::-1]
        if kind == "drop":
            return shape[1:]
        if kind == "add1":
            return shape + [1]
        if kind == "scalar":
            return []
        if kind == "many":
            return [1] * int(self.rng.integers(5, 40))
        if not shape:
            shape = [1]
        i = int(self.rng.integers(len(shape)))
        shape[i] = {
            "zero": 0,
            "small": int(self.rng.integers(1, 65)),
            "huge": self._choice(_HUGE),
            "negative": -1,
            "float": 2.0,
            "str": "2",
            "bool": True,
        }[kind]
        return shape

    def _odd_offsets(self, offsets, data_len: int):
        begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else [0, 0]
        if not all(isinstance(v, int) for v in (begin, end)):
            begin, end = 0, 0
        return self._choice(
            [
                [end, begin],
                [begin + 4, end + 4],
                [begin - 4, end - 4],
                [0, end - begin],
                [begin, self._choice(_HUGE)],
                [-1, end],
                [begin, data_len + 8],
                [begin],
                [begin, end, 0],
                [float(begin), end],
                [str(begin), end],
                None,
            ]
        )

    def _rename(self, key: str) -> str:
        kind = self._choice(["role", "prefix", "char", "empty", "unicode", "long"])
        if kind == "role":
            for suffix in sorted(_ROLES, key=len, reverse=True):
                if suffix and key.endswith(suffix):
                    return key[: -len(suffix)] + self._choice(_ROLES)
            return key + self._choice(_ROLES)
        if kind == "prefix":
            for prefix in sorted(_PREFIXES, key=len, reverse=True):
                if prefix and key.startswith(prefix):
                    return self._choice(_PREFIXES) + key[len(prefix) :]
            return self._choice(_PREFIXES) + key
        if kind == "char" and key:
            i = int(self.rng.integers(len(key)))
            return key[:i] + self._choice(["_", ".", ":", "0", "9", "", "__", ".."]) + key[i + 1 :]
        if kind == "unicode":
            return key + self._choice(["\u00e9", "\udcff", "\x00", "\U0001f600", "/"])
        if kind == "long":
            return key + "_x" * 2000
        return ""

    def _odd_metadata(self, meta):
        meta = dict(meta) if isinstance(meta, dict) else {}
        kind = self._choice(["base", "adapter", "targets", "junk_value", "not_dict", "drop"])
        if kind == "base":
            meta["lorastyle.base"] = self._choice([*BASE_FAMILIES, "sd3", "", "SD1"])
        elif kind == "adapter":
            meta["lora_adapter_metadata"] = self._choice(
                [
                    json.dumps({"r": 4, "lora_alpha": self._choice(_JSON_JUNK)}),
                    json.dumps({"unet.lora_alpha": self._choice([0, -4, 1e308, 4, 2.5])}),
                    json.dumps(self._choice(_JSON_JUNK)),
                    "{not json",
                    "",
                ]
            )
        elif kind == "targets":
            meta[self._choice(["unet", "text_encoder"])] = self._choice(
                [
                    json.dumps(["CrossAttention", "GEGLU"]),
                    json.dumps([]),
                    "5",
                    "[[1]]",
                    '{"a": 1}',
                    "not json",
                    json.dumps(["CLIPAttention"]),
                    "null",
                ]
            )
        elif kind == "junk_value":
            meta[self._choice(["lorastyle.base", "format", "x"])] = self._choice(_JSON_JUNK)
        elif kind == "not_dict":
            return self._choice([[], "x", 3, [["a", "b"]]])
        elif meta:
            meta.pop(self._choice(sorted(meta)))
        return meta

    def _reencode(self, blob: bytes, name: str) -> tuple[bytes, str]:
        """Edit one tensor's shape, dtype or values and lay the file out again, consistently.

        The strict reader accepts such files, so these mutants reach the layout
        and factor code of ``load_lora``.
        """
        decoded = self.decoded.get(name) or decode(blob)
        if decoded is None or not decoded[0]:
            return self._json(blob, name)
        tensors, meta = dict(decoded[0]), dict(decoded[1])
        key = self._choice(sorted(tensors))
        dtype, shape, raw = tensors[key]
        kind = self._choice(["shape", "dtype", "values", "zeros", "drop", "rename", "metadata", "copy_shape"])
        if kind in ("shape", "copy_shape"):
            if kind == "copy_shape":  # another tensor's shape: keeps dimensions plausible
                shape = list(tensors[self._choice(sorted(tensors))][1])
            else:
                shape = [
                    int(d)
                    for d in self._choice(
                        [
                            [],
                            [0],
                            [int(self.rng.integers(1, 9))],
                            shape[::-1],
                            shape[:-1],
                            shape + [1],
                            [d + int(self.rng.integers(-1, 2)) for d in shape],
                            [int(self.rng.integers(0, 33)) for _ in shape],
                            [0] + shape[1:],
                            shape[:1] + [0] + shape[2:],
                        ]
                    )
                    if d >= 0
                ]
            n = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE.get(dtype, 4)
            raw = (raw * (n // max(len(raw), 1) + 1))[:n] if raw else bytes(n)
        elif kind == "dtype":
            new = self._choice(_DTYPES)
            values = self._values(dtype, raw)
            tensors[key] = _t(values.reshape(shape) if values.size == int(np.prod(shape)) else values, new)
            return encode(tensors, meta), f"{key}: dtype {dtype} -> {new}"
        elif kind in ("values", "zeros"):
            values = self._values(dtype, raw).copy()
            if values.size:
                if kind == "zeros":
                    values[:] = 0
                else:
                    idx = self.rng.integers(values.size, size=int(self.rng.integers(1, 4)))
                    values[idx] = self._choice(_FLOAT_SPECIALS) * (1 if self.rng.random() < 0.7 else -1)
            if dtype in _NUMPY or dtype == "BF16":
                with np.errstate(all="ignore"):
                    tensors[key] = _t(values.reshape(shape), dtype)
            return encode(tensors, meta), f"{key}: {kind}"
        elif kind == "drop":
            tensors.pop(key)
            return encode(tensors, meta), f"drop {key}"
        elif kind == "rename":
            new_key = self._rename(key)
            tensors[new_key] = tensors.pop(key)
            return encode(tensors, meta), f"{key} -> {new_key[:120]}"
        else:
            meta = self._odd_metadata(meta)
            return encode(tensors, meta if isinstance(meta, dict) else {}), f"metadata {str(meta)[:120]}"
        tensors[key] = (dtype, shape, raw)
        return encode(tensors, meta), f"{key}: shape -> {shape}"

    @staticmethod
    def _values(dtype: str, raw: bytes) -> np.ndarray:
        if dtype == "BF16":
            return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if dtype in _NUMPY:
            with np.errstate(all="ignore"):
                return np.frombuffer(raw, _NUMPY[dtype]).astype(np.float64)
        return np.zeros(0)

    def _huge(self, blob: bytes, name: str) -> tuple[bytes, str]:
        """A header that declares gigabytes (or exabytes) of tensor data the file does not have."""
        decoded = self.decoded.get(name)
        tensors = dict(decoded[0]) if decoded else {}
        dim = self._choice(_HUGE[:3])
        shape = self._choice([[dim, dim], [dim], [1 << 16, 1 << 16], [dim, 0], [2**62, 0, 2**62]])
        nbytes = int(np.prod(shape, dtype=object)) * 4
        key = self._choice(sorted(tensors)) if tensors else "lora_unet_x.lora_down.weight"
        header, start = {}, 0
        for name_, (dtype, shape_, raw) in tensors.items():
            header[name_] = {"dtype": dtype, "shape": shape_, "data_offsets": [start, start + len(raw)]}
            start += len(raw)
        # the huge tensor is declared after the real ones, so only its size is a lie
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [start, start + nbytes]}
        data = b"".join(raw for _, _, raw in tensors.values())
        return pack(header, data), f"{key} declares {nbytes} bytes"

    def _splice(self, blob: bytes, name: str) -> tuple[bytes, str]:
        other = self._choice(self.names)
        a, b = split(blob), split(self.seeds[other])
        if a is None or b is None:
            return blob[: len(blob) // 2] + self.seeds[other][len(self.seeds[other]) // 2 :], f"halves with {other}"
        if self.rng.random() < 0.5:  # header of one, data of the other
            return pack(a[1], b[2]), f"header + data of {other}"
        da, db = self.decoded.get(name), self.decoded.get(other)
        if not da or not db:
            return pack(a[1], b[2]), f"header + data of {other}"
        merged = {**da[0], **db[0]}  # modules of two layouts in one file
        return encode(merged, {**da[1], **db[1]}), f"tensors merged with {other}"

    def _stack(self, blob: bytes, name: str) -> tuple[bytes, str]:
        """Two or three mutations in a row."""
        hows = []
        for _ in range(int(self.rng.integers(2, 4))):
            op = self._choice(["bitflip", "bytes", "json", "length", "truncate"])
            blob, how = self.ops[op](blob, name)
            hows.append(f"{op}: {how}")
        return blob, " ; ".join(hows)


# ---------------------------------------------------------------------------
# The check


def _signature(exc: BaseException) -> tuple[str, str]:
    """(exception type, innermost function inside lorastyle, else the innermost function at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if f"{os.sep}lorastyle{os.sep}" in f.filename and not f.filename.endswith("fuzzing.py")]
    frame = (inside or frames or [None])[-1]
    return type(exc).__name__, frame.name if frame is not None else "?"


def _check_lora(lora) -> str | None:
    """The invariants of a loaded LoRA; a description of the first broken one, or None."""
    if not lora.modules:
        return "no modules"
    if lora.format not in FORMATS or lora.base not in BASE_FAMILIES:
        return f"format {lora.format!r} / base {lora.base!r}"
    for name, m in lora.modules.items():
        if m.up.ndim != 2 or m.down.ndim != 2 or m.up.shape[1] != m.down.shape[0]:
            return f"{name}: factor shapes {m.up.shape} {m.down.shape}"
        if m.up.dtype != np.float32 or m.down.dtype != np.float32:
            return f"{name}: factor dtypes {m.up.dtype} {m.down.dtype}"
        if not (np.isfinite(m.scale) and np.all(np.isfinite(m.up)) and np.all(np.isfinite(m.down))):
            return "non-finite factors"
    return None


def _run_inspect(path: str, *flags: str) -> tuple[int, str, str]:
    from lorastyle.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(["inspect", path, "--json", *flags])
    return status, out.getvalue(), err.getvalue()


def _check_record(record) -> str | None:
    """The invariants of an index record; a description of the first broken one, or None."""
    if not record.sketches or set(record.sketches) != set(record.parts) or set(record.norms) != set(record.parts):
        return "parts, sketches and norms disagree"
    for part, sketch in record.sketches.items():
        if sketch.dtype != np.float16 or not np.all(np.isfinite(sketch)):
            return f"{part}: sketch not finite float16"
        if not (np.isfinite(record.norms[part]) and record.norms[part] >= 0):
            return f"{part}: norm {record.norms[part]!r}"
    if record.module_norms is None or not np.all(np.isfinite(record.module_norms)):
        return "module norms not finite"
    if len(record.module_norms) != record.n_modules:
        return "module norms and modules disagree"
    return None


_SMALL_SKETCHER = None


def _small_sketcher():
    """A small sketcher: the record's code paths at a fraction of the default's cost."""
    global _SMALL_SKETCHER  # a cache local to the fuzzer, not library state
    if _SMALL_SKETCHER is None:
        from lorastyle.index.sketches import Sketcher

        _SMALL_SKETCHER = Sketcher(dim=256, module_dim=64)
    return _SMALL_SKETCHER


def check_file(path: str, *, mutation: str = "", inspect: bool = True, index: bool = True) -> tuple[str, list[Failure]]:
    """Feed one file to every reader; return the outcome and the failures.

    Parameters
    ----------
    path : str
    mutation : str
        Copied into the failures.
    inspect, index : bool, default=True
        Also run ``lorastyle inspect --json``; also run :func:`read_record` (for each descriptor)
        and :meth:`LoraIndex.load`.

    Returns
    -------
    outcome : {"loaded", "rejected", "failed"}
        What ``load_lora`` did.
    failures : list of Failure
    """
    failures: list[Failure] = []

    def fail(stage, signature, message):
        failures.append(Failure(stage, signature, message[:500], mutation))

    try:
        tensors, _ = read_safetensors(path)
        if not all(isinstance(v, np.ndarray) for v in tensors.values()):
            fail("read_safetensors", ("invariant", "not arrays"), "a tensor is not an ndarray")
    except LoraFormatError as exc:
        if exc.path != path or not exc.reason:
            fail("read_safetensors", ("invariant", "error naming"), str(exc))
    except FuzzTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - any other exception is the finding
        fail("read_safetensors", _signature(exc), f"{type(exc).__name__}: {exc}")

    outcome = "failed"
    try:
        lora = load_lora(path)
        broken = _check_lora(lora)
        if broken:
            sig = ("invariant", broken if broken == "non-finite factors" else "lora")
            fail("load_lora", sig, broken)
        else:
            outcome = "loaded"
    except LoraFormatError as exc:
        outcome = "rejected"
        if exc.path != path or not exc.reason:
            fail("load_lora", ("invariant", "error naming"), str(exc))
    except FuzzTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001
        fail("load_lora", _signature(exc), f"{type(exc).__name__}: {exc}")

    if inspect:
        # plain inspect reads the header and alphas only; --check also loads every tensor as load_lora does
        for flags in ((), ("--check",)):
            try:
                status, out, err = _run_inspect(path, *flags)
                _check_inspect_output(path, status, out, err, outcome, fail, header_only=not flags)
            except FuzzTimeout:
                raise
            except BaseException as exc:  # noqa: BLE001
                fail("inspect", _signature(exc), f"{type(exc).__name__}: {exc}")

    if index:
        from lorastyle.index import LoraIndex
        from lorastyle.index.records import read_record

        for descriptor in ("gram", "concat"):
            try:
                broken = _check_record(read_record(path, sketcher=_small_sketcher(), descriptor=descriptor))
                if broken:
                    fail("record", ("invariant", broken.split(":")[-1].strip()), broken)
                elif outcome != "loaded":
                    fail("record", ("invariant", "disagrees with load_lora"), f"a record of a file load_lora {outcome}")
            except LoraFormatError as exc:
                if exc.path != path or not exc.reason:
                    fail("record", ("invariant", "error naming"), str(exc))
            except FuzzTimeout:
                raise
            except BaseException as exc:  # noqa: BLE001
                fail("record", _signature(exc), f"{type(exc).__name__}: {exc}")
        try:
            LoraIndex.load(path)
        except LoraFormatError:
            pass
        except FuzzTimeout:
            raise
        except BaseException as exc:  # noqa: BLE001
            fail("index", _signature(exc), f"{type(exc).__name__}: {exc}")
    return outcome, failures


def _check_inspect_output(path, status, out, err, outcome, fail, header_only=False) -> None:
    """Header-only inspect may describe a file load_lora rejects for its tensor values; never the reverse."""
    lines = [line for line in err.split("\n") if line]
    errors = [line for line in lines if line.startswith("error: ")]
    if status == 0:
        try:
            summary = json.loads(out)
        except ValueError:
            fail("inspect", ("output", "json"), f"stdout is not JSON: {out[:200]!r}")
            return
        if not isinstance(summary, dict) or not SUMMARY_KEYS <= set(summary) or errors:
            fail("inspect", ("output", "summary"), f"summary {out[:200]!r}, stderr {err[:200]!r}")
        elif outcome == "rejected" and not header_only:
            fail("inspect", ("output", "disagrees"), "inspect loaded a file load_lora rejects")
    elif status == 2:
        if out or len(errors) != 1 or not errors[0].startswith(f"error: {path}: "):
            fail("inspect", ("output", "error line"), f"stdout {out[:100]!r}, stderr {err[:300]!r}")
        elif outcome == "loaded":
            fail("inspect", ("output", "disagrees"), f"inspect refused a file load_lora loads: {errors[0][:300]}")
    else:
        fail("inspect", ("output", f"status {status}"), err[:300])


# ---------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`FuzzTimeout` in the main thread after ``seconds`` (POSIX interval timer)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise FuzzTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # not POSIX
        return 0.0
    # ru_maxrss is in kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    seeds: dict[str, bytes],
    n_inputs: int,
    *,
    random_state: int = 0,
    time_limit: float | None = 5.0,
    workdir: str | os.PathLike | None = None,
    inspect_every: int = 1,
    memory_growth_mb: float = 1024.0,
    crash_dir: str | os.PathLike | None = None,
    progress: Callable[[int, FuzzReport], None] | None = None,
    include_seeds: bool = True,
) -> FuzzReport:
    """Mutate seeds ``n_inputs`` times and check every mutant.

    Parameters
    ----------
    seeds : dict of str to bytes
    n_inputs : int
        Mutants to check (the unmutated seeds are checked first when ``include_seeds``, and counted).
    random_state : int, default=0
    time_limit : float or None, default=5.0
        Seconds per input; an input past it is a ``timeout`` failure.
    workdir : path, optional
        Where mutants are written (default: a temporary folder, in ``/dev/shm`` when it exists).
    inspect_every : int, default=1
        Run ``lorastyle inspect`` on every n-th input.
    memory_growth_mb : float, default=1024
        An input that raises the process's peak memory by more than this is a ``memory`` failure.
    crash_dir : path, optional
        The first input of each failure signature is copied there.
    progress : callable, optional
        Called as ``progress(i, report)`` every 1,000 inputs.
    include_seeds : bool, default=True

    Returns
    -------
    FuzzReport
    """
    rng = np.random.default_rng(random_state)
    mutator = Mutator(seeds, rng)
    report = FuzzReport()
    base = "/dev/shm" if workdir is None and os.access("/dev/shm", os.W_OK) else workdir
    seen: set[tuple[str, str]] = set()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        path = os.path.join(tmp, "input.safetensors")
        items: Iterable = (("seed", name) for name in sorted(seeds)) if include_seeds else ()
        todo = [*items, *(("mutant", None) for _ in range(n_inputs))]
        for i, (kind, name) in enumerate(todo):
            if kind == "seed":
                data, how = seeds[name], f"{name} | unmutated"
            else:
                data, how = mutator.mutate()
            report.mutations[how.split(" | ")[1].split(":")[0]] += 1
            with open(path, "wb") as fh:
                fh.write(data)
            rss = _peak_rss_mb()
            try:
                with _time_limit(time_limit):
                    outcome, failures = check_file(path, mutation=how, inspect=i % inspect_every == 0)
            except FuzzTimeout:
                outcome, failures = "failed", [Failure("any", ("timeout", f"> {time_limit} s"), "time limit", how)]
            grown = _peak_rss_mb() - rss
            if grown > memory_growth_mb:
                failures.append(
                    Failure(
                        "any", ("memory", f"> {memory_growth_mb:.0f} MB"), f"peak memory grew by {grown:.0f} MB", how
                    )
                )
            report.inputs += 1
            report.loaded += outcome == "loaded"
            report.rejected += outcome == "rejected"
            report.failed_inputs += bool(failures)
            report.failures.extend(failures)
            for f in failures:
                if crash_dir is not None and f.signature not in seen:
                    os.makedirs(crash_dir, exist_ok=True)
                    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(f.signature))[:80]
                    Path(crash_dir, f"{slug}.safetensors").write_bytes(data)
                seen.add(f.signature)
            if progress is not None and (i + 1) % 1000 == 0:
                progress(i + 1, report)
    report.seconds = time.perf_counter() - start
    return report


def format_report(report: FuzzReport) -> str:
    """A human summary: counts, then one line per failure signature."""
    lines = [
        f"inputs: {report.inputs}  loaded: {report.loaded}  rejected: {report.rejected}  "
        f"failed inputs: {report.failed_inputs} ({len(report.failures)} failures, "
        f"{len(report.unknown())} of unknown kinds)  "
        f"time: {report.seconds:.1f} s ({1000 * report.seconds / max(report.inputs, 1):.2f} ms/input)"
    ]
    for sig, group in sorted(report.by_signature().items(), key=lambda kv: -len(kv[1])):
        label = f"known bug: {KNOWN_BUGS[sig]}" if sig in KNOWN_BUGS else "UNKNOWN"
        lines.append(f"  {len(group):6d}  {sig[0]} in {sig[1]} [{group[0].stage}] ({label})")
        lines.append(f"          e.g. {group[0].mutation[:160]}: {group[0].message[:160]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.fuzz.fuzzing``: exit 0 when no failure is outside :data:`KNOWN_BUGS`, else 1."""
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz.fuzzing", description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="mutants to check (default: 100000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--real", default=None, help="folder of real LoRA files used as extra seeds")
    parser.add_argument("--time-limit", type=float, default=5.0, help="seconds per input (default: 5)")
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=4096,
        help="address-space limit of the process, so a blow-up fails fast (default: 4096; 0: none)",
    )
    parser.add_argument("--crash-dir", default=None, help="copy the first input of each failure kind here")
    args = parser.parse_args(argv)
    if args.memory_limit_mb:
        try:
            import resource

            limit = args.memory_limit_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError) as exc:
            print(f"warning: cannot limit memory ({exc})", file=sys.stderr)
    seeds = seed_files(args.real)
    print(f"{len(seeds)} seeds; {args.inputs} mutants; seed {args.seed}", file=sys.stderr)

    def progress(i, report):
        if i % 10_000 == 0:
            print(f"  {i} inputs, {len(report.failures)} failures, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    t0 = time.perf_counter()
    report = run(
        seeds,
        args.inputs,
        random_state=args.seed,
        time_limit=args.time_limit,
        crash_dir=args.crash_dir,
        progress=progress,
    )
    print(format_report(report))
    return 1 if report.unknown() else 0


if __name__ == "__main__":
    sys.exit(main())
