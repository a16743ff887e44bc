"""A synthetic 2D brain-MR-like phantom with bright lesions and their ground-truth masks.

Every image is a FLAIR-like axial slice: a bright scalp, a dark skull, grey matter with smooth
low-frequency texture and sulcus-like dark lines, darker white matter, two dark ventricles, a mild
multiplicative bias field and Rician noise. Class 1 images carry one soft-edged bright lesion; the
mask is its support (where the lesion's soft profile weighs at least 1/4, which covers its visible
blur; the pixel holding its centre always belongs to it). Both classes carry small bright
*distractor* spots and the bright scalp, so an attribution that merely points at bright pixels is
not right by construction: the label is defined by a bright blob of lesion size, not by brightness
alone.

Sample ``i`` of split ``s`` depends only on (dataset seed, ``s``, ``i``, parameters): its random
numbers come from a ``torch.Generator`` seeded with ``derive_seed(...)`` for that sample, and the
rendering that turns those numbers into pixels is vectorised over the batch. A sample is therefore
identical whichever batch it is requested in. Which samples are positive is a seeded permutation
of the split, so it also depends on the split's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..core import Batch, Capability, Dataset, Split
from ..errors import UserError
from ..params import Samples, Seed
from ..seeding import derive_seed

__all__ = ["SyntheticLesions2D"]

VERSION = "1"
_SPLITS: tuple[str, ...] = ("train", "val", "test")
_MAX_DISTRACTORS = 8
_CHUNK = 256  # samples rendered at once; bounds peak memory to ~ _CHUNK * 10 * H * W floats

# Layout of the per-sample uniform draws (fixed, so that parameters never shift the stream).
_U_NAMES = (
    "head_cx", "head_cy", "head_a", "head_b", "head_angle", "scalp", "brain", "wm", "wm_scale",
    "vent_a", "vent_b", "vent_sep", "vent_angle", "vent_dy", "bias_angle", "bias_slope",
    "les_r", "les_ratio", "les_angle", "les_rho", "les_phi", "les_edge", "n_distractors",
)  # fmt: skip
_U = {name: k for k, name in enumerate(_U_NAMES)}
_N_U = len(_U_NAMES) + 4 * _MAX_DISTRACTORS  # each distractor: radius, rho, phi, contrast
_LOWRES = {"texture": 8, "sulci": 12, "bias": 4}  # side of each low-resolution Gaussian field
_N_LOWRES = sum(s * s for s in _LOWRES.values())

Fraction = Annotated[float, Field(gt=0, le=0.5)]


class SyntheticLesions2D(Dataset):
    """Synthetic 2D brain-MR phantom; label 1 = a bright lesion, mask = its support.

    Parameters:
        size: image side in pixels; images are ``[B, 1, size, size]``.
        n_train, n_val, n_test: split sizes.
        positive_fraction: fraction of each split with a lesion (exactly ``round(n * p)``
            positives, placed by a seeded permutation of the split).
        lesion_radius_min, lesion_radius_max: lesion semi-major axis as a fraction of ``size``
            (defaults 0.05–0.11, i.e. 3.2–7 px at 64 px); the minor axis is 0.6–1.0 of it.
        lesion_contrast: lesion intensity above grey matter, before bias field and noise.
        max_distractors: each image (either class) has 0..max_distractors bright spots of radius
            0.3–0.55 × ``lesion_radius_min`` and 0.6–1.0 × ``lesion_contrast``.
        noise: standard deviation of the Rician noise.
        bias_field: strength of the smooth multiplicative bias field (0 = none).
        seed: dataset seed, independent of the suite seed.

    The task is hardest when ``lesion_contrast`` is low relative to ``noise`` and when
    ``lesion_radius_min`` approaches the distractor size.
    """

    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    num_classes = 2
    channels = 1

    def __init__(
        self,
        *,
        size: Annotated[int, Field(ge=16, le=1024)] = 64,
        n_train: Samples = 1024,
        n_val: Samples = 256,
        n_test: Samples = 512,
        positive_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5,
        lesion_radius_min: Fraction = 0.05,
        lesion_radius_max: Fraction = 0.11,
        lesion_contrast: Annotated[float, Field(gt=0, le=1)] = 0.3,
        max_distractors: Annotated[int, Field(ge=0, le=_MAX_DISTRACTORS)] = 3,
        noise: Annotated[float, Field(ge=0, le=0.5)] = 0.03,
        bias_field: Annotated[float, Field(ge=0, le=1)] = 0.15,
        seed: Seed = 0,
    ) -> None:
        if lesion_radius_min > lesion_radius_max:
            raise UserError(
                f"lesion_radius_min ({lesion_radius_min}) must not exceed lesion_radius_max "
                f"({lesion_radius_max}); swap them or widen the range"
            )
        self.size = int(size)
        self.n_train = int(n_train)
        self.n_val = int(n_val)
        self.n_test = int(n_test)
        self.positive_fraction = float(positive_fraction)
        self.lesion_radius_min = float(lesion_radius_min)
        self.lesion_radius_max = float(lesion_radius_max)
        self.lesion_contrast = float(lesion_contrast)
        self.max_distractors = int(max_distractors)
        self.noise = float(noise)
        self.bias_field = float(bias_field)
        self.seed = int(seed)
        self.spatial_size = (self.size, self.size)
        self._labels: dict[str, Tensor] = {}
        centres = (torch.arange(self.size, dtype=torch.float32) + 0.5) / self.size * 2 - 1
        self._yy, self._xx = torch.meshgrid(centres, centres, indexing="ij")  # [H, W] in [-1, 1]

    # -- Dataset contract -------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "version": VERSION,
            "size": self.size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "positive_fraction": self.positive_fraction,
            "lesion_radius_min": self.lesion_radius_min,
            "lesion_radius_max": self.lesion_radius_max,
            "lesion_contrast": self.lesion_contrast,
            "max_distractors": self.max_distractors,
            "noise": self.noise,
            "bias_field": self.bias_field,
            "seed": self.seed,
        }

    def split_size(self, split: Split) -> int:
        self._check_split(split)
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        n = self.split_size(split)
        idx = torch.as_tensor(list(indices), dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            bad = idx[(idx < 0) | (idx >= n)][0].item()
            raise IndexError(f"index {bad} out of range for split {split!r} of size {n}")
        label = self.labels(split)[idx]
        xs, masks = [], []
        for start in range(0, idx.numel(), _CHUNK):
            x, m = self._render(split, idx[start : start + _CHUNK], label[start : start + _CHUNK])
            xs.append(x)
            masks.append(m)
        h = w = self.size
        x = torch.cat(xs) if xs else torch.empty(0, 1, h, w)
        mask = torch.cat(masks) if masks else torch.empty(0, 1, h, w, dtype=torch.bool)
        ids = tuple(f"{split}-{i:06d}" for i in idx.tolist())
        return Batch(x=x, label=label, ids=ids, mask=mask)

    def labels(self, split: Split) -> Tensor:
        """Long ``[n]``: the label of every sample of ``split`` (cheap; no images rendered)."""
        n = self.split_size(split)
        if split not in self._labels:
            gen = torch.Generator().manual_seed(
                derive_seed("synthetic_lesions_2d", self.seed, split)
            )
            perm = torch.randperm(n, generator=gen)
            label = torch.zeros(n, dtype=torch.long)
            label[perm[: round(n * self.positive_fraction)]] = 1
            self._labels[split] = label
        return self._labels[split]

    # -- generation -------------------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split not in _SPLITS:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")

    def _draws(self, split: str, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample random numbers: uniforms ``[B, _N_U]``, low-res normals, pixel normals."""
        hw = self.size * self.size
        u, z, noise = [], [], []
        gen = torch.Generator()
        for i in idx.tolist():
            gen.manual_seed(derive_seed("synthetic_lesions_2d", VERSION, self.seed, split, i))
            u.append(torch.rand(_N_U, generator=gen))
            z.append(torch.randn(_N_LOWRES, generator=gen))
            noise.append(torch.randn(2 * hw, generator=gen))
        return torch.stack(u), torch.stack(z), torch.stack(noise)

    def _field(self, z: Tensor, name: str) -> Tensor:
        """Upsample the low-res Gaussian field ``name`` to ``[B, H, W]`` (unit-ish variance)."""
        offset = 0
        for key, side in _LOWRES.items():
            if key == name:
                lowres = z[:, offset : offset + side * side].reshape(-1, 1, side, side)
                break
            offset += side * side
        up = F.interpolate(lowres, size=self.spatial_size, mode="bicubic", align_corners=False)
        return up[:, 0]

    def _render(self, split: str, idx: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        b, size = idx.numel(), self.size
        u, z, pix = self._draws(split, idx)

        def uni(name: str, lo: float, hi: float) -> Tensor:
            return (lo + (hi - lo) * u[:, _U[name]]).view(b, 1, 1)

        px = 2.0 / size  # one pixel in [-1, 1] coordinates
        # Head, skull and brain: nested ellipses sharing centre and orientation.
        hcx, hcy = uni("head_cx", -0.05, 0.05), uni("head_cy", -0.05, 0.05)
        ha, hb = uni("head_a", 0.72, 0.84), uni("head_b", 0.84, 0.94)
        hang = uni("head_angle", -0.2, 0.2)
        head_d = _ellipse_dist(self._xx, self._yy, hcx, hcy, ha, hb, hang)
        # A bright scalp: the brightest structure of most images, in both classes.
        img = _soft(head_d, ha, 0.5 * px) * uni("scalp", 0.82, 0.95)
        img = _lerp(img, 0.08, _soft(head_d / 0.9, ha * 0.9, 0.5 * px))  # skull
        brain_fill = _soft(head_d / 0.84, ha * 0.84, 0.7 * px)
        brain = uni("brain", 0.38, 0.46)
        gm = brain + 0.03 * self._field(z, "texture")
        img = _lerp(img, gm, brain_fill)
        # White matter: darker than grey matter in FLAIR, with a wide soft border.
        wm_scale = uni("wm_scale", 0.6, 0.72)
        wm_fill = _soft(head_d / (0.84 * wm_scale), ha * 0.84 * wm_scale, 3 * px)
        img = img - uni("wm", 0.04, 0.08) * wm_fill * brain_fill
        # Sulci: the zero set of a smooth random field, in the cortical band only.
        sulci = torch.exp(-self._field(z, "sulci").square() / (2 * 0.12**2))
        img = img - 0.16 * sulci * brain_fill * (1 - wm_fill)
        # Ventricles: two dark ellipses mirrored about the head's midline.
        va, vb = uni("vent_a", 0.05, 0.09), uni("vent_b", 0.14, 0.24)
        vsep, vang = uni("vent_sep", 0.06, 0.12), uni("vent_angle", 0.1, 0.35)
        vdy = uni("vent_dy", -0.1, 0.05)
        for side in (-1.0, 1.0):
            vx, vy = _rotate(side * (vsep + va), vdy, hang)
            vd = _ellipse_dist(self._xx, self._yy, hcx + vx, hcy + vy, va, vb, hang - side * vang)
            img = _lerp(img, 0.1, _soft(vd, va, px))

        # Lesion (class 1 only), inside the central 60% of the brain.
        r_lo, r_hi = self.lesion_radius_min * 2, self.lesion_radius_max * 2  # fraction -> [-1, 1]
        la = uni("les_r", r_lo, r_hi)
        lb = la * uni("les_ratio", 0.6, 1.0)
        lx, ly = self._inside_brain(u[:, _U["les_rho"]], u[:, _U["les_phi"]], 0.6, ha, hb, hang)
        lx, ly = hcx + lx, hcy + ly
        les_d = _ellipse_dist(self._xx, self._yy, lx, ly, la, lb, uni("les_angle", 0, math.pi))
        les_fill = _soft(les_d, (la + lb) / 2, uni("les_edge", 0.7, 1.5) * px)
        positive = (label == 1).view(b, 1, 1)
        img = _lerp(img, brain + self.lesion_contrast, les_fill * positive)
        # The mask is where the lesion's weight is at least 1/4, which covers its visible blur.
        mask = (les_fill >= 0.25) & positive
        # The pixel holding the lesion centre always belongs to the mask, so that tiny images
        # never give an empty mask for a positive.
        col = ((lx.view(b) + 1) / px).floor().long().clamp(0, size - 1)
        row = ((ly.view(b) + 1) / px).floor().long().clamp(0, size - 1)
        mask[torch.arange(b), row, col] |= positive.view(b)

        # Distractors (both classes): small bright spots, at most lesion_radius_min * 0.55.
        count = (u[:, _U["n_distractors"]] * (self.max_distractors + 1)).floor()
        base = len(_U_NAMES)
        for k in range(self.max_distractors):
            dr, drho, dphi, dc = (u[:, base + 4 * k + j] for j in range(4))
            radius = (r_lo * (0.3 + 0.25 * dr)).view(b, 1, 1)
            dx, dy = self._inside_brain(drho, dphi, 0.75, ha, hb, hang)
            dd = _ellipse_dist(self._xx, self._yy, hcx + dx, hcy + dy, radius, radius, hang)
            on = (count > k).view(b, 1, 1)
            level = brain + self.lesion_contrast * (0.6 + 0.4 * dc).view(b, 1, 1)
            img = _lerp(img, level, _soft(dd, radius, 0.8 * px) * on)

        # Bias field: smooth log-field plus a linear ramp in a random direction.
        bang = uni("bias_angle", 0, 2 * math.pi)
        ramp = self._xx * torch.cos(bang) + self._yy * torch.sin(bang)
        log_bias = 0.5 * self._field(z, "bias") + uni("bias_slope", 0.5, 1.0) * ramp
        img = img * torch.exp(self.bias_field * log_bias)
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
        n1, n2 = pix.view(b, 2, size, size).unbind(1)
        img = torch.sqrt((img + self.noise * n1).square() + (self.noise * n2).square())
        return img.clamp(0, 1).unsqueeze(1).float(), mask.unsqueeze(1)

    @staticmethod
    def _inside_brain(
        rho: Tensor, phi: Tensor, scale: float, ha: Tensor, hb: Tensor, angle: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Uniform point in the brain ellipse shrunk by ``scale``; offsets ``[B, 1, 1]``."""
        r = scale * 0.84 * rho.sqrt().view(-1, 1, 1)
        theta = (2 * math.pi * phi).view(-1, 1, 1)
        return _rotate(r * ha * torch.cos(theta), r * hb * torch.sin(theta), angle)


def _rotate(x: Tensor | float, y: Tensor | float, angle: Tensor) -> tuple[Tensor, Tensor]:
    c, s = torch.cos(angle), torch.sin(angle)
    return x * c - y * s, x * s + y * c


def _ellipse_dist(
    xx: Tensor, yy: Tensor, cx: Tensor, cy: Tensor, a: Tensor, b: Tensor, angle: Tensor
) -> Tensor:
    """Normalised elliptical radius ``[B, H, W]``: 1 on the boundary, <1 inside."""
    dx, dy = xx - cx, yy - cy
    c, s = torch.cos(angle), torch.sin(angle)
    xr, yr = dx * c + dy * s, -dx * s + dy * c
    return torch.sqrt((xr / a).square() + (yr / b).square())


def _soft(dist: Tensor, radius: Tensor | float, edge: Tensor | float) -> Tensor:
    """Soft indicator of ``dist < 1`` whose edge is ``edge`` wide (same units as ``radius``)."""
    return torch.sigmoid((1 - dist) * radius / edge)


def _lerp(img: Tensor, value: Tensor | float, weight: Tensor) -> Tensor:
    return img + (value - img) * weight
