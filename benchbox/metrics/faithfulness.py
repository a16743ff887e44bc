"""Faithfulness by perturbation: RISE's deletion and insertion curves (Petsiuk et al. 2018).

The maths lives in the pure functions ``perturbation_ranks``, ``causal_curves`` and ``curve_auc``;
``Deletion`` and ``Insertion`` only hold parameters. Every perturbed image of a batch is built from
the rank of each pixel (``x_t = where(rank < k_t, finish, start)``) and the model is evaluated on
chunks of ``batch_size`` images, so the cost is the ``B·(T+1)`` forward passes and nothing else.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor

from ..core import ExplainedModel, Metric, MetricContext, MetricOutput
from ..methods.base import Reference, check_attributions, explaining, reference_image

__all__ = [
    "Deletion",
    "Insertion",
    "causal_curves",
    "curve_auc",
    "perturbation_ranks",
    "step_counts",
]

Score = Literal["probability", "logit"]

REASON_NONFINITE = "attribution has non-finite values"
REASON_BAD_SCORE = "model score is non-finite"


def perturbation_ranks(attributions: Tensor) -> Tensor:
    """Rank of every pixel in the perturbation order, long ``[B, 1, *sp]`` (0 = first moved).

    Order: descending attribution; ties broken by lower flat (row-major) index first (a stable
    sort). RISE uses ``np.argsort(...)[::-1]``, which breaks ties the other way round and
    unstably; maps without ties are ordered identically.
    """
    b = attributions.shape[0]
    flat = attributions.reshape(b, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    return ranks.reshape(attributions.shape)


def step_counts(n_pixels: int, steps: int, device: torch.device | None = None) -> Tensor:
    """``k_t = round(t·N/T)`` for ``t = 0..T`` (half rounds up), long ``[T+1]``; exact integers."""
    t = torch.arange(steps + 1, device=device)
    return (2 * t * n_pixels + steps) // (2 * steps)


def curve_auc(curves: Tensor) -> Tensor:
    """Trapezoid AUC on [0, 1] of ``[B, T+1]`` curves: ``(Σ y − y_0/2 − y_T/2) / T`` (RISE)."""
    t = curves.shape[1] - 1
    if t < 1:
        raise ValueError(f"curve_auc: need at least 2 points, got shape {list(curves.shape)}")
    return (curves.sum(dim=1) - 0.5 * curves[:, 0] - 0.5 * curves[:, -1]) / t


def causal_curves(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    steps: int,
    substrate: Reference,
    insert: bool,
    score: Score,
    batch_size: int,
) -> Tensor:
    """Target score after each step of deleting (or inserting) pixels, float32 ``[B, T+1]``.

    Deletion (``insert=False``): ``x_t = where(rank < k_t, s, x)``; insertion: ``x_t =
    where(rank < k_t, x, s)``, with ``s = reference_image(x, substrate)``, ``rank`` from
    ``perturbation_ranks`` (all channels of a pixel move together) and ``k_t`` from
    ``step_counts``. ``y_t`` is the softmax probability or the logit of ``target`` at ``x_t``.
    The ``B·(T+1)`` images are built and evaluated ``batch_size`` at a time under ``no_grad``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer > 0, got {batch_size}")
    b, nsp = x.shape[0], x.dim() - 2
    n_pixels = math.prod(x.shape[2:])
    points = steps + 1
    # int32 ranks and index_select: ~10x cheaper image construction on CPU than int64 + fancy
    # indexing, which matters when the model is small.
    ranks = perturbation_ranks(attributions).to(torch.int32)
    k = step_counts(n_pixels, steps, device=x.device).to(torch.int32)
    reference = reference_image(x, substrate)
    start, end = (reference, x) if insert else (x, reference)
    out = torch.empty(b * points, dtype=torch.float32, device=x.device)
    with explaining(model) as module, torch.no_grad():
        for lo in range(0, b * points, batch_size):
            flat = torch.arange(lo, min(lo + batch_size, b * points), device=x.device)
            sample, t = flat // points, flat % points
            moved = ranks.index_select(0, sample) < k[t].view(-1, 1, *([1] * nsp))
            images = torch.where(moved, end.index_select(0, sample), start.index_select(0, sample))
            logits = module(images).float()
            if score == "probability":
                logits = F.softmax(logits, dim=1)
            out[lo : lo + flat.shape[0]] = logits.gather(1, target[sample].unsqueeze(1)).squeeze(1)
    return out.view(b, points)


class _CausalMetric(Metric):
    """Shared machinery of deletion and insertion; subclasses fix the direction."""

    insert: ClassVar[bool]

    def __init__(self, *, steps: int, substrate: Reference, score: Score) -> None:
        self.steps = steps
        self.substrate: Reference = substrate
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        batch = ctx.batch
        x, attr = batch.x, ctx.attributions
        check_attributions(attr, x)
        if batch.target is None:
            raise ValueError("batch.target is not set: the runner must choose the explained class")
        b = x.shape[0]
        finite = torch.isfinite(attr.reshape(b, -1)).all(dim=1)
        curves = torch.full((b, self.steps + 1), torch.nan, dtype=torch.float32, device=x.device)
        if bool(finite.any()):
            # Only samples with a usable map are evaluated; the others stay NaN.
            sel = finite.nonzero().squeeze(1)
            curves[sel] = causal_curves(
                ctx.model,
                x[sel],
                attr[sel],
                batch.target[sel],
                steps=self.steps,
                substrate=self.substrate,
                insert=self.insert,
                score=self.score_kind,
                batch_size=ctx.batch_size,
            )
        values = curve_auc(curves)
        ok = torch.isfinite(values)
        reasons: list[str | None] = [
            None if v else (REASON_BAD_SCORE if f else REASON_NONFINITE)
            for v, f in zip(ok.tolist(), finite.tolist(), strict=True)
        ]
        curve_x = torch.arange(self.steps + 1, device=x.device, dtype=torch.float32) / self.steps
        return MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)


class Deletion(_CausalMetric):
    """Deletion AUC: target score as the most-attributed pixels are removed (Petsiuk et al. 2018).

    After step ``t = 0..T`` the ``k_t = round(t·N/T)`` most-attributed pixels (``N = H·W``; all
    channels of a pixel together) are replaced by the substrate; ``y_t`` is the target score of the
    perturbed image. Value: ``AUC = (Σ_t y_t − y_0/2 − y_T/2) / T``, the trapezoid rule on [0, 1];
    lower is better (a faithful map destroys the evidence first). Curves ``[B, T+1]`` with
    ``curve_x = t/T``. Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of
    Black-box Models", BMVC 2018 (arXiv 1806.07421), ``evaluation.py::CausalMetric``; equal to it
    when ``T`` divides ``N`` (RISE's ``step = N/T`` pixels per step) and the map has no ties.

    Parameters (sensitive):
        steps: ``T`` (> 0); RISE used 224 steps of 224 px at 224×224. Costs ``T+1`` forward passes
            per sample.
        substrate: what deleted pixels become: ``zero`` (raw black), ``mean`` (per-image,
            per-channel mean) or ``blur`` (RISE's ``gkern(11, 5)`` blur). RISE's own deletion
            "black" was ``zeros_like`` of the *normalized* tensor, i.e. the dataset mean colour;
            with normalization inside the model, ``zero`` here is literal black.
        score: ``probability`` (softmax, RISE) or ``logit`` of ``batch.target``. RISE explains the
            class predicted on the original image: set the run's target to the prediction.

    Ordering: descending attribution, ties broken by lower flat index first (stable sort), so a
    constant map deletes in row-major order. Non-finite maps give NaN with a reason.

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``,
    curves ``[B, T+1]``.
    """

    higher_is_better = False
    insert = False

    def __init__(
        self,
        *,
        steps: PositiveInt = 64,
        substrate: Reference = "zero",
        score: Score = "probability",
    ) -> None:
        super().__init__(steps=steps, substrate=substrate, score=score)


class Insertion(_CausalMetric):
    """Insertion AUC: target score as the most-attributed pixels are restored (Petsiuk et al. 2018).

    Starts from the substrate (default: RISE's blur) and, after step ``t``, restores the
    ``k_t = round(t·N/T)`` most-attributed pixels of ``x``; higher is better. Same ordering,
    steps, AUC and curves as ``Deletion`` (see there), with start and finish images swapped.

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``,
    curves ``[B, T+1]``.
    """

    higher_is_better = True
    insert = True

    def __init__(
        self,
        *,
        steps: PositiveInt = 64,
        substrate: Reference = "blur",
        score: Score = "probability",
    ) -> None:
        super().__init__(steps=steps, substrate=substrate, score=score)
