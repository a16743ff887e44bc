"""Localization metrics beyond the pointing game: known answers, edge cases, peers.

References: analytic maps whose scores follow by hand; sklearn (``roc_auc_score``,
``average_precision_score``) and skimage (``threshold_otsu``) as exact oracles; Quantus 0.6
(``RelevanceMassAccuracy``, ``RelevanceRankAccuracy``, ``TopKIntersection``, ``AUC``) as the peer,
never the only oracle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Batch, Capability, ExplainedModel, InputSpec, MetricContext
from benchbox.methods.controls import Random
from benchbox.metrics.localization import (
    AUPRC,
    AUROC,
    Dice,
    EnergyPointingGame,
    IoU,
    RelevanceMass,
    RelevanceRank,
    TopKIntersection,
    auprc,
    auroc,
    binarize,
    dice,
    energy_pointing_game,
    iou,
    otsu_threshold,
    pointing_game,
    relevance_mass,
    relevance_rank,
    topk_hits,
    topk_intersection,
)
from benchbox.params import validate_params
from benchbox.seeding import make_generator

try:  # the peer reference; only the comparison tests need it
    import quantus

    HAVE_QUANTUS = True
except ImportError:  # pragma: no cover
    HAVE_QUANTUS = False
needs_quantus = pytest.mark.skipif(not HAVE_QUANTUS, reason="quantus is not installed")

Fn = Callable[..., tuple[Tensor, list[str | None]]]

# Every pure metric function with the keyword arguments of a typical configuration.
FUNCTIONS: dict[str, tuple[Fn, dict[str, Any]]] = {
    "pointing_game": (pointing_game, {}),
    "energy_pointing_game": (energy_pointing_game, {}),
    "relevance_mass": (relevance_mass, {}),
    "relevance_rank": (relevance_rank, {}),
    "topk_intersection": (topk_intersection, {"k": 0.1}),
    "auroc": (auroc, {}),
    "auprc": (auprc, {}),
    "iou": (iou, {}),
    "dice": (dice, {"threshold": "percentile", "percentile": 80.0}),
}

CLASSES = {
    "energy_pointing_game": EnergyPointingGame,
    "relevance_mass": RelevanceMass,
    "relevance_rank": RelevanceRank,
    "topk_intersection": TopKIntersection,
    "auroc": AUROC,
    "auprc": AUPRC,
    "iou": IoU,
    "dice": Dice,
}


def rand_maps(
    b: int, size: int = 8, seed: int = 0, p: float = 0.3, ties: bool = False
) -> tuple[Tensor, Tensor]:
    """Random maps ``[b, 1, size, size]`` and masks that are neither empty nor full."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        attr = torch.randint(-2, 3, (b, 1, size, size), generator=gen).float()
    else:
        attr = torch.randn(b, 1, size, size, generator=gen)
    mask = torch.rand(b, 1, size, size, generator=gen) < p
    mask[:, 0, 0, 0] = True
    mask[:, 0, -1, -1] = False
    return attr, mask


def square_mask(size: int, lo: int, hi: int, b: int = 1) -> Tensor:
    mask = torch.zeros(b, 1, size, size, dtype=torch.bool)
    mask[:, :, lo:hi, lo:hi] = True
    return mask


def context(attr: Tensor, mask: Tensor | None) -> MetricContext:
    b, _, *sp = attr.shape
    model = ExplainedModel(nn.Identity(), InputSpec(1, tuple(sp), (0.0,), (1.0,)), num_classes=2)
    x = torch.zeros(attr.shape)
    label = torch.zeros(b, dtype=torch.long)
    batch = Batch(x=x, label=label, ids=tuple(map(str, range(b))), target=label, mask=mask)
    return MetricContext(model, batch, attr, Random(), make_generator(0), 16)


def values_of(fn: Fn, attr: Tensor, mask: Tensor, **kw: Any) -> list[float]:
    return fn(attr, mask, **kw)[0].tolist()


# ================================================================================================
# Registry, parameters, classes
# ================================================================================================
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_registered_with_masks_and_direction(name: str) -> None:
    cls = registry.metrics.get(name)
    assert cls is CLASSES[name]
    assert cls.needs == frozenset({Capability.MASKS})
    assert cls.higher_is_better is True
    assert cls.__doc__ is not None and cls.__doc__.strip().splitlines()[0]  # shown by `ls`


def test_parameter_validation_and_defaults() -> None:
    resolved, problems = validate_params(TopKIntersection, {}, "m")
    assert problems == [] and resolved == {
        "k": 1000,
        "abs": False,
        "ties": "fraction",
        "concept_influence": False,
    }
    resolved, problems = validate_params(TopKIntersection, {"k": 0.05}, "m")
    assert problems == [] and resolved["k"] == 0.05 and isinstance(resolved["k"], float)
    resolved, _ = validate_params(TopKIntersection, {"k": 64}, "m")
    assert resolved["k"] == 64 and isinstance(resolved["k"], int)
    for bad in (0, -3, 1.5, True, "10"):
        _, problems = validate_params(TopKIntersection, {"k": bad}, "metrics[0].topk")
        assert problems == [
            "metrics[0].topk.k: expected an integer >= 1 (pixels) or a number in (0, 1] "
            f"(a fraction of the map), got {bad!r}"
        ]
    assert validate_params(IoU, {}, "m")[0] == {
        "threshold": "otsu",
        "percentile": 95.0,
        "value": 0.5,
        "abs": False,
    }
    _, problems = validate_params(IoU, {"threshold": "mean"}, "metrics[1].iou")
    assert problems == [
        "metrics[1].iou.threshold: expected one of 'otsu', 'percentile' or 'value', got 'mean'"
    ]
    _, problems = validate_params(Dice, {"percentile": 101}, "d")
    assert problems == ["d.percentile: expected a number <= 100.0, got 101"]
    assert validate_params(RelevanceMass, {}, "m")[0] == {"abs": True}
    assert validate_params(RelevanceRank, {}, "m")[0] == {"abs": False, "ties": "fraction"}
    assert validate_params(EnergyPointingGame, {}, "m")[0] == {"positive": "clip"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_classes_score_like_their_functions_and_check_inputs(name: str) -> None:
    attr, mask = rand_maps(4, size=10, seed=3)
    fn, kw = FUNCTIONS[name]
    cls = CLASSES[name]
    metric = cls(**kw) if name != "topk_intersection" else cls(k=0.1)
    out = metric.score(context(attr, mask))
    want, reasons = fn(attr, mask, **kw)
    torch.testing.assert_close(out.values, want, rtol=0, atol=0)
    assert out.reasons == reasons == [None] * 4
    with pytest.raises(ValueError, match=f"{name} needs ground-truth masks"):
        metric.score(context(attr, None))
    bad = context(attr, mask)
    bad = MetricContext(bad.model, bad.batch, attr[:, :, :5], bad.method, bad.generator, 16)
    with pytest.raises(ValueError, match=r"attributions: expected shape \[4, 1, 10, 10\]"):
        metric.score(bad)


# ================================================================================================
# Energy pointing game
# ================================================================================================
def test_energy_known_answers_and_sign_handling() -> None:
    mask = square_mask(4, 0, 2)  # 4 of 16 pixels
    attr = torch.zeros(1, 1, 4, 4)
    attr[0, 0, 0, 0] = 3.0  # inside
    attr[0, 0, 3, 3] = 1.0  # outside
    attr[0, 0, 3, 2] = -4.0  # outside, negative
    assert values_of(energy_pointing_game, attr, mask, positive="clip") == [0.75]
    assert values_of(energy_pointing_game, attr, mask, positive="abs") == [3 / 8]
    # minmax: L = (a + 4) / 7; inside: (7 + 4 + 4 + 4) / 7, total: (7 + 5 + 0 + 13·4) / 7.
    got = values_of(energy_pointing_game, attr, mask, positive="minmax")
    assert got == pytest.approx([19 / 64])


def test_energy_constant_and_degenerate_maps() -> None:
    mask = square_mask(5, 1, 3, b=4)  # 4 of 25
    attr = torch.stack([torch.full((1, 5, 5), v) for v in (0.7, -0.7, 0.0, 2.0)])
    v, r = energy_pointing_game(attr, mask, positive="clip")
    assert v[0].item() == pytest.approx(4 / 25) and r[0] is None  # uniform energy: area fraction
    assert math.isnan(v[1].item()) and r[1] == "attribution has zero total relevance"
    assert math.isnan(v[2].item()) and r[2] == "attribution has zero total relevance"
    v, r = energy_pointing_game(attr, mask, positive="abs")
    assert v[[0, 1, 3]].tolist() == pytest.approx([4 / 25] * 3) and r[2] is not None
    v, r = energy_pointing_game(attr, mask, positive="minmax")
    assert torch.isnan(v).all() and r == ["constant attribution"] * 4


def test_energy_of_uniform_random_maps_is_the_area_fraction() -> None:
    # The analytic test: 10k uniform random maps, energy inside ≈ the area fraction.
    gen = torch.Generator().manual_seed(0)
    n, size = 10_000, 12
    attr = torch.rand(n, 1, size, size, generator=gen)
    side = torch.randint(2, size, (n,), generator=gen)
    r = torch.arange(size)
    mask = (r[None, :, None] < side[:, None, None]) & (r[None, None, :] < side[:, None, None])
    mask = mask[:, None]
    area = mask.flatten(1).float().mean(1)
    values, reasons = energy_pointing_game(attr, mask)
    assert reasons == [None] * n
    assert abs((values - area.double()).mean().item()) < 0.02
    # Per sample the ratio is close too (sums of ~N/2 uniform variables): a looser bound.
    assert (values - area.double()).abs().max().item() < 0.2
    for positive in ("abs", "minmax"):
        v, _ = energy_pointing_game(attr, mask, positive=positive)  # type: ignore[arg-type]
        assert abs((v - area.double()).mean().item()) < 0.02


# ================================================================================================
# Relevance mass and rank
# ================================================================================================
def test_relevance_mass_known_answers() -> None:
    mask = square_mask(4, 0, 2)
    attr = torch.zeros(1, 1, 4, 4)
    attr[0, 0, 1, 1] = 2.0
    attr[0, 0, 0, 1] = -1.0
    attr[0, 0, 3, 3] = 1.0
    assert values_of(relevance_mass, attr, mask) == [0.75]  # (2 + 1) / 4
    assert values_of(relevance_mass, attr, mask, abs=False) == [0.5]  # (2 − 1) / 2
    attr[0, 0, 3, 3] = -1.0  # signed total 0: undefined
    v, r = relevance_mass(attr, mask, abs=False)
    assert math.isnan(v.item()) and r == ["attribution has zero total relevance"]
    assert values_of(relevance_mass, torch.full((1, 1, 4, 4), -2.0), mask) == [0.25]


def test_relevance_rank_known_answers_and_ties() -> None:
    mask = square_mask(4, 0, 2)  # K = 4: pixels (0,0) (0,1) (1,0) (1,1)
    attr = torch.zeros(1, 1, 4, 4)
    attr[0, 0, 0, 0], attr[0, 0, 1, 1], attr[0, 0, 3, 3] = 5.0, 4.0, 3.0
    attr[0, 0, 2, 2] = -9.0
    # Top 4: 5, 4, 3, then one of the 12 zeros, of which 2 ((0,1), (1,0)) are in the mask.
    assert values_of(relevance_rank, attr, mask) == [pytest.approx((2 + 2 / 12) / 4)]
    # first: the first zero in row-major order is (0, 1), inside.
    assert values_of(relevance_rank, attr, mask, ties="first") == [0.75]
    # abs: 9 ranks first (outside), then 5, 4, 3: two of four inside.
    assert values_of(relevance_rank, attr, mask, abs=True) == [0.5]
    # A constant map scores the area fraction under "fraction".
    assert values_of(relevance_rank, torch.ones(1, 1, 4, 4), mask) == [0.25]
    # A perfect map scores 1, the inverse 0.
    assert values_of(relevance_rank, mask.float(), mask) == [1.0]
    assert values_of(relevance_rank, -mask.float(), mask) == [0.0]


def test_topk_hits_fraction_is_the_mean_over_random_tie_breaks() -> None:
    # Brute force: the expected hits over every tie order equals the mean over random
    # permutations applied before a stable sort; checked exactly with many permutations.
    attr, mask = rand_maps(3, size=4, seed=5, ties=True)
    a, m = attr.flatten(1), mask.flatten(1)
    k = torch.tensor([3, 7, 16])
    exact = topk_hits(a, m, k)
    draws = 20_000
    perm = torch.rand(draws, 1, 16, generator=torch.Generator().manual_seed(0)).argsort(dim=2)
    perm = perm.expand(draws, 3, 16).reshape(-1, 16)
    hits = topk_hits(
        a.repeat(draws, 1).gather(1, perm),
        m.repeat(draws, 1).gather(1, perm),
        k.repeat(draws),
        ties="first",
    )
    # Standard error of the mean over 20k draws is < 0.01.
    torch.testing.assert_close(exact, hits.view(draws, 3).mean(0), rtol=0, atol=0.04)
    assert topk_hits(a, m, torch.tensor([16, 16, 16]))[0] == m[0].sum()
    assert topk_hits(a, m, torch.tensor([0, 0, 0])).tolist() == [0.0, 0.0, 0.0]


def test_topk_intersection_known_answers() -> None:
    mask = square_mask(4, 0, 2)
    attr = torch.arange(16.0).flip(0).view(1, 1, 4, 4)  # row-major descending: 15 at (0, 0)
    # Top 3: (0,0) (0,1) (0,2): two in the mask.
    assert values_of(topk_intersection, attr, mask, k=3) == [pytest.approx(2 / 3)]
    assert values_of(topk_intersection, attr, mask, k=0.25) == [0.5]  # k = 4
    assert values_of(topk_intersection, attr, mask, k=1.0) == [0.25]  # every pixel
    assert values_of(topk_intersection, attr, mask, k=16) == [0.25]
    got = values_of(topk_intersection, attr, mask, k=3, concept_influence=True)
    assert got == [pytest.approx(2 / 3 * 16 / 4)]
    with pytest.raises(ValueError, match=r"topk_intersection\.k: 17 exceeds the 16 pixels"):
        topk_intersection(attr, mask, k=17)


# ================================================================================================
# AUROC and AUPRC
# ================================================================================================
def test_auroc_auprc_known_answers() -> None:
    mask = square_mask(4, 0, 2)  # P = 4, Q = 12
    assert values_of(auroc, mask.float(), mask) == [1.0]
    assert values_of(auroc, -mask.float(), mask) == [0.0]
    assert values_of(auroc, torch.ones(1, 1, 4, 4), mask) == [0.5]
    assert values_of(auprc, mask.float(), mask) == [1.0]
    assert values_of(auprc, torch.ones(1, 1, 4, 4), mask) == [0.25]  # the prevalence
    # One mask pixel tied with two outside ones at the top, the other three mask pixels last:
    attr = torch.zeros(1, 1, 4, 4)
    attr[0, 0, 0, 0] = attr[0, 0, 3, 3] = attr[0, 0, 3, 2] = 1.0
    attr[0, 0, 0, 1] = attr[0, 0, 1, 0] = attr[0, 0, 1, 1] = -1.0
    # pairs (pos, neg): (0,0) vs 2 tied (½ each) and 10 lower: 11; the other three beat nobody.
    assert values_of(auroc, attr, mask) == [pytest.approx(11 / 48)]
    # AP: threshold 1 → TP 1 of 3 (P = 1/3, ΔR = 1/4); threshold -1 → all 16 (P = 4/16, ΔR = 3/4).
    assert values_of(auprc, attr, mask) == [pytest.approx(1 / 4 / 3 + 3 / 4 * 4 / 16)]


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_auprc_match_sklearn(ties: bool) -> None:
    skm = pytest.importorskip("sklearn.metrics")  # installed with Quantus
    average_precision_score, roc_auc_score = skm.average_precision_score, skm.roc_auc_score

    attr, mask = rand_maps(40, size=9, seed=7, ties=ties)
    roc, _ = auroc(attr, mask)
    ap, _ = auprc(attr, mask)
    y, s = mask.flatten(1).numpy(), attr.flatten(1).numpy()
    want_roc = [roc_auc_score(y[i], s[i]) for i in range(40)]
    want_ap = [average_precision_score(y[i], s[i]) for i in range(40)]
    np.testing.assert_allclose(roc.numpy(), want_roc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ap.numpy(), want_ap, rtol=0, atol=1e-6)
    ap_abs, _ = auprc(attr, mask, abs=True)
    want = [average_precision_score(y[i], np.abs(s[i])) for i in range(40)]
    np.testing.assert_allclose(ap_abs.numpy(), want, rtol=0, atol=1e-6)


def test_full_mask() -> None:
    attr, _ = rand_maps(1, size=5)
    full = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    v, r = auroc(attr, full)
    assert math.isnan(v.item()) and r == ["mask covers the whole map"]
    assert values_of(auprc, attr, full) == [1.0]  # as sklearn: precision is 1 everywhere
    assert values_of(relevance_mass, attr, full) == [1.0]
    assert values_of(energy_pointing_game, attr, full) == [1.0]
    assert values_of(relevance_rank, attr, full) == [1.0]
    assert values_of(topk_intersection, attr, full, k=3) == [1.0]
    assert values_of(pointing_game, attr, full) == [1.0]
    # Otsu splits a random map: the foreground is a strict subset of the full mask.
    fg = binarize(attr.flatten(1)).sum().item()
    assert values_of(iou, attr, full) == [pytest.approx(fg / 25)]


# ================================================================================================
# Thresholds, IoU, Dice
# ================================================================================================
def test_otsu_matches_skimage_within_one_bin() -> None:
    from skimage.filters import threshold_otsu

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(30, 300, generator=gen) ** 3
    a[:10] = torch.rand(10, 300, generator=gen) + (torch.rand(10, 300, generator=gen) < 0.3) * 2
    a[10, :] = 0.25  # constant: skimage returns the value
    mine = otsu_threshold(a).numpy()
    theirs = np.array([threshold_otsu(row.numpy()) for row in a])
    width = ((a.amax(1) - a.amin(1)) / 256).double().numpy()
    assert mine[10] == 0.25 == theirs[10]
    assert (np.abs(mine - theirs) <= width + 1e-12).all()
    # Bimodal rows: the threshold lies between the two modes ([0, 1) and [2, 3)).
    assert ((mine[:10] > 0.9) & (mine[:10] < 2.1)).all()


def test_binarize_rules() -> None:
    a = torch.arange(20.0).view(1, 20)
    assert binarize(a, threshold="percentile", percentile=75).sum().item() == 5  # > 14.25
    assert binarize(a, threshold="percentile", percentile=0).sum().item() == 19  # > min
    assert binarize(a, threshold="value", value=0.5).nonzero()[:, 1].min().item() == 10  # > 9.5
    np.testing.assert_allclose(
        binarize(a, threshold="percentile", percentile=37.3).sum().item(),
        (a.numpy() > np.percentile(a.numpy(), 37.3)).sum(),
    )
    const = torch.full((1, 20), 3.0)
    for rule in ("otsu", "percentile", "value"):
        assert not binarize(const, threshold=rule).any()  # type: ignore[arg-type]


def test_iou_dice_known_answers() -> None:
    mask = square_mask(8, 2, 6)  # 16 pixels
    perfect = mask.float() + 0.01 * torch.rand(1, 1, 8, 8, generator=torch.Generator())
    assert values_of(iou, perfect, mask) == [1.0] and values_of(dice, perfect, mask) == [1.0]
    # A map lighting a 4×4 square shifted by 2 columns: overlap 8, union 24.
    shifted = torch.zeros(1, 1, 8, 8)
    shifted[0, 0, 2:6, 4:8] = 1.0
    assert values_of(iou, shifted, mask) == [pytest.approx(8 / 24)]
    assert values_of(dice, shifted, mask) == [pytest.approx(16 / 32)]
    v = values_of(iou, shifted, mask, threshold="value", value=0.5)
    assert v == [pytest.approx(1 / 3)]
    # Negated: the foreground is the 48 zeros, 8 of them in the mask.
    assert values_of(iou, -shifted, mask) == [pytest.approx(8 / 56)]
    assert values_of(iou, torch.ones(1, 1, 8, 8), mask) == [0.0]  # constant: no foreground
    assert values_of(iou, -shifted, mask, abs=True) == [pytest.approx(8 / 24)]


def test_dice_is_a_function_of_iou() -> None:
    attr, mask = rand_maps(20, size=12, seed=11)
    for kw in ({}, {"threshold": "percentile", "percentile": 70.0}, {"threshold": "value"}):
        j, _ = iou(attr, mask, **kw)  # type: ignore[arg-type]
        d, _ = dice(attr, mask, **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(d, 2 * j / (1 + j), rtol=0, atol=1e-12)


# ================================================================================================
# Edge cases, invariances, devices — for every function
# ================================================================================================
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_empty_mask_and_non_finite_maps_are_nan_with_reasons(name: str) -> None:
    fn, kw = FUNCTIONS[name]
    attr, mask = rand_maps(4, size=6, seed=1)
    mask[1] = False
    attr[2, 0, 3, 3] = math.nan
    attr[3, 0, 0, 5] = -math.inf
    values, reasons = fn(attr, mask, **kw)
    assert math.isfinite(values[0].item())
    assert torch.isnan(values[1:]).all()
    assert reasons == [
        None,
        "empty mask",
        "attribution has non-finite values",
        "attribution has non-finite values",
    ]
    # Both empty (an empty mask and a map whose foreground is empty): still "empty mask".
    v, r = fn(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6, dtype=torch.bool), **kw)
    assert math.isnan(v.item()) and r == ["empty mask"]


CONSTANT = {  # a constant positive map vs a mask covering 9 of 36 pixels
    "pointing_game": 0.25,  # ties="fraction": the tied maxima's share inside
    "energy_pointing_game": 0.25,
    "relevance_mass": 0.25,
    "relevance_rank": 0.25,
    "topk_intersection": 0.25,
    "auroc": 0.5,
    "auprc": 0.25,
    "iou": 0.0,  # no foreground (strict >)
    "dice": 0.0,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_constant_map_scores_chance(name: str) -> None:
    fn, kw = FUNCTIONS[name]
    mask = square_mask(6, 0, 3)
    values, reasons = fn(torch.full((1, 1, 6, 6), 0.4), mask, **kw)
    assert values.tolist() == [pytest.approx(CONSTANT[name])] and reasons == [None]


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_batch_split_invariance_device_and_3d(name: str) -> None:
    fn, kw = FUNCTIONS[name]
    attr, mask = rand_maps(12, size=10, seed=4, ties=name in ("auroc", "relevance_rank"))
    whole, reasons = fn(attr, mask, **kw)
    parts = [fn(attr[i : i + 5], mask[i : i + 5], **kw)[0] for i in range(0, 12, 5)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert whole.device == attr.device and whole.shape == (12,) and reasons == [None] * 12
    # Volumes: [B, 1, D, H, W] flatten the same way.
    vol, vmask = attr.view(3, 1, 4, 10, 10), mask.view(3, 1, 4, 10, 10)
    v3 = fn(vol, vmask, **kw)[0]
    assert v3.shape == (3,) and torch.isfinite(v3).all()
    if name in ("relevance_mass", "energy_pointing_game", "auroc", "auprc", "relevance_rank"):
        # These see only the flattened map: identical to the 2D map of the same pixels.
        flat = fn(attr.reshape(3, 1, 40, 10), mask.reshape(3, 1, 40, 10), **kw)[0]
        torch.testing.assert_close(v3, flat, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_cuda_matches_cpu(name: str) -> None:
    fn, kw = FUNCTIONS[name]
    attr, mask = rand_maps(16, size=16, seed=9, ties=True)
    cpu, reasons = fn(attr, mask, **kw)
    gpu, gpu_reasons = fn(attr.cuda(), mask.cuda(), **kw)
    assert gpu.device.type == "cuda" and gpu_reasons == reasons
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)


# ================================================================================================
# Quantus 0.6
# ================================================================================================
def quantus_scores(metric: Any, attr: Tensor, mask: Tensor) -> np.ndarray:
    b = attr.shape[0]
    out = metric(
        model=None,
        x_batch=np.zeros(attr.shape, dtype=np.float32),  # unused; shapes must match
        y_batch=np.zeros(b, dtype=np.int64),
        a_batch=attr.numpy().copy(),  # some Quantus metrics write into a_batch
        s_batch=mask.numpy().astype(np.float32),
        channel_first=True,
    )
    return np.asarray(out, dtype=np.float64)


@needs_quantus
@pytest.mark.parametrize("abs_", [True, False])
@pytest.mark.parametrize("normalise", [True, False])
def test_relevance_mass_agrees_with_quantus(abs_: bool, normalise: bool) -> None:
    attr, mask = rand_maps(64, size=12, seed=0)
    attr = attr + 0.3  # a signed map whose total is far from zero
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=normalise, abs=abs_)
    theirs = quantus_scores(metric, attr, mask)
    ours, _ = relevance_mass(attr, mask, abs=abs_)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-4)


@needs_quantus
@pytest.mark.parametrize("abs_", [True, False])
def test_relevance_rank_agrees_with_quantus_without_ties(abs_: bool) -> None:
    attr, mask = rand_maps(64, size=12, seed=1)
    metric = quantus.RelevanceRankAccuracy(disable_warnings=True, normalise=False, abs=abs_)
    theirs = quantus_scores(metric, attr, mask)
    for ties in ("fraction", "first"):
        ours, _ = relevance_rank(attr, mask, abs=abs_, ties=ties)  # type: ignore[arg-type]
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-12)


@needs_quantus
def test_relevance_rank_with_ties_differs_from_quantus_only_through_tie_breaking() -> None:
    # Quantus ranks tied values by np.argsort's unstable order; benchbox's "fraction" is the
    # expectation over tie orders, so it lies between the worst and best tie breaks.
    attr, mask = rand_maps(64, size=8, seed=2, ties=True)
    metric = quantus.RelevanceRankAccuracy(disable_warnings=True, normalise=False, abs=False)
    theirs = quantus_scores(metric, attr, mask)
    best, _ = relevance_rank(attr + 1e-3 * mask.float(), mask)
    worst, _ = relevance_rank(attr - 1e-3 * mask.float(), mask)
    ours, _ = relevance_rank(attr, mask)
    assert (worst.numpy() <= theirs + 1e-12).all() and (theirs <= best.numpy() + 1e-12).all()
    assert (worst <= ours).all() and (ours <= best).all() and (worst < best).any()


@needs_quantus
@pytest.mark.parametrize(("k", "concept"), [(1000, False), (200, True)])
def test_topk_intersection_agrees_with_quantus(k: int, concept: bool) -> None:
    attr, mask = rand_maps(64, size=40, seed=3)  # 1600 pixels: Quantus requires k < N
    metric = quantus.TopKIntersection(
        k=k, concept_influence=concept, disable_warnings=True, normalise=True, abs=False
    )
    theirs = quantus_scores(metric, attr, mask)
    ours, _ = topk_intersection(attr, mask, k=k, concept_influence=concept)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'k' must be smaller than input size"):
        quantus_scores(quantus.TopKIntersection(k=1600, disable_warnings=True), attr, mask)
    assert values_of(topk_intersection, attr, mask, k=1600)[0] == pytest.approx(
        mask[0].float().mean().item()
    )


@needs_quantus
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_agrees_with_quantus_auc(ties: bool) -> None:
    attr, mask = rand_maps(64, size=12, seed=4, ties=ties)
    metric = quantus.AUC(disable_warnings=True, normalise=False, abs=False)
    theirs = quantus_scores(metric, attr, mask)
    ours, _ = auroc(attr, mask)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-6)


@needs_quantus
def test_quantus_empty_mask_cases() -> None:
    # Quantus returns NaN for an empty mask in these four metrics too (no deliberate difference).
    attr, mask = rand_maps(2, size=12, seed=5)
    mask[1] = False
    for metric in (
        quantus.RelevanceMassAccuracy(disable_warnings=True, normalise=False),
        quantus.RelevanceRankAccuracy(disable_warnings=True, normalise=False),
        quantus.TopKIntersection(k=10, disable_warnings=True, normalise=False),
    ):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Quantus warns about the empty segmentation
            theirs = quantus_scores(metric, attr, mask)
        assert math.isnan(theirs[1]) and math.isfinite(theirs[0])
