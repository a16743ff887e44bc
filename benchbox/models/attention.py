"""A VGG-like CNN with trainable soft attention gates (Jetley et al. 2018), trained and cached.

Jetley, Lord, Lee, Torr, "Learn to Pay Attention", ICLR 2018. A global feature ``g`` ``[B, D]`` is
computed from the last layer; at each of several intermediate layers ``s`` with local features
``l^s_i`` (position ``i`` of an ``h_s x w_s`` map, projected to ``D`` channels by a learned 1x1
convolution where the widths differ) a compatibility score, an attention map and an attended
descriptor are computed::

    pc:  c^s_i = <u_s, l^s_i + g>        dp:  c^s_i = <l^s_i, g>
    a^s = softmax_i(c^s)                 (over the h_s w_s positions; sums to 1)
    g^s_a = sum_i a^s_i l^s_i            [B, D]
    logits = W [g^1_a, g^2_a, g^3_a] + b (the classifier sees the image only through the g_a)

The network, with ``width`` = w::

    x -> normalize -> block1 (w, H) -> pool -> block2 (2w, H/2) -> pool -> block3 (4w, H/4)
      -> pool -> block4 (4w, H/8) -> pool -> block5 (4w, H/16) -> GAP -> fc -> ReLU -> g (D = 4w)

with attention at ``block2``, ``block3`` and ``block4`` (three gates, as in the paper's
"VGG-att3"); each block is conv3x3-BN-ReLU.

Mind the ``pc`` compatibility (our default): ``<u, l_i + g> = <u, l_i> + <u, g>`` and the second
term is the same at every position, so it cancels in the softmax. The attention maps, hence the
logits, do not depend on ``g`` at all, and ``block5`` and ``fc`` receive no gradient (they are
kept so that ``pc`` and ``dp`` share one architecture and one state_dict layout; a parameter
randomization test that starts at them will rightly find that nothing changes). ``dp`` makes the
attention depend on ``g``; its unscaled dot products can saturate the softmax.

``AttentionCNNNet.attention_maps(x)`` recomputes the maps from ``x`` (a pure function: no hooks,
no state kept from an earlier call), so a method can read them for any input (the ``attention``
method does). With the defaults on ``brain_lesions_2d``: 0.996 test accuracy (AUROC 1.000) in
70 s of CPU time on one thread.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..core import Capability, Dataset
from ..params import Count, Seed, Size
from . import training

__all__ = ["AttentionCNN", "AttentionCNNNet", "AttentionGate", "Compatibility"]

Compatibility = Literal["pc", "dp"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),  # not in-place, so hooks on the block see an unmodified output
    )


class AttentionGate(nn.Module):
    """One attention estimator: local features ``[B, C, h, w]`` and ``g`` ``[B, D]`` ->
    (attended descriptor ``g_a`` ``[B, D]``, attention map ``a`` ``[B, 1, h, w]``).

    ``l`` is projected to ``D`` channels by a 1x1 convolution without bias when ``C != D``;
    ``pc``: ``c_i = <u, l_i + g>`` with ``u`` a 1x1 convolution to one channel, no bias (a bias,
    like ``<u, g>``, would cancel in the softmax); ``dp``: ``c_i = <l_i, g>``.
    """

    def __init__(self, local_channels: int, global_dim: int, compatibility: Compatibility) -> None:
        super().__init__()
        self.compatibility = compatibility
        self.project: nn.Module = nn.Identity()
        if local_channels != global_dim:
            self.project = nn.Conv2d(local_channels, global_dim, kernel_size=1, bias=False)
        self.u: nn.Module | None = None
        if compatibility == "pc":
            self.u = nn.Conv2d(global_dim, 1, kernel_size=1, bias=False)

    def forward(self, local: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        l = self.project(local)  # noqa: E741 — the paper's name
        gg = g[:, :, None, None]
        c = self.u(l + gg) if self.u is not None else (l * gg).sum(1, keepdim=True)
        a = c.flatten(1).softmax(1).view_as(c)
        return (a * l).flatten(2).sum(2), a


class AttentionCNNNet(training.InputNormalized):
    """VGG-like backbone, three attention gates, linear classifier on the attended descriptors.

    Args:
        in_channels: C of the input ``[B, C, H, W]``.
        num_classes: K of the logits ``[B, K]``.
        width: channels of block1 (2x in block2, 4x in blocks 3–5 and ``D = 4 width``).
        compatibility: ``"pc"`` or ``"dp"`` (see the module docstring).
    """

    attended = ("block2", "block3", "block4")

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        compatibility: Compatibility = "pc",
    ) -> None:
        super().__init__(in_channels, spatial_dims=2)
        dim = 4 * width
        self.block1 = _block(in_channels, width)
        self.block2 = _block(width, 2 * width)
        self.block3 = _block(2 * width, dim)
        self.block4 = _block(dim, dim)
        self.block5 = _block(dim, dim)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.gates = nn.ModuleDict(
            {
                "block2": AttentionGate(2 * width, dim, compatibility),
                "block3": AttentionGate(dim, dim, compatibility),
                "block4": AttentionGate(dim, dim, compatibility),
            }
        )
        self.head = nn.Linear(len(self.attended) * dim, num_classes)

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits ``[B, K]``, attention maps ``{name: [B, 1, h, w]}``) for raw ``x``."""
        local = {}
        h = self.pool(self.block1(self.normalize(x)))
        local["block2"] = h = self.block2(h)
        local["block3"] = h = self.block3(self.pool(h))
        local["block4"] = h = self.block4(self.pool(h))
        g = self.fc(self.gap(self.block5(self.pool(h))).flatten(1))
        descriptors, maps = [], {}
        for name in self.attended:
            g_a, maps[name] = self.gates[name](local[name], g)
            descriptors.append(g_a)
        return self.head(torch.cat(descriptors, 1)), maps

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def attention_maps(self, x: Tensor) -> dict[str, Tensor]:
        """The attention maps ``a^s`` for ``x``: ``{"block2": [B, 1, H/2, W/2], "block3": [B, 1,
        H/4, W/4], "block4": [B, 1, H/8, W/8]}``, each summing to 1 over space.

        Recomputed from ``x`` (one forward pass; differentiable unless called under no_grad);
        nothing is cached between calls. Upsample to ``x``'s size to compare with a mask.
        """
        return self._forward(x)[1]

    def target_layers(self) -> dict[str, nn.Module]:
        """``"auto"`` (= ``block4``, the deepest attended layer) and every block by name.

        Not ``block5``: the classifier reads the image only through the attended descriptors, so
        ``block4`` is the deepest layer whose positions carry class evidence (with ``pc``,
        ``block5`` gets no gradient at all and a Grad-CAM there would be zero).
        """
        return {
            "auto": self.block4,
            "block1": self.block1,
            "block2": self.block2,
            "block3": self.block3,
            "block4": self.block4,
            "block5": self.block5,
        }


class AttentionCNN(training.ClassifierBuilder):
    """CNN with trainable soft attention gates (Jetley et al. 2018, "Learn to Pay Attention").

    The classifier sees the image only through attention-weighted sums of local features at three
    depths, ``g_a = sum_i softmax_i(c_i) l_i`` with ``c_i = <u, l_i + g>`` (``pc``) or
    ``<l_i, g>`` (``dp``); ``module.attention_maps(x)`` returns the maps
    ``{name: [B, 1, h, w]}`` for any input, so they can be scored as explanations beside the
    post-hoc methods. See ``benchbox.models.attention`` for the architecture and why ``g`` cancels
    under ``pc``.

    Parameters:
        width: channels of the first block (then 2x, 4x, 4x, 4x); cost grows ~ width².
        compatibility: ``pc`` (the paper's default, ``<u, l_i + g>``) or ``dp`` (``<l_i, g>``).
        epochs, lr, weight_decay, train_batch_size: Adam with a cosine schedule; the epoch with
            the best validation accuracy is kept.
        permute_labels, train_seed, augment: the shared training options (data-randomization
            test, independent replicas, random flips), see
            ``benchbox.models.training.ClassifierBuilder``.

    Target layers: ``"auto"`` = ``block4`` (the deepest attended layer), ``block1`` … ``block5``.
    Takes any channel count and sides ≥ 16.
    """

    name = "attention_cnn"
    min_size = 16  # four halvings
    provides = training.ClassifierBuilder.provides | {Capability.ATTENTION_MAPS}

    def __init__(
        self,
        *,
        width: Size = 16,
        compatibility: Compatibility = "pc",
        epochs: Count = 12,
        lr: training.LearningRate = 3e-3,
        weight_decay: training.WeightDecay = 1e-4,
        train_batch_size: Size = 64,
        permute_labels: bool = False,
        train_seed: Seed = 0,
        augment: bool = False,
    ) -> None:
        super().__init__(
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            train_batch_size=train_batch_size,
            permute_labels=permute_labels,
            train_seed=train_seed,
            augment=augment,
        )
        self.width = int(width)
        self.compatibility: Compatibility = compatibility

    def network(self, dataset: Dataset) -> AttentionCNNNet:
        return AttentionCNNNet(
            in_channels=dataset.channels,
            num_classes=dataset.num_classes,
            width=self.width,
            compatibility=self.compatibility,
        )
