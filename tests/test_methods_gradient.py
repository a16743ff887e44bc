"""Gradient family and noise-tunnel wrappers: contract, known answers, reference comparisons.

Known answers: on a linear model ``input_x_gradient``/``deeplift``/``gradient_shap`` equal
``w ⊙ (x − x')`` (with the drawn baselines' mean for the Shap variants); DeepLift's rescale rule
by hand on an MLP and summation-to-delta on ReLU CNNs (with max pooling); guided backprop and
deconvnet equal a hand-written custom-backward ReLU; SmoothGrad with ``sigma = 0`` is its base;
VarGrad of a linear model's saliency is 0. References: Captum's ``InputXGradient``,
``GradientShap`` (given our α draws), ``DeepLiftShap`` (given our baselines) and ``NoiseTunnel``
(given Captum's noise).
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods import base, gradient, noise
from benchbox.methods.base import (
    Reference,
    explaining,
    hook_counts,
    over_draws,
    reference_image,
    sample_seeds,
)
from benchbox.methods.gradient import (
    Deconvnet,
    DeepLift,
    DeepLiftShap,
    GradientShap,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    modified_relu_gradient,
    shap_draws,
)
from benchbox.methods.noise import SmoothGrad, SmoothGradSq, VarGrad, noise_scale
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.tolerance import assert_within, gamma, in_float64, map_bound

torch.set_num_threads(1)

GRADIENT = ["input_x_gradient", "gradient_shap", "deeplift", "deeplift_shap"]
RELU_RULES = ["guided_backprop", "deconvnet"]
NOISE = ["smoothgrad", "smoothgrad_sq", "vargrad"]
NAMES = GRADIENT + RELU_RULES + NOISE
STOCHASTIC = ["gradient_shap", "deeplift_shap", *NOISE]  # one generator draw per sample


# -- small deterministic models -------------------------------------------------------------------
def _init(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


class ReluCNN(nn.Module):
    """(x − 0.4)/0.25 -> conv -> ReLU -> conv(stride 2) -> ReLU -> [max pool] -> GAP -> linear."""

    def __init__(self, channels: int = 3, dims: int = 2, pool: bool = False, inplace: bool = False):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv1 = conv(channels, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=inplace)
        self.conv2 = conv(6, 8, 3, stride=2, padding=1)
        self.act2 = nn.ReLU(inplace=inplace)
        self.pool = (nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2)) if pool else nn.Identity()
        self.fc = nn.Linear(8, 2)
        _init(self, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.conv1((x - 0.4) / 0.25))
        h = self.pool(self.act2(self.conv2(h)))
        return self.fc(h.flatten(2).mean(dim=2))


class FunctionalReluCNN(ReluCNN):
    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1((x - 0.4) / 0.25))
        return self.fc(self.act2(self.conv2(h)).flatten(2).mean(dim=2))


class LinearNet(nn.Module):
    """logits = W · flatten(x) + b."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.fc = nn.Linear(int(np.prod(shape)), 2)
        _init(self, 1, scale=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


class MLP(nn.Module):
    """flatten -> linear(4→3) -> ReLU -> linear(3→3) -> ReLU -> linear(3→2), for hand answers."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.r1 = nn.Linear(4, 3), nn.ReLU()
        self.l2, self.r2 = nn.Linear(3, 3), nn.ReLU()
        self.l3 = nn.Linear(3, 2)
        _init(self, 3, scale=1.0)  # a seed where both ReLUs pass signal for the test inputs

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.r2(self.l2(self.r1(self.l1(x.flatten(1))))))


def wrap(net: nn.Module, shape: tuple[int, ...]) -> ExplainedModel:
    spec = InputSpec(channels=shape[0], size=shape[1:], mean=(0.4,), std=(0.25,))
    return ExplainedModel(net.eval(), spec, num_classes=2)


def cnn(**kw: Any) -> ExplainedModel:
    dims = kw.get("dims", 2)
    return wrap(ReluCNN(**kw), (kw.get("channels", 3), *([8] * dims)))


def linear(shape: tuple[int, ...] = (3, 6, 6)) -> tuple[ExplainedModel, LinearNet]:
    net = LinearNet(shape)
    return wrap(net, shape), net


def images(b: int = 4, shape: tuple[int, ...] = (3, 8, 8), seed: int = 1) -> tuple[Tensor, Tensor]:
    x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed))
    return x, torch.arange(b) % 2


def weights(net: LinearNet, target: Tensor, shape: tuple[int, ...]) -> Tensor:
    return net.fc.weight.detach()[target].view(len(target), *shape)


def make(name: str, **params: Any) -> Method:
    cls = registry.methods.get(name)
    resolved, problems = validate_params(cls, params, f"methods.{name}")
    assert problems == []
    method: Method = cls(**resolved)
    return method


def run(method: Method, model: ExplainedModel, x: Tensor, t: Tensor, seed: int = 0) -> Tensor:
    return method.attribute(model, x, t, generator=make_generator(seed))


# -- the contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_description_needs_and_3d(name: str) -> None:
    cls = registry.methods.get(name)
    assert issubclass(cls, Method)
    assert registry.methods.describe(name)[:1].isupper()
    assert cls.needs == frozenset({Capability.GRADIENTS})
    assert cls.supports_3d is True


@pytest.mark.parametrize("name", NAMES)
def test_contract_shape_dtype_finite_deterministic(name: str) -> None:
    method, model = make(name), cnn()
    x, t = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Captum's hook announcements are silenced, nothing else
        out = run(method, model, x, t, seed=5)
    assert out.shape == (4, 1, 8, 8) and out.dtype == torch.float32
    assert out.device == x.device and not out.requires_grad
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    torch.testing.assert_close(run(method, model, x, t, seed=5), out, rtol=0, atol=0)
    if name in STOCHASTIC:
        assert not torch.equal(run(method, model, x, t, seed=6), out)


@pytest.mark.parametrize("name", NAMES)
def test_contract_batched_equals_per_sample_and_split(name: str) -> None:
    # The stochastic ones draw one seed per sample, so per-sample calls sharing one generator in
    # sample order (and any split of the batch in sample order) give the batch's maps.
    method, model = make(name), cnn()
    x, t = images(b=5)
    whole = run(method, model, x, t, seed=3)
    gen = make_generator(3)
    single = torch.cat(
        [method.attribute(model, x[i : i + 1], t[i : i + 1], generator=gen) for i in range(5)]
    )
    torch.testing.assert_close(single, whole, rtol=0, atol=1e-5)
    gen = make_generator(3)
    halves = torch.cat(
        [method.attribute(model, x[s], t[s], generator=gen) for s in (slice(0, 2), slice(2, 5))]
    )
    torch.testing.assert_close(halves, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_contract_generator_advances_one_draw_per_sample(name: str) -> None:
    method, model = make(name), cnn()
    x, t = images(b=3)
    gen, ref = make_generator(9), make_generator(9)
    method.attribute(model, x, t, generator=gen)
    if name in STOCHASTIC:
        sample_seeds(ref, 3)
    assert torch.equal(gen.get_state(), ref.get_state())


@pytest.mark.parametrize("name", NAMES)
def test_contract_leaves_model_and_input_untouched(name: str) -> None:
    model = cnn()
    net = cast(ReluCNN, model.module)
    net.conv1.weight.requires_grad_(False)  # mixed flags must come back exactly
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = hook_counts(net)
    x, t = images()
    x0 = x.clone()
    run(make(name), model, x, t)
    assert hook_counts(net) == before
    assert all(not ids for ids in hook_counts(net).values())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training and not net.act1.inplace
    torch.testing.assert_close(x, x0, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_contract_volumes(name: str) -> None:
    model = cnn(channels=1, dims=3, pool=True)
    x, t = images(b=2, shape=(1, 6, 8, 8))
    out = run(make(name), model, x, t)
    assert out.shape == (2, 1, 6, 8, 8) and torch.isfinite(out).all() and out.abs().sum() > 0


def test_sample_seeds_are_the_same_in_one_call_or_many() -> None:
    gen = make_generator(4)
    whole = sample_seeds(gen, 4)
    gen = make_generator(4)
    parts = sample_seeds(gen, 1) + sample_seeds(gen, 3)
    assert whole == parts and len(set(whole)) == 4 and sample_seeds(gen, 0) == []


# -- input × gradient -----------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_input_x_gradient_on_a_linear_model(baseline: Reference) -> None:
    shape = (3, 6, 6)
    model, net = linear(shape)
    x, t = images(b=3, shape=shape)
    out = run(InputXGradient(baseline=baseline), model, x, t)
    expected = (weights(net, t, shape) * (x - reference_image(x, baseline))).sum(1, keepdim=True)
    if baseline == "zero":
        torch.testing.assert_close(
            out, (weights(net, t, shape) * x).sum(1, keepdim=True), rtol=0, atol=1e-6
        )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_input_x_gradient_equals_captum() -> None:
    from captum.attr import InputXGradient as CaptumIxG

    model = cnn()
    x, t = images()
    with explaining(model) as module:
        ref = CaptumIxG(module).attribute(x.clone().requires_grad_(True), target=t).detach()
    out = run(InputXGradient(reduce="sum"), model, x, t)
    torch.testing.assert_close(out, ref.sum(1, keepdim=True), rtol=0, atol=1e-6)
    signed_max = run(InputXGradient(reduce="max_abs"), model, x, t)
    torch.testing.assert_close(signed_max, ref.abs().amax(1, keepdim=True), rtol=0, atol=1e-6)


# -- DeepLift --------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_deeplift_on_a_linear_model(baseline: Reference) -> None:
    shape = (3, 6, 6)
    model, net = linear(shape)
    x, t = images(b=3, shape=shape)
    out = run(DeepLift(baseline=baseline), model, x, t)
    expected = (weights(net, t, shape) * (x - reference_image(x, baseline))).sum(1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_deeplift_rescale_rule_by_hand() -> None:
    # a = (x − x') ⊙ W1ᵀ (m1 ⊙ W2ᵀ (m2 ⊙ w3_c)), m = Δrelu(z)/Δz between x and x' (rescale rule).
    model = wrap(MLP(), (1, 2, 2))
    net = cast(MLP, model.module)
    x = torch.tensor([[0.9, 0.1, 0.6, 0.3], [0.2, 0.8, 0.5, 0.7]]).view(2, 1, 2, 2)
    t = torch.tensor([0, 1])
    out = run(DeepLift(baseline="zero"), model, x, t)
    with torch.no_grad():
        xf, rf = x.flatten(1), torch.zeros(2, 4)
        z1, z1r = net.l1(xf), net.l1(rf)
        m1 = (F.relu(z1) - F.relu(z1r)) / (z1 - z1r)
        z2, z2r = net.l2(F.relu(z1)), net.l2(F.relu(z1r))
        m2 = (F.relu(z2) - F.relu(z2r)) / (z2 - z2r)
        g2 = m2 * net.l3.weight[t]  # [2, 3]
        g1 = m1 * (g2 @ net.l2.weight)
        expected = ((xf - rf) * (g1 @ net.l1.weight)).view(2, 1, 2, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # not vacuous: the rescale rule differs from gradient × input on this net
    assert not torch.allclose(out, run(InputXGradient(), model, x, t), atol=1e-3)
    gap = (net(x) - net(torch.zeros_like(x))).gather(1, t[:, None]).squeeze(1).detach()
    torch.testing.assert_close(out.sum((1, 2, 3)), gap, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_deeplift_completeness_on_relu_cnns(pool: bool, baseline: Reference) -> None:
    model = cnn(pool=pool)
    x, t = images(b=4)
    out = run(DeepLift(baseline=baseline), model, x, t)
    with torch.no_grad():
        diff = model(x) - model(reference_image(x, baseline))
    gap = diff.gather(1, t[:, None]).squeeze(1)
    assert gap.abs().min() > 1e-2  # the check is not vacuous
    torch.testing.assert_close(out.sum((1, 2, 3)), gap, rtol=0, atol=1e-4)


class ConvReluPool(nn.Module):
    """conv -> ReLU -> MaxPool2d(3, 2, 1) (adjacent hooked modules, overlapping windows) -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(3, 2, 1), nn.Linear(2 * 3 * 3, 2)
        _init(self, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def test_deeplift_max_pool_rule_by_hand_with_overlapping_windows() -> None:
    # The rule, with a loop over windows: per window, the input's argmax gets g·(top − out') and
    # the reference's argmax g·(out − top), top = max(out, out'); multiplier = sum / Δa. Captum
    # 0.9 gets this net wrong twice: the ReLU reads the gradient before the pool rewrites it
    # (captum#1104), and max_unpool drops overlapping windows' shares.
    net = ConvReluPool().eval()
    model = wrap(net, (1, 6, 6))
    x, t = images(b=2, shape=(1, 6, 6), seed=7)
    xr = reference_image(x, "mean")
    out = run(DeepLift(baseline="mean"), model, x, t)
    with torch.no_grad():
        z, zr = net.conv(x), net.conv(xr)
        a, ar = F.relu(z), F.relu(zr)
        m_relu = (a - ar) / (z - zr)
        pa = F.pad(a, (1, 1, 1, 1), value=-float("inf"))
        par = F.pad(ar, (1, 1, 1, 1), value=-float("inf"))
        g = net.fc.weight[t].view(2, 2, 3, 3)
        contrib = torch.zeros(2, 2, 8, 8)
        for b in range(2):
            for c in range(2):
                for i in range(3):
                    for j in range(3):
                        win = (b, c, slice(2 * i, 2 * i + 3), slice(2 * j, 2 * j + 3))
                        wa, war = pa[win].flatten(), par[win].flatten()
                        o, o_ref = wa.max(), war.max()
                        top = torch.maximum(o, o_ref)
                        ka, kr = int(wa.argmax()), int(war.argmax())
                        contrib[b, c, 2 * i + ka // 3, 2 * j + ka % 3] += g[b, c, i, j] * (
                            top - o_ref
                        )
                        contrib[b, c, 2 * i + kr // 3, 2 * j + kr % 3] += g[b, c, i, j] * (o - top)
        contrib = contrib[:, :, 1:-1, 1:-1]
        delta_a = a - ar
        m_a = torch.where(delta_a == 0, 0.0, contrib / torch.where(delta_a == 0, 1.0, delta_a))
        m_z = torch.nan_to_num(m_a * m_relu)
    xv = x.clone().requires_grad_(True)
    (m_x,) = torch.autograd.grad((net.conv(xv) * m_z).sum(), xv)
    torch.testing.assert_close(out, (x - xr) * m_x, rtol=1e-4, atol=1e-6)
    gap = (net(x) - net(xr)).gather(1, t[:, None]).squeeze(1).detach()
    torch.testing.assert_close(out.sum((1, 2, 3)), gap, rtol=0, atol=1e-5)


def test_deeplift_accepts_inplace_relus() -> None:
    x, t = images()
    for name in ["deeplift", "guided_backprop", "deconvnet"]:
        plain = run(make(name), cnn(), x, t)
        inplace = run(make(name), cnn(inplace=True), x, t)
        torch.testing.assert_close(inplace, plain, rtol=0, atol=1e-6)


# -- model audits ------------------------------------------------------------------------------
class PoolFunctional(ReluCNN):
    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(self.act1(self.conv1(x)), 2)
        return self.fc(self.act2(self.conv2(h)).flatten(2).mean(dim=2))


class GeluNet(ReluCNN):
    def __init__(self) -> None:
        super().__init__()
        self.act1 = nn.GELU()  # type: ignore[assignment]


class SoftmaxHead(ReluCNN):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(8, 2), nn.Softmax(dim=1))  # type: ignore[assignment]


class ReusedRelu(ReluCNN):
    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.conv2(self.act1(self.conv1(x))))
        return self.fc(h.flatten(2).mean(dim=2))


@pytest.mark.parametrize(
    ("net", "names", "match"),
    [
        (
            FunctionalReluCNN(),
            ["guided_backprop", "deconvnet"],
            r"the model applies ReLU as a function 1× per forward .*use nn\.ReLU modules",
        ),
        (
            LinearNet((3, 8, 8)),
            ["guided_backprop", "deconvnet"],
            r"the model's forward calls no nn\.ReLU module, so .* the plain gradient",
        ),
        (
            FunctionalReluCNN(),
            ["deeplift", "deeplift_shap"],
            r"the model applies relu \(1×\) outside the modules Captum's DeepLift has rules for",
        ),
        (
            PoolFunctional(),
            ["deeplift", "deeplift_shap"],
            r"the model applies max_pool2d \(1×\) outside",
        ),
        (GeluNet(), ["deeplift"], r"the model applies gelu \(1×\) outside"),
        (
            SoftmaxHead(),
            ["deeplift"],
            r"the model applies softmax \(1×\) outside",
        ),
        (
            ReusedRelu(),
            ["deeplift", "deeplift_shap"],
            r"the model calls the nonlinearity module\(s\) 'act1' \(2×\) more than once",
        ),
    ],
)
def test_models_the_rule_cannot_handle_are_refused(
    net: nn.Module, names: list[str], match: str
) -> None:
    model = wrap(net, (3, 8, 8))
    x, t = images()
    before = hook_counts(net)
    for name in names:
        with pytest.raises(UserError, match=f"^{name}: {match}"):
            run(make(name), model, x, t)
        with pytest.raises(UserError, match=match):  # the verdict is cached per model: same answer
            run(make(name), model, x, t)
    assert hook_counts(net) == before


def test_deeplift_accepts_models_without_nonlinearities_and_reused_linear_layers() -> None:
    model, _ = linear((3, 8, 8))
    x, t = images()
    assert torch.isfinite(run(DeepLift(), model, x, t)).all()


# -- guided backprop / deconvnet ---------------------------------------------------------------
class _HandRelu(torch.autograd.Function):
    """ReLU with guided backprop's backward (``relu(g)·1[z>0]``) or deconvnet's (``relu(g)``)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, guided: bool) -> Tensor:
        ctx.save_for_backward(z)
        ctx.guided = guided
        return z.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        out = g.clamp(min=0)
        return (out * (z > 0) if ctx.guided else out), None


def hand_modified_gradient(
    net: MLP, x: Tensor, t: Tensor, guided: bool
) -> tuple[Tensor, list[Tensor]]:
    """Input gradient and the signals sent into each ReLU (w.r.t. its input z)."""
    inp = x.clone().requires_grad_(True)
    into: list[Tensor] = []
    z1 = net.l1(inp.flatten(1))
    z1.register_hook(into.append)
    z2 = net.l2(_HandRelu.apply(z1, guided))
    z2.register_hook(into.append)
    logits = net.l3(_HandRelu.apply(z2, guided))
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), inp)
    return grad, into


@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet"])
def test_modified_relu_gradient_equals_a_hand_custom_backward(rule: str) -> None:
    net = MLP()
    model = wrap(net, (1, 2, 2))
    x, t = images(b=6, shape=(1, 2, 2), seed=3)
    expected, into = hand_modified_gradient(net, x, t, guided=rule == "guided_backprop")
    out = modified_relu_gradient(model, x, t, rule=rule)  # type: ignore[arg-type]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    cls = GuidedBackprop if rule == "guided_backprop" else Deconvnet
    signed = run(cls(abs=False, reduce="sum"), model, x, t)
    torch.testing.assert_close(signed, expected, rtol=0, atol=1e-6)
    # The guarantee: the signal into every ReLU is >= 0 (and not all zero) ...
    assert all((g >= 0).all() and g.abs().sum() > 0 for g in into)
    # ... but not at the input: the first linear layer mixes signs.
    assert (out < 0).any()
    other = "deconvnet" if rule == "guided_backprop" else "guided_backprop"
    assert not torch.allclose(out, modified_relu_gradient(model, x, t, rule=other), atol=1e-4)  # type: ignore[arg-type]


class ReluAndSkip(nn.Module):
    """h = l1(x); logits = l2(relu(h) − 0.7 h): the ReLU's input also feeds another branch."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)
        _init(self, 6, scale=1.0)

    def forward(self, x: Tensor, guided: bool | None = None) -> Tensor:
        h = self.l1(x.flatten(1))
        r = self.act(h) if guided is None else _HandRelu.apply(h, guided)
        return self.l2(r - 0.7 * h)


@pytest.mark.parametrize("rule", ["guided_backprop", "deconvnet"])
def test_modified_relu_gradient_leaves_other_branches_alone(rule: str) -> None:
    # Captum 0.9 rectifies the whole gradient of the ReLU's input tensor (off by ~0.15 here).
    net = ReluAndSkip().eval()
    x, t = images(b=6, shape=(1, 2, 2), seed=3)
    inp = x.clone().requires_grad_(True)
    logits = net(inp, guided=rule == "guided_backprop")
    (expected,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), inp)
    out = modified_relu_gradient(wrap(net, (1, 2, 2)), x, t, rule=rule)  # type: ignore[arg-type]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


class ReluFirst(nn.Module):
    """(x − 0.4)/0.25 -> ReLU -> conv -> ReLU -> GAP -> linear: a positive scaling into a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.act0, self.conv, self.act1 = nn.ReLU(), nn.Conv2d(1, 6, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(6, 2)
        _init(self, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.conv(self.act0((x - 0.4) / 0.25)))
        return self.fc(h.mean(dim=(2, 3)))


def test_guided_backprop_is_non_negative_at_the_input_only_after_a_positive_scaling() -> None:
    x, t = images(b=4, shape=(1, 8, 8))
    first = modified_relu_gradient(wrap(ReluFirst(), (1, 8, 8)), x, t, rule="guided_backprop")
    assert (first >= 0).all() and (first > 0).any()
    # zero where the input is below the first ReLU's threshold (x < 0.4): the forward mask
    assert (first[x < 0.4] == 0).all()
    conv_first = modified_relu_gradient(cnn(channels=1), x, t, rule="guided_backprop")
    assert (conv_first < 0).any() and (conv_first > 0).any()
    out = run(GuidedBackprop(), wrap(ReluFirst(), (1, 8, 8)), x, t)  # default: |GB|, max over c
    torch.testing.assert_close(out, first.abs(), rtol=0, atol=0)


# -- GradientShap / DeepLiftShap -------------------------------------------------------------------
def draws_of(
    method: GradientShap | DeepLiftShap, x: Tensor, seed: int, alpha: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The (input, baseline, α) rows a method draws for ``x`` under ``make_generator(seed)``."""
    b, n = x.shape[0], method.n_baselines
    seeds = sample_seeds(make_generator(seed), b)
    ref = None if method.baseline == "batch" else reference_image(x, method.baseline)
    return shap_draws(
        x,
        ref,
        seeds,
        torch.arange(b).repeat_interleave(n),
        torch.arange(n).repeat(b),
        key=method.key,
        baseline_noise=method.baseline_noise,
        local_smoothing=getattr(method, "local_smoothing", 0.0),
        with_alpha=alpha,
        generator_device=torch.device("cpu"),
    )


@pytest.mark.parametrize("baseline", ["zero", "blur", "batch"])
def test_gradient_shap_on_a_linear_model(baseline: str) -> None:
    # Exactly w ⊙ (x + mean ε − mean x') with the drawn rows, whatever α.
    shape = (3, 6, 6)
    model, net = linear(shape)
    x, t = images(b=3, shape=shape)
    noise = 0.0 if baseline == "batch" else 0.2  # batch: check the baselines are samples
    method = GradientShap(
        n_baselines=7, baseline=baseline, baseline_noise=noise, local_smoothing=0.05
    )  # type: ignore[arg-type]
    out = run(method, model, x, t, seed=2)
    inputs, bases, _ = draws_of(method, x, 2, alpha=True)
    delta = (inputs - bases).view(3, 7, *shape).mean(1)
    torch.testing.assert_close(
        out, (weights(net, t, shape) * delta).sum(1, keepdim=True), rtol=0, atol=1e-5
    )
    if baseline == "batch":  # the baselines are other samples, never the sample itself
        others = bases.view(3, 7, *shape)
        for i in range(3):
            dist = (others[i, :, None] - x[None]).flatten(2).abs().amax(2)  # [7, 3]
            assert (dist.min(1).values < 1e-6).all() and (dist[:, i] > 0.1).all()


def test_gradient_shap_expectation_on_a_linear_model() -> None:
    # E[a] = w ⊙ (x − E[x']) = w ⊙ (x − ref); the mean of 400 draws of N(0, 0.1²) has std 0.005.
    shape = (1, 6, 6)
    model, net = linear(shape)
    x, t = images(b=2, shape=shape)
    out = run(GradientShap(n_baselines=400, baseline="mean", baseline_noise=0.1), model, x, t)
    expected = weights(net, t, shape) * (x - reference_image(x, "mean"))
    err = (out - expected).abs() / weights(net, t, shape).abs()
    assert err.max() < 0.025 and err.mean() < 0.006
    exact = run(GradientShap(n_baselines=3, baseline="mean", baseline_noise=0.0), model, x, t)
    torch.testing.assert_close(exact, expected, rtol=0, atol=1e-6)


def test_gradient_shap_equals_captum_given_the_same_alphas(monkeypatch: pytest.MonkeyPatch) -> None:
    from captum.attr import GradientShap as CaptumGradientShap

    model = cnn()
    x, t = images(b=3)
    method = GradientShap(n_baselines=6, baseline="zero", baseline_noise=0.0, reduce="sum")
    out = run(method, model, x, t, seed=8)
    _, _, alpha = draws_of(method, x, 8, alpha=True)
    # Captum draws α with np.random.uniform(0, 1, rows) over the sample-major expanded rows.
    monkeypatch.setattr(
        np.random, "uniform", lambda lo, hi, size: cast(Tensor, alpha).numpy().astype(np.float64)
    )
    with explaining(model) as module, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CaptumGradientShap(module).attribute(
            x.clone().requires_grad_(True),
            baselines=torch.zeros(1, 3, 8, 8),
            n_samples=6,
            stdevs=0.0,
            target=t,
        )
    torch.testing.assert_close(out, ref.detach().sum(1, keepdim=True), rtol=1e-4, atol=1e-6)


def test_gradient_shap_approaches_integrated_gradients() -> None:
    # One baseline, α ~ U[0, 1): a Monte-Carlo estimate of IG's integral.
    model = cnn()
    x, t = images(b=2)
    ig = run(IntegratedGradients(steps=64), model, x, t)
    mc = run(GradientShap(n_baselines=800, baseline_noise=0.0), model, x, t)
    rel = (mc - ig).norm() / ig.norm()
    assert rel < 0.05


def test_shap_batch_baseline_needs_two_samples() -> None:
    x, t = images(b=1)
    with pytest.raises(
        UserError,
        match=r"^gradient_shap\.baseline: 'batch' .* needs at least 2 samples, got a batch of 1",
    ):
        run(GradientShap(baseline="batch"), cnn(), x, t)


def test_deeplift_shap_without_noise_is_deeplift() -> None:
    model = cnn(pool=True)
    x, t = images()
    for baseline in ("zero", "blur"):
        shap = run(DeepLiftShap(n_baselines=3, baseline=baseline, baseline_noise=0.0), model, x, t)  # type: ignore[arg-type]
        torch.testing.assert_close(
            shap, run(DeepLift(baseline=baseline), model, x, t), rtol=0, atol=1e-6
        )  # type: ignore[arg-type]


@pytest.mark.parametrize("pool", [False, True])
def test_deeplift_shap_completeness_and_captum(pool: bool) -> None:
    from captum.attr import DeepLiftShap as CaptumDeepLiftShap

    model = cnn(pool=pool)
    x, t = images(b=3)
    method = DeepLiftShap(n_baselines=5, baseline="mean", baseline_noise=0.2, reduce="sum")
    out = run(method, model, x, t, seed=4)
    _, bases, _ = draws_of(method, x, 4, alpha=False)
    with torch.no_grad():
        f_base = model(bases).gather(1, t.repeat_interleave(5)[:, None]).view(3, 5).mean(1)
        gap = model(x).gather(1, t[:, None]).squeeze(1) - f_base
    torch.testing.assert_close(out.sum((1, 2, 3)), gap, rtol=0, atol=1e-4)
    if pool:
        return  # Captum 0.9 is wrong when a ReLU feeds a max pool (captum#1104): see below
    with explaining(model) as module, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):  # Captum shares one baseline set across a batch: compare per sample
            ref = CaptumDeepLiftShap(module).attribute(
                x[i : i + 1].clone().requires_grad_(True),
                baselines=bases[5 * i : 5 * i + 5],
                target=t[i : i + 1],
            )
            torch.testing.assert_close(
                out[i : i + 1], ref.detach().sum(1, keepdim=True), rtol=0, atol=1e-6
            )


def test_deeplift_shap_on_a_linear_model() -> None:
    shape = (3, 6, 6)
    model, net = linear(shape)
    x, t = images(b=2, shape=shape)
    method = DeepLiftShap(n_baselines=4, baseline="batch", baseline_noise=0.1)
    out = run(method, model, x, t)
    _, bases, _ = draws_of(method, x, 0, alpha=False)
    expected = weights(net, t, shape) * (x - bases.view(2, 4, *shape).mean(1))
    torch.testing.assert_close(out, expected.sum(1, keepdim=True), rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 4, 7])
def test_shap_memory_bound_does_not_change_the_maps(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = cnn()
    net = cast(ReluCNN, model.module)
    x, t = images(b=3)
    free = {n: run(make(n, n_baselines=5), model, x, t) for n in ("gradient_shap", "deeplift_shap")}
    monkeypatch.setattr(base, "rows_per_pass", lambda _x: rows)
    monkeypatch.setattr(gradient, "rows_per_pass", lambda _x: rows)
    seen: list[int] = []
    handle = net.conv1.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    try:
        for name, expected in free.items():
            seen.clear()
            bounded = run(make(name, n_baselines=5), model, x, t)
            torch.testing.assert_close(bounded, expected, rtol=0, atol=1e-5)
            factor = 2 if name == "deeplift_shap" else 1  # DeepLift runs x and x' together
            assert max(seen) <= factor * max(1, rows // factor) and sum(seen) == factor * 15
    finally:
        handle.remove()


# -- noise tunnels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("base_name", ["saliency", "integrated_gradients", "deeplift"])
def test_smoothgrad_with_zero_sigma_is_its_base(base_name: str) -> None:
    # The copies run as one batch of 3·B rows, whose float32 kernels round differently from the
    # B rows' on each CPU, so the network computes in float64: each copy's map is within
    # 2·map_bound of the base's, and their float32 mean adds γ_3 of the mean of |·|.
    model = in_float64(cnn())
    x, t = images()
    base_method = make(base_name)
    expected = run(base_method, model, x, t)
    copies = 2 * map_bound(expected)
    out = run(SmoothGrad(base=base_name, n=3, sigma=0.0), model, x, t)
    assert_within(out, expected, copies + gamma(3) * (expected.abs() + copies))
    small = run(SmoothGrad(base=base_name, n=3, sigma=1e-7), model, x, t)
    torch.testing.assert_close(small, expected, rtol=0, atol=1e-4)  # ~σ·|∂M/∂x|: not rounding
    sq = run(SmoothGradSq(base=base_name, n=3, sigma=0.0), model, x, t)
    # a square doubles the relative error and adds one rounding
    sq_bound = 2 * expected.abs() * copies + copies**2 + gamma(4) * (expected + copies).square()
    assert_within(sq, expected.square(), sq_bound)
    assert run(VarGrad(base=base_name, n=3, sigma=0.0), model, x, t).abs().max() < 1e-6


def test_vargrad_of_a_linear_models_saliency_is_zero() -> None:
    model, net = linear((3, 6, 6))
    x, t = images(b=3, shape=(3, 6, 6))
    # identical maps: the variance is 0 up to the rounding of their mean
    assert run(VarGrad(n=10, sigma=0.5), model, x, t).abs().max() < 1e-12
    smooth = run(SmoothGrad(n=10, sigma=0.5), model, x, t)
    expected = weights(net, t, (3, 6, 6)).abs().amax(1, keepdim=True)
    assert_within(smooth, expected, gamma(10) * expected.abs())  # a mean of 10 equal maps


def test_noise_scale_is_a_fraction_of_each_images_range() -> None:
    x = torch.zeros(3, 2, 4, 4)
    x[0, 0, 0, 0], x[0, 1, 3, 3] = 0.2, 0.7  # range 0.7
    x[1] += 0.5  # constant: range 0 -> no noise
    x[2, 1] = torch.linspace(0.1, 0.9, 16).view(4, 4)  # range 0.9 (the zeros of channel 0)
    torch.testing.assert_close(noise_scale(x, 0.2).flatten(), torch.tensor([0.14, 0.0, 0.18]))
    assert noise_scale(x, 0.2).shape == (3, 1, 1, 1)
    model = cnn(channels=2)
    t = torch.zeros(3, dtype=torch.long)
    out = run(SmoothGrad(n=4, sigma=0.3), model, x, t)
    torch.testing.assert_close(out[1], run(Saliency(), model, x, t)[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnels_equal_captum_given_captums_noise(
    nt_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Captum adds torch.normal(0, σ) noise from the global RNG to x.repeat_interleave(n); with
    # images of range exactly 1, σ = sigma, and we replay that noise as our ε.
    from captum.attr import NoiseTunnel
    from captum.attr import Saliency as CaptumSaliency

    model = cnn(channels=1)
    x, t = images(b=3, shape=(1, 8, 8))
    x[:, 0, 0, 0], x[:, 0, 7, 7] = 0.0, 1.0
    n, sigma = 6, 0.2
    torch.manual_seed(1234)
    with explaining(model) as module:
        ref = NoiseTunnel(CaptumSaliency(module)).attribute(
            x.clone().requires_grad_(True),
            nt_type=nt_type,
            nt_samples=n,
            stdevs=sigma,
            target=t,
            abs=True,
        )
    torch.manual_seed(1234)
    eps = torch.normal(0, torch.tensor(sigma).repeat(3 * n, 1, 8, 8)) / sigma
    monkeypatch.setattr(
        noise, "standard_noise", lambda seeds, sample, draw, shape, device: eps[sample * n + draw]
    )
    cls = {"smoothgrad": SmoothGrad, "smoothgrad_sq": SmoothGradSq, "vargrad": VarGrad}[nt_type]
    out = run(
        cls(base="saliency", base_params={"abs": True, "reduce": "sum"}, n=n, sigma=sigma),
        model,
        x,
        t,
    )
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rows", [2, 5, 40])
def test_noise_memory_bound_does_not_change_the_maps(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rows=2 < n: one sample's copies in blocks (Chan's merge); 5: one sample per pass; 40: all.
    # The network runs in float64 (other batch shapes round otherwise on each CPU), so the 5
    # copies' maps agree across passes and only their float32 statistics are reordered: a mean
    # within γ_6·mean|m| <= γ_6·√(mean m²) of its exact value, a mean of squares within
    # γ_7·mean m², a variance (two-pass or merged) within γ_{3n+4}·mean m²; twice each between
    # two computations, plus the maps' own float64 reordering.
    model = in_float64(cnn())
    net = cast(ReluCNN, model.module.net)  # type: ignore[union-attr]
    x, t = images(b=3)
    methods = [cls(n=5, sigma=0.3) for cls in (SmoothGrad, SmoothGradSq, VarGrad)]
    free = [run(m, model, x, t) for m in methods]
    squares = free[1].double()
    d = 2 * map_bound(free[1].sqrt())  # a copy's map moves by d, its square by 2|m|·d + d²
    moved = 2 * squares.sqrt() * d + d**2
    bounds = [2 * gamma(6) * squares.sqrt() + d, 2 * gamma(7) * squares + moved]
    bounds.append(2 * gamma(3 * 5 + 4) * squares + 2 * moved)
    monkeypatch.setattr(base, "rows_per_pass", lambda _x: rows)
    seen: list[int] = []
    handle = net.conv1.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])))
    try:
        for m, expected, bound in zip(methods, free, bounds, strict=True):
            seen.clear()
            assert_within(run(m, model, x, t), expected, bound)
            assert max(seen) <= rows and sum(seen) == 15
    finally:
        handle.remove()


def test_over_draws_statistics_match_a_direct_computation() -> None:
    vals = torch.randn(3, 7, 2, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(3, 1, 1, 1)

    def rows_fn(sample: Tensor, draw: Tensor, t: Tensor) -> Tensor:
        return vals[sample, draw]

    t = torch.zeros(3, dtype=torch.long)
    for rows in (1, 3, 7, 100):
        torch.testing.assert_close(
            over_draws(rows_fn, x, t, 7, stat="mean", rows=rows), vals.mean(1)
        )
        torch.testing.assert_close(
            over_draws(rows_fn, x, t, 7, stat="mean_sq", rows=rows), vals.square().mean(1)
        )
        torch.testing.assert_close(
            over_draws(rows_fn, x, t, 7, stat="var", rows=rows), vals.var(1, unbiased=False)
        )
    with pytest.raises(ValueError, match="stat must be one of"):
        over_draws(rows_fn, x, t, 7, stat="median")  # type: ignore[arg-type]


def test_smoothgrad_abs_and_stochastic_base() -> None:
    model = cnn()
    x, t = images()
    signed = run(SmoothGrad(base_params={"abs": False, "reduce": "sum"}, n=4), model, x, t)
    assert (signed < 0).any()
    torch.testing.assert_close(
        run(SmoothGrad(base_params={"abs": False, "reduce": "sum"}, n=4, abs=True), model, x, t),
        signed.abs(),
    )
    # A stochastic base: deterministic under the seed; the base's draws come from per-pass
    # generators, so the outer generator still advances by one draw per sample.
    sg = SmoothGrad(base="gradient_shap", base_params={"n_baselines": 2}, n=3)
    a, gen = run(sg, model, x, t, seed=1), make_generator(1)
    torch.testing.assert_close(sg.attribute(model, x, t, generator=gen), a, rtol=0, atol=0)
    ref = make_generator(1)
    sample_seeds(ref, 4)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_noise_wrapper_parameters() -> None:
    resolved, problems = validate_params(SmoothGrad, {}, "m")
    assert problems == [] and resolved == {
        "base": "saliency",
        "base_params": None,
        "n": 25,
        "sigma": 0.15,
        "abs": False,
    }
    _, problems = validate_params(VarGrad, {"n": 0, "sigma": -1}, "methods[3].vargrad")
    assert problems == [
        "methods[3].vargrad.n: expected an integer > 0, got 0",
        "methods[3].vargrad.sigma: expected a number >= 0.0, got -1",
    ]
    assert SmoothGrad(base="integrated_gradients", base_params={"steps": 4}).base_method.steps == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("cls", "params", "match"),
    [
        (
            SmoothGrad,
            {"base": "salency"},
            r"^smoothgrad\.base: unknown method 'salency'; did you mean 'saliency'",
        ),
        (
            VarGrad,
            {"base": "smoothgrad"},
            r"^vargrad\.base: 'smoothgrad' is itself a noise wrapper; .* name the inner method",
        ),
        (
            SmoothGradSq,
            {"base": "benchbox.methods.base:reduce_channels"},
            r"^smoothgrad_sq\.base: .* is a function, not a method; name a subclass of benchbox",
        ),
        (
            SmoothGrad,
            {"base": "integrated_gradients", "base_params": {"steps": 0}},
            r"^smoothgrad\.base_params\.steps: expected an integer > 0, got 0$",
        ),
        (
            SmoothGrad,
            {"base": "integrated_gradients", "base_params": {"steps": 1, "method": "riemann_left"}},
            r"^smoothgrad\.base_params: integrated_gradients\.steps: the riemann_left rule needs",
        ),
        (
            SmoothGrad,
            {"base_params": {"abss": True}},
            r"^smoothgrad\.base_params\.abss: unknown parameter; did you mean 'abs'\?",
        ),
    ],
)
def test_noise_wrapper_base_errors(cls: type, params: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        cls(**params)
