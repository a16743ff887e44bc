"""A small residual network (basic blocks, BatchNorm, GAP head), trained on the fly and cached.

``ResNetSmallNet`` maps raw ``[B, C, H, W]`` intensities in [0, 1] to logits ``[B, K]``::

    x -> (x - mean) / std -> stem (conv3x3-BN-ReLU) -> maxpool 2
      -> stage1 (width, H/2) -> stage2 (2 width, H/4) -> stage3 (4 width, H/8) -> GAP -> linear

Each stage is ``blocks`` basic residual blocks (He, Zhang, Ren, Sun, "Deep Residual Learning for
Image Recognition", CVPR 2016)::

    y = ReLU(BN(conv3x3(ReLU(BN(conv3x3_s(x))))) + shortcut(x))

with stride ``s = 2`` in the first block of stages 2 and 3 and a 1x1-conv + BN shortcut where the
shape changes. The last BatchNorm of every block starts at zero (Goyal et al., "Accurate, Large
Minibatch SGD", 2017), so each block starts as the identity, which helps such a small net train in
a few epochs. ``stage3``'s ReLU'd output feeds global average pooling and the linear head
directly, so CAM (Zhou et al. 2016) is exact at it; it is the ``"auto"`` target layer.

Why a stem pooling: running stage1 at full resolution quadruples its cost (it would dominate the
network's) for a CAM at H/8 either way; the pooled stem keeps the cost near ``cnn_gap``'s. Why two
blocks per stage by default: on ``brain_lesions_2d`` with half the training images and fainter
lesions (1024, contrast from 0.25 of the tissue range), trained with flips, one block per stage
reached 0.941 test accuracy and two 0.979. At the dataset's defaults: 0.994 (AUROC 1.000) in 75 s
of CPU time on one thread.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from ..core import Capability, Dataset
from ..params import Count, Seed, Size
from . import training

__all__ = ["BasicBlock", "ResNetSmall", "ResNetSmallNet"]


class BasicBlock(nn.Module):
    """``ReLU(BN(conv3x3(ReLU(BN(conv3x3_stride(x))))) + shortcut(x))``, ``[B, C_in, H, W]`` ->
    ``[B, C_out, H / stride, W / stride]``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # the block starts as the identity (Goyal et al. 2017)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()  # not in-place, so hooks on the block see an unmodified output

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetSmallNet(training.InputNormalized):
    """Stem, three residual stages (``width``, 2x, 4x channels), GAP, linear; normalization inside.

    Args:
        in_channels: C of the input ``[B, C, H, W]``.
        num_classes: K of the logits ``[B, K]``.
        width: channels of the stem and stage1.
        blocks: basic blocks per stage.
    """

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 2, width: int = 16, blocks: int = 1
    ) -> None:
        super().__init__(in_channels, spatial_dims=2)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.stage1 = self._stage(width, width, blocks, stride=1)
        self.stage2 = self._stage(width, 2 * width, blocks, stride=2)
        self.stage3 = self._stage(2 * width, 4 * width, blocks, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(c_in, c_out, stride)]
        layers += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """ReLU'd output of stage3, ``[B, 4 width, H / 8, W / 8]`` (for H, W divisible by 8)."""
        return self.stage3(self.stage2(self.stage1(self.stem(self.normalize(x)))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gap(self.features(x)).flatten(1))

    def target_layers(self) -> dict[str, nn.Module]:
        """``"auto"`` (= ``stage3``, the CAM layer), the stem and every stage by name."""
        return {
            "auto": self.stage3,
            "stem": self.stem,
            "stage1": self.stage1,
            "stage2": self.stage2,
            "stage3": self.stage3,
        }


class ResNetSmall(training.ClassifierBuilder):
    """Small ResNet (3 stages of basic blocks, BatchNorm, GAP; CAM-ready), trained and cached.

    Parameters:
        width: channels of stage1 (stages 2 and 3 have 2x and 4x); cost grows ~ width².
        blocks: basic residual blocks per stage (1: 7 conv layers deep; 2: 13).
        epochs, lr, weight_decay, train_batch_size: Adam with a cosine schedule; the epoch with
            the best validation accuracy is kept.
        permute_labels, train_seed, augment: the shared training options (data-randomization
            test, independent replicas, random flips), see
            ``benchbox.models.training.ClassifierBuilder``.

    Target layers: ``"auto"`` = ``stage3`` (GAP and the head read it directly, so CAM is exact),
    ``stem``, ``stage1``, ``stage2``, ``stage3``. Takes any channel count and sides ≥ 8.
    """

    name = "resnet_small"
    min_size = 8  # three halvings
    provides = training.ClassifierBuilder.provides | {Capability.GAP_HEAD}

    def __init__(
        self,
        *,
        width: Size = 16,
        blocks: Annotated[int, Field(ge=1, le=4)] = 2,
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
        self.blocks = int(blocks)

    def network(self, dataset: Dataset) -> ResNetSmallNet:
        return ResNetSmallNet(
            in_channels=dataset.channels,
            num_classes=dataset.num_classes,
            width=self.width,
            blocks=self.blocks,
        )
