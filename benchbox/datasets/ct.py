"""CT lesion dataset from the real CT slices that pydicom ships as test data (no download).

Two scans, both read with ``pydicom.data.get_testdata_file(name, download=False)``:

- ``head``: ``J2K_pixelrep_mismatch.dcm``, an axial head CT through the posterior fossa and the
  temporal lobes (512², 0.43 mm pixels, JPEG 2000; Pillow decodes it). Lesions go in the brain
  parenchyma (smoothed 15–60 HU); default window brain (L 40, W 80).
- ``neck``: ``CT_small.dcm``, an axial neck CT (128², 0.66 mm, uncompressed). Lesions go in the
  paraspinal soft tissue (smoothed 0–100 HU); default window soft tissue (L 40, W 400).

Pixels become Hounsfield units by the DICOM rescale, ``HU = stored * RescaleSlope +
RescaleIntercept`` (air floored at −1024). Every sample resamples the slice::

    p(q) = c + t + R(theta) (s * F q)          (source pixels)

for output pixel centres ``q`` spanning ``fov`` of the source's side, with ``c`` the centre of the
lesion-bearing tissue, a shift ``t`` (±8% of the field of view), rotation ``theta`` (±15°), scale
``s`` (0.9–1.1) and a random left-right flip ``F`` (off with ``augment: false``); the slice is
area-averaged to about the output spacing first. Lesions (``benchbox.datasets._lesions``) change
the HU by ``lesion_contrast_*`` times the window width (hypodense: ischaemia, oedema; hyperdense:
haemorrhage), then Gaussian noise of ``noise_hu`` HU is added and the window maps HU to [0, 1]::

    x = clip((HU - (L - W/2)) / W, 0, 1)

There is one slice per scan, so samples differ by crop, pose, lesions and noise, not anatomy.
Sample ``i`` of split ``s`` depends only on (dataset seed, ``s``, ``i``, parameters), as in
``brain_lesions_2d``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ..core import Capability
from ..errors import UserError
from ..params import Samples, Seed
from . import _lesions
from ._lesions import MAX_LESIONS, N_LESION_U, Polarity, Shape

__all__ = ["CTLesions2D", "hounsfield", "load_scan", "window"]

VERSION = "1"
Scan = Literal["head", "neck"]
_AIR_HU = -1024.0


@dataclass(frozen=True)
class _ScanInfo:
    file: str
    tissue_hu: tuple[float, float]  # smoothed HU range of the tissue lesions go in
    window: tuple[float, float]  # default (centre, width)


_SCANS: dict[str, _ScanInfo] = {
    "head": _ScanInfo("J2K_pixelrep_mismatch.dcm", (15.0, 60.0), (40.0, 80.0)),
    "neck": _ScanInfo("CT_small.dcm", (0.0, 100.0), (40.0, 400.0)),
}
_U_NAMES = ("rot", "scale", "shift_x", "shift_y", "flip", "count")
_U = {name: k for k, name in enumerate(_U_NAMES)}
_N_U = len(_U_NAMES) + MAX_LESIONS * N_LESION_U


def _require_pydicom() -> None:
    if importlib.util.find_spec("pydicom") is None:
        raise UserError(
            "dataset ct_lesions_2d needs pydicom (it ships the CT slices); "
            "run `pip install benchbox[medical]`"
        )


def hounsfield(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``stored * slope + intercept`` as float32, floored at air (−1024 HU): padding values
    below it (e.g. −2000 outside the reconstruction circle) are not tissue."""
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return np.maximum(hu, np.float32(_AIR_HU))


def window(hu: Tensor, centre: float, width: float) -> Tensor:
    """CT display window: ``clip((HU - (centre - width / 2)) / width, 0, 1)``."""
    return ((hu - (centre - width / 2)) / width).clamp(0, 1)


@functools.lru_cache(maxsize=4)
def load_scan(scan: Scan) -> tuple[Tensor, Tensor, float]:
    """``(HU [H, W] float32, tissue [H, W] bool, pixel spacing mm)`` of a bundled scan.

    ``tissue`` is where the smoothed (Gaussian, σ = 2 px) HU lies in the scan's tissue range,
    opened by 3 px, keeping connected parts of at least a tenth of the largest.
    """
    _require_pydicom()
    import pydicom
    import scipy.ndimage as ndi
    from pydicom.data import get_testdata_file

    info = _SCANS[scan]
    # download=False: a missing file must fail here, not fetch from the network.
    path = get_testdata_file(info.file, download=False)
    if path is None:
        raise UserError(
            f"pydicom's test file {info.file!r} (scan {scan!r}) is missing from this "
            f"pydicom installation; reinstall pydicom or choose another scan"
        )
    ds = pydicom.dcmread(path)
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        raise UserError(
            f"cannot decode {info.file!r} (scan {scan!r}, {ds.file_meta.TransferSyntaxUID.name}): "
            f"{exc}; install an image plugin (`pip install pillow`) or use scan: neck"
        ) from exc
    hu = hounsfield(stored, float(ds.RescaleSlope), float(ds.RescaleIntercept))
    smooth = ndi.gaussian_filter(hu, 2.0)
    lo, hi = info.tissue_hu
    tissue = ndi.binary_opening((smooth > lo) & (smooth < hi), iterations=3)
    labels, n = ndi.label(tissue)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
        tissue = np.isin(labels, keep)
    spacing = float(ds.PixelSpacing[0])
    return torch.from_numpy(hu), torch.from_numpy(tissue), spacing


class CTLesions2D(_lesions.LesionDataset):
    """Real CT slices (pydicom's bundled head/neck CT) with inserted hypo/hyperdense lesions.

    Parameters:
        size: image side in pixels; images are ``[B, 1, size, size]`` in [0, 1] (windowed).
        n_train, n_val, n_test: split sizes.
        positive_fraction: fraction of each split with lesions (exactly ``round(n * p)``).
        scan: ``head`` (512² head CT, brain parenchyma) or ``neck`` (128² neck CT, soft tissue).
        fov: field of view as a fraction of the source slice's side (a crop; 0.6 of the head
            slice is 132 mm, 2 mm pixels at 64).
        window_center, window_width: display window in HU; None takes the scan's default (head:
            brain window 40/80; neck: soft-tissue window 40/400).
        lesion_radius_min, lesion_radius_max: equivalent radius in output pixels.
        lesion_contrast_min, lesion_contrast_max: HU change at the lesion centre as a fraction
            of ``window_width``: the default 0.15–0.375 is 12–30 HU in the brain window (at most
            about the parenchyma–CSF difference), 60–150 HU in the soft-tissue window.
        lesion_polarity: ``hypo`` (darker), ``hyper`` (brighter) or ``mixed`` (per lesion).
        lesion_shape: ``ellipsoid`` or ``lobulated``.
        lesion_texture: relative standard deviation of the contrast inside a lesion.
        max_lesions: a positive carries 1..max_lesions lesions.
        augment: random rotation, scale, shift and flip (off: a fixed centred crop).
        noise_hu: standard deviation of the added Gaussian noise in HU.
        seed: dataset seed, independent of the suite seed.
    """

    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    num_classes = 2
    channels = 1
    _stream = "ct_lesions_2d"
    _version = VERSION

    def __init__(
        self,
        *,
        size: Annotated[int, Field(ge=16, le=512)] = 64,
        n_train: Samples = 1024,
        n_val: Samples = 256,
        n_test: Samples = 512,
        positive_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5,
        scan: Scan = "head",
        fov: Annotated[float, Field(gt=0.1, le=1)] = 0.6,
        window_center: float | None = None,
        window_width: Annotated[float, Field(gt=0)] | None = None,
        lesion_radius_min: Annotated[float, Field(gt=0, le=64)] = 3.0,
        lesion_radius_max: Annotated[float, Field(gt=0, le=64)] = 6.0,
        lesion_contrast_min: Annotated[float, Field(gt=0, le=1)] = 0.15,
        lesion_contrast_max: Annotated[float, Field(gt=0, le=1)] = 0.375,
        lesion_polarity: Polarity = "mixed",
        lesion_shape: Shape = "ellipsoid",
        lesion_texture: Annotated[float, Field(ge=0, le=1)] = 0.2,
        max_lesions: Annotated[int, Field(ge=1, le=MAX_LESIONS)] = 3,
        augment: bool = True,
        noise_hu: Annotated[float, Field(ge=0, le=200)] = 4.0,
        seed: Seed = 0,
    ) -> None:
        _require_pydicom()
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
        default_centre, default_width = _SCANS[scan].window
        self.size = int(size)
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.positive_fraction = float(positive_fraction)
        self.scan: Scan = scan
        self.fov = float(fov)
        self.window_center = float(default_centre if window_center is None else window_center)
        self.window_width = float(default_width if window_width is None else window_width)
        self.lesion_radius_min = float(lesion_radius_min)
        self.lesion_radius_max = float(lesion_radius_max)
        self.lesion_contrast_min = float(lesion_contrast_min)
        self.lesion_contrast_max = float(lesion_contrast_max)
        self.lesion_polarity: Polarity = lesion_polarity
        self.lesion_shape: Shape = lesion_shape
        self.lesion_texture = float(lesion_texture)
        self.max_lesions = int(max_lesions)
        self.augment = bool(augment)
        self.noise_hu = float(noise_hu)
        self.seed = int(seed)
        self.spatial_size = (self.size, self.size)

    def spec(self) -> dict[str, Any]:
        return {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "version": VERSION,
            "source": f"pydicom test data {_SCANS[self.scan].file}",
            "size": self.size,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "positive_fraction": self.positive_fraction,
            "scan": self.scan,
            "fov": self.fov,
            "window_center": self.window_center,
            "window_width": self.window_width,
            "lesion_radius_min": self.lesion_radius_min,
            "lesion_radius_max": self.lesion_radius_max,
            "lesion_contrast_min": self.lesion_contrast_min,
            "lesion_contrast_max": self.lesion_contrast_max,
            "lesion_polarity": self.lesion_polarity,
            "lesion_shape": self.lesion_shape,
            "lesion_texture": self.lesion_texture,
            "max_lesions": self.max_lesions,
            "augment": self.augment,
            "noise_hu": self.noise_hu,
            "seed": self.seed,
        }

    # -- generation -------------------------------------------------------------------------------
    @functools.cached_property
    def _source(self) -> tuple[Tensor, float, Tensor, int]:
        """``(pooled [1, 2, h, w]: HU + 1024 and tissue fraction, source px per output px,
        tissue centre (row, col) in source px, pooling factor)``."""
        hu, tissue, _ = load_scan(self.scan)
        side = min(hu.shape)
        step = self.fov * side / self.size
        factor = int(min(8, max(1, math.floor(step / 1.5))))
        # Air is 0 after the shift, so zero padding (outside the slice) reads as air.
        stack = torch.stack([hu - _AIR_HU, tissue.float()]).unsqueeze(0)
        h, w = hu.shape
        stack = F.pad(stack, [0, (-w) % factor, 0, (-h) % factor])
        pooled = F.avg_pool2d(stack, factor) if factor > 1 else stack
        rows, cols = torch.nonzero(tissue, as_tuple=True)
        centre = torch.stack([rows.float().mean(), cols.float().mean()])
        # Keep the (unrotated) crop inside the slice where the slice is large enough.
        half = self.fov * side / 2
        for axis, n in enumerate((h, w)):
            lo, hi = half - 0.5, n - half - 0.5
            centre[axis] = centre[axis].clamp(min(lo, hi), max(lo, hi))
        return pooled, step, centre, factor

    def _render(
        self, split: str, idx: Tensor, label: Tensor, variant: str
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, size = idx.numel(), self.size
        pooled, step, centre, factor = self._source
        tex_side = max(4, size // 4)
        n_pix = size * size
        u, z = self._draws(split, idx, _N_U, tex_side**2 + n_pix)

        def uni(name: str, lo: float, hi: float) -> Tensor:
            return lo + (hi - lo) * u[:, _U[name]]

        axis = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) * step
        rr, cc = torch.meshgrid(axis, axis, indexing="ij")
        q = torch.stack([rr, cc], -1).reshape(1, -1, 2).expand(b, -1, -1)  # (row, col)
        shift = torch.zeros(b, 2)
        if self.augment:
            flip = torch.where(u[:, _U["flip"]] < 0.5, -1.0, 1.0)
            q = q * torch.stack([torch.ones_like(flip), flip], -1).unsqueeze(1)
            theta = uni("rot", -math.pi / 12, math.pi / 12)
            c, s = torch.cos(theta), torch.sin(theta)
            rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
            q = uni("scale", 0.9, 1.1).view(b, 1, 1) * q @ rot.transpose(1, 2)
            span = 0.08 * self.fov * min(pooled.shape[-2:]) * factor
            shift = torch.stack([uni("shift_y", -span, span), uni("shift_x", -span, span)], -1)
        p = q + (centre + shift).unsqueeze(1)  # source pixel (row, col)
        h, w = pooled.shape[-2:]
        idx_pooled = (p - (factor - 1) / 2) / factor
        grid = torch.stack(
            [(2 * idx_pooled[..., 1] + 1) / w - 1, (2 * idx_pooled[..., 0] + 1) / h - 1], -1
        )
        out = F.grid_sample(
            pooled, grid.reshape(1, b * size, size, 2), mode="bilinear", align_corners=False
        )[0].reshape(2, b, size, size)
        hu, tissue = out[0] + _AIR_HU, out[1]

        count = torch.where(
            label == 1, 1 + (u[:, _U["count"]] * self.max_lesions).floor().long(), 0
        ).clamp(max=self.max_lesions)
        tex = _lesions.smooth_field(z[:, : tex_side**2], self.spatial_size)
        hu, mask = _lesions.insert_lesions(
            hu,
            u[:, len(_U_NAMES) :].reshape(b, MAX_LESIONS, N_LESION_U),
            count,
            candidates=tissue > 0.5,
            inside=tissue.clamp(0, 1),
            texture_field=tex,
            radius=(self.lesion_radius_min, self.lesion_radius_max),
            contrast=(
                self.lesion_contrast_min * self.window_width,
                self.lesion_contrast_max * self.window_width,
            ),
            polarity=self.lesion_polarity,
            shape=self.lesion_shape,
            texture=self.lesion_texture,
            max_lesions=self.max_lesions,
        )
        hu = hu + self.noise_hu * z[:, tex_side**2 :].view(b, size, size)
        x = window(hu, self.window_center, self.window_width)
        return x.unsqueeze(1).float(), mask.unsqueeze(1), {}
