"""Task targets: wrap a segmentation net or a VAE so that it maps ``x`` to scores ``[B, K]``.

Every attribution method and metric in benchbox is written against one scalar target function per
class, ``y_k(x)`` (``ExplainedModel.module(x)[:, k]``). Classification gives that directly (the
logits); the wrappers here give it for the other tasks (shared/DESIGN.md, "Task types"):

- ``SegmentationTarget``: ``y_k(x)`` = the class-``k`` logits summed (or averaged) inside a region
  of the image, the target of Seg-Grad-CAM (Vinogradova, Dibrov, Myers, "Towards Interpretable
  Semantic Segmentation via Gradient-weighted Class Activation Mapping", AAAI 2020 student
  abstract, arXiv 2002.11434).
- ``AnomalyTarget``: ``y_0(x)`` = the anomaly score of a VAE (reconstruction error or negative
  ELBO), a single "class".

Both are functions of the input alone: nothing is remembered from an earlier call, so deletion and
insertion (which re-evaluate the target on perturbed images), Integrated Gradients (on interpolated
images) and any re-explaining metric see the same function the attribution was computed for.

The module also holds the training loop the task models share (``fit_loop``, ``SplitSource``):
``benchbox.models.training.train_classifier`` is tied to cross-entropy on labels, and these models
train on masks (U-Net) or on the lesion-free subset (VAE).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, cast

import torch
from torch import Tensor, nn

from ..core import Batch, Dataset, Split
from ..seeding import derive_seed

__all__ = [
    "AnomalyScore",
    "AnomalyTarget",
    "Reduction",
    "Region",
    "SegmentationTarget",
    "SplitSource",
    "VariationalAutoencoder",
    "fit_loop",
    "kl_divergence",
    "squared_error",
]

log = logging.getLogger(__name__)

Region = Literal["predicted", "all"]
Reduction = Literal["sum", "mean"]
AnomalyScore = Literal["mse", "neg_elbo"]

# Splits up to this size are generated once and kept as tensors; larger ones are streamed.
_MATERIALIZE_BYTES = 256 * 2**20


# -- segmentation ----------------------------------------------------------------------------------
class SegmentationTarget(nn.Module):
    """Per-class scalar targets of a segmentation net: class-k logits pooled inside a region.

    ``net`` maps ``x`` ``[B, C, *sp]`` to logits ``z`` ``[B, K, *sp]``. The wrapper returns
    ``y`` ``[B, K]`` with

        y_k(x) = Σ_p w_k,p(x) z_k,p(x)                      (reduction="sum")
        y_k(x) = Σ_p w_k,p(x) z_k,p(x) / max(1, Σ_p w_k,p)   (reduction="mean")

    where the region weights are ``w_k,p = 1[argmax_j z_j,p(x) = k]`` (``region="predicted"``: the
    pixels the net assigns to class k *on the same input*) or ``w_k,p = 1`` (``region="all"``).
    With ``"predicted"`` the argmax is taken on detached logits: the region is a non-differentiable
    selection, as in Seg-Grad-CAM (Vinogradova et al. 2020), so ``∂y_k/∂x = Σ_{p∈R_k} ∂z_k,p/∂x``.

    Why this is a function of the input only: the region is recomputed from the input in every
    forward pass, never cached from the image being explained. A perturbed image (deletion,
    insertion), an interpolated one (Integrated Gradients) or a noisy one (SmoothGrad) is scored
    with *its own* predicted region, so the metrics evaluate exactly the function whose gradient
    the methods took. Consequences: deleting a lesion's pixels shrinks its predicted region, so
    ``y_lesion`` falls for two reasons (lower logits, fewer pixels) — what deletion should see;
    and ``y_k`` jumps where a pixel changes class (there ``z_k = z_j``, not 0), so it is only
    piecewise smooth and Integrated Gradients' completeness holds only up to those jumps.

    A pixel tied between classes belongs to the lowest class index (``torch.argmax``). An empty
    region gives ``y_k = 0`` for both reductions (no pixel, no evidence), which keeps the target
    finite for deletion curves; its gradient is 0, so gradient maps of a class the net does not
    predict anywhere are constant.

    Parameters:
        region: ``"predicted"`` (default; Seg-Grad-CAM) or ``"all"`` (the whole image).
        reduction: ``"sum"`` (default; Seg-Grad-CAM's ``Σ_{(i,j)∈M} y^c_ij``) grows with the
            region's area; ``"mean"`` divides by the region's size, so images with lesions of
            different sizes give scores on one scale.

    Note for a suite: the pooled background outscores the lesion on almost every image, so
    ``argmax_k y_k`` (the runner's "prediction") is the background; explain the label
    (``target: label``) instead.
    """

    def __init__(
        self, net: nn.Module, *, region: Region = "predicted", reduction: Reduction = "sum"
    ):
        super().__init__()
        if region not in ("predicted", "all"):
            raise ValueError(f"region: expected 'predicted' or 'all', got {region!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
        self.net = net
        self.region: Region = region
        self.reduction: Reduction = reduction

    def segment(self, x: Tensor) -> Tensor:
        """The wrapped net's logits ``[B, K, *sp]``."""
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        if logits.dim() != x.dim() or logits.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"SegmentationTarget: the net must map x {list(x.shape)} to logits "
                f"[B, K, {', '.join(map(str, x.shape[2:]))}], got {list(logits.shape)}"
            )
        if self.region == "all":
            pooled = logits.flatten(2).sum(2)
            size = torch.full_like(pooled, float(math.prod(logits.shape[2:])))
        else:
            # A one-hot of the argmax, built from detached logits: a selection, not a function
            # to differentiate through.
            pred = logits.detach().argmax(dim=1, keepdim=True)
            weights = torch.zeros_like(logits).scatter_(1, pred, 1.0)
            pooled = (logits * weights).flatten(2).sum(2)
            size = weights.flatten(2).sum(2)
        if self.reduction == "mean":
            return pooled / size.clamp_min(1.0)
        return pooled


# -- anomaly ---------------------------------------------------------------------------------------
class VariationalAutoencoder(Protocol):
    """What ``AnomalyTarget`` needs of a VAE (``benchbox.models.vae.ConvVAE`` is one)."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C, *sp]`` -> posterior mean and log-variance, each ``[B, L]``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """``z`` ``[B, L]`` -> reconstruction ``[B, C, *sp]`` in [0, 1]."""
        ...


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(μ, diag σ²) || N(0, I)) = ½ Σ_l (μ_l² + σ_l² − log σ_l² − 1)``, ``[B]``."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(dim=1)


def squared_error(x: Tensor, recon: Tensor) -> Tensor:
    """Per-sample sum of squared errors ``Σ_i (x_i − x̂_i)²`` over channels and space, ``[B]``."""
    return (x - recon).square().flatten(1).sum(dim=1)


class AnomalyTarget(nn.Module):
    """The anomaly score of a VAE as a single "class": ``[B, C, *sp] -> [B, 1]``.

    With ``μ(x), log σ²(x)`` the encoder's posterior and ``x̂(x) = D(μ(x))`` the deterministic
    reconstruction from the posterior mean (no sampling, so the score is a function of ``x``
    alone and identical on every call):

        score="mse":      s(x) = (1/N) Σ_i (x_i − x̂_i)²                  (N = C · Π sp)
        score="neg_elbo": s(x) = Σ_i (x_i − x̂_i)² + β · KL(q(z|x) || N(0, I))

    ``mse`` is the residual-based score of the unsupervised brain-MR anomaly detection literature
    (Baur et al., "Autoencoders for Unsupervised Anomaly Segmentation in Brain MR Images: A
    Comparative Study", Medical Image Analysis 2021). ``neg_elbo`` is the β-VAE training loss
    (Higgins et al., ICLR 2017; Kingma & Welling, ICLR 2014) with its expectation over ``q``
    replaced by its value at ``z = μ``: the reconstruction term is the negative log-likelihood,
    up to a constant, of a Gaussian decoder with variance 1/2. Higher is more anomalous.

    The wrapped VAE stays reachable as ``.net`` (``reconstruct`` gives ``x̂``), for methods that
    read the residual ``|x − x̂|`` directly.

    Parameters:
        score: ``"mse"`` (default) or ``"neg_elbo"``.
        beta: the KL weight of ``neg_elbo`` (use the one the VAE was trained with).
    """

    def __init__(self, net: nn.Module, *, score: AnomalyScore = "mse", beta: float = 1.0) -> None:
        super().__init__()
        if score not in ("mse", "neg_elbo"):
            raise ValueError(f"score: expected 'mse' or 'neg_elbo', got {score!r}")
        self.net = net
        self.score: AnomalyScore = score
        self.beta = float(beta)

    @property
    def vae(self) -> VariationalAutoencoder:
        """``net``, typed as what it must be (``nn.Module`` attributes type as tensors)."""
        return cast("VariationalAutoencoder", self.net)

    def reconstruct(self, x: Tensor) -> Tensor:
        """``x̂ = D(μ(x))`` ``[B, C, *sp]``: the deterministic reconstruction."""
        return self.vae.decode(self.vae.encode(x)[0])

    def forward(self, x: Tensor) -> Tensor:
        mu, logvar = self.vae.encode(x)
        recon = self.vae.decode(mu)
        se = squared_error(x, recon)
        if self.score == "mse":
            return (se / math.prod(x.shape[1:])).unsqueeze(1)
        return (se + self.beta * kl_divergence(mu, logvar)).unsqueeze(1)


# -- training of the task models -------------------------------------------------------------------
class SplitSource:
    """Samples of one split by index as CPU ``Batch`` es (``x``, ``label``, ``mask``).

    A split of at most 256 MiB of images is generated once and kept in memory; a larger one is
    streamed through ``dataset.get`` (its labels are read once, by one pass over the split).
    ``labels`` is the long ``[n]`` label of every sample, so a caller can choose a subset (the
    VAE trains on label 0 only) without generating the images twice.

    ``targets_from`` (long ``[n]``, optional) pairs sample ``i``'s image with the mask and label
    of sample ``targets_from[i]``: a permutation gives the data-randomization test's training set
    (Adebayo et al., NeurIPS 2018) for segmentation. ``labels`` then holds the paired labels.
    """

    def __init__(
        self, dataset: Dataset, split: Split, *, targets_from: Tensor | None = None
    ) -> None:
        self.dataset, self.split = dataset, split
        self.n = dataset.split_size(split)
        if targets_from is not None and targets_from.shape != (self.n,):
            raise ValueError(
                f"targets_from: expected shape [{self.n}], got {list(targets_from.shape)}"
            )
        self.targets_from = targets_from
        nbytes = self.n * dataset.channels * math.prod(dataset.spatial_size) * 4
        self._all: Batch | None = None
        if nbytes <= _MATERIALIZE_BYTES:
            self._all = _concat(list(dataset.batches(split, 256)))
            labels = self._all.label
        else:
            labels = torch.cat([b.label for b in dataset.batches(split, 256)])
        self.labels = labels if targets_from is None else labels[targets_from]

    def _get(self, idx: Tensor) -> Batch:
        if self._all is None:
            return self.dataset.get(self.split, idx.tolist())
        a, i = self._all, idx.tolist()
        return Batch(
            x=a.x[idx],
            label=a.label[idx],
            ids=tuple(a.ids[k] for k in i),
            mask=None if a.mask is None else a.mask[idx],
        )

    def __call__(self, idx: Tensor) -> Batch:
        batch = self._get(idx)
        if self.targets_from is None:
            return batch
        paired = self._get(self.targets_from[idx])
        return Batch(x=batch.x, label=paired.label, ids=batch.ids, mask=paired.mask)

    def batches(self, indices: Tensor, batch_size: int) -> Iterator[Batch]:
        for start in range(0, indices.numel(), batch_size):
            yield self(indices[start : start + batch_size])


def _concat(batches: Sequence[Batch]) -> Batch:
    masks = [b.mask for b in batches if b.mask is not None]
    return Batch(
        x=torch.cat([b.x for b in batches]),
        label=torch.cat([b.label for b in batches]),
        ids=tuple(i for b in batches for i in b.ids),
        mask=torch.cat(masks) if len(masks) == len(batches) else None,
    )


def fit_loop(
    module: nn.Module,
    *,
    source: SplitSource,
    indices: Tensor,
    loss_fn: Callable[[nn.Module, Batch, torch.Generator], Tensor],
    validate: Callable[[nn.Module], tuple[tuple[float, ...], dict[str, float]]],
    seed: int,
    device: torch.device | str,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    name: str = "fit_loop",
    keep: Literal["best", "last"] = "best",
) -> dict[str, Any]:
    """Fit ``module`` in place on ``source``'s samples ``indices``; keep the best validated epoch.

    The same recipe as ``training.train_classifier`` with the loss and the model selection as
    arguments: Adam (``weight_decay`` as L2 added to the gradient), a cosine schedule from ``lr``
    to 0 over all steps, shuffling from a generator seeded from ``(name, seed)``. ``loss_fn(module,
    batch_on_device, generator)`` returns the mean loss of a batch (the generator, on the CPU,
    serves any sampling, e.g. a VAE's reparameterisation noise); ``validate(module)`` (module in
    eval mode) returns ``(rank, facts)``: the first epoch with the largest ``rank`` tuple is kept
    (``keep="last"``: the last epoch, when validation means nothing, e.g. on permuted targets) and
    its ``facts`` are returned prefixed with ``val_``. Bit-identical on CPU for the same seed, data
    and thread count. ``module`` ends in eval mode holding the kept epoch's weights.
    """
    if indices.numel() == 0:
        raise ValueError(f"{name}: no training samples")
    device = torch.device(device)
    start = time.perf_counter()
    module.to(device)
    n = indices.numel()
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    gen = torch.Generator().manual_seed(derive_seed(name, "shuffle", seed))
    noise = torch.Generator().manual_seed(derive_seed(name, "noise", seed))
    best: tuple[float, ...] | None = None
    best_state: dict[str, Tensor] = {}
    best_epoch, history = 0, []
    for epoch in range(1, epochs + 1):
        module.train()
        total = 0.0
        order = indices[torch.randperm(n, generator=gen)]
        for batch in source.batches(order, batch_size):
            loss = loss_fn(module, batch.to(device), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        module.eval()
        with torch.no_grad():
            rank, facts = validate(module)
        history.append({"epoch": epoch, "train_loss": total / n, **facts})
        if best is None or rank > best or keep == "last":
            best, best_epoch = rank, epoch
            best_state = copy.deepcopy(module.state_dict())
        log.info("%s epoch %d/%d train_loss %.5f val %s", name, epoch, epochs, total / n, facts)
    module.load_state_dict(best_state)
    module.eval()
    chosen = history[best_epoch - 1]
    return {
        "best_epoch": best_epoch,
        "epochs": epochs,
        **{f"val_{k}": v for k, v in chosen.items() if k not in ("epoch", "train_loss")},
        "final_train_loss": history[-1]["train_loss"],
        "n_train": n,
        "train_seconds": time.perf_counter() - start,
        "train_device": str(device),
        "train_threads": torch.get_num_threads(),  # CPU float sums, hence weights, depend on it
    }
