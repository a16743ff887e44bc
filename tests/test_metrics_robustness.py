"""Robustness metrics: max/avg sensitivity and the local Lipschitz estimate.

Known answers (a constant explainer and a linear model's saliency do not move: 0; an explainer
that returns the image itself has Lipschitz constant 1 and sensitivity ‖δ‖/‖x‖), the reductions
and their NaN cases, chunking invariance and determinism, and the peers on the *same*
perturbations: Quantus 0.6 (``MaxSensitivity``, ``AvgSensitivity``, ``LocalLipschitzEstimate``,
our noise fed through ``perturb_func``) and Captum's ``sensitivity_max`` (same, through its
``perturb_func``), within 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Batch, ExplainedModel, InputSpec, Method, MetricContext
from benchbox.methods.base import hook_counts, sample_seeds
from benchbox.methods.controls import Constant, Random
from benchbox.methods.gradient import IntegratedGradients, Saliency
from benchbox.metrics.robustness import (
    REASON_ALL_CHANGED,
    REASON_NONFINITE,
    REASON_PERTURBED_NONFINITE,
    REASON_ZERO_MAP,
    AvgSensitivity,
    LocalLipschitz,
    MaxSensitivity,
    draw_perturbations,
    noise_ratios,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.tolerance import assert_within, unit_roundoff

quantus = pytest.importorskip("quantus")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- fixtures ------------------------------------------------------------------------------------
class SmallNet(nn.Module):
    """Normalize -> conv -> ReLU -> strided conv -> ReLU -> global average pool -> linear."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1((x - 0.4) / 0.25))))
        return self.fc(h.mean(dim=(2, 3)))


class LinearNet(nn.Module):
    def __init__(self, size: int, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(size * size, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class Identity(Method):
    """The image itself as the map (an explainer whose change equals the input's change)."""

    supports_3d: ClassVar[bool] = True

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        return x.sum(dim=1, keepdim=True).detach()


def wrap(net: nn.Module, size: int = 10) -> ExplainedModel:
    return ExplainedModel(net.eval(), InputSpec(1, (size, size), (0.0,), (1.0,)), num_classes=2)


def data(b: int = 5, size: int = 10, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, size, size, generator=gen), torch.arange(b) % 2


def context(
    model: ExplainedModel,
    method: Method,
    x: Tensor,
    target: Tensor,
    *,
    batch_size: int = 16,
    seed: int = 0,
    attributions: Tensor | None = None,
) -> MetricContext:
    if attributions is None:
        attributions = method.attribute(model, x, target, generator=make_generator(99))
    batch = Batch(x=x, label=target, ids=tuple(map(str, range(len(x)))), target=target)
    return MetricContext(model, batch, attributions, method, make_generator(seed), batch_size)


def noise_of(seed: int, b: int, n: int, shape: tuple[int, ...], **kw: Any) -> Tensor:
    """The perturbations a metric draws from ``make_generator(seed)``: ``[B, n, *shape]``."""
    seeds = sample_seeds(make_generator(seed), b)
    sample = torch.arange(b).repeat_interleave(n)
    draw = torch.arange(n).repeat(b)
    return draw_perturbations(seeds, sample, draw, shape, device=torch.device("cpu"), **kw).view(
        b, n, *shape
    )


METRICS = (MaxSensitivity, AvgSensitivity, LocalLipschitz)


# ================================================================================================
# Known answers
# ================================================================================================
@pytest.mark.parametrize("cls", METRICS)
def test_a_constant_explainer_has_sensitivity_zero(cls: type) -> None:
    x, target = data()
    out = cls(n_samples=6, radius=0.2).score(context(wrap(SmallNet()), Constant(), x, target))
    assert out.values.tolist() == [0.0] * 5 and out.reasons == [None] * 5


@pytest.mark.parametrize("cls", METRICS)
def test_a_linear_models_saliency_does_not_move(cls: type) -> None:
    # |∂y_c/∂x| = |W_c| whatever x: every perturbed map equals the original.
    x, target = data()
    out = cls(n_samples=6, radius=0.2).score(context(wrap(LinearNet(10)), Saliency(), x, target))
    assert out.values.abs().max() == 0.0


def test_identity_explainer_lipschitz_one_and_sensitivity_delta_over_x() -> None:
    # Φ(x) = x: ‖Φ(x+δ) − Φ(x)‖ = ‖δ‖, so L = ‖δ‖/(‖δ‖ + 1e-10) and SENS_k = ‖δ_k‖ / ‖x‖.
    x, target = data(4, 6)
    model = wrap(SmallNet(), 6)
    n, r = 7, 0.1
    lip = LocalLipschitz(n_samples=n, radius=r).score(context(model, Identity(), x, target))
    delta = noise_of(0, 4, n, (1, 6, 6), radius=r, noise="uniform")
    # The map's change is fl32(x + δ) − x, elementwise within u·|x + δ| of δ (one correctly
    # rounded addition, the same on every CPU; the norms run in float64): each ratio is within
    # u·‖x + δ‖/‖δ‖ of its exact value, relatively, and L also within 1e-10/‖δ‖ of 1.
    moved = (x.unsqueeze(1) + delta).double().flatten(2).norm(dim=2)
    delta = delta.double()
    d_norm = delta.flatten(2).norm(dim=2)
    rel = (unit_roundoff() * moved / d_norm).amax(dim=1)
    assert_within(lip.values, torch.ones(4), rel + 1e-10 / d_norm.amin(dim=1))
    ratio = d_norm / x.double().flatten(1).norm(dim=1, keepdim=True)
    mx = MaxSensitivity(n_samples=n, radius=r).score(context(model, Identity(), x, target))
    av = AvgSensitivity(n_samples=n, radius=r).score(context(model, Identity(), x, target))
    assert_within(mx.values, ratio.amax(dim=1), rel * ratio.amax(dim=1))
    assert_within(av.values, ratio.mean(dim=1), rel * ratio.mean(dim=1))


def test_perturbations_are_in_the_ball_and_shaped_as_asked() -> None:
    d = noise_of(3, 3, 50, (2, 5, 5), radius=0.05, noise="uniform")
    assert d.shape == (3, 50, 2, 5, 5)
    assert d.abs().max() <= 0.05 and d.abs().max() > 0.045  # fills the L∞ ball
    assert abs(float(d.mean())) < 0.002
    g = noise_of(3, 3, 200, (1, 8, 8), radius=0.1, noise="gaussian")
    assert float(g.std()) == pytest.approx(0.1, rel=0.03)
    # rows are drawn independently of which rows are drawn together
    seeds = sample_seeds(make_generator(3), 3)
    one = draw_perturbations(
        seeds,
        torch.tensor([2]),
        torch.tensor([17]),
        (2, 5, 5),
        radius=0.05,
        noise="uniform",
        device=torch.device("cpu"),
    )
    assert torch.equal(one[0], d[2, 17])


def test_clip_keeps_the_perturbed_copies_in_range_and_uses_the_clipped_delta() -> None:
    # x = 0 everywhere: with clip the copies are max(δ, 0), so Φ = x moves by ‖max(δ, 0)‖ and
    # the Lipschitz ratio (against the clipped δ) is exactly 1.
    x = torch.zeros(2, 1, 6, 6)
    target = torch.tensor([0, 1])
    model = wrap(SmallNet(), 6)
    ctx = context(model, Identity(), x, target)
    ratios, _ = noise_ratios(
        model,
        Identity(),
        x,
        target,
        ctx.attributions,
        n_samples=5,
        radius=0.3,
        noise="uniform",
        denominator="input",
        clip=True,
        keep_label=False,
        batch_size=4,
        generator=make_generator(0),
    )
    torch.testing.assert_close(ratios, torch.ones_like(ratios), rtol=1e-7, atol=0)


# ================================================================================================
# NaN cases and keep_label
# ================================================================================================
def test_zero_and_nonfinite_maps_are_nan_with_reasons() -> None:
    x, target = data(3)
    attr = torch.rand(3, 1, 10, 10)
    attr[0] = 0.0
    attr[1, 0, 2, 2] = math.nan
    ctx = context(wrap(SmallNet()), Random(), x, target, attributions=attr)
    out = MaxSensitivity(n_samples=3).score(ctx)
    assert out.reasons == [REASON_ZERO_MAP, REASON_NONFINITE, None]
    assert math.isnan(out.values[0]) and math.isnan(out.values[1]) and out.values[2] > 0
    # the Lipschitz ratio has no map in its denominator: a zero map is fine there
    lip = LocalLipschitz(n_samples=3).score(
        context(wrap(SmallNet()), Random(), x, target, attributions=attr)
    )
    assert lip.reasons == [None, REASON_NONFINITE, None] and lip.values[0] > 0


class NaNMaps(Method):
    """Maps of NaN: what a broken method returns for the perturbed copies."""

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        return torch.full((x.shape[0], 1, *x.shape[2:]), math.nan)


@pytest.mark.parametrize("cls", METRICS)
def test_nonfinite_maps_of_the_perturbed_copies_are_named(cls: type) -> None:
    x, target = data(2)
    ctx = context(wrap(SmallNet()), NaNMaps(), x, target, attributions=torch.rand(2, 1, 10, 10))
    out = cls(n_samples=3).score(ctx)
    assert torch.isnan(out.values).all()
    assert out.reasons == [REASON_PERTURBED_NONFINITE] * 2


class SumSign(nn.Module):
    """Class 1 iff the image's sum exceeds ``c``."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1) - self.c
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_keep_label_skips_draws_that_change_the_prediction() -> None:
    x, target = data(4, 6, seed=5)
    model = wrap(SumSign(c=0.0), 6)
    # x = 0 with clipping: every copy has a positive sum, the original sums to 0 -> all change.
    zero = torch.zeros(2, 1, 6, 6)
    ctx = context(model, Identity(), zero, target[:2], attributions=torch.ones(2, 1, 6, 6))
    out = MaxSensitivity(n_samples=4, clip=True, keep_label=True).score(ctx)
    assert out.reasons == [REASON_ALL_CHANGED] * 2 and torch.isnan(out.values).all()
    # The boundary through the sum of x: about half the draws flip; the max over the rest.
    model = wrap(SumSign(c=float(x[0].sum())), 6)
    ctx = context(model, Identity(), x, target)
    kw: dict[str, Any] = {"n_samples": 12, "radius": 0.1, "noise": "uniform", "clip": False}
    ratios, changed = noise_ratios(
        model,
        Identity(),
        x,
        target,
        ctx.attributions,
        denominator="attribution",
        keep_label=True,
        batch_size=5,
        generator=make_generator(0),
        **kw,
    )
    assert 0 < int(changed[0].sum()) < 12  # sample 0 sits on the boundary
    out = MaxSensitivity(**kw, keep_label=True).score(context(model, Identity(), x, target))
    expected = ratios.masked_fill(changed, -math.inf).amax(dim=1)
    torch.testing.assert_close(out.values, expected, rtol=0, atol=0)
    plain = MaxSensitivity(**kw).score(context(model, Identity(), x, target))
    assert plain.values[0] >= out.values[0]


# ================================================================================================
# Batching, determinism, model untouched
# ================================================================================================
@pytest.mark.parametrize("cls", METRICS)
def test_chunking_does_not_change_the_values_and_seeds_repeat(cls: type) -> None:
    x, target = data(5)
    model = wrap(SmallNet())
    metric = cls(n_samples=7, radius=0.1)
    a = metric.score(context(model, Saliency(), x, target, batch_size=3)).values
    b = metric.score(context(model, Saliency(), x, target, batch_size=64)).values
    c = metric.score(context(model, Saliency(), x, target, batch_size=64, seed=1)).values
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert not torch.equal(b, c)  # another seed, other perturbations


@pytest.mark.parametrize("cls", METRICS)
def test_the_model_is_left_as_it_was(cls: type) -> None:
    net = SmallNet()
    model = wrap(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    hooks = hook_counts(net)
    x, target = data()
    cls(n_samples=3, keep_label=True).score(context(model, IntegratedGradients(steps=4), x, target))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert hook_counts(net) == hooks and not net.training


# ================================================================================================
# Peers on the same perturbations
# ================================================================================================
def _quantus_noise(noise: Tensor) -> Any:
    """A Quantus ``perturb_func`` that adds draw ``k`` of ``noise`` ``[B, n, ...]`` at call k."""
    calls = iter(range(noise.shape[1]))

    def perturb(arr: np.ndarray, indices: np.ndarray, **kwargs: Any) -> np.ndarray:
        k = next(calls)
        return arr + noise[:, k].reshape(arr.shape).numpy()

    return perturb


def _explain_func(method: Method, explained: ExplainedModel) -> Any:
    def explain(model: Any, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> Any:
        x = torch.as_tensor(inputs, dtype=torch.float32)
        t = torch.as_tensor(targets, dtype=torch.long)
        return method.attribute(explained, x, t, generator=make_generator(0)).numpy()

    return explain


@pytest.mark.parametrize(
    ("ours", "theirs", "noise"),
    [
        (MaxSensitivity, "MaxSensitivity", "uniform"),
        (AvgSensitivity, "AvgSensitivity", "uniform"),
        (LocalLipschitz, "LocalLipschitzEstimate", "uniform"),
        (LocalLipschitz, "LocalLipschitzEstimate", "gaussian"),
    ],
)
@pytest.mark.filterwarnings("ignore")
def test_agrees_with_quantus_on_the_same_perturbations(ours: type, theirs: str, noise: str) -> None:
    x, target = data(6, 10, seed=3)
    model = wrap(SmallNet(seed=2))
    method = Saliency()
    n, r = 8, 0.1
    ctx = context(model, method, x, target)
    mine = ours(n_samples=n, radius=r, noise=noise).score(ctx).values
    delta = noise_of(0, 6, n, (1, 10, 10), radius=r, noise=noise)
    metric = getattr(quantus, theirs)(
        nr_samples=n,
        perturb_func=_quantus_noise(delta),
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    scores = metric(
        model=model.module,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=ctx.attributions.numpy(),
        explain_func=_explain_func(method, model),
        device="cpu",
        channel_first=True,
    )
    np.testing.assert_allclose(mine.numpy(), np.asarray(scores), rtol=1e-4, atol=1e-6)


def test_agrees_with_captum_sensitivity_max() -> None:
    from captum.metrics import sensitivity_max

    x, target = data(5, 10, seed=4)
    model = wrap(SmallNet(seed=3))
    method = IntegratedGradients(steps=8)
    n, r = 6, 0.02
    ctx = context(model, method, x, target)
    mine = MaxSensitivity(n_samples=n, radius=r).score(ctx).values
    delta = noise_of(0, 5, n, (1, 10, 10), radius=r, noise="uniform").reshape(5 * n, 1, 10, 10)

    def perturb(inputs: Tensor, radius: float) -> Tensor:
        return inputs + delta  # Captum repeats each sample n times, sample-major, like us

    def explain(inputs: Tensor | tuple[Tensor], target: Tensor) -> Tensor | tuple[Tensor]:
        # Captum passes the originals as a tuple and expects a tuple back, like its methods.
        if isinstance(inputs, tuple):
            return (method.attribute(model, inputs[0], target, generator=make_generator(0)),)
        return method.attribute(model, inputs, target, generator=make_generator(0))

    theirs = sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=n, target=target)
    np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-6)


# ================================================================================================
# Registry and parameters
# ================================================================================================
def test_registered_and_directions() -> None:
    assert registry.metrics.get("max_sensitivity") is MaxSensitivity
    assert registry.metrics.get("avg_sensitivity") is AvgSensitivity
    assert registry.metrics.get("local_lipschitz") is LocalLipschitz
    assert not any(cls.higher_is_better for cls in METRICS)
    assert all(cls.__doc__ and cls.__doc__.splitlines()[0] for cls in METRICS)


def test_parameters_are_validated_with_their_path() -> None:
    _, problems = validate_params(MaxSensitivity, {"radius": 2.0}, "metrics[0].max_sensitivity")
    assert problems == ["metrics[0].max_sensitivity.radius: expected a number <= 1.0, got 2.0"]
    _, problems = validate_params(LocalLipschitz, {"noise": "salt"}, "m.local_lipschitz")
    assert len(problems) == 1 and problems[0].startswith("m.local_lipschitz.noise: expected one of")
    resolved, problems = validate_params(AvgSensitivity, {}, "m")
    assert not problems and resolved == {
        "n_samples": 20,
        "radius": 0.05,
        "noise": "uniform",
        "clip": False,
        "keep_label": False,
    }
