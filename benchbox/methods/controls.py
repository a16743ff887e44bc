"""Control baselines: maps that carry no information about the model, to calibrate every metric."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import ExplainedModel, Method
from .base import check_inputs, finish

__all__ = ["Random"]


class Random(Method):
    """Control: i.i.d. uniform [0, 1) map drawn from the job's generator.

    ``a[b, 0, u, v] ~ U[0, 1)`` independently; no tie has positive probability, so localization
    metrics score it at chance. It needs nothing from the model (no gradients, no layer).

    The map is drawn on the *generator's* device and then moved to ``x``'s device, so a given
    generator state yields the same map on CPU and GPU. Draws are consumed in batch order, so
    the maps depend on the seed and on the batch composition.

    Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32.
    """

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        shape = (x.shape[0], 1, *x.shape[2:])
        attr = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return finish(attr, x)
