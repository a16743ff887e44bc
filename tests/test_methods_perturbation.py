"""Perturbation methods (benchbox.methods.perturbation): contract in 2D and 3D, known answers.

Known answers: on a linear model occlusion with a 1-pixel window is ``Σ_c w ⊙ (x − baseline)``,
feature ablation is the per-segment sum of it, KernelSHAP recovers it exactly and LIME (no ridge
penalty) too; KernelSHAP with every coalition equals brute-force Shapley values of a CNN; RISE's
masks equal the paper's skimage resize, its map is normalized (a constant model gives a constant
map) and peaks inside the square that drives the score. References: Captum's Occlusion and
FeatureAblation (within 1e-6), sklearn's Ridge and cosine distances (LIME's regression and kernel).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from itertools import combinations
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods import perturbation
from benchbox.methods.base import Reference, hook_counts, reference_image
from benchbox.methods.perturbation import (
    RISE,
    FeatureAblation,
    KernelShap,
    Lime,
    Occlusion,
    rise_masks,
    shapley_coalitions,
    superpixels,
    weighted_ridge,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.test_methods_cam import GapNet, gap_model, inputs
from tests.tolerance import (
    Bounded,
    Float64Inside,
    assert_within,
    gamma,
    in_float64,
    map_bound,
    rounded_logit_bound,
    unit_roundoff,
)

PERTURBATION_METHODS: dict[str, dict[str, Any]] = {
    "occlusion": {"window": 4, "stride": 2, "batch_size": 50},
    "feature_ablation": {"n_segments": 12, "batch_size": 13},
    "lime": {"n_samples": 64, "n_segments": 12, "batch_size": 50},
    "kernel_shap": {"n_samples": 64, "n_segments": 12, "batch_size": 50},
    "rise": {"n_masks": 64, "grid": 4, "batch_size": 50},
}
STOCHASTIC = ("lime", "kernel_shap", "rise")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class LinearNet(nn.Module):
    """logits = W · flatten(x) + b."""

    def __init__(self, shape: tuple[int, ...], classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(math.prod(shape), classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def linear_model(shape: tuple[int, ...] = (3, 16, 16)) -> ExplainedModel:
    spec = InputSpec(channels=shape[0], size=shape[1:], mean=(0.0,), std=(1.0,))
    return ExplainedModel(LinearNet(shape).eval(), spec, num_classes=3)


def contributions(model: ExplainedModel, x: Tensor, target: Tensor, ref: Tensor) -> Tensor:
    """``Σ_c w_c ⊙ (x_c − ref_c)`` ``[B, 1, *sp]`` for the target logit of a LinearNet."""
    w = cast(LinearNet, model.module).fc.weight[target].view(x.shape)
    return (w * (x - ref)).sum(dim=1, keepdim=True).detach()


def segment_sums(values: Tensor, seg: Tensor) -> Tensor:
    """Each pixel gets the sum of ``values`` ``[B, 1, *sp]`` over its segment in ``seg``."""
    out = torch.zeros_like(values)
    for b in range(seg.shape[0]):
        for j in seg[b].unique():
            sel = seg[b] == j
            out[b, 0][sel] = values[b, 0][sel].sum()
    return out


def make(name: str, **params: Any) -> Method:
    cls = registry.methods.get(name)
    merged = {**PERTURBATION_METHODS[name], **params}
    resolved, problems = validate_params(cls, merged, f"methods.{name}")
    assert problems == []
    method: Method = cls(**resolved)
    return method


def run(method: Method, model: ExplainedModel, x: Tensor, target: Tensor, seed: int = 0) -> Tensor:
    return method.attribute(model, x, target, generator=make_generator(seed))


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PERTURBATION_METHODS))
def test_registered_black_box_3d_and_defaults_validate(name: str) -> None:
    assert name in registry.methods
    desc = registry.methods.describe(name)
    assert desc and not desc.startswith("(unavailable")
    cls = registry.methods.get(name)
    assert cls.needs == frozenset()  # forward passes only: any model
    assert cls.supports_3d is True
    resolved, problems = validate_params(cls, {}, f"methods.{name}")
    assert problems == [] and resolved["batch_size"] == 256


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(PERTURBATION_METHODS))
def test_contract(name: str, dims: int) -> None:
    method = make(name)
    model = gap_model(dims)
    net = cast(GapNet, model.module)
    net.conv1.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = hook_counts(net)
    x, target = inputs(b=3, dims=dims)
    x0 = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(method, model, x, target, seed=5)
    assert out.shape == (3, 1, *x.shape[2:])
    assert out.dtype == torch.float32 and out.device == x.device and not out.requires_grad
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    torch.testing.assert_close(run(method, model, x, target, seed=5), out, rtol=0, atol=0)
    if name in STOCHASTIC:
        assert not torch.equal(run(method, model, x, target, seed=6), out)
    assert hook_counts(net) == hooks
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters()) and not net.training
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    # Per-sample calls sharing one generator give the batch's maps: each image draws its own
    # samples, in batch order. Float32 forward passes of other batch compositions round
    # differently on each CPU (the regressions of LIME and KernelSHAP amplify it), so this
    # compares them in float64.
    wide = in_float64(model)
    out = run(method, wide, x, target, seed=5)
    gen = make_generator(5)
    one_by_one = torch.cat(
        [method.attribute(wide, x[i : i + 1], target[i : i + 1], generator=gen) for i in range(3)]
    )
    assert_within(one_by_one, out, map_bound(out) + map_bound(one_by_one))


@pytest.mark.parametrize("name", list(PERTURBATION_METHODS))
def test_rows_per_forward_pass_are_bounded(name: str) -> None:
    model = gap_model()
    seen: list[int] = []
    handle = cast(GapNet, model.module).conv1.register_forward_pre_hook(
        lambda _m, args: seen.append(len(args[0]))
    )
    try:
        out = run(make(name, batch_size=8), model, *inputs(b=3))
    finally:
        handle.remove()
    assert max(seen) <= 8 and len(seen) > 3
    torch.testing.assert_close(run(make(name), model, *inputs(b=3)), out, rtol=1e-5, atol=1e-5)


# -- occlusion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_occlusion_with_a_one_pixel_window_on_a_linear_model(baseline: Reference) -> None:
    model = linear_model()
    x, target = inputs(b=2)
    out = run(Occlusion(window=1, stride=1, baseline=baseline), model, x, target)
    ref = reference_image(x, baseline)
    expected = contributions(model, x.double(), target, ref.double())
    # out = fl(f(x) − f(x_p)): two float32 linear layers (768 products and the bias, summed in
    # whatever order the CPU's GEMM takes), then one subtraction. x_p is x with pixel p (all
    # channels) at the baseline, exactly (Captum's x·(1 − m) + ref·m with m ∈ {0, 1}).
    fc = cast(LinearNet, model.module).fc
    w, b = fc.weight[target].view(x.shape), fc.bias[target]
    mass_x = (w * x).abs().double()  # |w_i x_i|
    whole = mass_x.sum((1, 2, 3)).view(-1, 1, 1, 1) + b.abs().double().view(-1, 1, 1, 1)
    occluded = whole - mass_x.sum(1, keepdim=True) + (w * ref).abs().double().sum(1, keepdim=True)
    n = x[0].numel()
    bound = gamma(n + 1) * (whole + occluded) + unit_roundoff() * expected.abs()
    assert_within(out, expected, bound)
    # The bound is the worst case over summation orders (≤ 0.03 here, the measured error 1e-5);
    # the map's values are ~0.4 (|w|·|x − ref|), so a map off by one pixel is far beyond it.
    with pytest.raises(AssertionError):
        assert_within(out.roll(1, dims=-1), expected, bound)


@pytest.mark.parametrize(("window", "stride"), [(4, 2), (4, 5), (5, 5)])
def test_occlusion_equals_captum(window: int, stride: int) -> None:
    from captum.attr import Occlusion as CaptumOcclusion

    if stride > window:
        with pytest.raises(UserError, match=r"occlusion\.stride: 5 is larger than window 4"):
            Occlusion(window=window, stride=stride)
        return
    # GapNet in float64 behind a float32 face: Captum batches one window per forward pass and
    # we batch 7, and float32 kernels round such batches differently on each CPU; in float64 the
    # logits agree to ~1e-15 and leave float32 rounded (Bounded records both bounds).
    net = Bounded(gap_model().module.double())
    model = dataclasses.replace(gap_model(), module=Float64Inside(net))
    x, target = inputs(b=3)
    ref = reference_image(x, "mean")
    expected = CaptumOcclusion(model.module).attribute(
        x,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=ref,
        target=target,
    )
    assert torch.equal(expected[:, :1].expand_as(expected), expected)  # all channels alike
    out = run(
        Occlusion(window=window, stride=stride, baseline="mean", batch_size=7), model, x, target
    )
    # Both are, per pixel, the mean over the c windows covering it of fl(f(x) − f(x_w)) in
    # float32. Each float32 logit is within rounded_logit_bound of the exact one and each
    # difference at most 2V (V = logit_max): each map is within twice that plus γ_{c+1}·2V (the
    # subtraction, the sum of c, the division) of the exact map, and the two maps within twice
    # that.
    c = math.ceil(window / stride) ** 2
    bound = 4 * rounded_logit_bound(net) + gamma(c + 1) * 4 * net.logit_max
    assert_within(out, expected[:, :1].detach(), bound)
    with pytest.raises(AssertionError):  # tight enough to see a map shifted by one pixel
        assert_within(out.roll(1, dims=-1), expected[:, :1].detach(), bound)


def test_occlusion_window_larger_than_the_image_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"occlusion\.window: 32 exceeds the image size \(16, 16\)"):
        run(Occlusion(window=32, stride=4), gap_model(), *inputs())


# -- superpixels ----------------------------------------------------------------------------------
def test_grid_segments() -> None:
    seg, counts = superpixels(torch.zeros(2, 1, 4, 6), "grid", 4, 0.1)
    assert counts == [4, 4]
    expected = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2)
    assert torch.equal(seg[0], expected) and torch.equal(seg[1], expected)
    seg3, counts3 = superpixels(torch.zeros(1, 1, 4, 4, 4), "grid", 8, 0.1)
    assert counts3 == [8] and torch.equal(seg3[0, 3, 3, 3], torch.tensor(7))
    # More cells than pixels along a dim: one cell per pixel.
    assert superpixels(torch.zeros(1, 1, 2, 2), "grid", 100, 0.1)[1] == [4]


def test_slic_segments_are_contiguous_per_image_cached_and_work_in_3d() -> None:
    x, _ = inputs(b=2)
    seg, counts = superpixels(x, "slic", 12, 0.1)
    assert seg.shape == (2, 16, 16) and seg.dtype == torch.long
    for b in range(2):
        assert torch.equal(seg[b].unique(), torch.arange(counts[b]))
        assert 4 <= counts[b] <= 30
    # Content-keyed cache: the same image gives the same label array object.
    img = x[0].numpy()
    assert perturbation._slic(img, 12, 0.1) is perturbation._slic(img.copy(), 12, 0.1)
    vol = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    seg3, counts3 = superpixels(vol, "slic", 8, 0.1)
    assert seg3.shape == (1, 8, 8, 8) and counts3[0] >= 2
    assert torch.equal(seg3[0].unique(), torch.arange(counts3[0]))


# -- feature ablation -----------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "blur"])
def test_feature_ablation_on_a_linear_model_is_the_segment_sum(baseline: Reference) -> None:
    model = linear_model()
    x, target = inputs(b=2)
    method = FeatureAblation(segments="grid", n_segments=16, baseline=baseline)
    out = run(method, model, x, target)
    seg, _ = superpixels(x, "grid", 16, 0.1)
    expected = segment_sums(contributions(model, x, target, reference_image(x, baseline)), seg)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert len(out[0].unique()) == 16


def test_feature_ablation_equals_captum_on_slic_superpixels() -> None:
    from captum.attr import FeatureAblation as CaptumFeatureAblation

    model = gap_model()
    x, target = inputs(b=3)
    seg, _ = superpixels(x, "slic", 12, 0.1)
    expected = CaptumFeatureAblation(model.module).attribute(
        x,
        baselines=reference_image(x, "mean"),
        target=target,
        feature_mask=seg[:, None].expand_as(x),
    )
    out = run(FeatureAblation(n_segments=12, baseline="mean", batch_size=10), model, x, target)
    torch.testing.assert_close(out, expected[:, :1].detach(), rtol=0, atol=1e-6)


# -- KernelSHAP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("segments", ["slic", "grid"])
def test_kernel_shap_on_a_linear_model_recovers_the_segment_contributions(segments: str) -> None:
    model = linear_model()
    x, target = inputs(b=2)
    method = KernelShap(n_samples=200, segments=segments, n_segments=20, baseline="mean")  # type: ignore[arg-type]
    out = run(method, model, x, target)
    seg, counts = superpixels(x, segments, 20, 0.1)  # type: ignore[arg-type]
    assert min(counts) > 10 and 2 ** min(counts) > 200  # sampled, not enumerated
    expected = segment_sums(contributions(model, x, target, reference_image(x, "mean")), seg)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def exact_shapley(model: ExplainedModel, x: Tensor, ref: Tensor, t: int, seg: Tensor) -> Tensor:
    """Shapley values of the segments of one image by the definition (all subsets)."""
    m = int(seg.max()) + 1

    def v(kept: tuple[int, ...]) -> float:
        keep = torch.isin(seg, torch.tensor(kept, dtype=torch.long))
        with torch.no_grad():
            return float(model(torch.where(keep, x, ref)[None])[0, t])

    phi = torch.zeros(m, dtype=torch.float64)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in combinations(others, size):
                phi[j] += weight * (v((*subset, j)) - v(subset))
    return phi


def test_kernel_shap_enumerates_small_games_and_gives_exact_shapley_values() -> None:
    model = gap_model()
    x, target = inputs(b=2)
    method = KernelShap(n_samples=14, segments="grid", n_segments=4, baseline="zero")
    out = run(method, model, x, target)
    seg, _ = superpixels(x, "grid", 4, 0.1)
    ref = torch.zeros_like(x)
    for b in range(2):
        phi = exact_shapley(model, x[b], ref[b], int(target[b]), seg[b])
        torch.testing.assert_close(out[b, 0], phi[seg[b]].float(), rtol=1e-4, atol=1e-5)
        # Efficiency: the values sum to y(x) − y(ref).
        with torch.no_grad():
            gap = model(x[b : b + 1]) - model(ref[b : b + 1])
        assert float(phi.sum()) == pytest.approx(float(gap[0, target[b]]), abs=1e-5)
    # Fewer samples than coalitions: sampled, and then not exact for this non-linear model.
    sampled = run(KernelShap(n_samples=8, segments="grid", n_segments=4), model, x, target)
    assert not torch.allclose(sampled, out, atol=1e-3)


def test_shapley_coalitions() -> None:
    z, w = shapley_coalitions(3, 100, make_generator(0))
    assert z.shape == (6, 3) and set(z.sum(1).tolist()) == {1, 2}
    torch.testing.assert_close(
        w, torch.full((6,), 2 / 3 / 2, dtype=torch.float64)
    )  # (m−1)/(C·s·(m−s))
    z, w = shapley_coalitions(12, 9, make_generator(0))
    assert z.shape == (9, 12) and torch.equal(w, torch.ones(9, dtype=torch.float64))
    assert torch.equal(z[:4], ~z[5:9]) and (z.sum(1) > 0).all() and (z.sum(1) < 12).all()
    assert shapley_coalitions(1, 10, make_generator(0))[0].shape == (0, 1)


# -- LIME -----------------------------------------------------------------------------------------
def test_weighted_ridge_equals_sklearn() -> None:
    linear_model_mod = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(0)
    z = (torch.rand(50, 6, generator=gen) < 0.5).double()
    y = torch.randn(50, generator=gen, dtype=torch.float64)
    w = torch.rand(50, generator=gen, dtype=torch.float64)
    for alpha in (0.0, 1.0, 10.0):
        ridge = linear_model_mod.Ridge(alpha=alpha).fit(
            z.numpy(), y.numpy(), sample_weight=w.numpy()
        )
        coef = weighted_ridge(z, y, w, alpha)
        np.testing.assert_allclose(coef.numpy(), ridge.coef_, rtol=1e-8, atol=1e-10)
    # A feature kept in every sample is not identified: without a penalty it gets 0 (min-norm).
    z[:, 2] = 1.0
    coef = weighted_ridge(z, y, w, 0.0)
    assert torch.isfinite(coef).all() and abs(float(coef[2])) < 1e-8


def test_lime_samples_kernel_and_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    # float64 behind a float32 face: the 40 rows are scored as one batch, checked one by one
    net = Bounded(gap_model().module.double())
    model = dataclasses.replace(gap_model(), module=Float64Inside(net))
    x, target = inputs(b=2)
    seen: list[tuple[Tensor, Tensor, Tensor, float]] = []
    ridge = perturbation.weighted_ridge

    def spy(z: Tensor, y: Tensor, w: Tensor, alpha: float) -> Tensor:
        seen.append((z, y, w, alpha))
        return ridge(z, y, w, alpha)

    monkeypatch.setattr(perturbation, "weighted_ridge", spy)
    run(Lime(n_samples=40, n_segments=12, kernel_width=0.3, alpha=2.0), model, x, target)
    seg, counts = superpixels(x, "slic", 12, 0.1)
    for b, (z, y, w, alpha) in enumerate(seen):
        assert alpha == 2.0 and z.shape == (40, counts[b]) and (z[0] == 1).all()
        # lime_image: cosine distance to the all-ones row, kernel sqrt(exp(−d²/σ²)).
        d = pairwise.pairwise_distances(z.numpy(), np.ones((1, counts[b])), metric="cosine")[:, 0]
        np.testing.assert_allclose(w.numpy(), np.sqrt(np.exp(-(d**2) / 0.3**2)), rtol=1e-10)
        for i in (0, 7):  # y is the target logit of the image with the dropped segments black
            keep = z[i].bool()[seg[b]]
            with torch.no_grad():
                logit = model(torch.where(keep, x[b], torch.zeros_like(x[b]))[None])[0, target[b]]
            assert_within(y[i], logit, 2 * rounded_logit_bound(net))
    assert len(seen) == 2


def test_lime_on_a_linear_model() -> None:
    model = linear_model()
    x, target = inputs(b=2)
    seg, _ = superpixels(x, "grid", 16, 0.1)
    expected = segment_sums(contributions(model, x, target, torch.zeros_like(x)), seg)
    # Without a penalty the regression is exact on a model that is linear in the coalition.
    exact = run(Lime(n_samples=100, segments="grid", n_segments=16, alpha=0.0), model, x, target)
    torch.testing.assert_close(exact, expected, rtol=1e-4, atol=1e-4)
    # The default ridge (alpha=1) shrinks the coefficients a little.
    shrunk = run(Lime(n_samples=400, segments="grid", n_segments=16), model, x, target)
    err = (shrunk - expected).abs().max() / expected.abs().max()
    assert 1e-4 < err < 0.05


# -- RISE -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_rise_masks_equal_the_papers_skimage_resize(size: tuple[int, int]) -> None:
    from skimage.transform import resize

    s = 4
    gen = torch.Generator().manual_seed(0)
    grids = torch.rand(6, s, s, generator=gen) < 0.5
    cell = [math.ceil(n / s) for n in size]
    shifts = torch.stack([torch.randint(0, c, (6,), generator=gen) for c in cell], dim=1)
    out = rise_masks(grids, shifts, size)
    assert out.shape == (6, 1, *size)
    up_size = ((s + 1) * cell[0], (s + 1) * cell[1])
    for i in range(6):
        up = resize(grids[i].float().numpy(), up_size, order=1, mode="reflect", anti_aliasing=False)
        sx, sy = int(shifts[i, 0]), int(shifts[i, 1])
        expected = up[sx : sx + size[0], sy : sy + size[1]]
        np.testing.assert_allclose(out[i, 0].numpy(), expected, rtol=0, atol=1e-6)
    vol = rise_masks(
        torch.ones(2, 3, 3, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long), (5, 6, 7)
    )
    assert vol.shape == (2, 1, 5, 6, 7) and torch.allclose(vol, torch.ones_like(vol))


class Constant(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0], 2), 3.0)


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_rise_is_normalized(p: float) -> None:
    # f ≡ 3 gives S = 3 · Σ_i M_i / (N p), whose mean over pixels is 3 · mean(M)/p ≈ 3.
    spec = InputSpec(channels=1, size=(16, 16), mean=(0.0,), std=(1.0,))
    model = ExplainedModel(Constant(), spec, 2)
    x, target = torch.rand(2, 1, 16, 16), torch.tensor([0, 1])
    out = run(RISE(n_masks=1000, grid=4, p=p, score="logit"), model, x, target)
    assert float(out.mean()) == pytest.approx(3.0, rel=0.03)
    assert (out > 0).all()


class MeanInSquare(nn.Module):
    """logits = (10 · mean of x inside rows/cols 3..7 − 4, 0): class 0 sees only the square.

    The offset keeps class 0's probability away from saturation for half-masked inputs.
    """

    def forward(self, x: Tensor) -> Tensor:
        inside = x[:, 0, 3:8, 3:8].mean(dim=(1, 2)) * 10 - 4
        return torch.stack([inside, torch.zeros_like(inside)], dim=1)


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_rise_peaks_inside_the_square_that_drives_the_score(score: str) -> None:
    spec = InputSpec(channels=1, size=(16, 16), mean=(0.0,), std=(1.0,))
    model = ExplainedModel(MeanInSquare(), spec, 2)
    x, target = torch.full((2, 1, 16, 16), 0.8), torch.tensor([0, 0])
    out = run(RISE(n_masks=500, grid=8, score=score), model, x, target)  # type: ignore[arg-type]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[3:8, 3:8] = True
    for b in range(2):
        assert inside.flatten()[int(out[b, 0].flatten().argmax())]
        assert out[b, 0][inside].mean() > out[b, 0][~inside].mean() + 0.05 * out[b, 0].mean()
