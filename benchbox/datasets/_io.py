"""Readers for the file formats the file datasets load: cheap headers, lazy pixels.

Every reader turns a problem with a file into one ``UserError`` line that names the file, the
problem and the fix. Headers (shape, channels, spacing) are read without decoding pixels, so a
folder's layout can be checked when the dataset is built; pixels are decoded when a sample is
requested.

Array layouts returned here (numpy, before any resampling):

- ``read_image_2d``: ``[C, H, W]`` in the file's own intensity units (PNG via Pillow, ``.npy``).
- ``read_mask``: bool ``[*shape]``, nonzero = True (PNG, ``.npy``, NIfTI).
- ``read_nifti``: float32 ``[D, H, W]`` reoriented to axial slices (see ``nifti_header``).
- ``read_dicom``: float32 ``[F, C, H, W]`` after the modality LUT (RescaleSlope/Intercept).

pydicom and nibabel are imported on first use, so ``benchbox ls`` works without them.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserError

__all__ = [
    "DicomInfo",
    "FileError",
    "Header",
    "ItemCache",
    "decoding",
    "dicom_header",
    "image_2d_header",
    "mask_shape",
    "nifti_header",
    "optional_import",
    "percentile_minmax",
    "read_dicom",
    "read_image_2d",
    "read_mask",
    "read_nifti",
    "require_finite",
    "resize",
    "scale_image",
]

# Pillow modes read as one channel; every other mode is converted to RGB (alpha dropped).
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
# Axial slices: D runs inferior->superior, H anterior->posterior (anterior at the top, as
# radiology shows axial slices), W the patient's left->right (neurological convention).
_NIFTI_AXCODES = ("S", "P", "R")
_DICOM_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Header:
    """What a file holds, read without decoding its pixels.

    Attributes:
        channels: image channels ``C``.
        shape: the file's spatial shape (``(H, W)``, or ``(D, H, W)`` for a volume or a stack
            of frames).
        spacing: physical size of a step along each axis of ``shape`` (mm), None if unknown.
    """

    channels: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None = None


def optional_import(module: str, what: str) -> Any:
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"reading {what} needs the {module} package, which is not installed; "
            f"pip install 'benchbox[medical]'"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:200]}" if line else type(exc).__name__


class FileError(UserError):
    """A problem with one file: ``path``, and ``problem`` (what is wrong and the fix).

    The message is ``"<shown>: <problem>"``; a dataset re-raises it with the path shown
    relative to its root (``FileError.under``), so the line names the file as the CSV does."""

    def __init__(self, path: Path, problem: str, shown: str | None = None) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{shown or path}: {problem}")

    def under(self, root: Path) -> FileError:
        """The same error, naming the file relative to ``root`` (and saying which root)."""
        try:
            rel = self.path.relative_to(root)
        except ValueError:
            return self
        return FileError(self.path, f"{self.problem} (dataset root: {root})", str(rel))


@contextmanager
def decoding(path: Path, what: str) -> Iterator[None]:
    """Turn any decoder failure on ``path`` into one ``UserError`` line naming the file.

    A broad ``except`` on purpose: decoders raise unrelated types on a corrupt file (Pillow a
    ``SyntaxError`` for a broken PNG chunk, gzip ``BadGzipFile``/``EOFError``, pydicom
    ``InvalidDicomError``, numpy ``ValueError``); the original is chained, never swallowed.
    """
    try:
        yield
    except (UserError, MemoryError):
        raise
    except Exception as exc:
        raise FileError(
            path,
            f"cannot read this {what} ({_first_line(exc)}); replace the file or "
            f"re-export it, or remove its row",
        ) from exc


def require_finite(arr: np.ndarray, path: Path) -> None:
    """NaN or Inf in an image would poison every score computed from it."""
    if arr.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise FileError(
                path,
                f"{bad} of {arr.size} values are NaN or Inf; fix the file (e.g. "
                f"np.nan_to_num) or remove its row",
            )


# -- 2D images and masks (Pillow, numpy) -----------------------------------------------------------
def _npy_layout(shape: tuple[int, ...], path: Path) -> tuple[int, tuple[int, int], bool]:
    """(channels, (H, W), channels_last) of a ``.npy`` image.

    ``[H, W]`` is one channel; a 3D array is ``[C, H, W]`` when its first axis is the shortest,
    else ``[H, W, C]`` when its last axis is (ties go to channels-first, torch's layout).
    """
    if len(shape) == 2:
        return 1, (shape[0], shape[1]), False
    if len(shape) == 3:
        if shape[0] <= min(shape[1:]):
            return shape[0], (shape[1], shape[2]), False
        if shape[2] <= min(shape[:2]):
            return shape[2], (shape[0], shape[1]), True
    raise FileError(
        path,
        f"array of shape {list(shape)} is not an image; save [H, W], [C, H, W] or "
        f"[H, W, C] (channels on the shortest axis)",
    )


def _check_npy_dtype(dtype: np.dtype, path: Path) -> None:
    if dtype.kind not in "biuf":
        raise FileError(path, f"array dtype {dtype} is not numeric; save an integer or float array")


def image_2d_header(path: Path) -> Header:
    """Channels and ``(H, W)`` of a ``.npy`` array or an image Pillow reads (PNG, JPEG, TIFF)."""
    with decoding(path, "image"):
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_npy_dtype(arr.dtype, path)
            channels, hw, _ = _npy_layout(tuple(arr.shape), path)
            return Header(channels, hw)
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
        gray = mode in _GRAY_MODES or mode.startswith("I;16")
        return Header(1 if gray else 3, (height, width))


def read_image_2d(path: Path) -> np.ndarray:
    """``[C, H, W]`` pixels in the file's units (uint8, uint16, float, ...); finite checked."""
    with decoding(path, "image"):
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
            _check_npy_dtype(arr.dtype, path)
            _, _, last = _npy_layout(tuple(arr.shape), path)
            arr = arr[None] if arr.ndim == 2 else (np.moveaxis(arr, -1, 0) if last else arr)
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()
                mode = img.mode
                if mode == "1" or mode in ("LA", "La"):
                    arr = np.asarray(img.convert("L"))[None]  # "1" would read as bool
                elif mode in _GRAY_MODES or mode.startswith("I;16"):
                    arr = np.asarray(img)[None]
                else:
                    arr = np.moveaxis(np.asarray(img.convert("RGB")), -1, 0)
    require_finite(arr, path)
    return np.ascontiguousarray(arr)


# Pillow modes a mask may have: one channel (a palette PNG is a label map, read by index).
_MASK_MODES = frozenset({"1", "L", "P", "I", "F"})


def _check_mask_mode(mode: str, path: Path) -> None:
    """A mask is one channel: an RGB(A) or gray+alpha PNG is refused rather than reduced,
    since which channel (or alpha) marks the region is the user's to say."""
    if mode not in _MASK_MODES and not mode.startswith("I;16"):
        from PIL import Image

        raise FileError(
            path,
            f"mask has Pillow mode {mode!r} ({Image.getmodebands(mode)} channels); a mask has "
            "one channel: save it as grayscale (mode L), 1-bit or a palette PNG, nonzero = "
            "inside (e.g. Image.open(p).convert('L').save(p) if every channel marks the same "
            "region)",
        )


def mask_shape(path: Path) -> tuple[int, ...]:
    """Spatial shape of a mask file (PNG, ``.npy`` or NIfTI) without decoding it.

    A mask is one channel: a PNG mask with colour or alpha channels is refused
    (``_check_mask_mode``).
    """
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return nifti_header(path).shape
    with decoding(path, "mask"):
        if name.endswith(".npy"):
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            _check_npy_dtype(arr.dtype, path)
            return tuple(int(s) for s in arr.shape)
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
            mode = img.mode
    _check_mask_mode(mode, path)
    return (height, width)


def read_mask(path: Path) -> np.ndarray:
    """bool mask, nonzero = True (PNG: one channel; palette PNGs by index, i.e. label maps)."""
    name = path.name.lower()
    with decoding(path, "mask"):
        if name.endswith((".nii", ".nii.gz")):
            nib = optional_import("nibabel", "NIfTI masks")
            img = nib.load(path)
            arr = np.asanyarray(img.dataobj)
            arr = _nifti_to_axial(_as_3d(arr, path), img.affine, nib)
        elif name.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
            _check_npy_dtype(arr.dtype, path)
        else:
            from PIL import Image

            with Image.open(path) as img:
                _check_mask_mode(img.mode, path)
                arr = np.asarray(img)
    require_finite(arr, path)
    return np.ascontiguousarray(arr != 0)


# -- intensity scaling -----------------------------------------------------------------------------
def scale_image(arr: np.ndarray, how: Literal["minmax", "uint8", "none"], path: Path) -> np.ndarray:
    """Raw intensities -> float32 in [0, 1] over the whole image (all channels together).

    ``minmax``: ``(x - min) / (max - min)`` (a constant image gives zeros); ``uint8``: ``x / 255``
    (values must lie in [0, 255]); ``none``: ``x`` as it is (values must lie in [0, 1]).
    """
    x = arr.astype(np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if how == "minmax":
        out = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    else:
        top = 255.0 if how == "uint8" else 1.0
        if lo < 0 or hi > top:
            raise FileError(
                path,
                f"values span [{lo:g}, {hi:g}], outside [0, {top:g}] that scale: {how} "
                f"expects; use scale: minmax (or rescale the file)",
            )
        out = x / top
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def percentile_minmax(arr: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the ``percentiles`` (e.g. 0.5 and 99.5) of ``arr``, then min-max to [0, 1].

    ``x' = clip((x - p_lo) / (p_hi - p_lo), 0, 1)`` with ``p`` numpy's linearly interpolated
    percentiles over the whole array (background included). ``(0, 100)`` is plain min-max. A
    constant array gives zeros.
    """
    # float32 throughout: a 256^3 volume in float64 would double the peak memory for no gain
    # in [0, 1] outputs (the percentiles themselves are computed in float64 by numpy).
    x = arr.astype(np.float32, copy=False)
    if not x.size:
        return x.copy()
    lo, hi = (float(v) for v in np.percentile(x, percentiles))
    if hi <= lo:
        return np.zeros_like(x)
    out = (x - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


# -- resampling ------------------------------------------------------------------------------------
def resize(x: Tensor, size: tuple[int, ...], *, mask: bool = False) -> Tensor:
    """Resample ``[N, C, *sp]`` to ``[N, C, *size]`` (2D or 3D).

    Images: bilinear (2D, antialiased so that downsampling averages instead of aliasing) or
    trilinear (3D), ``align_corners=False``; both are convex combinations, so [0, 1] is kept.
    Masks: ``nearest-exact`` (pixel centres, like Pillow and scikit-image; torch's ``nearest``
    shifts by half a pixel).
    """
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if mask:
        return F.interpolate(x.float(), size=size, mode="nearest-exact") > 0.5
    if len(size) == 2:
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return out.clamp_(0.0, 1.0)


# -- NIfTI -----------------------------------------------------------------------------------------
def _as_3d(arr: np.ndarray, path: Path) -> np.ndarray:
    """A 2D image gets a depth of 1; trailing singleton axes (``[X, Y, Z, 1]``) are dropped."""
    shape = tuple(arr.shape)
    if len(shape) > 3 and math.prod(shape[3:]) != 1:
        raise FileError(
            path,
            f"{len(shape)}D image of shape {list(shape)}; give one 3D volume per row "
            f"(e.g. split the series with fslsplit)",
        )
    if len(shape) < 2:
        raise FileError(path, f"image of shape {list(shape)} has fewer than 2 dimensions")
    return arr.reshape(shape[:3] if len(shape) >= 3 else (*shape, 1))


def _axial_transform(affine: np.ndarray, nib: Any) -> np.ndarray:
    orientations = nib.orientations
    return orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.axcodes2ornt(_NIFTI_AXCODES)
    )


def _nifti_to_axial(arr: np.ndarray, affine: np.ndarray, nib: Any) -> np.ndarray:
    return np.ascontiguousarray(
        nib.orientations.apply_orientation(arr, _axial_transform(affine, nib))
    )


def nifti_header(path: Path) -> Header:
    """``(D, H, W)`` and spacing (mm) of a NIfTI volume, as ``read_nifti`` will orient it.

    Volumes are reoriented (axis permutations and flips only, no interpolation) from their
    affine to axial slices: D inferior->superior, H anterior->posterior, W left->right. So every
    volume of a folder shares one orientation whatever its scanner stored.
    """
    nib = optional_import("nibabel", "NIfTI files")
    with decoding(path, "NIfTI file"):
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
        affine = img.affine
    shape3 = _as_3d(np.empty(shape, dtype=np.uint8), path).shape
    zooms3 = (*zooms, *(1.0,) * (3 - len(zooms)))
    transform = _axial_transform(affine, nib)
    out_shape, out_zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        out_shape[int(target)] = shape3[axis]
        out_zooms[int(target)] = zooms3[axis]
    return Header(1, tuple(out_shape), tuple(out_zooms))


def read_nifti(path: Path) -> np.ndarray:
    """float32 ``[D, H, W]`` (scl_slope/inter applied), oriented as ``nifti_header`` says."""
    nib = optional_import("nibabel", "NIfTI files")
    with decoding(path, "NIfTI file"):
        img = nib.load(path)
        arr = _as_3d(img.get_fdata(dtype=np.float32), path)
        arr = _nifti_to_axial(arr, img.affine, nib)
    require_finite(arr, path)
    return arr


# -- DICOM -----------------------------------------------------------------------------------------
def _dicom_spacing(ds: Any) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm: PixelSpacing, else ImagerPixelSpacing (X-ray)."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None


@dataclass(frozen=True)
class DicomInfo:
    """Header facts of one DICOM file: channels, frames, rows, columns, spacing, photometric."""

    channels: int
    frames: int
    rows: int
    cols: int
    spacing: tuple[float, float] | None
    photometric: str


def dicom_header(path: Path) -> DicomInfo:
    """Header facts of a DICOM file, read without decoding its pixels."""
    pydicom = optional_import("pydicom", "DICOM files")
    with decoding(path, "DICOM file"):
        # Large values (the pixels) are read only when accessed, so this reads the header.
        ds = pydicom.dcmread(path, defer_size="4 KB")
        has_pixels = any(tag in ds for tag in _DICOM_PIXEL_TAGS)
        rows, cols = ds.get("Rows"), ds.get("Columns")
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        spacing = _dicom_spacing(ds)
    if not has_pixels:
        raise FileError(
            path,
            "DICOM file has no pixel data (no PixelData element; e.g. a structured "
            "report or a DICOMDIR); list only image files in the CSV",
        )
    if rows is None or cols is None:
        raise FileError(path, "DICOM file lacks Rows/Columns; re-export the image")
    return DicomInfo(samples, frames, int(rows), int(cols), spacing, photometric)


def read_dicom(path: Path) -> np.ndarray:
    """float32 ``[F, C, H, W]``: stored values through the modality LUT (slope/intercept).

    Colour images come as RGB (pydicom >= 3 converts YBR). Compressed transfer syntaxes need
    pydicom's optional decoders (e.g. ``pip install pylibjpeg pylibjpeg-libjpeg``).
    """
    pydicom = optional_import("pydicom", "DICOM files")
    try:
        lut = importlib.import_module("pydicom.pixels").apply_modality_lut
    except (ImportError, AttributeError):  # pydicom 2.x
        lut = importlib.import_module("pydicom.pixel_data_handlers.util").apply_modality_lut

    with decoding(path, "DICOM file"):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples == 1:
            arr = lut(arr, ds)
        arr = np.asarray(arr, dtype=np.float32)
        if frames == 1:
            arr = arr[None]
        arr = arr[:, None] if samples == 1 else np.moveaxis(arr, -1, 1)
    require_finite(arr, path)
    return np.ascontiguousarray(arr)


# -- a small LRU of decoded samples ----------------------------------------------------------------
class ItemCache:
    """Least-recently-used cache bounded by item count and by the bytes of its tensors.

    Consecutive slices of a volume come from one decoded volume, so a handful of entries saves
    re-decoding it per slice; the byte bound keeps memory flat however large the folder is.
    """

    def __init__(self, max_items: int = 16, max_bytes: int = 256 * 2**20) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[int, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: int) -> Any | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: int, value: Any, nbytes: int) -> None:
        if key in self._items:
            self._bytes -= self._items.pop(key)[1]
        if nbytes > self.max_bytes:
            return
        self._items[key] = (value, nbytes)
        self._bytes += nbytes
        while len(self._items) > self.max_items or self._bytes > self.max_bytes:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
