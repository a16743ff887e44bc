"""Brain MR lesion datasets resampled from the MNI152 T1 template that nilearn ships.

The anatomy is real: the ICBM 2009a symmetric MNI152 T1 template (Fonov et al., NeuroImage 2011)
with its brain mask and white-/grey-matter probability maps, all loaded from nilearn's package
data (``nilearn.datasets.load_mni152_*``; nothing is downloaded). Every sample resamples it::

    p(q) = c + t + R_x(a) R_y(b) R_z(theta) (s * F q) + e(q)        (mm, template space)

for output pixel centres ``q`` (a 192 mm field of view, anterior up), with ``c`` the brain's centre
(2D: at a random axial level ``z0`` from the slices whose brain area is at least 55% of the
largest), shift ``t`` (±6 mm), tilts ``a, b`` (±6°), in-plane rotation ``theta`` (±12°), scale
``s`` (0.92–1.08), a random left-right flip ``F`` and a smooth elastic displacement ``e`` (2 mm
RMS); one trilinear ``grid_sample`` call renders a whole batch. The template is area-averaged
first to about the output spacing (no aliasing). Lesions (``benchbox.datasets._lesions``) are
centred where the white matter (probability > 0.6) is at least their radius deep, else in its
deepest pixels, and faded by the brain mask; their contrast is a fraction of the *tissue range*
(median deep-WM minus median CSF intensity).
Then an intensity jitter (gain and gamma 0.95–1.05), a smooth multiplicative bias field and
Rician noise. Intensities are in [0, 1] with deep white matter near 0.75.

Sample ``i`` of split ``s`` depends only on (dataset seed, ``s``, ``i``, parameters): its random
numbers come from a generator seeded with ``derive_seed(...)`` for that sample, in a fixed
layout, and rendering is vectorised over the batch. The splits draw from disjoint random streams
of the same template: there is one brain, so train and test share its anatomy (the warps, slices,
lesions, bias fields and noise differ) — what a model learns here is "lesion vs this anatomy",
which is what an explanation benchmark needs, not a claim of generalisation to new subjects.
Which samples are positive is a seeded permutation of each split (exactly ``round(n * p)``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..core import Batch, Capability, Split
from ..errors import UserError
from ..params import Samples, Seed
from . import _lesions
from ._lesions import MAX_LESIONS, N_LESION_U, Polarity, Shape

__all__ = ["BrainLesions2D", "BrainLesions3D", "BrainLesionsShortcut"]

VERSION = "1"
_FOV_MM = 192.0
_WM_LEVEL = 0.75  # deep white matter's median intensity after scaling
_MARGIN = 8  # template voxels (1 mm) kept around the brain
# Per-sample uniforms before the lesions' (fixed layout; parameters never shift the stream).
_U_NAMES = (
    "slice", "rot_z", "tilt_x", "tilt_y", "scale", "shift_x", "shift_y", "shift_z", "flip",
    "gain", "gamma", "noise", "count", "marker", "marker_dx", "marker_dy", "marker_level",
)  # fmt: skip
_U = {name: k for k, name in enumerate(_U_NAMES)}
_N_U = len(_U_NAMES) + MAX_LESIONS * N_LESION_U
# A scanner-label-like tag ("R" in a 5x3 bitmap) for the shortcut dataset.
_GLYPH = torch.tensor(
    [[1, 1, 1], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=torch.bool
)  # fmt: skip

Radius = Annotated[float, Field(gt=0, le=64)]
ContrastFraction = Annotated[float, Field(gt=0, le=1)]


@dataclass(frozen=True)
class _Template:
    """The template, area-averaged by ``factor``: channels T1 (scaled), brain, WM probability."""

    volume: Tensor  # [1, 3, Z, Y, X]
    origin: Tensor  # mm (x, y, z) of voxel [0, 0, 0]'s centre
    spacing: float  # mm
    centre: Tensor  # mm (x, y, z): centre of the brain's bounding box
    z_range: tuple[float, float]  # mm: axial levels with >= 55% of the largest brain area
    tissue_range: float  # median deep-WM minus median CSF intensity (scaled T1)


def _require_nilearn() -> None:
    if importlib.util.find_spec("nilearn") is None:
        raise UserError(
            "the brain_lesions datasets need nilearn (it ships the MNI152 template); "
            "run `pip install nilearn` (or `pip install benchbox[medical]`)"
        )


@functools.lru_cache(maxsize=4)
def _template(factor: int) -> _Template:
    """Load the 1 mm MNI152 maps from nilearn's package data and average ``factor``³ blocks."""
    _require_nilearn()
    from nilearn import datasets as nd  # package data only; the fetch_* functions are not used

    images = [
        nd.load_mni152_template(resolution=1),
        nd.load_mni152_brain_mask(resolution=1),
        nd.load_mni152_wm_template(resolution=1),
        nd.load_mni152_gm_template(resolution=1),
    ]
    affine = np.asarray(images[0].affine)
    spacing = float(affine[0, 0])
    if not np.allclose(affine[:3, :3], spacing * np.eye(3)) or spacing <= 0:
        raise RuntimeError(f"unexpected MNI152 template affine from nilearn: {affine.tolist()}")
    t1, brain, wm, gm = (np.asarray(img.dataobj, dtype=np.float32) for img in images)  # (x,y,z)
    deep_wm = np.median(t1[wm > 0.9])
    csf = np.median(t1[(brain > 0.5) & (wm < 0.1) & (gm < 0.1)])
    scale = _WM_LEVEL / deep_wm
    # Axial levels: slices whose brain area is at least 55% of the largest one.
    area = (brain > 0.5).sum(axis=(0, 1))
    levels = np.flatnonzero(area >= 0.55 * area.max())
    z_range = (
        float(affine[2, 3] + spacing * levels[0]),
        float(affine[2, 3] + spacing * levels[-1]),
    )
    # Crop to the brain plus a margin, then pad to a multiple of `factor` with background.
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero((brain > 0.5).any(axis=other))
        lo.append(max(int(nz[0]) - _MARGIN, 0))
        hi.append(min(int(nz[-1]) + _MARGIN + 1, brain.shape[axis]))
    centre = affine[:3, 3] + spacing * (np.array(lo) + np.array(hi) - 1) / 2
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    stack = np.stack([t1[crop] * scale, brain[crop], wm[crop]])  # [3, x, y, z]
    vol = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 2, 1)))  # [3, z, y, x]
    pad = [(-n) % factor for n in vol.shape[:0:-1]]  # x, y, z (F.pad order: last dim first)
    vol = F.pad(vol, [p for n in pad for p in (0, n)])
    vol = F.avg_pool3d(vol.unsqueeze(0), factor) if factor > 1 else vol.unsqueeze(0)
    origin = affine[:3, 3] + spacing * (np.array(lo) + (factor - 1) / 2)
    return _Template(
        volume=vol.contiguous(),
        origin=torch.tensor(origin, dtype=torch.float32),
        spacing=spacing * factor,
        centre=torch.tensor(centre, dtype=torch.float32),
        z_range=z_range,
        tissue_range=float(scale * (deep_wm - csf)),
    )


def _rot(axis: int, angle: Tensor) -> Tensor:
    """Rotations ``[B, 3, 3]`` by ``angle`` ``[B]`` about coordinate ``axis`` (0=x, 1=y, 2=z)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    i, j = [a for a in range(3) if a != axis]
    m = [[zero] * 3 for _ in range(3)]
    m[axis][axis] = one
    m[i][i], m[i][j], m[j][i], m[j][j] = c, -s, s, c
    return torch.stack([torch.stack(row, -1) for row in m], -2)


class _BrainLesions(_lesions.LesionDataset):
    """Shared machinery of the 2D and 3D brain datasets (``_ndim`` spatial dimensions)."""

    _ndim: ClassVar[int]
    _version = VERSION

    def _setup(
        self,
        *,
        size: int,
        n_train: int,
        n_val: int,
        n_test: int,
        positive_fraction: float,
        lesion_radius_min: float,
        lesion_radius_max: float,
        lesion_contrast_min: float,
        lesion_contrast_max: float,
        lesion_polarity: Polarity,
        lesion_shape: Shape,
        lesion_texture: float,
        max_lesions: int,
        augment: bool,
        noise: float,
        bias_field: float,
        seed: int,
    ) -> None:
        _require_nilearn()
        for name, lo, hi in (
            ("lesion_radius", lesion_radius_min, lesion_radius_max),
            ("lesion_contrast", lesion_contrast_min, lesion_contrast_max),
        ):
            if lo > hi:
                raise UserError(
                    f"{name}_min ({lo}) must not exceed {name}_max ({hi}); swap them or widen "
                    f"the range"
                )
        if lesion_radius_max > size / 4:
            raise UserError(
                f"lesion_radius_max ({lesion_radius_max} px) must be at most size / 4 "
                f"({size / 4:g} px); lower it or raise size"
            )
        self.size = int(size)
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.positive_fraction = float(positive_fraction)
        self.lesion_radius_min = float(lesion_radius_min)
        self.lesion_radius_max = float(lesion_radius_max)
        self.lesion_contrast_min = float(lesion_contrast_min)
        self.lesion_contrast_max = float(lesion_contrast_max)
        self.lesion_polarity: Polarity = lesion_polarity
        self.lesion_shape: Shape = lesion_shape
        self.lesion_texture = float(lesion_texture)
        self.max_lesions = int(max_lesions)
        self.augment = bool(augment)
        self.noise = float(noise)
        self.bias_field = float(bias_field)
        self.seed = int(seed)
        self.spatial_size = (self.size,) * self._ndim
        self.spacing_mm = _FOV_MM / self.size
        # Average the 1 mm template down to about 2/3 of the output spacing: no aliasing, and
        # cheaper sampling. 64 px (3.3 mm) -> 2 mm; 32³ (6.6 mm) -> 4 mm.
        self._factor = int(min(4, max(1, math.floor(self.spacing_mm / 1.5))))

    # -- Dataset contract -------------------------------------------------------------------------
    def _spec_params(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "positive_fraction": self.positive_fraction,
            "lesion_radius_min": self.lesion_radius_min,
            "lesion_radius_max": self.lesion_radius_max,
            "lesion_contrast_min": self.lesion_contrast_min,
            "lesion_contrast_max": self.lesion_contrast_max,
            "lesion_polarity": self.lesion_polarity,
            "lesion_shape": self.lesion_shape,
            "lesion_texture": self.lesion_texture,
            "max_lesions": self.max_lesions,
            "augment": self.augment,
            "noise": self.noise,
            "bias_field": self.bias_field,
            "seed": self.seed,
        }

    def spec(self) -> dict[str, Any]:
        return {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "version": VERSION,
            # The template comes with nilearn; a new release could change it, hence the weights.
            "template": f"MNI152 2009a T1 (nilearn {importlib.metadata.version('nilearn')})",
            **self._spec_params(),
        }

    @property
    def tissue_range(self) -> float:
        """Median deep-WM minus median CSF intensity: the unit of ``lesion_contrast_*``."""
        return _template(self._factor).tissue_range

    # -- generation -------------------------------------------------------------------------------
    def _lowres_sides(self) -> dict[str, int]:
        d = self._ndim
        return {
            "elastic": 5 if d == 2 else 4,  # per displacement component (3 of them)
            "bias": 4,
            "texture": max(4, self.size // 4),
        }

    def _sample_template(self, u: Tensor, elastic: Tensor, tpl: _Template) -> Tensor:
        """Resample the template on each sample's warped grid: ``[3, B, *spatial]``."""
        b, d, size, sp = u.shape[0], self._ndim, self.size, self.spacing_mm

        def uni(name: str, lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * u[:, _U[name]]

        axis = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) * sp
        if d == 2:
            yy, xx = torch.meshgrid(-axis, axis, indexing="ij")
            q = torch.stack([xx, yy, torch.zeros_like(xx)], -1)  # [H, W, 3]
        else:
            zz, yy, xx = torch.meshgrid(axis, -axis, axis, indexing="ij")
            q = torch.stack([xx, yy, zz], -1)  # [D, H, W, 3]
        q = q.reshape(1, -1, 3).expand(b, -1, -1)
        centre = tpl.centre.view(1, 3).repeat(b, 1)
        if d == 2:
            centre[:, 2] = uni("slice", *tpl.z_range)
        if self.augment:
            deg = math.pi / 180
            flip = torch.where(u[:, _U["flip"]] < 0.5, -1.0, 1.0)
            q = q * torch.stack([flip, torch.ones_like(flip), torch.ones_like(flip)], -1)[:, None]
            rot = (
                _rot(0, uni("tilt_x", -6 * deg, 6 * deg))
                @ _rot(1, uni("tilt_y", -6 * deg, 6 * deg))
                @ _rot(2, uni("rot_z", -12 * deg, 12 * deg))
            )
            q = uni("scale", 0.92, 1.08).view(b, 1, 1) * q @ rot.transpose(1, 2)
            shift = torch.stack(
                [uni("shift_x", -6, 6), uni("shift_y", -6, 6), uni("shift_z", -6, 6)], -1
            )
            if d == 2:  # the slice level is drawn above; a z shift would only duplicate it
                shift[:, 2] = 0
            centre = centre + shift
            q = q + 2.0 * elastic
        p = q + centre.unsqueeze(1)  # [B, N, 3] mm
        shape = torch.tensor(tpl.volume.shape[:1:-1], dtype=torch.float32)  # (X, Y, Z)
        grid = (2 * (p - tpl.origin) / tpl.spacing + 1) / shape - 1
        lead = b * (size if d == 3 else 1)
        grid = grid.reshape(1, lead, size, size, 3)
        out = F.grid_sample(tpl.volume, grid, mode="bilinear", align_corners=False)
        return out[0].reshape(3, b, *self.spatial_size)

    def _render(
        self, split: str, idx: Tensor, label: Tensor, variant: str
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, d = idx.numel(), self._ndim
        tpl = _template(self._factor)
        sides = self._lowres_sides()
        n_low = 3 * sides["elastic"] ** d + sides["bias"] ** d + sides["texture"] ** d
        u, z = self._draws(split, idx, _N_U, n_low + 2 * math.prod(self.spatial_size))
        z, pix = z[:, :n_low], z[:, n_low:]
        n_el = sides["elastic"] ** d
        elastic = torch.stack(
            [
                _lesions.smooth_field(z[:, k * n_el : (k + 1) * n_el], self.spatial_size)
                for k in range(3)
            ],
            -1,
        ).reshape(b, -1, 3)
        off = 3 * n_el
        bias = _lesions.smooth_field(z[:, off : off + sides["bias"] ** d], self.spatial_size)
        off += sides["bias"] ** d
        tex = _lesions.smooth_field(z[:, off:n_low], self.spatial_size)
        t1, brain, wm = self._sample_template(u, elastic, tpl).unbind(0)

        count = torch.where(
            label == 1, 1 + (u[:, _U["count"]] * self.max_lesions).floor().long(), 0
        ).clamp(max=self.max_lesions)
        lesion_u = u[:, len(_U_NAMES) :].reshape(b, MAX_LESIONS, N_LESION_U)
        img, mask = _lesions.insert_lesions(
            t1,
            lesion_u,
            count,
            candidates=(wm > 0.6) & (brain > 0.5),
            inside=brain.clamp(0, 1),
            texture_field=tex,
            radius=(self.lesion_radius_min, self.lesion_radius_max),
            contrast=(
                self.lesion_contrast_min * tpl.tissue_range,
                self.lesion_contrast_max * tpl.tissue_range,
            ),
            polarity=self.lesion_polarity,
            shape=self.lesion_shape,
            texture=self.lesion_texture,
            max_lesions=self.max_lesions,
        )
        view = (b,) + (1,) * d
        sigma: Tensor | float = self.noise
        if self.augment:
            gain = (0.95 + 0.1 * u[:, _U["gain"]]).view(view)
            gamma = (0.95 + 0.1 * u[:, _U["gamma"]]).view(view)
            img = gain * img.clamp_min(0) ** gamma
            sigma = self.noise * (0.7 + 0.6 * u[:, _U["noise"]]).view(view)
        img = img * torch.exp(self.bias_field * bias)
        n1, n2 = pix.view(b, 2, *self.spatial_size).unbind(1)
        img = _lesions.rician(img, sigma, n1, n2).clamp(0, 1)
        tag = self._marker_mask(split, u, label, variant)
        if tag is None:
            return img.unsqueeze(1).float(), mask.unsqueeze(1), {}
        level = 0.75 + 0.2 * u[:, _U["marker_level"]].view(view)
        img = torch.where(tag, _lesions.rician(level, sigma, n1, n2).clamp(0, 1), img)
        return img.unsqueeze(1).float(), mask.unsqueeze(1), {"marker": tag.unsqueeze(1)}

    def _marker_mask(self, split: str, u: Tensor, label: Tensor, variant: str) -> Tensor | None:
        """Bool ``[B, *spatial]`` where the shortcut tag is drawn; None: no tag at all."""
        return None


_SizeField = Annotated[int, Field(ge=16, le=512)]
_Texture = Annotated[float, Field(ge=0, le=1)]
_MaxLesions = Annotated[int, Field(ge=1, le=MAX_LESIONS)]
_Noise = Annotated[float, Field(ge=0, le=0.5)]
_Bias = Annotated[float, Field(ge=0, le=1)]
_Fraction = Annotated[float, Field(gt=0, lt=1)]


class BrainLesions2D(_BrainLesions):
    """Axial MNI152 T1 slices (nilearn, offline) with inserted white-matter lesions and masks.

    Parameters:
        size: image side in pixels (192 mm field of view); images are ``[B, 1, size, size]``.
        n_train, n_val, n_test: split sizes.
        positive_fraction: fraction of each split with lesions (exactly ``round(n * p)``).
        lesion_radius_min, lesion_radius_max: equivalent radius ``sqrt(a b)`` in pixels
            (semi-axes ratio 0.6–1); at 64 px one pixel is 3 mm.
        lesion_contrast_min, lesion_contrast_max: intensity change at the lesion centre as a
            fraction of the tissue range (median deep WM − median CSF, ≈ 0.5 in image units);
            the default 0.35–0.5 is at most half of it (0.18–0.26 in image units, 9–13 noise
            standard deviations at the centre; less at the soft edge and after texture).
        lesion_polarity: ``hyper`` (default: enhancing lesions as on post-contrast T1, e.g.
            metastases or active MS plaques, brighter than white matter), ``hypo`` (T1 "black
            holes"; much harder, as they look like grey matter and CSF) or ``mixed`` (per
            lesion).
        lesion_shape: ``ellipsoid`` (random axes and rotation) or ``lobulated`` (irregular).
        lesion_texture: relative standard deviation of the contrast inside a lesion.
        max_lesions: a positive carries 1..max_lesions lesions (uniform).
        augment: random flips, rotations, tilts, scaling, shifts, elastic warps, intensity gain
            and gamma, noise level; off: only the slice level, lesions, bias field and noise vary.
        noise: Rician noise standard deviation (×0.7–1.3 per sample when ``augment``).
        bias_field: strength of the smooth multiplicative bias field ``exp(bias_field * f)``.
        seed: dataset seed, independent of the suite seed.

    Hardest at small radius, low contrast, high noise; the defaults reach radius 3 px.
    """

    _ndim = 2
    _stream = "brain_lesions_2d"
    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    num_classes = 2
    channels = 1

    def __init__(
        self,
        *,
        size: _SizeField = 64,
        n_train: Samples = 2048,
        n_val: Samples = 256,
        n_test: Samples = 512,
        positive_fraction: _Fraction = 0.5,
        lesion_radius_min: Radius = 3.0,
        lesion_radius_max: Radius = 6.0,
        lesion_contrast_min: ContrastFraction = 0.35,
        lesion_contrast_max: ContrastFraction = 0.5,
        lesion_polarity: Polarity = "hyper",
        lesion_shape: Shape = "ellipsoid",
        lesion_texture: _Texture = 0.2,
        max_lesions: _MaxLesions = 3,
        augment: bool = True,
        noise: _Noise = 0.02,
        bias_field: _Bias = 0.05,
        seed: Seed = 0,
    ) -> None:
        self._setup(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})


class BrainLesions3D(_BrainLesions):
    """MNI152 T1 volumes (nilearn, offline) with inserted ellipsoidal WM lesions and masks.

    The 3D counterpart of ``brain_lesions_2d``: ``x`` is ``[B, 1, size, size, size]`` (axes
    inferior→superior, anterior→posterior, left/right; 192 mm field of view, so 6 mm voxels at
    the default 32), the warp also rotates and shifts through-plane, and lesions are ellipsoids
    (or lobulated) with an equivalent radius ``(a b c)^(1/3)`` in voxels. Parameters as in
    ``brain_lesions_2d``.
    """

    _ndim = 3
    _stream = "brain_lesions_3d"
    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.VOLUMES_3D})
    num_classes = 2
    channels = 1

    def __init__(
        self,
        *,
        size: Annotated[int, Field(ge=16, le=256)] = 32,
        n_train: Samples = 512,
        n_val: Samples = 128,
        n_test: Samples = 256,
        positive_fraction: _Fraction = 0.5,
        lesion_radius_min: Radius = 1.5,
        lesion_radius_max: Radius = 3.0,
        lesion_contrast_min: ContrastFraction = 0.35,
        lesion_contrast_max: ContrastFraction = 0.5,
        lesion_polarity: Polarity = "hyper",
        lesion_shape: Shape = "ellipsoid",
        lesion_texture: _Texture = 0.2,
        max_lesions: _MaxLesions = 3,
        augment: bool = True,
        noise: _Noise = 0.02,
        bias_field: _Bias = 0.05,
        seed: Seed = 0,
    ) -> None:
        self._setup(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})


class BrainLesionsShortcut(BrainLesions2D):
    """brain_lesions_2d plus a spurious scanner tag correlated with the label (a shortcut test).

    A small bright "R" tag (5x3 pixels at 64 px, in the top-left corner, jittered by 1-2 px;
    ``Batch.aux_masks["marker"]`` marks it) is drawn with probability ``p_marker_given_label`` in
    positives and ``1 - p_marker_given_label`` in negatives of train and val; in test it is
    ``random`` (probability 1/2 whatever the label) or ``absent``. The lesions default to small
    and faint (radius 2–3.5 px, contrast 0.2–0.35 of the tissue range, one per positive), so the
    tag is the easier feature and a CNN learns to use it (Geirhos et al., "Shortcut learning in
    deep neural networks", Nat. Mach. Intell. 2020; DeGrave et al., Nat. Mach. Intell. 2021).

    ``probe_sets()`` (evaluated into the manifest as ``<name>_accuracy``) re-renders the test
    images with the tag chosen by each sample's own draw — only the tag differs, every other
    pixel is identical:

    - ``test_with_marker``: tag drawn as in training (``p`` / ``1 - p``): in-distribution accuracy;
    - ``test_without_marker``: no tag (the tag's pixels get back the background they covered);
    - ``test_marker_flipped``: tag drawn with the correlation reversed (``1 - p`` / ``p``).

    A model that reads the lesion scores the same on all three; a shortcut user drops from
    ``test_with_marker`` to ``test_without_marker`` and further to ``test_marker_flipped`` (below
    chance). The drop ``test_with_marker - test_without_marker`` measures reliance on the tag. The
    test split itself (``test_marker``) is what explanations are computed on: ``random`` puts the
    tag on half the images of either class, so a map can be asked whether it points at the tag.

    Parameters: those of ``brain_lesions_2d`` (with the harder lesion defaults above), plus
        p_marker_given_label: P(tag | label 1) = P(no tag | label 0) in train and val.
        test_marker: ``random`` (P = 1/2, independent of the label) or ``absent`` in test.
    """

    _aux = ("marker",)

    def __init__(
        self,
        *,
        # Below 48 px the tag (at least 5x3 px) reaches the brain in the corner.
        size: Annotated[int, Field(ge=48, le=512)] = 64,
        n_train: Samples = 1024,
        n_val: Samples = 256,
        n_test: Samples = 512,
        positive_fraction: _Fraction = 0.5,
        lesion_radius_min: Radius = 2.0,
        lesion_radius_max: Radius = 3.5,
        lesion_contrast_min: ContrastFraction = 0.2,
        lesion_contrast_max: ContrastFraction = 0.35,
        lesion_polarity: Polarity = "hyper",
        lesion_shape: Shape = "ellipsoid",
        lesion_texture: _Texture = 0.2,
        max_lesions: _MaxLesions = 1,
        augment: bool = True,
        noise: _Noise = 0.02,
        bias_field: _Bias = 0.05,
        p_marker_given_label: Annotated[float, Field(ge=0.5, le=1)] = 0.95,
        test_marker: Literal["random", "absent"] = "random",
        seed: Seed = 0,
    ) -> None:
        params = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.p_marker_given_label = float(params.pop("p_marker_given_label"))
        self.test_marker: Literal["random", "absent"] = params.pop("test_marker")
        self._setup(**params)

    def _spec_params(self) -> dict[str, Any]:
        return {
            **super()._spec_params(),
            "p_marker_given_label": self.p_marker_given_label,
            "test_marker": self.test_marker,
        }

    def _marker_mask(self, split: str, u: Tensor, label: Tensor, variant: str) -> Tensor | None:
        b, size = u.shape[0], self.size
        marker = variant
        p = self.p_marker_given_label
        pos = label == 1
        if marker == "split":
            marker = "train" if split != "test" else self.test_marker
        if marker == "train":
            prob = torch.where(pos, p, 1 - p)
        elif marker == "flipped":
            prob = torch.where(pos, 1 - p, p)
        elif marker == "random":
            prob = torch.full((b,), 0.5)
        else:  # absent
            prob = torch.zeros(b)
        on = u[:, _U["marker"]] < prob
        scale = max(1, round(size / 64))
        glyph = _GLYPH.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        gh, gw = glyph.shape
        tag = torch.zeros(b, size, size, dtype=torch.bool)
        # 1-2 px from the top and 1-3 px from the left edge (at 64 px): in the empty corner.
        top = scale + (u[:, _U["marker_dy"]] * (scale + 1)).floor().long()
        left = scale + (u[:, _U["marker_dx"]] * (2 * scale + 1)).floor().long()
        # One indexed write for the whole batch: row/col offsets of every glyph pixel.
        rows = top.view(b, 1, 1) + torch.arange(gh).view(1, gh, 1)
        cols = left.view(b, 1, 1) + torch.arange(gw).view(1, 1, gw)
        batch = torch.arange(b).view(b, 1, 1).expand(b, gh, gw)
        tag[batch, rows.expand(b, gh, gw), cols.expand(b, gh, gw)] = glyph & on.view(b, 1, 1)
        return tag

    def probe_sets(self) -> dict[str, tuple[Split, Callable[[Batch], Batch]]]:
        return {
            "test_with_marker": ("test", self._retag("train")),
            "test_without_marker": ("test", self._retag("absent")),
            "test_marker_flipped": ("test", self._retag("flipped")),
        }

    def _retag(self, marker: str) -> Callable[[Batch], Batch]:
        """A transform re-rendering a test batch (found by its ids) with the tag drawn by rule
        ``marker``; every pixel outside the old and new tag is unchanged."""

        def transform(batch: Batch) -> Batch:
            idx = []
            for sample_id in batch.ids:
                m = _ID.fullmatch(sample_id)
                if m is None or m.group(1) != "test":
                    raise ValueError(f"sample id {sample_id!r} is not a test id of this dataset")
                idx.append(int(m.group(2)))
            fresh = self._get("test", idx, marker)
            device = batch.x.device
            return Batch(
                x=fresh.x.to(device),
                label=batch.label,
                ids=batch.ids,
                target=batch.target,
                mask=batch.mask,
                aux_masks={**batch.aux_masks, "marker": fresh.aux_masks["marker"].to(device)},
                meta=batch.meta,
            )

        return transform


_ID = re.compile(r"(train|val|test)-(\d+)")
