"""The CAM family (benchbox.methods.cam): contract in 2D and 3D, plus known answers.

Known answers: CAM = (h·w) · Grad-CAM on GAP networks (a random one and ``cnn_gap``'s network);
Grad-CAM++ = pytorch-grad-cam's formula written out in numpy; Guided Grad-CAM = Captum's
``GuidedGradCam``; Score-CAM = a per-channel loop of the paper's algorithm, and its map points at
the region that raises the score on a hand-built GAP CNN where an unweighted map would not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods.base import Score, hook_counts
from benchbox.methods.cam import CAM, GradCAM, GradCAMPlusPlus, GuidedGradCAM, ScoreCAM
from benchbox.models.cnn import CNNGapNet
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.tolerance import Affine, Mean, Step, assert_within, in_float64, map_bound

# Small parameters keep every call fast; score_cam's batch_size splits K = 8 channels unevenly.
CAM_METHODS: dict[str, dict[str, Any]] = {
    "cam": {},
    "grad_cam": {},
    "grad_cam_pp": {},
    "guided_grad_cam": {},
    "score_cam": {"batch_size": 7},
}
GAP_PROVIDES = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER, Capability.GAP_HEAD})


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiny models ----------------------------------------------------------------------------------
class GapNet(nn.Module):
    """Normalize -> conv -> ReLU -> conv (stride 2) -> ReLU -> global average pool -> linear."""

    def __init__(self, dims: int = 2, channels: int = 3, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        gen = torch.Generator().manual_seed(seed)
        self.dims = dims
        self.conv1 = conv(channels, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = conv(6, 8, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def features(self, x: Tensor) -> Tensor:
        return self.act2(self.conv2(self.act1(self.conv1((x - 0.4) / 0.25))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=tuple(range(2, x.dim()))))

    def steps(self) -> list[Step]:
        """The forward pass as ``tests.tolerance.forward_bound`` steps."""
        convs = (self.conv1, self.act1, self.conv2, self.act2)
        return [Affine(0.4, 0.25), *convs, Mean(tuple(range(2, 2 + self.dims))), self.fc]


def gap_model(dims: int = 2, channels: int = 3, seed: int = 0) -> ExplainedModel:
    net = GapNet(dims, channels, seed=seed).eval()
    size = (16, 16) if dims == 2 else (8, 8, 8)
    spec = InputSpec(channels=channels, size=size, mean=(0.4,) * channels, std=(0.25,) * channels)
    provides = GAP_PROVIDES | ({Capability.VOLUMES_3D} if dims == 3 else set())
    return ExplainedModel(
        net,
        spec,
        num_classes=3,
        target_layers={"auto": net.act2, "conv1": net.act1},
        provides=frozenset(provides),
    )


def inputs(b: int = 4, dims: int = 2, channels: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = (16, 16) if dims == 2 else (8, 8, 8)
    return torch.rand(b, channels, *size, generator=gen), torch.arange(b) % 3


def make(name: str, **params: Any) -> Method:
    cls = registry.methods.get(name)
    resolved, problems = validate_params(cls, {**CAM_METHODS[name], **params}, f"methods.{name}")
    assert problems == []
    method: Method = cls(**resolved)
    return method


def run(method: Method, model: ExplainedModel, x: Tensor, target: Tensor) -> Tensor:
    return method.attribute(model, x, target, generator=make_generator(0))


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_registered_with_description_needs_and_3d(name: str) -> None:
    assert name in registry.methods
    desc = registry.methods.describe(name)
    assert desc and not desc.startswith("(unavailable")
    cls = registry.methods.get(name)
    assert cls.supports_3d is True
    assert Capability.TARGET_LAYER in cls.needs
    # CAM and Score-CAM run forward passes only; the others backpropagate.
    assert (Capability.GRADIENTS in cls.needs) == (name not in ("cam", "score_cam"))
    assert (Capability.GAP_HEAD in cls.needs) == (name == "cam")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_contract(name: str, dims: int) -> None:
    method = make(name)
    model = gap_model(dims)
    net = cast(GapNet, model.module)
    net.conv1.weight.requires_grad_(False)  # mixed flags must come back exactly
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = hook_counts(net)
    x, target = inputs(b=5, dims=dims)
    x0 = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Captum chatter either
        out = method.attribute(model, x, target, generator=make_generator(3))
    assert out.shape == (5, 1, *x.shape[2:])
    assert out.dtype == torch.float32 and out.device == x.device and not out.requires_grad
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    # Deterministic, and a batch gives the per-sample maps.
    again = method.attribute(model, x, target, generator=make_generator(4))
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    # Nothing left behind.
    assert hook_counts(net) == hooks
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters()) and not net.training
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    # A batch gives the per-sample maps. Float32 convolutions of other batch sizes round
    # differently on each CPU (3D maps reach ~20), so this compares them in float64.
    wide = in_float64(model)
    out = method.attribute(wide, x, target, generator=make_generator(3))
    parts = [
        method.attribute(wide, x[i : i + 1], target[i : i + 1], generator=make_generator(3))
        for i in range(5)
    ]
    one_by_one = torch.cat(parts)
    assert_within(one_by_one, out, map_bound(out) + map_bound(one_by_one))


@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_unknown_layer_is_a_user_error(name: str) -> None:
    with pytest.raises(
        UserError, match=r"no target layer 'layer9'; available: \['auto', 'conv1'\]"
    ):
        run(make(name, layer="layer9"), gap_model(), *inputs())


def test_a_layer_without_spatial_dims_is_a_user_error() -> None:
    model = gap_model()
    model.target_layers["fc"] = cast(GapNet, model.module).fc
    for cls in (CAM, GradCAMPlusPlus, ScoreCAM):
        with pytest.raises(UserError, match=r"layer: target layer 'fc' must output \[B, K, \*sp"):
            run(cls(layer="fc"), model, *inputs())


# -- CAM ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("relu", [True, False])
def test_cam_is_grad_cam_times_feature_area_on_a_gap_net(dims: int, relu: bool) -> None:
    model = gap_model(dims)
    x, target = inputs(dims=dims)
    cam = run(CAM(relu=relu), model, x, target)
    grad_cam = run(GradCAM(relu=relu), model, x, target)
    area = 8**2 if dims == 2 else 4**3  # the stride-2 layer's h·w (·d)
    torch.testing.assert_close(cam / area, grad_cam, rtol=1e-5, atol=1e-6)
    assert cam.abs().max() > 1e-2
    if not relu:
        assert (cam < 0).any()  # negative evidence is kept


def test_cam_equals_hand_computation() -> None:
    model = gap_model()
    net = cast(GapNet, model.module)
    x, target = inputs()
    feats = net.features(x)
    maps = torch.einsum("bk,bkhw->bhw", net.fc.weight[target], feats)[:, None]
    expected = F.interpolate(F.relu(maps), size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(run(CAM(), model, x, target), expected.detach(), rtol=0, atol=1e-5)


def test_cam_matches_grad_cam_on_cnn_gap() -> None:
    torch.manual_seed(0)
    net = CNNGapNet(in_channels=1, num_classes=2, width=4).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                cast(Tensor, m.running_mean).uniform_(-0.2, 0.2)
                cast(Tensor, m.running_var).uniform_(0.5, 2.0)
    spec = InputSpec(channels=1, size=(16, 16), mean=(0.0,), std=(1.0,))
    model = ExplainedModel(net, spec, 2, target_layers=net.target_layers(), provides=GAP_PROVIDES)
    x, target = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 1])
    cam = run(CAM(), model, x, target)
    torch.testing.assert_close(cam / 16, run(GradCAM(), model, x, target), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match=r"nn\.Linear maps 16 -> 2, but the target layer has 8"):
        run(CAM(layer="block2"), model, x, target)


def test_cam_rejects_a_layer_that_does_not_feed_the_pooling() -> None:
    model = gap_model()
    model.target_layers["pre_relu"] = cast(GapNet, model.module).conv2  # 8 channels, like act2
    with pytest.raises(UserError, match=r"output is not head\(GAP\(layer 'pre_relu'\)\); CAM"):
        run(CAM(layer="pre_relu"), model, *inputs())


class MLPHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.hidden = nn.Linear(4, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(self.act(self.conv(x)).mean(dim=(2, 3)))))


def test_cam_rejects_a_model_without_a_gap_head() -> None:
    net = MLPHead().eval()
    spec = InputSpec(channels=1, size=(8, 8), mean=(0.0,), std=(1.0,))
    model = ExplainedModel(net, spec, 2, target_layers={"auto": net.act})
    x, target = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(UserError, match=r"cam: the model's last nn.Linear maps 5 -> 2, but the"):
        run(CAM(), model, x, target)
    conv = nn.Conv2d(1, 2, 3)
    nothing = ExplainedModel(nn.Sequential(conv, nn.Flatten(1)), spec, 2, {"auto": conv})
    with pytest.raises(UserError, match=r"cam: the model has no nn\.Linear classifier head"):
        run(CAM(), nothing, x, target)


# -- Grad-CAM++ -----------------------------------------------------------------------------------
def pytorch_grad_cam_pp(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's GradCAMPlusPlus.get_cam_weights, verbatim in numpy, then Σ w A, ReLU."""
    grads_power_2 = grads**2
    grads_power_3 = grads_power_2 * grads
    sum_activations = np.sum(activations, axis=(2, 3))
    eps = 0.000001
    aij = grads_power_2 / (
        2 * grads_power_2 + sum_activations[:, :, None, None] * grads_power_3 + eps
    )
    aij = np.where(grads != 0, aij, 0)
    weights = np.maximum(grads, 0) * aij
    weights = np.sum(weights, axis=(2, 3))
    cam = (weights[:, :, None, None] * activations).sum(axis=1)
    return np.maximum(cam, 0)[:, None]


@pytest.mark.parametrize("layer", ["auto", "conv1"])
def test_grad_cam_pp_matches_pytorch_grad_cam_formula(layer: str) -> None:
    # At "conv1" the gradients vary over positions (they pass conv2 and a ReLU), so the
    # pixel-wise α of the closed form matters; at "auto" (feeding GAP) they are constant.
    model = gap_model()
    net = cast(GapNet, model.module)
    x, target = inputs(b=6)
    a1 = net.act1(net.conv1((x - 0.4) / 0.25))
    a2 = net.act2(net.conv2(a1))
    feats = a1 if layer == "conv1" else a2
    logits = net.fc(a2.mean(dim=(2, 3)))
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feats)
    if layer == "conv1":
        assert grads[0, 0].std() > 0
    cam = pytorch_grad_cam_pp(feats.detach().double().numpy(), grads.double().numpy())
    expected = F.interpolate(torch.from_numpy(cam).float(), size=(16, 16), mode="bilinear")
    out = run(GradCAMPlusPlus(layer=layer), model, x, target)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert out.abs().max() > 1e-2


def test_grad_cam_pp_weights_only_positive_gradients() -> None:
    # On a GAP net ∂y/∂A_k = w_k/(h·w) everywhere, so Grad-CAM++'s weight is
    # h·w·relu(g_k)/(2 + Σ_A_k·g_k): channels with w_k < 0 drop out, unlike in Grad-CAM.
    model = gap_model()
    x, target = inputs()
    pp = run(GradCAMPlusPlus(relu=False), model, x, target)
    gc = run(GradCAM(relu=False), model, x, target)
    assert not torch.allclose(pp / pp.abs().max(), gc / gc.abs().max(), atol=1e-2)


# -- Guided Grad-CAM ------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("reduce", ["max_abs", "sum"])
def test_guided_grad_cam_equals_captum(dims: int, reduce: str) -> None:
    from captum.attr import GuidedGradCam

    model = gap_model(dims)
    net = cast(GapNet, model.module)
    x, target = inputs(dims=dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GuidedGradCam(net, net.act2).attribute(
            x.clone().requires_grad_(True),
            target=target,
            interpolate_mode="bilinear" if dims == 2 else "trilinear",
        )
    expected = ref.abs().amax(1, keepdim=True) if reduce == "max_abs" else ref.sum(1, keepdim=True)
    out = run(GuidedGradCAM(reduce=reduce), model, x, target)  # type: ignore[arg-type]
    torch.testing.assert_close(out, expected.detach(), rtol=0, atol=1e-6)
    assert out.abs().max() > 1e-3
    assert all(not hooks for hooks in hook_counts(net).values())


# -- Score-CAM ------------------------------------------------------------------------------------
def score_cam_loop(model: ExplainedModel, x: Tensor, target: Tensor, score: str) -> Tensor:
    """The paper's Algorithm 1, one image and one channel at a time."""
    net = cast(GapNet, model.module)
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            a = net.features(x[b : b + 1])[0]  # [K, h, w]
            s = []
            for k in range(a.shape[0]):
                up = F.interpolate(a[k][None, None], size=(16, 16), mode="bilinear")[0, 0]
                span = up.max() - up.min()
                h = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                logits = net(x[b : b + 1] * h)[0]
                s.append(
                    logits.softmax(0)[target[b]] if score == "probability" else logits[target[b]]
                )
            w = torch.stack(s).softmax(0)
            cam = F.relu((w[:, None, None] * a).sum(0))
            out.append(F.interpolate(cam[None, None], size=(16, 16), mode="bilinear")[0])
    return torch.stack(out)


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_score_cam_equals_the_papers_loop(score: str) -> None:
    model = gap_model()
    x, target = inputs(b=3)
    out = run(ScoreCAM(score=score, batch_size=5), model, x, target)  # type: ignore[arg-type]
    torch.testing.assert_close(out, score_cam_loop(model, x, target, score), rtol=1e-5, atol=1e-6)


class TwoObjectNet(nn.Module):
    """A GAP CNN of 1x1 convs: channel 0 fires on bright pixels (x > 0.75), channel 1 twice as
    strongly on mid-grey ones (|x − 0.5| < 0.25); class 1's logit = 50·(mean A_0 − mean A_1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 2, 1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([4.0, 1.0, -1.0]).view(3, 1, 1, 1))
            cast(Tensor, self.conv1.bias).copy_(torch.tensor([-3.0, -0.5, 0.5]))  # 4x−3, ±(x−.5)
            self.conv2.weight.copy_(torch.tensor([[1.0, 0, 0], [0, -8, -8]]).view(2, 3, 1, 1))
            cast(Tensor, self.conv2.bias).copy_(torch.tensor([0.0, 2.0]))  # 8·relu(.25−|x−.5|)
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [50.0, -50.0]]))
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


def test_score_cam_points_at_the_region_that_raises_the_score() -> None:
    net = TwoObjectNet().eval()
    spec = InputSpec(channels=1, size=(16, 16), mean=(0.0,), std=(1.0,))
    model = ExplainedModel(net, spec, 2, target_layers={"auto": net.act2}, provides=GAP_PROVIDES)
    x = torch.zeros(1, 1, 16, 16)
    x[..., 2:6, 2:6] = 1.0  # bright square: A_0 = 1 there, raises class 1
    x[..., 9:14, 9:14] = 0.5  # grey square: A_1 = 2 there, lowers class 1
    target = torch.tensor([1])
    bright = torch.zeros(16, 16, dtype=torch.bool)
    bright[2:6, 2:6] = True
    for score in ("probability", "logit"):
        out = run(ScoreCAM(score=cast(Score, score)), model, x, target)
        peak = int(out.flatten().argmax())
        assert bright.flatten()[peak], score
    # Equal channel weights would point at the grey square (A_1 = 2 > A_0 = 1).
    feats = net.act2(net.conv2(net.act1(net.conv1(x))))
    assert not bright.flatten()[int(feats.sum(1).flatten().argmax())]
