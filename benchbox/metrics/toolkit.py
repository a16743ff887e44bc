"""What every metric does around its formula: non-finite maps, per-sample reasons, pixel counts.

A metric scores every sample of a batch at once. A map holding NaN/Inf gets NaN and the reason
:data:`REASON_NONFINITE` (its placeholder zeros from :func:`finite_rows` let the batched maths run
on every row); other undefined cases (an empty mask, an all-zero map, …) are further
``(flags [B], reason)`` checks, and :func:`finish` turns the checks into NaN values and one
reason per sample, the first check that holds naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["REASON_NONFINITE", "Checks", "finish", "finite_rows", "resolve_k"]

REASON_NONFINITE = "attribution has non-finite values"

Checks = Sequence[tuple[Tensor, str]]


def finite_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` ``[B, ...]`` with its non-finite entries zeroed, and which rows were all finite
    (bool ``[B]``)."""
    finite_px = torch.isfinite(x)
    finite = finite_px.reshape(x.shape[0], -1).all(dim=1)
    return torch.where(finite_px, x, torch.zeros((), dtype=x.dtype, device=x.device)), finite


def finish(
    values: Tensor, checks: Checks, *, unexplained: str | None = None
) -> tuple[Tensor, list[str | None]]:
    """``values`` ``[B]`` with NaN wherever a ``(flags [B], reason)`` check holds, and one reason
    per sample: the first check that holds; a value NaN for no check gets ``unexplained`` (e.g.
    "model score is non-finite"), else None. One host transfer per check."""
    bad = torch.zeros_like(values, dtype=torch.bool)
    for flags, _ in checks:
        bad = bad | flags
    values = torch.where(bad, torch.full_like(values, math.nan), values)
    reasons: list[str | None] = [None] * values.shape[0]
    for flags, reason in checks:
        for i, f in enumerate(flags.tolist()):
            if f and reasons[i] is None:
                reasons[i] = reason
    if unexplained is not None:
        for i, is_nan in enumerate(torch.isnan(values).tolist()):
            if is_nan and reasons[i] is None:
                reasons[i] = unexplained
    return values, reasons


def resolve_k(k: int | float, n: int, *, name: str | None = None) -> int:
    """A pixel count of a map of ``n`` pixels: an integer ``k``, or a fraction ``k`` of ``n``
    rounded half up (at least 1). An integer above ``n`` is clamped to ``n``, or, with ``name``
    (the parameter, e.g. ``"topk_intersection.k"``), a ``ValueError`` naming it."""
    if isinstance(k, float):
        return min(n, max(1, math.floor(k * n + 0.5)))
    if k > n and name is not None:
        raise ValueError(
            f"{name}: {k} exceeds the {n} pixels of a map; use a smaller k or a fraction such "
            f"as 0.05"
        )
    return min(int(k), n)
