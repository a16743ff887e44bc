"""Metrics: analytic known answers, slow reference loops, and Quantus 0.6 as a peer reference.

Quantus is never the only oracle: every comparison sits beside analytic cases, and the one place
where benchbox deliberately differs (pointing game on an empty mask) is asserted as a difference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Batch, Capability, ExplainedModel, InputSpec, MetricContext
from benchbox.methods.base import Reference, reference_image
from benchbox.methods.controls import Random
from benchbox.metrics.faithfulness import (
    Deletion,
    Insertion,
    Score,
    causal_curves,
    curve_auc,
    perturbation_ranks,
    step_counts,
)
from benchbox.metrics.localization import PointingGame, Ties, dilate_disc, pointing_game
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
    rounding_bound,
)

try:  # the peer reference; only the comparison tests need it
    import quantus

    HAVE_QUANTUS = True
except ImportError:  # pragma: no cover
    HAVE_QUANTUS = False
needs_quantus = pytest.mark.skipif(not HAVE_QUANTUS, reason="quantus is not installed")


# -- tiny deterministic models -------------------------------------------------------------------
class TinyNet(nn.Module):
    """Normalize -> conv -> ReLU -> conv -> ReLU -> global average pool -> linear."""

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int = 1, classes: int = 2, seed: int = 0) -> None:
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

    def steps(self) -> list[Step]:
        """The forward pass as ``tests.tolerance.forward_bound`` steps."""
        return [
            Affine(self.mean, self.std),
            *(self.conv1, self.act1, self.conv2, self.act2),
            Mean((2, 3)),
            self.fc,
        ]

    def forward(self, x: Tensor) -> Tensor:
        x = (x - self.mean) / self.std
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


class LinearNet(nn.Module):
    def __init__(self, shape: tuple[int, ...], classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(math.prod(shape), classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=gen))
            self.fc.bias.zero_()

    def steps(self) -> list[Step]:
        return [nn.Flatten(), self.fc]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.flatten(1))


def bounded64(net: TinyNet | LinearNet, channels: int, size: int) -> tuple[ExplainedModel, Bounded]:
    """``net`` in float64 behind ``Bounded``, wrapped as an ExplainedModel.

    Where two float32 computations of the same forward passes are compared (different batch
    compositions: conv and GEMM kernels pick their blocking by shape, CPU and thread count, so
    the last bits differ between CPUs), the tests run them in float64 instead: the metric's
    float32 outputs are then the float64 values rounded (logits: within ``rounding_bound`` of
    values that differ by at most twice the recorded bound, ~1e-12) or their float32 softmax
    (``prob_bound``, ~10 float32 ulps): far tighter than any float32 tolerance that holds on every
    CPU.
    """
    bounded = Bounded(net.double())
    return wrap(bounded, channels, size), bounded


def curve_tolerance(a: Tensor, b: Tensor, net: Bounded, score: Score) -> Tensor:
    """The bound on ``|a − b|`` for two float32 curves of a float64 ``Bounded`` model: logits
    are their float64 values rounded, which differ by at most two forward-pass bounds;
    probabilities are each within ``prob_bound`` of the exact one."""
    if score == "probability":
        return 2 * net.prob_bound.expand(a.shape)
    return rounding_bound(a) + rounding_bound(b) + 2 * net.logit_bound


def auc_tolerance(curves: Tensor, curve_bound: Tensor) -> Tensor:
    """The bound on the difference of two float32 ``curve_auc`` values of ``[B, T+1]`` curves
    that differ by at most ``curve_bound``: the trapezoid weights sum to 1, and each AUC rounds
    ``T + 3`` times per term (the sum, the two endpoint corrections and the division by T)."""
    t = curves.shape[1] - 1
    mass = curves.double().abs().sum(1) / t
    return curve_bound.max() + 2 * gamma(t + 3) * mass


def wrap(net: nn.Module, channels: int, size: int) -> ExplainedModel:
    spec = InputSpec(channels=channels, size=(size, size), mean=(0.0,), std=(1.0,))
    return ExplainedModel(net.eval(), spec, num_classes=2)


def images(b: int, channels: int, size: int, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, channels, size, size, generator=gen), torch.arange(b) % 2


def context(
    model: ExplainedModel,
    x: Tensor,
    target: Tensor,
    attributions: Tensor,
    mask: Tensor | None = None,
    batch_size: int = 16,
) -> MetricContext:
    ids = tuple(str(i) for i in range(x.shape[0]))
    batch = Batch(x=x, label=target, ids=ids, target=target, mask=mask)
    return MetricContext(model, batch, attributions, Random(), make_generator(0), batch_size)


def pg(
    attr: Tensor, mask: Tensor, ties: Ties = "fraction", tolerance: int = 0
) -> tuple[list[float], list[str | None]]:
    values, reasons = pointing_game(attr, mask, ties=ties, tolerance=tolerance)
    return values.tolist(), reasons


def one_hot_map(size: int, *points: tuple[int, int], value: float = 1.0) -> Tensor:
    a = torch.zeros(1, 1, size, size)
    for r, c in points:
        a[0, 0, r, c] = value
    return a


# ================================================================================================
# Pointing game
# ================================================================================================
def test_pointing_game_registered() -> None:
    assert registry.metrics.get("pointing_game") is PointingGame
    assert PointingGame.higher_is_better is True
    assert PointingGame.needs == frozenset({Capability.MASKS})
    _, problems = validate_params(PointingGame, {"tolerance": -1}, "metrics[0].pointing_game")
    assert problems == ["metrics[0].pointing_game.tolerance: expected an integer >= 0, got -1"]


@pytest.mark.parametrize("ties", ["fraction", "any", "first"])
def test_pointing_game_hit_and_miss(ties: Ties) -> None:
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:5, 2:5] = True
    attr = torch.cat([one_hot_map(8, (3, 3)), one_hot_map(8, (6, 6))])
    assert pg(attr, mask, ties=ties) == ([1.0, 0.0], [None, None])


@pytest.mark.parametrize(
    ("offset", "tolerance", "hit"),
    [
        ((0, 0), 0, True),
        ((0, 1), 0, False),
        ((0, 1), 1, False),  # distance 1 is not < 1
        ((0, 1), 2, True),
        ((1, 1), 2, True),  # sqrt(2) < 2
        ((2, 0), 2, False),
        ((3, 4), 5, False),  # distance exactly 5: TorchRay's strict <
        ((3, 4), 6, True),
        ((4, 4), 6, True),  # sqrt(32) < 6
        ((5, 4), 6, False),  # sqrt(41) > 6
    ],
)
def test_pointing_game_tolerance_is_a_strict_disc(
    offset: tuple[int, int], tolerance: int, hit: bool
) -> None:
    mask = torch.zeros(1, 1, 15, 15, dtype=torch.bool)
    mask[0, 0, 2, 3] = True
    attr = one_hot_map(15, (2 + offset[0], 3 + offset[1]))
    values, _ = pg(attr, mask, tolerance=tolerance)
    assert values == [float(hit)]


def test_dilate_disc_matches_torchray_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 1, 13, 11, generator=gen) < 0.04
    for tol in (0, 1, 2, 3, 5):
        got = dilate_disc(mask, tol)
        want = torch.zeros_like(mask)
        pts = mask[:, 0].nonzero().tolist()
        for b in range(3):
            for v in range(13):
                for u in range(11):
                    near = any(
                        bb == b and (u - uu) ** 2 + (v - vv) ** 2 < max(tol, 1) ** 2
                        for bb, vv, uu in pts
                    )
                    want[b, 0, v, u] = near
        assert torch.equal(got, want), tol
    vol = torch.zeros(1, 1, 7, 7, 7, dtype=torch.bool)
    vol[0, 0, 3, 3, 3] = True
    ball = dilate_disc(vol, 2)
    assert int(ball.sum()) == 27  # d² < 4: the full 3×3×3 cube


def test_pointing_game_ties_three_modes() -> None:
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 3:, :] = True  # bottom half
    # Three tied maxima: one in the top half (first in row-major order), two in the mask.
    attr = one_hot_map(6, (0, 5), (4, 1), (5, 5))
    assert pg(attr, mask, ties="fraction")[0] == pytest.approx([2 / 3])
    assert pg(attr, mask, ties="any")[0] == [1.0]
    assert pg(attr, mask, ties="first")[0] == [0.0]
    # The first maximum inside the mask: "first" hits.
    attr = one_hot_map(6, (3, 0), (0, 5))
    assert pg(attr, mask, ties="first")[0] == [0.0]  # (0, 5) comes first in row-major order
    attr = one_hot_map(6, (3, 0), (4, 5))
    assert pg(attr, mask, ties="first")[0] == [1.0]
    assert pg(attr, mask, ties="fraction")[0] == [1.0]


def test_pointing_game_constant_map() -> None:
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, 4:, 2:6] = True  # 16 of 64 pixels, not containing pixel 0
    attr = torch.full((1, 1, 8, 8), 0.3)
    assert pg(attr, mask, ties="fraction")[0] == [0.25]
    assert pg(attr, mask, ties="any")[0] == [1.0]
    assert pg(attr, mask, ties="first")[0] == [0.0]
    # tolerance 2 (d² < 4) dilates by the 3×3 square: rows 3..7 × cols 1..6.
    assert pg(attr, mask, ties="fraction", tolerance=2)[0] == [30 / 64]


def test_pointing_game_undefined_cases() -> None:
    mask = torch.zeros(4, 1, 5, 5, dtype=torch.bool)
    mask[:, :, 1:3, 1:3] = True
    mask[1] = False
    attr = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    attr[2, 0, 0, 0] = torch.nan
    attr[3, 0, 4, 4] = torch.inf
    values, reasons = pointing_game(attr, mask)
    assert math.isfinite(values[0].item())
    assert torch.isnan(values[1:]).all()
    assert reasons == [
        None,
        "empty mask",
        "attribution has non-finite values",
        "attribution has non-finite values",
    ]


def test_pointing_game_metric_class() -> None:
    model = wrap(TinyNet(), 1, 8)
    x, target = images(2, 1, 8)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    attr = torch.cat([one_hot_map(8, (1, 1)), one_hot_map(8, (7, 7))])
    out = PointingGame(tolerance=0, ties="first").score(context(model, x, target, attr, mask))
    assert out.values.tolist() == [1.0, 0.0] and out.reasons == [None, None]
    with pytest.raises(ValueError, match="pointing_game needs ground-truth masks"):
        PointingGame().score(context(model, x, target, attr))
    with pytest.raises(ValueError, match=r"attributions: expected shape \[2, 1, 8, 8\]"):
        PointingGame().score(context(model, x, target, attr[:, :, :4], mask))


def quantus_pointing_game(attr: Tensor, mask: Tensor) -> np.ndarray:
    metric = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)
    b = attr.shape[0]
    x = np.zeros(attr.shape, dtype=np.float32)  # unused by the metric; shapes must match
    out = metric(
        model=None,
        x_batch=x,
        y_batch=np.zeros(b, dtype=np.int64),
        a_batch=attr.numpy(),
        s_batch=mask.numpy().astype(np.float32),
        channel_first=True,
    )
    return np.asarray(out, dtype=np.float64)


@needs_quantus
def test_pointing_game_agrees_with_quantus_without_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    attr = torch.randn(64, 1, 12, 12, generator=gen)
    mask = torch.rand(64, 1, 12, 12, generator=gen) < 0.3
    mask[:, :, 5, 5] = True  # never empty
    theirs = quantus_pointing_game(attr, mask)
    assert 0 < theirs.mean() < 1  # both outcomes occur
    all_ties: tuple[Ties, ...] = ("first", "any", "fraction")
    for ties in all_ties:
        values, _ = pointing_game(attr, mask, ties=ties)
        np.testing.assert_array_equal(values.numpy(), theirs)


@needs_quantus
def test_pointing_game_any_agrees_with_quantus_with_ties() -> None:
    gen = torch.Generator().manual_seed(1)
    attr = torch.randint(0, 3, (64, 1, 6, 6), generator=gen).float()  # many tied maxima
    mask = torch.rand(64, 1, 6, 6, generator=gen) < 0.2
    mask[:, :, 0, 0] = True
    theirs = quantus_pointing_game(attr, mask)
    values, _ = pointing_game(attr, mask, ties="any")
    np.testing.assert_array_equal(values.numpy(), theirs)
    first, _ = pointing_game(attr, mask, ties="first")
    assert (first.numpy() <= theirs).all() and (first.numpy() < theirs).any()


@needs_quantus
def test_pointing_game_empty_mask_deliberately_differs_from_quantus() -> None:
    attr = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    mask[0, 0, 2, 2] = True
    theirs = quantus_pointing_game(attr, mask)
    assert theirs[1] == 1.0  # Quantus 0.6: NaN written into a bool array -> True, a "hit"
    values, reasons = pointing_game(attr, mask)
    assert math.isnan(values[1].item()) and reasons[1] == "empty mask"


# ================================================================================================
# Deletion / insertion
# ================================================================================================
def test_deletion_registered() -> None:
    assert registry.metrics.get("deletion") is Deletion
    assert Deletion.higher_is_better is False and Insertion.higher_is_better is True
    _, problems = validate_params(Deletion, {"steps": -1}, "metrics[2].deletion")
    assert problems == ["metrics[2].deletion.steps: expected an integer > 0, got -1"]
    resolved, problems = validate_params(Deletion, {}, "m")
    assert resolved == {"steps": 64, "substrate": "zero", "score": "probability"}


def test_step_counts() -> None:
    assert step_counts(64, 16).tolist() == list(range(0, 65, 4))
    assert step_counts(10, 4).tolist() == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round up
    for n, t in [(1, 5), (7, 3), (4096, 64), (100, 100), (3, 7)]:
        k = step_counts(n, t)
        assert k[0] == 0 and k[-1] == n and (k.diff() >= 0).all()
        assert k.tolist() == [math.floor(i * n / t + 0.5) for i in range(t + 1)]


def test_curve_auc_known_answers() -> None:
    curves = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.2, 0.7, 0.1]])
    assert curve_auc(curves).tolist() == pytest.approx([0.5, 1.0, 0.5, (0.2 + 1.4 + 0.1) / 4])
    y = torch.rand(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(curve_auc(y).numpy(), np.trapezoid(y.numpy(), dx=1 / 8, axis=1))


def test_perturbation_ranks_order_and_ties() -> None:
    a = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.1, 0.2]]).view(1, 1, 2, 3)
    # descending; ties -> lower flat index first
    assert perturbation_ranks(a).flatten().tolist() == [4, 0, 2, 1, 5, 3]
    assert perturbation_ranks(torch.zeros(1, 1, 2, 2)).flatten().tolist() == [0, 1, 2, 3]


def slow_reference(
    model: ExplainedModel,
    x: Tensor,
    attr: Tensor,
    target: Tensor,
    steps: int,
    substrate: Reference,
    insert: bool,
    score: Score,
) -> Tensor:
    """Per-sample, per-step plain Python loop over the written-out protocol."""
    b, c, h, w = x.shape
    n = h * w
    ref = reference_image(x, substrate)
    out = torch.zeros(b, steps + 1)
    for i in range(b):
        a = attr[i, 0].flatten().tolist()
        order = sorted(range(n), key=lambda p: (-a[p], p))
        for t in range(steps + 1):
            k = math.floor(t * n / steps + 0.5)
            img = (ref[i] if insert else x[i]).clone().view(c, n)
            src = (x[i] if insert else ref[i]).reshape(c, n)
            for p in order[:k]:
                img[:, p] = src[:, p]
            with torch.no_grad():
                logits = model(img.view(1, c, h, w))[0]
            y = F.softmax(logits, 0) if score == "probability" else logits
            out[i, t] = y[target[i]]
    return out


@pytest.mark.parametrize(
    ("substrate", "insert", "score", "steps", "size"),
    [
        ("zero", False, "probability", 16, 8),
        ("mean", False, "logit", 5, 8),  # 64 px, 5 steps: N not divisible by T
        ("blur", True, "probability", 7, 6),
        ("zero", True, "logit", 36, 6),
    ],
)
def test_curves_match_slow_reference(
    substrate: Reference, insert: bool, score: Score, steps: int, size: int
) -> None:
    model, net = bounded64(TinyNet(channels=3), 3, size)
    x, target = images(3, 3, size)
    attr = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(5))
    attr[1] = attr[1].round()  # many ties
    x = x.double()
    fast = causal_curves(
        model,
        x,
        attr,
        target,
        steps=steps,
        substrate=substrate,
        insert=insert,
        score=score,
        batch_size=10,
    )
    slow = slow_reference(model, x, attr, target, steps, substrate, insert, score)
    # The slow loop evaluates one image at a time, the metric ten: in float32 the convs round
    # differently per batch size (on this CPU logits differed by 3e-6, on another by more), so
    # both run in float64 and agree to the float32 rounding of their outputs (bounded64).
    assert_within(fast, slow, curve_tolerance(fast, slow, net, score))


@pytest.mark.parametrize("substrate", ["zero", "mean", "blur"])
def test_deletion_endpoints(substrate: Reference) -> None:
    # The endpoints are the model on x and on the substrate, evaluated in other batches than
    # p_x and p_s: float64, to the float32 rounding of the curves (see bounded64).
    model, net = bounded64(TinyNet(), 1, 16)
    x, target = images(6, 1, 16)
    x = x.double()
    attr = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    out = Deletion(steps=8, substrate=substrate).score(context(model, x, target, attr))
    with torch.no_grad():
        p_x = F.softmax(model(x), 1).gather(1, target[:, None]).squeeze(1)
        p_s = F.softmax(model(reference_image(x, substrate)), 1)
        p_s = p_s.gather(1, target[:, None]).squeeze(1)
    assert out.curves is not None and out.curve_x is not None
    assert out.curves.shape == (6, 9)
    assert_within(out.curves[:, 0], p_x, 2 * net.prob_bound)
    assert_within(out.curves[:, -1], p_s, 2 * net.prob_bound)
    torch.testing.assert_close(out.curve_x, torch.arange(9) / 8.0)
    torch.testing.assert_close(out.values, curve_auc(out.curves))  # the same function
    assert out.reasons == [None] * 6
    ins = Insertion(steps=8, substrate=substrate).score(context(model, x, target, attr))
    assert ins.curves is not None
    assert_within(ins.curves[:, 0], p_s, 2 * net.prob_bound)
    assert_within(ins.curves[:, -1], p_x, 2 * net.prob_bound)


def test_chunking_does_not_change_the_result() -> None:
    # Other chunks are other batch sizes for the convs, whose float32 rounding depends on the
    # batch size, the CPU and the thread count: float64, to the float32 rounding (bounded64).
    model, net = bounded64(TinyNet(), 1, 12)
    x, target = images(5, 1, 12)
    x = x.double()
    attr = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    outs = [
        Deletion(steps=9).score(context(model, x, target, attr, batch_size=bs))
        for bs in (1, 7, 50, 1000)
    ]
    first = outs[0].curves
    assert first is not None
    for o in outs[1:]:
        assert o.curves is not None
        bound = curve_tolerance(o.curves, first, net, "probability")
        assert_within(o.curves, first, bound)
        assert_within(o.values, outs[0].values, auc_tolerance(first, bound))
    # Batched over samples equals one sample at a time.
    single = [
        Deletion(steps=9).score(context(model, x[i : i + 1], target[i : i + 1], attr[i : i + 1]))
        for i in range(5)
    ]
    singles = torch.cat([s.curves for s in single if s.curves is not None])
    bound = curve_tolerance(singles, first, net, "probability")
    assert_within(
        torch.cat([s.values for s in single]), outs[0].values, auc_tolerance(first, bound)
    )


def test_perfect_map_beats_random_and_inverse_maps() -> None:
    # Linear model: deleting pixel p (to 0) lowers the class-margin by (w_c − w_o)_p · x_p, so the
    # true contribution ranking is the greedy-optimal deletion order for the softmax probability.
    size, b = 10, 8
    net = LinearNet((1, size, size))
    model = wrap(net, 1, size)
    x, target = images(b, 1, size, seed=4)
    w = net.fc.weight.detach()
    margin_w = (w[target] - w[1 - target]).view(b, 1, size, size)
    perfect = margin_w * x
    gen = torch.Generator().manual_seed(9)
    random = torch.rand(b, 1, size, size, generator=gen)
    metric = Deletion(steps=20)
    d_perfect = metric.score(context(model, x, target, perfect)).values
    d_random = metric.score(context(model, x, target, random)).values
    d_inverse = metric.score(context(model, x, target, -perfect)).values
    assert (d_perfect < d_random).all() and (d_random < d_inverse).all()
    i_perfect = Insertion(steps=20, substrate="zero").score(context(model, x, target, perfect))
    i_random = Insertion(steps=20, substrate="zero").score(context(model, x, target, random))
    assert (i_perfect.values > i_random.values).all()


def test_non_finite_attributions_are_nan_with_reason() -> None:
    # The finite samples are scored as a batch of 2, the reference as a batch of 4: float64, to
    # the float32 rounding (bounded64).
    model, net = bounded64(TinyNet(), 1, 8)
    x, target = images(4, 1, 8)
    x = x.double()
    attr = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    bad = attr.clone()
    bad[1, 0, 2, 2] = torch.nan
    bad[3, 0, 0, 0] = -torch.inf
    out = Deletion(steps=4).score(context(model, x, target, bad))
    ref = Deletion(steps=4).score(context(model, x, target, attr))
    assert out.reasons == [None, "attribution has non-finite values"] * 2
    assert out.curves is not None and ref.curves is not None
    assert torch.isnan(out.values[[1, 3]]).all() and torch.isnan(out.curves[[1, 3]]).all()
    kept, kept_ref = out.curves[[0, 2]], ref.curves[[0, 2]]
    bound = curve_tolerance(kept, kept_ref, net, "probability")
    assert_within(kept, kept_ref, bound)
    assert_within(out.values[[0, 2]], ref.values[[0, 2]], auc_tolerance(kept_ref, bound))
    allbad = Deletion(steps=4).score(context(model, x, target, torch.full_like(attr, torch.nan)))
    assert torch.isnan(allbad.values).all()
    with pytest.raises(ValueError, match=r"batch\.target is not set"):
        batch = Batch(x=x, label=target, ids=("a", "b", "c", "d"))
        Deletion().score(MetricContext(model, batch, attr, Random(), make_generator(0), 4))


@needs_quantus
@pytest.mark.parametrize("steps", [16, 64])
def test_deletion_agrees_with_quantus_pixel_flipping(steps: int) -> None:
    # Quantus PixelFlipping: argsort(-a) over C·H·W features (C = 1 here: features are pixels),
    # features_in_step per step, replaced by a fixed baseline value, softmax probability of
    # y_batch; its curve has no t = 0 point. Maps without ties (Quantus' argsort is not stable).
    # Quantus scores one image at a time, we score batches: the model computes in float64 for
    # both (Float64Inside), whose probabilities, softmax of the rounded logits, agree to
    # prob_bound (see bounded64).
    size, b = 8, 6
    net = Bounded(TinyNet().double())
    model = wrap(Float64Inside(net), 1, size)
    x, target = images(b, 1, size, seed=7)
    attr = torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(8))
    ours = Deletion(steps=steps, substrate="zero").score(context(model, x, target, attr))
    metric = quantus.PixelFlipping(
        features_in_step=size * size // steps,
        perturb_baseline=0.0,  # type: ignore[arg-type]  # typed str, takes a number
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    theirs = metric(
        model=model.module,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=attr.numpy(),
        softmax=True,
        device="cpu",
        channel_first=True,
    )
    assert ours.curves is not None
    assert_within(ours.curves[:, 1:], np.asarray(theirs), 2 * net.prob_bound)


def test_volumes_3d() -> None:
    # Deletion and the pointing game are written for any number of spatial dims.
    # The last point is the model on the substrate in another batch than p_end: float64, to the
    # float32 rounding (bounded64).
    shape = (1, 4, 5, 6)
    net = Bounded(LinearNet(shape).double())
    model = ExplainedModel(net.eval(), InputSpec(1, shape[1:], (0.0,), (1.0,)), num_classes=2)
    gen = torch.Generator().manual_seed(0)
    x, target = torch.rand(2, *shape, generator=gen).double(), torch.tensor([0, 1])
    attr = torch.randn(2, *shape, generator=gen)
    out = Deletion(steps=6, substrate="blur").score(context(model, x, target, attr))
    assert out.curves is not None and out.curves.shape == (2, 7)
    with torch.no_grad():
        p_end = F.softmax(model(reference_image(x, "blur")), 1).gather(1, target[:, None])
    assert_within(out.curves[:, -1], p_end.squeeze(1), 2 * net.prob_bound)
    mask = torch.zeros(2, *shape, dtype=torch.bool)
    mask[:, :, 1:3, 1:3, 1:3] = True
    a = torch.zeros(2, *shape)
    a[0, 0, 2, 2, 2] = 1.0  # inside
    a[1, 0, 0, 4, 5] = 1.0  # outside; nearest mask voxel (1, 2, 2) at distance sqrt(14) < 4
    assert pointing_game(a, mask)[0].tolist() == [1.0, 0.0]
    assert pointing_game(a, mask, tolerance=4)[0].tolist() == [1.0, 1.0]
    assert pointing_game(a, mask, tolerance=3)[0].tolist() == [1.0, 0.0]
