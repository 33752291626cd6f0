"""Synthetic LoRA files of real shape, from the key layouts of real files (``../shared/real-loras/key-layouts``).

A key layout is a JSON skeleton (tensor name -> shape) read from a real file. From it this module
writes full-size safetensors files: with random float16 factors (as a trainer would), at another
rank, or as sparse files whose data section is a hole (reads as zeros, costs no disk), for
tests and benchmarks that need SDXL- or Flux-size files. Not part of the installed package.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["layout_shapes", "write_layout_file", "DEFAULT_LAYOUTS", "FACTOR_SUFFIXES", "ROLE_SUFFIXES"]

# Tensor-name suffixes of LoRA factors in every layout, longest first (so the first match is the role)
FACTOR_SUFFIXES = tuple(
    sorted(
        [
            ".lora_down.weight",
            ".lora_up.weight",
            ".lora_A.weight",
            ".lora_B.weight",
            ".down.weight",
            ".up.weight",
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
        ],
        key=len,
        reverse=True,
    )
)
# ... and every role of a module: factors, alpha and DoRA's magnitude
ROLE_SUFFIXES = tuple(sorted([*FACTOR_SUFFIXES, ".alpha", ".dora_scale"], key=len, reverse=True))

DEFAULT_LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "real-loras" / "key-layouts"
_DOWN = (".lora_down.weight", ".lora_A.weight")
_UP = (".lora_up.weight", ".lora_B.weight")


def layout_shapes(name: str, folder: str | os.PathLike = DEFAULT_LAYOUTS) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a key layout.

    Parameters
    ----------
    name : str
        The layout's file name without ``.json``.
    folder : path, optional

    Returns
    -------
    dict of str to tuple of int
    """
    keys = json.loads((Path(folder) / f"{name}.json").read_text())["keys"]
    return {k: tuple(v["shape"] if isinstance(v, dict) else v) for k, v in keys.items()}


def _with_rank(key: str, shape: tuple[int, ...], rank: int | None) -> tuple[int, ...]:
    if rank is None or not shape:
        return shape
    if key.endswith(_DOWN):
        return (rank, *shape[1:])
    if key.endswith(_UP):
        return (shape[0], rank, *shape[2:])
    return shape


def write_layout_file(
    path: str | os.PathLike,
    shapes: dict[str, tuple[int, ...]],
    *,
    rank: int | None = None,
    alpha: float = 8.0,
    seed: int = 0,
    sparse: bool = False,
    metadata: dict[str, str] | None = None,
    scale: float = 0.02,
) -> int:
    """Write a float16 safetensors file of these shapes (rank-changed if asked); return its size.

    Parameters
    ----------
    path : path
    shapes : dict of str to tuple of int
        From :func:`layout_shapes`.
    rank : int, optional
        New rank of every LoRA module (``lora_down`` rows, ``lora_up`` columns).
    alpha : float, default=8.0
        Value of every ``.alpha`` tensor.
    seed : int, default=0
        Seeds the random factors.
    sparse : bool, default=False
        Leave every factor as a hole (zeros on read, no disk used); alphas are written.
        The first 64 bytes of data hold ``seed``, so that sparse files differ.
    metadata : dict of str to str, optional
    scale : float, default=0.02
        Standard deviation of the random factors.

    Returns
    -------
    int
        Bytes in the file.
    """
    rng = np.random.default_rng(seed)
    header, offset, order = {}, 0, []
    for key in sorted(shapes):
        shape = _with_rank(key, tuple(shapes[key]), rank)
        n = 2 * math.prod(shape)
        header[key] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        order.append((key, shape, offset))
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape, at in order:
            if key.endswith(".alpha"):
                blob = np.full(shape, alpha, np.float16).tobytes()
            elif sparse:
                continue
            else:
                blob = (scale * rng.standard_normal(shape)).astype(np.float16).tobytes()
            fh.seek(start + at)
            fh.write(blob)
        if sparse:  # a few values of the seed's in the first large factor: sparse files of other seeds differ
            key, shape, at = next((k, s, a) for k, s, a in order if math.prod(s) >= 32 and not k.endswith(".alpha"))
            fh.seek(start + at)
            fh.write(np.full(32, 1e-3 * (seed % 997 + 1), np.float16).tobytes())
        fh.truncate(start + offset)
    return start + offset
