"""Gradient attributions: vanilla gradient (Saliency) and Integrated Gradients, via Captum.

Both are written against the model's scalar target ``y_c(x)`` = the logit of class ``target``
(``ExplainedModel`` returns logits; normalization is inside the model, so gradients are w.r.t. the
raw ``[0, 1]`` intensities). Shapes: ``x`` ``[B, C, *sp]`` -> attribution ``[B, 1, *sp]`` float32.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import Tensor

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from .base import (
    Reduce,
    Reference,
    check_inputs,
    explaining,
    finish,
    reduce_channels,
    reference_image,
    rows_per_pass,
)

__all__ = ["IntegratedGradients", "Saliency"]

IGRule = Literal[
    "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]


class Saliency(Method):
    """Vanilla gradient |∂y_c/∂x| reduced over channels (Simonyan et al. 2014).

    ``a = reduce_c(|∂y_c(x)/∂x_c|)`` with ``y_c`` the target logit; Simonyan, Vedaldi, Zisserman,
    "Deep Inside Convolutional Networks", ICLR workshop 2014 (arXiv 1312.6034), which takes the
    maximum of the absolute gradient over colour channels (``abs=True, reduce="max_abs"``).
    Computed with ``captum.attr.Saliency``.

    Parameters:
        abs: take ``|∂y/∂x|`` before reducing (Captum's ``abs``). With ``abs=False`` and
            ``reduce="sum"``/``"mean"`` the map is signed.
        reduce: channel reduction (see ``benchbox.methods.base.reduce_channels``); irrelevant for
            single-channel images except for ``max_abs``/``abs_sum``, which drop the sign.

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic;
    the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS})

    def __init__(self, *, abs: bool = True, reduce: Reduce = "max_abs") -> None:
        self.abs = abs
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import Saliency as CaptumSaliency

        check_inputs(x, target)
        with explaining(model) as module:
            # A fresh leaf that requires grad: no captum warning, the caller's x is never touched.
            inp = x.detach().clone().requires_grad_(True)
            grads = CaptumSaliency(module).attribute(inp, target=target, abs=self.abs)
        return finish(reduce_channels(grads.detach(), self.reduce), x)


class IntegratedGradients(Method):
    """Integrated Gradients along the straight path from a baseline (Sundararajan et al. 2017).

    ``IG_i(x) = (x_i − x'_i) · ∫_0^1 ∂y_c(x' + α(x − x'))/∂x_i dα``, approximated with ``steps``
    points of the quadrature ``method``; completeness: ``Σ_i IG_i ≈ y_c(x) − y_c(x')``.
    Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
    (arXiv 1703.01365). Computed with ``captum.attr.IntegratedGradients``.

    Parameters (all sensitive):
        steps: number of interpolation points (Captum ``n_steps``); the completeness error falls
            with it. 32 with Gauss–Legendre is usually within a few % on small CNNs.
        baseline: ``x'``: ``zero`` (raw black), ``mean`` (per-image per-channel mean) or ``blur``
            (RISE's Gaussian blur of ``x``); see ``benchbox.methods.base.reference_image``.
        method: quadrature rule (Captum's names); Gauss–Legendre is Captum's default. Riemann
            rules need ``steps >= 2``. Captum 0.9's ``riemann_trapezoid`` weights sum to
            ``(n−1)/n`` (weights ``1/n``, ends halved, at ``α = linspace(0, 1, n)``), so its
            attributions are too small by that factor; benchbox divides by the sum of Captum's
            weights, which is exact for every rule and a no-op once Captum sums to 1.
        reduce: channel reduction; ``sum`` (default) keeps the sign and completeness.

    Memory: the ``B × steps`` interpolated inputs are evaluated in passes of at most
    ``rows_per_pass(x)`` rows (2^24 input elements, at most 512 rows), whatever the run's batch
    size: samples go to Captum in groups of at most ``rows``, and Captum's
    ``internal_batch_size=rows`` splits the steps so that each pass holds at most ``rows`` rows
    (``rows // group`` steps of every sample of the group, at least one).

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic;
    the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS})

    def __init__(
        self,
        *,
        steps: PositiveInt = 32,
        baseline: Reference = "zero",
        method: IGRule = "gausslegendre",
        reduce: Reduce = "sum",
    ) -> None:
        if steps < 2 and method.startswith("riemann"):
            raise UserError(
                f"integrated_gradients.steps: the {method} rule needs steps >= 2, got {steps}"
            )
        self.steps = steps
        self.baseline: Reference = baseline
        self.method: IGRule = method
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr._utils.approximation_methods import approximation_parameters

        check_inputs(x, target)
        weight_sum = 1.0  # Gauss–Legendre weights sum to 1; computing them costs an eigensolve
        if self.method.startswith("riemann"):
            step_sizes, _ = approximation_parameters(self.method)
            weight_sum = float(sum(step_sizes(self.steps)))
        x = x.detach()
        baselines = reference_image(x, self.baseline)
        rows = rows_per_pass(x)
        parts: list[Tensor] = []
        with explaining(model) as module:
            ig = CaptumIG(module, multiply_by_inputs=True)
            for start in range(0, x.shape[0], rows):
                sl = slice(start, start + rows)
                attr = ig.attribute(
                    x[sl],
                    baselines=baselines[sl],
                    target=target[sl],
                    n_steps=self.steps,
                    method=self.method,
                    internal_batch_size=rows,
                )
                parts.append(reduce_channels(attr.detach() / weight_sum, self.reduce))
        return finish(torch.cat(parts), x)
