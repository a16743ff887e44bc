"""Similarity of two attribution maps, batched: the measures of the sanity checks.

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018) compare the map of a trained
model with the map of a randomized one by Spearman rank correlation (with and without absolute
values), SSIM and the Pearson correlation of HOG features; Ghorbani et al., "Interpretation of
Neural Networks is Fragile" (AAAI 2019) by the intersection of the top-k features. The same
measures serve the randomization tests, repeatability and the robustness/adversarial metrics, so
they live here once, as pure functions on maps ``a``, ``b`` ``[B, 1, *sp]`` giving ``[B]``
(float64, on the inputs' device, no per-sample Python loop):

- ``spearman(a, b, *, abs=False)``: Pearson correlation of the average ranks (ties get the mean
  of the ranks they span, as ``scipy.stats.rankdata``); ``abs=True`` ranks ``|a|`` and ``|b|``.
- ``ssim(a, b)``: mean structural similarity, ``skimage.metrics.structural_similarity``'s
  algorithm and defaults (7-px uniform window, sample covariance, K1 0.01, K2 0.03, symmetric
  ``reflect`` borders, the window's radius cropped before the mean), for any number of spatial
  dims; ``data_range=None`` takes each pair's joint range ``max(a, b) − min(a, b)`` (Quantus).
- ``hog_pearson(a, b)``: Pearson correlation of ``hog(a)`` and ``hog(b)``, the HOG features of
  ``skimage.feature.hog`` at its defaults (9 orientations, 8-px cells, 3×3-cell blocks, L2-Hys).
  2D maps only.
- ``topk_intersection(a, b, k)``: ``|T_a ∩ T_b| / k`` with ``T`` the k pixels of largest
  ``|value|``; pixels tied at the k-th value are members by the share of the remaining places
  they would get under random tie-breaking (so a constant map scores the chance level ``k / N``,
  not an artefact of memory order, and a map scores 1 against itself).

``similarity(name, a, b, ...)`` dispatches by the variant names the metrics store (``spearman``,
``spearman_abs``, ``ssim``, ``hog_pearson``, ``topk``), max-normalizes the maps where the measure
is not scale-free, and returns the per-sample reasons for NaN:

- a map with a NaN/inf value → NaN, ``"attribution has non-finite values"`` (every measure);
- Spearman of a constant map (no ranking) → NaN, ``"constant attribution"``;
- HOG-Pearson of a map whose HOG features are constant (a flat map has no gradients) → NaN,
  ``"constant HOG features"``;
- SSIM of two equal constant maps (joint data range 0) → NaN, ``"zero data range"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from .toolkit import REASON_NONFINITE, finite_rows

__all__ = [
    "SIMILARITIES",
    "Similarity",
    "hog",
    "hog_pearson",
    "max_normalize",
    "pearson",
    "rankdata",
    "similarity",
    "spearman",
    "ssim",
    "topk_intersection",
]

Similarity = Literal["spearman", "spearman_abs", "ssim", "hog_pearson", "topk"]
SIMILARITIES: tuple[Similarity, ...] = get_args(Similarity)

REASON_CONSTANT = "constant attribution"
REASON_HOG_CONSTANT = "constant HOG features"
REASON_ZERO_RANGE = "zero data range"


# -- shared plumbing ------------------------------------------------------------------------------
def _pair(a: Tensor, b: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check ``[B, 1, *sp]`` maps of one shape; return them as float64 ``[B, *sp]``."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: maps must have one shape, got {list(a.shape)} and {list(b.shape)}"
        )
    if a.dim() < 3 or a.shape[1] != 1:
        raise ValueError(f"{name}: expected maps of shape [B, 1, *spatial], got {list(a.shape)}")
    return a[:, 0].double(), b[:, 0].double()


def _nan_where(values: Tensor, bad: Tensor) -> Tensor:
    return torch.where(bad, torch.full_like(values, math.nan), values)


def max_normalize(a: Tensor) -> Tensor:
    """``a / max|a|`` per sample (``[B, ...]``); an all-zero map stays zero.

    Adebayo et al.'s ``diverging_norm`` (sign kept). SSIM and HOG compare values, not ranks, so a
    map and a 1000× rescaled copy would differ; after this they do not.
    """
    scale = a.abs().reshape(a.shape[0], -1).amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return a / scale.view(-1, *([1] * (a.dim() - 1)))


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``x``, ``y`` ``[B, N]`` → float64 ``[B]``.

    NaN where a row has zero variance (the correlation is 0/0).
    """
    x, y = x.double(), y.double()
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    safe = torch.where(den > 0, den, torch.ones_like(den))
    # Centred sums can lose a few ulps; keep the result inside [-1, 1].
    r = ((xc * yc).sum(dim=1) / safe).clamp(-1.0, 1.0)
    return _nan_where(r, den == 0)


def rankdata(x: Tensor) -> Tensor:
    """Average ranks (1-based) along the last axis of ``x`` ``[B, N]``, as ``scipy.stats.rankdata``.

    Tied values share the mean of the ranks they span: on the sorted row, a value's tie group is
    ``[searchsorted(left), searchsorted(right))``, so its rank is the mean of those bounds + 1/2.
    """
    v, order = torch.sort(x, dim=1, stable=True)
    lo = torch.searchsorted(v, v, side="left")
    hi = torch.searchsorted(v, v, side="right")
    avg = (lo + hi + 1).double() / 2.0
    return torch.empty_like(avg).scatter_(1, order, avg)


# -- Spearman -------------------------------------------------------------------------------------
def spearman(a: Tensor, b: Tensor, *, abs: bool = False) -> Tensor:
    """Spearman rank correlation of each pair of maps ``a``, ``b`` ``[B, 1, *sp]`` → ``[B]``.

    ``ρ = pearson(rank(a), rank(b))`` over the flattened pixels, with average ranks for ties
    (``scipy.stats.spearmanr``). ``abs=True`` ranks ``|a|``, ``|b|`` (Adebayo et al.'s "Spearman
    rank correlation of absolute values"; Quantus' MPRT default). NaN for a constant map (after
    ``abs``) and for a map with non-finite values.
    """
    x, y = _pair(a, b, "spearman")
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    if abs:
        x, y = x.abs(), y.abs()
    x, fx = finite_rows(x)
    y, fy = finite_rows(y)
    return _nan_where(pearson(rankdata(x), rankdata(y)), ~(fx & fy))


# -- SSIM -----------------------------------------------------------------------------------------
def _reflect_index(n: int, pad: int, device: torch.device) -> Tensor:
    """Indices of a length-``n`` axis padded by ``pad`` on each side, mirrored with the edge
    repeated (``d c b a | a b c d | d c b a``: scipy.ndimage's ``reflect``), for any ``pad``."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable correlation of ``x`` ``[B, *sp]`` with the odd 1-D ``kernel`` along every spatial
    axis, borders mirrored as scipy.ndimage's ``reflect`` (``uniform_filter``/``gaussian_filter``).
    """
    pad = kernel.numel() // 2
    w = kernel.to(x).view(1, 1, -1)
    for dim in range(1, x.dim()):
        n = x.shape[dim]
        xp = x.index_select(dim, _reflect_index(n, pad, x.device)).movedim(dim, -1)
        lead = xp.shape[:-1]
        out = F.conv1d(xp.reshape(-1, 1, n + 2 * pad), w).reshape(*lead, n)
        x = out.movedim(-1, dim)
    return x


def ssim(
    a: Tensor,
    b: Tensor,
    *,
    data_range: float | Tensor | None = None,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean structural similarity of each pair of maps ``a``, ``b`` ``[B, 1, *sp]`` → ``[B]``.

    Wang et al., "Image quality assessment: from error visibility to structural similarity",
    IEEE TIP 2004; the algorithm and defaults of ``skimage.metrics.structural_similarity``::

        SSIM = mean_p [(2 μa μb + C1)(2 σab + C2)] / [(μa² + μb² + C1)(σa² + σb² + C2)]

    with local means/(co)variances from a ``win_size``-px window (uniform, 7 px; or Gaussian with
    ``sigma`` 1.5 truncated at 3.5 σ → 11 px), ``C1 = (k1 R)²``, ``C2 = (k2 R)²``, the sample
    covariance ``NP/(NP−1)`` (``NP = win_size^ndim``) unless ``use_sample_covariance=False``
    (Wang et al.'s Gaussian setting), and the ``(win_size − 1)/2`` border cropped before the mean.
    Works for 1-, 2- and 3-D maps (a flattened map is ``[B, 1, N]``: Quantus' RandomLogit).

    Args:
        data_range: ``R``; None → each pair's joint range ``max(a, b) − min(a, b)`` (Quantus'
            ``ssim``), a float or a ``[B]`` tensor otherwise. SSIM is not scale-free: compare
            maps of one scale (see ``max_normalize``). ``R = 0`` (two equal constant maps) → NaN.

    Raises:
        ValueError: a spatial side is shorter than the window, or ``win_size`` is even.
    """
    x, y = _pair(a, b, "ssim")
    bsz, nd = x.shape[0], x.dim() - 1
    truncate = 3.5
    if win_size is None:
        win_size = 2 * int(truncate * sigma + 0.5) + 1 if gaussian_weights else 7
    if win_size % 2 != 1:
        raise ValueError(f"ssim: win_size must be odd, got {win_size}")
    if min(x.shape[1:]) < win_size:
        raise ValueError(
            f"ssim: maps of spatial size {list(x.shape[1:])} are smaller than the {win_size}-px "
            "window; pass a smaller odd win_size"
        )
    x, fx = finite_rows(x)
    y, fy = finite_rows(y)
    if gaussian_weights:
        r = int(truncate * sigma + 0.5)
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        if kernel.numel() != win_size:
            # scipy's gaussian_filter fixes its own support; another window would only change
            # the crop, which skimage allows but which mixes two settings.
            raise ValueError(
                f"ssim: with gaussian_weights the window is {kernel.numel()} px for sigma "
                f"{sigma}, got win_size {win_size}"
            )
    else:
        kernel = torch.ones(win_size, dtype=torch.float64)
    kernel = kernel / kernel.sum()
    if data_range is None:
        flat = torch.cat([x.reshape(bsz, -1), y.reshape(bsz, -1)], dim=1)
        rng = flat.amax(dim=1) - flat.amin(dim=1)
    else:
        rng = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).expand(bsz)
    shape = (bsz, *([1] * nd))
    c1 = ((k1 * rng) ** 2).view(shape)
    c2 = ((k2 * rng) ** 2).view(shape)
    npx = win_size**nd
    cov_norm = npx / (npx - 1) if use_sample_covariance else 1.0
    ux, uy = _filter(x, kernel), _filter(y, kernel)
    uxx, uyy, uxy = _filter(x * x, kernel), _filter(y * y, kernel), _filter(x * y, kernel)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    for dim in range(1, nd + 1):
        s = s.narrow(dim, pad, s.shape[dim] - 2 * pad)
    values = s.reshape(bsz, -1).mean(dim=1)
    return _nan_where(values, ~(fx & fy) | (rng == 0))


# -- HOG ------------------------------------------------------------------------------------------
def hog(
    x: Tensor, *, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 3
) -> Tensor:
    """HOG features of 2D maps ``x`` ``[B, 1, H, W]`` → ``[B, F]``, as ``skimage.feature.hog``.

    Dalal & Triggs, CVPR 2005, in scikit-image's variant (``block_norm='L2-Hys'``, no Gaussian
    cell window, ``transform_sqrt=False``): centred differences ``x[i+1] − x[i−1]`` (0 on the
    border rows/columns), magnitude-weighted votes into ``orientations`` unsigned bins over
    [0°, 180°) — bin ``i`` is ``[180 i/n, 180 (i+1)/n)`` with the edges rounded to float32 as in
    skimage's Cython — summed over square cells, then each ``cells_per_block``² block of cells is
    L2-normalized, clipped at 0.2 and L2-normalized again (ε = 1e-5). Features are ordered as
    skimage's ``feature_vector`` (block row, block column, cell row, cell column, orientation).

    Cells are the ``c × c`` tiles from the top-left corner (checked against skimage for odd and
    even ``c``); pixels beyond the last full cell are ignored, as in skimage.

    Raises:
        ValueError: not a 2D map, or smaller than one block (``cells_per_block · pixels_per_cell``).
    """
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"hog: expected 2D maps of shape [B, 1, H, W], got {list(x.shape)}")
    img = x[:, 0].double()
    bsz, h, w = img.shape
    c, nb = pixels_per_cell, cells_per_block
    ncr, ncc = h // c, w // c
    if ncr < nb or ncc < nb:
        raise ValueError(
            f"hog: maps of size {h}x{w} are smaller than one block ({nb * c}x{nb * c} px with "
            f"{c}-px cells and {nb}x{nb}-cell blocks)"
        )
    g_row = torch.zeros_like(img)
    g_col = torch.zeros_like(img)
    g_row[:, 1:-1, :] = img[:, 2:, :] - img[:, :-2, :]
    g_col[:, :, 1:-1] = img[:, :, 2:] - img[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    angle = torch.atan2(g_row, g_col) * (180 / math.pi) % 180
    # skimage compares with C floats: bin i is [float32(180/n·i), float32(180/n·(i+1))).
    starts = (180.0 / orientations * torch.arange(1, orientations + 1, dtype=torch.float64)).float()
    bins = torch.searchsorted(starts.double().to(img.device), angle.contiguous(), right=True)
    votes = torch.zeros(bsz, orientations, h, w, dtype=torch.float64, device=img.device)
    votes.scatter_(1, bins.clamp_max(orientations - 1).unsqueeze(1), magnitude.unsqueeze(1))
    votes = votes[:, :, : ncr * c, : ncc * c].reshape(bsz, orientations, ncr, c, ncc, c)
    hist = votes.sum(dim=(3, 5)).permute(0, 2, 3, 1)  # [B, cell row, cell col, orientation]
    blocks = hist.unfold(1, nb, 1).unfold(2, nb, 1)  # [B, nbr, nbc, O, nb(row), nb(col)]
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)  # [B, nbr, nbc, nb(row), nb(col), O]
    eps = 1e-5
    dims = (3, 4, 5)
    out = blocks / torch.sqrt((blocks**2).sum(dim=dims, keepdim=True) + eps**2)
    out = out.clamp_max(0.2)
    out = out / torch.sqrt((out**2).sum(dim=dims, keepdim=True) + eps**2)
    return out.reshape(bsz, -1)


def hog_pearson(
    a: Tensor,
    b: Tensor,
    *,
    orientations: int = 9,
    pixels_per_cell: int = 8,
    cells_per_block: int = 3,
) -> Tensor:
    """Pearson correlation of the HOG features of each pair of 2D maps ``[B, 1, H, W]`` → ``[B]``.

    Adebayo et al. 2018's fourth similarity; ``hog`` at skimage's defaults (the paper does not
    give its HOG parameters). HOG is nearly scale-free but not exactly (ε in the block norm):
    compare maps of one scale (see ``max_normalize``). NaN when a map's features are constant (a
    flat map) or the map has non-finite values.
    """
    x, y = _pair(a, b, "hog_pearson")
    x, fx = finite_rows(x)
    y, fy = finite_rows(y)
    kw = {
        "orientations": orientations,
        "pixels_per_cell": pixels_per_cell,
        "cells_per_block": cells_per_block,
    }
    r = pearson(hog(x.unsqueeze(1), **kw), hog(y.unsqueeze(1), **kw))
    return _nan_where(r, ~(fx & fy))


# -- top-k intersection ---------------------------------------------------------------------------
def _topk_membership(x: Tensor, k: int) -> Tensor:
    """Membership of each pixel of ``x`` ``[B, N]`` in the k largest: 1 above the k-th value,
    ``(k − #above) / #tied`` at it (its probability under uniformly random tie-breaking), 0
    below. Memberships sum to k."""
    kth = torch.topk(x, k, dim=1).values[:, -1:]
    above = x > kth
    tied = x == kth
    share = (k - above.sum(dim=1, keepdim=True)).double() / tied.sum(dim=1, keepdim=True).double()
    return torch.where(above, 1.0, torch.where(tied, share, 0.0)).double()


def topk_intersection(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Top-k intersection ``|T_a ∩ T_b| / k`` of each pair of maps ``[B, 1, *sp]`` → ``[B]``.

    ``T`` = the k pixels of largest ``|value|`` (Ghorbani et al. 2019). Pixels tied at the k-th
    value are fractional members ``m_p = (k − #above) / #tied`` (their probability of being kept
    under uniformly random tie-breaking), and the intersection of these fuzzy sets is
    ``Σ_p min(m_a(p), m_b(p)) / k``. Without ties at the k-th value this is the plain
    intersection; a map scores 1 against itself; a constant map scores the chance level ``k / N``
    against any map (not whatever memory order would pick). NaN for a map with non-finite values.

    Raises:
        ValueError: ``k`` is not in ``[1, N]``.
    """
    x, y = _pair(a, b, "topk_intersection")
    x, y = x.reshape(x.shape[0], -1).abs(), y.reshape(y.shape[0], -1).abs()
    n = x.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"topk_intersection: k must be in [1, {n}] (the map's size), got {k}")
    x, fx = finite_rows(x)
    y, fy = finite_rows(y)
    values = torch.minimum(_topk_membership(x, k), _topk_membership(y, k)).sum(dim=1) / k
    return _nan_where(values, ~(fx & fy))


# -- dispatch by variant name ---------------------------------------------------------------------
def _reasons(
    values: Tensor, checks: Sequence[tuple[Tensor, str]], fallback: str
) -> list[str | None]:
    """Per-sample reason for each NaN: the first ``(flags [B], reason)`` that holds, else
    ``fallback``."""
    nan = torch.isnan(values).tolist()
    flags = [c.tolist() for c, _ in checks]
    out: list[str | None] = []
    for i, is_nan in enumerate(nan):
        if not is_nan:
            out.append(None)
            continue
        out.append(next((r for f, (_, r) in zip(flags, checks, strict=True) if f[i]), fallback))
    return out


def similarity(
    name: Similarity,
    a: Tensor,
    b: Tensor,
    *,
    topk_fraction: float = 0.02,
    normalize: bool = True,
) -> tuple[Tensor, list[str | None]]:
    """The similarity ``name`` of each pair of maps ``[B, 1, *sp]``: float64 ``[B]`` and reasons.

    Args:
        name: ``spearman``, ``spearman_abs``, ``ssim``, ``hog_pearson`` or ``topk``.
        topk_fraction: for ``topk``, ``k = max(1, round(fraction · N))`` of the N pixels.
        normalize: for ``ssim`` and ``hog_pearson``, divide each map by its ``max|a|`` first
            (``max_normalize``) so a rescaled map is the same map; the rank measures are
            scale-free anyway.

    ``hog_pearson`` of 3D maps is NaN with the reason ``"hog_pearson is defined for 2D maps
    only"``; ``ssim`` of maps smaller than its window and ``hog_pearson`` of maps smaller than one
    HOG block are NaN with the measure's message as the reason.
    """
    bsz = a.shape[0]
    finite = torch.isfinite(a).reshape(bsz, -1).all(dim=1) & torch.isfinite(b).reshape(bsz, -1).all(
        dim=1
    )
    checks: list[tuple[Tensor, str]] = [(~finite, REASON_NONFINITE)]
    fn: Callable[[Tensor, Tensor], Tensor]
    if name in ("spearman", "spearman_abs"):
        use_abs = name == "spearman_abs"
        values = spearman(a, b, abs=use_abs)
        return values, _reasons(values, checks, REASON_CONSTANT)
    if name == "topk":
        n = math.prod(a.shape[2:])
        k = min(n, max(1, round(topk_fraction * n)))
        values = topk_intersection(a, b, k)
        return values, _reasons(values, checks, REASON_NONFINITE)
    if name == "ssim":
        fn, fallback = ssim, REASON_ZERO_RANGE
    elif name == "hog_pearson":
        if a.dim() != 4:
            nan = torch.full((bsz,), math.nan, dtype=torch.float64, device=a.device)
            return nan, ["hog_pearson is defined for 2D maps only"] * bsz
        fn, fallback = hog_pearson, REASON_HOG_CONSTANT
    else:
        raise ValueError(f"similarity: unknown measure {name!r}; expected one of {SIMILARITIES}")
    if normalize:
        a, b = max_normalize(a.double()), max_normalize(b.double())
    try:
        values = fn(a, b)
    except ValueError as exc:  # the map is smaller than the window or block: undefined
        nan = torch.full((bsz,), math.nan, dtype=torch.float64, device=a.device)
        return nan, [str(exc)] * bsz
    return values, _reasons(values, checks, fallback)
