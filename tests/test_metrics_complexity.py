"""Complexity metrics: Gini sparseness, entropy complexity, effective complexity.

Analytic maps first (uniform, one-hot, two-level), then Quantus 0.6 (``Sparseness``,
``Complexity``, ``EffectiveComplexity``) on the same inputs, and the deliberate differences:
Quantus' batch-wide normalisation and its ``+1e-7`` in the Gini index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Batch, ExplainedModel, InputSpec, MetricContext
from benchbox.methods.controls import Random
from benchbox.metrics.complexity import (
    Complexity,
    EffectiveComplexity,
    Sparseness,
    complexity,
    effective_complexity,
    sparseness,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator

try:
    import quantus

    HAVE_QUANTUS = True
except ImportError:  # pragma: no cover
    HAVE_QUANTUS = False
needs_quantus = pytest.mark.skipif(not HAVE_QUANTUS, reason="quantus is not installed")

Fn = Callable[..., tuple[Tensor, list[str | None]]]
FUNCTIONS: dict[str, Fn] = {
    "sparseness": sparseness,
    "complexity": complexity,
    "effective_complexity": effective_complexity,
}
CLASSES = {
    "sparseness": (Sparseness, True),
    "complexity": (Complexity, False),
    "effective_complexity": (EffectiveComplexity, False),
}


def rand_maps(b: int, size: int = 8, seed: int = 0) -> Tensor:
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def context(attr: Tensor) -> MetricContext:
    b, _, *sp = attr.shape
    model = ExplainedModel(nn.Identity(), InputSpec(1, tuple(sp), (0.0,), (1.0,)), num_classes=2)
    label = torch.zeros(b, dtype=torch.long)
    batch = Batch(x=torch.zeros(attr.shape), label=label, ids=tuple(map(str, range(b))))
    return MetricContext(model, batch, attr, Random(), make_generator(0), 16)


def one_hot(size: int, value: float = 1.0) -> Tensor:
    a = torch.zeros(1, 1, size, size)
    a[0, 0, size // 2, 1] = value
    return a


# ================================================================================================
# Registry and classes
# ================================================================================================
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_registered_without_needs(name: str) -> None:
    cls, higher = CLASSES[name]
    assert registry.metrics.get(name) is cls
    assert cls.higher_is_better is higher and cls.needs == frozenset()
    attr = rand_maps(3)
    out = cls().score(context(attr))
    torch.testing.assert_close(out.values, FUNCTIONS[name](attr)[0], rtol=0, atol=0)
    assert out.reasons == [None] * 3
    ctx = context(attr)
    bad = MetricContext(ctx.model, ctx.batch, attr[:, :, :4], ctx.method, ctx.generator, 16)
    with pytest.raises(ValueError, match=r"attributions: expected shape \[3, 1, 8, 8\]"):
        cls().score(bad)


def test_parameters() -> None:
    assert validate_params(EffectiveComplexity, {}, "m") == ({"eps": 1e-5, "normalise": "max"}, [])
    _, problems = validate_params(EffectiveComplexity, {"eps": -1}, "metrics[3].ec")
    assert problems == ["metrics[3].ec.eps: expected a number >= 0.0, got -1"]
    _, problems = validate_params(EffectiveComplexity, {"normalise": "batch"}, "e")
    assert problems == ["e.normalise: expected one of 'max' or 'none', got 'batch'"]
    assert validate_params(Sparseness, {}, "m") == ({}, [])
    _, problems = validate_params(Complexity, {"abs": True}, "c")
    assert problems == ["c.abs: unknown parameter; valid parameters: none"]


# ================================================================================================
# Known answers
# ================================================================================================
def test_gini_known_answers() -> None:
    n = 36
    assert sparseness(torch.full((1, 1, 6, 6), -0.3))[0].tolist() == [0.0]
    assert sparseness(one_hot(6))[0].tolist() == [pytest.approx(1 - 1 / n)]
    # |a| sorted [0, 0, 1, 1]: Σ (2i − 5) x_(i) / (4 · 2) = (1 + 3) / 8.
    a = torch.tensor([0.0, -1.0, 0.0, 1.0]).view(1, 1, 2, 2)
    assert sparseness(a)[0].tolist() == [0.5]
    # Gini of [1, 2, 3, 4]: Σ_ij |x_i − x_j| / (2 n² mean) = 20 / (2 · 16 · 2.5) = 0.25.
    a = torch.tensor([4.0, 1.0, 3.0, -2.0]).view(1, 1, 2, 2)
    assert sparseness(a)[0].tolist() == [pytest.approx(0.25)]
    # Scale- and sign-invariant; more concentrated maps are sparser.
    x = rand_maps(4)
    torch.testing.assert_close(sparseness(-8 * x)[0], sparseness(x)[0], rtol=1e-12, atol=0)
    assert (sparseness(x**3)[0] > sparseness(x)[0]).all()


def test_gini_matches_mean_absolute_difference() -> None:
    # The definition it implements: G = Σ_i Σ_j |x_i − x_j| / (2 N Σ x).
    x = rand_maps(5, size=7, seed=3).abs().flatten(1).double()
    want = (x[:, :, None] - x[:, None, :]).abs().sum((1, 2)) / (2 * 49 * x.sum(1))
    torch.testing.assert_close(sparseness(x.view(5, 1, 7, 7))[0], want, rtol=1e-12, atol=0)


def test_entropy_known_answers() -> None:
    assert complexity(torch.full((1, 1, 6, 6), 2.0))[0].tolist() == [pytest.approx(math.log(36))]
    assert complexity(one_hot(6, -3.0))[0].tolist() == [0.0]
    a = torch.tensor([1.0, -1.0, 2.0, 0.0]).view(1, 1, 2, 2)  # p = [¼, ¼, ½, 0]
    want = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert complexity(a)[0].tolist() == [pytest.approx(want, abs=1e-15)]


def test_effective_complexity_known_answers() -> None:
    a = torch.tensor([1.0, -1e-3, 1e-6, 0.0, 2e-5, -5e-6]).view(1, 1, 2, 3)
    assert effective_complexity(a, normalise="none")[0].tolist() == [3.0]  # 1, 1e-3, 2e-5
    # Relative to the peak 1 the same; scaled by 1e3, raw counts change but "max" does not.
    assert effective_complexity(a)[0].tolist() == [3.0]
    assert effective_complexity(1e3 * a, normalise="none")[0].tolist() == [5.0]
    assert effective_complexity(1e3 * a)[0].tolist() == [3.0]
    assert effective_complexity(a, eps=0.0)[0].tolist() == [5.0]
    assert effective_complexity(torch.zeros(1, 1, 2, 3))[0].tolist() == [0.0]


# ================================================================================================
# Edge cases, invariances, devices
# ================================================================================================
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_undefined_cases(name: str) -> None:
    attr = rand_maps(4)
    attr[1] = 0.0
    attr[2, 0, 1, 1] = math.nan
    attr[3, 0, 0, 0] = math.inf
    values, reasons = FUNCTIONS[name](attr)
    assert math.isfinite(values[0].item()) and torch.isnan(values[2:]).all()
    assert reasons[2:] == ["attribution has non-finite values"] * 2
    if name == "effective_complexity":  # an all-zero map has no feature above eps: 0
        assert values[1].item() == 0.0 and reasons[:2] == [None, None]
    else:  # Gini and entropy of a zero vector are 0/0
        assert math.isnan(values[1].item()) and reasons[:2] == [None, "attribution is all zero"]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_batch_split_invariance_device_and_3d(name: str) -> None:
    fn = FUNCTIONS[name]
    attr = rand_maps(11, size=9, seed=5)
    attr[3] *= 1000  # a sample with a much larger peak must not change the others
    whole, _ = fn(attr)
    parts = torch.cat([fn(attr[i : i + 4])[0] for i in range(0, 11, 4)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    single = torch.cat([fn(attr[i : i + 1])[0] for i in range(11)])
    torch.testing.assert_close(single, whole, rtol=0, atol=0)
    assert whole.device == attr.device and whole.dtype == torch.float64
    vol = torch.randn(2, 1, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    v3, _ = fn(vol)
    flat, _ = fn(vol.reshape(2, 1, 18, 6))
    torch.testing.assert_close(v3, flat, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_cuda_matches_cpu(name: str) -> None:
    attr = rand_maps(8, size=16, seed=7)
    cpu, reasons = FUNCTIONS[name](attr)
    gpu, gpu_reasons = FUNCTIONS[name](attr.cuda())
    assert gpu.device.type == "cuda" and gpu_reasons == reasons
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-12, atol=1e-12)


# ================================================================================================
# Quantus 0.6
# ================================================================================================
def quantus_scores(metric: Any, attr: Tensor) -> np.ndarray:
    b = attr.shape[0]
    out = metric(
        model=None,
        x_batch=np.zeros(attr.shape, dtype=np.float32),
        y_batch=np.zeros(b, dtype=np.int64),
        a_batch=attr.numpy().copy(),  # Sparseness and Complexity write into a_batch in place
        channel_first=True,
    )
    return np.asarray(out, dtype=np.float64)


@needs_quantus
@pytest.mark.parametrize("normalise", [True, False])
def test_sparseness_and_complexity_agree_with_quantus(normalise: bool) -> None:
    # Both are scale-invariant, so Quantus' batch-wide normalisation does not matter here.
    attr = rand_maps(64, size=16, seed=8)
    attr[::3] = attr[::3] ** 5  # some concentrated maps
    q_gini = quantus_scores(quantus.Sparseness(disable_warnings=True, normalise=normalise), attr)
    q_ent = quantus_scores(quantus.Complexity(disable_warnings=True, normalise=normalise), attr)
    np.testing.assert_allclose(sparseness(attr)[0].numpy(), q_gini, rtol=0, atol=1e-4)
    np.testing.assert_allclose(complexity(attr)[0].numpy(), q_ent, rtol=0, atol=1e-4)


@needs_quantus
def test_sparseness_differs_from_quantus_by_its_epsilon() -> None:
    # Quantus adds 1e-7 to every |a|: G_q = G · Σ|a| / (Σ|a| + N·1e-7). Exact benchbox values,
    # and an all-zero map is NaN in benchbox but 0 in Quantus.
    size, n = 64, 64 * 64
    attr = torch.cat([one_hot(size), torch.zeros(1, 1, size, size)])
    theirs = quantus_scores(quantus.Sparseness(disable_warnings=True, normalise=False), attr)
    ours, reasons = sparseness(attr)
    assert ours[0].item() == pytest.approx(1 - 1 / n, abs=1e-15)
    assert theirs[0] == pytest.approx((1 - 1 / n) / (1 + n * 1e-7), rel=1e-5)
    assert ours[0].item() - theirs[0] > 3e-4  # a visible difference for very sparse maps
    assert (
        theirs[1] == 0.0 and math.isnan(ours[1].item()) and reasons[1] == "attribution is all zero"
    )


@needs_quantus
def test_effective_complexity_agrees_with_quantus() -> None:
    attr = rand_maps(64, size=16, seed=9) * 1e-4  # many magnitudes near eps
    ours, _ = effective_complexity(attr, normalise="none")
    q = quantus.EffectiveComplexity(disable_warnings=True, normalise=False)
    np.testing.assert_array_equal(ours.numpy(), quantus_scores(q, attr))
    assert ours.min() > 0 and ours.max() < 256  # the threshold bites
    # Quantus' default normalise=True on a batch of one divides by that sample's own peak.
    q = quantus.EffectiveComplexity(disable_warnings=True, normalise=True, eps=0.05)
    theirs = np.concatenate([quantus_scores(q, attr[i : i + 1]) for i in range(8)])
    ours, _ = effective_complexity(attr[:8], eps=0.05, normalise="max")
    np.testing.assert_array_equal(ours.numpy(), theirs)


@needs_quantus
def test_effective_complexity_batch_normalisation_deliberately_differs_from_quantus() -> None:
    # PROTOCOLS Q2: Quantus' normalise_by_max divides by the peak over the whole batch, so a
    # sample's score depends on its batch-mates. benchbox normalises each sample by its own peak.
    attr = rand_maps(2, size=16, seed=10)
    attr[1] *= 100  # a batch-mate with a 100x larger peak
    q = quantus.EffectiveComplexity(disable_warnings=True, normalise=True, eps=0.05)
    alone = quantus_scores(q, attr[:1])[0]
    together = quantus_scores(q, attr)[0]
    assert together < alone  # Quantus: sample 0 looks simpler next to a bigger map
    ours_alone, _ = effective_complexity(attr[:1], eps=0.05)
    ours_together, _ = effective_complexity(attr, eps=0.05)
    assert ours_alone[0].item() == ours_together[0].item() == alone
