"""A few inputs, masks and maps per job, kept so the report can draw an example grid.

The run stores scores and curves, not images or maps; ``save_examples`` keeps the first
``N_EXAMPLES`` samples of a job's first batch in ``<run_dir>/examples/<dataset>__<model>__<method>
.npz`` (small: float16), and ``load_examples`` reads them back for ``figures.example_grid``.

File contents (``np.load(..., allow_pickle=False)``):

- ``x`` float16 ``[n, C, H, W]``: the raw inputs in [0, 1];
- ``attributions`` float16 ``[n, H, W]``: each map divided by its max ``|a|``, and
  ``scale`` float32 ``[n]`` that max (map = attributions · scale): float16 alone would flush
  gradient-sized values to zero;
- ``mask`` bool ``[n, H, W]`` (all False where the dataset has no masks) and ``has_mask`` bool;
- ``ids`` str ``[n]``; ``dataset``, ``model``, ``method`` str scalars (the exact names: the file
  name is made safe for any file system);
- ``slice_index`` int ``[n]``: for volumes ``[B, C, D, H, W]`` the axial slice kept (the one
  with the largest mask area, else the largest attribution mass), −1 for 2D inputs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["N_EXAMPLES", "Examples", "load_examples", "safe_name", "save_examples"]

N_EXAMPLES = 4
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-name-safe form of a registry name; unsafe names get a hash so two never collide.

    ``saliency`` stays ``saliency``; ``tests.fakes:TinyData`` becomes
    ``tests.fakes_TinyData-<6 hex>``.
    """
    safe = _UNSAFE.sub("_", name).strip("._") or "x"
    if safe == name:
        return name
    return f"{safe[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, on any device
        a = a.detach().float().cpu().numpy() if a.dtype.is_floating_point else a.cpu().numpy()
    return np.asarray(a)


def save_examples(
    run_dir: Path,
    dataset_name: str,
    model_name: str,
    method_name: str,
    x: Any,
    mask: Any | None,
    attributions: Any,
    ids: Sequence[str],
    *,
    n: int = N_EXAMPLES,
) -> Path:
    """Write the first ``n`` samples of a batch to ``run_dir/examples/`` (atomically).

    Shapes: ``x`` ``[B, C, *sp]``, ``mask`` ``[B, 1, *sp]`` bool or None, ``attributions``
    ``[B, 1, *sp]`` with ``sp`` = (H, W) or (D, H, W); tensors or arrays. Returns the file.
    """
    xs = _numpy(x)[:n].astype(np.float32)
    attr = _numpy(attributions)[:n].astype(np.float32)
    k = xs.shape[0]
    if xs.ndim not in (4, 5) or attr.shape != (k, 1, *xs.shape[2:]):
        raise ValueError(
            f"save_examples: expected x [B, C, *sp] and attributions [B, 1, *sp] with sp 2D or "
            f"3D, got {xs.shape} and {attr.shape}"
        )
    has_mask = mask is not None
    m = _numpy(mask)[:n].astype(bool) if has_mask else np.zeros((k, 1, *xs.shape[2:]), dtype=bool)
    a = attr[:, 0]
    mk = m[:, 0]
    slice_index = np.full(k, -1, dtype=np.int64)
    if xs.ndim == 5:  # volumes: keep one axial slice per sample
        for i in range(k):
            area = mk[i].sum(axis=(1, 2))
            mass = np.abs(a[i]).sum(axis=(1, 2))
            slice_index[i] = int(np.argmax(area)) if area.any() else int(np.argmax(mass))
        rows = np.arange(k)
        xs = xs[rows, :, slice_index]
        a = a[rows, slice_index]
        mk = mk[rows, slice_index]
    scale = np.abs(a).reshape(k, -1).max(axis=1) if a.size else np.zeros(k)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0).astype(np.float32)
    folder = Path(run_dir) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    name = "__".join(safe_name(s) for s in (dataset_name, model_name, method_name))
    path = folder / f"{name}.npz"
    tmp = folder / f".{name}.tmp.npz"
    try:
        np.savez_compressed(
            tmp,
            x=xs.astype(np.float16),
            attributions=(a / scale[:, None, None]).astype(np.float16),
            scale=scale,
            mask=mk,
            has_mask=np.array(has_mask),
            ids=np.array([str(i) for i in list(ids)[:k]], dtype=str),
            dataset=np.array(dataset_name),
            model=np.array(model_name),
            method=np.array(method_name),
            slice_index=slice_index,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class Examples:
    """One job's stored examples (see the module docstring for the arrays)."""

    dataset: str
    model: str
    method: str
    ids: list[str]
    x: np.ndarray  # float32 [n, C, H, W]
    attributions: np.ndarray  # float32 [n, H, W], the maps at their stored scale
    mask: np.ndarray  # bool [n, H, W]
    has_mask: bool
    path: Path


def load_examples(run_dir: Path, problems: list[str] | None = None) -> list[Examples]:
    """Every readable ``examples/*.npz`` of a run; an unreadable one is named in ``problems``."""
    out = []
    for path in sorted((Path(run_dir) / "examples").glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as f:
                out.append(
                    Examples(
                        dataset=str(f["dataset"]),
                        model=str(f["model"]),
                        method=str(f["method"]),
                        ids=[str(i) for i in f["ids"]],
                        x=f["x"].astype(np.float32),
                        attributions=f["attributions"].astype(np.float32)
                        * f["scale"].astype(np.float32)[:, None, None],
                        mask=f["mask"].astype(bool),
                        has_mask=bool(f["has_mask"]),
                        path=path,
                    )
                )
        except (OSError, ValueError, KeyError) as exc:  # the grid goes without it
            if problems is not None:
                problems.append(f"{path}: unreadable examples file ({type(exc).__name__}: {exc})")
    return out
