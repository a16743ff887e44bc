"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch

from benchbox.core import Batch, Dataset, ExplainedModel, ModelBuilder


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the README's test command runs one worker per core), one torch
    thread per worker: the workers already use every core, and more threads would only contend.
    The trained-model tests pin one thread anyway (their weights depend on the thread count)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def default_models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weight cache for the built-in classifiers trained at their defaults (slow tests).

    Several test modules need e.g. ``resnet_small`` trained on ``brain_lesions_2d`` at the
    defaults, on one thread; they point ``BENCHBOX_CACHE`` here so it is trained once per session
    (the cache key covers the dataset spec, the parameters and the seed, so a test that changes
    any of them still trains its own). Under pytest-xdist the folder is shared by the workers
    (the weight cache's file lock lets one train what another waits for).
    ``BENCHBOX_TEST_MODELS`` names a folder to keep them in between sessions instead (they are
    retrained when the training code changes: its version is part of the cache key).
    """
    keep = os.environ.get("BENCHBOX_TEST_MODELS")
    if keep:
        return Path(keep)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' basetemps are siblings
    path = root / "default_models_cache"
    path.mkdir(exist_ok=True)
    return path


# The training seeds every finding on a trained model is asserted over: another CPU's float
# kernels (or another thread count) train other weights, so a finding that holds for one training
# trajectory only is not a finding (issue 13). ``train_seed`` 0 is the model a suite's defaults
# give; 1 and 2 are its replicas (``replicas: 3``).
TRAIN_SEEDS = (0, 1, 2)


@contextmanager
def trained_at_defaults(
    cache: Path,
    dataset: Dataset,
    builder: ModelBuilder,
    *,
    batch_size: int = 64,
    train_seed: int = 0,
) -> Iterator[tuple[ExplainedModel, Batch]]:
    """A built-in model at its defaults (build seed 0; ``train_seed`` picks the replica) and the
    first 64 test images with its predictions as targets, all on one thread, weights in
    ``cache`` (``default_models_cache``).

    One thread while the model trains (its weights depend on the thread count) and while the
    caller uses it; the thread count and ``BENCHBOX_CACHE`` are restored on exit.
    """
    if train_seed:
        builder = type(builder)(**{**builder.params(), "train_seed": train_seed})  # type: ignore[attr-defined]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BENCHBOX_CACHE", str(cache))
            model = builder.build(
                dataset, seed=0, device=torch.device("cpu"), batch_size=batch_size
            )
            batch = dataset.get("test", range(64))
            with torch.no_grad():
                batch = batch.with_target(model(batch.x).argmax(dim=1))
            yield model, batch
    finally:
        torch.set_num_threads(threads)


@contextmanager
def trained_replicas(
    cache: Path, dataset: Dataset, builder: ModelBuilder, *, batch_size: int = 64
) -> Iterator[dict[int, tuple[ExplainedModel, Batch]]]:
    """``trained_at_defaults`` for every seed of ``TRAIN_SEEDS``: ``{train_seed: (model,
    batch)}``, on one thread until the caller is done with them."""
    with ExitStack() as stack:
        yield {
            seed: stack.enter_context(
                trained_at_defaults(cache, dataset, builder, batch_size=batch_size, train_seed=seed)
            )
            for seed in TRAIN_SEEDS
        }
