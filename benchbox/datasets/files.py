"""Datasets read from the files medical-imaging users already have.

- ``image_folder`` (:class:`ImageFolder`): PNG (or any format Pillow reads) and ``.npy`` images.
- ``nifti`` (:class:`NiftiFolder`): NIfTI volumes, as 3D volumes or as 2D axial slices.
- ``dicom`` (:class:`DicomFolder`): one DICOM image per file.
- ``medmnist_npz`` (:class:`MedMNISTNpz`): a local MedMNIST-format ``.npz``.

The first three read a labels CSV in the dataset folder::

    image,label,mask,split
    scans/case001.png,1,masks/case001.png,train
    scans/case002.png,0,,test

``image`` and ``label`` (a class index 0, 1, ...) are required; ``mask`` (a ground-truth region,
nonzero = inside; an empty cell is an empty mask) and ``split`` (``train``, ``val`` or ``test``)
are optional. Paths are relative to ``root``. Without a split column the rows are split by a
seeded stratified draw (``val_fraction``, ``test_fraction``, ``seed``): per class, the rows
sorted by image path are permuted with a generator seeded from ``seed`` and the class, and
``floor(n_c * f + 1/2)`` of them go to test, the next ``floor(n_c * f + 1/2)`` to val. The split
depends on the set of rows, not on their order in the CSV; slices of one volume never straddle
two splits.

``root`` (and ``labels``, if not absolute) may be relative: ``root`` resolves against the working
directory benchbox runs in, ``labels`` against ``root``. Every image and mask the CSV lists must
lie inside ``root``: a row such as ``../other/img.png`` (or an absolute path elsewhere) is
refused, so a dataset reads only its own folder. The check is on the path as written (``..``
and absolute paths); a symbolic link inside ``root`` is followed, as the user made it.

Validation happens when the dataset is built, before any work: the folder, the CSV, its columns,
every row's label, that every listed file exists, and every file's header (shape, channels,
pixel data) — one ``UserError`` line naming the file, the problem and the fix. Pixels are decoded
lazily, sample by sample (a small LRU keeps recently decoded files), so memory stays flat however
large the folder; a file that fails to decode raises the same kind of line when it is first
requested (the job's error rows say which file), or ``verify: true`` / ``benchbox validate
--deep`` decodes everything up front instead. Files are named relative to ``root`` in messages.

``spec()`` holds the resolved absolute paths and a fingerprint (SHA-256 of the CSV's bytes and of
every listed file's relative path, size and modification time), so cached models are retrained
when the files change.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from ..core import Batch, Capability, Dataset, Split
from ..errors import UserError
from ..params import MAX_SIZE, Seed, Size
from ..seeding import derive_seed
from . import _io
from ._io import Header

__all__ = ["DicomFolder", "ImageFolder", "MedMNISTNpz", "NiftiFolder"]

# Bump when a change here changes the tensors a dataset returns, so cached models miss.
VERSION = "1"
_SPLITS: tuple[Split, ...] = ("train", "val", "test")
_COLUMNS = ("image", "label", "mask", "split")

Fraction = Annotated[float, Field(gt=0, lt=1)]
Percent = Annotated[float, Field(ge=0, le=100)]
NumClasses = Annotated[Size, Field(ge=2)]


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _set_provides(obj: Dataset, caps: set[Capability]) -> None:
    """Record on the instance what *this* dataset provides (masks only if the CSV has a mask
    column; 2D or 3D by mode). The class attribute keeps the union, which is what the planner
    reads before datasets are built."""
    vars(obj)["provides"] = frozenset(caps)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no "
            f"training data; make their sum < 1"
        )


def _check_percentiles(percentiles: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(percentiles[0]), float(percentiles[1])
    if lo >= hi:
        raise UserError(
            f"percentiles: expected [low, high] with low < high, got {[lo, hi]}; e.g. [0.5, 99.5]"
        )
    return lo, hi


# -- the labels CSV --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    """One CSV row: ``name`` is the image path as written (the sample id)."""

    line: int
    name: str
    image: Path
    label: int | None
    mask: Path | None
    split: str | None


@dataclass(frozen=True)
class _Table:
    path: Path
    rows: list[_Row]
    has_mask: bool
    has_split: bool
    digest: bytes  # SHA-256 of the CSV's bytes


def _resolve_root(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(
            f"{path}: dataset folder not found (root: {root!r}); set root to the folder that "
            f"holds the images and the labels CSV"
        )
    if not path.is_dir():
        raise UserError(f"{path}: root must be a folder, got a file; set root to its folder")
    return path.resolve()


def _parse_label(cell: str | None, where: str) -> int:
    text = (cell or "").strip()
    if not text:
        raise UserError(f"{where}: label is missing; write a class index 0, 1, ... for every row")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise UserError(
            f"{where}: label {text!r} is not a class index; write an integer 0, 1, ... "
            f"(map class names to indices first)"
        )
    return int(value)


def _inside(root: Path, name: str, where: str, what: str) -> Path:
    """``root / name``, refused (``UserError``) when the path as written leaves ``root``."""
    path = Path(os.path.normpath(root / name))
    if not path.is_relative_to(root):
        raise UserError(
            f"{where}: {what} {name!r} is outside the dataset root {root} (it resolves to "
            f"{path}); paths in the CSV are relative to root and stay inside it: move the file "
            f"under root, or set root to a folder that holds every file"
        )
    return root / name


def _read_table(root: Path, labels: str, *, label_required: bool) -> _Table:
    """Read and check the labels CSV: columns, labels, splits, that every listed file exists."""
    given = Path(labels).expanduser()
    path = given if given.is_absolute() else root / given
    if not path.is_file():
        raise UserError(
            f"{path}: labels CSV not found; write a CSV with columns "
            f"image,label[,mask][,split] (paths relative to {root}) or set labels to its path"
        )
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the labels CSV ({exc}); save it as UTF-8") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
    reader.fieldnames = columns
    required = ("image", "label") if label_required else ("image",)
    for col in required:
        if col not in columns:
            close = difflib.get_close_matches(col, columns, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"{path}: missing column {col!r}{hint}; found {columns or 'no header'}; the CSV "
                f"needs a header row image,label[,mask][,split]"
            )
    has_mask, has_split = "mask" in columns, "split" in columns
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    try:
        for record in reader:
            line = reader.line_num
            where = f"{path}: line {line}"
            name = (record.get("image") or "").strip()
            if not name:
                raise UserError(f"{where}: image is empty; give the image path, or delete the row")
            if name in seen:
                raise UserError(
                    f"{where}: image {name!r} is listed again (first on line {seen[name]}); "
                    f"list each image once"
                )
            seen[name] = line
            image = _inside(root, name, where, "image")
            if not image.is_file():
                raise UserError(
                    f"{where}: image file {image} not found; fix the path (relative to {root}) "
                    f"or delete the row"
                )
            label = _parse_label(record.get("label"), where) if label_required else None
            mask = None
            mask_name = (record.get("mask") or "").strip() if has_mask else ""
            if mask_name:
                mask = _inside(root, mask_name, where, "mask")
                if not mask.is_file():
                    raise UserError(
                        f"{where}: mask file {mask} not found; fix the path (relative to "
                        f"{root}) or leave the cell empty for an empty mask"
                    )
            split = None
            if has_split:
                split = (record.get("split") or "").strip().lower()
                if split not in _SPLITS:
                    raise UserError(
                        f"{where}: split {split!r} is not one of train, val, test; fix the cell "
                        f"(or drop the split column to split by val_fraction/test_fraction)"
                    )
            rows.append(_Row(line, name, image, label, mask, split))
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    if not rows:
        raise UserError(f"{path}: the labels CSV has no rows; add one row per image")
    return _Table(path, rows, has_mask, has_split, hashlib.sha256(raw).digest())


def _split_rows(
    table: _Table, row_labels: list[int], val_fraction: float, test_fraction: float, seed: int
) -> dict[Split, list[int]]:
    """Row indices of each split (in CSV order): the split column, or a stratified draw."""
    if table.has_split:
        parts: dict[Split, list[int]] = {s: [] for s in _SPLITS}
        for r, row in enumerate(table.rows):
            parts[row.split].append(r)  # type: ignore[index]
        return parts
    test: list[int] = []
    val: list[int] = []
    for label in sorted(set(row_labels)):
        members = sorted(
            (r for r, lab in enumerate(row_labels) if lab == label),
            key=lambda r: table.rows[r].name,
        )
        gen = torch.Generator().manual_seed(derive_seed("files.split", seed, label))
        order = [members[k] for k in torch.randperm(len(members), generator=gen).tolist()]
        n_test = math.floor(len(members) * test_fraction + 0.5)
        n_val = math.floor(len(members) * val_fraction + 0.5)
        test += order[:n_test]
        val += order[n_test : n_test + n_val]
    held = set(test) | set(val)
    return {
        "train": [r for r in range(len(row_labels)) if r not in held],
        "val": sorted(val),
        "test": sorted(test),
    }


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal up to singleton axes: a ``[1, H, W]`` mask fits an ``(H, W)`` image."""
    return tuple(s for s in a if s != 1) == tuple(s for s in b if s != 1)


# -- shared machinery of the CSV-based datasets ----------------------------------------------------
@dataclass(frozen=True)
class _Item:
    """A decoded, resampled file: ``x`` ``[S, C, *sp]``, ``mask`` ``[S, 1, *sp]``, spacing."""

    x: Tensor
    mask: Tensor | None
    spacing: Tensor | None

    @property
    def nbytes(self) -> int:
        n = self.x.numel() * self.x.element_size()
        return n + (self.mask.numel() if self.mask is not None else 0)


class _FolderDataset(Dataset):
    """A labels CSV plus per-format readers; subclasses give the header and the pixels.

    Each row is one file. A file holds ``S`` samples: one, or — in a slicing mode — one per index
    of the first spatial axis of its ``shape`` (slices of a volume, frames of a multi-frame DICOM).
    """

    _has_spacing: ClassVar[bool] = False
    _sliced: bool = False

    # -- per-format hooks -------------------------------------------------------------------------
    def _header(self, row: _Row) -> Header:
        raise NotImplementedError

    def _decode(self, r: int) -> np.ndarray:
        """float32 ``[C, *shape]`` scaled to [0, 1] for row ``r``."""
        raise NotImplementedError

    def _format_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- setup ------------------------------------------------------------------------------------
    def _setup(
        self,
        *,
        root: str,
        labels: str,
        size: int | None,
        label_source: Literal["column", "mask"],
        num_classes: int | None,
        val_fraction: float,
        test_fraction: float,
        seed: int,
        verify: bool,
    ) -> None:
        _check_fractions(val_fraction, test_fraction)
        self.root = _resolve_root(root)
        self.size = None if size is None else int(size)
        self.label_source = label_source
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.seed = int(seed)
        table = _read_table(self.root, labels, label_required=label_source == "column")
        if label_source == "mask" and not table.has_mask:
            raise UserError(
                f"{table.path}: label_source: mask needs a mask column; add one or use "
                f"label_source: column"
            )
        self._table = table
        self._rows = table.rows
        self._cache = _io.ItemCache()
        with self._naming_files():
            self._headers = [self._header(row) for row in self._rows]
            self._check_layout()

        counts = [h.shape[0] if self._sliced else 1 for h in self._headers]
        if label_source == "column":
            sample_labels = [
                [int(row.label or 0)] * n for row, n in zip(self._rows, counts, strict=True)
            ]
        else:  # label 1 iff the mask, as returned (after resampling), has any voxel
            with self._naming_files():
                sample_labels = [
                    self._mask_tensor(r).flatten(1).any(1).long().tolist()
                    for r in range(len(self._rows))
                ]
        top = max(max(labs, default=0) for labs in sample_labels)
        self.num_classes = self._resolve_num_classes(num_classes, top, sample_labels)

        row_labels = [max(labs, default=0) for labs in sample_labels]
        parts = _split_rows(table, row_labels, self.val_fraction, self.test_fraction, self.seed)
        self._samples: dict[Split, list[tuple[int, int]]] = {}
        self._labels: dict[Split, Tensor] = {}
        for split in _SPLITS:
            pairs = [(r, k) for r in parts[split] for k in range(counts[r])]
            if not pairs:
                how = (
                    f"no row has split {split!r}; give at least one"
                    if table.has_split
                    else f"{split}_fraction rounds to 0 rows per class for {len(self._rows)} "
                    f"rows; raise it, add rows, or give a split column"
                )
                raise UserError(f"{table.path}: split {split!r} is empty: {how}")
            self._samples[split] = pairs
            self._labels[split] = torch.tensor([sample_labels[r][k] for r, k in pairs])

        caps = {Capability.LABELS, Capability.IMAGES_2D}
        if len(self.spatial_size) == 3:
            caps = {Capability.LABELS, Capability.VOLUMES_3D}
        if table.has_mask:
            caps.add(Capability.MASKS)
        _set_provides(self, caps)
        self._fingerprint = self._compute_fingerprint()
        if verify:
            for r in range(len(self._rows)):
                self._load(r)

    @contextmanager
    def _naming_files(self) -> Iterator[None]:
        """A file's problem names it relative to ``root``, as the CSV does."""
        try:
            yield
        except _io.FileError as exc:
            raise exc.under(self.root) from exc

    def verify(self) -> list[str]:
        """Decode every listed image and mask (as ``benchbox validate --deep`` does): one line
        per file that cannot be used (unreadable, truncated, NaN/Inf, out of range), naming it
        relative to ``root``. Memory stays flat: decoded files go through the bounded cache."""
        problems: list[str] = []
        for r in range(len(self._rows)):
            try:
                self._load(r)
            except UserError as exc:
                problems.append(str(exc))
        return problems

    def _check_layout(self) -> None:
        """Channels agree, masks fit their images, sample sizes agree unless ``size`` is set."""
        first_row, first = self._rows[0], self._headers[0]
        for row, head in zip(self._rows, self._headers, strict=True):
            if head.channels != first.channels:
                raise _io.FileError(
                    row.image,
                    f"{head.channels} channel(s), but {first_row.name} has {first.channels}; "
                    f"convert all images to one mode (grayscale or RGB)",
                )
            if row.mask is not None:
                shape = _io.mask_shape(row.mask)
                if not _same_shape(shape, head.shape):
                    raise _io.FileError(
                        row.mask,
                        f"mask shape {list(shape)} differs from image shape {list(head.shape)} "
                        f"of {row.name}; save the mask at the image's size",
                    )
        sample = self._sample_shape(first)
        for row, head in zip(self._rows, self._headers, strict=True):
            if self.size is None and self._sample_shape(head) != sample:
                raise _io.FileError(
                    row.image,
                    f"size {list(self._sample_shape(head))} differs from {list(sample)} of "
                    f"{first_row.name}; set size: N to resample every sample to N per side",
                )
        self.channels = first.channels
        self.spatial_size = sample if self.size is None else (self.size,) * len(sample)

    def _sample_shape(self, head: Header) -> tuple[int, ...]:
        return head.shape[1:] if self._sliced else head.shape

    def _resolve_num_classes(
        self, num_classes: int | None, top: int, sample_labels: list[list[int]]
    ) -> int:
        if num_classes is None:
            if top < 1:
                why = "every mask is empty" if self.label_source == "mask" else "every label is 0"
                raise UserError(
                    f"{self._table.path}: {why}, so there is one class; a classifier needs two "
                    f"(check the labels, or set num_classes)"
                )
            return top + 1
        if top >= num_classes:
            r = next(r for r, labs in enumerate(sample_labels) if max(labs, default=0) == top)
            raise UserError(
                f"{self._table.path}: line {self._rows[r].line}: label {top} is not below "
                f"num_classes {num_classes}; raise num_classes or fix the label"
            )
        return int(num_classes)

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256(self._table.digest)
        for row in self._rows:
            for p in (row.image, row.mask):
                if p is not None:
                    st = p.stat()
                    rel = p.relative_to(self.root) if p.is_relative_to(self.root) else p
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    # -- loading ----------------------------------------------------------------------------------
    def _mask_tensor(self, r: int) -> Tensor:
        """bool ``[S, 1, *sp]`` at the dataset's size; all False when the row has no mask."""
        row, head = self._rows[r], self._headers[r]
        if row.mask is None:
            m = torch.zeros(head.shape, dtype=torch.bool)
        else:
            m = torch.from_numpy(_io.read_mask(row.mask).reshape(head.shape))
        m = m[:, None] if self._sliced else m[None, None]
        return _io.resize(m, self.spatial_size, mask=True)

    def _load(self, r: int) -> _Item:
        hit = self._cache.get(r)
        if hit is not None:
            return hit
        with self._naming_files():
            return self._decode_item(r)

    def _decode_item(self, r: int) -> _Item:
        row, head = self._rows[r], self._headers[r]
        arr = self._decode(r)
        if tuple(arr.shape) != (head.channels, *head.shape):
            raise _io.FileError(
                row.image,
                f"decoded shape {list(arr.shape)} differs from the header's "
                f"{[head.channels, *head.shape]}; was the file replaced? rebuild the dataset",
            )
        x = torch.from_numpy(arr)
        x = x.movedim(1, 0) if self._sliced else x[None]
        x = _io.resize(x.contiguous(), self.spatial_size)
        mask = self._mask_tensor(r) if self._table.has_mask else None
        spacing = None
        if self._has_spacing:
            sample = self._sample_shape(head)
            old = (math.nan,) * len(sample) if head.spacing is None else head.spacing
            old = old[1:] if self._sliced else old
            # The spacing of the returned grid: each axis spans the same physical extent.
            spacing = torch.tensor(
                [s * n / m for s, n, m in zip(old, sample, self.spatial_size, strict=True)],
                dtype=torch.float32,
            )
        item = _Item(x, mask, spacing)
        self._cache.put(r, item, item.nbytes)
        return item

    # -- Dataset contract -------------------------------------------------------------------------
    def split_size(self, split: Split) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> list[tuple[int, int]]:
        if split not in self._samples:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
        return self._samples[split]

    def labels(self, split: Split) -> Tensor:
        """Long ``[n]``: every sample's label in ``split`` (no pixels decoded)."""
        self._split(split)
        return self._labels[split]

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        samples = self._split(split)
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < len(samples):
                raise IndexError(
                    f"index {i} out of range for split {split!r} of size {len(samples)}"
                )
        xs, masks, spacings, ids = [], [], [], []
        for i in idx:
            r, k = samples[i]
            item = self._load(r)
            xs.append(item.x[k])
            if item.mask is not None:
                masks.append(item.mask[k])
            if item.spacing is not None:
                spacings.append(item.spacing)
            name = self._rows[r].name
            ids.append(f"{name}#{k:03d}" if self._sliced else name)
        empty = (0, self.channels, *self.spatial_size)
        x = torch.stack(xs) if xs else torch.empty(empty)
        mask = None
        if self._table.has_mask:
            mask_empty = torch.empty((0, 1, *self.spatial_size), dtype=torch.bool)
            mask = torch.stack(masks) if masks else mask_empty
        meta: dict[str, Tensor] = {}
        if self._has_spacing:
            n_dims = len(self.spatial_size)
            meta["spacing"] = torch.stack(spacings) if spacings else torch.empty(0, n_dims)
        label = self._labels[split][torch.as_tensor(idx, dtype=torch.long)]
        return Batch(x=x, label=label, ids=tuple(ids), mask=mask, meta=meta)

    def spec(self) -> dict[str, Any]:
        return {
            "class": _class_path(self),
            "version": VERSION,
            "root": str(self.root),
            "labels": str(self._table.path),
            "fingerprint": self._fingerprint,
            "size": self.size,
            "label_source": self.label_source,
            "num_classes": self.num_classes,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            **self._format_spec(),
        }


class ImageFolder(_FolderDataset):
    """2D images (PNG, JPEG, TIFF via Pillow; .npy) and masks listed in a labels CSV.

    Parameters:
        root: the folder; CSV paths are relative to it.
        labels: the labels CSV (``image,label[,mask][,split]``; see the module docstring),
            relative to ``root`` or absolute.
        size: resample every image to ``size × size`` (bilinear, antialiased; masks
            nearest-exact; the aspect ratio is not kept). None: all images must share one size.
        scale: how raw values become [0, 1], per image over all channels — ``minmax``:
            ``(x - min) / (max - min)`` (a constant image gives zeros); ``uint8``: ``x / 255``,
            which keeps absolute intensities of 8-bit images comparable (values must lie in
            [0, 255]; 16-bit PNGs need ``minmax``); ``none``: values already in [0, 1].
        label_source: ``column`` (the CSV's labels) or ``mask`` (label 1 iff the mask, after
            resampling, is nonempty; no label column needed).
        num_classes: number of classes; None: the largest label + 1.
        val_fraction, test_fraction, seed: the stratified split when the CSV has no split column.
        verify: decode every file when the dataset is built (slower), so corrupt files,
            NaN/Inf or out-of-range values stop the run before any work.

    Images: Pillow grayscale modes (L, I;16, I, F, 1, LA) give one channel, others are converted
    to RGB (alpha dropped). ``.npy``: ``[H, W]``, ``[C, H, W]`` or ``[H, W, C]`` (channels on the
    shortest axis), any numeric dtype. Masks: PNG (any channel nonzero; palette PNGs by index) or
    ``.npy``; nonzero = inside. ``x`` is ``[B, C, H, W]``; ``mask`` bool ``[B, 1, H, W]``.
    """

    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})

    def __init__(
        self,
        *,
        root: str,
        labels: str = "labels.csv",
        size: Size | None = None,
        scale: Literal["minmax", "uint8", "none"] = "minmax",
        label_source: Literal["column", "mask"] = "column",
        num_classes: NumClasses | None = None,
        val_fraction: Fraction = 0.15,
        test_fraction: Fraction = 0.15,
        seed: Seed = 0,
        verify: bool = False,
    ) -> None:
        self.scale: Literal["minmax", "uint8", "none"] = scale
        self._setup(
            root=root,
            labels=labels,
            size=size,
            label_source=label_source,
            num_classes=num_classes,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            verify=verify,
        )

    def _header(self, row: _Row) -> Header:
        return _io.image_2d_header(row.image)

    def _decode(self, r: int) -> np.ndarray:
        path = self._rows[r].image
        return _io.scale_image(_io.read_image_2d(path), self.scale, path)

    def _format_spec(self) -> dict[str, Any]:
        return {"scale": self.scale}


class NiftiFolder(_FolderDataset):
    """NIfTI volumes (.nii, .nii.gz) and masks, as 3D volumes or 2D axial slices.

    Parameters:
        root, labels: the folder and its labels CSV (``image,label[,mask][,split]``; masks are
            NIfTI volumes on the image's grid).
        mode: ``volume``: ``x`` ``[B, 1, D, H, W]``, one sample per file; ``slices``: ``x``
            ``[B, 1, H, W]``, one sample per axial slice (ids ``<image>#<k>``); a file's slices
            all go to its row's split, so no patient straddles train and test.
        size: resample to ``size`` per side (volumes trilinear, slices bilinear; masks
            nearest-exact). None: all volumes (slices: all slices) must share one shape.
        percentiles: intensity scaling per volume: clip to these percentiles of the whole
            volume (background included), then min-max to [0, 1]; ``[0, 100]`` is plain min-max.
        label_source: ``column``, or ``mask``: label 1 iff the sample's mask (the slice's in
            ``slices`` mode) is nonempty — slice-level lesion labels from segmentations.
        num_classes, val_fraction, test_fraction, seed, verify: as for ``image_folder``.

    Orientation: each volume is reoriented from its affine (permutations and flips only, no
    interpolation) so that D runs inferior->superior, H anterior->posterior and W the patient's
    left->right. ``Batch.meta["spacing"]`` is float32 ``[B, 3]`` (volume: dz, dy, dx) or
    ``[B, 2]`` (slices: dy, dx) in mm, of the returned grid (so scaled by the resampling).
    Needs nibabel (``pip install 'benchbox[medical]'``).
    """

    provides = frozenset(
        {Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D, Capability.VOLUMES_3D}
    )
    _has_spacing = True

    def __init__(
        self,
        *,
        root: str,
        labels: str = "labels.csv",
        mode: Literal["volume", "slices"] = "volume",
        size: Size | None = None,
        percentiles: tuple[Percent, Percent] = (0.5, 99.5),
        label_source: Literal["column", "mask"] = "column",
        num_classes: NumClasses | None = None,
        val_fraction: Fraction = 0.15,
        test_fraction: Fraction = 0.15,
        seed: Seed = 0,
        verify: bool = False,
    ) -> None:
        self.percentiles = _check_percentiles(percentiles)
        _io.optional_import("nibabel", "NIfTI files")
        self.mode = mode
        self._sliced = mode == "slices"
        self._setup(
            root=root,
            labels=labels,
            size=size,
            label_source=label_source,
            num_classes=num_classes,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            verify=verify,
        )

    def _header(self, row: _Row) -> Header:
        return _io.nifti_header(row.image)

    def _decode(self, r: int) -> np.ndarray:
        vol = _io.read_nifti(self._rows[r].image)
        return _io.percentile_minmax(vol, self.percentiles)[None]

    def _format_spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "percentiles": list(self.percentiles)}


class DicomFolder(_FolderDataset):
    """DICOM images, one per file, with PNG/.npy masks, listed in a labels CSV.

    Parameters:
        root, labels: the folder and its labels CSV (``image,label[,mask][,split]``).
        size: resample every image to ``size × size``; None: all must share one size.
        window: ``[center, width]`` in modality units (e.g. CT Hounsfield units ``[40, 80]``
            for brain): ``x' = clip((x - (center - width/2)) / width, 0, 1)``. None: percentile
            min-max with ``percentiles``.
        percentiles: clip to these percentiles of the image, then min-max to [0, 1].
        multiframe: ``first``: a multi-frame file gives its first frame; ``slices``: every
            frame is a sample (ids ``<image>#<k>``; its mask, if any, a ``.npy`` ``[F, H, W]``).
        label_source, num_classes, val_fraction, test_fraction, seed, verify: as for
            ``image_folder``.

    Pixels go through the modality LUT (``RescaleSlope · x + RescaleIntercept``) before the
    window; MONOCHROME1 images (where low values are bright) are inverted after scaling, so
    bright is always 1. ``Batch.meta["spacing"]`` is float32 ``[B, 2]`` (row, column spacing in
    mm, from PixelSpacing or else ImagerPixelSpacing; NaN when absent), of the returned grid.
    A series (one slice per file) is not stacked into a volume: convert it to NIfTI (e.g. with
    dcm2niix) and use ``nifti``. Needs pydicom (``pip install 'benchbox[medical]'``).
    """

    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    _has_spacing = True

    def __init__(
        self,
        *,
        root: str,
        labels: str = "labels.csv",
        size: Size | None = None,
        window: tuple[float, PositiveFloat] | None = None,
        percentiles: tuple[Percent, Percent] = (0.5, 99.5),
        multiframe: Literal["first", "slices"] = "first",
        label_source: Literal["column", "mask"] = "column",
        num_classes: NumClasses | None = None,
        val_fraction: Fraction = 0.15,
        test_fraction: Fraction = 0.15,
        seed: Seed = 0,
        verify: bool = False,
    ) -> None:
        self.percentiles = _check_percentiles(percentiles)
        _io.optional_import("pydicom", "DICOM files")
        self.window = None if window is None else (float(window[0]), float(window[1]))
        self.multiframe = multiframe
        self._sliced = multiframe == "slices"
        self._photometric: list[str] = []
        self._setup(
            root=root,
            labels=labels,
            size=size,
            label_source=label_source,
            num_classes=num_classes,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            verify=verify,
        )

    def _header(self, row: _Row) -> Header:
        info = _io.dicom_header(row.image)
        self._photometric.append(info.photometric)
        spacing = info.spacing
        if self._sliced:
            three = None if spacing is None else (math.nan, *spacing)
            return Header(info.channels, (info.frames, info.rows, info.cols), three)
        return Header(info.channels, (info.rows, info.cols), spacing)

    def _decode(self, r: int) -> np.ndarray:
        arr = _io.read_dicom(self._rows[r].image)  # [F, C, H, W]
        if not self._sliced:
            arr = arr[:1]
        if self.window is not None:
            center, width = self.window
            out = np.clip((arr - (center - width / 2)) / width, 0.0, 1.0).astype(np.float32)
        else:
            out = _io.percentile_minmax(arr, self.percentiles)
        if self._photometric[r] == "MONOCHROME1":
            out = 1.0 - out
        return out.swapaxes(0, 1) if self._sliced else out[0]  # [C, F, H, W] or [C, H, W]

    def _format_spec(self) -> dict[str, Any]:
        return {
            "window": None if self.window is None else list(self.window),
            "percentiles": list(self.percentiles),
            "multiframe": self.multiframe,
        }


# -- MedMNIST --------------------------------------------------------------------------------------
_NPZ_KEYS = tuple(f"{s}_{k}" for s in _SPLITS for k in ("images", "labels"))


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an ``.npz``, read from the headers without the data."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with _io.decoding(path, ".npz archive"), zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(fh)
            out[member[: -len(".npy")]] = (tuple(int(s) for s in shape), np.dtype(dtype))
    return out


class MedMNISTNpz(Dataset):
    """A local MedMNIST-format .npz (2D or 3D, any MedMNIST/MedMNIST+ size); no masks.

    Parameters:
        path: the ``.npz`` with ``train_images``, ``train_labels``, ``val_images``,
            ``val_labels``, ``test_images``, ``test_labels`` (MedMNIST's own files, e.g.
            ``pathmnist.npz``, ``organmnist3d_64.npz``).
        size: resample to ``size`` per side (bilinear / trilinear); None: the file's size.
        label_column: for ``[N, K]`` labels, the column used as the class.
        binarize: label 1 iff any entry of the sample's label row is nonzero (multi-label
            ``chestmnist``: "any finding"; single-column: "not class 0"); ``label_column`` is
            then ignored.
        num_classes: None: the largest label + 1 over all splits.

    Images ``[N, H, W]`` (gray), ``[N, H, W, 3]`` (RGB) or ``[N, D, H, W]`` (3D; a 4D array
    whose last axis is 3 counts as RGB) become ``x`` ``[B, C, H, W]`` or ``[B, 1, D, H, W]``.
    uint8 images are divided by 255 (MedMNIST's own scaling, so absolute intensities stay
    comparable); float images must already lie in [0, 1]. Labels are integers ``[N]`` or
    ``[N, K]``. Shapes and labels are checked when the dataset is built; a split's images are
    read on first use and kept in memory as stored (uint8: 1 byte per pixel).
    """

    provides = frozenset({Capability.LABELS, Capability.IMAGES_2D, Capability.VOLUMES_3D})

    def __init__(
        self,
        *,
        path: str,
        size: Size | None = None,
        label_column: Annotated[int, Field(ge=0, le=MAX_SIZE)] = 0,
        binarize: bool = False,
        num_classes: NumClasses | None = None,
    ) -> None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise UserError(
                f"{given}: MedMNIST .npz not found (path: {path!r}); download it once (e.g. "
                f"medmnist's pathmnist.npz) and set path to the file"
            )
        self.path = given.resolve()
        self.size = None if size is None else int(size)
        self.label_column = int(label_column)
        self.binarize = bool(binarize)
        headers = _npz_headers(self.path)
        for key in _NPZ_KEYS:
            if key not in headers:
                raise UserError(
                    f"{self.path}: missing array {key!r} (found {sorted(headers) or 'none'}); "
                    f"a MedMNIST .npz has {', '.join(_NPZ_KEYS)}"
                )
        sample_shape = headers["train_images"][0][1:]
        for split in _SPLITS:
            shape, dtype = headers[f"{split}_images"]
            if dtype != np.uint8 and dtype.kind != "f":
                raise UserError(
                    f"{self.path}: {split}_images has dtype {dtype}; store uint8 (0-255) or "
                    f"float in [0, 1]"
                )
            if len(shape) not in (3, 4):
                raise UserError(
                    f"{self.path}: {split}_images has shape {list(shape)}; expected [N, H, W], "
                    f"[N, H, W, 3] or [N, D, H, W]"
                )
            if shape[1:] != sample_shape:
                raise UserError(
                    f"{self.path}: {split}_images samples are {list(shape[1:])} but train's are "
                    f"{list(sample_shape)}; store one shape for all splits"
                )
            if shape[0] == 0:
                raise UserError(
                    f"{self.path}: split {split!r} is empty ({split}_images has 0 samples); "
                    f"every split needs at least one"
                )
        self._rgb = len(sample_shape) == 3 and sample_shape[-1] == 3
        spatial = sample_shape[:2] if self._rgb else sample_shape
        self.channels = 3 if self._rgb else 1
        self.spatial_size = spatial if self.size is None else (self.size,) * len(spatial)
        self._labels = {s: self._read_labels(s, headers[f"{s}_images"][0][0]) for s in _SPLITS}
        top = max(int(v.max()) for v in self._labels.values())
        if num_classes is None:
            if top < 1:
                raise UserError(
                    f"{self.path}: every label is 0, so there is one class; a classifier needs "
                    f"two (check label_column, or set num_classes)"
                )
            self.num_classes = top + 1
        elif top >= num_classes:
            raise UserError(
                f"{self.path}: label {top} is not below num_classes {num_classes}; raise "
                f"num_classes or pick another label_column"
            )
        else:
            self.num_classes = int(num_classes)
        caps = {Capability.LABELS}
        caps.add(Capability.VOLUMES_3D if len(self.spatial_size) == 3 else Capability.IMAGES_2D)
        _set_provides(self, caps)
        self._images: dict[str, np.ndarray] = {}
        self._fingerprint: str | None = None

    def _read_labels(self, split: str, n: int) -> Tensor:
        key = f"{split}_labels"
        with _io.decoding(self.path, ".npz archive"), np.load(self.path) as npz:
            raw = np.asarray(npz[key])
        if raw.ndim not in (1, 2) or raw.shape[0] != n:
            raise UserError(
                f"{self.path}: {key} has shape {list(raw.shape)}; expected [{n}] or [{n}, K] "
                f"(one row per image of {split}_images)"
            )
        raw = raw.reshape(n, -1)
        integral = raw.dtype.kind in "biu" or (
            raw.dtype.kind == "f" and bool(np.all(np.isfinite(raw) & (raw == np.round(raw))))
        )
        if not integral or bool(np.any(raw < 0)):
            raise UserError(
                f"{self.path}: {key} holds values that are not class indices (integers >= 0); "
                f"fix the labels"
            )
        if self.binarize:
            return torch.from_numpy((raw != 0).any(axis=1).astype(np.int64))
        if self.label_column >= raw.shape[1]:
            raise UserError(
                f"{self.path}: label_column {self.label_column} is out of range: {key} has "
                f"{raw.shape[1]} column(s); use 0..{raw.shape[1] - 1} or binarize: true"
            )
        return torch.from_numpy(raw[:, self.label_column].astype(np.int64))

    def _split_images(self, split: str) -> np.ndarray:
        if split not in self._images:
            key = f"{split}_images"
            with _io.decoding(self.path, ".npz archive"), np.load(self.path) as npz:
                arr = np.asarray(npz[key])
            if arr.dtype.kind == "f":
                _io.require_finite(arr, self.path)
                lo, hi = float(arr.min()), float(arr.max())
                if lo < 0 or hi > 1:
                    raise UserError(
                        f"{self.path}: {key} is float with values in [{lo:g}, {hi:g}], outside "
                        f"[0, 1]; store uint8 (0-255) or rescale to [0, 1]"
                    )
            self._images[split] = arr
        return self._images[split]

    def verify(self) -> list[str]:
        """Read every split's images (finite values, in range), as a run would."""
        problems: list[str] = []
        for split in _SPLITS:
            try:
                self._split_images(split)
            except UserError as exc:
                problems.append(str(exc))
            self._images.pop(split, None)  # checked, not kept: a run reads what it needs
        return problems

    # -- Dataset contract -------------------------------------------------------------------------
    def split_size(self, split: Split) -> int:
        if split not in self._labels:
            raise UserError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
        return int(self._labels[split].numel())

    def labels(self, split: Split) -> Tensor:
        """Long ``[n]``: every sample's label in ``split``."""
        self.split_size(split)
        return self._labels[split]

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        n = self.split_size(split)
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"index {bad} out of range for split {split!r} of size {n}")
        raw = self._split_images(split)[idx]
        x = torch.from_numpy(np.ascontiguousarray(raw))
        x = x.float() / 255.0 if raw.dtype == np.uint8 else x.float()
        x = x.permute(0, 3, 1, 2) if self._rgb else x.unsqueeze(1)
        x = _io.resize(x.contiguous(), self.spatial_size)
        ids = tuple(f"{split}-{i:06d}" for i in idx.tolist())
        return Batch(x=x, label=self._labels[split][torch.from_numpy(idx)], ids=ids)

    def spec(self) -> dict[str, Any]:
        if self._fingerprint is None:
            h = hashlib.sha256()
            with self.path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            self._fingerprint = h.hexdigest()
        return {
            "class": _class_path(self),
            "version": VERSION,
            "path": str(self.path),
            "fingerprint": self._fingerprint,
            "size": self.size,
            "label_column": self.label_column,
            "binarize": self.binarize,
            "num_classes": self.num_classes,
        }
