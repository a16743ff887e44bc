"""Intrinsic and composed methods: attention, vae_residual, iterative_saliency, dominant_class.

Known answers: the attention map is the gate's softmax map times its number of positions, resized
by hand; the VAE residual of a model reconstructing ``x̂ = x / 2`` is ``x / 2``; iterative
saliency on a max-pooling model finds the second, fainter lesion only after the brighter one is
inpainted (and not when the prediction flips first); the dominant-class map of a linear model is
the target's weight where it is the largest of the classes'.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox.core import ExplainedModel, InputSpec
from benchbox.errors import UserError
from benchbox.methods.base import reduce_channels
from benchbox.methods.intrinsic import (
    Attention,
    DominantClass,
    IterativeSaliency,
    VAEResidual,
    inpaint,
    median_filter,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator

GEN = make_generator(0)


def spec(channels: int, size: tuple[int, ...]) -> InputSpec:
    return InputSpec(channels, size, (0.0,) * channels, (1.0,) * channels)


# -- attention -------------------------------------------------------------------------------------
def attention_model(width: int = 4) -> ExplainedModel:
    attention = pytest.importorskip("benchbox.models.attention", reason="attention_cnn model")
    torch.manual_seed(0)
    net = attention.AttentionCNNNet(in_channels=1, num_classes=2, width=width).eval()
    return ExplainedModel(net, spec(1, (32, 32)), 2, target_layers=net.target_layers())


def test_attention_auto_is_the_finest_gate_relative_to_uniform() -> None:
    model = attention_model()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 1])
    with torch.no_grad():
        maps = model.module.attention_maps(x)  # type: ignore[operator]
    assert maps["block2"].shape == (3, 1, 16, 16)  # the finest of block2/3/4
    expected = F.interpolate(maps["block2"] * 256, size=(32, 32), mode="bilinear")
    out = Attention().attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.ones(3, 1), rtol=1e-4, atol=1e-4)
    named = Attention(layer="block4").attribute(model, x, t, generator=GEN)
    expected4 = F.interpolate(maps["block4"] * 16, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(named, expected4, rtol=1e-5, atol=1e-6)
    mean = Attention(layer="mean").attribute(model, x, t, generator=GEN)
    each = [
        F.interpolate(maps[n] * math.prod(maps[n].shape[2:]), size=(32, 32), mode="bilinear")
        for n in ("block2", "block3", "block4")
    ]
    torch.testing.assert_close(mean, torch.stack(each).mean(0), rtol=1e-5, atol=1e-6)


def test_attention_is_class_agnostic_and_unknown_gates_are_named() -> None:
    model = attention_model()
    x = torch.rand(2, 1, 32, 32)
    a = Attention().attribute(model, x, torch.tensor([0, 0]), generator=GEN)
    b = Attention().attribute(model, x, torch.tensor([1, 1]), generator=GEN)
    assert torch.equal(a, b)
    with pytest.raises(UserError, match=r"no gate 'block9'; available: \['auto', 'mean', 'block2'"):
        Attention(layer="block9").attribute(model, x, torch.tensor([0, 0]), generator=GEN)


class Wrapper(nn.Module):
    """A task wrapper: the maps live on ``.net``, as with ``AnomalyTarget``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Gated(nn.Module):
    """One sigmoid gate on 3D volumes (not softmax): the map is divided by its own mean."""

    def __init__(self, bad: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        self.bad = bad

    def attention_maps(self, x: Tensor) -> dict[str, Any]:
        if self.bad:
            return {"g": x.mean(1)}  # no channel axis
        return {"g": torch.sigmoid(self.conv(F.avg_pool3d(x, 2)))}

    def forward(self, x: Tensor) -> Tensor:
        return self.attention_maps(x)["g"].flatten(1)[:, :2]


def test_attention_through_a_wrapper_in_3d_and_bad_models() -> None:
    net = Gated()
    model = ExplainedModel(Wrapper(net), spec(1, (8, 8, 8)), 2)
    x = torch.rand(2, 1, 8, 8, 8)
    out = Attention().attribute(model, x, torch.tensor([0, 1]), generator=GEN)
    g = net.attention_maps(x)["g"].detach()
    expected = F.interpolate(
        g / g.mean(dim=(2, 3, 4), keepdim=True), size=(8, 8, 8), mode="trilinear"
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    bad = ExplainedModel(Gated(bad=True), spec(1, (8, 8, 8)), 2)
    with pytest.raises(UserError, match=r"gate 'g' returned \[2, 8, 8, 8\]; expected \[2, 1"):
        Attention().attribute(bad, x, torch.tensor([0, 1]), generator=GEN)
    plain = ExplainedModel(nn.Flatten(), spec(1, (8, 8, 8)), 2)
    with pytest.raises(UserError, match=r"has no attention_maps\(x\) method; use a model"):
        Attention().attribute(plain, x, torch.tensor([0, 1]), generator=GEN)


# -- reconstruction residual -----------------------------------------------------------------------
class Halver(nn.Module):
    """``x̂ = x / 2``; the anomaly score is the mean squared error."""

    def reconstruct(self, x: Tensor) -> Tensor:
        return x / 2

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.reconstruct(x)).square().flatten(1).mean(1, keepdim=True)


def test_vae_residual_known_answers() -> None:
    model = ExplainedModel(Halver(), spec(2, (6, 6)), 1)
    x = torch.rand(2, 2, 6, 6)
    t = torch.zeros(2, dtype=torch.long)
    out = VAEResidual().attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out, (x / 2).mean(1, keepdim=True))
    sq = VAEResidual(power=2, reduce="sum").attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(sq, (x / 2).square().sum(1, keepdim=True))
    # Σ of the squared residual / N is the model's own anomaly score.
    torch.testing.assert_close(sq.flatten(1).sum(1) / (2 * 36), model(x).squeeze(1))
    mx = VAEResidual(reduce="max_abs", median=3).attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(mx, median_filter((x / 2).amax(1, keepdim=True), 3))


def test_vae_residual_of_the_projects_vae() -> None:
    targets = pytest.importorskip("benchbox.models.targets", reason="anomaly target")
    vae = pytest.importorskip("benchbox.models.vae", reason="vae model")
    torch.manual_seed(0)
    net = vae.ConvVAE(in_channels=1, size=(16, 16), latent_dim=4, width=4)
    target = targets.AnomalyTarget(net).eval()
    model = ExplainedModel(target, spec(1, (16, 16)), 1)
    x = torch.rand(3, 1, 16, 16)
    out = VAEResidual().attribute(model, x, torch.zeros(3, dtype=torch.long), generator=GEN)
    with torch.no_grad():
        expected = (x - target.reconstruct(x)).abs()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_vae_residual_bad_models() -> None:
    x, t = torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    plain = ExplainedModel(nn.Flatten(), spec(1, (4, 4)), 1)
    with pytest.raises(UserError, match=r"has no reconstruct\(x\) method; use a reconstruction"):
        VAEResidual().attribute(plain, x, t, generator=GEN)

    class Cropper(Halver):
        def reconstruct(self, x: Tensor) -> Tensor:
            return x[..., :2]

    bad = ExplainedModel(Cropper(), spec(1, (4, 4)), 1)
    with pytest.raises(
        UserError, match=r"must return x's shape \[2, 1, 4, 4\], got \[2, 1, 4, 2\]"
    ):
        VAEResidual().attribute(bad, x, t, generator=GEN)


def test_median_filter() -> None:
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 9.0
    assert median_filter(impulse, 3).abs().sum() == 0  # an isolated spike is removed
    step = torch.zeros(1, 1, 5, 6)
    step[..., 3:] = 1.0
    assert torch.equal(median_filter(step, 3), step)  # an edge is kept
    vol = torch.rand(1, 1, 5, 5, 5)
    ref = vol[0, 0, 1:4, 1:4, 1:4].median()
    assert median_filter(vol, 3)[0, 0, 2, 2, 2] == ref


# -- iterative saliency ----------------------------------------------------------------------------
class MaxLesion(nn.Module):
    """``y_1`` = the largest 3x3 mean of the image, ``y_0 = θ``: gradients see one lesion only."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.threshold = threshold
        with torch.no_grad():
            self.smooth.weight.fill_(1 / 9)

    def forward(self, x: Tensor) -> Tensor:
        m = self.pool(self.smooth(x)).flatten(1)
        return torch.cat([torch.full_like(m, self.threshold), m], dim=1)


def two_lesions() -> Tensor:
    x = torch.full((1, 1, 16, 40), 0.1)
    x[..., 6:9, 4:7] = 1.0  # bright lesion A (centre 7, 5)
    x[..., 6:9, 30:33] = 0.7  # fainter lesion B (centre 7, 31), 24 px away
    return x


@pytest.mark.parametrize(
    ("threshold", "iterations", "stop", "finds_b"),
    [(0.5, 1, True, False), (0.5, 2, True, True), (0.8, 2, True, False), (0.8, 2, False, True)],
)
def test_iterative_saliency_uncovers_the_hidden_lesion(
    threshold: float, iterations: int, stop: bool, finds_b: bool
) -> None:
    model = ExplainedModel(MaxLesion(threshold), spec(1, (16, 40)), 2)
    x, t = two_lesions(), torch.tensor([1])
    method = IterativeSaliency(
        iterations=iterations, fraction=25 / 640, stop_on_flip=stop, base="saliency"
    )
    out = method.attribute(model, x, t, generator=GEN)
    assert out[0, 0, 7, 5] == pytest.approx(1.0)  # lesion A: the first map's peak
    assert (out[0, 0, 7, 31] > 0.5) == finds_b
    assert out[0, 0, 0, 20] == 0  # background far from both
    assert out.max() <= iterations


def test_iterative_saliency_with_one_iteration_is_the_normalized_base_map() -> None:
    from benchbox.methods.gradient import IntegratedGradients

    model = ExplainedModel(MaxLesion(0.5), spec(1, (16, 40)), 2)
    x = two_lesions().repeat(2, 1, 1, 1) * torch.tensor([1.0, 0.8]).view(2, 1, 1, 1)
    t = torch.tensor([1, 1])
    base = IntegratedGradients(steps=4).attribute(model, x, t, generator=GEN).clamp_min(0)
    expected = base / base.amax(dim=(2, 3), keepdim=True)
    out = IterativeSaliency(
        iterations=1, base="integrated_gradients", base_params={"steps": 4}
    ).attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out, expected)


def test_inpaint() -> None:
    x = torch.rand(2, 3, 20, 20)
    region = torch.zeros(2, 1, 20, 20, dtype=torch.bool)
    region[:, :, 5:9, 10:14] = True
    out = inpaint(x, region)
    assert torch.equal(out[~region.expand_as(x)], x[~region.expand_as(x)])
    flat = torch.full((1, 2, 20, 20), 0.3)
    torch.testing.assert_close(inpaint(flat, region[:1]), flat)  # a constant image stays constant
    # Far from every known pixel (beyond the 11-px kernel): the mean of the known pixels.
    far = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    far[..., 0, :2] = False
    img = torch.zeros(1, 1, 20, 20)
    img[..., 0, 0], img[..., 0, 1] = 0.2, 0.6
    filled = inpaint(img, far)
    assert filled[0, 0, 19, 19].item() == pytest.approx(0.4)
    assert 0.2 <= filled[0, 0, 1, 0].item() <= 0.6  # near: a Gaussian-weighted mean
    vol = torch.rand(1, 1, 6, 6, 6)
    assert inpaint(vol, vol > 0.5).shape == vol.shape


def test_base_methods_are_validated() -> None:
    with pytest.raises(UserError, match=r"iterative_saliency.base: 'grad_cam' needs target_layer"):
        IterativeSaliency(base="grad_cam")
    with pytest.raises(UserError, match=r"unknown method 'salency'; did you mean 'saliency'"):
        DominantClass(base="salency")
    with pytest.raises(UserError, match=r"dominant_class.base_params.steps: expected an integer"):
        DominantClass(base="integrated_gradients", base_params={"steps": 0})
    with pytest.raises(UserError, match=r"'iterative_saliency' is itself built on a base"):
        DominantClass(base="iterative_saliency")
    _, problems = validate_params(IterativeSaliency, {"fraction": 1.5}, "methods[2].it")
    assert problems == ["methods[2].it.fraction: expected a number < 1.0, got 1.5"]
    resolved, problems = validate_params(DominantClass, {}, "m")
    assert problems == [] and resolved == {"base": "deconvnet", "base_params": None}


# -- dominant class --------------------------------------------------------------------------------
class Linear3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * 5 * 5, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(3, 50, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def test_dominant_class_on_a_linear_model() -> None:
    model = ExplainedModel(Linear3(), spec(2, (5, 5)), 3)
    x, t = torch.rand(3, 2, 5, 5), torch.tensor([0, 1, 2])
    method = DominantClass(base="saliency", base_params={"abs": False, "reduce": "sum"})
    out = method.attribute(model, x, t, generator=GEN)
    w = model.module.fc.weight.detach().view(3, 2, 5, 5).sum(1)  # A_c = Σ_channels w_c
    for i in range(3):
        own = w[t[i]]
        expected = torch.where((own >= w.amax(0)) & (own > 0), own, 0.0)
        torch.testing.assert_close(out[i, 0], expected)
    # Every pixel with positive evidence for some class is won by exactly one class.
    wins = sum(
        (method.attribute(model, x, torch.full((3,), c), generator=GEN) > 0).long()
        for c in range(3)
    )
    assert torch.equal(wins, (w.amax(0) > 0).long().expand(3, 1, 5, 5))


def test_dominant_class_with_one_output_is_the_positive_part() -> None:
    model = ExplainedModel(Halver(), spec(1, (4, 4)), 1)
    x, t = torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    base = DominantClass(base="saliency", base_params={"abs": False, "reduce": "sum"})
    out = base.attribute(model, x, t, generator=GEN)
    inp = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inp).sum(), inp)
    torch.testing.assert_close(out, reduce_channels(grad, "sum").clamp_min(0))


def test_dominant_class_default_base_is_deconvnet() -> None:
    from benchbox.methods.gradient import Deconvnet

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).eval()
    model = ExplainedModel(net, spec(1, (6, 6)), 3)
    x, t = torch.rand(2, 1, 6, 6), torch.tensor([2, 0])
    out = DominantClass().attribute(model, x, t, generator=GEN)
    maps = torch.stack(
        [Deconvnet().attribute(model, x, torch.full((2,), c), generator=GEN) for c in range(3)]
    )
    own = maps[t, torch.arange(2)]
    expected = torch.where((own >= maps.amax(0)) & (own > 0), own, 0.0)
    torch.testing.assert_close(out, expected)
