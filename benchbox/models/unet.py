"""A small 2D U-Net for lesion segmentation, trained on the fly on the dataset's masks and cached.

``UNetSmallNet`` maps raw ``[B, C, H, W]`` intensities in [0, 1] to per-pixel logits
``[B, K, H, W]`` (Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015), scaled down to three levels::

    x -> (x - mean) / std -> enc1 (w) -> pool -> enc2 (2w) -> pool -> bottleneck (4w)
      -> up -> [.., enc2] -> dec2 (2w) -> up -> [.., enc1] -> dec1 (w) -> 1x1 conv -> logits

Every block is two conv3x3-BatchNorm-ReLU; ``up`` is a 2x2 transposed convolution; ``[..]`` is
the skip connection (channel concatenation). ``UNetSmall`` trains it with cross-entropy plus a soft
Dice loss and returns it wrapped in ``SegmentationTarget``, so methods and metrics see one scalar
per class: the class's logits pooled inside its predicted region (Seg-Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..core import Batch, Capability, Dataset, ExplainedModel, InputSpec, ModelBuilder
from ..errors import UserError
from ..params import Count, Pixels, Seed, Size
from ..seeding import derive_seed
from . import training
from .targets import Reduction, Region, SegmentationTarget, SplitSource, fit_loop

__all__ = ["UNetSmall", "UNetSmallNet", "segmentation_scores"]


def _double(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),  # not in-place, so hooks on the block see an unmodified output
        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class UNetSmallNet(nn.Module):
    """Three-level 2D U-Net (widths w, 2w, 4w) with skip connections; normalization inside.

    Args:
        in_channels: C of the input ``[B, C, H, W]``.
        num_classes: K of the logits ``[B, K, H, W]`` (class 0 = background).
        width: channels of the first level; the others have 2x and 4x.
        mean, std: per-channel normalization, kept as buffers (they travel with the state_dict).

    Any ``H, W`` works: the normalized input is zero-padded (zero = the training mean) at the
    bottom/right to a multiple of 4 and the logits are cropped back.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 16,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        mean = [0.0] * in_channels if mean is None else list(mean)
        std = [1.0] * in_channels if std is None else list(std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        w = width
        self.enc1 = _double(in_channels, w)
        self.enc2 = _double(w, 2 * w)
        self.bottleneck = _double(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, kernel_size=2, stride=2)
        self.dec2 = _double(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, kernel_size=2, stride=2)
        self.dec1 = _double(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        z = (x - self.mean) / self.std
        z = F.pad(z, (0, -w % 4, 0, -h % 4))
        e1 = self.enc1(z)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)[..., :h, :w]

    def target_layers(self) -> dict[str, nn.Module]:
        """``"auto"`` (= ``dec1``, the last decoder block) and every block by name."""
        return {
            "auto": self.dec1,
            "enc1": self.enc1,
            "enc2": self.enc2,
            "bottleneck": self.bottleneck,
            "dec2": self.dec2,
            "dec1": self.dec1,
        }


# -- losses and scores ---------------------------------------------------------------------------
def soft_dice_loss(logits: Tensor, mask: Tensor, eps: float = 1.0) -> Tensor:
    """``1 − (2 Σ p g + ε) / (Σ p + Σ g + ε)`` over the batch, foreground classes averaged.

    ``p`` = softmax probability of class ``k ≥ 1``, ``g = 1[mask = k]``; sums over the whole batch
    (Milletari et al., V-Net, 3DV 2016), so lesion-free images contribute their false positives
    without making the ratio undefined. ``logits`` ``[B, K, *sp]``, ``mask`` long ``[B, *sp]``.
    """
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(mask, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0, *range(2, logits.dim()))
    inter = (prob * onehot).sum(dims)[1:]
    total = (prob + onehot).sum(dims)[1:]
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


@torch.no_grad()
def segmentation_scores(
    net: nn.Module,
    source: SplitSource,
    *,
    device: torch.device | str,
    batch_size: int,
    min_lesion_pixels: int,
) -> dict[str, float]:
    """Dice, IoU, image-level accuracy and AUROC of ``net`` on every sample of ``source``.

    With per image ``P`` = predicted lesion pixels (argmax ≥ 1), ``T`` = mask pixels, ``I = |P∩T|``:

    - ``dice`` = mean over images with ``T ≠ ∅`` of ``2|I| / (|P| + |T|)`` (per-case Dice, the
      lesion-segmentation convention; lesion-free images have no Dice, see ``accuracy``);
      ``iou`` likewise with ``|I| / |P ∪ T|``;
    - ``dice_pooled`` = ``2 Σ|I| / (Σ|P| + Σ|T|)`` over all images (false positives on lesion-free
      images count);
    - ``accuracy``: image-level; "lesion present" iff ``|P| ≥ min_lesion_pixels``, against
      ``label > 0``;
    - ``auroc`` of the image's maximum lesion probability ``max_p (1 − softmax(z)_0,p)`` for
      ``label > 0`` (``training.auroc``).
    """
    net.eval()
    inter, pred_area, true_area, labels, peak = [], [], [], [], []
    for batch in source.batches(torch.arange(source.n), batch_size):
        if batch.mask is None:
            raise ValueError("segmentation_scores: the dataset gives no masks")
        logits = net(batch.x.to(device)).float().cpu()
        pred = logits.argmax(dim=1) > 0
        truth = batch.mask[:, 0].bool()
        inter.append((pred & truth).flatten(1).sum(1))
        pred_area.append(pred.flatten(1).sum(1))
        true_area.append(truth.flatten(1).sum(1))
        labels.append(batch.label)
        peak.append((1 - logits.softmax(dim=1)[:, 0]).flatten(1).amax(1))
    i, p, t = (torch.cat(v).double() for v in (inter, pred_area, true_area))
    label = torch.cat(labels) > 0
    has = t > 0
    dice = (2 * i / (p + t))[has]
    iou = (i / (p + t - i))[has]
    present = p >= min_lesion_pixels
    return {
        "dice": float(dice.mean()) if has.any() else float("nan"),
        "iou": float(iou.mean()) if has.any() else float("nan"),
        "dice_pooled": float(2 * i.sum() / (p + t).sum().clamp_min(1)),
        "accuracy": float((present == label).double().mean()),
        "auroc": float(training.auroc(torch.cat(peak), label)),
        "n": int(label.numel()),
    }


# -- the builder ---------------------------------------------------------------------------------
class UNetSmall(ModelBuilder):
    """Small 2D U-Net (3 levels) for lesion segmentation; target = class logits in a region.

    Trained on the fly on the dataset's masks (class 1 = mask, class 0 = the rest) with
    cross-entropy plus ``dice_weight`` × soft Dice (``soft_dice_loss``), Adam with a cosine
    schedule, keeping the epoch with the best pooled validation Dice; cached by content.
    The explained module is ``SegmentationTarget(net, region=, reduction=)``: ``[B, 2]``, the
    background and lesion logits pooled over their predicted regions (see its docstring; explain
    with ``target: label``, since the pooled background dominates the argmax).

    Parameters:
        width: channels of the first level (then 2x, 4x); cost grows ~ width².
        epochs: training epochs; the epoch with the best validation Dice is kept.
        lr: Adam learning rate (cosine-decayed to 0).
        weight_decay: L2 penalty.
        train_batch_size: mini-batch size for training (the suite's batch size is for inference).
        dice_weight: weight of the soft Dice term (0 = cross-entropy alone). Lesions cover ~1% of
            the pixels; without it the net under-segments them.
        min_lesion_pixels: image-level decision for ``test_accuracy``: "lesion present" iff at
            least this many pixels are predicted lesion.
        permute_labels: train on the training images paired with a fixed random permutation of
            their masks (and labels), seeded from the build seed: the data-randomization test
            of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, for segmentation
            (what ``data_randomization`` rebuilds). The last epoch is kept (validation Dice is
            meaningless then).
        train_seed: 0 is the default model; 1, 2, … give independently trained replicas
            (another initialisation and data order, the same data) for repeatability checks.
        region, reduction: the ``SegmentationTarget`` (``predicted``/``all``, ``sum``/``mean``).
            They do not change the weights, so they are not part of the cache key: a suite that
            compares regions trains the net once.

    ``info`` records ``test_dice``, ``test_iou`` (per-case, over test images with a lesion),
    ``test_dice_pooled``, ``test_accuracy`` (image level), ``test_auroc`` (image level, from the
    maximum lesion probability), the same on validation, and the training facts.

    Target layers: ``enc1``, ``enc2``, ``bottleneck``, ``dec2``, ``dec1`` and ``"auto"`` = ``dec1``,
    the last block (the model's last conv block, as for the classifiers). The head is a 1x1 conv
    on ``dec1``, so Seg-Grad-CAM there has a closed form: with ``region="predicted"`` and
    ``"sum"``, ``α_k = W_ck |R_c| / HW`` and the map is ``ReLU(z_c − b_c) · |R_c| / HW``, the
    class's own logit map. Choose ``layer: bottleneck`` for the coarse context features
    Vinogradova et al. show; measured on ``synthetic_lesions_2d`` (defaults, 128 test images,
    explaining the label), Grad-CAM's maximum fell inside the lesion for 41% of positives at
    ``bottleneck``, 91% at ``enc2`` and 100% at ``dec2`` and ``dec1``; 94% and 100% at ``dec1``
    on ``brain_lesions_2d`` (64 test images, two training seeds).

    Measured (defaults, 1 thread): test Dice 0.93 (per case) / 0.94 (pooled), image accuracy
    1.00 on ``synthetic_lesions_2d``; 0.77–0.88 / 0.79–0.89, accuracy 0.95–0.99 on
    ``brain_lesions_2d`` (two training seeds). Training takes ~75 s on an idle CPU core.
    """

    needs = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    provides = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})

    def __init__(
        self,
        *,
        width: Size = 16,
        epochs: Count = 8,
        lr: Annotated[float, Field(gt=0, le=1)] = 3e-3,
        weight_decay: Annotated[float, Field(ge=0)] = 1e-4,
        train_batch_size: Size = 32,
        dice_weight: Annotated[float, Field(ge=0)] = 1.0,
        min_lesion_pixels: Pixels = 4,
        permute_labels: bool = False,
        train_seed: Seed = 0,
        region: Region = "predicted",
        reduction: Reduction = "sum",
    ) -> None:
        self.width = int(width)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.train_batch_size = int(train_batch_size)
        self.dice_weight = float(dice_weight)
        self.min_lesion_pixels = int(min_lesion_pixels)
        self.permute_labels = bool(permute_labels)
        self.train_seed = int(train_seed)
        self.region: Region = region
        self.reduction: Reduction = reduction

    def params(self) -> dict[str, Any]:
        """The parameters that determine the weights and the recorded facts (the cache key)."""
        return {
            "width": self.width,
            "epochs": self.epochs,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "train_batch_size": self.train_batch_size,
            "dice_weight": self.dice_weight,
            "min_lesion_pixels": self.min_lesion_pixels,
            "permute_labels": self.permute_labels,
            "train_seed": self.train_seed,
        }

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        if len(dataset.spatial_size) != 2:
            raise UserError(
                f"model unet_small takes 2D images, but the dataset's samples have spatial size "
                f"{tuple(dataset.spatial_size)}; use a 2D dataset"
            )
        key = training.cache_key(dataset.spec(), type(self), self.params(), seed)
        # A replica (train_seed > 0) draws its initialisation and data order from another seed;
        # the mask permutation stays that of the build seed, as for the classifiers.
        run_seed = (
            seed if self.train_seed == 0 else derive_seed(seed, "train_seed", self.train_seed)
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed("unet_small.init", run_seed))
            net = UNetSmallNet(in_channels=dataset.channels, num_classes=2, width=self.width)

        def fit(_: nn.Module) -> dict[str, Any]:
            mean, std = training.channel_stats(dataset, "train")
            net.mean.copy_(mean.view(net.mean.shape))
            net.std.copy_(std.view(net.std.shape))
            perm = None
            if self.permute_labels:
                gen = torch.Generator().manual_seed(derive_seed("unet_small.permute", seed))
                perm = torch.randperm(dataset.split_size("train"), generator=gen)
            train = SplitSource(dataset, "train", targets_from=perm)
            val = SplitSource(dataset, "val")

            def loss_fn(module: nn.Module, batch: Batch, _: torch.Generator) -> Tensor:
                if batch.mask is None:
                    raise UserError("model unet_small needs masks, but the dataset gave none")
                logits = module(batch.x)
                target = batch.mask[:, 0].long()
                loss = F.cross_entropy(logits, target)
                if self.dice_weight > 0:
                    loss = loss + self.dice_weight * soft_dice_loss(logits, target)
                return loss

            def validate(module: nn.Module) -> tuple[tuple[float, ...], dict[str, float]]:
                s = segmentation_scores(
                    module,
                    val,
                    device=device,
                    batch_size=batch_size,
                    min_lesion_pixels=self.min_lesion_pixels,
                )
                return (s["dice_pooled"], s["dice"]), s

            facts = fit_loop(
                net,
                source=train,
                indices=torch.arange(train.n),
                loss_fn=loss_fn,
                validate=validate,
                seed=run_seed,
                device=device,
                epochs=self.epochs,
                lr=self.lr,
                weight_decay=self.weight_decay,
                batch_size=self.train_batch_size,
                name="unet_small",
                keep="last" if self.permute_labels else "best",
            )
            test = segmentation_scores(
                net,
                SplitSource(dataset, "test"),
                device=device,
                batch_size=batch_size,
                min_lesion_pixels=self.min_lesion_pixels,
            )
            return {
                **facts,
                **{f"test_{k}": v for k, v in test.items()},
                "permute_labels": self.permute_labels,
                "train_seed": self.train_seed,
            }

        info = training.cached_fit(net, key, fit)
        net.to(device).eval()
        spec = InputSpec(
            channels=dataset.channels,
            size=tuple(dataset.spatial_size),
            mean=tuple(net.mean.flatten().tolist()),
            std=tuple(net.std.flatten().tolist()),
        )
        module = SegmentationTarget(net, region=self.region, reduction=self.reduction).eval()
        return ExplainedModel(
            module=module,
            input_spec=spec,
            num_classes=2,
            target_layers=net.target_layers(),
            info={**info, "region": self.region, "reduction": self.reduction},
            provides=self.provides,
            task="segmentation",
        )
