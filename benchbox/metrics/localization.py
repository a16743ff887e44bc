"""Localization metrics: does the attribution point at the ground-truth region?

The maths lives in the pure function ``pointing_game``; the ``PointingGame`` class only holds
the parameters. Batched torch on the input's device, no per-sample loops.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..core import Capability, Metric, MetricContext, MetricOutput
from ..methods.base import check_attributions

__all__ = ["PointingGame", "dilate_disc", "pointing_game"]

Ties = Literal["fraction", "any", "first"]

REASON_EMPTY_MASK = "empty mask"
REASON_NONFINITE = "attribution has non-finite values"


def dilate_disc(mask: Tensor, tolerance: int) -> Tensor:
    """Dilate bool ``mask`` ``[B, 1, *sp]`` by the open disc ``Σ d_i² < tolerance²`` (2D or 3D).

    A pixel is in the result iff some mask pixel lies at squared distance ``< tolerance²`` from
    it (TorchRay's strict ``<``). ``tolerance`` 0 or 1 returns the mask itself. Computed as one
    convolution with the disc (ball in 3D) kernel; counts are small integers, exact in float32.
    """
    if tolerance <= 1:
        return mask.bool()
    nsp = mask.dim() - 2
    if nsp not in (2, 3):
        raise ValueError(
            f"dilate_disc: expected 2 or 3 spatial dims, got shape {tuple(mask.shape)}"
        )
    r = tolerance - 1
    offsets = torch.arange(-r, r + 1, device=mask.device)
    grids = torch.meshgrid(*([offsets] * nsp), indexing="ij")
    disc = (sum(g * g for g in grids) < tolerance * tolerance).float()  # type: ignore[union-attr]
    conv = F.conv2d if nsp == 2 else F.conv3d
    return conv(mask.float(), disc[None, None], padding=r) > 0.5


def pointing_game(
    attributions: Tensor, mask: Tensor, *, tolerance: int = 0, ties: Ties = "fraction"
) -> tuple[Tensor, list[str | None]]:
    """Per-sample pointing-game score and NaN reasons.

    Args:
        attributions: float ``[B, 1, *sp]``.
        mask: bool ``[B, 1, *sp]`` ground-truth region.
        tolerance: pixels; the hit region is ``dilate_disc(mask, tolerance)``.
        ties: how tied maxima ``M = {p : a_p = max a}`` are scored against the hit region ``R``:
            ``fraction`` → ``|M ∩ R| / |M|`` (expected hit under uniform random tie-breaking),
            ``any`` → ``1[M ∩ R ≠ ∅]`` (Quantus), ``first`` → ``1[min M ∈ R]`` with ``min M`` the
            first maximum in flat (row-major) order (TorchRay, CheXlocalize: ``argmax``).

    Returns:
        values float32 ``[B]`` in [0, 1] (NaN for an empty mask or a non-finite map) and reasons.
    """
    if mask.shape != attributions.shape:
        raise ValueError(
            f"mask: expected shape {list(attributions.shape)} (like the attributions), "
            f"got {list(mask.shape)}"
        )
    b = attributions.shape[0]
    a = attributions.reshape(b, -1)
    region = dilate_disc(mask.bool(), tolerance).reshape(b, -1)
    finite_px = torch.isfinite(a)
    finite = finite_px.all(dim=1)
    empty = ~mask.reshape(b, -1).any(dim=1)
    # Non-finite rows get a placeholder map; their scores are replaced by NaN below.
    a = torch.where(finite_px, a, torch.zeros((), dtype=a.dtype, device=a.device))
    is_max = a == a.amax(dim=1, keepdim=True)
    if ties == "fraction":
        values = (is_max & region).sum(dim=1).float() / is_max.sum(dim=1).float()
    elif ties == "any":
        values = (is_max & region).any(dim=1).float()
    elif ties == "first":
        n = a.shape[1]
        index = torch.arange(n, device=a.device).expand_as(a)
        first = torch.where(is_max, index, n).amin(dim=1, keepdim=True)
        values = region.gather(1, first).squeeze(1).float()
    else:
        raise ValueError(f"ties must be one of 'fraction', 'any', 'first', got {ties!r}")
    values = torch.where(finite & ~empty, values, torch.nan)
    reasons: list[str | None] = [
        REASON_EMPTY_MASK if e else (None if f else REASON_NONFINITE)
        for e, f in zip(empty.tolist(), finite.tolist(), strict=True)
    ]
    return values, reasons


class PointingGame(Metric):
    """Pointing game: is the attribution's maximum inside the mask (Zhang et al. 2016/2018)?

    Score per sample: hit (1) if the map's maximum lies in the ground-truth region dilated by
    ``tolerance`` pixels, else 0; with ``ties="fraction"`` the fraction of tied maxima inside.
    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018.
    Papers average hits per class; benchbox stores per-sample scores and leaves aggregation to
    the report.

    Parameters (sensitive; they explain most disagreement between published numbers):
        tolerance: pixels (>= 0). Hit iff a mask pixel lies at distance ``< tolerance`` from the
            maximum (TorchRay: 15 px at the image's resolution, strict ``<``). 0 (Quantus,
            CheXlocalize) and 1 both mean the mask itself.
        ties: ``fraction`` (default) scores ``|M ∩ R| / |M|`` over the set ``M`` of tied maxima,
            the expected hit under random tie-breaking, so a constant map scores the region's
            area fraction instead of a free hit; ``any`` is Quantus (hit if any tied maximum is
            in the region: a constant map always hits); ``first`` is TorchRay/CheXlocalize (the
            first maximum in row-major order, ``argmax``: biased to the top-left).

    Undefined cases (NaN with a reason): an empty mask ("empty mask") and a map with NaN/inf
    values. This deliberately differs from Quantus 0.6, whose ``hit[s.sum(-1) == 0] = np.nan``
    writes into a bool array and so scores an empty mask as a *hit* (PROTOCOLS b.1).

    Shapes: ``attributions`` ``[B, 1, *sp]``, ``mask`` bool ``[B, 1, *sp]`` -> values ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better = True

    def __init__(
        self, *, tolerance: Annotated[int, Field(ge=0)] = 0, ties: Ties = "fraction"
    ) -> None:
        self.tolerance = tolerance
        self.ties: Ties = ties

    def score(self, ctx: MetricContext) -> MetricOutput:
        batch = ctx.batch
        if batch.mask is None:
            raise ValueError("pointing_game needs ground-truth masks, but the batch has none")
        check_attributions(ctx.attributions, batch.x)
        values, reasons = pointing_game(
            ctx.attributions, batch.mask, tolerance=self.tolerance, ties=self.ties
        )
        return MetricOutput(values=values, reasons=reasons)
