"""Training, evaluation and a content-addressed weight cache shared by the built-in models.

``train_classifier`` fits any ``[B, C, *spatial] -> [B, K]`` module on a dataset's train split with
Adam and a cosine learning-rate schedule, keeping the epoch with the best validation accuracy.
``evaluate`` gives accuracy, mean cross-entropy and AUROC on a split. ``cached_fit`` wraps a fit in
the weight cache: the key is the SHA-256 of the canonical JSON of (dataset spec, builder class and
parameters, seed, torch major.minor, training code version), and the cache lives in
``$BENCHBOX_CACHE/models/`` (default ``~/.cache/benchbox/models/``) as ``<key>.pt`` (a state_dict,
loaded with ``weights_only=True``) and ``<key>.json`` (the recorded facts). Both files are written
atomically; an unreadable entry is retrained and overwritten, never fatal.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Dataset, Split
from ..params import canonical_json
from ..seeding import derive_seed

__all__ = [
    "TRAINING_VERSION",
    "ModelCache",
    "auroc",
    "cache_dir",
    "cache_key",
    "cached_fit",
    "channel_stats",
    "evaluate",
    "train_classifier",
]

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
    return {
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "auroc": _auroc_from_logits(logits, labels),
        "n": int(labels.numel()),
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
) -> dict[str, Any]:
    """Fit ``module`` in place on the train split; keep the epoch with the best val accuracy.

    Adam (``weight_decay`` as L2 added to the gradient), a cosine schedule from ``lr`` to 0 over
    all steps, cross-entropy loss. Shuffling draws from a generator seeded from ``seed`` (never the
    global RNG), so on CPU the result is bit-identical for the same seed, data and thread count.
    Ties in val accuracy go to the lower val loss. Returns facts about the run (best epoch, val
    scores, seconds); ``module`` ends in eval mode holding the best epoch's weights.
    """
    device = torch.device(device)
    start = time.perf_counter()
    module.to(device)
    train_src = _split_source(dataset, "train")
    val_src = _split_source(dataset, "val")
    n_train, n_val = dataset.split_size("train"), dataset.split_size("val")
    steps = epochs * math.ceil(n_train / batch_size)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    gen = torch.Generator().manual_seed(derive_seed("train_classifier", seed))
    best: tuple[float, float] | None = None
    best_state: dict[str, Tensor] = {}
    best_epoch, history = 0, []
    for epoch in range(1, epochs + 1):
        module.train()
        total, count = 0.0, 0
        for x, y in _batches(train_src, torch.randperm(n_train, generator=gen), batch_size):
            x, y = x.to(device), y.to(device)
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
        if best is None or rank > best:
            best, best_epoch = rank, epoch
            best_state = copy.deepcopy(module.state_dict())
        log.info(
            "epoch %d/%d train_loss %.4f val_acc %.4f",
            epoch,
            epochs,
            total / count,
            val["accuracy"],
        )
    module.load_state_dict(best_state)
    module.eval()
    chosen = history[best_epoch - 1]
    return {
        "best_epoch": best_epoch,
        "epochs": epochs,
        "val_accuracy": chosen["accuracy"],
        "val_auroc": chosen["auroc"],
        "val_loss": chosen["loss"],
        "final_train_loss": history[-1]["train_loss"],
        "train_seconds": time.perf_counter() - start,
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
    if info is not None:
        module.eval()
        return {**info, "cache_key": key, "from_cache": True}
    facts = {**fit(module), "cache_key": key}
    cache.save(key, module, facts)
    module.eval()
    return {**facts, "from_cache": False}
