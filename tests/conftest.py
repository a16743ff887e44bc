"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from benchbox.core import Batch, Dataset, ExplainedModel, ModelBuilder


@pytest.fixture(scope="session")
def default_models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weight cache for the built-in classifiers trained at their defaults (slow tests).

    Several test modules need e.g. ``resnet_small`` trained on ``brain_lesions_2d`` at the
    defaults, on one thread; they point ``BENCHBOX_CACHE`` here so it is trained once per session
    (the cache key covers the dataset spec, the parameters and the seed, so a test that changes
    any of them still trains its own).
    """
    return tmp_path_factory.mktemp("default_models_cache")


@contextmanager
def trained_at_defaults(
    cache: Path, dataset: Dataset, builder: ModelBuilder, *, batch_size: int = 64
) -> Iterator[tuple[ExplainedModel, Batch]]:
    """A built-in model at its defaults (seed 0) and the first 64 test images with its
    predictions as targets, all on one thread, weights in ``cache`` (``default_models_cache``).

    One thread while the model trains (its weights depend on the thread count) and while the
    caller uses it; the thread count and ``BENCHBOX_CACHE`` are restored on exit.
    """
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
