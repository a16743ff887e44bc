"""Speed of the model-free metrics (localization, complexity) against Quantus 0.6.

Same process, same inputs (64 maps ``[1, 64, 64]`` and masks), matched settings (those of the
agreement tests: ``normalise=False``, the same ``abs``). benchbox is timed through the metric
class's ``score`` (what the runner calls), Quantus through its ``__call__`` with ``model=None``.
Both run on one CPU thread, so the ratio compares implementations, not thread counts.

Each test asserts benchbox is faster and records ``benchbox_ms``, ``quantus_ms`` and
``speedup`` in ``benchmark.extra_info`` (``pytest tests/benchmarks --benchmark-enable
--benchmark-json=out.json`` keeps them). Timings are the minimum over a few repeats, taken
interleaved so that load on the machine hits both sides alike.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from benchbox.core import Batch, ExplainedModel, InputSpec, Metric, MetricContext
from benchbox.methods.controls import Random
from benchbox.metrics.complexity import Complexity, EffectiveComplexity, Sparseness
from benchbox.metrics.localization import (
    AUROC,
    PointingGame,
    RelevanceMass,
    RelevanceRank,
    TopKIntersection,
)
from benchbox.seeding import make_generator

quantus = pytest.importorskip("quantus")

pytestmark = pytest.mark.benchmark

B, SIZE = 64, 64

# name -> (benchbox metric, Quantus metric, whether Quantus needs the masks)
CASES: dict[str, tuple[Callable[[], Metric], Callable[[], Any], bool]] = {
    "pointing_game": (
        lambda: PointingGame(ties="any"),
        lambda: quantus.PointingGame(disable_warnings=True, normalise=False, abs=False),
        True,
    ),
    "relevance_mass": (
        lambda: RelevanceMass(abs=True),
        lambda: quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False, abs=True),
        True,
    ),
    "relevance_rank": (
        lambda: RelevanceRank(),
        lambda: quantus.RelevanceRankAccuracy(disable_warnings=True, normalise=False, abs=False),
        True,
    ),
    "topk_intersection": (
        lambda: TopKIntersection(k=1000),
        lambda: quantus.TopKIntersection(k=1000, disable_warnings=True, normalise=False),
        True,
    ),
    "auroc": (
        lambda: AUROC(),
        lambda: quantus.AUC(disable_warnings=True, normalise=False, abs=False),
        True,
    ),
    "sparseness": (
        lambda: Sparseness(),
        lambda: quantus.Sparseness(disable_warnings=True, normalise=False),
        False,
    ),
    "complexity": (
        lambda: Complexity(),
        lambda: quantus.Complexity(disable_warnings=True, normalise=False),
        False,
    ),
    "effective_complexity": (
        lambda: EffectiveComplexity(normalise="none"),
        lambda: quantus.EffectiveComplexity(disable_warnings=True, normalise=False),
        False,
    ),
}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs() -> tuple[MetricContext, dict[str, np.ndarray]]:
    gen = torch.Generator().manual_seed(0)
    attr = torch.randn(B, 1, SIZE, SIZE, generator=gen)
    mask = torch.rand(B, 1, SIZE, SIZE, generator=gen) < 0.2
    spec = InputSpec(1, (SIZE, SIZE), (0.0,), (1.0,))
    model = ExplainedModel(nn.Identity(), spec, num_classes=2)
    label = torch.zeros(B, dtype=torch.long)
    ids = tuple(map(str, range(B)))
    batch = Batch(x=torch.zeros(attr.shape), label=label, ids=ids, target=label, mask=mask)
    ctx = MetricContext(model, batch, attr, Random(), make_generator(0), B)
    arrays = {
        "x_batch": np.zeros(attr.shape, dtype=np.float32),
        "y_batch": label.numpy(),
        "a_batch": attr.numpy(),
        "s_batch": mask.numpy().astype(np.float32),
    }
    return ctx, arrays


def seconds(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


@pytest.mark.parametrize("name", sorted(CASES))
def test_faster_than_quantus(
    benchmark: Any,
    one_thread: None,
    inputs: tuple[MetricContext, dict[str, np.ndarray]],
    name: str,
) -> None:
    make_ours, make_theirs, with_masks = CASES[name]
    ctx, arrays = inputs
    ours, theirs = make_ours(), make_theirs()

    def run_ours() -> object:
        return ours.score(ctx)

    def run_theirs() -> object:
        kw = {k: v for k, v in arrays.items() if with_masks or k != "s_batch"}
        # Sparseness and Complexity write into a_batch; the copy costs ~0.1 ms of ~100 ms.
        kw["a_batch"] = kw["a_batch"].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return theirs(model=None, channel_first=True, **kw)

    run_ours(), run_theirs()  # warm-up: lazy imports, allocator
    t_ours, t_theirs = float("inf"), float("inf")
    for _ in range(3):  # interleaved, so a burst of load on the machine hits both
        t_ours = min(t_ours, seconds(run_ours, 3))
        t_theirs = min(t_theirs, seconds(run_theirs, 1))
    benchmark.extra_info.update(
        {
            "shape": [B, 1, SIZE, SIZE],
            "benchbox_ms": round(t_ours * 1e3, 3),
            "quantus_ms": round(t_theirs * 1e3, 3),
            "speedup": round(t_theirs / t_ours, 2),
            "torch_threads": torch.get_num_threads(),
        }
    )
    benchmark.pedantic(run_ours, rounds=5, iterations=1, warmup_rounds=0)
    assert t_ours < t_theirs, (
        f"{name}: benchbox {t_ours * 1e3:.1f} ms, Quantus {t_theirs * 1e3:.1f} ms"
    )
