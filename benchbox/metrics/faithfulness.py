"""Faithfulness by perturbation: does removing what the map calls important change the output?

Registry name → class → pure function (the maths lives in the functions; classes hold parameters):

- ``deletion`` / ``insertion`` → ``Deletion`` / ``Insertion`` → ``causal_curves`` (RISE,
  Petsiuk et al. 2018);
- ``pixel_flipping`` → ``PixelFlipping`` → ``pixel_flipping`` (Bach et al. 2015; Samek et al.
  2017; Quantus' ``PixelFlipping``);
- ``region_perturbation`` → ``RegionPerturbation`` → ``region_perturbation`` (Samek et al. 2017,
  AOPC);
- ``road`` → ``ROAD`` → ``road`` and ``linear_imputation`` (Rong et al. 2022);
- ``faithfulness_correlation`` → ``FaithfulnessCorrelation`` → ``faithfulness_correlation``
  (Bhatt et al. 2020);
- ``infidelity`` → ``Infidelity`` → ``infidelity`` (Yeh et al. 2019).

Shared machinery, one place each:

- ``perturbation_ranks``: the order pixels move in (descending attribution, ties to the lower flat
  index: a stable sort). All channels of a pixel move together, because attributions are
  ``[B, 1, *sp]``; Quantus perturbs the ``C·H·W`` features of a broadcast map one by one, so the
  comparisons with Quantus hold for single-channel images.
- ``evaluate_rows``: the only model loop. A metric describes its perturbed images as rows
  ``(sample, j)``, sample-major, and a ``build(lo, hi)`` function; the rows are built and scored
  ``batch_size`` at a time (the run's ``ctx.batch_size``) under ``torch.no_grad`` in eval mode.
  The cost is the forward passes plus one ``index_select``/``where`` per chunk.
- ``threshold_curves``: ``x_t = where(rank < k_t, end, start)`` for every (sample, t): deletion,
  insertion, pixel flipping and region perturbation are this one function with different ranks
  and thresholds.
- ``baseline_image``: what removed pixels become (``min``, ``zero``, ``mean``, ``blur``,
  ``uniform``).
- Random draws come from ``ctx.generator`` in a layout fixed by the batch alone (per-sample draws:
  one call per sample, in sample order; a ``uniform`` baseline: one call for the batch), so the
  values never depend on ``ctx.batch_size`` (the forward chunk) or on how rows are chunked.

Direction: every metric has one direction (the ``higher_is_better`` class attribute that tables
read). Where the order parameter (``morf``/``lerf``) would reverse it, the least-relevant-first
value is the mirrored quantity, so a stored value's direction never depends on its parameters
(see each class).

Undefined cases: a map with a NaN/inf value gives NaN with the reason
``"attribution has non-finite values"``; a non-finite model score gives
``"model score is non-finite"``; further cases are listed per metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import Tensor

from ..core import Capability, ExplainedModel, Metric, MetricContext, MetricOutput
from ..methods.base import (
    Reference,
    check_attributions,
    explaining,
    reference_image,
    target_score,
)
from ..params import Count, Pixels, Size
from .toolkit import REASON_NONFINITE, Checks, finish, finite_rows

__all__ = [
    "ROAD",
    "Baseline",
    "Deletion",
    "FaithfulnessCorrelation",
    "Infidelity",
    "Insertion",
    "Order",
    "PixelFlipping",
    "RegionPerturbation",
    "RoadScore",
    "Score",
    "baseline_image",
    "causal_curves",
    "curve_auc",
    "evaluate_rows",
    "faithfulness_correlation",
    "infidelity",
    "linear_imputation",
    "patch_ids",
    "perturbation_ranks",
    "pixel_flipping",
    "random_subsets",
    "region_perturbation",
    "region_ranks",
    "road",
    "step_counts",
    "threshold_curves",
    "trapezoid",
]

Score = Literal["probability", "logit"]
RoadScore = Literal["accuracy", "probability", "logit"]
Baseline = Literal["min", "zero", "mean", "blur", "uniform"]
Order = Literal["morf", "lerf"]

REASON_BAD_SCORE = "model score is non-finite"
REASON_CONSTANT_SUMS = "attribution sums do not vary over the runs (constant map?)"
REASON_CONSTANT_DELTAS = "model score does not vary over the runs"


# ================================================================================================
# Shared machinery
# ================================================================================================
def perturbation_ranks(attributions: Tensor) -> Tensor:
    """Rank of every pixel in the perturbation order, long ``[B, 1, *sp]`` (0 = first moved).

    Order: descending attribution; ties broken by lower flat (row-major) index first (a stable
    sort). RISE uses ``np.argsort(...)[::-1]`` and Quantus ``np.argsort(-a)``, which break ties
    differently (and unstably); maps without ties are ordered identically. Least-relevant-first
    orders rank ``-attributions``.
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


def trapezoid(curves: Tensor) -> Tensor:
    """``np.trapz(y, dx=1)`` per row of ``[B, T]``, in float64: ``Σ_t (y_t + y_{t+1}) / 2``.

    Quantus' ``calculate_auc``: the area grows with the number of points ``T`` (a curve of one
    point has area 0).
    """
    y = curves.double()
    return ((y[:, 1:] + y[:, :-1]) / 2).sum(dim=1)


def _scores(logits: Tensor, target: Tensor, score: RoadScore) -> Tensor:
    if score == "accuracy":
        return (logits.argmax(dim=1) == target).float()
    return target_score(logits.float(), target, score)


def evaluate_rows(
    model: ExplainedModel,
    build: Callable[[int, int], Tensor],
    target: Tensor,
    per_sample: int,
    *,
    score: RoadScore,
    batch_size: int,
) -> Tensor:
    """Target scores of ``B·per_sample`` perturbed images, float32 ``[B·per_sample]``.

    Row ``r`` belongs to sample ``r // per_sample`` (sample-major). ``build(lo, hi)`` returns the
    images of rows ``lo..hi-1`` ``[hi-lo, C, *sp]``; it is called with increasing, contiguous
    ranges of at most ``batch_size`` rows, each scored by one forward pass under ``no_grad`` in
    eval mode (``explaining``). ``score``: ``probability`` (softmax; sigmoid for one output),
    ``logit``, or ``accuracy`` (``1[argmax = target]``) of the row's sample's ``target``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer > 0, got {batch_size}")
    n_rows = target.shape[0] * per_sample
    out = torch.empty(n_rows, dtype=torch.float32, device=target.device)
    with explaining(model) as module, torch.no_grad():
        for lo in range(0, n_rows, batch_size):
            hi = min(lo + batch_size, n_rows)
            sample = torch.arange(lo, hi, device=target.device) // per_sample
            out[lo:hi] = _scores(module(build(lo, hi)), target.index_select(0, sample), score)
    return out


def _plain_scores(
    model: ExplainedModel, x: Tensor, target: Tensor, *, score: RoadScore, batch_size: int
) -> Tensor:
    """Target scores of the unperturbed images ``x``, float32 ``[B]``."""
    return evaluate_rows(
        model, lambda lo, hi: x[lo:hi], target, 1, score=score, batch_size=batch_size
    )


def threshold_curves(
    model: ExplainedModel,
    start: Tensor,
    end: Tensor,
    ranks: Tensor,
    thresholds: Tensor,
    target: Tensor,
    *,
    score: RoadScore,
    batch_size: int,
) -> Tensor:
    """``y[i, t]`` = target score of ``where(ranks[i] < thresholds[t], end[i], start[i])``.

    Args:
        start, end: ``[B, C, *sp]`` images (``end`` may be an expanded view).
        ranks: integer ``[B, 1, *sp]``: when each pixel moves from ``start`` to ``end``.
        thresholds: integer ``[T]``; ``0`` gives ``start`` itself.
    Returns:
        float32 ``[B, T]``. The ``B·T`` images are built ``batch_size`` at a time (int32 ranks and
        ``index_select``: on CPU ~10x cheaper than int64 fancy indexing, which matters when the
        model is small).
    """
    b, nsp = start.shape[0], start.dim() - 2
    points = int(thresholds.shape[0])
    ranks32 = ranks.to(torch.int32)
    k = thresholds.to(device=start.device, dtype=torch.int32)

    def build(lo: int, hi: int) -> Tensor:
        flat = torch.arange(lo, hi, device=start.device)
        sample, t = flat // points, flat % points
        moved = ranks32.index_select(0, sample) < k.index_select(0, t).view(-1, 1, *([1] * nsp))
        return torch.where(moved, end.index_select(0, sample), start.index_select(0, sample))

    y = evaluate_rows(model, build, target, points, score=score, batch_size=batch_size)
    return y.view(b, points)


def baseline_image(x: Tensor, kind: Baseline, generator: torch.Generator | None = None) -> Tensor:
    """What removed pixels become, ``[B, C, *sp]`` like ``x`` (raw intensities).

    - ``min``: the sample's minimum over channels and space (Quantus' ``"black"``: ``arr.min``
      per sample), broadcast;
    - ``zero``: raw 0; ``mean``: per-image, per-channel mean; ``blur``: RISE's blur
      (``benchbox.methods.base.reference_image``);
    - ``uniform``: independent ``U[0, 1)`` noise per pixel and channel, drawn from ``generator``
      (Samek et al.'s "uniform random values"; raw intensities live in [0, 1]).

    Quantus differs for ``mean`` (the mean of the *current*, already perturbed image, so it
    drifts as pixels are replaced) and ``uniform`` (one value per sample and step, from the
    global NumPy RNG).
    """
    if kind == "min":
        return x.amin(dim=tuple(range(1, x.dim())), keepdim=True).expand_as(x)
    if kind == "uniform":
        if generator is None:
            raise ValueError("baseline 'uniform' needs a generator")
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind in get_args(Reference):
        return reference_image(x, kind)
    raise ValueError(f"baseline must be one of {get_args(Baseline)}, got {kind!r}")


class _PerSample:
    """Random draws of one fixed shape per sample, made lazily in sample order.

    ``draw()`` is called once per sample, in order, so sample ``i`` gets the same draws however
    the rows are chunked (one generator call per sample: a single call for the whole batch would
    not split into the per-sample calls on every device). Draws of samples before the requested
    block are forgotten, so memory holds one chunk's samples.
    """

    def __init__(self, draw: Callable[[], Tensor]) -> None:
        self._draw = draw
        self._cache: dict[int, Tensor] = {}
        self._next = 0

    def block(self, first: int, last: int) -> Tensor:
        """The draws of samples ``first..last`` stacked, ``[last - first + 1, *shape]``."""
        while self._next <= last:
            self._cache[self._next] = self._draw()
            self._next += 1
        for key in [k for k in self._cache if k < first]:
            del self._cache[key]
        return torch.stack([self._cache[i] for i in range(first, last + 1)])


def _rows(lo: int, hi: int, per_sample: int, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """Sample index, index within the sample and the first sample of rows ``lo..hi-1``."""
    flat = torch.arange(lo, hi, device=device)
    return flat // per_sample, flat % per_sample, lo // per_sample


def _finite_rows(attributions: Tensor) -> Tensor:
    return finite_rows(attributions)[1]


def _checked(ctx: MetricContext) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x``, attributions (non-finite maps zeroed), ``target`` and ``finite`` ``[B]``."""
    x, attr = ctx.batch.x, ctx.attributions
    check_attributions(attr, x)
    if ctx.batch.target is None:
        raise ValueError("batch.target is not set: the runner must choose the explained class")
    finite = _finite_rows(attr)
    view = finite.view(-1, *([1] * (attr.dim() - 1)))
    attr = torch.where(view, attr, torch.zeros((), dtype=attr.dtype, device=attr.device))
    return x, attr, ctx.batch.target, finite


def _finish(values: Tensor, finite: Tensor, extra: Checks = ()) -> tuple[Tensor, list[str | None]]:
    """NaN where a map is non-finite, then reasons: non-finite map, ``extra`` cases, bad score."""
    return finish(values, [(~finite, REASON_NONFINITE), *extra], unexplained=REASON_BAD_SCORE)


def _on_finite(
    finite: Tensor, fn: Callable[[Tensor], tuple[Tensor, Tensor]], b: int, points: int
) -> tuple[Tensor, Tensor]:
    """Run a deterministic ``fn(selected rows)`` on the finite maps only; others stay NaN."""
    device = finite.device
    values = torch.full((b,), math.nan, dtype=torch.float64, device=device)
    curves = torch.full((b, points), math.nan, dtype=torch.float32, device=device)
    if bool(finite.any()):
        sel = finite.nonzero().squeeze(1)
        v, c = fn(sel)
        values[sel], curves[sel] = v.double(), c.float()
    return values, curves


# ================================================================================================
# Deletion / insertion (RISE)
# ================================================================================================
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
    n_pixels = math.prod(x.shape[2:])
    reference = reference_image(x, substrate)
    start, end = (reference, x) if insert else (x, reference)
    return threshold_curves(
        model,
        start,
        end,
        perturbation_ranks(attributions),
        step_counts(n_pixels, steps, device=x.device),
        target,
        score=score,
        batch_size=batch_size,
    )


class _CausalMetric(Metric):
    """Shared machinery of deletion and insertion; subclasses fix the direction."""

    insert: ClassVar[bool]

    def __init__(self, *, steps: int, substrate: Reference, score: Score) -> None:
        self.steps = steps
        self.substrate: Reference = substrate
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)

        def run(sel: Tensor) -> tuple[Tensor, Tensor]:
            curves = causal_curves(
                ctx.model,
                x[sel],
                attr[sel],
                target[sel],
                steps=self.steps,
                substrate=self.substrate,
                insert=self.insert,
                score=self.score_kind,
                batch_size=ctx.batch_size,
            )
            return curve_auc(curves), curves

        values, curves = _on_finite(finite, run, x.shape[0], self.steps + 1)
        values, reasons = _finish(values.float(), finite)
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
        score: ``probability`` (softmax, RISE; sigmoid for a single output) or ``logit`` of
            ``batch.target``. RISE explains the class predicted on the original image: set the
            run's target to the prediction.

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
        steps: Count = 64,
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
        steps: Count = 64,
        substrate: Reference = "blur",
        score: Score = "probability",
    ) -> None:
        super().__init__(steps=steps, substrate=substrate, score=score)


# ================================================================================================
# Pixel flipping
# ================================================================================================
def pixel_flipping(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    features_in_step: int,
    baseline: Tensor,
    order: Order,
    score: Score,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Pixel-flipping values float64 ``[B]`` and score curves float32 ``[B, T]``.

    Step ``t = 1..T``, ``T = ⌈N / f⌉``, replaces the ``k_t = min(t·f, N)`` first pixels of the
    order (``morf``: most relevant first; ``lerf``: least relevant first) by ``baseline``
    ``[B, C, *sp]``, cumulatively; ``y_t`` is the target score (no ``t = 0`` point, as Quantus).
    Values: ``morf`` → ``trapezoid(y)`` (Quantus' ``np.trapz(dx=1)`` AUC); ``lerf`` →
    ``trapezoid(y_0 − y)``, the area of the score *drop* (``y_0`` = score of ``x``: one more
    forward pass per sample). Both are lower-is-better. Costs ``B·T`` forward passes (+``B``).
    """
    b = x.shape[0]
    n = math.prod(x.shape[2:])
    steps = math.ceil(n / features_in_step)
    if steps < 2:
        raise ValueError(
            f"features_in_step: {features_in_step} flips all {n} pixels in one step, a curve of "
            f"one point; use at most {n // 2} (the images have {n} pixels)"
        )
    k = torch.clamp(torch.arange(1, steps + 1, device=x.device) * features_in_step, max=n)
    if order == "lerf":
        k = torch.cat([k.new_zeros(1), k])
    ranks = perturbation_ranks(attributions if order == "morf" else -attributions)
    y = threshold_curves(
        model, x, baseline, ranks, k, target, score=score, batch_size=batch_size
    ).view(b, -1)
    if order == "morf":
        return trapezoid(y), y
    curves = y[:, 1:]
    return trapezoid(y[:, :1] - curves), curves


class PixelFlipping(Metric):
    """Pixel flipping: area under the score curve as pixels are flipped (Bach et al. 2015).

    Step ``t = 1..T`` (``T = ⌈N/f⌉``, ``N = H·W`` pixels, ``f = features_in_step``) replaces the
    ``min(t·f, N)`` first pixels of the order by the baseline, cumulatively; ``y_t`` is the target
    score. Value (lower is better):

    - ``order="morf"`` (most relevant first, Bach et al.; Samek et al. 2017): the area under the
      score curve, ``Σ_t (y_t + y_{t+1})/2`` — Quantus' ``np.trapz(dx=1)`` AUC
      (``return_auc_per_sample=True``), equal to it for single-channel images and maps without
      ties. It grows with ``T``: compare values at equal ``features_in_step`` and image size.
    - ``order="lerf"`` (least relevant first): the area of the score *drop*
      ``Σ_t ((y_0 − y_t) + (y_0 − y_{t+1}))/2``, ``y_0`` = score of ``x``: a faithful map keeps
      the score while irrelevant pixels go, so lower is better here too (one direction per
      metric; the raw LeRF score curve would be higher-is-better).

    Curves ``[B, T]`` hold ``y_t`` (Quantus' per-sample curve) with ``curve_x = k_t/N``.
    Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise
    relevance propagation", PLoS ONE 2015; Samek et al., "Evaluating the visualization of what a
    deep neural network has learned", IEEE TNNLS 2017.

    Parameters (sensitive):
        features_in_step: pixels per step ``f`` (all channels of a pixel together; Quantus counts
            ``C·H·W`` features). Costs ``⌈N/f⌉`` forward passes per sample.
        baseline: ``min`` (default: the image's minimum, Quantus' ``"black"``), ``zero``,
            ``mean``, ``blur`` or ``uniform`` (seeded noise; see ``baseline_image``).
        order: ``morf`` or ``lerf``.
        score: ``probability`` (Quantus' ``softmax=True``) or ``logit``.

    Ties: stable (lower flat index first), so a constant map flips in row-major order.

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``,
    curves ``[B, T]``.
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        features_in_step: Pixels = 64,
        baseline: Baseline = "min",
        order: Order = "morf",
        score: Score = "probability",
    ) -> None:
        self.features_in_step = features_in_step
        self.baseline: Baseline = baseline
        self.order: Order = order
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)
        n = math.prod(x.shape[2:])
        steps = math.ceil(n / self.features_in_step)
        base = baseline_image(x, self.baseline, ctx.generator)

        def run(sel: Tensor) -> tuple[Tensor, Tensor]:
            return pixel_flipping(
                ctx.model,
                x[sel],
                attr[sel],
                target[sel],
                features_in_step=self.features_in_step,
                baseline=base[sel],
                order=self.order,
                score=self.score_kind,
                batch_size=ctx.batch_size,
            )

        values, curves = _on_finite(finite, run, x.shape[0], steps)
        values, reasons = _finish(values, finite)
        k = torch.arange(1, steps + 1, device=x.device) * self.features_in_step
        curve_x = torch.clamp(k, max=n).float() / n
        return MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)


# ================================================================================================
# Region perturbation (AOPC)
# ================================================================================================
def patch_ids(spatial: Sequence[int], patch_size: int, device: torch.device) -> tuple[Tensor, int]:
    """Patch id of every pixel, long ``[*sp]``, and the number of patches.

    Non-overlapping ``patch_size``-sided squares (cubes in 3D) on a grid padded to a multiple of
    the patch size, the padding split ``⌊pad/2⌋`` before and ``⌈pad/2⌉`` after (Quantus'
    ``get_padding_size``), so border patches may hold fewer pixels. Ids are row-major.
    """
    ids = torch.zeros((), dtype=torch.long, device=device)
    total = 1
    for size in spatial:
        n = math.ceil(size / patch_size)
        before = (n * patch_size - size) // 2
        coord = (torch.arange(size, device=device) + before) // patch_size
        ids = ids.unsqueeze(-1) * n + coord
        total *= n
    return ids, total


def region_ranks(attributions: Tensor, patch_size: int, order: Order) -> tuple[Tensor, int]:
    """Position of each pixel's patch in the perturbation order, long ``[B, 1, *sp]``; #patches.

    Patch relevance = sum of the attributions in the patch; ``morf`` orders patches by descending
    relevance, ``lerf`` by ascending, ties to the lower patch id (stable sort; Quantus'
    ``np.argsort`` is not stable).
    """
    b = attributions.shape[0]
    ids, n_patches = patch_ids(attributions.shape[2:], patch_size, attributions.device)
    flat_ids = ids.reshape(1, -1).expand(b, -1)
    sums = torch.zeros(b, n_patches, dtype=attributions.dtype, device=attributions.device)
    sums.scatter_add_(1, flat_ids, attributions.reshape(b, -1))
    order_idx = torch.sort(sums, dim=1, descending=order == "morf", stable=True).indices
    positions = torch.arange(n_patches, device=sums.device).expand_as(order_idx)
    patch_rank = torch.empty_like(order_idx).scatter_(1, order_idx, positions)
    return patch_rank.gather(1, flat_ids).reshape(attributions.shape), n_patches


def region_perturbation(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    patch_size: int,
    regions: int,
    baseline: Tensor,
    order: Order,
    score: Score,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """AOPC float64 ``[B]`` and drop curves float32 ``[B, L]`` of region perturbation.

    Step ``k = 1..L`` (``L = min(regions, #patches)``) replaces the first ``k`` patches of the
    order (``region_ranks``) by ``baseline`` ``[B, C, *sp]``, cumulatively. Curve:
    ``d_k = y_0 − y_k`` (Quantus' per-sample curve). AOPC (Samek et al. 2017):
    ``(1/(L+1)) Σ_{k=0..L} (y_0 − y_k)``, the ``k = 0`` term being 0. Costs ``B·(L+1)`` forward
    passes.
    """
    b = x.shape[0]
    ranks, n_patches = region_ranks(attributions, patch_size, order)
    steps = min(regions, n_patches)
    k = torch.arange(steps + 1, device=x.device)
    y = threshold_curves(model, x, baseline, ranks, k, target, score=score, batch_size=batch_size)
    drops = y.view(b, -1)[:, :1] - y.view(b, -1)[:, 1:]
    return drops.double().sum(dim=1) / (steps + 1), drops


class RegionPerturbation(Metric):
    """Region perturbation: AOPC, the mean score drop as patches are replaced (Samek et al. 2017).

    The image is cut into non-overlapping ``patch_size`` squares (``patch_ids``); patches are
    ordered by the sum of their attributions; step ``k = 1..L``, ``L = min(regions, #patches)``
    (PROTOCOLS Q8), replaces the first ``k`` patches by the baseline. Curve ``d_k = y_0 − y_k``
    (``y_0``: score of ``x``), as Quantus' ``RegionPerturbation`` returns it. Value: the area over
    the perturbation curve, ``AOPC = (1/(L+1)) Σ_{k=0..L} d_k`` (Samek et al., "Evaluating the
    visualization of what a deep neural network has learned", IEEE TNNLS 2017). Higher is better:

    - ``order="morf"``: a faithful map destroys the score fastest, a large AOPC;
    - ``order="lerf"``: the value is ``−AOPC_LeRF = (1/(L+1)) Σ_k (y_k − y_0)``: a faithful map
      removes the irrelevant patches first and keeps the score, so the mirrored value keeps one
      direction per metric. Curves are Quantus' ``d_k`` in both orders.

    Quantus declares ``score_direction = LOWER`` for this metric although a larger MoRF drop means
    a better map (PROTOCOLS b.3); benchbox follows the paper.

    Parameters (sensitive):
        patch_size: side in pixels (Samek: 9; Quantus: 8). 3D images use cubes.
        regions: at most this many patches (Quantus' ``regions_evaluation``, default 100).
        order: ``morf`` or ``lerf``.
        baseline: ``uniform`` (default: Samek's uniform random values, drawn per pixel from the
            run's generator), ``min`` (Quantus' default ``"black"``), ``zero``, ``mean``,
            ``blur``. Quantus' ``uniform`` fills a whole patch with one value from NumPy's
            global RNG.
        score: ``probability`` (Quantus' ``softmax=True``) or ``logit``.

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``,
    curves ``[B, L]`` with ``curve_x = k / #patches``.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        patch_size: Size = 8,
        regions: Count = 100,
        order: Order = "morf",
        baseline: Baseline = "uniform",
        score: Score = "probability",
    ) -> None:
        self.patch_size = patch_size
        self.regions = regions
        self.order: Order = order
        self.baseline: Baseline = baseline
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)
        _, n_patches = patch_ids(x.shape[2:], self.patch_size, x.device)
        steps = min(self.regions, n_patches)
        base = baseline_image(x, self.baseline, ctx.generator)

        def run(sel: Tensor) -> tuple[Tensor, Tensor]:
            return region_perturbation(
                ctx.model,
                x[sel],
                attr[sel],
                target[sel],
                patch_size=self.patch_size,
                regions=self.regions,
                baseline=base[sel],
                order=self.order,
                score=self.score_kind,
                batch_size=ctx.batch_size,
            )

        values, curves = _on_finite(finite, run, x.shape[0], steps)
        if self.order == "lerf":
            values = -values
        values, reasons = _finish(values, finite)
        curve_x = torch.arange(1, steps + 1, device=x.device, dtype=torch.float32) / n_patches
        return MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)


# ================================================================================================
# ROAD: noisy linear imputation
# ================================================================================================
_NLI_TOL = 1e-9  # relative float64 residual of the imputation system (error ~1e-9 on [0, 1])
_NLI_INNER_TOL = 1e-4  # relative residual of each float32 correction solve
_NLI_REFINEMENTS = 8


def _neighbour_sum(v: Tensor) -> Tensor:
    """``Σ_j w_j v_j`` over 8 neighbours (edges 1/6, diagonals 1/12; 0 outside), ``[N, H, W]``.

    Written as ``(box3×3 − centre + 4-neighbours) / 12`` with separable in-place sums: about
    half the memory traffic of eight shifted adds or a float64 convolution.
    """
    p = F.pad(v, (1, 1, 1, 1))
    col = p[:, :-2] + p[:, 1:-1]
    col += p[:, 2:]
    out = col[:, :, :-2] + col[:, :, 1:-1]
    out += col[:, :, 2:]
    out -= v
    out += p[:, :-2, 1:-1]
    out += p[:, 2:, 1:-1]
    out += p[:, 1:-1, :-2]
    out += p[:, 1:-1, 2:]
    return out.div_(12)


def _conjugate_gradients(
    apply: Callable[[Tensor], Tensor], b: Tensor, diag: Tensor, tol: float, max_iter: int
) -> Tensor:
    """Jacobi-preconditioned CG for ``M v = b``, every row ``[N, H, W]`` its own system."""
    v = torch.zeros_like(b)
    r = b.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2))
    bound = tol * b.norm(dim=(1, 2))
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    for it in range(max_iter):
        ap = apply(p)
        pap = (p * ap).sum(dim=(1, 2))
        alpha = torch.where(pap > 0, rz / pap, zero).view(-1, 1, 1)
        v += alpha * p
        r -= alpha * ap
        # The convergence test synchronises with the device: every 8th iteration.
        if it % 8 == 7 and bool((r.norm(dim=(1, 2)) <= bound).all()):
            break
        z = r / diag
        rz_new = (r * z).sum(dim=(1, 2))
        beta = torch.where(rz > 0, rz_new / rz, zero).view(-1, 1, 1)
        p = z + beta * p
        rz = rz_new
    return v


def linear_imputation(x: Tensor, removed: Tensor) -> Tensor:
    """Fill the ``removed`` pixels of 2D images by ROAD's linear imputation (without noise).

    Every removed pixel ``i`` (per channel) becomes the weighted mean of its valid 8 neighbours,
    edge neighbours weight 1/6 and diagonal ones 1/12, renormalised at the image border, all
    removed pixels solved jointly: ``s_i v_i − Σ_{j removed} w_ij v_j = Σ_{j kept} w_ij x_j``
    with ``s_i = Σ_{j in image} w_ij`` (Rong et al. 2022, ``NoisyLinearImputer``; Quantus'
    ``noisy_linear_imputation`` with ``spsolve``). The system is symmetric positive definite
    whenever a pixel is kept, and solved for all images and channels at once on their device:
    float32 Jacobi-preconditioned conjugate gradients inside float64 iterative refinement, to a
    relative residual of 1e-9 (~1e-9 from the direct solution for intensities in [0, 1]).

    Args:
        x: ``[N, C, H, W]``. removed: bool ``[N, 1, H, W]`` (all removed: the system is singular;
            the pixels then stay at the solver's start, 0).
    Returns:
        ``[N, C, H, W]`` like ``x``: kept pixels unchanged, removed pixels imputed.
    """
    if x.dim() != 4:
        raise ValueError(
            f"linear imputation (ROAD) is defined for 2D images [N, C, H, W], got shape "
            f"{list(x.shape)}"
        )
    n, c, h, w = x.shape
    rem = removed.expand(n, c, h, w).reshape(n * c, h, w)
    r64 = rem.double()
    x64 = x.reshape(n * c, h, w).double()
    s64 = _neighbour_sum(torch.ones(1, h, w, dtype=torch.float64, device=x.device))
    b = _neighbour_sum(x64 * (1 - r64)) * r64
    s32, r32 = s64.float(), r64.float()

    def apply64(v: Tensor) -> Tensor:
        return (s64 * v - _neighbour_sum(v)) * r64

    def apply32(v: Tensor) -> Tensor:
        return (s32 * v - _neighbour_sum(v)) * r32

    v = torch.zeros_like(b)
    bound = _NLI_TOL * b.norm(dim=(1, 2))
    max_iter = 10 * (h + w)
    for _ in range(_NLI_REFINEMENTS):
        residual = b - apply64(v)
        if bool((residual.norm(dim=(1, 2)) <= bound).all()):
            break
        v += _conjugate_gradients(apply32, residual.float(), s32, _NLI_INNER_TOL, max_iter).double()
    return torch.where(rem, v, x64).to(x.dtype).reshape(n, c, h, w)


def road(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    percentages: Sequence[float],
    order: Order,
    noise: float,
    score: RoadScore,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """ROAD score curves float32 ``[B, P]``: the target score after imputing ``p`` % of the pixels.

    For each percentage ``p``, the ``k_p = ⌊N·p/100⌋`` first pixels of the order (``morf``:
    descending attribution; ``lerf``: ascending; ``perturbation_ranks``) are replaced by
    ``linear_imputation`` plus ``noise·ε``, ``ε ~ N(0, 1)`` per pixel and channel. Noise: one
    ``randn(P, C, H, W)`` call on ``generator`` per sample, in sample order (sample ``i``,
    percentage ``j`` uses ``ε[i][j]`` at its removed pixels). Rows (sample, percentage) are
    imputed and scored ``batch_size`` at a time; costs ``B·P`` forward passes and solves.
    """
    b, c, h, w = x.shape
    ks = torch.tensor([int(h * w * p / 100) for p in percentages], device=x.device)
    points = len(percentages)
    ranks = perturbation_ranks(attributions if order == "morf" else -attributions).to(torch.int32)
    k32 = ks.to(torch.int32)
    draws = _PerSample(
        lambda: torch.randn((points, c, h, w), generator=generator, device=x.device, dtype=x.dtype)
    )

    def build(lo: int, hi: int) -> Tensor:
        sample, j, first = _rows(lo, hi, points, x.device)
        removed = ranks.index_select(0, sample) < k32.index_select(0, j).view(-1, 1, 1, 1)
        xs = x.index_select(0, sample)
        eps = draws.block(first, (hi - 1) // points)[sample - first, j]
        return torch.where(removed, linear_imputation(xs, removed) + noise * eps, xs)

    y = evaluate_rows(model, build, target, points, score=score, batch_size=batch_size)
    return y.view(b, points)


class ROAD(Metric):
    """ROAD: target score after noisy linear imputation of the top pixels (Rong et al. 2022).

    Remove And Debias: for each percentage ``p``, the ``⌊N·p/100⌋`` most (``morf``) or least
    (``lerf``) relevant pixels are replaced by noisy linear imputation (``linear_imputation``,
    each removed pixel the weighted mean of its 8 neighbours, solved jointly, plus Gaussian
    noise), which leaks less class information through the removal mask's shape than a constant
    baseline. Curve ``y_p``: the target's score (``accuracy`` ``1[argmax = target]``, as Rong
    et al. and Quantus; or ``probability``/``logit``) at each percentage, ``curve_x = p/100``.
    Value (lower is better, Quantus' ``LOWER``):

    - ``morf``: ``mean_p y_p`` (a faithful map destroys the score fastest);
    - ``lerf``: ``mean_p (y_0 − y_p)``, the mean drop (``y_0`` = score of ``x``; a faithful map
      keeps the score), the mirrored quantity so that the direction stays one.

    Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation Strategy for
    Attribution Methods", ICML 2022 (arXiv 2202.00449). Quantus' ``ROAD`` is MoRF-only with
    percentages 1, 3, …, 99, returns only the batch-mean accuracy per percentage, and imputes one
    image at a time with ``scipy.sparse.linalg.spsolve``; benchbox solves all images at once
    (conjugate gradients, to 1e-9) and keeps per-sample curves.

    Parameters (sensitive):
        percentages: removal levels in (0, 100); default 10, 20, …, 90 (Rong et al.'s figures,
            pytorch-grad-cam). Costs one imputation and one forward pass per level and sample.
        order: ``morf`` or ``lerf``.
        noise: σ of the added Gaussian noise in raw intensity units (default 0.01, Rong et al.;
            Quantus adds it to whatever scale ``x_batch`` has). Drawn from the run's generator,
            one ``randn(P, C, H, W)`` call per sample in sample order.
        score: ``accuracy`` (default), ``probability`` or ``logit``.

    2D images only (``needs: images_2d``): the 8-neighbour scheme is defined for images.

    Shapes: ``x`` ``[B, C, H, W]``, ``attributions`` ``[B, 1, H, W]`` -> values ``[B]``,
    curves ``[B, P]``.
    """

    needs = frozenset({Capability.IMAGES_2D})
    higher_is_better = False

    def __init__(
        self,
        *,
        percentages: Annotated[
            tuple[Annotated[float, Field(gt=0, lt=100)], ...], Field(min_length=1)
        ] = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0),
        order: Order = "morf",
        noise: NonNegativeFloat = 0.01,
        score: RoadScore = "accuracy",
    ) -> None:
        self.percentages = tuple(float(p) for p in percentages)
        self.order: Order = order
        self.noise = noise
        self.score_kind: RoadScore = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)
        if x.dim() != 4:
            raise ValueError(f"road needs 2D images [B, C, H, W], got shape {list(x.shape)}")
        # All samples are imputed (placeholder zeros for non-finite maps), so every sample's
        # noise draws are the same whatever the other maps hold.
        curves = road(
            ctx.model,
            x,
            attr,
            target,
            percentages=self.percentages,
            order=self.order,
            noise=self.noise,
            score=self.score_kind,
            batch_size=ctx.batch_size,
            generator=ctx.generator,
        )
        if self.order == "morf":
            values = curves.double().mean(dim=1)
        else:
            y0 = _plain_scores(
                ctx.model, x, target, score=self.score_kind, batch_size=ctx.batch_size
            )
            values = (y0.double().unsqueeze(1) - curves.double()).mean(dim=1)
        values, reasons = _finish(values, finite)
        curves = torch.where(finite.unsqueeze(1), curves, torch.full_like(curves, math.nan))
        curve_x = torch.tensor(self.percentages, device=x.device, dtype=torch.float32) / 100
        return MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)


# ================================================================================================
# Faithfulness correlation
# ================================================================================================
def _first_distinct(draws: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``draws`` ``[R, M]``: the first ``k`` distinct values in order ``[R, k]``, and
    whether the row has ``k`` distinct values at all ``[R]``."""
    values, order = torch.sort(draws, dim=1, stable=True)
    first = torch.ones_like(values, dtype=torch.bool)
    first[:, 1:] = values[:, 1:] != values[:, :-1]  # stable: the earliest draw of each value
    keep = torch.zeros_like(first).scatter_(1, order, first)
    rank = keep.cumsum(dim=1)
    complete = rank[:, -1] >= k
    chosen = keep & (rank <= k) & complete.unsqueeze(1)
    return draws[chosen].view(-1, k), complete


def random_subsets(
    generator: torch.Generator, n_runs: int, n_features: int, subset_size: int
) -> Tensor:
    """One sample's ``n_runs`` random subsets of ``subset_size`` of ``n_features``, long ``[R, S]``.

    Each row is a uniform draw without replacement. For ``S <= N/4``: the first ``S`` distinct
    values of i.i.d. uniform integers (a uniform subset, by exchangeability), ``M ≈ 1.2·N·ln(N /
    (N − S)) + 16`` integers per row, rows short of ``S`` distinct values (rare) redrawn; else the
    top ``S`` of ``N`` uniform numbers, in blocks of at most 2^22 numbers. One call per sample
    (``faithfulness_correlation`` calls it in sample order); the draws depend only on
    ``(R, N, S)`` and the generator. The integer path costs ``O(R·S log S)`` instead of
    ``O(R·N)``: 10x cheaper than the top-``S`` path for 224 of 4096 pixels.
    """
    device = generator.device
    if 4 * subset_size <= n_features:
        m = int(1.2 * n_features * math.log(n_features / (n_features - subset_size))) + 16
        out = torch.empty(n_runs, subset_size, dtype=torch.long, device=device)
        todo = torch.arange(n_runs, device=device)
        while todo.numel() > 0:
            draws = torch.randint(
                0, n_features, (todo.numel(), m), generator=generator, device=device
            )
            subsets, complete = _first_distinct(draws, subset_size)
            out[todo[complete]] = subsets
            todo = todo[~complete]
        return out
    rows = max(1, (1 << 22) // n_features)
    blocks = []
    for start in range(0, n_runs, rows):
        k = min(rows, n_runs - start)
        u = torch.rand((k, n_features), generator=generator, device=device)
        blocks.append(u.topk(subset_size, dim=1).indices)
    return torch.cat(blocks)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of ``[B, R]`` float64; NaN where a row is constant."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = (a.square().sum(dim=1) * b.square().sum(dim=1)).sqrt()
    r = (a * b).sum(dim=1) / den
    return torch.where(den > 0, r.clamp(-1, 1), torch.full_like(r, math.nan))


def faithfulness_correlation(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    n_runs: int,
    subset_size: int,
    baseline: Tensor,
    score: Score,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Faithfulness correlation float64 ``[B]``, attribution sums and score drops ``[B, R]``.

    For run ``r = 1..R`` a random subset ``S_r`` of ``subset_size`` pixels (``random_subsets``,
    one call per sample on ``generator``, in sample order) is replaced by ``baseline``;
    ``Δ_r = y(x) − y(x_{S_r → baseline})`` and ``A_r = Σ_{i ∈ S_r} a_i``; the value is
    ``Pearson(A, Δ)`` over the runs (NaN when either is constant). Costs ``B·(R+1)`` forward
    passes, in chunks of ``batch_size``.
    """
    b = x.shape[0]
    n = math.prod(x.shape[2:])
    if subset_size > n:
        raise ValueError(
            f"subset_size: {subset_size} is more than the {n} pixels of the images; use at most {n}"
        )
    flat_a = attributions.reshape(b, -1)
    subsets = _PerSample(lambda: random_subsets(generator, n_runs, n, subset_size))
    sums = torch.empty(b * n_runs, dtype=flat_a.dtype, device=x.device)

    def build(lo: int, hi: int) -> Tensor:
        sample, j, first = _rows(lo, hi, n_runs, x.device)
        idx = subsets.block(first, (hi - 1) // n_runs)[sample - first, j]
        sums[lo:hi] = flat_a.index_select(0, sample).gather(1, idx).sum(dim=1)
        moved = torch.zeros(hi - lo, n, dtype=torch.bool, device=x.device).scatter_(1, idx, True)
        moved = moved.view(hi - lo, 1, *x.shape[2:])
        return torch.where(moved, baseline.index_select(0, sample), x.index_select(0, sample))

    y0 = _plain_scores(model, x, target, score=score, batch_size=batch_size)
    y = evaluate_rows(model, build, target, n_runs, score=score, batch_size=batch_size)
    y = y.view(b, n_runs)
    deltas = y0.double().unsqueeze(1) - y.double()
    sums64 = sums.double().view(b, n_runs)
    return _pearson(sums64, deltas), sums64, deltas


class FaithfulnessCorrelation(Metric):
    """Faithfulness correlation: attribution sums vs score drops of random subsets (Bhatt 2020).

    ``R`` times, a random subset ``S`` of ``subset_size`` pixels is replaced by the baseline; the
    value is the Pearson correlation, over the runs, between ``Σ_{i∈S} a_i`` and the target score
    drop ``y(x) − y(x_S)``. Higher is better (1: the map's sums predict the drops linearly).
    Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based Model Explanations",
    IJCAI 2020 (arXiv 2005.00631); Quantus' ``FaithfulnessCorrelation`` (defaults ``nr_runs=100``,
    ``subset_size=224``, baseline ``"black"`` = image minimum, logits). Equal to Quantus on the same
    subsets for single-channel images (Quantus draws ``C·H·W`` features with NumPy's global RNG;
    benchbox draws pixels from the run's generator, one ``random_subsets`` call per sample).

    Parameters (sensitive):
        n_runs: ``R`` (>= 2). Costs ``R`` forward passes per sample.
        subset_size: pixels per subset (<= the image's pixels).
        baseline: ``min`` (default, Quantus' ``"black"``), ``zero``, ``mean``, ``blur``,
            ``uniform``.
        score: ``logit`` (default, Quantus' ``softmax=False``) or ``probability``.

    Undefined (NaN with a reason): a non-finite map; attribution sums constant over the runs
    (e.g. a constant map: every subset sums to the same value); score drops constant over the
    runs (a model insensitive to the perturbation).

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        n_runs: Annotated[Count, Field(ge=2)] = 100,
        subset_size: Pixels = 224,
        baseline: Baseline = "min",
        score: Score = "logit",
    ) -> None:
        self.n_runs = n_runs
        self.subset_size = subset_size
        self.baseline: Baseline = baseline
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)
        # Every sample is evaluated (placeholder zeros for non-finite maps): a sample's subsets
        # then never depend on the other samples' maps.
        values, sums, deltas = faithfulness_correlation(
            ctx.model,
            x,
            attr,
            target,
            n_runs=self.n_runs,
            subset_size=self.subset_size,
            baseline=baseline_image(x, self.baseline, ctx.generator),
            score=self.score_kind,
            batch_size=ctx.batch_size,
            generator=ctx.generator,
        )
        constant_sums = (sums == sums[:, :1]).all(dim=1)
        constant_deltas = (deltas == deltas[:, :1]).all(dim=1)
        values, reasons = _finish(
            values,
            finite,
            [(constant_sums, REASON_CONSTANT_SUMS), (constant_deltas, REASON_CONSTANT_DELTAS)],
        )
        return MetricOutput(values=values, reasons=reasons)


# ================================================================================================
# Infidelity
# ================================================================================================
def infidelity(
    model: ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor,
    *,
    n_perturb_samples: int,
    noise_std: float,
    multiply_by_inputs: bool,
    normalize: bool,
    score: Score,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Infidelity float64 ``[B]``: ``E_I[(Iᵀa − (y(x) − y(x − I')))²]`` over Gaussian ``I``.

    Perturbations ``ε ~ N(0, σ²)`` per pixel and channel, one ``randn(n, C, *sp)·σ`` call on
    ``generator`` per sample, in sample order. ``I = ε`` and ``x − I' = x − ε`` (additive), or with
    ``multiply_by_inputs`` ``x − I' = x − ε ⊙ x`` (the perturbation scaled by the input, for
    global attributions such as input × gradient: Captum's
    ``infidelity_perturb_func_decorator(multiply_by_inputs=True)``). ``Iᵀa = Σ_{c,p} ε_{c,p} a_p``
    (the map broadcast over channels). ``normalize``: ``a`` rescaled by the optimal
    ``β = E[Iᵀa·Δ]/E[(Iᵀa)²]`` (0 when ``E[(Iᵀa)²] = 0``), as Captum's ``normalize=True``. The
    ``B·n`` perturbed images are scored ``batch_size`` at a time, so memory holds one chunk.
    """
    b = x.shape[0]
    noise = _PerSample(
        lambda: (
            torch.randn(
                (n_perturb_samples, *x.shape[1:]),
                generator=generator,
                device=x.device,
                dtype=x.dtype,
            )
            * noise_std
        )
    )
    dots = torch.empty(b * n_perturb_samples, dtype=x.dtype, device=x.device)

    def build(lo: int, hi: int) -> Tensor:
        sample, j, first = _rows(lo, hi, n_perturb_samples, x.device)
        eps = noise.block(first, (hi - 1) // n_perturb_samples)[sample - first, j]
        dots[lo:hi] = (eps * attributions.index_select(0, sample)).flatten(1).sum(dim=1)
        xs = x.index_select(0, sample)
        return xs - eps * xs if multiply_by_inputs else xs - eps

    y0 = _plain_scores(model, x, target, score=score, batch_size=batch_size)
    y = evaluate_rows(model, build, target, n_perturb_samples, score=score, batch_size=batch_size)
    deltas = y0.double().unsqueeze(1) - y.double().view(b, n_perturb_samples)
    s = dots.double().view(b, n_perturb_samples)
    if normalize:
        den = s.square().mean(dim=1)
        beta = torch.where(den > 0, (s * deltas).mean(dim=1) / den, torch.zeros_like(den))
        s = beta.unsqueeze(1) * s
    return (s - deltas).square().mean(dim=1)


class Infidelity(Metric):
    """Infidelity: error of the map's linear prediction of Gaussian-noise effects (Yeh et al. 2019).

    ``INFD(a, f, x) = E_I[(Iᵀa − (f(x) − f(x − I)))²]`` with ``I ~ N(0, σ²)`` per pixel and
    channel (Yeh et al.'s Gaussian "noisy baseline"), estimated from ``n_perturb_samples`` draws;
    ``f`` is the target's logit (default) or probability. Lower is better (0: the map predicts
    every perturbation's effect). Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and
    Sensitivity of Explanations", NeurIPS 2019 (arXiv 1901.09392); equal to Captum's
    ``captum.metrics.infidelity`` given the same perturbations. For a linear model ``f = wᵀx`` the
    gradient ``w`` has infidelity 0 under additive noise, and input × gradient ``w ⊙ x`` under
    ``multiply_by_inputs=True`` (perturbations scaled by the input).

    Parameters (sensitive):
        n_perturb_samples: draws per sample (Captum and Quantus: 10); costs that many forward
            passes per sample.
        noise_std: σ in raw intensity units (images in [0, 1]); the value scales with σ².
        multiply_by_inputs: perturb ``x − ε ⊙ x`` instead of ``x − ε`` (for global maps:
            input × gradient, IG, DeepLIFT, occlusion).
        normalize: rescale the map by the optimal scalar first (Captum's ``normalize``), so
            maps on different scales compare.
        score: ``logit`` (default) or ``probability``.

    Noise is drawn from the run's generator, one ``randn(n, C, *sp)`` call per sample in sample
    order; perturbed images go ``batch_size`` at a time (Captum expands ``n × B`` at once unless
    given ``max_examples_per_batch``: PROTOCOLS P6).

    Shapes: ``x`` ``[B, C, *sp]``, ``attributions`` ``[B, 1, *sp]`` -> values ``[B]``.
    """

    higher_is_better = False

    def __init__(
        self,
        *,
        n_perturb_samples: Count = 10,
        noise_std: PositiveFloat = 0.1,
        multiply_by_inputs: bool = False,
        normalize: bool = False,
        score: Score = "logit",
    ) -> None:
        self.n_perturb_samples = n_perturb_samples
        self.noise_std = noise_std
        self.multiply_by_inputs = multiply_by_inputs
        self.normalize = normalize
        self.score_kind: Score = score

    def score(self, ctx: MetricContext) -> MetricOutput:
        x, attr, target, finite = _checked(ctx)
        # Every sample is evaluated (placeholder zeros for non-finite maps), so a sample's noise
        # never depends on the other samples' maps.
        values = infidelity(
            ctx.model,
            x,
            attr,
            target,
            n_perturb_samples=self.n_perturb_samples,
            noise_std=self.noise_std,
            multiply_by_inputs=self.multiply_by_inputs,
            normalize=self.normalize,
            score=self.score_kind,
            batch_size=ctx.batch_size,
            generator=ctx.generator,
        )
        values, reasons = _finish(values, finite)
        return MetricOutput(values=values, reasons=reasons)
