"""Model-intrinsic and generative maps, and methods built on another method.

- ``attention``: the attention gates of an attention CNN (Jetley et al. 2018) as the map.
- ``vae_residual``: the reconstruction residual ``|x − x̂|`` of an autoencoder (Baur et al. 2021).
- ``iterative_saliency``: evidence accumulated while the most salient regions are inpainted away
  (González-Gonzalo et al. 2022).
- ``dominant_class``: where the target is the class with the strongest evidence (CLEAR, Kumar et
  al. 2017).

The last two take another registered method by name (``base``) with its parameters
(``base_params``, validated like a suite entry). The planner reads ``needs`` from the class, so the
base is restricted to methods that need at most gradients (every gradient, noise and perturbation
method qualifies; CAM-type bases, which need a target layer, do not).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from ..params import Count
from .base import (
    Reduce,
    check_inputs,
    explaining,
    finish,
    in_chunks,
    reduce_channels,
    rise_blur_kernel,
    rows_per_pass,
)
from .cam import upsample

__all__ = [
    "Attention",
    "DominantClass",
    "IterativeSaliency",
    "VAEResidual",
    "inpaint",
    "median_filter",
]


def _model_function(model: ExplainedModel, name: str) -> Any:
    """``model.module.<name>``, or that of the wrapped network ``model.module.net``."""
    for owner in (model.module, getattr(model.module, "net", None)):
        fn = getattr(owner, name, None)
        if callable(fn):
            return fn
    return None


# -- attention -------------------------------------------------------------------------------------
class Attention(Method):
    """The model's own attention gates as the map (Jetley et al. 2018), upsampled to the input.

    An attention CNN computes at gate ``s`` a map ``a^s`` ``[B, 1, h_s, w_s]`` over positions
    (``a^s = softmax_i(<u, l^s_i + g>)`` in Jetley, Lord, Lee, Torr, "Learn to Pay Attention",
    ICLR 2018) and classifies from ``Σ_i a^s_i l^s_i``. The map is read from the model
    (``model.module.attention_maps(x) -> {name: [B, 1, *h]}``, or the same method of
    ``model.module.net``), divided by its spatial mean (so 1 means "uniform attention" at every
    gate, whatever its resolution or normalization: softmax maps sum to 1 over ``h_s w_s``
    positions, sigmoid gates do not) and resized to the input by bilinear (trilinear)
    interpolation, ``align_corners=False``.

    The gates are class-agnostic: the map is the same for every ``target`` (a class-sensitivity
    check should find exactly that).

    Parameters:
        layer: which gate: ``auto`` = the finest one (most positions; ties: the first listed),
            the resolution closest to the pixels; ``mean`` = the mean of all gates after
            normalization and upsampling (Jetley et al. show each gate separately); or a gate's
            name (``attention_cnn``: ``block2``, ``block3``, ``block4``).

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D, as the model's gates) -> ``[B, 1, *sp]`` float32,
    ``>= 0``. Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.ATTENTION_MAPS})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, layer: str = "auto") -> None:
        self.layer = layer

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        fn = _model_function(model, "attention_maps")
        if fn is None:
            raise UserError(
                f"attention: the model ({type(model.module).__name__}) has no attention_maps(x) "
                f"method; use a model that provides attention maps (e.g. attention_cnn)"
            )
        with explaining(model), torch.no_grad():
            maps = fn(x.detach())
        if not isinstance(maps, dict) or not maps:
            raise UserError(
                f"attention: attention_maps(x) must return a non-empty dict name -> "
                f"[B, 1, *spatial], got {type(maps).__name__}"
            )
        for name, a in maps.items():
            if not isinstance(a, Tensor) or a.dim() != x.dim() or a.shape[:2] != (x.shape[0], 1):
                shape = list(a.shape) if isinstance(a, Tensor) else type(a).__name__
                raise UserError(
                    f"attention: gate {name!r} returned {shape}; expected [{x.shape[0]}, 1, "
                    f"{', '.join('h' for _ in x.shape[2:])}] for x of shape {list(x.shape)}"
                )
        if self.layer == "auto":
            chosen = [max(maps, key=lambda n: math.prod(maps[n].shape[2:]))]
        elif self.layer == "mean":
            chosen = list(maps)
        elif self.layer in maps:
            chosen = [self.layer]
        else:
            raise UserError(
                f"attention.layer: the model has no gate {self.layer!r}; available: "
                f"{['auto', 'mean', *maps]}"
            )
        spatial = tuple(range(2, x.dim()))
        ups = []
        for name in chosen:
            a = maps[name].detach().float()
            a = a / a.mean(dim=spatial, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
            ups.append(upsample(a, x))
        return finish(torch.stack(ups).mean(dim=0), x)


# -- reconstruction residual -----------------------------------------------------------------------
def median_filter(a: Tensor, size: int) -> Tensor:
    """Per-channel median over a ``size``^d window (replicate padding), for ``[B, C, *sp]``, d=2/3.

    For an even count of window values torch's median is the lower of the two middle values.
    """
    if size <= 1:
        return a
    nsp = a.dim() - 2
    pad = size // 2
    padded = F.pad(a, [pad] * (2 * nsp), mode="replicate")
    windows = padded
    for d in range(2, 2 + nsp):
        windows = windows.unfold(d, size, 1)
    return windows.reshape(*a.shape, -1).median(dim=-1).values


class VAEResidual(Method):
    """Anomaly map |x − x̂|^p of a reconstruction model, reduced over channels (Baur et al.).

    ``a = reduce_c(|x − x̂(x)|^p)``, optionally median-filtered, where ``x̂`` is the model's
    reconstruction of the raw image (for the VAE: ``D(μ(x))``, the decoded posterior mean, so
    the map is deterministic). The residual is the standard pixel-wise anomaly score of
    reconstruction-based unsupervised anomaly detection: Baur, Wiestler, Albarqouni, Navab,
    "Deep Autoencoding Models for Unsupervised Anomaly Segmentation in Brain MR Images",
    BrainLes 2018, and "Autoencoders for Unsupervised Anomaly Segmentation in Brain MR Images: A
    Comparative Study", Medical Image Analysis 2021 (l1 residuals, post-processed with a median
    filter).

    Model protocol: ``model.module.reconstruct(x)`` (or ``model.module.net.reconstruct(x)``)
    returns ``x̂`` with ``x``'s shape, in raw intensity space (``AnomalyTarget`` provides it).
    The map does not depend on ``target`` (the anomaly score is the only "class").

    Parameters:
        power: 1 (l1 residual, Baur et al.'s choice) or 2 (squared error, whose sum over pixels
            is the ``mse`` anomaly score).
        reduce: channel reduction of ``|x − x̂|^p`` (non-negative, so ``sum`` = ``abs_sum``).
        median: side of the median filter window applied to the reduced map (0 = none; 3, 5 or
            7 pixels/voxels; Baur et al. 2021 post-process with a median filter).

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32, ``>= 0``.
    Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.RECONSTRUCTION})
    supports_3d: ClassVar[bool] = True

    def __init__(
        self, *, power: Literal[1, 2] = 1, reduce: Reduce = "mean", median: Literal[0, 3, 5, 7] = 0
    ) -> None:
        self.power: Literal[1, 2] = power
        self.reduce: Reduce = reduce
        self.median: Literal[0, 3, 5, 7] = median

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        fn = _model_function(model, "reconstruct")
        if fn is None:
            raise UserError(
                f"vae_residual: the model ({type(model.module).__name__}) has no reconstruct(x) "
                f"method; use a reconstruction model (e.g. vae)"
            )
        with explaining(model), torch.no_grad():
            recon = fn(x.detach())
        if not isinstance(recon, Tensor) or recon.shape != x.shape:
            shape = list(recon.shape) if isinstance(recon, Tensor) else type(recon).__name__
            raise UserError(
                f"vae_residual: reconstruct(x) must return x's shape {list(x.shape)}, got {shape}"
            )
        residual = (x.detach() - recon.to(x.dtype)).abs().pow(self.power)
        return finish(median_filter(reduce_channels(residual, self.reduce), self.median), x)


# -- methods on top of a base method ---------------------------------------------------------------
_BASE_NEEDS = frozenset({Capability.GRADIENTS})


def _base_method(owner: str, base: str, base_params: dict[str, Any] | None) -> Method:
    """Build the registered method ``base`` with ``base_params`` for ``owner``; UserError if not."""
    from .. import registry
    from ..params import validate_params

    try:
        cls = registry.methods.get(base)
    except UserError as exc:
        raise UserError(f"{owner}.base: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"{owner}.base: {base!r} is not an attribution method")
    if issubclass(cls, (IterativeSaliency, DominantClass)):
        raise UserError(f"{owner}.base: {base!r} is itself built on a base method; choose another")
    needs = frozenset(getattr(cls, "needs", frozenset()))
    if not needs <= _BASE_NEEDS:
        extra = ", ".join(sorted(str(c) for c in needs - _BASE_NEEDS))
        raise UserError(
            f"{owner}.base: {base!r} needs {extra}; choose a method that needs at most gradients "
            f"(e.g. saliency, input_x_gradient, integrated_gradients, smoothgrad, deconvnet)"
        )
    params, problems = validate_params(cls, dict(base_params or {}), f"{owner}.base_params")
    if problems:
        raise UserError("; ".join(problems))
    method: Method = cls(**params)
    return method


def inpaint(x: Tensor, region: Tensor) -> Tensor:
    """Fill ``region`` (bool ``[B, 1, *sp]``) of ``x`` ``[B, C, *sp]`` from the pixels around it.

    Normalized convolution (Knutsson & Westin, CVPR 1993) with RISE's Gaussian
    (``rise_blur_kernel``: 11 px, σ = 5): ``x̃ = G∗(x·k) / G∗k`` with ``k = 1 − region``, i.e. a
    Gaussian-weighted mean of the known pixels near each filled one; where no known pixel lies
    within the kernel, the per-image, per-channel mean of the known pixels. Pixels outside
    ``region`` are unchanged. 2D and 3D.
    """
    nsp = x.dim() - 2
    known = (~region).to(x.dtype)
    kernel = rise_blur_kernel(nsp).to(device=x.device, dtype=x.dtype)
    pad = kernel.shape[0] // 2
    conv = F.conv2d if nsp == 2 else F.conv3d
    c = x.shape[1]
    num = conv(x * known, kernel.expand(c, 1, *kernel.shape).contiguous(), padding=pad, groups=c)
    den = conv(known, kernel.expand(1, 1, *kernel.shape).contiguous(), padding=pad)
    spatial = tuple(range(2, x.dim()))
    mean = (x * known).sum(spatial, keepdim=True) / known.sum(spatial, keepdim=True).clamp_min(1)
    fill = torch.where(den > 1e-6, num / den.clamp_min(1e-6), mean)
    return torch.where(region, fill, x)


class IterativeSaliency(Method):
    """Visual evidence augmented by inpainting the most salient regions (González-Gonzalo 2022).

    González-Gonzalo, Liefers, van Ginneken, Sánchez, "Iterative Augmentation of Visual Evidence
    for Weakly-Supervised Lesion Localization in Deep Interpretability Frameworks: Application to
    Color Fundus Images", IEEE TMI 2020 (arXiv 1910.07373): a base attribution gives the first
    evidence; the regions it points at are removed by inpainting and the base method is applied
    again, which reveals less discriminative lesions the first map hid; this repeats until the
    classifier considers the image normal, and the maps are combined.

    benchbox's reading, with ``x_0 = x``, ``R_0 = ∅`` (removed pixels) and ``A = 0``:

    for ``t = 0 … T−1``:
        ``m_t = relu(base(x_t))`` normalized to a maximum of 1 per sample (later maps are
        fainter in absolute terms; the method's point is to make them count);
        ``A += m_t · 1[pixel ∉ R_t]`` (inpainted pixels carry no evidence of the image);
        ``R_{t+1} = R_t ∪`` the ``⌈fraction · N⌉`` pixels not in ``R_t`` with the largest
        3^d-box-smoothed ``m_t`` (smoothing makes the removed regions blobs, not speckle);
        ``x_{t+1} = inpaint(x, R_{t+1})`` (from the original pixels; ``inpaint`` is a
        normalized Gaussian convolution, a fast stand-in for the paper's inpainting);
        with ``stop_on_flip`` a sample stops once the model's prediction on ``x_{t+1}`` differs
        from its prediction on ``x`` ("considered normal"; the paper's stopping rule).

    Parameters:
        iterations: T, the maximum number of base maps per sample (sensitive).
        base: registered method name (needs at most gradients), default ``saliency``.
        base_params: the base's parameters, validated like a suite entry.
        fraction: share of the pixels removed per iteration (sensitive; lesion-sized: 0.02 of a
            64² image is 82 pixels).
        stop_on_flip: stop a sample when its prediction changes (else always T iterations).

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D if the base supports it) -> ``[B, 1, *sp]`` float32,
    in ``[0, T]``. Cost: T base calls and T forward passes. Deterministic if the base is; the
    generator is passed to the base.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(
        self,
        *,
        iterations: Count = 5,
        base: str = "saliency",
        base_params: dict[str, Any] | None = None,
        fraction: Annotated[float, Field(gt=0, lt=1)] = 0.02,
        stop_on_flip: bool = True,
    ) -> None:
        self.iterations = int(iterations)
        self.base = base
        self.base_params = dict(base_params or {})
        self.fraction = float(fraction)
        self.stop_on_flip = stop_on_flip
        self.base_method = _base_method("iterative_saliency", base, base_params)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        b, nsp = x.shape[0], x.dim() - 2
        spatial = tuple(range(2, x.dim()))
        n = math.prod(x.shape[2:])
        k = min(n, max(1, math.ceil(self.fraction * n)))
        pool = F.avg_pool2d if nsp == 2 else F.avg_pool3d
        removed = torch.zeros((b, 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        total = torch.zeros(removed.shape, dtype=torch.float32, device=x.device)
        current = x
        with explaining(model) as module, torch.no_grad():
            first_prediction = module(x).argmax(dim=1)
        for t in range(self.iterations):
            m = self.base_method.attribute(model, current, target, generator=generator)
            m = m.detach().float().clamp_min(0)
            peak = m.amax(dim=spatial, keepdim=True)
            m = torch.where(peak > 0, m / peak.clamp_min(torch.finfo(m.dtype).tiny), 0.0)
            keep = active.view(-1, *([1] * (x.dim() - 1))) & ~removed
            total = total + m * keep
            if t == self.iterations - 1:
                break
            smooth = pool(m, 3, stride=1, padding=1, count_include_pad=False)
            score = smooth.masked_fill(removed, -math.inf).flatten(1)
            chosen = torch.zeros_like(removed).flatten(1)
            chosen.scatter_(1, score.topk(k, dim=1).indices, True)
            grow = chosen.view_as(removed) & active.view(-1, *([1] * (x.dim() - 1)))
            removed = removed | grow
            current = torch.where(active.view(-1, *([1] * (x.dim() - 1))), inpaint(x, removed), x)
            if self.stop_on_flip:
                with explaining(model) as module, torch.no_grad():
                    active = active & (module(current).argmax(dim=1) == first_prediction)
            if not bool(active.any()):
                break
        return finish(total, x)


class DominantClass(Method):
    """Target evidence where the target is the pixel's dominant class (CLEAR, Kumar et al. 2017).

    Kumar, Wong, Taylor, "Explaining the Unexplained: A CLass-Enhanced Attentive Response
    (CLEAR) Approach to Understanding Deep Neural Networks", CVPR workshops 2017: per-class
    attentive response maps ``A_c`` (from deconvolution) are compared pixel by pixel; the
    *dominant class map* holds ``argmax_c A_c`` and the *dominant response map* its value.

    benchbox's reading: ``A_c = base(x, c)`` for every class ``c`` (one batched call over the
    ``B·K`` rows), and the map of target ``t`` is
    ``a = A_t · 1[A_t ≥ A_c for all c] · 1[A_t > 0]``: the target's evidence where the target
    dominates (ties count for the target), 0 where another class does. Bases with signed maps
    compare signed evidence. With one output (an anomaly score) the map is ``relu(A_0)``.

    Parameters:
        base: registered method name (needs at most gradients); default ``deconvnet``, CLEAR's
            deconvolution responses (``|·|``, max over channels).
        base_params: the base's parameters, validated like a suite entry.

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D if the base supports it) -> ``[B, 1, *sp]`` float32,
    ``>= 0``. Cost: K base attributions per sample. Deterministic if the base is; the generator
    is passed to the base.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, base: str = "deconvnet", base_params: dict[str, Any] | None = None):
        self.base = base
        self.base_params = dict(base_params or {})
        self.base_method = _base_method("dominant_class", base, base_params)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        classes = int(model.num_classes)
        if classes < 1:
            raise UserError(f"dominant_class: the model declares {classes} classes")

        def dominance(xc: Tensor, tc: Tensor) -> Tensor:
            b = xc.shape[0]
            rows = xc.repeat_interleave(classes, dim=0)
            every = torch.arange(classes, device=xc.device).repeat(b)
            maps = self.base_method.attribute(model, rows, every, generator=generator)
            maps = maps.detach().float().reshape(b, classes, *xc.shape[2:])
            own = maps.gather(1, tc.view(-1, *([1] * (xc.dim() - 1))).expand(b, 1, *xc.shape[2:]))
            wins = (own >= maps.amax(dim=1, keepdim=True)) & (own > 0)
            return own * wins

        out = in_chunks(dominance, x, target, max(1, rows_per_pass(x) // classes))
        return finish(out, x)
