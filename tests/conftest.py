"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_models_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One weight cache for the built-in classifiers trained at their defaults (slow tests).

    Several test modules need e.g. ``resnet_small`` trained on ``brain_lesions_2d`` at the
    defaults, on one thread; they point ``BENCHBOX_CACHE`` here so it is trained once per session
    (the cache key covers the dataset spec, the parameters and the seed, so a test that changes
    any of them still trains its own).
    """
    return tmp_path_factory.mktemp("default_models_cache")
