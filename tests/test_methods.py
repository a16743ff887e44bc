"""Attribution methods: the contract over every registered method, plus known answers.

Known answers: saliency = |∂logit/∂x| by plain autograd; IG completeness and IG on a linear model
= w ⊙ (x − x'); Grad-CAM = ReLU(Σ_k mean(∂y/∂A_k) A_k) upsampled, computed by hand.
"""

from __future__ import annotations

import warnings
from typing import cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods import base, gradient
from benchbox.methods.base import Reference, explaining, reduce_channels, reference_image
from benchbox.methods.cam import GradCAM
from benchbox.methods.controls import Random
from benchbox.methods.gradient import IGRule, IntegratedGradients, Saliency
from benchbox.params import validate_params
from benchbox.seeding import make_generator

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
BUILTIN_METHODS = ["saliency", "integrated_gradients", "grad_cam", "random"]


# -- a tiny deterministic model ------------------------------------------------------------------
class TinyNet(nn.Module):
    """Normalize -> conv -> ReLU -> conv -> ReLU -> global average pool -> linear."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int = 3, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.4))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.25))
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def features(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        return self.act2(self.conv2(self.act1(self.conv1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class LinearNet(nn.Module):
    """logits = W · flatten(x) + b: every gradient is constant."""

    def __init__(self, shape: tuple[int, ...], classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(int(np.prod(shape)), classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.fc.bias.copy_(torch.randn(self.fc.bias.shape, generator=gen))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def tiny_model(channels: int = 3, seed: int = 0) -> ExplainedModel:
    net = TinyNet(channels, seed=seed).eval()
    spec = InputSpec(
        channels=channels, size=(16, 16), mean=(0.4,) * channels, std=(0.25,) * channels
    )
    return ExplainedModel(net, spec, num_classes=2, target_layers={"auto": net.act2})


def tiny_net(model: ExplainedModel) -> TinyNet:
    return cast(TinyNet, model.module)


def linear_model(shape: tuple[int, ...] = (3, 8, 8)) -> ExplainedModel:
    spec = InputSpec(channels=shape[0], size=shape[1:], mean=(0.0,), std=(1.0,))
    return ExplainedModel(LinearNet(shape).eval(), spec, num_classes=2)


def batch(b: int = 4, channels: int = 3, size: int = 16, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, channels, size, size, generator=gen)
    target = torch.arange(b) % 2
    return x, target


def hooks(module: nn.Module) -> list[tuple[str, str, int]]:
    return [
        (name, attr, len(getattr(m, attr)))
        for name, m in module.named_modules()
        for attr in HOOK_DICTS
    ]


def make(name: str) -> Method:
    cls = registry.methods.get(name)
    params, problems = validate_params(cls, {}, f"methods.{name}")
    assert problems == []
    method: Method = cls(**params)
    return method


# -- contract over every registered method -------------------------------------------------------
@pytest.fixture(params=BUILTIN_METHODS)
def method(request: pytest.FixtureRequest) -> Method:
    return make(request.param)


def test_registry_lists_the_builtins_with_descriptions() -> None:
    for name in BUILTIN_METHODS:
        assert name in registry.methods
        desc = registry.methods.describe(name)
        assert desc and not desc.startswith("(unavailable")


def test_contract_shape_dtype_device_finite(method: Method) -> None:
    model = tiny_model()
    x, target = batch()
    out = method.attribute(model, x, target, generator=make_generator(0))
    assert out.shape == (4, 1, 16, 16)
    assert out.dtype == torch.float32
    assert out.device == x.device
    assert not out.requires_grad
    assert torch.isfinite(out).all()
    assert not x.requires_grad


def test_contract_deterministic_under_same_seed(method: Method) -> None:
    model = tiny_model()
    x, target = batch()
    a = method.attribute(model, x, target, generator=make_generator(7))
    b = method.attribute(model, x, target, generator=make_generator(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_contract_batched_equals_per_sample(method: Method) -> None:
    model = tiny_model()
    x, target = batch(b=5)
    whole = method.attribute(model, x, target, generator=make_generator(3))
    # One generator for the per-sample calls: Random consumes its draws in batch order.
    gen = make_generator(3)
    parts = [
        method.attribute(model, x[i : i + 1], target[i : i + 1], generator=gen) for i in range(5)
    ]
    torch.testing.assert_close(whole, torch.cat(parts), rtol=0, atol=1e-5)


def test_contract_leaves_model_untouched(method: Method) -> None:
    model = tiny_model()
    net = tiny_net(model)
    net.conv1.weight.requires_grad_(False)  # mixed flags must come back exactly
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks_before = hooks(net)
    x, target = batch()
    x0 = x.clone()
    method.attribute(model, x, target, generator=make_generator(0))
    assert hooks(net) == hooks_before
    assert all(n == 0 for *_, n in hooks(net))
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training
    torch.testing.assert_close(x, x0, rtol=0, atol=0)


def test_contract_no_captum_warning(method: Method) -> None:
    model = tiny_model()
    x, target = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.attribute(model, x, target, generator=make_generator(0))


def test_needs_are_declared() -> None:
    assert Saliency.needs == frozenset({Capability.GRADIENTS})
    assert IntegratedGradients.needs == frozenset({Capability.GRADIENTS})
    assert GradCAM.needs == frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    assert Random.needs == frozenset()


def test_params_are_validated_from_the_signature() -> None:
    _, problems = validate_params(IntegratedGradients, {"steps": 0}, "methods[1].ig")
    assert problems == ["methods[1].ig.steps: expected an integer > 0, got 0"]
    _, problems = validate_params(Saliency, {"reduce": "l2"}, "m")
    assert len(problems) == 1 and problems[0].startswith("m.reduce: expected one of")
    resolved, problems = validate_params(GradCAM, {}, "m")
    assert problems == [] and resolved == {"layer": "auto", "relu": True}


def test_bad_inputs_are_reported() -> None:
    model = tiny_model()
    x, target = batch()
    with pytest.raises(ValueError, match=r"target: expected a long tensor of shape \[4\]"):
        Saliency().attribute(model, x, target.float(), generator=make_generator(0))
    with pytest.raises(ValueError, match=r"x: expected a float tensor"):
        Saliency().attribute(model, x[0], target, generator=make_generator(0))


# -- shared helpers -------------------------------------------------------------------------------
def test_reduce_channels_known_answers() -> None:
    a = torch.tensor([1.0, -3.0, 2.0]).view(1, 3, 1, 1)
    assert reduce_channels(a, "sum").item() == 0.0
    assert reduce_channels(a, "abs_sum").item() == 6.0
    assert reduce_channels(a, "max_abs").item() == 3.0
    assert reduce_channels(a, "mean").item() == 0.0
    assert reduce_channels(torch.zeros(2, 4, 5, 6), "sum").shape == (2, 1, 5, 6)
    assert reduce_channels(torch.zeros(2, 4, 3, 5, 6), "max_abs").shape == (2, 1, 3, 5, 6)


def test_reference_images() -> None:
    x, _ = batch(b=2)
    assert torch.equal(reference_image(x, "zero"), torch.zeros_like(x))
    mean = reference_image(x, "mean")
    torch.testing.assert_close(mean[:, :, 3, 5], x.mean(dim=(2, 3)))
    # RISE: gkern(11, 5) = gaussian_filter of a centred delta, applied by conv2d, padding 5.
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = torch.tensor(gaussian_filter(delta, 5), dtype=torch.float32)
    expected = F.conv2d(x, k.expand(3, 1, 11, 11).contiguous(), padding=5, groups=3)
    torch.testing.assert_close(reference_image(x, "blur"), expected, rtol=0, atol=1e-6)
    assert base.rise_blur_kernel(2).sum().item() == pytest.approx(1.0, abs=1e-12)
    vol = torch.rand(1, 1, 6, 7, 8)
    assert reference_image(vol, "blur").shape == vol.shape


def test_explaining_removes_leaked_hooks_and_restores_flags() -> None:
    model = tiny_model()
    net = tiny_net(model)
    net.train()
    with explaining(model) as module:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert module is net
        net.conv1.register_forward_hook(lambda *args: None)
        net.conv1.register_forward_pre_hook(lambda *args, **kw: None, with_kwargs=True)
        net.act2.register_full_backward_hook(lambda *args: None)
    assert all(n == 0 for *_, n in hooks(net))
    assert not net.conv1._forward_pre_hooks_with_kwargs
    assert net.training and all(p.requires_grad for p in net.parameters())


# -- known answers --------------------------------------------------------------------------------
def test_saliency_equals_plain_autograd() -> None:
    model = tiny_model()
    x, target = batch()
    inp = x.clone().requires_grad_(True)
    logits = model(inp)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inp)
    out = Saliency().attribute(model, x, target, generator=make_generator(0))
    torch.testing.assert_close(out, grad.abs().amax(dim=1, keepdim=True), rtol=0, atol=1e-7)
    signed = Saliency(abs=False, reduce="sum").attribute(
        model, x, target, generator=make_generator(0)
    )
    torch.testing.assert_close(signed, grad.sum(dim=1, keepdim=True), rtol=0, atol=1e-7)


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_right"])
def test_ig_on_a_linear_model_is_weight_times_delta(baseline: Reference, rule: IGRule) -> None:
    model = linear_model()
    x, target = batch(b=3, size=8)
    ig = IntegratedGradients(steps=4, baseline=baseline, method=rule, reduce="sum")
    out = ig.attribute(model, x, target, generator=make_generator(0))
    w = cast(LinearNet, model.module).fc.weight[target].view(3, 3, 8, 8)
    delta = x - reference_image(x, baseline)
    expected = (w * delta).sum(dim=1, keepdim=True).detach()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rule", "tol"), [("riemann_trapezoid", 5e-3), ("gausslegendre", 1e-2)])
def test_ig_completeness_converges(rule: IGRule, tol: float) -> None:
    # Σ IG = y(x) − y(0); a ReLU net has kinks on the path, so the error falls slowly with steps.
    model = tiny_model()
    x, target = batch(b=4)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    errors = []
    for steps in (32, 512):
        ig = IntegratedGradients(steps=steps, method=rule)
        out = ig.attribute(model, x, target, generator=make_generator(0))
        errors.append((out.sum(dim=(1, 2, 3)) - gap).abs().max().item())
    assert errors[1] < tol  # logits span ~4, so this is ~0.1%
    assert errors[1] < errors[0] / 4


def test_ig_riemann_needs_two_steps() -> None:
    with pytest.raises(UserError, match="riemann_right rule needs steps >= 2, got 1"):
        IntegratedGradients(steps=1, method="riemann_right")
    IntegratedGradients(steps=1, method="gausslegendre")


@pytest.mark.parametrize("rows", [2, 5, 40])
def test_ig_memory_bound_holds_and_does_not_change_the_result(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_model()
    x, target = batch(b=3)
    ig = IntegratedGradients(steps=12)
    free = ig.attribute(model, x, target, generator=make_generator(0))
    monkeypatch.setattr(gradient, "rows_per_pass", lambda _: rows)
    seen: list[int] = []
    handle = tiny_net(model).conv1.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    try:
        bounded = ig.attribute(model, x, target, generator=make_generator(0))
    finally:
        handle.remove()
    assert max(seen) <= rows and sum(seen) == 3 * 12
    torch.testing.assert_close(bounded, free, rtol=0, atol=1e-5)


def test_rows_per_pass() -> None:
    assert base.rows_per_pass(torch.zeros(1, 3, 224, 224)) == (1 << 24) // (3 * 224 * 224)
    assert base.rows_per_pass(torch.zeros(1, 1, 8, 8)) == 512
    assert base.rows_per_pass(torch.zeros(1, 1, 512, 512, 512)) == 1


def test_grad_cam_equals_hand_computation() -> None:
    model = tiny_model()
    net = tiny_net(model)
    x, target = batch()
    feats = net.features(x)  # [B, 8, 8, 8]
    logits = net.fc(feats.mean(dim=(2, 3)))
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), feats)
    alpha = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((alpha * feats).sum(dim=1, keepdim=True))
    expected = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False).detach()
    out = GradCAM().attribute(model, x, target, generator=make_generator(0))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out.abs().sum() > 0
    no_relu = GradCAM(relu=False).attribute(model, x, target, generator=make_generator(0))
    raw = F.interpolate((alpha * feats).sum(1, keepdim=True), size=(16, 16), mode="bilinear")
    torch.testing.assert_close(no_relu, raw.detach(), rtol=0, atol=1e-6)


def test_grad_cam_unknown_layer_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"no target layer 'layer9'; available: \['auto'\]"):
        GradCAM(layer="layer9").attribute(tiny_model(), *batch(), generator=make_generator(0))


def test_random_is_uniform_and_seeded() -> None:
    model = tiny_model()
    x, target = batch(b=8)
    a = Random().attribute(model, x, target, generator=make_generator(1))
    b = Random().attribute(model, x, target, generator=make_generator(2))
    assert not torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() < 1.0
    assert abs(a.mean().item() - 0.5) < 0.02
    assert torch.unique(a).numel() == a.numel()  # no ties


def test_in_chunks_halves_on_cuda_oom_and_keeps_order() -> None:
    from benchbox.methods.base import in_chunks

    sizes: list[int] = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("fake")
        return x * 2 + t[:, None]

    x = torch.arange(10.0).reshape(5, 2)
    t = torch.arange(5)
    out = in_chunks(fn, x, t, size=8)
    assert torch.equal(out, x * 2 + t[:, None])
    assert sizes[:2] == [5, 2]  # 8 capped at 5, OOM, halved to 2 (5 // 2)
    with pytest.raises(RuntimeError, match="out of memory with one sample per pass"):
        in_chunks(lambda a, b: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), x, t)
