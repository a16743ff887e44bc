"""Training, evaluation, a content-addressed weight cache and the base of the built-in classifiers.

``train_classifier`` fits any ``[B, C, *spatial] -> [B, K]`` module on a dataset's train split with
Adam and a cosine learning-rate schedule, keeping the epoch with the best validation accuracy; it
can train on a seeded permutation of the labels (the data-randomization test of Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018) and with random flips. ``evaluate`` gives
accuracy, mean cross-entropy and AUROC on a split.

``ClassifierBuilder`` is what every built-in classifier (``cnn_gap``, ``resnet_small``,
``attention_cnn``, ``cnn3d``) is made of: a subclass declares its network and its defaults; the
base checks the dataset, seeds the initialisation, fits the normalization (inside the network),
trains, evaluates, caches and fills ``ExplainedModel.info``.

``cached_fit`` wraps a fit in the weight cache: the key is the SHA-256 of the canonical JSON of
(dataset spec, builder class and parameters, seed, torch major.minor, training code version), and
the cache lives in ``$BENCHBOX_CACHE/models/`` (default ``~/.cache/benchbox/models/``) as
``<key>.pt`` (a state_dict, loaded with ``weights_only=True``) and ``<key>.json`` (the recorded
facts). Both files are written atomically; an unreadable entry is retrained and overwritten, never
fatal.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import os
import pickle
import tempfile
import time
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from filelock import FileLock
from pydantic import Field
from torch import Tensor, nn

from ..core import Capability, Dataset, ExplainedModel, InputSpec, ModelBuilder, Split
from ..errors import UserError
from ..params import canonical_json
from ..seeding import derive_seed

__all__ = [
    "TRAINING_VERSION",
    "ClassifierBuilder",
    "InputNormalized",
    "LearningRate",
    "ModelCache",
    "WeightDecay",
    "auroc",
    "cache_dir",
    "cache_key",
    "cached_fit",
    "channel_stats",
    "evaluate",
    "permuted_labels",
    "random_flips",
    "train_classifier",
]

# Parameter types the classifier builders share (validated from their signatures, see params.py).
LearningRate = Annotated[float, Field(gt=0, le=1)]
WeightDecay = Annotated[float, Field(ge=0)]

log = logging.getLogger(__name__)

# Bump when a change to this module changes the weights it produces, so old cache entries miss.
TRAINING_VERSION = "1"
# Splits up to this size are generated once and kept as tensors; larger ones are streamed.
_MATERIALIZE_BYTES = 256 * 2**20


# -- metrics ---------------------------------------------------------------------------------------
def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """Area under the ROC curve by the Mann–Whitney U statistic, ties counted as 1/2.

    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of the
    (tie-averaged, 1-based) ranks of the positives' scores. ``scores`` and ``labels`` are ``[N]``;
    labels are 0/1 (or bool). Returns a 0-dim float64 tensor, NaN when a class is absent.
    """
    scores = scores.detach().reshape(-1).double()
    pos = labels.detach().reshape(-1).bool()
    n_pos = int(pos.sum())
    n_neg = pos.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    order = torch.argsort(scores)
    _, inverse, counts = torch.unique(scores[order], return_inverse=True, return_counts=True)
    first_rank = torch.cumsum(counts, 0) - counts + 1  # 1-based rank of each tie group's start
    mean_rank = first_rank.double() + (counts.double() - 1) / 2
    ranks = torch.empty_like(scores)
    ranks[order] = mean_rank[inverse]
    r_pos = ranks[pos].sum()
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _auroc_from_logits(logits: Tensor, labels: Tensor) -> float:
    """Binary: AUROC of ``logit_1 - logit_0``. K > 2: mean one-vs-rest AUROC of the softmax."""
    if logits.shape[1] == 2:
        return float(auroc(logits[:, 1] - logits[:, 0], labels))
    prob = logits.softmax(1)
    per_class = [auroc(prob[:, k], labels == k) for k in range(logits.shape[1])]
    return float(torch.stack(per_class).nanmean())


# -- data ------------------------------------------------------------------------------------------
def _split_source(dataset: Dataset, split: Split) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """``indices -> (x, label)`` for ``split``: from memory if the split is small, else streamed."""
    n = dataset.split_size(split)
    nbytes = n * dataset.channels * math.prod(dataset.spatial_size) * 4
    if nbytes <= _MATERIALIZE_BYTES:
        xs, ys = [], []
        for batch in dataset.batches(split, 512):
            xs.append(batch.x)
            ys.append(batch.label)
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        return lambda idx: (x_all[idx], y_all[idx])

    def stream(idx: Tensor) -> tuple[Tensor, Tensor]:
        batch = dataset.get(split, idx.tolist())
        return batch.x, batch.label

    return stream


def _batches(
    source: Callable[[Tensor], tuple[Tensor, Tensor]], order: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, order.numel(), batch_size):
        yield source(order[start : start + batch_size])


def _independent_table(counts: Tensor) -> Tensor:
    """Integer ``[K, K]`` table with row and column sums ``counts``, closest to ``c_k c_j / n``.

    Floors of the independence table, then the remainders filled by the north-west corner rule
    (always feasible: the residual row and column sums have the same total).
    """
    c = counts.long()
    table = torch.div(c[:, None] * c[None, :], max(int(c.sum()), 1), rounding_mode="floor")
    rows, cols = (c - table.sum(1)).tolist(), (c - table.sum(0)).tolist()
    k = j = 0
    while k < len(rows) and j < len(cols):
        take = min(rows[k], cols[j])
        table[k, j] += take
        rows[k] -= take
        cols[j] -= take
        if rows[k] == 0:
            k += 1
        if j < len(cols) and cols[j] == 0:
            j += 1
    return table


def permuted_labels(labels: Tensor, seed: int) -> Tensor:
    """A seeded permutation of ``labels`` ``[N]`` that carries no information about them.

    A uniformly random permutation agrees with the true labels on ``1/2 ± 1/(2 sqrt N)`` of the
    samples (two balanced classes), and on an easy task a model learns the real rule from that
    excess: on 128 samples one reached 0.67 test accuracy. So the permuted labels are drawn
    uniformly among the permutations whose table of (true, permuted) counts is the rounded
    independence table ``c_k c_j / N``: within each true class, a seeded shuffle decides which
    samples get which label. The class counts are kept (it is a permutation), which is what the
    data-randomization test of Adebayo et al. (2018) asks for.
    """
    n_classes = int(labels.max()) + 1 if labels.numel() else 0
    table = _independent_table(torch.bincount(labels, minlength=n_classes))
    gen = torch.Generator().manual_seed(seed)
    permuted = torch.empty_like(labels)
    for k in range(n_classes):
        members = torch.nonzero(labels == k).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        permuted[members] = torch.repeat_interleave(torch.arange(n_classes), table[k])
    return permuted


def _with_permuted_labels(
    source: Callable[[Tensor], tuple[Tensor, Tensor]], n: int, seed: int
) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], float]:
    """``source`` with its labels replaced by ``permuted_labels``, and their agreement with the
    true ones (the fraction of samples whose label is unchanged)."""
    labels = torch.cat([y for _, y in _batches(source, torch.arange(n), 512)])
    permuted = permuted_labels(labels, seed)

    def relabelled(idx: Tensor) -> tuple[Tensor, Tensor]:
        x, _ = source(idx)
        return x, permuted[idx]

    return relabelled, float((permuted == labels).double().mean())


def random_flips(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample of ``x`` ``[B, C, *spatial]`` along each spatial axis with probability 1/2.

    The coin flips come from ``generator`` (a CPU generator), one per sample and axis, so the
    augmentation is reproducible and independent of the device.
    """
    for dim in range(2, x.ndim):
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        flip = flip.to(x.device).view(-1, *([1] * (x.ndim - 1)))
        x = torch.where(flip, x.flip(dim), x)
    return x


def channel_stats(
    dataset: Dataset, split: Split = "train", limit: int = 512
) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std ``[C]`` of the first ``limit`` samples of ``split``."""
    batch = dataset.get(split, range(min(limit, dataset.split_size(split))))
    x = batch.x.transpose(0, 1).reshape(batch.x.shape[1], -1).double()
    return x.mean(1).float(), x.std(1).clamp_min(1e-6).float()


@torch.no_grad()
def _predict(
    module: nn.Module,
    source: Callable[[Tensor], tuple[Tensor, Tensor]],
    n: int,
    device: torch.device,
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    logits, labels = [], []
    for x, y in _batches(source, torch.arange(n), batch_size):
        logits.append(module(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def _scores(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, cross-entropy, AUROC, n and chance accuracy (always the majority class)."""
    counts = torch.bincount(labels, minlength=logits.shape[1])
    return {
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "auroc": _auroc_from_logits(logits, labels),
        "n": int(labels.numel()),
        "chance_accuracy": float(counts.max()) / max(int(labels.numel()), 1),
    }


def evaluate(
    module: nn.Module,
    dataset: Dataset,
    split: Split,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> dict[str, float]:
    """Accuracy, mean cross-entropy, AUROC and n of ``module`` (put in eval mode) on ``split``."""
    module.eval()
    n = dataset.split_size(split)

    def source(idx: Tensor) -> tuple[Tensor, Tensor]:
        batch = dataset.get(split, idx.tolist())
        return batch.x, batch.label

    return _scores(*_predict(module, source, n, torch.device(device), batch_size))


# -- training --------------------------------------------------------------------------------------
def train_classifier(
    module: nn.Module,
    dataset: Dataset,
    *,
    seed: int,
    device: torch.device | str,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    eval_batch_size: int = 256,
    label_permutation_seed: int | None = None,
    augment: bool = False,
) -> dict[str, Any]:
    """Fit ``module`` in place on the train split; keep the epoch with the best val accuracy.

    Adam (``weight_decay`` as L2 added to the gradient), a cosine schedule from ``lr`` to 0 over
    all steps, cross-entropy loss. Shuffling draws from a generator seeded from ``seed`` (never the
    global RNG), so on CPU the result is bit-identical for the same seed, data and thread count.
    Ties in val accuracy go to the lower val loss. Returns facts about the run (best epoch, val
    scores, train accuracy on the labels trained on, seconds); ``module`` ends in eval mode holding
    the chosen epoch's weights.

    ``label_permutation_seed``: train on ``permuted_labels(train labels, seed)`` (the
    data-randomization test of Adebayo et al. 2018); None trains on the true labels. The *last*
    epoch is then kept: choosing the epoch by accuracy on the true val labels would let the real
    task back into a model that must know nothing of it. ``augment``: flip each training sample
    along each spatial axis with probability 1/2 (coin flips from their own generator, so the
    shuffling order is the same with and without).
    """
    device = torch.device(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    module.to(device)
    n_train, n_val = dataset.split_size("train"), dataset.split_size("val")
    train_src = _split_source(dataset, "train")
    val_src = _split_source(dataset, "val")
    facts: dict[str, Any] = {}
    if label_permutation_seed is not None:
        train_src, agreement = _with_permuted_labels(train_src, n_train, label_permutation_seed)
        facts["train_label_agreement"] = agreement
    steps = epochs * math.ceil(n_train / batch_size)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    gen = torch.Generator().manual_seed(derive_seed("train_classifier", seed))
    flip_gen = torch.Generator().manual_seed(derive_seed("train_classifier.flips", seed))
    best: tuple[float, float] | None = None
    best_state: dict[str, Tensor] = {}
    best_epoch, history = 0, []
    for epoch in range(1, epochs + 1):
        module.train()
        total, count = 0.0, 0
        for x, y in _batches(train_src, torch.randperm(n_train, generator=gen), batch_size):
            x, y = x.to(device), y.to(device)
            if augment:
                x = random_flips(x, flip_gen)
            loss = F.cross_entropy(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        module.eval()
        val = _scores(*_predict(module, val_src, n_val, device, eval_batch_size))
        history.append({"epoch": epoch, "train_loss": total / count, **val})
        rank = (val["accuracy"], -val["loss"])
        if label_permutation_seed is None and (best is None or rank > best):
            best, best_epoch = rank, epoch
            best_state = copy.deepcopy(module.state_dict())
        log.info(
            "epoch %d/%d train_loss %.4f val_acc %.4f",
            epoch,
            epochs,
            total / count,
            val["accuracy"],
        )
    if label_permutation_seed is None:
        module.load_state_dict(best_state)
    else:
        best_epoch = epochs
    module.eval()
    chosen = history[best_epoch - 1]
    train = _scores(*_predict(module, train_src, n_train, device, eval_batch_size))
    return {
        "best_epoch": best_epoch,
        "epochs": epochs,
        "val_accuracy": chosen["accuracy"],
        "val_auroc": chosen["auroc"],
        "val_loss": chosen["loss"],
        # On the labels trained on: near 1 means the model fits (or memorises) them.
        "train_accuracy": train["accuracy"],
        "final_train_loss": history[-1]["train_loss"],
        **facts,
        "train_seconds": time.perf_counter() - start,
        # CPU time of this process (all its threads): on a shared machine the wall time above
        # grows with the load, this one barely does.
        "train_cpu_seconds": time.process_time() - start_cpu,
        "train_device": str(device),
        "train_threads": torch.get_num_threads(),  # CPU float sums, hence weights, depend on it
    }


# -- cache -----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$BENCHBOX_CACHE``, else ``$XDG_CACHE_HOME/benchbox``, else ``~/.cache/benchbox``."""
    if os.environ.get("BENCHBOX_CACHE"):
        return Path(os.environ["BENCHBOX_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "benchbox"


def cache_key(
    dataset_spec: Mapping[str, Any], builder: type, params: Mapping[str, Any], seed: int
) -> str:
    """SHA-256 of the canonical JSON of everything that determines the trained weights."""
    major, minor = torch.__version__.split(".")[:2]
    content = {
        "dataset": dict(dataset_spec),
        "builder": f"{builder.__module__}:{builder.__qualname__}",
        "params": dict(params),
        "seed": seed,
        "torch": f"{major}.{minor}",
        "training_version": TRAINING_VERSION,
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


# What torch.load / json raise on a truncated, garbled or foreign file.
_UNREADABLE = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


class ModelCache:
    """``<root>/models/<key>.pt`` (state_dict) beside ``<key>.json`` (facts); atomic writes."""

    def __init__(self, root: Path | None = None):
        self.dir = (root if root is not None else cache_dir()) / "models"

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.pt", self.dir / f"{key}.json"

    def lock(self, key: str) -> AbstractContextManager[object]:
        """An exclusive lock on ``key`` across processes (an OS file lock, released if its holder
        dies): two runs, Dask workers or test workers that need the same untrained model train it
        once, the others wait and load it. No lock where the cache cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return nullcontext()
        return FileLock(self.dir / f".{key}.lock")

    def load(self, key: str, module: nn.Module) -> dict[str, Any] | None:
        """Load the weights into ``module`` and return the facts; None on a miss or bad entry."""
        weights, facts = self.paths(key)
        if not (weights.exists() and facts.exists()):
            return None
        try:
            info = json.loads(facts.read_text())
            state = torch.load(weights, map_location="cpu", weights_only=True)
            if not isinstance(info, dict) or not isinstance(state, dict):
                raise TypeError("cache entry is not a dict")
            backup = copy.deepcopy(module.state_dict())
            try:
                module.load_state_dict(state)
            except RuntimeError:
                module.load_state_dict(backup)
                raise
        except _UNREADABLE as exc:
            log.warning("model cache entry %s is unreadable (%s); retraining", weights, exc)
            return None
        return info

    def save(self, key: str, module: nn.Module, info: Mapping[str, Any]) -> None:
        """Write weights then facts, each via a temp file and ``os.replace``; never fatal."""
        weights, facts = self.paths(key)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(weights, lambda f: torch.save(state, f))
            _atomic_write(facts, lambda f: f.write(json.dumps(dict(info), indent=2).encode()))
        except OSError as exc:
            log.warning("cannot write model cache %s (%s); continuing without it", weights, exc)


def _atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_fit(
    module: nn.Module,
    key: str,
    fit: Callable[[nn.Module], Mapping[str, Any]],
    *,
    cache: ModelCache | None = None,
) -> dict[str, Any]:
    """Load ``module``'s weights for ``key`` from the cache, or ``fit`` it and store the result.

    ``fit(module)`` trains in place and returns JSON-serialisable facts. The returned facts carry
    ``cache_key`` and ``from_cache``; ``module`` is left in eval mode (on the CPU after a cache
    hit, on the fit's device after a fit).
    """
    cache = cache if cache is not None else ModelCache()
    info = cache.load(key, module)
    if info is None:
        with cache.lock(key):  # another process may be fitting it: wait, then look again
            info = cache.load(key, module)
            if info is None:
                facts = {**fit(module), "cache_key": key}
                cache.save(key, module, facts)
                module.eval()
                return {**facts, "from_cache": False}
    module.eval()
    return {**info, "cache_key": key, "from_cache": True}


# -- the built-in classifiers' common part ---------------------------------------------------------
class InputNormalized(nn.Module):
    """Base of the built-in networks: per-channel normalization of raw inputs, inside the model.

    ``mean`` and ``std`` are buffers of shape ``[1, C, 1, ...]`` (one 1 per spatial axis), so they
    travel with the state_dict and the cache; ``ClassifierBuilder`` sets them from the train split.
    Perturbations and baselines act on raw pixels in [0, 1], which is why the model normalizes.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, in_channels: int, spatial_dims: int) -> None:
        super().__init__()
        shape = (1, in_channels, *([1] * spatial_dims))
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def target_layers(self) -> dict[str, nn.Module]:
        """``"auto"`` and named submodules for CAM-type methods."""
        raise NotImplementedError


class ClassifierBuilder(ModelBuilder):
    """Base of the built-in classifiers: train on the fly (or load from the cache) and describe.

    A subclass sets ``name`` (its registry name, used in messages and seeds), ``spatial_dims`` and
    ``min_size``, declares its parameters as keyword-only ``__init__`` arguments stored under the
    same attribute names (so ``params()``, hence the cache key, sees every one of them), passes the
    training options below to ``super().__init__``, and implements ``network(dataset)``. The
    network maps raw ``x`` ``[B, C, *spatial]`` to logits ``[B, K]`` and has ``mean``/``std``
    buffers and a ``target_layers()`` method (``InputNormalized`` gives both).

    Training options (every built-in classifier takes them; all are part of the cache key):
        epochs, lr, weight_decay, train_batch_size: Adam with a cosine schedule, see
            ``train_classifier``; the epoch with the best val accuracy is kept.
        permute_labels: train on a fixed random permutation of the train labels (seeded from the
            build seed; independent of the true labels, see ``permuted_labels``), the
            data-randomization test of Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS
            2018: a method whose maps survive it does not depend on the relation between images
            and labels. Test accuracy is then ≈ chance (recorded as ``test_chance_accuracy``),
            ``train_label_agreement`` is recorded, and the last epoch is kept. Adebayo et al.
            trained until the network memorised the permuted labels; at the default epochs it
            does not (``resnet_small`` on ``brain_lesions_2d``: train accuracy 0.70, test 0.46),
            so raise ``epochs`` if the check needs a memorising model — ``train_accuracy`` in
            ``info`` says how far it got.
        train_seed: 0 is the default model; 1, 2, … give independently trained replicas
            (different initialisation and shuffling, same data and permutation) for
            repeatability checks.
        augment: flip each training sample along each spatial axis with probability 1/2.

    Capabilities: every classifier provides ``GRADIENTS`` and ``TARGET_LAYER``; a subclass adds
    ``GAP_HEAD`` when its network has ``features(x)`` (the ``"auto"`` target layer's output
    ``A`` ``[B, C, *spatial]``) and its last ``nn.Linear`` is the ``head`` with
    ``net(x) == head(mean_spatial(A))`` (so CAM is exact; the ``cam`` method relies on it), and
    ``ATTENTION_MAPS`` when it has ``attention_maps(x) -> {name: [B, 1, *spatial']}`` (maps that
    sum to 1 over space, recomputed from ``x``; the ``attention`` method reads them).

    ``info`` holds ``test_accuracy``, ``test_auroc``, ``test_chance_accuracy``, ``val_accuracy``,
    ``train_accuracy`` (on the labels trained on), ``train_seconds``, ``train_cpu_seconds``,
    ``cache_key``, ``from_cache``, ``permute_labels``, ``train_seed``, ``augment``,
    ``n_parameters`` and the other facts of ``train_classifier``.
    """

    name: ClassVar[str]
    spatial_dims: ClassVar[int] = 2
    min_size: ClassVar[int] = 1
    needs = frozenset({Capability.LABELS, Capability.IMAGES_2D})
    provides = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})

    def __init__(
        self,
        *,
        epochs: int,
        lr: float,
        weight_decay: float,
        train_batch_size: int,
        permute_labels: bool = False,
        train_seed: int = 0,
        augment: bool = False,
    ) -> None:
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.train_batch_size = int(train_batch_size)
        self.permute_labels = bool(permute_labels)
        self.train_seed = int(train_seed)
        self.augment = bool(augment)

    @abstractmethod
    def network(self, dataset: Dataset) -> nn.Module:
        """The untrained network for ``dataset``; called under a seeded RNG."""

    def params(self) -> dict[str, Any]:
        """The resolved parameters, read from the ``__init__`` signature (the cache key's part)."""
        signature = inspect.signature(type(self).__init__)
        return {
            p.name: getattr(self, p.name)
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }

    def run_seed(self, seed: int) -> int:
        """The seed of this replica's initialisation and shuffling.

        ``train_seed=0`` uses the build seed itself, so the default model's weights do not change
        with the introduction of replicas; others derive a fresh seed from both.
        """
        return seed if self.train_seed == 0 else derive_seed(seed, "train_seed", self.train_seed)

    def check(self, dataset: Dataset) -> None:
        """Raise ``UserError`` if ``dataset``'s samples do not fit the network."""
        size = tuple(dataset.spatial_size)
        if len(size) != self.spatial_dims:
            kind = "2D images" if self.spatial_dims == 2 else f"{self.spatial_dims}D volumes"
            raise UserError(
                f"model {self.name} takes {kind}, but the dataset's samples have spatial size "
                f"{size}; use a {self.spatial_dims}D dataset"
            )
        if min(size) < self.min_size:
            raise UserError(
                f"model {self.name} needs at least {self.min_size} pixels along every spatial "
                f"axis, but the dataset's samples have spatial size {size}; use larger images"
            )

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        self.check(dataset)
        run_seed = self.run_seed(seed)
        # Initialise under a private RNG so the weights depend on the seeds alone, not on whatever
        # drew from the global generator before.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(f"{self.name}.init", run_seed))
            net = self.network(dataset)
        key = cache_key(dataset.spec(), type(self), self.params(), seed)

        def fit(module: nn.Module) -> dict[str, Any]:
            mean, std = channel_stats(dataset, "train")
            _set_buffer(module, "mean", mean)
            _set_buffer(module, "std", std)
            facts = train_classifier(
                module,
                dataset,
                seed=run_seed,
                device=device,
                epochs=self.epochs,
                lr=self.lr,
                weight_decay=self.weight_decay,
                batch_size=self.train_batch_size,
                eval_batch_size=batch_size,
                # The permutation depends on the build seed only: replicas share the data.
                label_permutation_seed=(
                    derive_seed("permute_labels", seed) if self.permute_labels else None
                ),
                augment=self.augment,
            )
            test = evaluate(module, dataset, "test", device=device, batch_size=batch_size)
            return {
                **facts,
                "test_accuracy": test["accuracy"],
                "test_auroc": test["auroc"],
                "test_chance_accuracy": test["chance_accuracy"],
                "permute_labels": self.permute_labels,
                "train_seed": self.train_seed,
                "augment": self.augment,
                "n_parameters": sum(p.numel() for p in module.parameters()),
            }

        info = cached_fit(net, key, fit)
        net.to(device).eval()
        spec = InputSpec(
            channels=dataset.channels,
            size=tuple(dataset.spatial_size),
            mean=tuple(net.get_buffer("mean").flatten().tolist()),
            std=tuple(net.get_buffer("std").flatten().tolist()),
        )
        return ExplainedModel(
            module=net,
            input_spec=spec,
            num_classes=dataset.num_classes,
            target_layers=self.target_layers(net),
            info=info,
            provides=self.provides,
        )

    def target_layers(self, net: nn.Module) -> dict[str, nn.Module]:
        """``net.target_layers()``: ``"auto"`` and named layers for CAM-type methods."""
        layers = getattr(net, "target_layers", None)
        if not callable(layers):
            raise TypeError(f"{type(net).__name__} has no target_layers() method")
        return dict(layers())


def _set_buffer(module: nn.Module, name: str, value: Tensor) -> None:
    buffer = module.get_buffer(name)
    with torch.no_grad():
        buffer.copy_(value.view(buffer.shape))
