"""Every random draw comes from a generator seeded from the suite seed and the job's identity."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator"]


def derive_seed(*keys: object) -> int:
    """A 63-bit seed determined by ``keys`` (suite seed, dataset, model, method, purpose, ...).

    Uses SHA-256 of the keys' ``repr`` so the value is the same in every process and platform
    (Python's ``hash`` is salted per process).
    """
    digest = hashlib.sha256("\x1f".join(repr(k) for k in keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
