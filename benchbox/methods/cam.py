"""Class activation maps: Grad-CAM via Captum's ``LayerGradCam``, upsampled to the input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Capability, ExplainedModel, Method
from .base import check_inputs, explaining, finish

__all__ = ["GradCAM"]


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

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic;
    the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})

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
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        up = F.interpolate(cam.float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return finish(up, x)
