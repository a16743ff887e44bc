"""Similarity measures: scipy/skimage references, analytic cases, NaN reasons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata as sp_rankdata
from scipy.stats import spearmanr
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity as sk_ssim

from benchbox.metrics import similarity as S


def _maps(*shape: int, seed: int = 0, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related float32 maps ``[B, 1, *sp]`` with signed values and (optionally) tie blocks."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g)
    b = 0.6 * a + 0.8 * torch.randn(*shape, generator=g)
    if ties:
        a[0, 0, :3] = 0.25  # a block of tied values
        b[-1, 0, 1:4] = -0.5
    return a, b


# -- ranks and Spearman ---------------------------------------------------------------------------
def test_rankdata_matches_scipy_average_ties() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = np.stack([sp_rankdata(row) for row in x.numpy()])
    np.testing.assert_array_equal(S.rankdata(x).numpy(), expected)


@pytest.mark.parametrize("use_abs", [False, True])
def test_spearman_matches_scipy(use_abs: bool) -> None:
    a, b = _maps(5, 1, 12, 10)
    got = S.spearman(a, b, abs=use_abs)
    f = np.abs if use_abs else (lambda v: v)
    ref = [spearmanr(f(a[i].flatten().numpy()), f(b[i].flatten().numpy()))[0] for i in range(5)]
    assert got.dtype == torch.float64 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)


def test_spearman_analytic_cases() -> None:
    ramp = torch.arange(20.0).view(1, 1, 4, 5)
    assert S.spearman(ramp, ramp).item() == pytest.approx(1.0, abs=1e-12)
    assert S.spearman(ramp, -ramp).item() == pytest.approx(-1.0, abs=1e-12)
    # A monotone transform keeps the ranks.
    assert S.spearman(ramp, torch.exp(ramp / 3)).item() == pytest.approx(1.0, abs=1e-12)
    # abs folds the sign: -ramp and ramp have the same |.| ranking.
    assert S.spearman(ramp, -ramp, abs=True).item() == pytest.approx(1.0, abs=1e-12)


def test_spearman_constant_and_nonfinite_are_nan_with_reason() -> None:
    a, b = _maps(3, 1, 8, 8, ties=False)
    a[0] = 2.0  # constant map: no ranking
    b[2, 0, 0, 0] = math.nan
    values, reasons = S.similarity("spearman", a, b)
    assert math.isnan(values[0]) and reasons[0] == "constant attribution"
    assert not math.isnan(values[1]) and reasons[1] is None
    assert math.isnan(values[2]) and reasons[2] == "attribution has non-finite values"
    # |.| of a map with one sign flipped per pixel is constant too.
    c = torch.ones(1, 1, 4, 4)
    c[..., ::2, :] = -1
    values, reasons = S.similarity("spearman_abs", c, torch.rand(1, 1, 4, 4))
    assert math.isnan(values[0]) and reasons == ["constant attribution"]


# -- SSIM -----------------------------------------------------------------------------------------
def _sk_ssim(a: torch.Tensor, b: torch.Tensor, **kw: object) -> list[float]:
    out = []
    for x, y in zip(a[:, 0].double().numpy(), b[:, 0].double().numpy(), strict=True):
        rng = max(x.max(), y.max()) - min(x.min(), y.min())
        out.append(sk_ssim(x, y, data_range=rng, **kw))
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"gaussian_weights": True},
        {"gaussian_weights": True, "use_sample_covariance": False, "sigma": 1.5},
        {"win_size": 5},
    ],
    ids=["uniform7", "gaussian", "gaussian_population", "uniform5"],
)
def test_ssim_matches_skimage_2d(kw: dict[str, object]) -> None:
    a, b = _maps(4, 1, 23, 30)
    got = S.ssim(a, b, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), _sk_ssim(a, b, **kw), atol=1e-10)


def test_ssim_matches_skimage_1d_and_3d() -> None:
    a, b = _maps(3, 1, 9, 10, 11)
    np.testing.assert_allclose(S.ssim(a, b).numpy(), _sk_ssim(a, b), atol=1e-10)
    # Quantus' RandomLogit compares flattened maps: SSIM along one axis.
    fa, fb = a.reshape(3, 1, -1), b.reshape(3, 1, -1)
    np.testing.assert_allclose(S.ssim(fa, fb).numpy(), _sk_ssim(fa, fb), atol=1e-10)


def test_ssim_fixed_data_range_and_analytic_cases() -> None:
    a, b = _maps(2, 1, 16, 16)
    ref = [
        sk_ssim(x, y, data_range=4.0)
        for x, y in zip(a[:, 0].double().numpy(), b[:, 0].double().numpy(), strict=True)
    ]
    np.testing.assert_allclose(S.ssim(a, b, data_range=4.0).numpy(), ref, atol=1e-10)
    assert S.ssim(a, a).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    # SSIM is not scale-free: the dispatcher normalizes, the raw function does not.
    assert S.ssim(a, 10 * a).max().item() < 0.5
    v, _ = S.similarity("ssim", a, 10 * a)
    assert v.tolist() == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_errors_and_zero_range() -> None:
    a = torch.rand(1, 1, 6, 20)
    with pytest.raises(ValueError, match=r"smaller than the 7-px window"):
        S.ssim(a, a)
    with pytest.raises(ValueError, match="win_size must be odd"):
        S.ssim(a, a, win_size=4)
    values, reasons = S.similarity("ssim", a, a)
    assert math.isnan(values[0]) and "smaller than the 7-px window" in str(reasons[0])
    flat = torch.full((1, 1, 8, 8), 0.5)
    values, reasons = S.similarity("ssim", flat, flat)
    assert math.isnan(values[0]) and reasons == ["zero data range"]


# -- HOG ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "ppc", "orientations", "cpb"),
    [((64, 64), 8, 9, 3), ((64, 56), 8, 9, 3), ((40, 35), 7, 9, 3), ((48, 48), 6, 7, 2)],
)
def test_hog_matches_skimage(size: tuple[int, int], ppc: int, orientations: int, cpb: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, *size, generator=g, dtype=torch.float64)
    x[1] = torch.linspace(0, 1, size[1], dtype=torch.float64)  # axis-aligned gradients: bin edges
    got = S.hog(x, pixels_per_cell=ppc, orientations=orientations, cells_per_block=cpb)
    ref = np.stack(
        [
            sk_hog(
                img[0].numpy(),
                orientations=orientations,
                pixels_per_cell=(ppc, ppc),
                cells_per_block=(cpb, cpb),
            )
            for img in x
        ]
    )
    # skimage sums cells in a C float: 1e-7 relative.
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-6)


def test_hog_pearson_matches_skimage_and_analytic() -> None:
    a, b = _maps(3, 1, 32, 40)
    ref = [
        np.corrcoef(sk_hog(x.double().numpy()), sk_hog(y.double().numpy()))[0, 1]
        for x, y in zip(a[:, 0], b[:, 0], strict=True)
    ]
    np.testing.assert_allclose(S.hog_pearson(a, b).numpy(), ref, atol=1e-6)
    assert S.hog_pearson(a, a).tolist() == pytest.approx([1.0] * 3, abs=1e-12)


def test_hog_pearson_undefined_cases() -> None:
    flat = torch.zeros(1, 1, 32, 32)
    values, reasons = S.similarity("hog_pearson", flat, torch.rand(1, 1, 32, 32))
    assert math.isnan(values[0]) and reasons == ["constant HOG features"]
    values, reasons = S.similarity(
        "hog_pearson", torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    )
    assert values.isnan().all() and reasons == ["hog_pearson is defined for 2D maps only"] * 2
    with pytest.raises(ValueError, match=r"smaller than one block \(24x24 px"):
        S.hog(torch.rand(1, 1, 16, 40))


# -- top-k ----------------------------------------------------------------------------------------
def test_topk_without_ties_is_the_set_intersection() -> None:
    a, b = _maps(4, 1, 10, 10, ties=False)
    k = 13
    got = S.topk_intersection(a, b, k)
    for i in range(4):
        ta = set(torch.topk(a[i].abs().flatten(), k).indices.tolist())
        tb = set(torch.topk(b[i].abs().flatten(), k).indices.tolist())
        assert got[i].item() == pytest.approx(len(ta & tb) / k, abs=1e-12)


def test_topk_ties_are_fractional_members() -> None:
    # |a| = [3, 2, 2, 1]: the top 2 are pixel 0 and half of each of pixels 1, 2; b's top 2 are
    # pixels 1 and 3, so the intersection is min(1/2, 1) = 1/2 of a pixel: 1/4 of k.
    a = torch.tensor([3.0, -2.0, 2.0, 1.0]).view(1, 1, 1, 4)
    b = torch.tensor([0.0, 5.0, 0.0, 4.0]).view(1, 1, 1, 4)
    assert S.topk_intersection(a, b, 2).item() == pytest.approx(0.25, abs=1e-12)
    # Tied at the k-th value, a map still scores 1 against itself.
    assert S.topk_intersection(a, a, 2).item() == 1.0
    # A constant map scores chance, k / N, against anything.
    flat = torch.ones(2, 1, 8, 8)
    other, _ = _maps(2, 1, 8, 8, ties=False)
    assert S.topk_intersection(flat, other, 16).tolist() == pytest.approx([0.25, 0.25], abs=1e-12)
    assert S.topk_intersection(other, other, 16).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"k must be in \[1, 64\]"):
        S.topk_intersection(flat, other, 65)


def test_topk_fraction_and_nonfinite() -> None:
    a, b = _maps(2, 1, 10, 10, ties=False)
    got, reasons = S.similarity("topk", a, b, topk_fraction=0.1)
    np.testing.assert_allclose(got.numpy(), S.topk_intersection(a, b, 10).numpy())
    assert reasons == [None, None]
    a[1, 0, 0, 0] = math.inf
    got, reasons = S.similarity("topk", a, b)
    assert math.isnan(got[1]) and reasons[1] == "attribution has non-finite values"


# -- shared contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", S.SIMILARITIES)
def test_batched_equals_per_sample_and_shapes(name: S.Similarity) -> None:
    a, b = _maps(4, 1, 32, 32)
    values, reasons = S.similarity(name, a, b)
    assert values.shape == (4,) and values.dtype == torch.float64 and len(reasons) == 4
    singles = torch.cat([S.similarity(name, a[i : i + 1], b[i : i + 1])[0] for i in range(4)])
    torch.testing.assert_close(values, singles, rtol=0, atol=1e-12)
    same, _ = S.similarity(name, a, a)
    assert same.tolist() == pytest.approx([1.0] * 4, abs=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"maps must have one shape"):
        S.spearman(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"expected maps of shape \[B, 1, \*spatial\]"):
        S.ssim(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown measure 'pearson'"):
        S.similarity("pearson", torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))  # type: ignore[arg-type]
