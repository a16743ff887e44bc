"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, Guided Grad-CAM and Score-CAM.

Every map here is a weighted sum of the feature maps ``A`` ``[B, K, *h]`` of one named layer,
``L = ReLU(Σ_k α_k A_k)`` ``[B, 1, *h]``, resized to the input's spatial size by bilinear
(trilinear for volumes) interpolation with ``align_corners=False``; the methods differ only in the
weights ``α_k``. They work on 2D images and on volumes alike (``supports_3d``), as long as the
layer outputs ``[B, K, *h]`` with as many spatial dims as the input.

Model conventions (``benchbox.core.ExplainedModel``):

- ``target_layers[name]`` is the feature layer; ``"auto"`` is the model's default, the last
  convolutional block, whose output feeds global average pooling in a GAP network.
- CAM also needs the classifier head: it is the **last** ``nn.Linear`` of ``model.module`` (in
  registration order), which must map the layer's ``K`` channels to ``num_classes`` scores, and
  the model's output must equal ``head(GAP(A))`` (both are checked on every call). Models that
  satisfy this declare ``Capability.GAP_HEAD``.

The target score ``y_c`` is the model's logit for class ``target`` unless a method says otherwise
(Score-CAM uses the class probability, as in its paper).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from ..params import Size
from .base import (
    Reduce,
    Score,
    check_inputs,
    explaining,
    finish,
    in_chunks,
    reduce_channels,
    target_score,
)

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "GuidedGradCAM", "ScoreCAM"]


# -- shared pieces --------------------------------------------------------------------------------
def upsample(maps: Tensor, x: Tensor) -> Tensor:
    """Resize ``maps`` ``[B, 1, *h]`` to ``x``'s spatial size: bilinear / trilinear, no corners."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(maps.float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False)


def _check_layer_output(a: object, x: Tensor, method: str, layer: str) -> Tensor:
    if not isinstance(a, Tensor) or a.dim() != x.dim() or a.shape[0] != x.shape[0]:
        shape = list(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise UserError(
            f"{method}.layer: target layer {layer!r} must output [B, K, *spatial] with the "
            f"input's {x.dim() - 2} spatial dims, got {shape}; name a convolutional layer"
        )
    return a


@contextmanager
def _capture(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Collect ``layer``'s forward outputs while the block runs; the hook is always removed."""
    outputs: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _activations(
    module: nn.Module, layer: nn.Module, x: Tensor, *, method: str, layer_name: str
) -> tuple[Tensor, Tensor]:
    """``(A [B, K, *h], logits [B, num_classes])`` of one forward pass, without gradients."""
    with torch.no_grad(), _capture(layer) as outs:
        logits = module(x)
    if len(outs) != 1:
        raise UserError(
            f"{method}.layer: target layer {layer_name!r} ran {len(outs)} times in one forward "
            "pass; name a layer that runs exactly once"
        )
    return _check_layer_output(outs[0], x, method, layer_name), logits


def _activations_and_grads(
    module: nn.Module, layer: nn.Module, x: Tensor, target: Tensor, *, method: str, layer_name: str
) -> tuple[Tensor, Tensor]:
    """``(A, ∂y_c/∂A)``, both ``[B, K, *h]``, for the target logits ``y_c``.

    Samples are independent in eval mode, so the gradient of ``Σ_b y_{b, c_b}`` gives every
    sample's own gradient in one backward pass. The parameters are frozen by ``explaining``, so
    the input is made a leaf that requires grad to give ``A`` a graph.
    """
    inp = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _capture(layer) as outs:
        logits = module(inp)
        if len(outs) != 1:
            raise UserError(
                f"{method}.layer: target layer {layer_name!r} ran {len(outs)} times in one "
                "forward pass; name a layer that runs exactly once"
            )
        a = _check_layer_output(outs[0], x, method, layer_name)
        (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    return a.detach(), grads.detach()


def _combine(weights: Tensor, a: Tensor, relu: bool, x: Tensor) -> Tensor:
    """``Up(ReLU(Σ_k w_k A_k))`` for ``weights`` ``[B, K]`` and ``A`` ``[B, K, *h]``."""
    cam = torch.einsum("bk,bk...->b...", weights, a).unsqueeze(1)
    if relu:
        cam = F.relu(cam)
    return upsample(cam, x)


# -- methods --------------------------------------------------------------------------------------
class CAM(Method):
    """CAM: Σ_k w_{c,k} A_k with the linear head's weights on a GAP network (Zhou et al. 2016).

    ``CAM_c = Σ_k w_{c,k} A_k`` where ``A`` ``[B, K, h, w]`` is the output of the feature layer
    that feeds global average pooling and ``w`` ``[num_classes, K]`` the weight of the linear head
    (bias ignored), so that ``y_c = mean_{u,v} CAM_c[u, v] + b_c``. Zhou, Khosla, Lapedriza,
    Oliva, Torralba, "Learning Deep Features for Discriminative Localization", CVPR 2016
    (arXiv 1512.04150). No gradients are needed: one forward pass.

    Head convention: the feature layer is ``model.target_layers[layer]`` (``"auto"``: the layer
    feeding GAP) and the head is the last ``nn.Linear`` of ``model.module``; it must map ``K``
    features to ``num_classes`` and the model's output must equal ``head(GAP(A))`` (checked, with
    tolerance ``1e-4 · (1 + max |y|)``), else a ``UserError`` says to use ``grad_cam``. On such a
    network Grad-CAM's weights are ``w_{c,k} / (h·w)``, so ``grad_cam = cam / (h·w)``.

    Parameters:
        layer: the feature layer's name (``ExplainedModel.target_layers``).
        relu: apply a ReLU to the map (default, as Grad-CAM does). Zhou et al. show the raw map
            min-max normalized; ``relu=False`` keeps it signed.

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.TARGET_LAYER, Capability.GAP_HEAD})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, layer: str = "auto", relu: bool = True) -> None:
        self.layer = layer
        self.relu = relu

    @staticmethod
    def head(model: ExplainedModel, channels: int) -> nn.Linear:
        """The model's classifier head: its last ``nn.Linear``, checked to map K -> classes."""
        linears = [m for m in model.module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError(
                "cam: the model has no nn.Linear classifier head; CAM needs conv features -> "
                "global average pooling -> linear; use grad_cam for other models"
            )
        head = linears[-1]
        if head.in_features != channels or head.out_features != model.num_classes:
            raise UserError(
                f"cam: the model's last nn.Linear maps {head.in_features} -> "
                f"{head.out_features}, but the target layer has {channels} channels and the "
                f"model {model.num_classes} classes; CAM needs a GAP head on the target layer "
                "(use grad_cam otherwise)"
            )
        return head

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        layer = model.target_layer(self.layer)
        with explaining(model) as module:
            a, logits = _activations(module, layer, x.detach(), method="cam", layer_name=self.layer)
            head = self.head(model, a.shape[1])
            with torch.no_grad():
                pooled = a.mean(dim=tuple(range(2, a.dim())))
                refit = head(pooled)
            tol = 1e-4 * (1.0 + float(logits.abs().max()))
            if refit.shape != logits.shape or (refit - logits).abs().max() > tol:
                raise UserError(
                    f"cam: the model's output is not head(GAP(layer {self.layer!r})); CAM needs "
                    "the layer that feeds global average pooling and the last nn.Linear; use "
                    "layer: auto or the method grad_cam"
                )
            weights = head.weight.detach()[target].to(a.dtype)  # [B, K]
        return finish(_combine(weights, a, self.relu, x), x)


class GradCAM(Method):
    """Grad-CAM: ReLU(Σ_k mean(∂y_c/∂A_k)·A_k) at a conv layer, upsampled (Selvaraju et al. 2017).

    ``L = ReLU(Σ_k α_k A_k)`` with ``α_k = mean_{u,v} ∂y_c/∂A_k[u,v]``, where ``A`` ``[B, K, h, w]``
    is the output of the model's target layer and ``y_c`` the target logit; ``L`` ``[B, 1, h, w]``
    is then resized to the input's ``[H, W]`` by bilinear interpolation (``align_corners=False``;
    trilinear for volumes). Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
    via Gradient-based Localization", ICCV 2017 (arXiv 1610.02391). Computed with
    ``captum.attr.LayerGradCam``; the ReLU is applied before upsampling, as in the paper.

    Parameters:
        layer: name of the model's target layer (``ExplainedModel.target_layers``); ``"auto"`` is
            the model's default (its last convolutional block). The map's resolution, and hence
            its localization, depends strongly on this choice.
        relu: apply the ReLU (paper: yes). ``relu=False`` keeps negative evidence.

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, layer: str = "auto", relu: bool = True) -> None:
        self.layer = layer
        self.relu = relu

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import LayerGradCam

        check_inputs(x, target)
        layer = model.target_layer(self.layer)
        with explaining(model) as module:
            cam = LayerGradCam(module, layer).attribute(
                x.detach(), target=target, relu_attributions=self.relu
            )
        cam = cam.detach()
        if cam.dim() != x.dim() or cam.shape[:2] != (x.shape[0], 1):
            raise ValueError(
                f"grad_cam: target layer {self.layer!r} must output [B, K, *spatial] with the "
                f"input's {x.dim() - 2} spatial dims; Grad-CAM map has shape {list(cam.shape)}"
            )
        return finish(upsample(cam, x), x)


class GradCAMPlusPlus(Method):
    """Grad-CAM++: Grad-CAM with pixel-weighted positive gradients (Chattopadhyay et al. 2018).

    ``L = ReLU(Σ_k w_k A_k)``, ``w_k = Σ_{u,v} α_k[u,v] · ReLU(g_k[u,v])`` with ``g = ∂y_c/∂A`` and
    the closed-form ``α = g² / (2 g² + Σ_{u,v} A_k[u,v] · g³)`` (0 where ``g = 0``; ``1e-6`` added
    to the denominator). The closed form comes from taking ``Y = exp(y_c)``: for a piecewise
    linear network its second and third derivatives are ``exp(y_c) g²`` and ``exp(y_c) g³``, and
    ``exp(y_c)`` cancels in ``α``; it also multiplies every ``w_k`` of a sample, so it is dropped
    (as pytorch-grad-cam does) — the map changes by a positive per-sample factor only, and
    ``exp`` of a large logit would overflow. Chattopadhyay, Sarkar, Howlader, Balasubramanian,
    "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks", WACV 2018
    (arXiv 1710.11063). Sums run over all spatial dims, so volumes work too.

    Parameters:
        layer: the target layer's name (``ExplainedModel.target_layers``).
        relu: apply the ReLU to the map (paper: yes).

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, layer: str = "auto", relu: bool = True) -> None:
        self.layer = layer
        self.relu = relu

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        layer = model.target_layer(self.layer)
        with explaining(model) as module:
            a, g = _activations_and_grads(
                module, layer, x, target, method="grad_cam_pp", layer_name=self.layer
            )
        spatial = tuple(range(2, a.dim()))
        g2 = g.pow(2)
        g3 = g2 * g
        sum_a = a.sum(dim=spatial, keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        weights = (alpha * F.relu(g)).sum(dim=spatial)
        return finish(_combine(weights, a, self.relu, x), x)


class GuidedGradCAM(Method):
    """Guided Grad-CAM: guided backprop ⊙ upsampled Grad-CAM (Selvaraju et al. 2017).

    ``a = reduce_c(GB_c(x) · Up(L))``: the guided-backpropagation gradient ``GB`` ``[B, C, *sp]``
    (Springenberg et al. 2015: ReLU backward passes only positive gradients) times the upsampled
    Grad-CAM map ``L`` ``[B, 1, *sp]`` (ReLU'd, bilinear / trilinear, ``align_corners=False``;
    see ``GradCAM``). Selvaraju et al., ICCV 2017 (arXiv 1610.02391), Sec. 3.1. ``GB`` is the
    ``guided_backprop`` method's gradient: Captum's rule with its hooks repaired (see
    ``benchbox.methods.gradient``), and the same check that every ReLU is an ``nn.ReLU`` module.
    Where Captum's hooks are right it equals ``captum.attr.GuidedGradCam`` with
    ``interpolate_mode="bilinear"`` before the reduction (tested).

    Parameters:
        layer: the Grad-CAM layer's name (``ExplainedModel.target_layers``).
        reduce: channel reduction of the ``[B, C, *sp]`` product (``max_abs`` like ``saliency``;
            ``sum`` keeps the sign).

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, layer: str = "auto", reduce: Reduce = "max_abs") -> None:
        self.layer = layer
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from .gradient import modified_relu_gradient

        check_inputs(x, target)
        cam = GradCAM(layer=self.layer, relu=True).attribute(model, x, target, generator=generator)
        gb = modified_relu_gradient(model, x, target, rule="guided_backprop")
        return finish(reduce_channels(gb.detach() * cam, self.reduce), x)


class ScoreCAM(Method):
    """Score-CAM: channels weighted by the target score of the input masked by each (Wang 2020).

    For each channel ``k`` of ``A`` ``[B, K, *h]``: ``H_k = s(Up(A_k))``, the channel upsampled to
    the input size and min-max normalized to [0, 1] (``H_k = 0`` for a constant channel); the
    score ``S_k = f_c(x ⊙ H_k)`` is the target's class probability (the paper; ``score="logit"``
    gives pytorch-grad-cam's variant). The weights are ``α = softmax_k(S_k − f_c(x_b))``, the
    paper's Algorithm 1 (the increase of confidence over a baseline input ``x_b``, softmax over
    channels); a softmax is shift-invariant, so the baseline term cancels and ``α =
    softmax_k(S_k)``, which is what is computed. ``L = ReLU(Σ_k α_k A_k)`` at the layer's
    resolution, then upsampled (bilinear / trilinear, ``align_corners=False``). Wang et al.,
    "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR
    workshops 2020 (arXiv 1910.01279).

    Cost: ``K`` forward passes per sample, evaluated ``batch_size`` masked inputs at a time
    (``benchbox.methods.base.in_chunks``: CUDA out-of-memory halves it).

    Parameters:
        layer: the target layer's name (``ExplainedModel.target_layers``).
        score: ``probability`` (softmax; sigmoid for a single-output model) or ``logit``. With
            probabilities in [0, 1] the channel softmax keeps the weights within a factor ``e``
            of each other; logits give sharper weights.
        relu: apply the ReLU to the map (paper: yes).
        batch_size: masked inputs per forward pass.

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32; 2D and 3D.
    Deterministic; the generator is unused; needs no gradients.
    """

    needs = frozenset({Capability.TARGET_LAYER})
    supports_3d: ClassVar[bool] = True

    def __init__(
        self,
        *,
        layer: str = "auto",
        score: Score = "probability",
        relu: bool = True,
        batch_size: Size = 128,
    ) -> None:
        self.layer = layer
        self.score: Score = score
        self.relu = relu
        self.batch_size = int(batch_size)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        layer = model.target_layer(self.layer)
        x = x.detach()
        with explaining(model) as module:
            a, _ = _activations(module, layer, x, method="score_cam", layer_name=self.layer)
            b, k = a.shape[:2]

            def scores(rows: Tensor, row_target: Tensor) -> Tensor:
                img, ch = rows // k, rows % k
                up = upsample(a[img, ch].unsqueeze(1), x)  # [R, 1, *sp]
                flat = up.flatten(1)
                lo, hi = flat.amin(dim=1), flat.amax(dim=1)
                span = (hi - lo).view((-1,) + (1,) * (up.dim() - 1))
                # A constant channel (dead ReLU) gives an all-zero mask, as in pytorch-grad-cam;
                # the relative threshold catches constants blurred by interpolation round-off.
                flat_enough = (hi - lo) <= 1e-6 * (hi.abs() + lo.abs())
                h = torch.where(
                    ~flat_enough.view_as(span),
                    (up - lo.view_as(span)) / span.clamp_min(1e-30),
                    torch.zeros_like(up),
                )
                with torch.no_grad():
                    logits = module(x[img] * h)
                return target_score(logits, row_target, self.score).float()

            rows = torch.arange(b * k, device=x.device)
            s = in_chunks(scores, rows, target.repeat_interleave(k), size=self.batch_size)
        weights = s.view(b, k).softmax(dim=1)
        return finish(_combine(weights.to(a.dtype), a, self.relu, x), x)
