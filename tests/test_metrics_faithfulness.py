"""Faithfulness metrics: pixel flipping, region perturbation, ROAD, faithfulness correlation,
infidelity (deletion/insertion: tests/test_metrics.py).

Every metric has analytic known answers (a linear model whose true contributions are known; the
curve's end at the baseline's score; infidelity 0 and correlation 1 where theory says so), edge
cases (constant and non-finite maps), chunking invariance, and a comparison with its peer on the
same inputs: Quantus 0.6 for pixel flipping, region perturbation, ROAD (same noise, monkeypatched
into Quantus' ``np.random.randn``) and faithfulness correlation (same subsets, monkeypatched into
``np.random.choice``); Captum for infidelity (same perturbations, through ``perturb_func``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Batch, Capability, ExplainedModel, InputSpec, MetricContext
from benchbox.methods.controls import Random
from benchbox.metrics.faithfulness import (
    ROAD,
    Baseline,
    Deletion,
    FaithfulnessCorrelation,
    Infidelity,
    Insertion,
    PixelFlipping,
    RegionPerturbation,
    _first_distinct,
    baseline_image,
    faithfulness_correlation,
    linear_imputation,
    patch_ids,
    perturbation_ranks,
    random_subsets,
    region_ranks,
    trapezoid,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.tolerance import (
    Affine,
    Bounded,
    Float64Inside,
    Mean,
    Step,
    assert_within,
    gamma,
    rounded_logit_bound,
)

quantus = pytest.importorskip("quantus")

# Quantus 0.6's calculate_auc calls np.trapz, deprecated in NumPy 2.x (removed in 2.4).
pytestmark = pytest.mark.filterwarnings("ignore:`trapz` is deprecated:DeprecationWarning")


# -- fixtures ------------------------------------------------------------------------------------
class SmallNet(nn.Module):
    """Normalize -> conv -> ReLU -> strided conv -> ReLU -> global average pool -> linear."""

    def __init__(self, channels: int = 1, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1((x - 0.4) / 0.25))))
        return self.fc(h.mean(dim=(2, 3)))

    def steps(self) -> list[Step]:
        """The forward pass as ``tests.tolerance.forward_bound`` steps."""
        relu = nn.ReLU()
        return [Affine(0.4, 0.25), self.conv1, relu, self.conv2, relu, Mean((2, 3)), self.fc]


class LinearNet(nn.Module):
    """``logits = W x + b`` on the flattened image."""

    def __init__(self, shape: tuple[int, ...], classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(math.prod(shape), classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.fc.bias.copy_(torch.randn(classes, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def wrap(net: nn.Module, channels: int = 1, size: int = 12) -> ExplainedModel:
    spec = InputSpec(channels, (size, size), (0.0,) * channels, (1.0,) * channels)
    return ExplainedModel(net.eval(), spec, num_classes=2)


def data(b: int, size: int, channels: int = 1, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Images in [0, 1], alternating targets, and a random map without ties."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, channels, size, size, generator=gen)
    attr = torch.randn(b, 1, size, size, generator=gen)
    return x, torch.arange(b) % 2, attr


def context(
    model: ExplainedModel,
    x: Tensor,
    target: Tensor,
    attr: Tensor,
    batch_size: int = 16,
    seed: int = 0,
) -> MetricContext:
    ids = tuple(str(i) for i in range(x.shape[0]))
    batch = Batch(x=x, label=target, ids=ids, target=target)
    return MetricContext(model, batch, attr, Random(), make_generator(seed), batch_size)


def scores(model: ExplainedModel, x: Tensor, target: Tensor, kind: str = "probability") -> Tensor:
    with torch.no_grad():
        logits = model(x)
    out = logits.softmax(dim=1) if kind == "probability" else logits
    return out.gather(1, target[:, None]).squeeze(1)


def linear_truth(net: LinearNet, x: Tensor, target: Tensor) -> Tensor:
    """Each pixel's exact contribution to the target's margin over the other class."""
    w = net.fc.weight.detach()
    size = x.shape[-1]
    return (w[target] - w[1 - target]).view(-1, 1, size, size) * x


def qcall(metric: Any, model: ExplainedModel, x: Tensor, target: Tensor, attr: Tensor) -> Any:
    return metric(
        model=model.module,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=attr.numpy(),
        device="cpu",
        channel_first=True,
    )


QUIET = {"normalise": False, "abs": False, "disable_warnings": True}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ================================================================================================
# Registry, parameters, shared helpers
# ================================================================================================
@pytest.mark.parametrize(
    ("name", "cls", "higher"),
    [
        ("deletion", Deletion, False),
        ("insertion", Insertion, True),
        ("pixel_flipping", PixelFlipping, False),
        ("region_perturbation", RegionPerturbation, True),
        ("road", ROAD, False),
        ("faithfulness_correlation", FaithfulnessCorrelation, True),
        ("infidelity", Infidelity, False),
    ],
)
def test_registered_with_direction(name: str, cls: type, higher: bool) -> None:
    assert registry.metrics.get(name) is cls
    assert cls.higher_is_better is higher  # type: ignore[attr-defined]
    _, problems = validate_params(cls, {}, f"metrics[0].{name}")
    assert problems == []
    assert registry.metrics.describe(name) == cls.__doc__.strip().splitlines()[0]  # type: ignore[union-attr]


def test_parameter_validation_messages() -> None:
    _, problems = validate_params(ROAD, {"percentages": [10, 100]}, "metrics[1].road")
    assert problems == ["metrics[1].road.percentages.1: expected a value < 100.0, got 100"]
    _, problems = validate_params(ROAD, {"percentages": []}, "metrics[1].road")
    assert len(problems) == 1 and problems[0].startswith("metrics[1].road.percentages:")
    _, problems = validate_params(
        FaithfulnessCorrelation, {"n_runs": 1}, "metrics[0].faithfulness_correlation"
    )
    assert problems == [
        "metrics[0].faithfulness_correlation.n_runs: expected an integer >= 2, got 1"
    ]
    _, problems = validate_params(PixelFlipping, {"baseline": "black"}, "m.pixel_flipping")
    assert problems == [
        "m.pixel_flipping.baseline: expected one of 'min', 'zero', 'mean', 'blur' or 'uniform', "
        "got 'black'"
    ]
    assert ROAD.needs == frozenset({Capability.IMAGES_2D})


def test_trapezoid_is_numpy_trapz_dx1() -> None:
    y = torch.rand(4, 7, generator=torch.Generator().manual_seed(0)).double()
    # Both in float64, summing 2·6 halves in their own orders.
    bound = 2 * gamma(2 * y.shape[1], torch.float64) * y.abs().sum(dim=1)
    assert_within(trapezoid(y.float()), np.trapezoid(y.numpy(), dx=1, axis=1), bound)
    assert trapezoid(torch.tensor([[1.0, 0.0, 1.0]])).item() == 1.0


def test_baseline_images() -> None:
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    mins = baseline_image(x, "min")
    assert mins.shape == x.shape
    torch.testing.assert_close(mins[:, 0, 0, 0], x.flatten(1).min(dim=1).values)
    assert (mins == mins[:, :1, :1, :1]).all()  # one value per sample, all channels
    assert (baseline_image(x, "zero") == 0).all()
    torch.testing.assert_close(baseline_image(x, "mean")[:, :, 2, 2], x.mean(dim=(2, 3)))
    u1 = baseline_image(x, "uniform", make_generator(3))
    u2 = baseline_image(x, "uniform", make_generator(3))
    assert torch.equal(u1, u2) and float(u1.min()) >= 0 and float(u1.max()) < 1
    assert float(u1.std()) > 0.2  # per-pixel noise, not a constant
    with pytest.raises(ValueError, match="baseline 'uniform' needs a generator"):
        baseline_image(x, "uniform")


def test_patch_ids_center_the_padding_like_quantus() -> None:
    # 7 px with patches of 3: 9 padded px, 1 before and 1 after -> columns 0,0 | 1,1,1 | 2,2.
    ids, n = patch_ids((7,), 3, torch.device("cpu"))
    assert n == 3 and ids.tolist() == [0, 0, 1, 1, 1, 2, 2]
    ids, n = patch_ids((4, 6), 2, torch.device("cpu"))
    assert n == 6
    assert ids.tolist() == [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2
    ids, n = patch_ids((5, 5, 5), 4, torch.device("cpu"))  # 3D: cubes
    assert n == 8 and ids[0, 0, 0] == 0 and ids[4, 4, 4] == 7 and ids[1, 1, 1] == 0


def test_region_ranks_by_patch_sums() -> None:
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0, 0] = 1.0  # patch 0: sum 1
    a[0, 0, 3, 3] = 5.0  # patch 3: sum 5
    a[0, 0, 0, 3] = -2.0  # patch 1: sum -2; patch 2: sum 0
    ranks, n = region_ranks(a, 2, "morf")
    assert n == 4
    assert ranks[0, 0, ::2, ::2].flatten().tolist() == [1, 3, 2, 0]  # patches 0, 1, 2, 3
    ranks, _ = region_ranks(a, 2, "lerf")
    assert ranks[0, 0, ::2, ::2].flatten().tolist() == [2, 0, 1, 3]


# ================================================================================================
# Pixel flipping
# ================================================================================================
@pytest.mark.parametrize(
    ("baseline", "quantus_baseline", "step"), [("min", "black", 8), ("zero", 0.0, 18)]
)
def test_pixel_flipping_agrees_with_quantus(
    baseline: Baseline, quantus_baseline: Any, step: int
) -> None:
    # Quantus PixelFlipping: argsort(-a), cumulative, features_in_step per step, softmax
    # probability of y; its "black" is the sample's minimum. C = 1 and no ties: same order.
    model = wrap(SmallNet())
    x, target, attr = data(6, 12, seed=7)
    ours = PixelFlipping(features_in_step=step, baseline=baseline).score(
        context(model, x, target, attr)
    )
    theirs = quantus.PixelFlipping(
        features_in_step=step, perturb_baseline=quantus_baseline, **QUIET
    )
    curves = np.asarray(qcall(theirs, model, x, target, attr))
    assert ours.curves is not None and ours.curves.shape == (6, 144 // step)
    np.testing.assert_allclose(ours.curves.numpy(), curves, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        ours.values.numpy(), np.trapezoid(curves, dx=1, axis=1), rtol=1e-6, atol=0
    )
    auc = quantus.PixelFlipping(
        features_in_step=step,
        perturb_baseline=quantus_baseline,
        return_auc_per_sample=True,
        **QUIET,
    )
    np.testing.assert_allclose(
        ours.values.numpy(), np.asarray(qcall(auc, model, x, target, attr)), rtol=1e-6
    )


@pytest.mark.parametrize("baseline", ["min", "zero", "mean", "blur", "uniform"])
def test_pixel_flipping_ends_at_the_baselines_score(baseline: Baseline) -> None:
    model = wrap(SmallNet())
    x, target, attr = data(5, 12)
    out = PixelFlipping(features_in_step=10, baseline=baseline).score(
        context(model, x, target, attr, seed=4)
    )
    # The last step flips everything: the image is the baseline (uniform: same seed, same draw).
    base = baseline_image(x, baseline, make_generator(4))
    assert out.curves is not None and out.curve_x is not None
    assert out.curves.shape == (5, 15)  # ceil(144 / 10)
    torch.testing.assert_close(out.curves[:, -1], scores(model, base, target), rtol=0, atol=1e-6)
    assert out.curve_x[-1].item() == 1.0 and out.curve_x[0].item() == pytest.approx(10 / 144)


def test_pixel_flipping_perfect_map_wins_morf_and_loses_raw_lerf() -> None:
    # Linear model, zero baseline: removing pixel p lowers the target's margin by exactly its
    # contribution, so the true contributions are the optimal MoRF order at every step and the
    # optimal LeRF order (margin kept highest) as well.
    size, b = 10, 8
    net = LinearNet((1, size, size))
    model = wrap(net, size=size)
    x, target, _ = data(b, size, seed=4)
    perfect = linear_truth(net, x, target)
    random = torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(9))
    morf = PixelFlipping(features_in_step=5, baseline="zero")
    p, r = (morf.score(context(model, x, target, a)) for a in (perfect, random))
    assert (p.values < r.values).all()  # lower AUC: the evidence goes first
    lerf = PixelFlipping(features_in_step=5, baseline="zero", order="lerf")
    pl, rl = (lerf.score(context(model, x, target, a)) for a in (perfect, random))
    assert pl.curves is not None and rl.curves is not None
    # The raw LeRF score curve of the perfect map stays higher ("loses" by the MoRF reading)...
    assert (trapezoid(pl.curves) > trapezoid(rl.curves)).all()
    # ...so the stored LeRF value, the area of the drop y_0 - y_t, is lower: one direction.
    assert (pl.values < rl.values).all()
    y0 = scores(model, x, target).double()
    torch.testing.assert_close(pl.values, trapezoid(y0[:, None] - pl.curves.double()))


def test_pixel_flipping_constant_map_flips_in_row_major_order() -> None:
    model = wrap(SmallNet())
    x, target, _ = data(3, 12)
    metric = PixelFlipping(features_in_step=12)
    constant = metric.score(context(model, x, target, torch.full((3, 1, 12, 12), 0.7)))
    row_major = -torch.arange(144.0).view(1, 1, 12, 12).expand(3, 1, 12, 12)
    explicit = metric.score(context(model, x, target, row_major.contiguous()))
    assert constant.curves is not None and explicit.curves is not None
    torch.testing.assert_close(constant.curves, explicit.curves, rtol=0, atol=0)
    assert constant.reasons == [None] * 3


def test_pixel_flipping_chunking_nan_maps_and_bad_step() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(5, 12)
    attr[2, 0, 3, 3] = torch.nan
    outs = [
        PixelFlipping(features_in_step=16).score(context(model, x, target, attr, batch_size=bs))
        for bs in (1, 7, 1000)
    ]
    for o in outs:
        assert o.reasons == [None, None, "attribution has non-finite values", None, None]
        assert o.curves is not None and torch.isnan(o.curves[2]).all()
        torch.testing.assert_close(o.values, outs[0].values, rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="features_in_step: 144 flips all 144 pixels"):
        PixelFlipping(features_in_step=144).score(context(model, x, target, attr))


# ================================================================================================
# Region perturbation
# ================================================================================================
@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("patch", [4, 5])  # 5 does not divide 12: Quantus' centred padding
def test_region_perturbation_agrees_with_quantus(order: str, patch: int) -> None:
    model = wrap(SmallNet())
    x, target, attr = data(6, 12, seed=7)
    ours = RegionPerturbation(patch_size=patch, order=order, baseline="min").score(  # type: ignore[arg-type]
        context(model, x, target, attr)
    )
    theirs = quantus.RegionPerturbation(patch_size=patch, order=order, **QUIET)
    drops = np.asarray(qcall(theirs, model, x, target, attr))
    assert ours.curves is not None and ours.curves.shape == drops.shape == (6, 9)
    np.testing.assert_allclose(ours.curves.numpy(), drops, rtol=0, atol=1e-6)
    aopc = drops.astype(np.float64).sum(axis=1) / (drops.shape[1] + 1)  # Samek: k = 0..L
    np.testing.assert_allclose(ours.values.numpy(), aopc if order == "morf" else -aopc, atol=1e-6)


def test_region_perturbation_regions_capped_and_endpoint() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(4, 12)
    out = RegionPerturbation(patch_size=4, regions=100).score(
        context(model, x, target, attr, seed=5)
    )
    assert out.curves is not None and out.curve_x is not None
    assert out.curves.shape == (4, 9)  # 9 patches < 100 regions (PROTOCOLS Q8)
    torch.testing.assert_close(out.curve_x, torch.arange(1, 10) / 9.0)
    # All patches replaced: the drop is y(x) - y(uniform image drawn from the same seed).
    base = baseline_image(x, "uniform", make_generator(5))
    expected = scores(model, x, target) - scores(model, base, target)
    torch.testing.assert_close(out.curves[:, -1], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.values, out.curves.double().sum(dim=1) / 10)
    short = RegionPerturbation(patch_size=4, regions=3).score(context(model, x, target, attr))
    assert short.curves is not None and short.curves.shape == (4, 3)


def test_region_perturbation_perfect_map_wins_morf_and_loses_raw_lerf() -> None:
    # Linear model, zero baseline: a patch's contribution to the margin is the sum of its pixels'
    # contributions, so ordering patches by the true sums is optimal at every step.
    size, b = 12, 8
    net = LinearNet((1, size, size), seed=2)
    model = wrap(net, size=size)
    x, target, _ = data(b, size, seed=3)
    perfect = linear_truth(net, x, target)
    random = torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(1))
    for order in ("morf", "lerf"):
        metric = RegionPerturbation(patch_size=3, baseline="zero", order=order)  # type: ignore[arg-type]
        p, r = (metric.score(context(model, x, target, a)) for a in (perfect, random))
        assert (p.values > r.values).all(), order  # higher is better in both orders
        assert p.curves is not None and r.curves is not None
        raw_p, raw_r = p.curves.mean(dim=1), r.curves.mean(dim=1)  # raw AOPC (drops)
        assert ((raw_p > raw_r) if order == "morf" else (raw_p < raw_r)).all(), order


def test_region_perturbation_nan_map_and_chunking() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(4, 12)
    attr[0] = torch.inf
    outs = [
        RegionPerturbation(patch_size=4, baseline="uniform").score(
            context(model, x, target, attr, batch_size=bs, seed=2)
        )
        for bs in (3, 40)
    ]
    assert outs[0].reasons == ["attribution has non-finite values", None, None, None]
    torch.testing.assert_close(outs[0].values, outs[1].values, rtol=0, atol=1e-6, equal_nan=True)
    assert math.isnan(outs[0].values[0].item())


# ================================================================================================
# ROAD
# ================================================================================================
def scipy_imputation(x: Tensor, order: Tensor, k: int) -> np.ndarray:
    """Quantus' per-image sparse solve (noise 0) for every image of the batch."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    return np.stack(
        [
            noisy_linear_imputation(x[i].double().numpy(), order[i, :k].numpy(), noise=0.0)
            for i in range(x.shape[0])
        ]
    )


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_linear_imputation_matches_the_sparse_solve(fraction: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 16, 16, generator=gen, dtype=torch.float64)
    # A smooth map removes large blobs: the hard, badly conditioned case for iterative solvers.
    smooth = F.avg_pool2d(torch.rand(4, 1, 16, 16, generator=gen), 7, 1, 3)
    order = torch.argsort(-smooth.flatten(1), dim=1)
    k = int(256 * fraction)
    removed = torch.zeros(4, 256, dtype=torch.bool).scatter_(1, order[:, :k], True)
    ours = linear_imputation(x, removed.view(4, 1, 16, 16))
    np.testing.assert_allclose(ours.numpy(), scipy_imputation(x, order, k), rtol=0, atol=1e-7)
    kept = ~removed.view(4, 1, 16, 16).expand_as(x)
    assert torch.equal(ours[kept], x[kept])


def test_linear_imputation_known_answers() -> None:
    # A constant image is filled with the constant (border weights are renormalised), and a
    # linear ramp is reproduced inside a removed interior block (the weights are symmetric).
    removed = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    removed[:, :, 3:9, 2:10] = True
    const = torch.full((1, 1, 12, 12), 0.3)
    torch.testing.assert_close(linear_imputation(const, removed), const, rtol=0, atol=1e-7)
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    ramp = (0.02 * rows + 0.05 * cols + 0.1).view(1, 1, 12, 12)
    torch.testing.assert_close(linear_imputation(ramp, removed), ramp, rtol=0, atol=1e-6)
    corner = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    corner[..., :5, :5] = True  # touches the border: still the constant
    torch.testing.assert_close(linear_imputation(const, corner), const, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="defined for 2D images"):
        linear_imputation(torch.zeros(1, 1, 3, 3, 3), torch.zeros(1, 1, 3, 3, 3, dtype=torch.bool))


def test_road_agrees_with_quantus_on_the_same_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    size, b = 12, 8
    net = LinearNet((1, size, size), seed=5)
    model = wrap(net, size=size)
    x, _, attr = data(b, size, seed=2)
    with torch.no_grad():
        target = model(x).argmax(dim=1)  # explain the prediction: accuracy starts at 1
    percentages = (10.0, 30.0, 50.0, 70.0, 90.0)
    noise = 0.2
    ours = ROAD(percentages=percentages, noise=noise).score(context(model, x, target, attr, seed=6))
    # benchbox's noise: one randn(P, C, H, W) per sample from the run's generator. Quantus calls
    # np.random.randn(C, k) once per (percentage, sample), for the top-k pixels in argsort order.
    gen = make_generator(6)
    eps = [torch.randn((len(percentages), 1, size, size), generator=gen) for _ in range(b)]
    order = torch.argsort(-attr.flatten(1), dim=1)
    draws = iter(
        [
            eps[i][j].reshape(1, -1)[:, order[i, : int(size * size * p / 100)]].numpy()
            for j, p in enumerate(percentages)
            for i in range(b)
        ]
    )
    monkeypatch.setattr(np.random, "randn", lambda *shape: next(draws))
    # Quantus 0.6 averages the first batch into {p: accuracy}; keep its per-sample array.
    monkeypatch.setattr(quantus.ROAD, "custom_postprocess", lambda self, **kw: None)
    theirs = quantus.ROAD(percentages=list(percentages), noise=noise, **QUIET)
    per_sample = np.asarray(qcall(theirs, model, x, target, attr)[0])
    assert ours.curves is not None
    np.testing.assert_array_equal(ours.curves.numpy(), per_sample)
    assert 0 < per_sample.mean() < 1  # predictions do flip: the comparison says something
    np.testing.assert_allclose(ours.values.numpy(), per_sample.mean(axis=1))


def test_road_probability_endpoints_seeding_and_chunking() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(5, 12)
    metric = ROAD(percentages=(25.0, 50.0), noise=0.05, score="probability")
    outs = [
        metric.score(context(model, x, target, attr, batch_size=bs, seed=1)) for bs in (1, 3, 99)
    ]
    for o in outs[1:]:
        assert o.curves is not None and outs[0].curves is not None
        torch.testing.assert_close(o.curves, outs[0].curves, rtol=0, atol=1e-6)
    again = metric.score(context(model, x, target, attr, seed=1))
    other = metric.score(context(model, x, target, attr, seed=2))
    assert again.curves is not None and other.curves is not None and outs[0].curves is not None
    torch.testing.assert_close(again.curves, outs[0].curves, rtol=0, atol=1e-6)
    assert not torch.allclose(other.curves, outs[0].curves)  # the noise is seeded, and used
    # Without noise, the 25 % point is the model's score on the imputed image.
    exact = ROAD(percentages=(25.0,), noise=0.0, score="logit").score(
        context(model, x, target, attr)
    )
    ranks = perturbation_ranks(attr)
    removed = ranks < 36
    imputed = linear_imputation(x, removed)
    assert exact.curves is not None and exact.curve_x is not None
    torch.testing.assert_close(
        exact.curves[:, 0], scores(model, imputed, target, "logit"), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(exact.curve_x, torch.tensor([0.25]))


def test_road_lerf_value_is_the_mean_drop_and_nan_maps() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(4, 12)
    attr[1, 0, 0, 0] = torch.nan
    out = ROAD(percentages=(20.0, 60.0), order="lerf", score="probability").score(
        context(model, x, target, attr)
    )
    assert out.curves is not None
    y0 = scores(model, x, target).double()
    expected = (y0[:, None] - out.curves.double()).mean(dim=1)
    torch.testing.assert_close(out.values[[0, 2, 3]], expected[[0, 2, 3]])
    assert out.reasons == [None, "attribution has non-finite values", None, None]
    assert torch.isnan(out.curves[1]).all() and math.isnan(out.values[1].item())
    with pytest.raises(ValueError, match=r"road needs 2D images"):
        vol = torch.rand(2, 1, 4, 4, 4)
        ROAD().score(context(wrap(SmallNet()), vol, target[:2], torch.rand(2, 1, 4, 4, 4)))


# ================================================================================================
# Faithfulness correlation
# ================================================================================================
@pytest.mark.parametrize(("n", "k"), [(30, 12), (400, 20)])  # top-k path; distinct-ints path
def test_random_subsets_are_uniform_without_replacement_and_seeded(n: int, k: int) -> None:
    s = random_subsets(make_generator(0), 2000, n, k)
    assert s.shape == (2000, k)
    assert all(len(set(row)) == k for row in s.tolist())
    assert torch.equal(s, random_subsets(make_generator(0), 2000, n, k))
    # Every feature is drawn 2000·k/n times on average (binomial sd < sqrt of that): 5 sd.
    mean = 2000 * k / n
    counts = torch.bincount(s.flatten(), minlength=n).double()
    assert float((counts - mean).abs().max()) < 5 * math.sqrt(mean)
    # ...and in every position of the subset alike (no feature favoured first).
    first = torch.bincount(s[:, 0], minlength=n).double()
    assert float((first - 2000 / n).abs().max()) < 5 * math.sqrt(2000 / n) + 1


def test_first_distinct_keeps_draw_order_and_flags_short_rows() -> None:
    draws = torch.tensor([[5, 3, 5, 1, 3, 0], [2, 2, 2, 2, 7, 2], [4, 4, 1, 1, 0, 9]])
    subsets, complete = _first_distinct(draws, 3)
    assert complete.tolist() == [True, False, True]
    assert subsets.tolist() == [[5, 3, 1], [4, 1, 0]]


def test_faithfulness_correlation_agrees_with_quantus(monkeypatch: pytest.MonkeyPatch) -> None:
    model = wrap(SmallNet())
    x, target, attr = data(6, 12, seed=7)
    n_runs, subset = 20, 30
    ours = FaithfulnessCorrelation(n_runs=n_runs, subset_size=subset).score(
        context(model, x, target, attr, seed=3)
    )
    # Quantus draws np.random.choice(n, S, replace=False) per run, per sample: give it ours.
    gen = make_generator(3)
    subsets = [random_subsets(gen, n_runs, 144, subset) for _ in range(6)]
    draws = iter([subsets[i][r].numpy() for r in range(n_runs) for i in range(6)])
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(draws))
    theirs = quantus.FaithfulnessCorrelation(
        nr_runs=n_runs, subset_size=subset, return_aggregate=False, **QUIET
    )
    expected = np.asarray(qcall(theirs, model, x, target, attr))
    np.testing.assert_allclose(ours.values.numpy(), expected, rtol=0, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # not a degenerate comparison


def test_faithfulness_correlation_is_one_for_a_linear_model() -> None:
    # logit = w·x + b; zero baseline: removing S drops the logit by Σ_S w_i x_i, exactly the
    # sum of input × gradient over S, so the correlation is 1 whatever the subsets.
    size = 10
    net = LinearNet((1, size, size))
    model = wrap(net, size=size)
    x, target, _ = data(4, size)
    ixg = net.fc.weight.detach()[target].view(-1, 1, size, size) * x
    out = FaithfulnessCorrelation(n_runs=30, subset_size=20, baseline="zero").score(
        context(model, x, target, ixg)
    )
    torch.testing.assert_close(out.values, torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    anti = FaithfulnessCorrelation(n_runs=30, subset_size=20, baseline="zero").score(
        context(model, x, target, -ixg)
    )
    torch.testing.assert_close(anti.values, -torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_faithfulness_correlation_undefined_cases_and_chunking() -> None:
    net = Bounded(SmallNet().double())  # in float64 behind a float32 face, as for infidelity
    model = wrap(Float64Inside(net))
    x, target, attr = data(4, 12)
    attr[1] = 0.25  # constant map: every subset sums to the same value
    attr[2, 0, 5, 5] = torch.nan
    metric = FaithfulnessCorrelation(n_runs=12, subset_size=10)
    outs = [metric.score(context(model, x, target, attr, batch_size=bs)) for bs in (1, 5, 100)]
    for o in outs:
        assert o.reasons == [
            None,
            "attribution sums do not vary over the runs (constant map?)",
            "attribution has non-finite values",
            None,
        ]
    # Chunks of other sizes run the model on other batch shapes: each drop Δ_r moves by at most
    # 4·rounded_logit_bound between two runs (see the infidelity test), each subset sum
    # (10 terms) by at most 2γ_9·Σ|a_S|. The Pearson correlation of centred vectors u, v moves by
    # at most 2‖δu‖/‖u‖ + 2‖δv‖/‖v‖ (‖û − v̂‖ ≤ 2‖u − v‖/‖u‖), ‖δ‖ ≤ √R·max|δ_r|.
    parts = [
        faithfulness_correlation(
            model, x, attr, target, n_runs=12, subset_size=10, baseline=baseline_image(x, "min"),
            score="logit", batch_size=bs, generator=make_generator(0),
        )
        for bs in (1, 5, 100)
    ]  # fmt: skip
    _, sums, deltas = parts[0]
    a_max = attr.double().abs().flatten(1).amax(dim=1, keepdim=True).nan_to_num(0.0)
    e_sums = 2 * gamma(9) * 10 * a_max
    e_deltas = 4 * rounded_logit_bound(net)
    centred = [(t - t.mean(dim=1, keepdim=True)).norm(dim=1) for t in (sums, deltas)]
    moves = 2 * math.sqrt(12) * (e_sums.squeeze(1) / centred[0] + e_deltas / centred[1])
    for corr, s_b, d_b in parts:
        assert_within(d_b, deltas, e_deltas)
        assert_within(s_b, sums, e_sums, equal_nan=True)
        assert_within(corr[[0, 3]], parts[0][0][[0, 3]], moves[[0, 3]])
    for o in outs:
        assert_within(o.values[[0, 3]], outs[0].values[[0, 3]], moves[[0, 3]])
        assert o.values[1:3].isnan().all()
    flat = wrap(LinearNet((1, 12, 12)))
    flat.module.fc.weight.data.zero_()  # type: ignore[union-attr, operator]
    dead = metric.score(context(flat, x, target, torch.randn(4, 1, 12, 12)))
    assert dead.reasons == ["model score does not vary over the runs"] * 4
    with pytest.raises(ValueError, match="subset_size: 200 is more than the 144 pixels"):
        FaithfulnessCorrelation(subset_size=200).score(context(model, x, target, attr))


# ================================================================================================
# Infidelity
# ================================================================================================
@pytest.mark.parametrize("multiply_by_inputs", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_agrees_with_captum(multiply_by_inputs: bool, normalize: bool) -> None:
    from captum.metrics import infidelity as captum_infidelity

    model = wrap(SmallNet())
    x, target, attr = data(5, 12, seed=3)
    n, std = 6, 0.2
    ours = Infidelity(
        n_perturb_samples=n,
        noise_std=std,
        multiply_by_inputs=multiply_by_inputs,
        normalize=normalize,
    ).score(context(model, x, target, attr, batch_size=7, seed=8))
    # The same draws: one randn(n, C, H, W) per sample, in order, times sigma.
    gen = make_generator(8)
    noise = torch.cat([torch.randn((n, 1, 12, 12), generator=gen) * std for _ in range(5)])

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        return noise, inputs - noise * inputs if multiply_by_inputs else inputs - noise

    theirs = captum_infidelity(
        model.module, perturb, x, attr, target=target, n_perturb_samples=n, normalize=normalize
    )
    torch.testing.assert_close(ours.values, theirs.double(), rtol=1e-4, atol=1e-6)
    assert float(theirs.min()) > 1e-3  # a real comparison, not 0 == 0


def test_infidelity_zero_for_the_matching_linear_explanation() -> None:
    size = 8
    net = LinearNet((1, size, size))
    model = wrap(net, size=size)
    x, target, _ = data(4, size)
    w = net.fc.weight.detach()[target].view(-1, 1, size, size)
    additive = Infidelity(noise_std=0.3).score(context(model, x, target, w))
    assert float(additive.values.abs().max()) < 1e-9  # gradient: f(x) - f(x - I) = wᵀI
    scaled = Infidelity(noise_std=0.3, multiply_by_inputs=True).score(
        context(model, x, target, w * x)
    )
    assert float(scaled.values.abs().max()) < 1e-9  # input × gradient with x − ε⊙x
    mismatched = Infidelity(noise_std=0.3).score(context(model, x, target, w * x))
    assert float(mismatched.values.min()) > 1e-3


def test_infidelity_normalize_is_scale_free_nan_maps_and_chunking() -> None:
    model = wrap(SmallNet())
    x, target, attr = data(4, 12)
    metric = Infidelity(n_perturb_samples=5, normalize=True)
    a = metric.score(context(model, x, target, attr, seed=2))
    b = metric.score(context(model, x, target, 37.0 * attr, seed=2, batch_size=3))
    torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-8)
    attr[3, 0, 1, 1] = torch.nan
    # Chunks of other sizes run the model on other batch shapes, whose float32 kernels round
    # differently by CPU; in float64 behind a float32 face each logit of two runs differs by at
    # most 2·rounded_logit_bound, each Δ = y(x) − y(x − ε) by e = twice that, and so the mean of
    # (s − Δ)² by at most 2e·√v + e² (Cauchy–Schwarz).
    net = Bounded(SmallNet().double())
    model = wrap(Float64Inside(net))
    outs = [
        Infidelity(n_perturb_samples=5).score(context(model, x, target, attr, batch_size=bs))
        for bs in (1, 4, 50)
    ]
    e = 4 * rounded_logit_bound(net)
    for o in outs:
        assert o.reasons == [None, None, None, "attribution has non-finite values"]
        v = outs[0].values.nan_to_num(0.0)
        assert_within(o.values, outs[0].values, 2 * e * v.sqrt() + e**2, equal_nan=True)


# ================================================================================================
# Volumes
# ================================================================================================
def test_volumes_3d() -> None:
    # Everything but ROAD is written for any number of spatial dims.
    shape = (1, 4, 6, 6)
    net = LinearNet(shape)
    model = ExplainedModel(net.eval(), InputSpec(1, shape[1:], (0.0,), (1.0,)), num_classes=2)
    gen = torch.Generator().manual_seed(0)
    x, target = torch.rand(3, *shape, generator=gen), torch.tensor([0, 1, 0])
    attr = torch.randn(3, *shape, generator=gen)
    ctx = context(model, x, target, attr)
    pf = PixelFlipping(features_in_step=16, baseline="zero").score(ctx)
    assert pf.curves is not None and pf.curves.shape == (3, 9)  # 144 voxels / 16
    zero = torch.zeros_like(x)
    torch.testing.assert_close(pf.curves[:, -1], scores(model, zero, target), rtol=0, atol=1e-6)
    rp = RegionPerturbation(patch_size=3, baseline="zero").score(ctx)
    assert rp.curves is not None and rp.curves.shape == (3, 8)  # ceil(4/3)·2·2 cubes
    drop = scores(model, x, target) - scores(model, zero, target)
    torch.testing.assert_close(rp.curves[:, -1], drop, rtol=0, atol=1e-6)
    w = net.fc.weight.detach()[target].view(3, *shape)
    fc = FaithfulnessCorrelation(n_runs=10, subset_size=20, baseline="zero").score(
        context(model, x, target, w * x)
    )
    torch.testing.assert_close(fc.values, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)
    inf = Infidelity(noise_std=0.2).score(context(model, x, target, w))
    assert float(inf.values.abs().max()) < 1e-9
