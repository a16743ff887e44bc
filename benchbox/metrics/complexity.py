"""Complexity metrics: how concentrated is an attribution map? No model, no mask.

The maths lives in the pure functions ``sparseness``, ``complexity`` and
``effective_complexity``; the classes only hold parameters. Each works on the magnitudes
``|a|`` of a map ``[B, 1, *sp]`` flattened to ``[B, N]``, batched on the input's device, in
float64. Scores never depend on the other samples of the batch (unlike Quantus' default
``normalise=True``, which divides by the maximum over the whole batch: PROTOCOLS Q2).

Undefined cases (NaN with a reason): a map with a NaN/inf value; for Gini and entropy an
all-zero map (``Σ|a| = 0``: there is no distribution to measure).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..core import Metric, MetricContext, MetricOutput
from ..methods.base import check_attributions
from .toolkit import REASON_NONFINITE, finish, finite_rows

__all__ = [
    "Complexity",
    "EffectiveComplexity",
    "Sparseness",
    "complexity",
    "effective_complexity",
    "sparseness",
]

Normalise = Literal["max", "none"]

REASON_ALL_ZERO = "attribution is all zero"


def _magnitudes(attributions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``|a|`` float64 ``[B, N]`` (non-finite rows zeroed), ``finite`` ``[B]``, ``Σ|a|`` ``[B]``."""
    b = attributions.shape[0]
    a, finite = finite_rows(attributions.reshape(b, -1).double().abs())
    return a, finite, a.sum(dim=1)


def _finish(values: Tensor, finite: Tensor, zero: Tensor | None) -> tuple[Tensor, list[str | None]]:
    checks = [(~finite, REASON_NONFINITE)] + ([] if zero is None else [(zero, REASON_ALL_ZERO)])
    return finish(values, checks)


def sparseness(attributions: Tensor) -> tuple[Tensor, list[str | None]]:
    """Gini index of ``|a|`` per sample, float64 ``[B]`` in [0, 1 − 1/N].

    ``G = Σ_i (2i − N − 1) x_(i) / (N Σ_i x_i)`` with ``x_(1) ≤ … ≤ x_(N)`` the sorted
    magnitudes (Hurley & Rickard 2009's Gini, as Chalasani et al. 2020). A constant map scores
    0, a one-hot map ``1 − 1/N``. NaN: non-finite map, all-zero map.
    """
    x, finite, total = _magnitudes(attributions)
    n = x.shape[1]
    x = torch.sort(x, dim=1).values
    weights = 2 * torch.arange(1, n + 1, device=x.device, dtype=x.dtype) - n - 1
    zero = total == 0
    values = (x * weights).sum(dim=1) / (n * torch.where(zero, torch.ones_like(total), total))
    return _finish(values, finite, zero)


def complexity(attributions: Tensor) -> tuple[Tensor, list[str | None]]:
    """Entropy of the fractional contribution ``p = |a| / Σ|a|``, float64 ``[B]`` in [0, log N].

    ``H = −Σ_i p_i log p_i`` (natural log; ``0 log 0 = 0``). A constant map scores ``log N``, a
    one-hot map 0. NaN: non-finite map, all-zero map.
    """
    x, finite, total = _magnitudes(attributions)
    zero = total == 0
    p = x / torch.where(zero, torch.ones_like(total), total)[:, None]
    values = -torch.special.xlogy(p, p).sum(dim=1)
    return _finish(values, finite, zero)


def effective_complexity(
    attributions: Tensor, *, eps: float = 1e-5, normalise: Normalise = "max"
) -> tuple[Tensor, list[str | None]]:
    """Number of features with ``|a| > eps`` (after per-sample normalisation), float64 ``[B]``.

    ``normalise="max"`` divides ``|a|`` by the sample's own ``max |a|`` first, so ``eps`` is
    relative to the map's peak and the score is scale-invariant; ``"none"`` thresholds the raw
    magnitudes. An all-zero map scores 0 (no feature exceeds ``eps``: defined, unlike Gini and
    entropy). NaN: non-finite map.
    """
    x, finite, _ = _magnitudes(attributions)
    if normalise == "max":
        peak = x.amax(dim=1, keepdim=True)
        x = x / torch.where(peak == 0, torch.ones_like(peak), peak)
    elif normalise != "none":
        raise ValueError(f"normalise must be one of 'max', 'none', got {normalise!r}")
    values = (x > eps).sum(dim=1).double()
    return _finish(values, finite, None)


class Sparseness(Metric):
    """Sparseness: Gini index of the attribution magnitudes (Chalasani et al. 2020).

    ``score = Σ_i (2i − N − 1) x_(i) / (N Σ x)`` over the ascending magnitudes ``x = |a|``;
    0 for a uniform map, ``1 − 1/N`` for a single pixel. Chalasani, Chen, Chowdhury, Wu, Jha,
    "Concise Explanations of Neural Networks using Adversarial Training", ICML 2020.

    Agrees with Quantus ``Sparseness`` (whose Gini is scale-invariant, so its batch-wide
    normalisation does not matter) within ``N·1e-7 / Σ|a|`` relative: Quantus adds ``1e-7`` to
    every magnitude, which also scores an all-zero map 0 where benchbox gives NaN ("attribution
    is all zero": a map without relevance is not sparse). Tested both ways.
    Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    higher_is_better: ClassVar[bool] = True

    def score(self, ctx: MetricContext) -> MetricOutput:
        check_attributions(ctx.attributions, ctx.batch.x)
        values, reasons = sparseness(ctx.attributions)
        return MetricOutput(values=values, reasons=reasons)


class Complexity(Metric):
    """Complexity: entropy of the fractional contribution ``|a_i| / Σ|a|`` (Bhatt et al. 2020).

    ``score = −Σ_i p_i ln p_i`` with ``p = |a| / Σ|a|``; ``ln N`` for a uniform map, 0 for a
    single pixel. Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based Model
    Explanations", IJCAI 2020. Agrees with Quantus ``Complexity`` (scale-invariant; its
    ``ln(p + 1e-12)`` differs by < 1e-9) on the same inputs. Undefined (NaN): all-zero map
    (Quantus: 0/0 = NaN too), non-finite map. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    higher_is_better: ClassVar[bool] = False

    def score(self, ctx: MetricContext) -> MetricOutput:
        check_attributions(ctx.attributions, ctx.batch.x)
        values, reasons = complexity(ctx.attributions)
        return MetricOutput(values=values, reasons=reasons)


class EffectiveComplexity(Metric):
    """Effective complexity: number of features with ``|a| > eps`` (Nguyen & Martínez 2020).

    ``score = #{i : |a_i| / max_j |a_j| > eps}`` (``normalise="max"``, default) or
    ``#{i : |a_i| > eps}`` (``"none"``). Nguyen, Martínez, "On quantitative aspects of model
    interpretability", arXiv 2007.07584, 2020.

    Parameters:
        eps: threshold (default 1e-5, as Quantus).
        normalise: ``max`` divides by the sample's own peak; Quantus' default instead divides by
            the peak over the whole batch, so its count for one map changes when a map with a
            larger peak joins the batch (tested as a deliberate difference). ``none`` equals
            Quantus with ``normalise=False``; ``max`` equals Quantus' default on a batch of one.

    An all-zero map scores 0. Undefined (NaN): non-finite map. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    higher_is_better: ClassVar[bool] = False

    def __init__(
        self, *, eps: Annotated[float, Field(ge=0)] = 1e-5, normalise: Normalise = "max"
    ) -> None:
        self.eps = eps
        self.normalise: Normalise = normalise

    def score(self, ctx: MetricContext) -> MetricOutput:
        check_attributions(ctx.attributions, ctx.batch.x)
        values, reasons = effective_complexity(
            ctx.attributions, eps=self.eps, normalise=self.normalise
        )
        return MetricOutput(values=values, reasons=reasons)
