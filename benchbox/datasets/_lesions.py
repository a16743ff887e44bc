"""Shared image-synthesis helpers: lesion insertion, resampling grids, smooth fields, MR noise.

One concept, one place: the brain (2D and 3D) and CT datasets insert lesions with the same code,
for 2D ``[B, H, W]`` and 3D ``[B, D, H, W]`` images alike (``d`` = number of spatial dims).

A lesion is a soft-edged ellipse/ellipsoid, optionally lobulated, with a textured intensity change::

    q      = diag(1/a) R^T (p - c)                  (lesion frame; a = semi-axes, R = rotation)
    dist   = |q| / L(q / |q|)                       (L = 1, or the lobulation below)
    w(p)   = sigmoid((1 - dist) * r / edge)         (soft support, ``edge`` pixels wide)
    img   += s * C * w(p) * (1 + texture * t(p)) * inside(p)

with ``s`` = -1 (hypo-intense) or +1 (hyper-intense), ``C`` the contrast, ``t`` a smooth
unit-variance noise field and ``inside`` a soft organ mask (lesions stop at the organ's border).
The lobulation is a sum of random Fourier features on the unit sphere,
``L(n) = 1 + lobulation * sum_j sin(3 n.v_j + phi_j) / sqrt(J)``, which works in any dimension.
The ground-truth mask is ``max_k w_k(p) * inside(p) >= 1/2``; the pixel that holds a lesion's
centre always belongs to it, so a positive never has an empty mask.

Every random number comes from per-sample draws passed in by the caller (uniforms ``[B, K, P]``
with the fixed layout ``LESION_U``), so a sample is identical whichever batch renders it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Batch, Dataset, Split
from ..errors import UserError
from ..seeding import derive_seed

__all__ = [
    "LESION_U",
    "MAX_LESIONS",
    "N_LESION_U",
    "LesionDataset",
    "Polarity",
    "Shape",
    "depth",
    "erode",
    "insert_lesions",
    "pixel_grid",
    "rician",
    "rotation_matrices",
    "sample_points",
    "smooth_field",
]

Polarity = Literal["hypo", "hyper", "mixed"]
Shape = Literal["ellipsoid", "lobulated"]

MAX_LESIONS = 8  # draws are always made for this many, so `max_lesions` never shifts the stream
_LOBES = 3  # Fourier features of the lobulation
_LOBE_FREQ = 3.0
# Per-lesion uniforms (fixed layout; parameters never change which number means what).
LESION_U = {
    "place": 0,  # which candidate pixel holds the centre
    "jitter": 1,  # 3 values: sub-pixel offset of the centre
    "radius": 4,  # equivalent radius in [radius_min, radius_max]
    "ratio": 5,  # 2 values: axis ratios
    "rotation": 7,  # 3 values
    "contrast": 10,
    "polarity": 11,
    "lobe_dir": 12,  # 2 * _LOBES values: directions of the Fourier features
    "lobe_phase": 18,  # _LOBES values
}
N_LESION_U = 21


def pixel_grid(spatial: tuple[int, ...]) -> Tensor:
    """Pixel-centre coordinates ``[*spatial, d]`` in index units (axis order as ``spatial``)."""
    axes = [torch.arange(n, dtype=torch.float32) for n in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def smooth_field(z: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Upsample low-resolution normals ``[B, side**d]`` to a smooth field ``[B, *spatial]``.

    Bilinear/trilinear (``align_corners=False``) interpolation of an i.i.d. ``N(0, 1)`` grid; the
    result is rescaled to unit standard deviation per sample, so amplitudes mean what they say.
    """
    d = len(spatial)
    side = round(z.shape[1] ** (1 / d))
    lowres = z.reshape(-1, 1, *([side] * d))
    mode = "bilinear" if d == 2 else "trilinear"
    up = F.interpolate(lowres, size=spatial, mode=mode, align_corners=False)[:, 0]
    dims = tuple(range(1, d + 1))
    up = up - up.mean(dim=dims, keepdim=True)
    return up / up.std(dim=dims, keepdim=True).clamp_min(1e-6)


def rician(img: Tensor, sigma: Tensor | float, n1: Tensor, n2: Tensor) -> Tensor:
    """Magnitude of a complex signal with Gaussian noise in both channels (MR noise model).

    ``sqrt((img + sigma n1)^2 + (sigma n2)^2)`` with ``n1, n2 ~ N(0, 1)`` shaped like ``img``;
    the background gets the Rayleigh noise floor ``sigma sqrt(pi / 2)`` of real magnitude images.
    """
    return torch.sqrt((img + sigma * n1).square() + (sigma * n2).square())


def erode(mask: Tensor, radius: int) -> Tensor:
    """Binary erosion of ``[B, *spatial]`` bool masks by a (2r+1)-wide square/cube."""
    if radius <= 0:
        return mask
    d = mask.dim() - 1
    pool = F.max_pool2d if d == 2 else F.max_pool3d
    k = 2 * radius + 1
    outside = (~mask).float().unsqueeze(1)
    # Pixels beyond the image count as inside, so a mask touching the border is not eaten away.
    return ~pool(outside, k, stride=1, padding=radius)[:, 0].bool()


def sample_points(candidates: Tensor, u: Tensor) -> Tensor:
    """Pixel coordinates ``[B, K, d]`` of candidate pixels chosen by uniforms ``u`` ``[B, K]``.

    ``candidates`` is bool ``[B, K, *spatial]`` (one set per point). Point k of sample b is the
    ``floor(u * n)``-th of the ``n`` candidate pixels (row-major order), i.e. uniform over the
    candidates, without a per-sample loop. A point with no candidate may go anywhere.
    """
    b, k, spatial = candidates.shape[0], candidates.shape[1], tuple(candidates.shape[2:])
    flat = candidates.reshape(b, k, -1)
    flat = flat | ~flat.any(-1, keepdim=True)  # no candidate anywhere: the whole image
    counts = flat.sum(-1)  # [B, K]
    cum = flat.long().cumsum(-1)  # [B, K, N]
    rank = (u * counts).floor().long().minimum(counts - 1) + 1  # 1-based rank [B, K]
    linear = torch.searchsorted(cum, rank.unsqueeze(-1))[..., 0]  # first pixel reaching rank
    coords = []
    for n in reversed(spatial):
        coords.append(linear % n)
        linear = linear // n
    return torch.stack(coords[::-1], dim=-1).float()


def depth(mask: Tensor, max_depth: int) -> Tensor:
    """Chessboard distance to the outside of ``mask`` ``[B, *spatial]``, capped at ``max_depth``.

    ``0`` outside, ``1`` on the mask's rim, ``j`` where the pixel survives ``j - 1`` erosions by a
    3-wide square (cube); long, same shape.
    """
    out = mask.long()
    current = mask
    for j in range(2, max_depth + 1):
        current = erode(current, 1)
        if not current.any():
            break
        out = torch.where(current, j, out)
    return out


def rotation_matrices(u: Tensor, d: int) -> Tensor:
    """Uniformly random rotations ``[..., d, d]`` from uniforms ``[..., 3]``.

    2D: angle ``2 pi u_0``. 3D: Shoemake's unit quaternion from three uniforms (Graphics Gems
    III, 1992), uniform on SO(3).
    """
    if d == 2:
        t = 2 * math.pi * u[..., 0]
        c, s = torch.cos(t), torch.sin(t)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    u1, u2, u3 = u[..., 0], 2 * math.pi * u[..., 1], 2 * math.pi * u[..., 2]
    a, b = torch.sqrt(1 - u1), torch.sqrt(u1)
    w, x, y, z = a * torch.sin(u2), a * torch.cos(u2), b * torch.sin(u3), b * torch.cos(u3)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _unit_vectors(u: Tensor, d: int) -> Tensor:
    """Uniform directions ``[..., d]`` from uniforms ``[..., 2]``."""
    phi = 2 * math.pi * u[..., 0]
    if d == 2:
        return torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    z = 2 * u[..., 1] - 1
    r = torch.sqrt((1 - z * z).clamp_min(0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def insert_lesions(
    img: Tensor,
    u: Tensor,
    count: Tensor,
    candidates: Tensor,
    inside: Tensor,
    texture_field: Tensor,
    *,
    radius: tuple[float, float],
    contrast: tuple[float, float],
    polarity: Polarity,
    shape: Shape,
    texture: float,
    lobulation: float = 0.3,
    edge: float = 0.5,
    max_lesions: int = MAX_LESIONS,
) -> tuple[Tensor, Tensor]:
    """Add ``count[b]`` lesions to each image; returns ``(img, mask)``, both ``[B, *spatial]``.

    Args:
        img: float ``[B, *spatial]``; intensities in any unit (``contrast`` is in the same unit).
        u: uniforms ``[B, MAX_LESIONS, N_LESION_U]`` (layout ``LESION_U``).
        count: long ``[B]``, lesions per sample (0 for label 0), at most ``max_lesions``.
        candidates: bool ``[B, *spatial]``, the tissue lesions belong to (e.g. white matter);
            a centre goes where this region is at least the lesion's radius deep (chessboard
            distance), or in its deepest pixels.
        inside: float ``[B, *spatial]`` in [0, 1]: the organ; lesions are faded by it.
        texture_field: ``[B, *spatial]``, unit-variance smooth noise modulating the contrast.
        radius: (min, max) equivalent radius in pixels, ``(prod of semi-axes)^(1/d)``; semi-axes
            are the radius times axis ratios in [0.6, 1] (renormalised), so the area is
            ``pi r^2`` (volume ``4/3 pi r^3``) for an ellipsoid.
        contrast: (min, max) absolute intensity change at the lesion centre.
        polarity: ``hypo`` darkens, ``hyper`` brightens, ``mixed`` picks one per lesion.
        shape: ``ellipsoid`` or ``lobulated`` (boundary radius modulated by ``lobulation``).
        texture: relative standard deviation of the contrast inside the lesion.
        edge: width of the soft edge in pixels.
        max_lesions: how many of the draws are rendered (only a speed bound; must be >= count).
    """
    # Only samples with lesions are rendered (the others keep their image and an empty mask).
    rows = (count > 0).nonzero()[:, 0]
    out, mask = img.clone(), torch.zeros(img.shape, dtype=torch.bool)
    if rows.numel():
        out[rows], mask[rows] = _insert(
            img[rows],
            u[rows],
            count[rows],
            candidates[rows],
            inside[rows],
            texture_field[rows],
            radius=radius,
            contrast=contrast,
            polarity=polarity,
            shape=shape,
            texture=texture,
            lobulation=lobulation,
            edge=edge,
            max_lesions=max_lesions,
        )
    return out, mask


def _insert(
    img: Tensor,
    u: Tensor,
    count: Tensor,
    candidates: Tensor,
    inside: Tensor,
    texture_field: Tensor,
    *,
    radius: tuple[float, float],
    contrast: tuple[float, float],
    polarity: Polarity,
    shape: Shape,
    texture: float,
    lobulation: float,
    edge: float,
    max_lesions: int,
) -> tuple[Tensor, Tensor]:
    b, spatial, d = img.shape[0], tuple(img.shape[1:]), img.dim() - 1
    k = max(1, min(max_lesions, MAX_LESIONS))
    u = u[:, :k]
    active = torch.arange(k).view(1, k) < count.view(b, 1)  # [B, K]

    def col(name: str, n: int = 1) -> Tensor:
        return u[..., LESION_U[name] : LESION_U[name] + n]

    r = radius[0] + (radius[1] - radius[0]) * col("radius")  # [B, K, 1]
    # Centres go where the candidate region is at least a radius deep, so that a lesion lies in
    # the tissue it is defined against; where no pixel is that deep, in the deepest pixels.
    organ = inside.reshape(b, -1)
    none = ~candidates.reshape(b, -1).any(1)
    candidates = torch.where(none.view(b, *([1] * d)), inside > 0.5, candidates)
    deep = depth(candidates, math.ceil(radius[1]) + 1).reshape(b, 1, -1)  # [B, 1, N]
    need = torch.minimum(r.ceil().long(), deep.amax(-1, keepdim=True))  # [B, K, 1]
    allowed = (deep >= need) & (deep > 0)
    centres = sample_points(allowed.reshape(b, k, *spatial), col("place")[..., 0])
    centres = centres + col("jitter", d) - 0.5  # stays within the chosen pixel
    ratio = 0.6 + 0.4 * col("ratio", d - 1)
    axes = torch.cat([torch.ones_like(r), ratio], -1)
    axes = r * axes / axes.prod(-1, keepdim=True) ** (1 / d)  # geometric mean = r
    rot = rotation_matrices(col("rotation", 3), d)  # [B, K, d, d]

    grid = pixel_grid(spatial).reshape(1, 1, -1, d)  # [1, 1, N, d]
    q = (grid - centres.unsqueeze(2)) @ rot  # R^T (p - c) as rows: [B, K, N, d]
    q = q / axes.unsqueeze(2)
    dist = q.norm(dim=-1)  # [B, K, N]
    if shape == "lobulated":
        n = q / dist.unsqueeze(-1).clamp_min(1e-6)
        dirs = _unit_vectors(col("lobe_dir", 2 * _LOBES).reshape(b, k, _LOBES, 2), d)
        phase = 2 * math.pi * col("lobe_phase", _LOBES)  # [B, K, J]
        proj = n @ dirs.transpose(-1, -2)  # [B, K, N, J]
        wobble = torch.sin(_LOBE_FREQ * proj + phase.unsqueeze(2)).sum(-1) / math.sqrt(_LOBES)
        dist = dist / (1 + lobulation * wobble).clamp_min(0.3)
    w = torch.sigmoid((1 - dist) * r / edge) * active.unsqueeze(-1)  # [B, K, N]

    level = contrast[0] + (contrast[1] - contrast[0]) * col("contrast")[..., 0]  # [B, K]
    if polarity == "hypo":
        sign = -torch.ones_like(level)
    elif polarity == "hyper":
        sign = torch.ones_like(level)
    else:
        sign = torch.where(col("polarity")[..., 0] < 0.5, -1.0, 1.0)
    # Where lesions overlap the one with the larger weight wins, so contrasts never stack.
    w_max, which = w.max(dim=1)  # [B, N]
    amp = (sign * level).gather(1, which)  # [B, N]
    weight = w_max * organ
    delta = amp * weight * (1 + texture * texture_field.reshape(b, -1))
    mask = weight >= 0.5
    # The pixel holding each active lesion's centre belongs to the mask (tiny lesions, coarse
    # images): index it directly.
    pix = centres.round().long()
    for axis, n in enumerate(spatial):
        pix[..., axis] = pix[..., axis].clamp(0, n - 1)
    linear = torch.zeros(b, k, dtype=torch.long)
    for axis, n in enumerate(spatial):
        linear = linear * n + pix[..., axis]
    hits = torch.zeros(b, mask.shape[1], dtype=torch.long).scatter_add_(1, linear, active.long())
    mask = mask | (hits > 0)
    out = img.reshape(b, -1) + delta
    return out.reshape(img.shape), mask.reshape(img.shape)


SPLITS: tuple[str, ...] = ("train", "val", "test")
_CHUNK_PIXELS = 2**20  # pixels rendered at once; bounds peak memory (~ 40 floats per pixel)


class LesionDataset(Dataset):
    """Splits, labels, ids and per-sample random streams shared by the lesion datasets.

    Subclasses set ``n_train``, ``n_val``, ``n_test``, ``positive_fraction``, ``seed`` and
    ``spatial_size`` and implement ``_render``. Which samples are positive is a seeded
    permutation of each split (exactly ``round(n * positive_fraction)``); sample ``i`` of split
    ``s`` draws its random numbers from a generator seeded with
    ``derive_seed(stream, version, seed, s, i)``, so it is identical whichever batch renders it.
    """

    _stream: ClassVar[str]  # names the random stream; part of every sample's seed
    _version: ClassVar[str]
    _aux: ClassVar[tuple[str, ...]] = ()  # names of the aux masks `_render` returns

    n_train: int
    n_val: int
    n_test: int
    positive_fraction: float
    seed: int

    def split_size(self, split: Split) -> int:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def labels(self, split: Split) -> Tensor:
        """Long ``[n]``: the label of every sample of ``split`` (cheap; no images rendered)."""
        n = self.split_size(split)
        cache: dict[str, Tensor] = self.__dict__.setdefault("_label_cache", {})
        if split not in cache:
            gen = torch.Generator().manual_seed(derive_seed(self._stream, self.seed, split))
            perm = torch.randperm(n, generator=gen)
            label = torch.zeros(n, dtype=torch.long)
            label[perm[: round(n * self.positive_fraction)]] = 1
            cache[split] = label
        return cache[split]

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        return self._get(split, indices, "split")

    def _get(self, split: Split, indices: Sequence[int], variant: str) -> Batch:
        """``get`` with a rendering ``variant`` (e.g. how a shortcut tag is drawn)."""
        n = self.split_size(split)
        idx = torch.as_tensor(list(indices), dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise IndexError(f"index {bad} out of range for split {split!r} of size {n}")
        label = self.labels(split)[idx]
        chunk = max(1, _CHUNK_PIXELS // math.prod(self.spatial_size))
        parts = [
            self._render(split, idx[s : s + chunk], label[s : s + chunk], variant)
            for s in range(0, idx.numel(), chunk)
        ]
        empty = torch.empty(0, 1, *self.spatial_size)
        x = torch.cat([p[0] for p in parts]) if parts else empty
        mask = torch.cat([p[1] for p in parts]) if parts else empty.bool()
        aux = {
            name: torch.cat([p[2][name] for p in parts]) if parts else empty.bool()
            for name in self._aux
        }
        ids = tuple(f"{split}-{i:06d}" for i in idx.tolist())
        return Batch(x=x, label=label, ids=ids, mask=mask, aux_masks=aux)

    def _draws(
        self, split: str, idx: Tensor, n_uniform: int, n_normal: int
    ) -> tuple[Tensor, Tensor]:
        """Per-sample uniforms ``[B, n_uniform]`` and normals ``[B, n_normal]``."""
        u, z = [], []
        gen = torch.Generator()
        for i in idx.tolist():
            gen.manual_seed(derive_seed(self._stream, self._version, self.seed, split, i))
            u.append(torch.rand(n_uniform, generator=gen))
            z.append(torch.randn(n_normal, generator=gen))
        return torch.stack(u), torch.stack(z)

    @abstractmethod
    def _render(
        self, split: str, idx: Tensor, label: Tensor, variant: str
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(x [B, 1, *S] float32, mask [B, 1, *S] bool, {aux name: [B, 1, *S] bool})``."""
