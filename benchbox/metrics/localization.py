"""Localization metrics: does the attribution point at the ground-truth region?

Every metric compares a map ``a`` ``[B, 1, *sp]`` with a bool mask ``M`` ``[B, 1, *sp]`` (2D or
3D) and gives one score per sample. The maths lives in pure functions (``pointing_game``,
``energy_pointing_game``, ``relevance_mass``, ``relevance_rank``, ``topk_intersection``,
``auroc``, ``auprc``, ``iou``, ``dice``, with the helpers ``topk_hits``, ``binarize`` and
``otsu_threshold``); the classes only hold parameters. Everything is batched torch on the
input's device: maps are flattened to ``[B, N]`` and scored with sorts, ``searchsorted`` and
reductions, never a per-sample Python loop.

Shared conventions (documented once here, tested for every metric):

- An empty mask gives NaN with the reason ``"empty mask"``; a map with a NaN or ±inf value
  gives NaN with ``"attribution has non-finite values"``. The empty-mask reason wins when both
  hold.
- Ranking metrics (rank, top-k, AUROC, AUPRC, thresholds) rank the raw, signed map: positive
  evidence first, negative evidence last. ``abs=True`` ranks ``|a|`` instead.
- Ties are never broken by memory order unless asked for (``ties="first"``): the default
  ``"fraction"`` scores the expectation under uniformly random tie-breaking, so a constant map
  scores chance level instead of an artefact of the flat index.
- Scores are float64 (the runner stores doubles); counts are exact integers.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError
from torch import Tensor

from ..core import Capability, Metric, MetricContext, MetricOutput
from ..methods.base import check_attributions
from ..params import MAX_PIXELS, MAX_SIZE
from .toolkit import REASON_NONFINITE, finish, finite_rows, resolve_k

__all__ = [
    "AUPRC",
    "AUROC",
    "Dice",
    "EnergyPointingGame",
    "IoU",
    "PointingGame",
    "RelevanceMass",
    "RelevanceRank",
    "TopKIntersection",
    "auprc",
    "auroc",
    "binarize",
    "dice",
    "dilate_disc",
    "energy_pointing_game",
    "iou",
    "otsu_threshold",
    "pointing_game",
    "relevance_mass",
    "relevance_rank",
    "topk_hits",
    "topk_intersection",
]

Ties = Literal["fraction", "any", "first"]
RankTies = Literal["fraction", "first"]
Positive = Literal["clip", "abs", "minmax"]
Threshold = Literal["otsu", "percentile", "value"]

REASON_EMPTY_MASK = "empty mask"
REASON_FULL_MASK = "mask covers the whole map"
REASON_ZERO_TOTAL = "attribution has zero total relevance"
REASON_CONSTANT = "constant attribution"


# -- shared plumbing ------------------------------------------------------------------------------
def _flat(attributions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Flatten: ``a`` ``[B, N]`` (non-finite rows zeroed), ``m`` ``[B, N]``, ``finite``, ``empty``.

    The placeholder zeros let the batched maths run on every row; the rows they stand in for are
    replaced by NaN in ``_finish``.
    """
    if mask.shape != attributions.shape:
        raise ValueError(
            f"mask: expected shape {list(attributions.shape)} (like the attributions), "
            f"got {list(mask.shape)}"
        )
    b = attributions.shape[0]
    a, finite = finite_rows(attributions.reshape(b, -1))
    m = mask.reshape(b, -1).bool()
    return a, m, finite, ~m.any(dim=1)


def _standard_checks(finite: Tensor, empty: Tensor) -> list[tuple[Tensor, str]]:
    return [(empty, REASON_EMPTY_MASK), (~finite, REASON_NONFINITE)]


def _mask(ctx: MetricContext, name: str) -> Tensor:
    """The batch's mask, after checking the attributions' shape against ``x``."""
    if ctx.batch.mask is None:
        raise ValueError(f"{name} needs ground-truth masks, but the batch has none")
    check_attributions(ctx.attributions, ctx.batch.x)
    return ctx.batch.mask


# -- pointing game --------------------------------------------------------------------------------
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
    a, _, finite, empty = _flat(attributions, mask)
    b = a.shape[0]
    region = dilate_disc(mask.bool(), tolerance).reshape(b, -1)
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
    return finish(values, _standard_checks(finite, empty))


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
        self, *, tolerance: Annotated[int, Field(ge=0, le=MAX_SIZE)] = 0, ties: Ties = "fraction"
    ) -> None:
        self.tolerance = tolerance
        self.ties: Ties = ties

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "pointing_game")
        values, reasons = pointing_game(
            ctx.attributions, mask, tolerance=self.tolerance, ties=self.ties
        )
        return MetricOutput(values=values, reasons=reasons)


# -- relevance inside the mask: energy pointing game, relevance mass -------------------------------
def _mass_ratio(r: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ_{p∈M} r_p / Σ_p r_p`` in float64 ``[B]`` and the rows whose total is zero."""
    r = r.double()
    total = r.sum(dim=1)
    inside = torch.where(m, r, torch.zeros((), dtype=r.dtype, device=r.device)).sum(dim=1)
    zero = total == 0
    return inside / torch.where(zero, torch.ones_like(total), total), zero


def energy_pointing_game(
    attributions: Tensor, mask: Tensor, *, positive: Positive = "clip"
) -> tuple[Tensor, list[str | None]]:
    """Energy inside the mask, ``Σ_{p∈M} L_p / Σ_p L_p`` with ``L`` a non-negative map.

    Args:
        attributions: float ``[B, 1, *sp]``.
        mask: bool ``[B, 1, *sp]``.
        positive: how ``L ≥ 0`` is made from ``a``: ``clip`` → ``max(a, 0)`` (only positive
            evidence counts), ``abs`` → ``|a|``, ``minmax`` → ``(a − min a) / (max a − min a)``
            (per sample; the public Score-CAM reimplementations).

    Returns:
        values float64 ``[B]`` in [0, 1] and reasons. NaN: empty mask; non-finite map; a constant
        map under ``minmax`` ("constant attribution": min-max is 0/0); ``Σ L = 0`` ("attribution
        has zero total relevance": an all-zero map, or no positive value under ``clip``). A
        constant non-zero map under ``clip``/``abs`` is uniform energy and scores ``|M| / N``.
    """
    a, m, finite, empty = _flat(attributions, mask)
    checks = _standard_checks(finite, empty)
    if positive == "clip":
        energy = a.clamp(min=0)
    elif positive == "abs":
        energy = a.abs()
    elif positive == "minmax":
        lo = a.amin(dim=1, keepdim=True)
        span = a.amax(dim=1, keepdim=True) - lo
        constant = span.squeeze(1) == 0
        checks.append((constant & finite, REASON_CONSTANT))
        energy = (a - lo) / torch.where(span == 0, torch.ones_like(span), span)
    else:
        raise ValueError(f"positive must be one of 'clip', 'abs', 'minmax', got {positive!r}")
    values, zero = _mass_ratio(energy, m)
    checks.append((zero, REASON_ZERO_TOTAL))
    return finish(values, checks)


class EnergyPointingGame(Metric):
    """Energy pointing game: share of the map's non-negative energy inside the mask (Wang 2020).

    ``score = Σ_{p∈M} L_p / Σ_p L_p`` with ``L`` the map made non-negative (``positive``).
    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for CNNs", CVPR-W 2020. Score-CAM
    measures it with bounding boxes on ReLU'd, min-max normalised CAMs; benchbox uses the mask.
    A uniform random map scores the mask's area fraction ``|M| / N`` in expectation (tested).

    Parameters:
        positive: ``clip`` (default: ``max(a, 0)``, negative evidence is not energy; equal to
            ``minmax`` for a ReLU'd map whose minimum is 0), ``abs`` (``|a|``: counts negative
            evidence as energy too), ``minmax`` (``(a − min)/(max − min)`` per sample, the
            Score-CAM reimplementations; the minimum pixel always gets zero energy).

    Undefined (NaN with a reason): empty mask, non-finite map, zero total energy, a constant
    map under ``minmax``. Shapes: ``[B, 1, *sp]`` map and mask -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, positive: Positive = "clip") -> None:
        self.positive: Positive = positive

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "energy_pointing_game")
        values, reasons = energy_pointing_game(ctx.attributions, mask, positive=self.positive)
        return MetricOutput(values=values, reasons=reasons)


def relevance_mass(
    attributions: Tensor, mask: Tensor, *, abs: bool = True
) -> tuple[Tensor, list[str | None]]:
    """Relevance mass accuracy ``Σ_{p∈M} R_p / Σ_p R_p``, ``R = |a|`` (or ``a``), float64 ``[B]``.

    With ``abs=False`` the ratio of signed sums can leave [0, 1] (and explode when the total is
    near zero), as in Quantus' default. NaN: empty mask, non-finite map, ``Σ R = 0``.
    """
    a, m, finite, empty = _flat(attributions, mask)
    values, zero = _mass_ratio(a.abs() if abs else a, m)
    return finish(values, [*_standard_checks(finite, empty), (zero, REASON_ZERO_TOTAL)])


class RelevanceMass(Metric):
    """Relevance mass accuracy: share of the relevance inside the mask (Arras et al. 2022).

    ``score = Σ_{p∈M} |R_p| / Σ_p |R_p|`` (``abs=True``, default, as the CLEVR-XAI code
    ``eval/util.py::calc_overlap``) or the same ratio of signed sums (``abs=False``, Quantus
    ``RelevanceMassAccuracy``'s default, which can leave [0, 1]). Arras, Osman, Samek,
    "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
    explanations", Information Fusion 81, 2022. Scale-invariant, so Quantus' batch-wide
    ``normalise_by_max`` does not change it: benchbox agrees with Quantus under matching ``abs``
    (tested). Undefined (NaN): empty mask, non-finite map, zero total relevance.
    Shapes: ``[B, 1, *sp]`` map and mask -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, abs: bool = True) -> None:
        self.abs = abs

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "relevance_mass")
        values, reasons = relevance_mass(ctx.attributions, mask, abs=self.abs)
        return MetricOutput(values=values, reasons=reasons)


# -- top-k: relevance rank, top-k intersection -----------------------------------------------------
def _kth_largest(a: Tensor, k: Tensor) -> Tensor:
    """The ``k``-th largest value of every row of ``a`` ``[B, N]``, ``[B, 1]`` (``k`` in 1..N).

    One ``kthvalue`` (O(N)) when every row has the same ``k``; else ``topk`` up to the largest
    ``k`` — both far cheaper than a full sort on CPU.
    """
    n = a.shape[1]
    k_min, k_max = int(k.min()), int(k.max())
    if k_min == k_max:
        return torch.kthvalue(a, n - k_max + 1, dim=1, keepdim=True).values
    top = torch.topk(a, k_max, dim=1, sorted=True).values
    return top.gather(1, (k - 1)[:, None])


def topk_hits(a: Tensor, m: Tensor, k: Tensor, *, ties: RankTies = "fraction") -> Tensor:
    """Number of mask pixels among each row's ``k`` highest values, float64 ``[B]``.

    Args:
        a: float ``[B, N]`` (finite).
        m: bool ``[B, N]``.
        k: long ``[B]`` in ``0..N`` (per row).
        ties: with ``t`` the k-th largest value, every pixel ``> t`` is taken and the
            ``k − #{a > t}`` remaining slots go to pixels ``= t``: ``fraction`` shares them in
            proportion to how many tied pixels are in the mask (the expectation under uniformly
            random tie-breaking); ``first`` gives them to the tied pixels of lowest flat index
            (what a stable descending sort does). No sort: one k-th value and a few reductions.
    """
    k = k.to(device=a.device, dtype=torch.long)
    kth = _kth_largest(a, k.clamp(1, a.shape[1]))
    above, tied = a > kth, a == kth
    hits_above = (above & m).sum(dim=1).double()
    free = k - above.sum(dim=1)  # slots left for the tied pixels (>= 1 when k >= 1)
    if ties == "fraction":
        share = (tied & m).sum(dim=1).double() / tied.sum(dim=1).double()
        hits = hits_above + free.double() * share
    elif ties == "first":
        taken = tied & (tied.long().cumsum(dim=1) <= free[:, None])
        hits = hits_above + (taken & m).sum(dim=1).double()
    else:
        raise ValueError(f"ties must be one of 'fraction', 'first', got {ties!r}")
    return torch.where(k > 0, hits, 0.0)


def relevance_rank(
    attributions: Tensor, mask: Tensor, *, abs: bool = False, ties: RankTies = "fraction"
) -> tuple[Tensor, list[str | None]]:
    """Relevance rank accuracy ``|top_K(R) ∩ M| / K`` with ``K = |M|``, float64 ``[B]``.

    ``R = |a|`` if ``abs`` else ``a``; ``ties`` as in ``topk_hits``. NaN: empty mask, non-finite
    map. A constant map scores ``|M| / N`` under ``fraction``.
    """
    a, m, finite, empty = _flat(attributions, mask)
    if abs:
        a = a.abs()
    k = m.sum(dim=1)
    values = topk_hits(a, m, k, ties=ties) / k.clamp(min=1).double()
    return finish(values, _standard_checks(finite, empty))


class RelevanceRank(Metric):
    """Relevance rank accuracy: share of the ``|M|`` top-ranked pixels inside the mask (Arras 2022).

    ``score = |P_K ∩ M| / K`` with ``K = |M|`` and ``P_K`` the ``K`` pixels of highest relevance.
    Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 81, 2022 (there on pooled, non-negative
    heatmaps). Equal to Quantus ``RelevanceRankAccuracy`` on maps without ties at the K-th value
    (tested); Quantus breaks such ties by ``np.argsort``'s unstable order.

    Parameters:
        abs: rank ``|a|`` instead of the signed map (default False, as Quantus).
        ties: at the K-th value: ``fraction`` (default; the expected score under random
            tie-breaking, so a constant map scores ``|M|/N``, not a memory-order artefact) or
            ``first`` (stable order: lower flat index first, deterministic but top-left biased).

    Undefined (NaN): empty mask, non-finite map. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, abs: bool = False, ties: RankTies = "fraction") -> None:
        self.abs = abs
        self.ties: RankTies = ties

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "relevance_rank")
        values, reasons = relevance_rank(ctx.attributions, mask, abs=self.abs, ties=self.ties)
        return MetricOutput(values=values, reasons=reasons)


def _check_k(k: object) -> int | float:
    """Suite validation of ``k``: a pixel count (int >= 1) or a fraction (float in (0, 1])."""
    count = isinstance(k, int) and not isinstance(k, bool)
    if count and k > MAX_PIXELS:  # type: ignore[operator]
        raise PydanticCustomError(
            "topk_k",
            f"expected at most {MAX_PIXELS:,} pixels (benchbox's limit for pixel counts), or a "
            f"number in (0, 1] (a fraction of the map)",
        )
    ok = (count and k >= 1) or (isinstance(k, float) and 0 < k <= 1)  # type: ignore[operator]
    if not ok:
        raise PydanticCustomError(
            "topk_k",
            "expected an integer >= 1 (pixels) or a number in (0, 1] (a fraction of the map)",
        )
    return k  # type: ignore[return-value]


TopK = Annotated[int | float, BeforeValidator(_check_k)]


def topk_intersection(
    attributions: Tensor,
    mask: Tensor,
    *,
    k: int | float = 1000,
    abs: bool = False,
    ties: RankTies = "fraction",
    concept_influence: bool = False,
) -> tuple[Tensor, list[str | None]]:
    """Top-k intersection ``|top_k(a) ∩ M| / k``, float64 ``[B]``.

    ``k`` is a pixel count (``int``, at most ``N``) or a fraction of ``N`` (``float`` in
    (0, 1], rounded half up, at least 1). ``concept_influence`` multiplies by ``N / |M|``
    (Quantus' option: the score relative to a random map's expectation ``|M| / N``).
    NaN: empty mask, non-finite map.
    """
    a, m, finite, empty = _flat(attributions, mask)
    if abs:
        a = a.abs()
    b, n = a.shape
    kk = resolve_k(k, n, name="topk_intersection.k")
    values = topk_hits(a, m, torch.full((b,), kk, device=a.device), ties=ties) / kk
    if concept_influence:
        values = values * n / m.sum(dim=1).clamp(min=1).double()
    return finish(values, _standard_checks(finite, empty))


class TopKIntersection(Metric):
    """Top-k intersection: fraction of the k top-ranked pixels inside the mask (Theiner 2021).

    ``score = |P_k ∩ M| / k`` with ``P_k`` the ``k`` pixels of highest attribution. Theiner,
    Müller-Budack, Ewerth, "Interpretable Semantic Photo Geolocalization", WACV 2022
    (arXiv 2104.14995); as Quantus ``TopKIntersection`` (default ``k=1000``), with which it
    agrees on maps without ties at the k-th value (tested).

    Parameters:
        k: pixel count (int >= 1, at most the map's N; default 1000 as Quantus) or a fraction of
            N (float in (0, 1]; e.g. 0.05 = the top 5 %), which stays meaningful across image
            sizes. Quantus also rejects ``k >= N``; benchbox allows ``k = N`` (score ``|M|/N``).
        abs: rank ``|a|`` (default False, as Quantus).
        ties: at the k-th value, as ``relevance_rank`` (``fraction`` default, or ``first``).
        concept_influence: multiply by ``N / |M|`` (Quantus option; 1 = chance level).

    Undefined (NaN): empty mask, non-finite map. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        *,
        k: TopK = 1000,
        abs: bool = False,
        ties: RankTies = "fraction",
        concept_influence: bool = False,
    ) -> None:
        self.k = k
        self.abs = abs
        self.ties: RankTies = ties
        self.concept_influence = concept_influence

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "topk_intersection")
        values, reasons = topk_intersection(
            ctx.attributions,
            mask,
            k=self.k,
            abs=self.abs,
            ties=self.ties,
            concept_influence=self.concept_influence,
        )
        return MetricOutput(values=values, reasons=reasons)


# -- the map as a pixel classifier of the mask: AUROC, AUPRC ---------------------------------------
def _tie_groups(a: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each row of ``a`` ``[B, N]`` sorted ascending: the mask in that order and, per position,
    the first and last position of its group of tied values (long ``[B, N]``).

    One sort and O(N) scans (``cummax``/``cummin``); tied pixels share their group's bounds,
    which is what makes ties exact in AUROC (mid-ranks) and AUPRC (one threshold per value).
    """
    n = a.shape[1]
    asc, order = torch.sort(a, dim=1)
    pos = torch.arange(n, device=a.device).expand_as(asc)
    change = asc[:, 1:] != asc[:, :-1]
    first = torch.where(F.pad(change, (1, 0), value=True), pos, 0).cummax(dim=1).values
    last = torch.where(F.pad(change, (0, 1), value=True), pos, n).flip(1).cummin(dim=1).values
    return m.gather(1, order), first, last.flip(1)


def auroc(
    attributions: Tensor, mask: Tensor, *, abs: bool = False
) -> tuple[Tensor, list[str | None]]:
    """Area under the ROC curve of the map as a pixel classifier of the mask, float64 ``[B]``.

    Mann–Whitney: ``AUROC = P(a_pos > a_neg) + ½ P(a_pos = a_neg)`` over mask (pos) and
    non-mask (neg) pixels, computed exactly from the mid-ranks ``r_p`` (1-based; tied pixels
    share the mean of their ranks): ``AUROC = (Σ_{p∈M} r_p − P(P+1)/2) / (P·Q)`` with
    ``P = |M|``, ``Q = N − P`` (integer arithmetic up to the final division). Equal to
    sklearn's ``roc_auc_score`` (trapezoids through tied thresholds). A constant map scores
    0.5. NaN: empty mask, mask covering every pixel (no negatives), non-finite map.
    """
    a, m, finite, empty = _flat(attributions, mask)
    if abs:
        a = a.abs()
    n = a.shape[1]
    ms, first, last = _tie_groups(a, m)
    two_rank_sum = torch.where(ms, first + last + 2, 0).sum(dim=1)  # 2 r_p = (f+1) + (l+1)
    p = m.sum(dim=1)
    q = n - p
    u2 = two_rank_sum - p * (p + 1)  # twice the Mann–Whitney U: an exact integer
    values = u2.double() / (2 * p * q).clamp(min=1).double()
    checks = [*_standard_checks(finite, empty), (q == 0, REASON_FULL_MASK)]
    return finish(values, checks)


def auprc(
    attributions: Tensor, mask: Tensor, *, abs: bool = False
) -> tuple[Tensor, list[str | None]]:
    """Average precision of the map as a pixel classifier of the mask, float64 ``[B]``.

    ``AP = Σ_t (R_t − R_{t−1}) · P_t`` over the distinct values ``t`` of the map, descending,
    with precision ``P_t = TP(≥ t) / #(≥ t)`` and recall ``R_t = TP(≥ t) / |M|``: the step-wise
    sum without interpolation of sklearn's ``average_precision_score``. Each mask pixel ``p``
    contributes ``P_{a_p} / |M|``, so ``AP = (1/|M|) Σ_{p∈M} TP(≥ a_p) / #(≥ a_p)``; in
    ascending order ``#(≥ a_p) = N − first(p)`` and ``TP(≥ a_p) = |M| − #{mask pixels before
    first(p)}``. A constant map scores the prevalence ``|M| / N``; a mask covering every pixel
    scores 1 (as sklearn). NaN: empty mask, non-finite map.
    """
    a, m, finite, empty = _flat(attributions, mask)
    if abs:
        a = a.abs()
    n = a.shape[1]
    ms, first, _ = _tie_groups(a, m)
    pos_before = F.pad(ms.long().cumsum(dim=1), (1, 0))  # [:, i] = mask pixels in 0..i-1
    p = m.sum(dim=1, keepdim=True)
    precision = (p - pos_before.gather(1, first)).double() / (n - first).double()
    values = torch.where(ms, precision, 0.0).sum(dim=1) / p.squeeze(1).clamp(min=1).double()
    return finish(values, _standard_checks(finite, empty))


class AUROC(Metric):
    """AUROC of the attribution as a pixel-wise classifier of the mask (rank-based, exact).

    ``score = P(a_p > a_q) + ½ P(a_p = a_q)`` for a random mask pixel ``p`` and non-mask pixel
    ``q`` (Mann–Whitney U / (|M|·|¬M|)); the localisation AUC of Quantus ``AUC`` (Fawcett 2006,
    "An introduction to ROC analysis"), with which it agrees to float precision (tested).
    0.5 = chance; a constant map scores 0.5.

    Parameters:
        abs: score ``|a|`` instead of the signed map (default False, as Quantus).

    Undefined (NaN): empty mask, mask covering the whole map (no negatives: sklearn and Quantus
    give NaN with a warning), non-finite map. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, abs: bool = False) -> None:
        self.abs = abs

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "auroc")
        values, reasons = auroc(ctx.attributions, mask, abs=self.abs)
        return MetricOutput(values=values, reasons=reasons)


class AUPRC(Metric):
    """Average precision (area under the precision-recall curve) of the map vs the mask.

    ``score = Σ_t (R_t − R_{t−1}) P_t`` over the map's distinct values, descending: sklearn's
    ``average_precision_score`` (step-wise, no interpolation; tested to 1e-6 with ties). The
    "localization utility" of Arun et al., "Assessing the trustworthiness of saliency maps for
    localizing abnormalities in medical imaging", Radiology: AI 2021. Chance level is the
    mask's area fraction ``|M|/N`` (what a constant map scores), so compare methods on the same
    masks only.

    Parameters:
        abs: score ``|a|`` instead of the signed map (default False).

    Undefined (NaN): empty mask, non-finite map; a mask covering the whole map scores 1.
    Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True

    def __init__(self, *, abs: bool = False) -> None:
        self.abs = abs

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, "auprc")
        values, reasons = auprc(ctx.attributions, mask, abs=self.abs)
        return MetricOutput(values=values, reasons=reasons)


# -- thresholded overlap: IoU, Dice ---------------------------------------------------------------
def otsu_threshold(a: Tensor, *, bins: int = 256) -> Tensor:
    """Otsu's threshold of every row of ``a`` ``[B, N]`` (finite), float64 ``[B]``, batched.

    As ``skimage.filters.threshold_otsu``: a ``bins``-bin histogram over ``[min, max]`` of each
    row, the between-class variance ``w₁(t) w₂(t) (μ₁(t) − μ₂(t))²`` for a split after each
    bin, and the centre of the first maximising bin. A constant row returns its value. Pixels
    on a bin edge may land in the neighbouring bin (float rounding), so the threshold agrees
    with skimage within one bin width (tested).
    """
    x = a.double()
    lo = x.amin(dim=1, keepdim=True)
    hi = x.amax(dim=1, keepdim=True)
    span = hi - lo
    constant = span == 0
    span = torch.where(constant, torch.ones_like(span), span)
    idx = ((x - lo) / span * bins).floor().long().clamp(0, bins - 1)
    hist = torch.zeros(x.shape[0], bins, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, idx, torch.ones_like(x))
    centers = lo + (torch.arange(bins, device=x.device, dtype=x.dtype) + 0.5) * span / bins
    w1 = hist.cumsum(dim=1)
    w2 = hist.flip(1).cumsum(dim=1).flip(1)
    weighted = hist * centers
    mu1 = weighted.cumsum(dim=1) / w1.clamp(min=1)
    mu2 = weighted.flip(1).cumsum(dim=1).flip(1) / w2.clamp(min=1)
    between = w1[:, :-1] * w2[:, 1:] * (mu1[:, :-1] - mu2[:, 1:]) ** 2
    t = centers.gather(1, between.argmax(dim=1, keepdim=True))
    return torch.where(constant, lo, t).squeeze(1)


def _quantile(a: Tensor, q: float) -> Tensor:
    """Row-wise quantile with numpy's default linear interpolation, float64 ``[B]``.

    ``torch.quantile`` rejects inputs above 2**24 elements (3D batches); two ``kthvalue`` calls
    are O(N) and have no such limit.
    """
    n = a.shape[1]
    pos = q * (n - 1)
    j = math.floor(pos)
    frac = pos - j
    lo = torch.kthvalue(a, j + 1, dim=1).values.double()
    if frac == 0:
        return lo
    hi = torch.kthvalue(a, min(j + 2, n), dim=1).values.double()
    return lo + (hi - lo) * frac


def binarize(
    a: Tensor, *, threshold: Threshold = "otsu", percentile: float = 95.0, value: float = 0.5
) -> Tensor:
    """Foreground ``a > t`` of every row of ``a`` ``[B, N]`` (finite), bool ``[B, N]``.

    ``t`` per row: ``otsu`` — ``otsu_threshold`` (256 bins); ``percentile`` — the
    ``percentile``-th percentile (numpy's linear interpolation; 95 keeps the top 5 %);
    ``value`` — ``value`` on the min-max normalised row ``(a − min)/(max − min)``, i.e. a
    fraction of the map's range (a constant row has no foreground). The strict ``>`` is
    skimage's convention; a constant map therefore has an empty foreground for every rule.
    """
    if threshold == "otsu":
        t = otsu_threshold(a)
    elif threshold == "percentile":
        t = _quantile(a, percentile / 100.0)
    elif threshold == "value":
        lo = a.amin(dim=1).double()
        hi = a.amax(dim=1).double()
        # A constant row: t = its value, so nothing is foreground.
        t = torch.where(hi > lo, lo + value * (hi - lo), hi)
    else:
        raise ValueError(
            f"threshold must be one of 'otsu', 'percentile', 'value', got {threshold!r}"
        )
    return a.double() > t[:, None]


def _overlap(
    attributions: Tensor,
    mask: Tensor,
    *,
    dice_score: bool,
    threshold: Threshold,
    percentile: float,
    value: float,
    abs: bool,
) -> tuple[Tensor, list[str | None]]:
    a, m, finite, empty = _flat(attributions, mask)
    pred = binarize(a.abs() if abs else a, threshold=threshold, percentile=percentile, value=value)
    inter = (pred & m).sum(dim=1).double()
    if dice_score:
        denom = (pred.sum(dim=1) + m.sum(dim=1)).double()
        values = 2 * inter / denom.clamp(min=1)
    else:
        values = inter / (pred | m).sum(dim=1).clamp(min=1).double()
    return finish(values, _standard_checks(finite, empty))


def iou(
    attributions: Tensor,
    mask: Tensor,
    *,
    threshold: Threshold = "otsu",
    percentile: float = 95.0,
    value: float = 0.5,
    abs: bool = False,
) -> tuple[Tensor, list[str | None]]:
    """Intersection over union ``|B ∩ M| / |B ∪ M|`` of the binarised map ``B``, float64 ``[B]``.

    ``B = binarize(a)`` (see there). An empty foreground scores 0. NaN: empty mask (also when the
    foreground is empty too: 0/0, "empty mask"), non-finite map.
    """
    return _overlap(
        attributions,
        mask,
        dice_score=False,
        threshold=threshold,
        percentile=percentile,
        value=value,
        abs=abs,
    )


def dice(
    attributions: Tensor,
    mask: Tensor,
    *,
    threshold: Threshold = "otsu",
    percentile: float = 95.0,
    value: float = 0.5,
    abs: bool = False,
) -> tuple[Tensor, list[str | None]]:
    """Dice ``2|B ∩ M| / (|B| + |M|)`` of the binarised map ``B``, float64 ``[B]``; as ``iou``."""
    return _overlap(
        attributions,
        mask,
        dice_score=True,
        threshold=threshold,
        percentile=percentile,
        value=value,
        abs=abs,
    )


class _Overlap(Metric):
    """Shared parameters of ``IoU`` and ``Dice``."""

    needs = frozenset({Capability.MASKS})
    higher_is_better: ClassVar[bool] = True
    _name: ClassVar[str]

    def __init__(
        self,
        *,
        threshold: Threshold = "otsu",
        percentile: Annotated[float, Field(ge=0, le=100)] = 95.0,
        value: Annotated[float, Field(ge=0, le=1)] = 0.5,
        abs: bool = False,
    ) -> None:
        self.threshold: Threshold = threshold
        self.percentile = percentile
        self.value = value
        self.abs = abs

    def score(self, ctx: MetricContext) -> MetricOutput:
        mask = _mask(ctx, self._name)
        values, reasons = _overlap(
            ctx.attributions,
            mask,
            dice_score=self._name == "dice",
            threshold=self.threshold,
            percentile=self.percentile,
            value=self.value,
            abs=self.abs,
        )
        return MetricOutput(values=values, reasons=reasons)


class IoU(_Overlap):
    """IoU between the thresholded attribution and the mask (Otsu, percentile or value).

    ``score = |B ∩ M| / |B ∪ M|`` with ``B = {p : a_p > t}``; CheXlocalize's IoU per sample,
    which binarises min-max normalised maps with Otsu or with a tuned value in 0.2–0.8 (Saporta
    et al., "Benchmarking saliency methods for chest X-ray interpretation", Nat. Mach. Intell.
    2022). benchbox scores every sample (CheXlocalize's default averages only samples with a
    predicted and a true segmentation).

    Parameters (the threshold decides the score; record it):
        threshold: ``otsu`` (default; per-map Otsu on a 256-bin histogram, as skimage),
            ``percentile`` (keep the pixels above the ``percentile``-th percentile) or ``value``
            (``value`` as a fraction of the map's min-max range).
        percentile: in [0, 100], default 95 (the top 5 %).
        value: in [0, 1], default 0.5.
        abs: threshold ``|a|`` instead of the signed map (default False).

    A constant map has no foreground (strict ``>``) and scores 0; an empty foreground scores 0.
    Undefined (NaN): empty mask (whatever the foreground), non-finite map.
    Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    _name = "iou"


class Dice(_Overlap):
    """Dice between the thresholded attribution and the mask (Otsu, percentile or value).

    ``score = 2|B ∩ M| / (|B| + |M|)`` with ``B = {p : a_p > t}`` (Dice 1945; ``2·IoU/(1+IoU)``).
    Parameters and undefined cases as ``IoU``. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    _name = "dice"
