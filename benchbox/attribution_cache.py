"""A content-addressed cache of attributions, reused across runs and suites.

An entry holds one batch's attribution ``[B, 1, *spatial]`` (float32) and the state of the
method's generator after the call. Its key is the SHA-256 of the canonical JSON of everything
that determines those two tensors:

- the dataset (class and ``spec()``) and the batch's sample ids (together: the pixels ``x``),
- the model: registry name, parameters and a SHA-256 of its state_dict (names, dtypes, shapes,
  bytes), so retrained or fine-tuned weights miss,
- the method: registry name, class, resolved parameters,
- the target classes explained,
- the generator state before the call (the seed stream's identity *and* position: the runner
  draws a job's batches from one generator, so a hit restores the state the call would leave
  and the next batch draws exactly what it would have drawn),
- the device type, the torch version and the benchbox version.

Entries live in ``$BENCHBOX_CACHE/attributions/<key>.safetensors`` (see
``benchbox.models.training.cache_dir``): safetensors, a format that cannot carry code, written
through a temporary file and ``os.replace`` (a killed write leaves no entry). An unreadable
entry is a miss. Set
``BENCHBOX_ATTRIBUTION_CACHE=0`` (or ``run_suite(cache=False)``) to turn the cache off.

What the key cannot see: CPU thread count and BLAS kernels may change the last bits of a
floating-point reduction; a hit returns the bits of the run that wrote the entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ._version import __version__
from .params import canonical_json

__all__ = [
    "AttributionCache",
    "attribution_key",
    "cache_clear",
    "cache_enabled",
    "cache_ls",
    "state_hash",
]

log = logging.getLogger(__name__)

_KINDS = ("models", "attributions")
_SUFFIX = ".safetensors"


def _root() -> Path:
    from .models.training import cache_dir  # one definition of $BENCHBOX_CACHE

    return cache_dir()


def cache_enabled(requested: bool | None = None) -> bool:
    """``requested`` if given, else False when ``BENCHBOX_ATTRIBUTION_CACHE`` is 0/false/no/off."""
    if requested is not None:
        return requested
    flag = os.environ.get("BENCHBOX_ATTRIBUTION_CACHE", "1").strip().lower()
    return flag not in ("0", "false", "no", "off")


def state_hash(module: nn.Module) -> str:
    """SHA-256 over the state_dict: every entry's name, dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{tuple(t.shape)}\x1e".encode())
        # bytes of any dtype (bfloat16 has no numpy view): reinterpret as uint8
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def attribution_key(
    *,
    dataset: dict[str, Any],
    model: dict[str, Any],
    method: dict[str, Any],
    ids: tuple[str, ...] | list[str],
    target: Tensor,
    generator: torch.Generator,
    device: torch.device,
) -> str:
    """The cache key of one batch's attribution (module docstring: what goes in and why)."""
    content = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "ids": list(ids),
        "target": [int(t) for t in target.tolist()],
        "generator": hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest(),
        "device": device.type,
        "torch": torch.__version__,
        "benchbox": __version__,
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


class AttributionCache:
    """``<root>/attributions/<key>.safetensors``: ``attributions`` [B,1,*S] and ``generator``
    (the uint8 state after the call).

    ``hits``/``misses`` count this instance's lookups (the runner records them per job)."""

    def __init__(self, root: Path | None = None):
        self.dir = (root if root is not None else _root()) / "attributions"
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / f"{key}{_SUFFIX}"

    def load(self, key: str, device: torch.device, generator: torch.Generator) -> Tensor | None:
        """The stored attribution on ``device`` with ``generator`` set to the stored state after
        the call; None on a miss (``generator`` untouched)."""
        f = self.path(key)
        if not f.exists():
            self.misses += 1
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            entry = load_file(f, device="cpu")
            attr, state = entry["attributions"], entry["generator"]
            generator.set_state(state)
        except (OSError, KeyError, RuntimeError, SafetensorError) as exc:
            log.warning("attribution cache entry %s is unreadable (%s); recomputing", f, exc)
            self.misses += 1
            return None
        self.hits += 1
        return attr.to(device)

    def save(self, key: str, attributions: Tensor, generator: torch.Generator) -> None:
        """Store atomically; a full or read-only disk only logs (the cache is an optimisation)."""
        from safetensors.torch import save_file

        f = self.path(key)
        entry = {
            "attributions": attributions.detach().cpu().contiguous(),
            "generator": generator.get_state(),
        }
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")  # pid: Dask workers write at once
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_file(entry, str(tmp))
            os.replace(tmp, f)
        except OSError as exc:
            log.warning("cannot write attribution cache %s (%s); continuing without it", f, exc)
        finally:
            tmp.unlink(missing_ok=True)


def cache_ls(root: Path | None = None) -> pd.DataFrame:
    """One row per cache kind: ``kind, entries, bytes, path`` (``benchbox cache ls``).

    ``entries`` counts weight files (``models``: ``<key>.pt``) or attribution entries
    (``<key>.safetensors``); ``bytes``
    counts every file of the kind, temporary leftovers included."""
    root = root if root is not None else _root()
    rows = []
    for kind in _KINDS:
        d = root / kind
        files = [f for f in d.iterdir() if f.is_file()] if d.is_dir() else []
        suffix = ".pt" if kind == "models" else _SUFFIX
        entries = sum(1 for f in files if f.suffix == suffix and not f.name.startswith("."))
        rows.append(
            {
                "kind": kind,
                "entries": entries,
                "bytes": sum(f.stat().st_size for f in files),
                "path": str(d),
            }
        )
    return pd.DataFrame(rows, columns=["kind", "entries", "bytes", "path"])


def cache_clear(kind: str | None = None, root: Path | None = None) -> tuple[int, int]:
    """Delete the files of one kind (``models`` or ``attributions``) or of both; returns
    ``(files removed, bytes freed)`` (``benchbox cache clear [KIND]``)."""
    from .errors import UserError

    if kind is not None and kind not in _KINDS:
        raise UserError(
            f"cache clear: unknown kind {kind!r}; use one of {', '.join(_KINDS)} or none for both"
        )
    root = root if root is not None else _root()
    n = size = 0
    for k in _KINDS if kind is None else (kind,):
        d = root / k
        if not d.is_dir():
            continue
        for f in d.iterdir():
            # a lock file may be held by a process training that model: removing it would let
            # a second process lock a new file of the same name
            if f.is_file() and f.suffix != ".lock":
                size += f.stat().st_size
                f.unlink(missing_ok=True)
                n += 1
    return n, size
