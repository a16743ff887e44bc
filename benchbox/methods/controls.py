"""Control baselines: maps that carry no information about the model, to calibrate every metric.

A metric that scores a real method no better than these says little about the method: ``random``
(chance), ``edge`` (image structure alone; Adebayo et al. 2018 found several saliency methods
visually indistinguishable from an edge detector), ``centre`` (a centre prior: lesions and
objects are often central; TorchRay's "center" baseline for the pointing game) and ``constant``
(no ranking at all: ties everywhere). None of them needs the model.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, FiniteFloat
from torch import Tensor

from ..core import ExplainedModel, Method
from .base import Reduce, check_inputs, finish, reduce_channels

__all__ = ["Centre", "Constant", "Edge", "Random", "centre_map", "sobel_magnitude"]


class Random(Method):
    """Control: i.i.d. uniform [0, 1) map drawn from the job's generator.

    ``a[b, 0, u, v] ~ U[0, 1)`` independently; no tie has positive probability, so localization
    metrics score it at chance. It needs nothing from the model (no gradients, no layer).

    The map is drawn on the *generator's* device and then moved to ``x``'s device, so a given
    generator state yields the same map on CPU and GPU. Draws are consumed in batch order, so
    the maps depend on the seed and on the batch composition.

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32.
    """

    supports_3d: ClassVar[bool] = True

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        shape = (x.shape[0], 1, *x.shape[2:])
        attr = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return finish(attr, x)


# Sobel's 1D factors, as scikit-image's ``filters.sobel``: smoothing [1, 2, 1] / 4 and the
# central difference [-1, 0, 1] (correlation order: f[i+1] − f[i−1]).
_SOBEL_SMOOTH = (0.25, 0.5, 0.25)
_SOBEL_DIFF = (-1.0, 0.0, 1.0)


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude per channel, ``[B, C, *sp] -> [B, C, *sp]``, 2D or 3D.

    ``|∇x| = sqrt((1/d) Σ_a G_a²)`` over the ``d`` spatial axes, with ``G_a`` the central
    difference ``[-1, 0, 1]`` along axis ``a`` and the smoothing ``[1, 2, 1]/4`` along every other
    axis (separable 1D convolutions), borders replicated (half-sample symmetric); exactly
    ``skimage.filters.sobel`` (mode ``reflect``) per channel. A unit step gives ``1/sqrt(d)`` on
    the two pixels either side of it and 0 elsewhere; a constant image gives 0.
    """
    d = x.dim() - 2
    if d not in (2, 3):
        raise ValueError(
            f"sobel_magnitude: expected [B, C, H, W] or [B, C, D, H, W], got {tuple(x.shape)}"
        )
    b, c = x.shape[:2]
    flat = x.reshape(b * c, 1, *x.shape[2:])
    pad = (1, 1) * d
    padded = F.pad(flat, pad, mode="replicate")
    conv = F.conv2d if d == 2 else F.conv3d
    smooth = torch.tensor(_SOBEL_SMOOTH, dtype=x.dtype, device=x.device)
    diff = torch.tensor(_SOBEL_DIFF, dtype=x.dtype, device=x.device)

    def along(t: Tensor, kernel: Tensor, axis: int) -> Tensor:
        shape = [1, 1] + [1] * d
        shape[2 + axis] = 3
        return conv(t, kernel.view(shape))

    total = torch.zeros_like(flat)
    for axis in range(d):
        g = padded
        for other in range(d):
            g = along(g, diff if other == axis else smooth, other)
        total = total + g.square()
    return (total / d).sqrt().view_as(x)


class Edge(Method):
    """Control: Sobel edge magnitude of the image, reduced over channels (Adebayo et al. 2018).

    ``a = reduce_c(|∇x_c|)`` with the Sobel magnitude of ``sobel_magnitude`` (scikit-image's
    ``filters.sobel``: ``sqrt(mean_a G_a²)``, borders replicated), per channel and then reduced.
    Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency Maps", NeurIPS
    2018 (arXiv 1810.03292), compare saliency maps with exactly such an edge detector: a method
    that scores like ``edge`` reflects the image, not the model. Needs nothing from the model.

    Parameters:
        reduce: channel reduction of the per-channel magnitudes (all ``>= 0``, so ``sum`` =
            ``abs_sum``); default ``max_abs`` like ``saliency``.

    Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32. Deterministic.
    """

    supports_3d: ClassVar[bool] = True

    def __init__(self, *, reduce: Reduce = "max_abs") -> None:
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        return finish(reduce_channels(sobel_magnitude(x.detach()), self.reduce), x)


def centre_map(spatial: tuple[int, ...], sigma: float, device: torch.device) -> Tensor:
    """``exp(−|p − c|² / (2 s²))`` on the pixel grid ``spatial``, float32 ``[*spatial]``.

    ``c`` is the geometric centre ``((n_a − 1)/2)_a`` (between the two middle pixels of an even
    axis), ``s = sigma · min(spatial)`` pixels, the same along every axis (isotropic); the peak
    value is 1 at ``c``.
    """
    s = sigma * min(spatial)
    sq = torch.zeros(spatial, dtype=torch.float32, device=device)
    for axis, n in enumerate(spatial):
        coord = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        shape = [1] * len(spatial)
        shape[axis] = n
        sq = sq + coord.square().view(shape)
    return torch.exp(-sq / (2 * s * s))


class Centre(Method):
    """Control: an isotropic Gaussian centred in the image, the same for every sample.

    ``a(p) = exp(−|p − c|² / (2 s²))``, ``c`` the image centre, ``s = sigma · min(spatial size)``
    pixels (see ``centre_map``). A centre prior: TorchRay's pointing-game benchmark (Fong et al.,
    "Understanding Deep Networks via Extremal Perturbations", ICCV 2019) reports a "center"
    baseline that points at the image centre; with odd sizes the argmax is the centre pixel, with
    an even size the 2 (or 4, 8) middle pixels tie. Needs nothing from the model or the image.

    Parameters:
        sigma: the Gaussian's std as a fraction of the shortest spatial side (default 0.25).

    Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32. Deterministic.
    """

    supports_3d: ClassVar[bool] = True

    def __init__(self, *, sigma: Annotated[float, Field(gt=0)] = 0.25) -> None:
        self.sigma = sigma

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        spatial = tuple(x.shape[2:])
        g = centre_map(spatial, self.sigma, x.device)
        return finish(g.expand(x.shape[0], 1, *spatial), x)


class Constant(Method):
    """Control: the same value at every pixel, a map that ranks nothing.

    Every pixel ties, so rank- and argmax-based metrics see it as the degenerate case they must
    handle (a pointing game must not score a constant map as a hit by its tie-break); metrics
    that normalise the map see a zero range. Needs nothing from the model.

    Parameters:
        value: the map's value (finite; default 1).

    Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32. Deterministic.
    """

    supports_3d: ClassVar[bool] = True

    def __init__(self, *, value: FiniteFloat = 1.0) -> None:
        self.value = value

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        out = torch.full((x.shape[0], 1, *x.shape[2:]), self.value, device=x.device)
        return finish(out, x)
