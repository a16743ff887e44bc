"""Perturbation attributions: occlusion, feature ablation, LIME, KernelSHAP and RISE.

These methods only run the model forward: they hide parts of the input and watch the target score
``y_c`` (the model's logit for class ``target``; RISE uses the class probability by default, as in
its paper). Perturbations act on raw ``[0, 1]`` pixels: a hidden pixel takes the value of a
*reference image* (``baseline``: ``zero``, ``mean`` or ``blur``, see
``benchbox.methods.base.reference_image``). Every batch of perturbed inputs goes through
``benchbox.methods.base.in_chunks``, ``batch_size`` model rows per forward pass (CUDA
out-of-memory halves it), and perturbed inputs of different images share those passes.

Superpixels (feature ablation, LIME, KernelSHAP): ``segments="slic"`` runs scikit-image's SLIC
(Achanta et al. 2012) on each image, on the CPU: segmentation is inherently per image. It works
on 2D images and volumes (``channel_axis=None`` for one channel), with ``convert2lab=False`` so
that ``compactness`` means the same for every channel count: intensities are in [0, 1], so
``compactness ≈ 0.1`` balances intensity and space like SLIC's usual 10 does in Lab units
(0–100); the image is smoothed by a Gaussian of 1 pixel first (SLIC's ``sigma``), without
which noisy images shatter into speckles that SLIC's connectivity step merges into a single
segment. Label maps are cached by image content (a few hundred images), so a metric that
re-explains the same images (e.g. on a randomized model) does not segment them again.
``segments="grid"`` cuts the image into ``round(n_segments^(1/d))`` equal cells per spatial dim.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from ..core import ExplainedModel, Method
from ..errors import UserError
from ..params import Count, Size
from .base import (
    Reference,
    Score,
    check_inputs,
    explaining,
    finish,
    in_chunks,
    reference_image,
    target_score,
)

__all__ = [
    "RISE",
    "FeatureAblation",
    "KernelShap",
    "Lime",
    "Occlusion",
    "Segments",
    "rise_masks",
    "superpixels",
]

Segments = Literal["slic", "grid"]


# -- superpixels ----------------------------------------------------------------------------------
_SLIC_CACHE: OrderedDict[tuple[str, int, float], np.ndarray] = OrderedDict()
_SLIC_CACHE_ELEMENTS = 1 << 24  # int32 labels: at most 64 MiB
# Gaussian pre-smoothing (pixels): without it, SLIC at low compactness shatters a noisy image
# into speckles that connectivity enforcement merges into one segment (measured: 16x16 noise,
# 12 segments asked, 1 returned; with sigma=1: 8-9, and the same 98-100% lesion purity on
# synthetic_lesions_2d).
_SLIC_SIGMA = 1.0


def _slic(image: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC labels ``0..M-1`` (int32, contiguous) of one ``[C, *sp]`` float image."""
    from skimage.segmentation import slic

    key = (
        hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape),
        n_segments,
        compactness,
    )
    hit = _SLIC_CACHE.get(key)
    if hit is not None:
        _SLIC_CACHE.move_to_end(key)
        return hit
    if image.shape[0] == 1:
        data, axis = image[0], None
    else:
        data, axis = np.moveaxis(image, 0, -1), -1
    raw = slic(
        data,
        n_segments=n_segments,
        compactness=compactness,
        sigma=_SLIC_SIGMA,
        convert2lab=False,
        start_label=0,
        channel_axis=axis,
    )
    _, labels = np.unique(raw, return_inverse=True)
    labels = labels.reshape(raw.shape).astype(np.int32)
    _SLIC_CACHE[key] = labels
    while sum(v.size for v in _SLIC_CACHE.values()) > _SLIC_CACHE_ELEMENTS and _SLIC_CACHE:
        _SLIC_CACHE.popitem(last=False)
    return labels


def _grid(spatial: tuple[int, ...], n_segments: int, device: torch.device) -> Tensor:
    """Labels ``[*sp]`` of ``round(n^(1/d))`` equal cells per dim (at most one per pixel)."""
    per_dim = max(1, round(n_segments ** (1 / len(spatial))))
    labels = torch.zeros(spatial, dtype=torch.long, device=device)
    for d, size in enumerate(spatial):
        cells = min(per_dim, size)
        idx = torch.arange(size, device=device) * cells // size
        view = [1] * len(spatial)
        view[d] = size
        labels = labels * cells + idx.view(view)
    return labels


def superpixels(
    x: Tensor, kind: Segments, n_segments: int, compactness: float
) -> tuple[Tensor, list[int]]:
    """Segment labels ``[B, *sp]`` (long, on ``x``'s device, ``0..M_b-1``) and each ``M_b``."""
    b, spatial = x.shape[0], tuple(x.shape[2:])
    if kind == "grid":
        labels = _grid(spatial, n_segments, x.device)
        m = int(labels.max()) + 1
        return labels.expand(b, *spatial).contiguous(), [m] * b
    if kind == "slic":
        images = x.detach().float().cpu().numpy()
        maps = [_slic(img, n_segments, compactness) for img in images]
        seg = torch.from_numpy(np.stack(maps)).to(device=x.device, dtype=torch.long)
        return seg, [int(m.max()) + 1 for m in maps]
    raise ValueError(f"segments must be 'slic' or 'grid', got {kind!r}")


# -- batched evaluation of perturbed inputs -------------------------------------------------------
def _scores_of_coalitions(
    module: nn.Module,
    x: Tensor,
    ref: Tensor,
    target: Tensor,
    seg: Tensor,
    coalitions: list[Tensor],
    batch_size: int,
) -> list[Tensor]:
    """``y_c(x ⊙ z[seg] + ref ⊙ (1 − z[seg]))`` for every row ``z`` of every image's coalitions.

    ``coalitions[b]`` is a bool ``[n_b, M_b]`` matrix (``True`` = superpixel kept). Rows of all
    images are evaluated together, ``batch_size`` at a time; returns float64 CPU ``[n_b]`` each.
    """
    counts = [int(z.shape[0]) for z in coalitions]
    width = max([1] + [int(z.shape[1]) for z in coalitions])
    keep = torch.zeros(sum(counts), width, dtype=torch.bool, device=x.device)
    start = 0
    for z, n in zip(coalitions, counts, strict=True):
        keep[start : start + n, : z.shape[1]] = z.to(x.device)
        start += n
    row_image = torch.repeat_interleave(
        torch.arange(len(counts), device=x.device), torch.tensor(counts, device=x.device)
    )
    seg_flat = seg.flatten(1)

    def scores(rows: Tensor, row_target: Tensor) -> Tensor:
        img = row_image[rows]
        mask = keep[rows].gather(1, seg_flat[img]).view(len(rows), 1, *x.shape[2:])
        with torch.no_grad():
            logits = module(torch.where(mask, x[img], ref[img]))
        return target_score(logits, row_target, "logit").float()

    rows = torch.arange(len(row_image), device=x.device)
    out = in_chunks(scores, rows, target[row_image], size=batch_size)
    return list(out.double().cpu().split(counts))


def _paint(coefs: list[Tensor], seg: Tensor) -> Tensor:
    """Map ``[B, 1, *sp]``: each pixel gets its superpixel's coefficient ``coefs[b]`` ``[M_b]``."""
    width = max(int(c.numel()) for c in coefs)
    table = torch.zeros(len(coefs), width, dtype=torch.float64)
    for b, c in enumerate(coefs):
        table[b, : c.numel()] = c
    table = table.to(device=seg.device, dtype=torch.float32)
    return table.gather(1, seg.flatten(1)).view(seg.shape[0], 1, *seg.shape[1:])


# -- regressions (float64, CPU) -------------------------------------------------------------------
def weighted_ridge(z: Tensor, y: Tensor, w: Tensor, alpha: float) -> Tensor:
    """Coefficients ``β`` ``[M]`` of ``min Σ_i w_i (y_i − b − z_i·β)² + α ||β||²`` (intercept free).

    This is sklearn's ``Ridge(alpha).fit(z, y, sample_weight=w)``, the lime package's model:
    centre ``z`` and ``y`` on their ``w``-weighted means (which eliminates ``b``), then
    ``β = (Z_cᵀ W Z_c + α I)⁻¹ Z_cᵀ W y_c`` (minimum-norm if singular). Inputs float64 ``z``
    ``[n, M]``, ``y``, ``w`` ``[n]``.
    """
    p = w / w.sum()
    zc = z - (p[:, None] * z).sum(dim=0)
    yc = y - (p * y).sum()
    gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=z.dtype)
    # lstsq (gelsd) rather than solve: with alpha = 0 a superpixel kept in every sample makes
    # the system singular, and the minimum-norm solution then gives it 0.
    rhs = (zc.T @ (w * yc))[:, None]
    return torch.linalg.lstsq(gram, rhs, driver="gelsd").solution[:, 0]


def shapley_kernel_solve(z: Tensor, y: Tensor, w: Tensor, f_ref: float, f_x: float) -> Tensor:
    """KernelSHAP's constrained weighted least squares: ``φ`` ``[M]`` with ``Σφ = f(x) − f(ref)``.

    Minimizes ``Σ_i w_i (y_i − f_ref − z_i·φ)²`` subject to efficiency ``Σ_j φ_j = f_x − f_ref``
    (the kernel's infinite weights on the empty and full coalitions), by eliminating the last
    feature, as the shap package does: ``y_i − f_ref − z_iM Δ = Σ_{j<M} φ_j (z_ij − z_iM)``. Solved
    by ``lstsq`` (gelsd), which returns the minimum-norm solution if the samples do not determine
    ``φ``. Inputs float64 ``z`` ``[n, M]`` (0/1), ``y``, ``w`` ``[n]``.
    """
    delta = f_x - f_ref
    m = z.shape[1]
    if m == 1:
        return torch.tensor([delta], dtype=torch.float64)
    root = w.sqrt()
    design = (z[:, :-1] - z[:, -1:]) * root[:, None]
    rhs = (y - f_ref - z[:, -1] * delta) * root
    head = torch.linalg.lstsq(design, rhs[:, None], driver="gelsd").solution[:, 0]
    return torch.cat([head, (delta - head.sum()).view(1)])


# -- methods --------------------------------------------------------------------------------------
def _rows_plan(batch_size: int, perturbations: int) -> tuple[int, int]:
    """(images per pass, perturbations per image per pass): at most ``batch_size`` model rows.

    On CUDA out-of-memory ``in_chunks`` halves the images per pass while the perturbations per
    image stay, so the rows per pass halve too.
    """
    per_image = max(1, min(perturbations, batch_size))
    return max(1, batch_size // per_image), per_image


class Occlusion(Method):
    """Occlusion: mean drop of y_c when a sliding window is replaced by a baseline (Zeiler 2014).

    A ``window``-sized patch (a square, a cube for volumes; all channels at once) slides over the
    image with step ``stride``; for every position ``p``, ``Δ_p = y_c(x) − y_c(x with the patch
    set to the baseline)``; a pixel's attribution is the mean ``Δ_p`` over the positions whose
    patch covers it. Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014 (arXiv 1311.2901), with a grey square. Computed with ``captum.attr.Occlusion``:
    positions start at 0 and step by ``stride``; the last ones are clipped at the border, so every
    pixel is covered. ``ceil((L − window)/stride) + 1`` positions per dim of size ``L``.

    Parameters (sensitive: the map's resolution is ``stride`` and its blur ``window``):
        window: patch side in pixels (must not exceed the image).
        stride: step between patches (``<= window``).
        baseline: what a hidden pixel becomes (``zero``, ``mean``, ``blur``).
        batch_size: model rows per forward pass (Captum's ``perturbations_per_eval`` × images).

    Signed: ``Δ < 0`` where hiding the patch raises the score. With ``window=1`` on a linear model
    the map is ``Σ_c w_c ⊙ (x_c − baseline_c)``. Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]``
    float32; 2D and 3D. Deterministic; the generator is unused.
    """

    supports_3d: ClassVar[bool] = True

    def __init__(
        self,
        *,
        window: Size = 8,
        stride: Size = 4,
        baseline: Reference = "zero",
        batch_size: Size = 256,
    ) -> None:
        if stride > window:
            raise UserError(
                f"occlusion.stride: {stride} is larger than window {window}, which leaves "
                f"pixels uncovered; use stride <= {window}"
            )
        self.window = int(window)
        self.stride = int(stride)
        self.baseline: Reference = baseline
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import Occlusion as CaptumOcclusion

        check_inputs(x, target)
        spatial = tuple(x.shape[2:])
        if self.window > min(spatial):
            raise UserError(
                f"occlusion.window: {self.window} exceeds the image size {spatial}; use "
                f"window <= {min(spatial)}"
            )
        x = x.detach()
        ref = reference_image(x, self.baseline)
        nd, c = len(spatial), x.shape[1]
        positions = math.prod(math.ceil((n - self.window) / self.stride) + 1 for n in spatial)
        images, per_eval = _rows_plan(self.batch_size, positions)
        with explaining(model) as module:
            occlusion = CaptumOcclusion(module)

            def run(idx: Tensor, t: Tensor) -> Tensor:
                with torch.no_grad():
                    attr = occlusion.attribute(
                        x[idx],
                        sliding_window_shapes=(c,) + (self.window,) * nd,
                        strides=(c,) + (self.stride,) * nd,
                        baselines=ref[idx],
                        target=t,
                        perturbations_per_eval=per_eval,
                    )
                # The window spans every channel, so all channels carry the same value.
                return attr[:, :1]

            out = in_chunks(run, torch.arange(x.shape[0], device=x.device), target, size=images)
        return finish(out, x)


class _SuperpixelMethod(Method):
    """Shared by the methods that switch superpixels on and off (see the module docstring)."""

    supports_3d: ClassVar[bool] = True
    segments: Segments
    n_segments: int
    compactness: float
    baseline: Reference
    batch_size: int

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor, list[int]]:
        seg, counts = superpixels(x, self.segments, self.n_segments, self.compactness)
        return reference_image(x, self.baseline), seg, counts

    def _scores(
        self,
        model: ExplainedModel,
        x: Tensor,
        ref: Tensor,
        target: Tensor,
        seg: Tensor,
        coalitions: list[Tensor],
    ) -> list[Tensor]:
        with explaining(model) as module:
            return _scores_of_coalitions(module, x, ref, target, seg, coalitions, self.batch_size)


class FeatureAblation(_SuperpixelMethod):
    """Feature ablation: y_c drop when one superpixel is replaced by a baseline (Captum's method).

    ``a[p] = y_c(x) − y_c(x with segment S(p) set to the baseline)``: every pixel gets the drop
    of its own segment ``S(p)`` (SLIC superpixels or grid cells; see the module docstring). The
    leave-one-out ("ablation") attribution of Zeiler & Fergus's occlusion study applied to
    superpixels; equals ``captum.attr.FeatureAblation`` with the segment map as ``feature_mask``.
    All ``Σ_b M_b`` ablated inputs of the batch are evaluated together.

    Parameters:
        segments: ``slic`` (per-image superpixels) or ``grid`` (equal cells).
        n_segments: approximate number of segments (exact ``round(n^(1/d))^d`` for a grid).
        compactness: SLIC's intensity/space balance (raw [0, 1] intensities; ignored by grid).
        baseline: what an ablated pixel becomes (``zero``, ``mean``, ``blur``).
        batch_size: model rows per forward pass.

    Signed; on a linear model ``a[p] = Σ_{q ∈ S(p)} w_q (x_q − baseline_q)`` (summed over
    channels). Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused.
    """

    def __init__(
        self,
        *,
        segments: Segments = "slic",
        n_segments: Count = 50,
        compactness: Annotated[float, Field(gt=0)] = 0.1,
        baseline: Reference = "zero",
        batch_size: Size = 256,
    ) -> None:
        self.segments: Segments = segments
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.baseline: Reference = baseline
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        ref, seg, counts = self._prepare(x)
        # Row 0 keeps everything (y_c(x)); row j+1 drops segment j.
        coalitions = [
            torch.cat([torch.ones(1, m, dtype=torch.bool), ~torch.eye(m).bool()]) for m in counts
        ]
        scores = self._scores(model, x, ref, target, seg, coalitions)
        return finish(_paint([s[0] - s[1:] for s in scores], seg), x)


class Lime(_SuperpixelMethod):
    """LIME: a weighted ridge regression of y_c on which superpixels are kept (Ribeiro et al. 2016).

    For each image, ``n_samples`` coalitions ``z ∈ {0, 1}^M`` (superpixel kept or set to the
    baseline) are drawn uniformly, the first being all ones (the image itself, as in the lime
    package); each is weighted by ``π(z) = sqrt(exp(−D(z)² / σ²))`` with ``D`` the cosine
    distance between ``z`` and the all-ones vector and ``σ = kernel_width`` (the lime package's
    kernel; the paper writes ``exp(−D²/σ²)``). The map paints each superpixel with its
    coefficient in ``min Σ π(z) (y_c(z) − b − z·β)² + alpha ||β||²`` (the package's
    ``Ridge(alpha=1)``). Ribeiro, Singh, Guestrin, "Why Should I Trust You?", KDD 2016
    (arXiv 1602.04938). Own batched implementation (coalitions of all images share forward
    passes; the regression is solved in float64 on the CPU); the lime package's feature selection
    is not applied (it keeps every feature at its defaults for images).

    Randomness: each image's coalitions are drawn from ``generator`` in batch order (on the
    generator's device), so a batch gives the maps of its samples explained one by one with the
    same generator.

    Parameters:
        n_samples: coalitions per image (sensitive: the coefficients' noise falls as 1/√n).
        segments, n_segments, compactness: the superpixels (see ``FeatureAblation``).
        baseline: what a hidden superpixel becomes (lime: the superpixel's mean colour; here a
            ``reference_image``).
        kernel_width: ``σ`` of the locality kernel.
        alpha: ridge penalty.
        batch_size: model rows per forward pass.

    Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32; 2D and 3D. Signed.
    """

    def __init__(
        self,
        *,
        n_samples: Count = 1000,
        segments: Segments = "slic",
        n_segments: Count = 50,
        compactness: Annotated[float, Field(gt=0)] = 0.1,
        baseline: Reference = "zero",
        kernel_width: Annotated[float, Field(gt=0)] = 0.25,
        alpha: Annotated[float, Field(ge=0)] = 1.0,
        batch_size: Size = 256,
    ) -> None:
        self.n_samples = int(n_samples)
        self.segments: Segments = segments
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.baseline: Reference = baseline
        self.kernel_width = float(kernel_width)
        self.alpha = float(alpha)
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        ref, seg, counts = self._prepare(x)
        coalitions = []
        for m in counts:
            z = torch.rand(self.n_samples, m, generator=generator, device=generator.device) < 0.5
            z[0] = True
            coalitions.append(z.cpu())
        scores = self._scores(model, x, ref, target, seg, coalitions)
        coefs = []
        for z, y in zip(coalitions, scores, strict=True):
            zf = z.double()
            kept = zf.sum(dim=1)
            # Cosine similarity to the all-ones vector: |z| / (sqrt(|z|) sqrt(M)); 0 for z = 0,
            # like sklearn's cosine distance of a zero vector.
            cos = kept.sqrt() / math.sqrt(zf.shape[1])
            w = torch.exp(-((1.0 - cos) ** 2) / (2 * self.kernel_width**2))
            coefs.append(weighted_ridge(zf, y, w, self.alpha))
        return finish(_paint(coefs, seg), x)


def shapley_coalitions(m: int, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """KernelSHAP's coalitions ``z`` bool ``[n', m]`` and their regression weights ``[n']``.

    If ``2^m − 2 <= n``, every coalition except the empty and the full one, weighted by the
    Shapley kernel ``π(z) = (m − 1) / (C(m, |z|) |z| (m − |z|))``: the regression then returns
    the exact Shapley values. Otherwise ``n`` coalitions sampled from the kernel (size ``s`` with
    probability ``∝ (m − 1) / (s (m − s))``, then a uniform subset of that size) in
    complementary pairs ``(z, 1 − z)`` (as the shap package does), each with weight 1.
    """
    if m < 2:
        return torch.zeros(0, m, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
    if m < 31 and 2**m - 2 <= n:
        codes = torch.arange(1, 2**m - 1)
        z = ((codes[:, None] >> torch.arange(m)) & 1).bool()
        s = z.sum(dim=1).double()
        comb = torch.tensor([math.comb(m, int(k)) for k in s], dtype=torch.float64)
        return z, (m - 1) / (comb * s * (m - s))
    dev = generator.device
    sizes = torch.arange(1, m, device=dev)
    q = ((m - 1) / (sizes * (m - sizes))).double()
    half = (n + 1) // 2
    s = sizes[torch.multinomial(q, half, replacement=True, generator=generator)]
    u = torch.rand(half, m, generator=generator, device=dev)
    z = u.argsort(dim=1).argsort(dim=1) < s[:, None]
    return torch.cat([z, ~z])[:n].cpu(), torch.ones(n, dtype=torch.float64)


class KernelShap(_SuperpixelMethod):
    """KernelSHAP: superpixel Shapley values by kernel-weighted regression (Lundberg & Lee 2017).

    The Shapley value ``φ_j`` of superpixel ``j`` for ``v(S) = y_c(x with the superpixels outside
    S set to the baseline)`` is estimated by the weighted least squares of Lundberg & Lee, "A
    Unified Approach to Interpreting Model Predictions", NeurIPS 2017 (arXiv 1705.07874),
    Theorem 2: ``min Σ_z π(z) (v(z) − φ_0 − z·φ)²`` with the Shapley kernel ``π``, whose
    infinite weights on the empty and full coalitions are imposed as constraints ``φ_0 =
    v(∅)``, ``Σ φ = v(all) − v(∅)`` (see ``shapley_kernel_solve``). Coalitions come from
    ``shapley_coalitions``: all of them (exact Shapley values) when ``2^M − 2 <= n_samples``,
    else ``n_samples`` drawn from the kernel in complementary pairs. For a model that is linear
    in the kept pixels the map is exact: ``φ_j = Σ_{p ∈ j} w_p (x_p − baseline_p)`` as soon as
    the samples span the ``M`` superpixels. Own batched implementation (Captum's ``KernelShap``
    loops over samples in Python and needs scikit-learn).

    Randomness: each image's coalitions are drawn from ``generator`` in batch order (on the
    generator's device), so a batch gives the maps of its samples explained one by one.

    Parameters:
        n_samples: coalitions per image (besides the empty and the full one); at least ``2M``
            is advisable, fewer leave the minimum-norm solution of an underdetermined problem.
        segments, n_segments, compactness: the superpixels (see ``FeatureAblation``).
        baseline: what a hidden superpixel becomes.
        batch_size: model rows per forward pass.

    Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32; 2D and 3D. Signed; the map sums to
    ``y_c(x) − y_c(baseline)`` over superpixels (efficiency).
    """

    def __init__(
        self,
        *,
        n_samples: Count = 1000,
        segments: Segments = "slic",
        n_segments: Count = 50,
        compactness: Annotated[float, Field(gt=0)] = 0.1,
        baseline: Reference = "zero",
        batch_size: Size = 256,
    ) -> None:
        self.n_samples = int(n_samples)
        self.segments: Segments = segments
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.baseline: Reference = baseline
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        ref, seg, counts = self._prepare(x)
        drawn = [shapley_coalitions(m, self.n_samples, generator) for m in counts]
        # Rows 0 and 1 are the full and the empty coalition: v(all) = y_c(x), v(∅) = y_c(ref).
        coalitions = [
            torch.cat([torch.ones(1, m, dtype=torch.bool), torch.zeros(1, m, dtype=torch.bool), z])
            for m, (z, _) in zip(counts, drawn, strict=True)
        ]
        scores = self._scores(model, x, ref, target, seg, coalitions)
        coefs = [
            shapley_kernel_solve(z.double(), y[2:], w, float(y[1]), float(y[0]))
            for (z, w), y in zip(drawn, scores, strict=True)
        ]
        return finish(_paint(coefs, seg), x)


# -- RISE -----------------------------------------------------------------------------------------
def _resize_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` float64 weights of 1D linear resizing with mirrored borders.

    scipy's ``ndimage.zoom(order=1, mode="mirror", grid_mode=True)``, which skimage's
    ``resize(order=1, mode="reflect")`` calls: output pixel ``o`` samples the input at
    ``(o + 0.5) · n_in / n_out − 0.5`` (pixel centres), and indices beyond the border are
    mirrored about the edge pixels (``−1 -> 1``, ``n_in -> n_in − 2``).
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5
    left = src.floor()
    frac = src - left
    period = 2 * (n_in - 1)

    def mirror(i: Tensor) -> Tensor:
        i = i.long().abs() % period
        return torch.where(i >= n_in, period - i, i)

    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, mirror(left)), 1 - frac, accumulate=True)
    weights.index_put_((rows, mirror(left + 1)), frac, accumulate=True)
    return weights


def rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, ...]) -> Tensor:
    """RISE masks ``[R, 1, *size]`` from binary grids ``[R, *(s,)*d]`` and shifts ``[R, d]``.

    Petsiuk et al.'s ``generate_masks``: with ``cell = ceil(size / s)``, the ``s^d`` grid is
    resized to ``(s + 1) · cell`` by skimage's ``resize(order=1, mode="reflect",
    anti_aliasing=False)`` and cropped to ``size`` at ``shift`` (``0 <= shift < cell``). Linear
    resizing is separable, so here each dim's resize is a ``[(s + 1)·cell, s]`` matrix (see
    ``_resize_matrix``), cropped per row at its shift, and the mask is the grid contracted with
    one cropped matrix per dim: the same numbers, batched on the grids' device.
    """
    nd = len(size)
    s = grids.shape[1]
    g = grids.to(torch.float32)
    factors = []
    for d, n in enumerate(size):
        cell = math.ceil(n / s)
        weights = _resize_matrix(s, (s + 1) * cell).to(device=grids.device, dtype=torch.float32)
        idx = shifts[:, d : d + 1] + torch.arange(n, device=grids.device)  # [R, n]
        factors.append(weights[idx])  # [R, n, s]
    if nd == 2:
        out = torch.einsum("rai,rij,rbj->rab", factors[0], g, factors[1])
    elif nd == 3:
        out = torch.einsum("rai,rijk,rbj,rck->rabc", factors[0], g, factors[1], factors[2])
    else:
        raise ValueError(f"rise: expected 2 or 3 spatial dims, got size {size}")
    return out.unsqueeze(1)


class RISE(Method):
    """RISE: Σ_i f_c(x ⊙ M_i) M_i / (N·p) over random smooth masks (Petsiuk et al. 2018).

    ``N = n_masks`` masks per image: a random ``grid^d`` binary grid (each cell kept with
    probability ``p``), upsampled bilinearly (trilinearly for volumes) with a random shift (see
    ``rise_masks``: the paper's protocol); the masked input is ``M ⊙ x + (1 − M) ⊙ baseline``
    (the paper: ``M ⊙ x`` on the normalized image, i.e. a mean-colour fill). The saliency is the
    Monte-Carlo estimate ``S = Σ_i f_c(x_i') M_i / (N·p)`` of ``E[f_c(x ⊙ M) | M(p) = 1]``, with
    ``f_c`` the class probability (the paper; ``score="logit"`` possible). Petsiuk, Das,
    Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018
    (arXiv 1806.07421).

    Randomness: each image draws its own ``N`` grids and shifts from ``generator`` in batch
    order (on the generator's device; the paper shares one set of masks across images), so a
    batch gives the maps of its samples explained one by one. Masks are built on ``x``'s device,
    ``batch_size`` at a time, and never all held at once.

    Parameters:
        n_masks: ``N`` (sensitive: the noise falls as 1/√N; the paper used 4000–8000).
        grid: ``s``, cells per side (sensitive: the map's resolution).
        p: probability that a cell is kept.
        score: ``probability`` (softmax; sigmoid for one output) or ``logit``.
        baseline: what a masked pixel becomes (``zero``, ``mean``, ``blur``).
        batch_size: masked inputs per forward pass.

    Shapes: ``x`` ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32; 2D and 3D. Non-negative for
    ``score="probability"``.
    """

    supports_3d: ClassVar[bool] = True

    def __init__(
        self,
        *,
        n_masks: Count = 2000,
        grid: Annotated[Size, Field(ge=2)] = 8,
        p: Annotated[float, Field(gt=0, lt=1)] = 0.5,
        score: Score = "probability",
        baseline: Reference = "zero",
        batch_size: Size = 256,
    ) -> None:
        self.n_masks = int(n_masks)
        self.grid = int(grid)
        self.p = float(p)
        self.score: Score = score
        self.baseline: Reference = baseline
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        b, n = x.shape[0], self.n_masks
        size = tuple(int(v) for v in x.shape[2:])
        nd = len(size)
        cell = torch.tensor([math.ceil(v / self.grid) for v in size], device=generator.device)
        grids, shifts = [], []
        for _ in range(b):
            grid_shape = (n,) + (self.grid,) * nd
            u = torch.rand(grid_shape, generator=generator, device=generator.device)
            grids.append(u < self.p)
            v = torch.rand(n, nd, generator=generator, device=generator.device)
            shifts.append((v * cell).floor().long().minimum(cell - 1))
        all_grids = torch.stack(grids).to(x.device)  # [B, N, *grid]
        all_shifts = torch.stack(shifts).to(x.device)  # [B, N, d]
        ref = reference_image(x, self.baseline)

        def masks(rows: Tensor) -> tuple[Tensor, Tensor]:
            img, i = rows // n, rows % n
            return img, rise_masks(all_grids[img, i], all_shifts[img, i], size)

        with explaining(model) as module:

            def scores(rows: Tensor, row_target: Tensor) -> Tensor:
                img, m = masks(rows)
                with torch.no_grad():
                    logits = module(ref[img] + m * (x[img] - ref[img]))
                return target_score(logits, row_target, self.score).float()

            rows = torch.arange(b * n, device=x.device)
            s = in_chunks(scores, rows, target.repeat_interleave(n), size=self.batch_size)
        saliency = torch.zeros(b, 1, *size, device=x.device)
        for start in range(0, b * n, self.batch_size):
            chunk = rows[start : start + self.batch_size]
            img, m = masks(chunk)
            weighted = s[chunk].view((-1,) + (1,) * (nd + 1)) * m
            saliency.index_add_(0, img, weighted)
        return finish(saliency / (n * self.p), x)
