"""Seeding torch without touching the caller's random state (no library call changes global state)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._validation import check_non_negative_int

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Seed torch inside a fork of its RNG: the caller's global RNG state is restored on exit.

    For code that draws from torch's global RNG and takes no generator (module initialisation,
    peft's adapter initialisation).

    Parameters
    ----------
    seed : int
    device : str or torch.device, default="cpu"
        A CUDA device's RNG is forked (and seeded) too.
    """
    seed = check_non_negative_int(seed, "seed")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
