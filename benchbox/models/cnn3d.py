"""A small CAM-compatible 3D CNN for volumes, trained on the fly and cached.

``CNN3DNet`` maps raw ``[B, C, D, H, W]`` intensities in [0, 1] to logits ``[B, K]``::

    x -> (x - mean) / std -> block1 -> pool -> block2 -> pool -> block3 -> GAP -> linear

``block1`` is one conv3x3x3 -> BatchNorm3d -> ReLU, ``block2`` and ``block3`` two each; each pool
halves D, H and W. ``block3``'s ReLU'd output (at 1/4 of the input resolution along every axis)
feeds global average pooling and the linear head directly, so CAM (Zhou et al., CVPR 2016:
``CAM_k = sum_c w_kc A_c``) is exact for it and 3D Grad-CAM on it equals CAM divided by
``D H W / 64``. It is the ``"auto"`` target layer.

The 2D ``cnn_gap`` in three dimensions, one convolution deeper in blocks 2 and 3; a 3x3x3
convolution costs 3x its 2D counterpart per voxel and a volume has D times the pixels of a slice,
hence the smaller default width. Why the second convolutions: on ``brain_lesions_3d`` with fainter,
noisier lesions (contrast from 0.25 of the tissue range, noise 0.03) one convolution per block
stayed near chance (0.58 test accuracy after 12 epochs, 0.84 after 30), two reached 0.92 after 20.
At the dataset's defaults the default 16 epochs give 0.973 test accuracy (AUROC 0.990) in 66 s of
CPU time on one thread. Over training seeds 0, 1, 2 it is less steady than the 2D models:
0.977 / 0.977 / 0.926 on one AMD EPYC, 0.973 / 0.980 / 0.887 on a Zen 4 EPYC (whose AVX-512
kernels train other weights), so seed 2 falls short of 0.9 on some CPUs; run it with
``replicas: 3`` before reading much into one training run.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..core import Capability, Dataset
from ..params import Count, Seed, Size
from . import training

__all__ = ["CNN3D", "CNN3DNet"]


def _block(c_in: int, c_out: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [
            nn.Conv3d(c_in if k == 0 else c_out, c_out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(),  # not in-place, so hooks on the block see an unmodified output
        ]
    return nn.Sequential(*layers)


class CNN3DNet(training.InputNormalized):
    """Three conv3d blocks, global average pooling, linear head; normalization inside.

    Args:
        in_channels: C of the input ``[B, C, D, H, W]``.
        num_classes: K of the logits ``[B, K]``.
        width: channels of block1; blocks 2 and 3 have 2x and 4x.
    """

    def __init__(self, *, in_channels: int = 1, num_classes: int = 2, width: int = 8) -> None:
        super().__init__(in_channels, spatial_dims=3)
        self.block1 = _block(in_channels, width, convs=1)
        self.pool1 = nn.MaxPool3d(2)
        self.block2 = _block(width, 2 * width, convs=2)
        self.pool2 = nn.MaxPool3d(2)
        self.block3 = _block(2 * width, 4 * width, convs=2)
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """ReLU'd activations of the last block, ``[B, 4 width, D / 4, H / 4, W / 4]``."""
        x = self.pool1(self.block1(self.normalize(x)))
        x = self.pool2(self.block2(x))
        return self.block3(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gap(self.features(x)).flatten(1))

    def target_layers(self) -> dict[str, nn.Module]:
        """``"auto"`` (= ``block3``, the CAM layer) and every block by name."""
        return {
            "auto": self.block3,
            "block1": self.block1,
            "block2": self.block2,
            "block3": self.block3,
        }


class CNN3D(training.ClassifierBuilder):
    """Small 3-block 3D CNN with global average pooling (CAM-ready) for volumes, trained and cached.

    Parameters:
        width: channels of the first block (later blocks 2x, 4x); cost grows ~ width².
        epochs, lr, weight_decay, train_batch_size: Adam with a cosine schedule; the epoch with
            the best validation accuracy is kept.
        permute_labels, train_seed, augment: the shared training options (data-randomization
            test, independent replicas, random flips along D, H and W), see
            ``benchbox.models.training.ClassifierBuilder``.

    Input ``[B, C, D, H, W]`` with every side ≥ 4. Target layers: ``"auto"`` = ``block3``,
    ``block1``, ``block2``, ``block3``.
    """

    name = "cnn3d"
    spatial_dims = 3
    min_size = 4  # two 2x2x2 poolings
    needs = frozenset({Capability.LABELS, Capability.VOLUMES_3D})
    provides = training.ClassifierBuilder.provides | {Capability.GAP_HEAD}

    def __init__(
        self,
        *,
        width: Size = 8,
        epochs: Count = 16,
        lr: training.LearningRate = 3e-3,
        weight_decay: training.WeightDecay = 1e-4,
        train_batch_size: Size = 16,
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

    def network(self, dataset: Dataset) -> CNN3DNet:
        return CNN3DNet(
            in_channels=dataset.channels, num_classes=dataset.num_classes, width=self.width
        )
