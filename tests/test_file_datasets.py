"""Tests of the file datasets (benchbox.datasets.files): image_folder, nifti, dicom, medmnist_npz.

Every file is written by the test itself into ``tmp_path`` (PNG via Pillow, NPY, NIfTI via
nibabel, DICOM via pydicom, npz via numpy), so the expected tensors are known by construction.
"""

from __future__ import annotations

import csv
import importlib
import math
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchbox import registry
from benchbox.core import Capability
from benchbox.datasets.files import DicomFolder, ImageFolder, MedMNISTNpz, NiftiFolder
from benchbox.errors import UserError
from benchbox.params import validate_params
from tests.tolerance import assert_within, gamma


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# nibabel and pydicom come with the `medical` extra; only the tests that write such files need them.
needs_nibabel = pytest.mark.skipif(
    not _installed("nibabel"), reason="needs nibabel (pip install 'benchbox[medical]')"
)
needs_pydicom = pytest.mark.skipif(
    not _installed("pydicom"), reason="needs pydicom (pip install 'benchbox[medical]')"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- writers ---------------------------------------------------------------------------------------
def write_csv(root: Path, rows: Sequence[dict[str, Any]], name: str = "labels.csv") -> Path:
    header = list(rows[0]) if rows else ["image", "label"]
    path = root / name
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    spacing: tuple[float, float] | None = None,
) -> Path:
    """A minimal valid DICOM (Secondary Capture, Explicit VR Little Endian), uint16 pixels
    ``[H, W]`` or frames ``[F, H, W]``; ``stored=None`` writes no pixel data."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if stored is not None:
        ds.Rows, ds.Columns = stored.shape[-2:]
        if stored.ndim == 3:
            ds.NumberOfFrames = stored.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = stored.astype("<u2").tobytes()
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    ds.save_as(path, enforce_file_format=True)
    return path


def image(i: int, size: int = 8) -> np.ndarray:
    """uint8 ``[size, size]``: a ramp ``10 i + c`` over columns (distinct per sample)."""
    return (10 * i + np.tile(np.arange(size), (size, 1))).astype(np.uint8)


def block_mask(size: int = 8) -> np.ndarray:
    m = np.zeros((size, size), dtype=np.uint8)
    m[0:4, 0:4] = 255
    return m


def png_folder(
    root: Path, n: int = 12, *, masks: bool = True, splits: bool = False, size: int = 8
) -> Path:
    """``n`` ramp PNGs, label ``i % 2``; positives carry a block mask, negatives an empty cell."""
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"image": f"img/{i:02d}.png", "label": i % 2}
        write_png(root / row["image"], image(i, size))
        if masks:
            row["mask"] = ""
            if i % 2:
                row["mask"] = f"mask/{i:02d}.png"
                write_png(root / row["mask"], block_mask(size))
        if splits:
            row["split"] = ("train", "train", "val", "test")[i % 4]
        rows.append(row)
    write_csv(root, rows)
    return root


# -- image_folder ----------------------------------------------------------------------------------
def test_registered_and_validated() -> None:
    names = {"image_folder": ImageFolder, "nifti": NiftiFolder, "dicom": DicomFolder}
    for name, cls in {**names, "medmnist_npz": MedMNISTNpz}.items():
        assert registry.datasets.get(name) is cls
        assert registry.datasets.describe(name)
    _, problems = validate_params(ImageFolder, {}, "datasets[0].image_folder")
    assert problems == ["datasets[0].image_folder.root: required parameter is missing"]
    resolved, problems = validate_params(DicomFolder, {"root": "x", "window": [40, 80]}, "d")
    assert not problems and resolved["window"] == (40.0, 80.0)
    _, problems = validate_params(ImageFolder, {"root": "x", "scale": "zscore"}, "d")
    assert problems and "scale" in problems[0]


def test_image_folder_uint8_values_masks_and_splits(tmp_path: Path) -> None:
    ds = ImageFolder(root=str(png_folder(tmp_path, splits=True)), scale="uint8")
    assert (ds.channels, ds.spatial_size, ds.num_classes) == (1, (8, 8), 2)
    assert ds.provides == {Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D}
    # split column: rows 0, 1 mod 4 train, 2 val, 3 test, in CSV order
    assert [ds.split_size(s) for s in ("train", "val", "test")] == [6, 3, 3]
    b = ds.get("test", [0, 2])
    assert b.ids == ("img/03.png", "img/11.png")
    assert b.label.tolist() == [1, 1] and b.label.dtype == torch.long
    assert b.x.shape == (2, 1, 8, 8) and b.x.dtype == torch.float32
    # pixel (r, c) of image i is 10 i + c; uint8 scaling divides by 255 exactly
    assert float(b.x[0, 0, 5, 7]) == pytest.approx((30 + 7) / 255, abs=1e-7)
    assert float(b.x[1, 0, 0, 0]) == pytest.approx(110 / 255, abs=1e-7)
    assert b.mask is not None and b.mask.dtype == torch.bool
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = True
    assert torch.equal(b.mask[0, 0], expected)
    neg = ds.get("val", [0])  # img/02.png: label 0, empty mask cell -> empty mask
    assert neg.label.tolist() == [0] and neg.mask is not None and not neg.mask.any()
    assert ds.labels("train").tolist() == [0, 1, 0, 1, 0, 1]
    assert "spacing" not in b.meta


def test_minmax_rgb_and_channels_first_npy(tmp_path: Path) -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 60, 110  # min 10, max 110 over all channels
    rgb[1, 2] = (110, 10, 60)
    write_png(tmp_path / "a.png", rgb)
    write_png(tmp_path / "b.png", np.full((4, 6, 3), 7, dtype=np.uint8))  # constant -> zeros
    ramp = np.linspace(-1, 3, 24, dtype=np.float32).reshape(4, 6)
    np.save(tmp_path / "c.npy", np.stack([ramp, 2 * ramp, ramp]))  # [C, H, W], min -2, max 6
    rows = [("a.png", 0, "train"), ("b.png", 1, "val"), ("c.npy", 1, "test")]
    write_csv(tmp_path, [{"image": i, "label": lab, "split": s} for i, lab, s in rows])
    ds = ImageFolder(root=str(tmp_path))  # scale: minmax, per image over all channels
    assert (ds.channels, ds.spatial_size) == (3, (4, 6))
    a = ds.get("train", [0]).x[0]
    assert a[:, 0, 0].tolist() == [0.0, 0.5, 1.0]
    assert a[:, 1, 2].tolist() == [1.0, 0.0, 0.5]
    assert not ds.get("val", [0]).x.any()
    c = ds.get("test", [0]).x[0]
    assert torch.allclose(c[1], torch.from_numpy((2 * ramp + 2) / 8), atol=1e-6)
    assert torch.allclose(c[0], torch.from_numpy((ramp + 2) / 8), atol=1e-6)


def split_rows(*rows: tuple[str, int, str]) -> list[dict[str, Any]]:
    return [{"image": i, "label": lab, "split": s} for i, lab, s in rows]


def test_channels_last_npy_and_16bit_png(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(50, dtype=np.int16).reshape(5, 5, 2))  # [H, W, C]
    np.save(tmp_path / "b.npy", np.full((5, 5, 2), 3.0))
    np.save(tmp_path / "c.npy", np.full((5, 5, 2), 4.0))
    write_csv(
        tmp_path, split_rows(("a.npy", 0, "train"), ("b.npy", 1, "val"), ("c.npy", 1, "test"))
    )
    ds = ImageFolder(root=str(tmp_path))
    assert (ds.channels, ds.spatial_size) == (2, (5, 5))
    x = ds.get("train", [0]).x[0]  # value 10 r + 2 c + channel, minmax over 0..49
    assert float(x[1, 0, 0]) == pytest.approx(1 / 49)
    assert float(x[0, 4, 4]) == pytest.approx(48 / 49)
    arr16 = np.array([[0, 1000], [4095, 2000]], dtype=np.uint16)
    write_png(tmp_path / "c.png", arr16)
    write_png(tmp_path / "d.png", arr16 // 2)
    write_png(tmp_path / "e.png", arr16 // 3)
    assert Image.open(tmp_path / "c.png").mode.startswith("I")
    rows16 = split_rows(("c.png", 0, "train"), ("d.png", 1, "val"), ("e.png", 1, "test"))
    write_csv(tmp_path, rows16, name="l16.csv")
    ds16 = ImageFolder(root=str(tmp_path), labels="l16.csv")
    assert ds16.channels == 1
    expected = torch.tensor([[0, 1000 / 4095], [1.0, 2000 / 4095]])
    assert torch.allclose(ds16.get("train", [0]).x[0, 0], expected)
    as_uint8 = ImageFolder(root=str(tmp_path), labels="l16.csv", scale="uint8")
    with pytest.raises(UserError, match=r"c\.png: values span \[0, 4095\], outside \[0, 255\]"):
        as_uint8.get("train", [0])


def test_stratified_split_is_deterministic_and_order_free(tmp_path: Path) -> None:
    rows = []
    for i in range(30):  # 20 of class 0, 10 of class 1
        write_png(tmp_path / f"{i:02d}.png", image(i))
        rows.append({"image": f"{i:02d}.png", "label": int(i % 3 == 0)})
    write_csv(tmp_path, rows)
    kw = {"root": str(tmp_path), "val_fraction": 0.2, "test_fraction": 0.3, "seed": 5}
    ds = ImageFolder(**kw)
    ids = {s: ds.get(s, range(ds.split_size(s))).ids for s in ("train", "val", "test")}
    # per class: test floor(n f + 1/2), val likewise: class 0 -> 6 test, 4 val; class 1 -> 3, 2
    assert ds.labels("test").tolist().count(0) == 6 and ds.labels("test").tolist().count(1) == 3
    assert ds.labels("val").tolist().count(0) == 4 and ds.labels("val").tolist().count(1) == 2
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == sorted(r["image"] for r in rows)
    again = ImageFolder(**kw)
    assert again.get("test", range(9)).ids == ids["test"]
    random.Random(0).shuffle(rows)  # the split depends on the rows, not their order
    write_csv(tmp_path, rows)
    shuffled = ImageFolder(**kw)
    assert set(shuffled.get("test", range(9)).ids) == set(ids["test"])
    assert set(shuffled.get("val", range(6)).ids) == set(ids["val"])
    other = ImageFolder(**{**kw, "seed": 6})
    assert set(other.get("test", range(9)).ids) != set(ids["test"])


def resampled_constant(c: float, longest: int, out: int) -> float:
    """The rounding bound of a constant ``c`` through two axes of antialiased bilinear
    resampling from at most ``longest`` to ``out`` pixels: per axis ``taps`` products with
    weights normalised to 1 (each weight within γ_{taps+1} of its exact value, the sum within
    γ_taps), so ``|out − c| <= γ_{2·(2·taps + 1)}·|c|``."""
    taps = 2 * math.ceil(longest / out) + 1
    return gamma(2 * (2 * taps + 1)) * abs(c)


def test_resize_mask_nearest_and_mixed_sizes(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.full((8, 8), 200, dtype=np.uint8))
    write_png(tmp_path / "b.png", np.full((6, 10), 100, dtype=np.uint8))
    write_png(tmp_path / "m.png", block_mask(8))
    write_csv(
        tmp_path,
        [
            {"image": "a.png", "label": 1, "mask": "m.png", "split": "train"},
            {"image": "b.png", "label": 0, "mask": "", "split": "val"},
            {"image": "a.png.npy", "label": 1, "mask": "", "split": "test"},
        ],
    )
    np.save(tmp_path / "a.png.npy", np.full((8, 8), 0.25))
    ds = ImageFolder(root=str(tmp_path), size=4, scale="uint8", num_classes=3)
    assert ds.spatial_size == (4, 4) and ds.num_classes == 3
    b = ds.get("train", [0])
    assert b.x.shape == (1, 1, 4, 4)
    # A constant stays constant up to rounding: antialiased bilinear resampling is separable,
    # per axis a sum of at most 2·⌈in/out⌉ + 1 taps with float weights normalised to 1 (ATen's
    # vector and scalar kernels round them differently: exact with AVX2, 1 ulp off without).
    assert_within(b.x, torch.full((1, 1, 4, 4), 200 / 255), resampled_constant(200 / 255, 8, 4))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True  # nearest-exact: output pixel i samples input 2 i + 1
    assert b.mask is not None and torch.equal(b.mask[0, 0], expected)
    val = ds.get("val", [0]).x  # from 6 x 10
    assert_within(val, torch.full((1, 1, 4, 4), 100 / 255), resampled_constant(100 / 255, 10, 4))


def test_downsampling_is_antialiased(tmp_path: Path) -> None:
    step = np.zeros((8, 8), dtype=np.uint8)
    step[:, 4:] = 255
    for name in ("a", "b", "c"):
        write_png(tmp_path / f"{name}.png", step)
    write_csv(
        tmp_path, split_rows(("a.png", 0, "train"), ("b.png", 1, "val"), ("c.png", 1, "test"))
    )
    row = ImageFolder(root=str(tmp_path), size=4, scale="uint8").get("train", [0]).x[0, 0, 0]
    # halving with a triangle filter of twice the width: output column j weighs input columns
    # 2j-1 .. 2j+2 by 1/8, 3/8, 3/8, 1/8 (renormalised at the border); plain bilinear would
    # give [0, 0, 1, 1]
    assert torch.allclose(row, torch.tensor([0.0, 0.125, 0.875, 1.0]), atol=1e-6)


def test_label_source_mask(tmp_path: Path) -> None:
    png_folder(tmp_path, n=8)
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    for row in rows:
        del row["label"]
    write_csv(tmp_path, rows)
    ds = ImageFolder(root=str(tmp_path), label_source="mask", val_fraction=0.25, test_fraction=0.25)
    for split in ("train", "val", "test"):
        b = ds.get(split, range(ds.split_size(split)))
        assert b.mask is not None
        assert torch.equal(b.label, b.mask.flatten(1).any(1).long())
        assert b.label.tolist() == [int(name[4:6]) % 2 for name in b.ids]


def test_no_mask_column_provides_no_masks(tmp_path: Path) -> None:
    ds = ImageFolder(root=str(png_folder(tmp_path, masks=False)))
    assert ds.provides == {Capability.LABELS, Capability.IMAGES_2D}
    assert ds.get("test", [0]).mask is None


def test_spec_paths_and_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = png_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # a relative root resolves to an absolute path
    ds = ImageFolder(root="data")
    spec = ds.spec()
    assert spec["root"] == str(root.resolve())
    assert spec["labels"] == str(root.resolve() / "labels.csv")
    assert spec["fingerprint"] == ImageFolder(root=str(root)).spec()["fingerprint"]
    img = root / "img" / "03.png"
    write_png(img, image(4))  # same size on disk, new content and time
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ImageFolder(root=str(root)).spec()["fingerprint"] != spec["fingerprint"]
    assert ImageFolder(root=str(root), size=4).spec()["size"] == 4


def test_lazy_decoding_with_lru(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchbox.datasets import _io

    ds = ImageFolder(root=str(png_folder(tmp_path, n=40)))
    calls: list[Path] = []
    real = _io.read_image_2d
    monkeypatch.setattr(_io, "read_image_2d", lambda p: calls.append(p) or real(p))
    ds.get("train", [0, 1])
    ds.get("train", [1, 0])
    assert len(calls) == 2  # decoded once each, then served from the cache
    for start in range(0, ds.split_size("train"), 8):
        ds.get("train", range(start, min(start + 8, ds.split_size("train"))))
    assert len(ds._cache._items) <= ds._cache.max_items


# -- nifti -----------------------------------------------------------------------------------------
def nifti_folder(root: Path, *, affine: np.ndarray, n: int = 4) -> Path:
    """Volumes ``[X=6, Y=5, Z=4]`` with value ``100 i + 1000`` at voxel (1, 2, 3), 0 elsewhere;
    masks mark that voxel on odd volumes."""
    rows = []
    for i in range(n):
        vol = np.zeros((6, 5, 4), dtype=np.float32)
        vol[1, 2, 3] = 1000 + 100 * i
        vol[4, 0, 0] = 500
        write_nifti(root / f"v{i}.nii.gz", vol, affine)
        mask = np.zeros((6, 5, 4), dtype=np.uint8)
        if i % 2:
            mask[1, 2, 3] = 1
        write_nifti(root / f"m{i}.nii.gz", mask, affine)
        rows.append(
            {
                "image": f"v{i}.nii.gz",
                "label": i % 2,
                "mask": f"m{i}.nii.gz",
                "split": ("train", "val", "test", "test")[i],
            }
        )
    write_csv(root, rows)
    return root


RAS = np.diag([2.0, 3.0, 4.0, 1.0])


@needs_nibabel
def test_nifti_volume_orientation_spacing_and_scaling(tmp_path: Path) -> None:
    ds = NiftiFolder(root=str(nifti_folder(tmp_path, affine=RAS)), percentiles=(0, 100))
    assert ds.provides == {Capability.LABELS, Capability.MASKS, Capability.VOLUMES_3D}
    # RAS (x, y, z) -> (D, H, W) = (z, flipped y, x): voxel (1, 2, 3) -> (3, 5 - 1 - 2, 1)
    assert (ds.channels, ds.spatial_size) == (1, (4, 5, 6))
    b = ds.get("test", [0, 1])
    assert b.ids == ("v2.nii.gz", "v3.nii.gz") and b.x.shape == (2, 1, 4, 5, 6)
    assert torch.equal(b.meta["spacing"], torch.tensor([[4.0, 3.0, 2.0]] * 2))
    assert float(b.x[0, 0, 3, 2, 1]) == 1.0  # min-max: the maximum is 1
    assert float(b.x[0, 0, 0, 4, 4]) == pytest.approx(500 / 1200)
    assert float(b.x[0].sum()) == pytest.approx(1 + 500 / 1200)
    assert b.mask is not None and b.mask.shape == (2, 1, 4, 5, 6)
    assert not b.mask[0].any() and b.mask[1, 0, 3, 2, 1] and int(b.mask[1].sum()) == 1


@needs_nibabel
def test_nifti_reorients_a_mask_stored_in_another_orientation(tmp_path: Path) -> None:
    root = nifti_folder(tmp_path, affine=RAS, n=4)
    # Rewrite m3 with axes (-y, -x, z): world (10 - 2 a1, 12 - 3 a0, 4 a2), the same grid as
    # the image's diag(2, 3, 4) with the first two axes swapped and flipped. The image's voxel
    # (1, 2, 3) (world (2, 6, 12)) is the mask's voxel (2, 4, 3).
    lps = np.array([[0, -2.0, 0, 10], [-3.0, 0, 0, 12], [0, 0, 4.0, 0], [0, 0, 0, 1]])
    mask = np.zeros((5, 6, 4), dtype=np.uint8)
    mask[2, 4, 3] = 1
    write_nifti(root / "m3.nii.gz", mask, lps)
    ds = NiftiFolder(root=str(root))
    m = ds.get("test", [1]).mask
    assert m is not None and bool(m[0, 0, 3, 2, 1]) and int(m.sum()) == 1


@needs_nibabel
def test_nifti_default_percentile_clip(tmp_path: Path) -> None:
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    for i, split in enumerate(("train", "val", "test")):
        write_nifti(tmp_path / f"{split}.nii", vol + i, np.eye(4))
    write_csv(
        tmp_path,
        [
            {"image": f"{s}.nii", "label": i % 2, "split": s}
            for i, s in enumerate(("train", "val", "test"))
        ],
    )
    ds = NiftiFolder(root=str(tmp_path))
    x = ds.get("train", [0]).x[0, 0]
    lo, hi = np.percentile(np.arange(1000.0), [0.5, 99.5])  # 4.995 and 994.005
    # eye affine is RAS: value v = 100 x + 10 y + z lands at (D, H, W) = (z, 9 - y, x)
    v = 100 * 3 + 10 * 4 + 5
    assert float(x[5, 9 - 4, 3]) == pytest.approx((v - lo) / (hi - lo), abs=1e-6)
    assert float(x[0, 9, 0]) == 0.0 and float(x[9, 0, 9]) == 1.0  # clipped ends


@needs_nibabel
def test_nifti_slices_and_resampling(tmp_path: Path) -> None:
    root = nifti_folder(tmp_path, affine=RAS)
    ds = NiftiFolder(root=str(root), mode="slices", label_source="mask", percentiles=(0, 100))
    assert ds.provides == {Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D}
    assert ds.spatial_size == (5, 6)
    assert [ds.split_size(s) for s in ("train", "val", "test")] == [4, 4, 8]  # D = 4 per volume
    b = ds.get("test", range(8))
    assert b.ids[5] == "v3.nii.gz#001" and b.x.shape == (8, 1, 5, 6)
    # slice labels from the masks: only slice D=3 of v3 (the 8th test sample) is positive
    assert b.label.tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert torch.equal(b.meta["spacing"], torch.tensor([[3.0, 2.0]] * 8))
    assert float(b.x[7, 0, 2, 1]) == 1.0
    small = NiftiFolder(root=str(root), size=2, percentiles=(0, 100))
    assert small.spatial_size == (2, 2, 2)
    # the returned grid's spacing: each axis keeps its physical extent
    assert torch.allclose(small.get("train", [0]).meta["spacing"], torch.tensor([[8.0, 7.5, 6.0]]))


# -- dicom -----------------------------------------------------------------------------------------
STORED = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100  # 0 .. 1100


def dicom_folder(root: Path, photometric: str = "MONOCHROME2") -> Path:
    rows = []
    for i, split in enumerate(("train", "val", "test")):
        write_dicom(
            root / f"{i}.dcm",
            STORED + i,
            photometric=photometric,
            slope=2.0,
            intercept=-1024.0,
            spacing=(0.5, 0.25),
        )
        rows.append({"image": f"{i}.dcm", "label": i % 2, "split": split})
    write_csv(root, rows)
    return root


@needs_pydicom
def test_dicom_modality_lut_window_and_spacing(tmp_path: Path) -> None:
    # HU = 2 stored - 1024; window centre 0, width 4096:
    # x = (HU + 2048) / 4096 = (stored + 512) / 2048
    ds = DicomFolder(root=str(dicom_folder(tmp_path)), window=(0, 4096))
    b = ds.get("train", [0])
    assert b.x.shape == (1, 1, 3, 4) and ds.channels == 1
    assert torch.allclose(b.x[0, 0], torch.from_numpy((STORED + 512) / 2048).float(), atol=1e-7)
    assert torch.equal(b.meta["spacing"], torch.tensor([[0.5, 0.25]]))
    # a narrower window clips: HU in [-1024, -1000] -> stored 0 .. 12 spans [0, 1]
    narrow = DicomFolder(root=str(tmp_path), window=(-1012, 24)).get("train", [0]).x[0, 0]
    assert float(narrow[0, 0]) == 0.0 and float(narrow[0, 1]) == 1.0
    resized = DicomFolder(root=str(tmp_path), size=6).get("train", [0]).meta["spacing"]
    assert torch.allclose(resized, torch.tensor([[0.25, 1 / 6]]))


@needs_pydicom
def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = DicomFolder(root=str(dicom_folder(tmp_path / "m2")), percentiles=(0, 100))
    mono1 = DicomFolder(
        root=str(dicom_folder(tmp_path / "m1", "MONOCHROME1")), percentiles=(0, 100)
    )
    x2, x1 = mono2.get("val", [0]).x, mono1.get("val", [0]).x
    assert torch.allclose(x2[0, 0], torch.from_numpy(STORED / 1100).float(), atol=1e-7)
    assert torch.allclose(x1, 1 - x2, atol=1e-7)
    assert float(x1[0, 0, 0, 0]) == 1.0  # the lowest stored value is the brightest


@needs_pydicom
def test_dicom_multiframe(tmp_path: Path) -> None:
    frames = np.stack([STORED, STORED + 50, STORED + 100])
    rows = []
    for i, split in enumerate(("train", "val", "test")):
        write_dicom(tmp_path / f"{i}.dcm", frames + i, spacing=(1.0, 2.0))
        rows.append({"image": f"{i}.dcm", "label": i % 2, "split": split})
    write_csv(tmp_path, rows)
    first = DicomFolder(root=str(tmp_path), window=(700, 1400))
    assert first.split_size("test") == 1
    assert torch.allclose(
        first.get("test", [0]).x[0, 0], torch.from_numpy(STORED + 2.0).float() / 1400
    )
    sliced = DicomFolder(root=str(tmp_path), window=(700, 1400), multiframe="slices")
    b = sliced.get("test", range(3))
    assert b.ids == ("2.dcm#000", "2.dcm#001", "2.dcm#002")
    assert torch.allclose(b.x[:, 0], torch.from_numpy(frames + 2.0).float() / 1400)
    assert torch.equal(b.meta["spacing"], torch.tensor([[1.0, 2.0]] * 3))


@pytest.mark.parametrize(("module", "cls"), [("pydicom", DicomFolder), ("nibabel", NiftiFolder)])
def test_missing_optional_dependency(
    module: str, cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(
        UserError, match=rf"needs the {module} package.*pip install 'benchbox\[medical\]'"
    ):
        cls(root=str(tmp_path))


# -- medmnist_npz ----------------------------------------------------------------------------------
def write_npz(path: Path, shape: tuple[int, ...], labels_k: int = 1, **override: Any) -> Path:
    arrays: dict[str, np.ndarray] = {}
    for s, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{s}_images"] = (
            (np.arange(n * np.prod(shape)) % 256).astype(np.uint8).reshape(n, *shape)
        )
        arrays[f"{s}_labels"] = (np.arange(n * labels_k) % 3).reshape(n, labels_k).astype(np.uint8)
    arrays.update(override)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_medmnist_2d_gray_rgb_and_3d(tmp_path: Path) -> None:
    gray = MedMNISTNpz(path=str(write_npz(tmp_path / "g.npz", (5, 7))))
    assert (gray.channels, gray.spatial_size, gray.num_classes) == (1, (5, 7), 3)
    assert gray.provides == {Capability.LABELS, Capability.IMAGES_2D}
    b = gray.get("val", [2])
    raw = np.load(tmp_path / "g.npz")
    assert torch.equal(b.x[0, 0], torch.from_numpy(raw["val_images"][2]).float() / 255)
    assert b.ids == ("val-000002",) and b.label.tolist() == [2] and b.mask is None
    rgb = MedMNISTNpz(path=str(write_npz(tmp_path / "c.npz", (4, 4, 3))), size=8)
    assert (rgb.channels, rgb.spatial_size) == (3, (8, 8))
    vol = MedMNISTNpz(path=str(write_npz(tmp_path / "v.npz", (4, 5, 6))))
    assert vol.provides == {Capability.LABELS, Capability.VOLUMES_3D}
    xv = vol.get("test", [3]).x
    assert xv.shape == (1, 1, 4, 5, 6)
    assert torch.equal(
        xv[0, 0], torch.from_numpy(np.load(tmp_path / "v.npz")["test_images"][3]) / 255
    )
    x = MedMNISTNpz(path=str(tmp_path / "c.npz")).get("train", [1]).x[0]
    raw_rgb = torch.from_numpy(np.load(tmp_path / "c.npz")["train_images"][1])  # [H, W, 3]
    assert torch.equal(x, raw_rgb.permute(2, 0, 1) / 255)


def test_medmnist_multilabel(tmp_path: Path) -> None:
    path = str(write_npz(tmp_path / "m.npz", (4, 4), labels_k=3))
    raw = np.load(path)["train_labels"]
    col = MedMNISTNpz(path=path, label_column=1)
    assert col.labels("train").tolist() == raw[:, 1].tolist()
    binary = MedMNISTNpz(path=path, binarize=True)
    assert binary.labels("train").tolist() == (raw != 0).any(1).astype(int).tolist()
    assert binary.num_classes == 2


def test_medmnist_fingerprint_follows_content(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "f.npz", (4, 4))
    first = MedMNISTNpz(path=str(path)).spec()
    assert first["path"] == str(path.resolve())
    write_npz(path, (4, 4), train_images=np.zeros((6, 4, 4), dtype=np.uint8))
    assert MedMNISTNpz(path=str(path)).spec()["fingerprint"] != first["fingerprint"]


# -- every bad-file case: one UserError line naming the file and the fix ---------------------------
Case = Callable[[Path], tuple[Callable[[], Any], str]]


def _bad_root(tmp: Path) -> tuple[Callable[[], Any], str]:
    expected = r"nope: dataset folder not found"
    return lambda: ImageFolder(root=str(tmp / "nope")), expected


def _root_is_file(tmp: Path) -> tuple[Callable[[], Any], str]:
    (tmp / "f").write_text("x")
    expected = r"root must be a folder"
    return lambda: ImageFolder(root=str(tmp / "f")), expected


def _csv_missing(tmp: Path) -> tuple[Callable[[], Any], str]:
    expected = r"labels\.csv: labels CSV not found; write a CSV"
    return lambda: ImageFolder(root=str(tmp)), expected


def _csv_column(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "lbl": 0}])
    expected = r"labels\.csv: missing column 'label' \(did you mean 'lbl'\?\)"
    return lambda: ImageFolder(root=str(tmp)), expected


def _label_missing(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": 0}, {"image": "img/01.png", "label": ""}])
    expected = r"labels\.csv: line 3: label is missing"
    return lambda: ImageFolder(root=str(tmp)), expected


def _label_not_int(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": "1.5"}])
    expected = r"labels\.csv: line 2: label '1\.5' is not a class index"
    return lambda: ImageFolder(root=str(tmp)), expected


def _label_name(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": "tumour"}])
    expected = r"line 2: label 'tumour' is not a class index"
    return lambda: ImageFolder(root=str(tmp)), expected


def _image_missing(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": 0}, {"image": "img/99.png", "label": 1}])
    expected = r"line 3: image file .*img/99\.png not found"
    return lambda: ImageFolder(root=str(tmp)), expected


def _mask_missing(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": 0, "mask": "nomask.png"}])
    expected = r"line 2: mask file .*nomask\.png not found"
    return lambda: ImageFolder(root=str(tmp)), expected


def _corrupt_image(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False)
    (tmp / "img" / "05.png").write_bytes(b"not a png at all")
    expected = r"img/05\.png: cannot read this image \(UnidentifiedImageError"
    return lambda: ImageFolder(root=str(tmp)), expected


def _truncated_image(tmp: Path) -> tuple[Callable[[], Any], str]:
    """Header intact, pixels cut: passes the build, fails (naming the file) when decoded."""
    png_folder(tmp, masks=False, splits=True)
    path = tmp / "img" / "00.png"
    write_png(path, np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    ds = ImageFolder(root=str(tmp))  # built: only the header was read
    expected = r"img/00\.png: cannot read this image"
    return lambda: ds.get("train", [0]), expected


def _verify_catches_truncated(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False)
    path = tmp / "img" / "00.png"
    write_png(path, np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:60])
    expected = r"img/00\.png: cannot read this image"
    return lambda: ImageFolder(root=str(tmp), verify=True), expected


def _mask_shape(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_png(tmp / "mask" / "03.png", np.zeros((8, 6), dtype=np.uint8))
    expected = (
        r"mask/03\.png: mask shape \[8, 6\] differs from image shape \[8, 8\] of .*img/03\.png"
    )
    return lambda: ImageFolder(root=str(tmp)), expected


def _mixed_sizes(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False)
    write_png(tmp / "img" / "04.png", np.zeros((9, 8), dtype=np.uint8))
    expected = r"img/04\.png: size \[9, 8\] differs from \[8, 8\] .*set size: N"
    return lambda: ImageFolder(root=str(tmp)), expected


def _mixed_channels(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False)
    write_png(tmp / "img" / "02.png", np.zeros((8, 8, 3), dtype=np.uint8))
    expected = r"img/02\.png: 3 channel\(s\), but .* has 1"
    return lambda: ImageFolder(root=str(tmp)), expected


def _empty_split_column(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False)
    rows = [
        {"image": f"img/{i:02d}.png", "label": i % 2, "split": ("train", "test")[i % 2]}
        for i in range(4)
    ]
    write_csv(tmp, rows)
    expected = r"labels\.csv: split 'val' is empty: no row has split 'val'"
    return lambda: ImageFolder(root=str(tmp)), expected


def _empty_split_fraction(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, n=4, masks=False)
    expected = r"split 'val' is empty: val_fraction rounds to 0"
    return lambda: ImageFolder(root=str(tmp), val_fraction=0.1), expected


def _bad_split_value(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": 0, "split": "validation"}])
    expected = r"line 2: split 'validation' is not one of train, val, test"
    return lambda: ImageFolder(root=str(tmp)), expected


def _duplicate(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": "img/00.png", "label": 0}, {"image": "img/00.png", "label": 1}])
    expected = r"line 3: image 'img/00\.png' is listed again \(first on line 2\)"
    return lambda: ImageFolder(root=str(tmp)), expected


def _one_class(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": f"img/{i:02d}.png", "label": 0} for i in range(6)])
    expected = r"labels\.csv: every label is 0, so there is one class"
    return lambda: ImageFolder(root=str(tmp)), expected


def _label_above_num_classes(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    write_csv(tmp, [{"image": f"img/{i:02d}.png", "label": i % 3} for i in range(6)])
    expected = r"labels\.csv: line 4: label 2 is not below num_classes 2"
    return lambda: ImageFolder(root=str(tmp), num_classes=2), expected


def _nan_image(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False, splits=True)
    bad = np.zeros((8, 8), dtype=np.float32)
    bad[2, 3] = np.nan
    np.save(tmp / "img" / "00.npy", bad)
    rows = list(csv.DictReader((tmp / "labels.csv").open()))
    rows[0]["image"] = "img/00.npy"
    write_csv(tmp, rows)
    ds = ImageFolder(root=str(tmp))
    expected = r"img/00\.npy: 1 of 64 values are NaN or Inf"
    return lambda: ds.get("train", [0]), expected


def _out_of_range_none(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp, masks=False, splits=True)
    ds = ImageFolder(root=str(tmp), scale="none")
    expected = r"img/00\.png: values span \[0, 7\], outside \[0, 1\] .*use scale: minmax"
    return lambda: ds.get("train", [0]), expected


def _fractions(tmp: Path) -> tuple[Callable[[], Any], str]:
    png_folder(tmp)
    expected = r"leaves no training data"
    return lambda: ImageFolder(root=str(tmp), val_fraction=0.5, test_fraction=0.5), expected


def _npz_missing(tmp: Path) -> tuple[Callable[[], Any], str]:
    expected = r"x\.npz: MedMNIST \.npz not found"
    return lambda: MedMNISTNpz(path=str(tmp / "x.npz")), expected


def _npz_key(tmp: Path) -> tuple[Callable[[], Any], str]:
    path = write_npz(tmp / "k.npz", (4, 4), val_labels=None)
    expected = r"k\.npz: missing array 'val_labels' \(found .*\); a MedMNIST"
    return lambda: MedMNISTNpz(path=str(path)), expected


def _npz_corrupt(tmp: Path) -> tuple[Callable[[], Any], str]:
    (tmp / "c.npz").write_bytes(b"PK\x03\x04garbage")
    expected = r"c\.npz: cannot read this \.npz archive"
    return lambda: MedMNISTNpz(path=str(tmp / "c.npz")), expected


def _npz_labels(tmp: Path) -> tuple[Callable[[], Any], str]:
    path = write_npz(tmp / "l.npz", (4, 4), test_labels=np.zeros((3, 1), dtype=np.uint8))
    expected = r"l\.npz: test_labels has shape \[3, 1\]; expected \[4\]"
    return lambda: MedMNISTNpz(path=str(path)), expected


def _npz_column(tmp: Path) -> tuple[Callable[[], Any], str]:
    path = write_npz(tmp / "c.npz", (4, 4))
    expected = r"label_column 2 is out of range"
    return lambda: MedMNISTNpz(path=str(path), label_column=2), expected


def _dicom_no_pixels(tmp: Path) -> tuple[Callable[[], Any], str]:
    dicom_folder(tmp)
    write_dicom(tmp / "1.dcm", None)
    expected = r"1\.dcm: DICOM file has no pixel data"
    return lambda: DicomFolder(root=str(tmp)), expected


def _dicom_not_dicom(tmp: Path) -> tuple[Callable[[], Any], str]:
    dicom_folder(tmp)
    (tmp / "2.dcm").write_bytes(b"\0" * 300)
    expected = r"2\.dcm: cannot read this DICOM file \(InvalidDicomError"
    return lambda: DicomFolder(root=str(tmp)), expected


def _nifti_4d(tmp: Path) -> tuple[Callable[[], Any], str]:
    nifti_folder(tmp, affine=RAS)
    write_nifti(tmp / "v1.nii.gz", np.zeros((6, 5, 4, 2), dtype=np.float32), RAS)
    expected = r"v1\.nii\.gz: 4D image of shape \[6, 5, 4, 2\]; give one 3D volume"
    return lambda: NiftiFolder(root=str(tmp)), expected


def _nifti_mask_shape(tmp: Path) -> tuple[Callable[[], Any], str]:
    nifti_folder(tmp, affine=RAS)
    write_nifti(tmp / "m2.nii.gz", np.zeros((6, 5, 3), dtype=np.uint8), RAS)
    expected = r"m2\.nii\.gz: mask shape \[3, 5, 6\] differs from image shape \[4, 5, 6\]"
    return lambda: NiftiFolder(root=str(tmp)), expected


def _percentiles(tmp: Path) -> tuple[Callable[[], Any], str]:
    expected = r"percentiles: expected \[low, high\] with low < high"
    return lambda: NiftiFolder(root=str(tmp), percentiles=(99, 1)), expected


BAD_CASES: dict[str, Case] = {
    "root missing": _bad_root,
    "root is a file": _root_is_file,
    "csv missing": _csv_missing,
    "csv column missing": _csv_column,
    "label missing": _label_missing,
    "label not an integer": _label_not_int,
    "label a class name": _label_name,
    "image missing": _image_missing,
    "mask missing": _mask_missing,
    "corrupt image": _corrupt_image,
    "truncated image, lazily": _truncated_image,
    "truncated image, verify": _verify_catches_truncated,
    "mask shape": _mask_shape,
    "mixed sizes": _mixed_sizes,
    "mixed channels": _mixed_channels,
    "empty split (column)": _empty_split_column,
    "empty split (fractions)": _empty_split_fraction,
    "bad split value": _bad_split_value,
    "duplicate image": _duplicate,
    "one class": _one_class,
    "label above num_classes": _label_above_num_classes,
    "NaN in image": _nan_image,
    "out of range for scale none": _out_of_range_none,
    "fractions sum": _fractions,
    "npz missing": _npz_missing,
    "npz key missing": _npz_key,
    "npz corrupt": _npz_corrupt,
    "npz labels length": _npz_labels,
    "npz label column": _npz_column,
    "dicom without pixel data": _dicom_no_pixels,
    "not a dicom": _dicom_not_dicom,
    "nifti 4D": _nifti_4d,
    "nifti mask shape": _nifti_mask_shape,
    "percentiles order": _percentiles,
}


_NEEDS = {
    "dicom without pixel data": needs_pydicom,
    "not a dicom": needs_pydicom,
    "nifti 4D": needs_nibabel,
    "nifti mask shape": needs_nibabel,
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=_NEEDS[c]) if c in _NEEDS else c for c in BAD_CASES]
)
def test_bad_file_gives_one_line(case: str, tmp_path: Path) -> None:
    action, pattern = BAD_CASES[case](tmp_path)
    with pytest.raises(UserError, match=pattern) as info:
        action()
    assert "\n" not in str(info.value)


# -- end to end ------------------------------------------------------------------------------------
def test_suite_runs_on_an_image_folder(tmp_path: Path) -> None:
    from benchbox.runner import run_suite
    from benchbox.suite import parse_suite

    root = png_folder(tmp_path / "data", n=16, splits=True)
    suite = parse_suite(
        {
            "name": "files",
            "seed": 1,
            "batch_size": 3,
            "datasets": [{"image_folder": {"root": str(root), "scale": "uint8"}}],
            "models": ["tests.fakes:TinyModel"],
            "methods": ["tests.fakes:Grad"],
            "metrics": ["tests.fakes:MaskMass", "pointing_game"],
        }
    )
    res = run_suite(suite, output=tmp_path / "results")
    assert not res.failed
    scores = res.scores
    assert set(scores["status"]) == {"ok"}
    test_ids = [f"img/{i:02d}.png" for i in range(16) if i % 4 == 3]
    for metric in ("tests.fakes:MaskMass", "pointing_game"):
        rows = scores[scores["metric"] == metric]
        assert sorted(rows["sample_id"]) == test_ids
        assert rows["label"].tolist() == [1] * 4  # rows 3 mod 4 are odd: positives with masks
        assert rows["value"].notna().all()
    resolved = res.manifest["resolved_suite"]["datasets"][0]["image_folder"]
    assert resolved["root"] == str(root) and resolved["scale"] == "uint8"
