"""A strict, pickle-free reader and writer for the safetensors format.

LoRA files come from strangers. This reader checks every promise a file
makes (header length, JSON, unique names, dtypes, shapes, offsets) before it
touches tensor bytes, so a malformed file gives a :class:`LoraFormatError`
that names the file and the reason, never a crash or a huge allocation.
It needs only numpy, which keeps ``lorastyle inspect`` fast to start.

Format (https://github.com/huggingface/safetensors): 8 bytes little-endian
header length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets"}}``
plus an optional ``"__metadata__": {str: str}``, then the tensor bytes.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ..errors import LoraFormatError
from .atomic import atomic_write

__all__ = [
    "LoraFormatError",
    "read_safetensors",
    "read_safetensors_header",
    "write_safetensors",
    "bfloat16_bits",
]

# safetensors itself refuses headers above 100 MB; so do we, before reading them.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# No LoRA tensor has a side this long; bounding it keeps numpy from being asked for absurd shapes.
MAX_DIMENSION = 2**31 - 1

# dtype name -> (numpy dtype of the stored bytes, itemsize)
_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("<f8", 8),
    "F32": ("<f4", 4),
    "F16": ("<f2", 2),
    "BF16": ("<u2", 2),  # decoded by hand: numpy has no bfloat16
    "I64": ("<i8", 8),
    "I32": ("<i4", 4),
    "I16": ("<i2", 2),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "BOOL": ("?", 1),
}
_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64"}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
_PICKLE_REASON = (
    "pickle-based checkpoint: refusing to unpickle it, because unpickling runs "
    "code from the file; convert it to .safetensors with a tool you trust"
)


def _looks_like_pickle(head: bytes) -> bool:
    # Pickle protocol 2-5 opcodes, or the zip container torch.save uses.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate tensor name {key!r} in header")
        seen[key] = value
    return seen


def _check_length(path, head: bytes, size: int) -> int:
    """The header length from the first 8 bytes, checked against the file's size."""
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
    # Pickle opcodes can also begin a valid header length (0x80 0x02 = 640 bytes), so a file
    # is called a pickle only when its first bytes cannot be a header length for its size.
    if (n is None or n > size - 8) and _looks_like_pickle(head):
        raise LoraFormatError(path, _PICKLE_REASON)
    if size == 0:
        raise LoraFormatError(path, "empty file")
    if n is None:
        raise LoraFormatError(path, f"file of {size} bytes is too short for a safetensors header")
    if n > size - 8:
        raise LoraFormatError(path, f"header length {n} is larger than the file ({size} bytes)")
    if n > MAX_HEADER_BYTES:
        raise LoraFormatError(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    return n


def read_safetensors_header(
    path: str | os.PathLike, *, data: bytes | memoryview | None = None
) -> tuple[dict, dict[str, str], int]:
    """Read and validate the header of a safetensors file.

    Parameters
    ----------
    path : str or path-like
        The file (named in errors).
    data : bytes, optional
        The file's bytes, already read (the index reads each file once): then the file
        is not opened.

    Returns
    -------
    entries : dict
        ``{name: (dtype, shape, begin, end)}`` with offsets relative to the data section.
    metadata : dict of str to str
        The ``__metadata__`` block (empty if absent).
    data_start : int
        Byte offset of the data section in the file.

    Raises
    ------
    LoraFormatError
        If the file is a pickle, is empty, or its header is inconsistent.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraFormatError(path, _PICKLE_REASON)
    if data is not None:
        size = len(data)
        n = _check_length(path, bytes(data[:8]), size)
        raw = bytes(data[8 : 8 + n])
    else:
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
                raise LoraFormatError(path, "not a regular file")
            size = info.st_size
            with open(path, "rb") as fh:
                n = _check_length(path, fh.read(8), size)
                raw = fh.read(n)
        except OSError as exc:
            raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise LoraFormatError(path, "header is not UTF-8 text (not a safetensors file?)") from None
    except RecursionError:
        raise LoraFormatError(path, "header is nested too deeply to be a safetensors header") from None
    except ValueError as exc:  # JSONDecodeError and duplicates
        msg = str(exc)
        reason = msg if msg.startswith("duplicate tensor name") else f"header is not valid JSON ({msg})"
        raise LoraFormatError(path, reason) from None
    if not isinstance(header, dict):
        raise LoraFormatError(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraFormatError(path, "__metadata__ must map strings to strings")

    data_size = size - 8 - n
    entries = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise LoraFormatError(path, f"tensor {name!r}: entry lacks dtype, shape or data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str):
            raise LoraFormatError(path, f"tensor {name!r}: dtype {dtype!r} is not a string")
        if dtype in _UNSUPPORTED:
            raise LoraFormatError(path, f"tensor {name!r}: dtype {dtype} is not supported")
        if dtype not in _DTYPES:
            raise LoraFormatError(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise LoraFormatError(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints")
        if any(d > MAX_DIMENSION for d in shape) or len(shape) > 8:
            raise LoraFormatError(
                path,
                f"tensor {name!r}: shape {shape} is beyond any LoRA (a dimension above "
                f"{MAX_DIMENSION} or more than 8 dimensions)",
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise LoraFormatError(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        nbytes = _DTYPES[dtype][1] * math.prod(shape)  # Python ints: no overflow
        if begin < 0 or end < begin or end - begin != nbytes:
            raise LoraFormatError(
                path, f"tensor {name!r}: data_offsets {offsets} do not fit {dtype} of shape {shape} ({nbytes} bytes)"
            )
        if end > data_size:
            raise LoraFormatError(
                path, f"truncated tensor data: {name!r} ends at byte {end} but the data section has {data_size} bytes"
            )
        entries[name] = (dtype, tuple(shape), begin, end)
        spans.append((begin, end, name))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin < covered:
            raise LoraFormatError(path, f"tensor {name!r} overlaps the previous tensor's bytes")
        covered = end
    return entries, metadata, 8 + n


def _decode(buf: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype, _ = _DTYPES[dtype]
    arr = np.frombuffer(buf, dtype=np_dtype)
    if dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.reshape(shape)


def read_safetensors(
    path: str | os.PathLike,
    *,
    data: bytes | memoryview | None = None,
    mapped: bool = False,
    _header: tuple | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor of a safetensors file into numpy arrays, safely.

    bfloat16 is widened to float32 (numpy has no bfloat16); other dtypes keep
    their type, as read-only views of the bytes read (no copy). Nothing is ever
    unpickled.

    Parameters
    ----------
    path : str or path-like
        The file (named in errors).
    data : bytes, optional
        The file's bytes, already read: then the file is not opened.
    mapped : bool, default=False
        Map the file into memory instead of reading it: a tensor's bytes are read when used (an
        index of 70,000 files is read only where a query looks). The values are then not checked
        by anyone but the caller, and the file must not be truncated while the arrays live.

    Returns
    -------
    tensors : dict of str to ndarray
    metadata : dict of str to str

    Raises
    ------
    LoraFormatError
        For any inconsistency (see :func:`read_safetensors_header`) or a file
        that changed size while being read.
    """
    # _header: what read_safetensors_header returned for this file a moment ago (load_lora has it)
    entries, metadata, start = _header if _header is not None else read_safetensors_header(path, data=data)
    if data is not None:
        view = memoryview(data)[start:]
    elif mapped:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                view = memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")[start:]
        except (OSError, ValueError) as exc:
            raise LoraFormatError(path, f"cannot map file: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                view = memoryview(fh.read())
        except OSError as exc:
            raise LoraFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        if end > len(view):
            raise LoraFormatError(path, f"truncated tensor data: {name!r} (file changed while reading?)")
        tensors[name] = _decode(view[begin:end], dtype, shape)
    return tensors, metadata


_TO_CODE = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round to bfloat16, as the 16-bit patterns safetensors stores for ``BF16``.

    The values are first taken as float32, then rounded to nearest with ties to
    even (as ``torch.Tensor.to(torch.bfloat16)``): finite values beyond the
    bfloat16 range become infinities, and every NaN becomes the quiet NaN 0x7FC0
    (as torch's scalar conversion; its vectorised one writes 0xFFFF).

    Parameters
    ----------
    x : array-like

    Returns
    -------
    ndarray of uint16, the shape of ``x``
    """
    bits = np.array(x, dtype=np.float32).view(np.uint32)  # a copy, so a 0-d input views too
    lsb = (bits >> 16) & 1  # ties go to the even one of the two neighbours
    with np.errstate(over="ignore"):
        rounded = ((bits + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    return np.where(np.isnan(bits.view(np.float32)), np.uint16(0x7FC0), rounded)


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray],
    metadata: dict[str, str] | None = None,
    *,
    bfloat16: Collection[str] = (),
) -> None:
    """Write numpy arrays as a safetensors file, atomically (:func:`lorastyle.io.atomic.atomic_write`).

    Parameters
    ----------
    path : str or path-like
        Destination.
    tensors : dict of str to ndarray
        Arrays of a dtype safetensors knows (float16/32/64, ints, bool).
    metadata : dict of str to str, optional
        Stored in ``__metadata__``.
    bfloat16 : collection of str, default=()
        Names of tensors to store as ``BF16`` (numpy has no bfloat16): their
        values are rounded by :func:`bfloat16_bits`.
    """
    missing = set(bfloat16) - set(tensors)
    if missing:
        raise ValueError(f"bfloat16 names {sorted(missing)} are not among the tensors")
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = bfloat16_bits(tensors[name]) if name in bfloat16 else np.asarray(tensors[name])
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d alpha into shape [1])
        code = (
            "BF16"
            if name in bfloat16
            else _TO_CODE.get(arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype)
        )
        if code is None:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False)  # written from its own memory: no copy
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + blob.nbytes]}
        blobs.append(blob)
        offset += blob.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # align the data section, as safetensors does

    def write(fh) -> None:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for blob in blobs:
            if blob.nbytes:
                fh.write(memoryview(blob.reshape(-1)).cast("B"))

    atomic_write(path, write)
