"""LRP: hand-computed rules on a two-layer net, conservation, canonization, model left intact.

Known answers: each rule on ``x -> (x − 0.5) -> conv -> ReLU -> linear`` worked out by hand
(Montavon et al. 2019's formulas); conservation ``Σ R = y_c`` on bias-free nets for ε → 0, also
through a residual block and a reused pooling module (where Captum's ``LRP`` does not conserve);
on a ReLU net with BatchNorm, LRP-ε (ε → 0) equals ``(x − mean) ⊙ ∂y_c/∂x``; on plain nets
without normalization it equals Captum's ``LRP`` with its default ε-rules.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from benchbox.core import ExplainedModel, InputSpec
from benchbox.errors import UserError
from benchbox.methods import lrp
from benchbox.methods.base import hook_counts
from benchbox.methods.lrp import LRPAlphaBeta, LRPEpsilon, LRPGamma, canonical_copy
from benchbox.params import validate_params
from benchbox.seeding import make_generator
from tests.tolerance import assert_within, in_float64, map_bound

GEN = make_generator(0)


# -- nets ------------------------------------------------------------------------------------------
class TwoLayer(nn.Module):
    """``y = fc(relu(conv(x − 0.5)))`` on a 1x2 image, the conv's 1x2 kernel covering both pixels.

    The hand-computed example: pixel ``i`` is the conv's input ``i``, output ``j`` its channel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.5))
        self.conv = nn.Conv2d(1, 2, kernel_size=(1, 2))
        self.act = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -0.5], [0.5, 1.5]]).view(2, 1, 1, 2))
            self.conv.bias.copy_(torch.tensor([0.1, 0.3]))
            self.fc.weight.copy_(torch.tensor([[2.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flat(self.act(self.conv(x - self.mean))))


def two_layer() -> tuple[ExplainedModel, Tensor, Tensor]:
    net = TwoLayer().eval()
    model = ExplainedModel(net, InputSpec(1, (1, 2), (0.5,), (1.0,)), num_classes=1)
    x = torch.tensor([0.9, 0.2]).view(1, 1, 1, 2)  # normalized: n = (0.4, −0.3)
    return model, x, torch.tensor([0])


class Conv(nn.Module):
    """normalize -> conv (-BN) -> ReLU -> maxpool -> conv (-BN) -> ReLU -> GAP -> linear.

    Without BatchNorm it has only layer types Captum's own ``LRP`` has default rules for.
    """

    def __init__(
        self,
        *,
        dims: int = 2,
        bias: bool = True,
        batchnorm: bool = False,
        mean: float = 0.3,
        std: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        gap = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool3d
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.c1 = conv(2, 4, 3, padding=1, bias=bias)
        self.n1: nn.Module | None = bn(4) if batchnorm else None
        self.r1 = nn.ReLU()
        self.p = pool(2)
        self.c2 = conv(4, 6, 3, padding=1, bias=bias)
        self.n2: nn.Module | None = bn(6) if batchnorm else None
        self.r2 = nn.ReLU()
        self.gap = gap(1)
        self.fc = nn.Linear(6, 3, bias=bias)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in [*self.named_parameters(), *self.named_buffers()]:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif name.endswith(("running_mean", "weight", "bias")):
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1((x - self.mean) / self.std)
        h = self.p(self.r1(h if self.n1 is None else self.n1(h)))
        h = self.c2(h)
        return self.fc(self.gap(self.r2(h if self.n2 is None else self.n2(h))).flatten(1))


def conv_model(**kwargs: Any) -> ExplainedModel:
    net = Conv(**kwargs).eval()
    dims = kwargs.get("dims", 2)
    size = (8,) * dims
    spec = InputSpec(2, size, (float(net.mean),) * 2, (float(net.std),) * 2)
    return ExplainedModel(net, spec, num_classes=3)


def conv_batch(dims: int = 2, b: int = 4) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(b, 2, *(8,) * dims, generator=gen), torch.arange(b) % 3


def score(model: ExplainedModel, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).gather(1, t[:, None]).squeeze(1)


# -- hand-computed rules ---------------------------------------------------------------------------
# n = (0.4, −0.3); z1 = W1 n + b1 = (0.65, 0.05) = a1; y = 2·0.65 − 0.05 + 0.2 = 1.45.
# Dense top layer, ε → 0: R1_j = a1_j w2_j · y / y = (1.3, −0.05) (the bias keeps 0.2).
@pytest.mark.parametrize(
    ("method", "expected"),
    [
        # ε: R_i = Σ_j n_i W_ji / z_j · R1_j: j=0: (0.4, 0.15)·1.3/0.65; j=1: (0.2, −0.45)·(−1).
        (LRPEpsilon(epsilon=1e-9), (0.6, 0.75)),
        # γ=0.25: W' = W + γW⁺, b' = b + γb⁺: z' = (0.775, 0.0625);
        # R = (0.5·1.3/0.775 + 0.25·(−0.8), 0.15·1.3/0.775 + 0.5625·0.8).
        (LRPGamma(gamma=0.25, epsilon=1e-9), (0.5 * 1.3 / 0.775 - 0.2, 0.15 * 1.3 / 0.775 + 0.45)),
        # α=2, β=1: j=0: contributions (0.4, 0.15), b 0.1: z⁺ = 0.65, no negative part:
        # 2·(0.4, 0.15)/0.65·1.3 = (1.6, 0.6); j=1: (0.2, −0.45), b 0.3: z⁺ = 0.5, z⁻ = −0.45:
        # 2·(0.2, 0)/0.5·(−0.05) − (0, −0.45)/(−0.45)·(−0.05) = (−0.04, 0.05).
        (LRPAlphaBeta(alpha=2.0, epsilon=1e-9), (1.56, 0.65)),
        # α=1 (z⁺): j=0: (0.4, 0.15)/0.65·1.3 = (0.8, 0.3); j=1: (0.2, 0)/0.5·(−0.05) = (−0.02, 0).
        (LRPAlphaBeta(alpha=1.0, epsilon=1e-9), (0.78, 0.3)),
        # z^B with l = 0 − 0.5, h = 1 − 0.5: j=0: (0.4+0.5, 0.15+0.25) = (0.9, 0.4), z = 1.3,
        # R1 = 1.3; j=1: (0.2+0.25, −0.45+0.75) = (0.45, 0.3), z = 0.75, R1 = −0.05.
        (LRPEpsilon(epsilon=1e-9, first_layer="zb"), (0.9 - 0.03, 0.4 - 0.02)),
    ],
    ids=["epsilon", "gamma", "alpha2beta1", "alpha1beta0", "zb"],
)
def test_rules_by_hand(method: lrp._LRP, expected: tuple[float, float]) -> None:
    model, x, t = two_layer()
    assert score(model, x, t).item() == pytest.approx(1.45, abs=1e-6)
    out = method.attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out.flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_channel_reduction_is_applied_to_the_channel_relevances() -> None:
    model = conv_model(batchnorm=True)
    x, t = conv_batch()
    maps = {
        how: LRPGamma(reduce=how).attribute(model, x, t, generator=GEN)
        for how in ("sum", "mean", "abs_sum", "max_abs")
    }
    torch.testing.assert_close(maps["mean"], maps["sum"] / 2)
    assert (maps["abs_sum"] >= maps["sum"].abs() - 1e-7).all()
    assert (maps["max_abs"] >= maps["abs_sum"] / 2 - 1e-7).all()
    assert (maps["max_abs"] <= maps["abs_sum"] + 1e-7).all()
    assert (maps["abs_sum"] > maps["sum"].abs() + 1e-6).any()  # channels do disagree in sign


# -- conservation and equivalences -----------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize(
    "method",
    [
        LRPEpsilon(epsilon=1e-9),
        LRPGamma(epsilon=1e-9),
        LRPAlphaBeta(epsilon=1e-9),
        LRPEpsilon(epsilon=1e-9, first_layer="zb"),
        LRPGamma(epsilon=1e-9, first_layer="zb"),
    ],
    ids=["epsilon", "gamma", "alpha_beta", "epsilon_zb", "gamma_zb"],
)
def test_conservation_without_biases(method: lrp._LRP, dims: int) -> None:
    # Bias-free conv net with a normalization inside: Σ_pixels R = y_c (the normalization's
    # offset comes before the first layer, so it does not absorb relevance).
    model = conv_model(dims=dims, bias=False)
    x, t = conv_batch(dims)
    out = method.attribute(model, x, t, generator=GEN)
    y = score(model, x, t)
    assert y.abs().min() > 1e-2
    torch.testing.assert_close(out.flatten(1).sum(1), y, rtol=1e-4, atol=1e-6)


def test_captums_own_output_is_divided_by_the_models_std() -> None:
    # Why the relevance is read at the first layer's input: propagated further through the
    # normalization by the chain rule (as Captum does), it is divided by std.
    from captum.attr import LRP

    model = conv_model(bias=False, std=0.2)
    x, t = conv_batch()
    ours = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    net = copy.deepcopy(model.module)
    theirs = LRP(net).attribute(x.clone().requires_grad_(True), target=t).sum(1, keepdim=True)
    torch.testing.assert_close(ours, theirs.detach() * 0.2, rtol=1e-4, atol=1e-7)


def test_equals_captum_lrp_without_normalization_or_batchnorm() -> None:
    from captum.attr import LRP

    model = conv_model(mean=0.0, std=1.0)
    x, t = conv_batch()
    ours = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    theirs = LRP(copy.deepcopy(model.module)).attribute(x.clone().requires_grad_(True), target=t)
    torch.testing.assert_close(ours, theirs.detach().sum(1, keepdim=True), rtol=1e-4, atol=1e-7)


def test_epsilon_to_zero_is_gradient_times_normalized_input_with_batchnorm() -> None:
    # LRP-0 on a ReLU net (biases, max-pooling, BatchNorm folded) = a ⊙ ∂y/∂a at the first
    # layer's input, a = (x − mean)/std, i.e. (x − mean) ⊙ ∂y/∂x.
    model = conv_model(batchnorm=True)
    x, t = conv_batch()
    inp = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(inp).gather(1, t[:, None]).sum(), inp)
    expected = ((x - 0.3) * grad).sum(1, keepdim=True)
    out = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)


def test_larger_epsilon_absorbs_relevance() -> None:
    model = conv_model(bias=False)
    x, t = conv_batch()
    y = score(model, x, t).abs()
    small = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN).flatten(1).sum(1).abs()
    large = LRPEpsilon(epsilon=1.0).attribute(model, x, t, generator=GEN).flatten(1).sum(1).abs()
    assert (large < 0.9 * small).all() and torch.allclose(small, y, rtol=1e-4)


def test_gamma_zero_is_epsilon_and_rules_differ_otherwise() -> None:
    model = conv_model(batchnorm=True)
    x, t = conv_batch()
    eps = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    gamma0 = LRPGamma(gamma=0.0, epsilon=1e-9).attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(gamma0, eps, rtol=1e-4, atol=1e-7)
    gamma = LRPGamma(gamma=0.25).attribute(model, x, t, generator=GEN)
    ab = LRPAlphaBeta().attribute(model, x, t, generator=GEN)
    zplus = LRPAlphaBeta(alpha=1.0).attribute(model, x, t, generator=GEN)
    for a, b in ((eps, gamma), (eps, ab), (ab, zplus), (gamma, ab)):
        assert not torch.allclose(a, b, atol=1e-4)


# -- canonization and the model --------------------------------------------------------------------
def test_batchnorm_is_folded_into_the_preceding_conv_on_a_cached_copy() -> None:
    model = conv_model(batchnorm=True)
    net = model.module
    x, _ = conv_batch()
    canon = canonical_copy(net, x)
    assert canon.folded == [("c1", "n1"), ("c2", "n2")]
    assert canon.first == "c1" and canon.net is not net
    torch.testing.assert_close(canon.net(x), net(x), rtol=1e-5, atol=1e-6)
    folded_bn = dict(canon.net.named_modules())["n1"]
    assert isinstance(folded_bn, nn.BatchNorm2d) and folded_bn.eps == 0.0
    h = torch.randn(2, 4, 3, 3)
    assert torch.equal(folded_bn(h), h)  # an exact identity
    assert canonical_copy(net, x) is canon  # reused while the model is unchanged
    with torch.no_grad():
        net.c2.weight.mul_(2.0)  # in place: the version counter changes
    rebuilt = canonical_copy(net, x)
    assert rebuilt is not canon
    torch.testing.assert_close(rebuilt.net(x), net(x), rtol=1e-5, atol=1e-6)


def test_a_changed_model_is_explained_as_changed() -> None:
    model = conv_model(batchnorm=True)
    x, t = conv_batch()
    LRPGamma().attribute(model, x, t, generator=GEN)
    with torch.no_grad():
        for p in model.module.parameters():
            p.mul_(-1.5)
    fresh = ExplainedModel(copy.deepcopy(model.module), model.input_spec, 3)
    torch.testing.assert_close(
        LRPGamma().attribute(model, x, t, generator=GEN),
        LRPGamma().attribute(fresh, x, t, generator=GEN),
    )


@pytest.mark.parametrize("method", [LRPEpsilon(), LRPGamma(), LRPAlphaBeta(first_layer="zb")])
def test_model_is_left_exactly_as_it_was(method: lrp._LRP) -> None:
    model = conv_model(batchnorm=True, seed=4)
    net = model.module
    net.c1.rule = "users own"  # type: ignore[assignment]  # an attribute that must survive
    state = {k: v.clone() for k, v in net.state_dict().items()}
    storage = {n: (p.data_ptr(), p.requires_grad) for n, p in net.named_parameters()}
    attrs = {n: sorted(vars(m)) for n, m in net.named_modules()}
    hooks = hook_counts(net)
    x, t = conv_batch()
    method.attribute(model, x, t, generator=GEN)
    assert {n: sorted(vars(m)) for n, m in net.named_modules()} == attrs
    assert net.c1.rule == "users own"
    assert not any("activations" in vars(m) for m in net.modules())
    assert {n: (p.data_ptr(), p.requires_grad) for n, p in net.named_parameters()} == storage
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert hook_counts(net) == hooks
    # ... and the cached copy carries no hook over to the next call either.
    canon = canonical_copy(net, x)
    assert all(not ids for ids in hook_counts(canon.net).values())


def test_batch_and_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # In float64 behind a float32 face: float32 kernels round other batch shapes otherwise on
    # each CPU; rounded float64 maps agree to map_bound.
    model = in_float64(conv_model(batchnorm=True))
    x, t = conv_batch(b=5)
    whole = LRPAlphaBeta().attribute(model, x, t, generator=GEN)
    monkeypatch.setattr(lrp, "rows_per_pass", lambda _: 2)
    chunked = LRPAlphaBeta().attribute(model, x, t, generator=GEN)
    assert_within(chunked, whole, map_bound(chunked) + map_bound(whole))
    one = LRPAlphaBeta().attribute(model, x[3:4], t[3:4], generator=GEN)
    assert_within(one, whole[3:4], map_bound(one) + map_bound(whole[3:4]))


def test_works_under_no_grad() -> None:
    model = conv_model()
    x, t = conv_batch()
    with torch.no_grad():
        out = LRPEpsilon().attribute(model, x, t, generator=GEN)
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


# -- branches, reuse, other activations ------------------------------------------------------------
class Residual(nn.Module):
    """Bias-free: normalize -> conv-ReLU -> [conv-ReLU-conv] + skip -> ReLU -> maxpool (reused)
    -> GAP -> linear; the skip tensor feeds two consumers and the pooling module is used twice."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c0 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.r0 = act()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.r1 = act()
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.r2 = act()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.r0(self.c0((x - 0.3) / 0.2))
        h = self.r2(self.c2(self.r1(self.c1(h))) + h)
        return self.fc(self.gap(self.pool(self.pool(h))).flatten(1))


@pytest.mark.parametrize("act", [nn.ReLU, nn.LeakyReLU])
@pytest.mark.parametrize(
    "method",
    [LRPEpsilon(epsilon=1e-9), LRPGamma(epsilon=1e-9), LRPEpsilon(epsilon=1e-9, first_layer="zb")],
    ids=["epsilon", "gamma", "epsilon_zb"],
)
def test_conservation_through_a_residual_block_and_a_reused_module(
    method: lrp._LRP, act: type[nn.Module]
) -> None:
    # Relevance of a tensor that feeds two consumers is the sum over both: the residual addition
    # splits R in proportion to its two summands; LeakyReLU passes relevance unchanged.
    net = Residual(act).eval()
    model = ExplainedModel(net, InputSpec(2, (8, 8), (0.3,) * 2, (0.2,) * 2), num_classes=3)
    x, t = conv_batch()
    out = method.attribute(model, x, t, generator=GEN)
    y = score(model, x, t)
    torch.testing.assert_close(out.flatten(1).sum(1), y, rtol=1e-4, atol=1e-6)


def test_captums_lrp_does_not_conserve_through_a_residual_block() -> None:
    # Why benchbox does not run Captum's LRP: it multiplies a tensor's *summed* gradient by its
    # value at each consumer's input, double counting a tensor that feeds two layers.
    from captum.attr import LRP

    class NoReuse(Residual):
        def __init__(self) -> None:
            super().__init__()
            self.pool2 = nn.MaxPool2d(2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.r0(self.c0(x))
            h = self.r2(self.c2(self.r1(self.c1(h))) + h)
            return self.fc(self.gap(self.pool2(self.pool(h))).flatten(1))

    net = NoReuse().eval()
    x, t = conv_batch()
    theirs = LRP(copy.deepcopy(net)).attribute(x.clone().requires_grad_(True), target=t)
    model = ExplainedModel(net, InputSpec(2, (8, 8), (0.0,) * 2, (1.0,) * 2), num_classes=3)
    ours = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    y = score(model, x, t)
    torch.testing.assert_close(ours.flatten(1).sum(1), y, rtol=1e-4, atol=1e-6)
    assert ((theirs.detach().flatten(1).sum(1) - y).abs() > 0.05 * y.abs()).all()


class Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class Skip(nn.Module):
    """The image reaches the output past the first layer as well."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.fc = nn.Linear(64, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((self.conv(x) + x).flatten(1))


class BatchStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.conv(x)).amax(dim=(2, 3)))


class PoolFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(x).flatten(1))


class OwnWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(64, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((x * self.scale).flatten(1))


@pytest.mark.parametrize(
    ("net", "method", "message"),
    [
        (Sigmoid(), LRPEpsilon(), r"layer 'act' \(Sigmoid\) has no LRP rule"),
        (Skip(), LRPEpsilon(), r"reaches the model's output other than through its first layer"),
        (BatchStats(), LRPGamma(), r"layer 'bn' \(BatchNorm2d\) has track_running_stats=False"),
        (PoolFirst(), LRPEpsilon(first_layer="zb"), r"zb needs a Conv or Linear first layer"),
        (OwnWeight(), LRPEpsilon(), r"module '' \(OwnWeight\) uses its own parameters"),
    ],
    ids=["sigmoid", "skip_past_first_layer", "batch_stats", "zb_on_pooling", "own_weight"],
)
def test_unsupported_models_raise_a_user_error_naming_the_layer(
    net: nn.Module, method: lrp._LRP, message: str
) -> None:
    model = ExplainedModel(net.eval(), InputSpec(1, (8, 8), (0.0,), (1.0,)), 2)
    with pytest.raises(UserError, match=message):
        method.attribute(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), generator=GEN)
    assert hook_counts(net) == {k: frozenset() for k in hook_counts(net)}


def test_a_pooling_first_layer_is_read_at_its_input() -> None:
    # LRP-0 on average pooling then a dense layer: R = x ⊙ ∂y/∂x exactly.
    net = PoolFirst().eval()
    model = ExplainedModel(net, InputSpec(1, (8, 8), (0.0,), (1.0,)), 2)
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    inp = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(inp).gather(1, t[:, None]).sum(), inp)
    out = LRPEpsilon(epsilon=1e-9).attribute(model, x, t, generator=GEN)
    torch.testing.assert_close(out, x * grad, rtol=1e-4, atol=1e-7)


def test_parameters_are_validated_from_the_signature() -> None:
    _, problems = validate_params(LRPAlphaBeta, {"alpha": 0.5}, "methods[0].lrp_alpha_beta")
    assert problems == ["methods[0].lrp_alpha_beta.alpha: expected a number >= 1.0, got 0.5"]
    _, problems = validate_params(LRPAlphaBeta, {"beta": 1.0}, "m")
    assert problems and problems[0].startswith("m.beta: unknown parameter")
    _, problems = validate_params(LRPEpsilon, {"epsilon": 0}, "m")
    assert problems == ["m.epsilon: expected a number > 0.0, got 0"]
    resolved, problems = validate_params(LRPGamma, {}, "m")
    assert problems == []
    assert resolved == {"gamma": 0.25, "epsilon": 1e-6, "first_layer": "same", "reduce": "sum"}
    ab = LRPAlphaBeta(alpha=3.0)
    assert (ab.alpha, ab.beta) == (3.0, 2.0)
