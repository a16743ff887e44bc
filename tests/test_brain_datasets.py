"""Tests of the MNI152 brain lesion datasets, the shortcut variant and the CT lesion dataset."""

from __future__ import annotations

import inspect
import json
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from benchbox import registry
from benchbox.core import Batch, Capability, Dataset
from benchbox.datasets import _lesions, brain, ct
from benchbox.datasets.brain import BrainLesions2D, BrainLesions3D, BrainLesionsShortcut
from benchbox.datasets.ct import CTLesions2D
from benchbox.errors import UserError
from benchbox.params import validate_params
from tests.conftest import TRAIN_SEEDS

SMALL = {"n_train": 40, "n_val": 20, "n_test": 30}
CLEAN = {"noise": 0.0, "bias_field": 0.0, "augment": False, "lesion_texture": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FACTORIES: dict[str, Callable[[], Dataset]] = {
    "brain_lesions_2d": lambda: BrainLesions2D(size=32, **SMALL),
    "brain_lesions_3d": lambda: BrainLesions3D(size=16, lesion_radius_max=3.0, **SMALL),
    "brain_lesions_shortcut": lambda: BrainLesionsShortcut(size=48, **SMALL),
    "ct_lesions_2d": lambda: CTLesions2D(size=32, scan="neck", **SMALL),
}
_BUILT: dict[str, Dataset] = {}


def small(name: str) -> Dataset:
    if name not in _BUILT:
        _BUILT[name] = FACTORIES[name]()
    return _BUILT[name]


def full_split(ds: Dataset, split: str = "test") -> Batch:
    return ds.get(split, range(ds.split_size(split)))  # type: ignore[arg-type]


# -- contract, for every dataset ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FACTORIES))
def test_registered_with_description(name: str) -> None:
    cls = registry.datasets.get(name)
    assert isinstance(small(name), cls)
    assert "lesion" in registry.datasets.describe(name).lower()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_shapes_dtypes_ranges(name: str) -> None:
    ds = small(name)
    b = full_split(ds)
    n, spatial = SMALL["n_test"], tuple(ds.spatial_size)
    assert ds.num_classes == 2 and ds.channels == 1
    three_d = name == "brain_lesions_3d"
    assert len(spatial) == (3 if three_d else 2)
    want = Capability.VOLUMES_3D if three_d else Capability.IMAGES_2D
    assert ds.provides == {Capability.LABELS, Capability.MASKS, want}
    assert b.x.shape == (n, 1, *spatial) and b.x.dtype == torch.float32
    assert b.label.shape == (n,) and b.label.dtype == torch.long
    assert b.mask is not None and b.mask.shape == (n, 1, *spatial) and b.mask.dtype == torch.bool
    assert b.target is None and b.x.device.type == "cpu"
    assert float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0 and torch.isfinite(b.x).all()
    assert float(b.x.std()) > 0.05  # an image, not a constant
    assert b.ids[:2] == ("test-000000", "test-000001") and len(b.ids) == n
    assert ds.get("val", [7]).ids == ("val-000007",)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_mask_nonempty_iff_positive(name: str) -> None:
    ds = small(name)
    for split in ("train", "val", "test"):
        b = full_split(ds, split)
        assert b.mask is not None
        assert torch.equal(b.mask.flatten(1).any(1), b.label == 1), split
        assert int(b.label.sum()) == round(ds.split_size(split) * 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_deterministic_and_index_independent(name: str) -> None:
    ds = small(name)
    full = ds.get("val", range(8))
    again = FACTORIES[name]().get("val", range(8))
    assert torch.equal(full.x, again.x) and torch.equal(full.mask, again.mask)
    part = ds.get("val", [5, 2])
    assert torch.equal(part.x, full.x[[5, 2]])
    assert torch.equal(part.mask, full.mask[[5, 2]])
    assert torch.equal(part.label, full.label[[5, 2]])
    assert part.ids == ("val-000005", "val-000002")


@pytest.mark.parametrize("name", ["brain_lesions_2d", "ct_lesions_2d"])
def test_independent_of_render_chunk(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = small(name)
    whole = ds.get("test", range(12))
    monkeypatch.setattr(_lesions, "_CHUNK_PIXELS", 5 * math.prod(ds.spatial_size))
    chunked = ds.get("test", range(12))
    assert torch.equal(whole.x, chunked.x) and torch.equal(whole.mask, chunked.mask)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_splits_and_seeds_differ(name: str) -> None:
    ds = small(name)
    xs = {split: ds.get(split, range(6)).x for split in ("train", "val", "test")}
    # Disjoint random streams: no image of one split reappears in another.
    for a in xs:
        for b in xs:
            if a < b:
                diff = (xs[a].unsqueeze(1) - xs[b].unsqueeze(0)).abs().flatten(2).amax(-1)
                assert float(diff.min()) > 0.05, (a, b)
    other = type(ds)(**{**_params(ds), "seed": 1})
    assert not torch.equal(other.get("test", range(4)).x, ds.get("test", range(4)).x)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_bad_split_and_index(name: str) -> None:
    ds = small(name)
    with pytest.raises(UserError, match=r"unknown split 'tset'; expected one of train, val, test"):
        ds.get("tset", [0])  # type: ignore[arg-type]
    with pytest.raises(IndexError, match=r"index 30 out of range for split 'test' of size 30"):
        ds.get("test", [0, 30])
    assert ds.get("test", []).x.shape == (0, 1, *ds.spatial_size)


def _params(ds: Dataset) -> dict[str, Any]:
    names = [p for p in inspect.signature(type(ds)).parameters if p != "self"]
    return {k: ds.spec()[k] for k in names}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_spec_is_complete(name: str) -> None:
    ds = small(name)
    spec = ds.spec()
    json.dumps(spec)
    cls = type(ds)
    assert spec["class"] == f"{cls.__module__}:{cls.__qualname__}" and spec["version"] == "1"
    names = [p for p in inspect.signature(cls).parameters if p != "self"]
    assert set(names) <= set(spec)
    # Defaults resolve through the signature, and the resolved values are what spec() records.
    resolved, problems = validate_params(cls, {}, "d")
    assert problems == []
    default_spec = cls().spec()
    given = {k: v for k, v in resolved.items() if v is not None}  # None: the scan's default
    assert {k: default_spec[k] for k in given} == given


@pytest.mark.parametrize(
    ("cls", "params", "message"),
    [
        (BrainLesions2D, {"lesion_polarity": "dark"}, r"d\.lesion_polarity: expected one of"),
        (BrainLesions2D, {"lesion_radius_min": 0}, r"d\.lesion_radius_min: expected a number > 0"),
        (BrainLesions2D, {"max_lesions": 9}, r"d\.max_lesions: expected an integer <= 8"),
        (BrainLesionsShortcut, {"test_marker": "on"}, r"d\.test_marker: expected one of"),
        (CTLesions2D, {"scan": "chest"}, r"d\.scan: expected one of"),
        (CTLesions2D, {"window_width": 0}, r"d\.window_width: expected a (number|value) > 0"),
    ],
)
def test_params_validated_from_signature(cls: type, params: dict, message: str) -> None:
    resolved, problems = validate_params(cls, params, "d")
    assert resolved == {} and len(problems) == 1
    assert re.search(message, problems[0]), problems[0]


@pytest.mark.parametrize("cls", [BrainLesions2D, CTLesions2D])
def test_ranges_must_be_ordered(cls: type) -> None:
    with pytest.raises(UserError, match=r"lesion_radius_min \(5.0\) must not exceed"):
        cls(lesion_radius_min=5.0, lesion_radius_max=4.0)
    with pytest.raises(UserError, match=r"lesion_contrast_min \(0.4\) must not exceed"):
        cls(lesion_contrast_min=0.4, lesion_contrast_max=0.3)
    with pytest.raises(UserError, match=r"lesion_radius_max \(9.0 px\) must be at most size / 4"):
        cls(size=32, lesion_radius_max=9.0)


# -- lesion geometry and contrast -----------------------------------------------------------------
def test_defaults_are_small_and_faint() -> None:
    """The issue's bar: lesions down to radius 3 px at 64 px, contrast at most half the range."""
    d = BrainLesions2D()
    assert d.size == 64 and d.lesion_radius_min <= 3.0
    assert d.lesion_contrast_max <= 0.5
    assert 0.4 < d.tissue_range < 0.6  # deep WM (0.75) minus CSF in the scaled template


@pytest.mark.parametrize("radius", [3.0, 5.0])
def test_lesion_area_follows_the_radius(radius: float) -> None:
    ds = BrainLesions2D(
        n_test=40, max_lesions=1, lesion_radius_min=radius, lesion_radius_max=radius, **CLEAN
    )
    b = full_split(ds)
    assert b.mask is not None
    area = b.mask[b.label == 1].flatten(1).sum(1).float()
    # The mask is the ellipse's interior (weight >= 1/2): pi r^2 up to pixelisation, unless the
    # brain's border cuts it (lesions are placed a radius deep in the white matter, so rarely).
    expected = math.pi * radius**2
    assert abs(float(area.median()) / expected - 1) < 0.12
    assert float(area.max()) <= math.pi * (radius + 1) ** 2 / 0.6


def test_lesion_volume_follows_the_radius_3d() -> None:
    ds = BrainLesions3D(
        size=32, n_test=16, max_lesions=1, lesion_radius_min=2.5, lesion_radius_max=2.5, **CLEAN
    )
    b = full_split(ds)
    assert b.mask is not None and b.mask.shape == (16, 1, 32, 32, 32)
    volume = b.mask[b.label == 1].flatten(1).sum(1).float()
    assert abs(float(volume.median()) / (4 / 3 * math.pi * 2.5**3) - 1) < 0.15


@pytest.mark.parametrize("polarity", ["hypo", "hyper"])
def test_contrast_is_the_requested_fraction_of_the_tissue_range(polarity: str) -> None:
    """Changing only the contrast changes only the lesion, by exactly the contrast difference:
    at the centre by (c1 - c0) x tissue_range, with the requested sign."""
    common = {"n_test": 20, "lesion_polarity": polarity, **CLEAN}
    lo = BrainLesions2D(lesion_contrast_min=0.2, lesion_contrast_max=0.2, **common)
    hi = BrainLesions2D(lesion_contrast_min=0.45, lesion_contrast_max=0.45, **common)
    a, b = full_split(lo), full_split(hi)
    assert torch.equal(a.mask, b.mask)
    diff = (b.x - a.x).flatten(1)
    pos = a.label == 1
    assert float(diff[~pos].abs().max()) == 0.0
    assert a.mask is not None
    outside = ~a.mask.flatten(1)
    # Outside the mask only the soft edge (weight < 1/2) changes.
    assert float(diff[pos].abs().masked_select(outside[pos]).max()) <= 0.5 * 0.25 * lo.tissue_range
    peak = diff[pos].abs().amax(1)
    assert torch.allclose(peak, torch.full_like(peak, 0.25 * lo.tissue_range), rtol=0.03)
    sign = 1 if polarity == "hyper" else -1
    assert float((sign * diff[pos]).min()) >= -1e-6


def test_lesions_sit_in_white_matter() -> None:
    ds = BrainLesions2D(n_test=60, max_lesions=1, lesion_radius_min=3, lesion_radius_max=3, **CLEAN)
    b = full_split(ds)
    u, _ = ds._draws("test", torch.arange(60), brain._N_U, 1)
    _, _, wm = ds._sample_template(u, torch.zeros(60, 64 * 64, 3), brain._template(ds._factor))
    assert b.mask is not None
    pos = b.label == 1
    wm_in_mask = (wm.unsqueeze(1)[pos] * b.mask[pos]).flatten(1).sum(1) / b.mask[pos].flatten(
        1
    ).sum(1)
    assert float(wm_in_mask.median()) > 0.7


def test_lobulated_and_multiple_lesions() -> None:
    common = {"n_test": 40, "lesion_radius_min": 4.0, "lesion_radius_max": 4.0, **CLEAN}
    ell = full_split(BrainLesions2D(lesion_shape="ellipsoid", max_lesions=1, **common))
    lob = full_split(BrainLesions2D(lesion_shape="lobulated", max_lesions=1, **common))
    assert ell.mask is not None and lob.mask is not None
    assert torch.equal(ell.label, lob.label) and not torch.equal(ell.mask, lob.mask)
    many = full_split(BrainLesions2D(max_lesions=4, **common))
    assert many.mask is not None
    # Connected components are not needed: more lesions cover more area on average.
    one = ell.mask.flatten(1).sum(1)[ell.label == 1].float().mean()
    more = many.mask.flatten(1).sum(1)[many.label == 1].float().mean()
    assert float(more) > 1.5 * float(one)


def test_sample_points_is_uniform_over_candidates() -> None:
    cand = torch.zeros(1, 1, 4, 5, dtype=torch.bool)
    cand[0, 0, 1, 2] = cand[0, 0, 3, 0] = cand[0, 0, 3, 4] = True
    u = torch.tensor([[0.0, 0.34, 0.99]]).reshape(1, 3)
    pts = _lesions.sample_points(cand.expand(1, 3, 4, 5), u)
    assert pts.tolist() == [[[1.0, 2.0], [3.0, 0.0], [3.0, 4.0]]]
    none = _lesions.sample_points(torch.zeros(1, 1, 4, 5, dtype=torch.bool), torch.tensor([[0.5]]))
    assert none.tolist() == [[[2.0, 0.0]]]  # anywhere: pixel 10 of 20


def test_depth_map() -> None:
    m = torch.zeros(1, 7, 7, dtype=torch.bool)
    m[0, 1:6, 1:6] = True
    d = _lesions.depth(m, 5)
    assert d[0, 3].tolist() == [0, 1, 2, 3, 2, 1, 0]


# -- shortcut -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shortcut() -> BrainLesionsShortcut:
    return BrainLesionsShortcut(size=48, n_train=400, n_val=20, n_test=400)


def _has_marker(b: Batch) -> torch.Tensor:
    return b.aux_masks["marker"].flatten(1).any(1)


def test_marker_correlates_with_the_label_in_train_only(shortcut: BrainLesionsShortcut) -> None:
    train, test = full_split(shortcut, "train"), full_split(shortcut, "test")
    for b in (train, test):
        m = b.aux_masks["marker"]
        assert m.dtype == torch.bool and m.shape == b.x.shape
    on, pos = _has_marker(train), train.label == 1
    # 200 positives at p = 0.95: binomial 3-sigma band is about ±0.05.
    assert 0.9 < float(on[pos].float().mean()) <= 1.0
    assert 0.0 <= float(on[~pos].float().mean()) < 0.1
    on, pos = _has_marker(test), test.label == 1
    assert 0.38 < float(on[pos].float().mean()) < 0.62
    assert 0.38 < float(on[~pos].float().mean()) < 0.62
    # The tag is a bright glyph in the dark corner: 11 of its 15 bitmap pixels are set.
    tagged = test.aux_masks["marker"][on]
    assert set(tagged.flatten(1).sum(1).tolist()) == {11}
    assert float(test.x[test.aux_masks["marker"]].min()) > 0.5
    assert not (test.aux_masks["marker"] & test.mask).any()


def test_marker_absent_in_test_when_asked() -> None:
    ds = BrainLesionsShortcut(size=48, n_train=40, n_test=40, test_marker="absent")
    assert not _has_marker(full_split(ds)).any()
    assert _has_marker(full_split(ds, "train")).any()


def test_shortcut_images_are_brain_images_plus_the_tag(shortcut: BrainLesionsShortcut) -> None:
    params = {k: v for k, v in _params(shortcut).items() if k not in ("p_marker_given_label",)}
    params.pop("test_marker")
    plain = BrainLesions2D(**params).get("test", range(40))
    tagged = shortcut.get("test", range(40))
    tag = tagged.aux_masks["marker"]
    assert torch.equal(plain.label, tagged.label) and torch.equal(plain.mask, tagged.mask)
    assert torch.equal(plain.x[~tag], tagged.x[~tag])
    assert tag.any() and not torch.equal(plain.x[tag], tagged.x[tag])


def test_probe_removes_the_marker_exactly(shortcut: BrainLesionsShortcut) -> None:
    probes = shortcut.probe_sets()
    assert set(probes) == {"test_with_marker", "test_without_marker", "test_marker_flipped"}
    split, remove = probes["test_without_marker"]
    assert split == "test"
    b = shortcut.get("test", range(40, 80))
    clean = remove(b)
    tag = b.aux_masks["marker"]
    assert tag.any()
    assert not clean.aux_masks["marker"].any()
    assert torch.equal(clean.x[~tag], b.x[~tag])  # nothing else changed
    assert float((b.x[tag] - clean.x[tag]).min()) > 0.2  # the bright tag is gone...
    assert float(clean.x[tag].max()) < 0.3  # ...replaced by the dark background it covered
    assert clean.ids == b.ids and torch.equal(clean.label, b.label)
    assert torch.equal(clean.mask, b.mask)
    # Same as rendering the sample with the tag absent (and the plain 2D dataset).
    absent = BrainLesionsShortcut(**{**_params(shortcut), "test_marker": "absent"})
    assert torch.equal(clean.x, absent.get("test", range(40, 80)).x)


def test_probe_marker_rules(shortcut: BrainLesionsShortcut) -> None:
    probes = shortcut.probe_sets()
    b = full_split(shortcut)
    pos = b.label == 1
    with_m = _has_marker(probes["test_with_marker"][1](b))
    flipped = _has_marker(probes["test_marker_flipped"][1](b))
    assert float(with_m[pos].float().mean()) > 0.9 and float(with_m[~pos].float().mean()) < 0.1
    assert float(flipped[pos].float().mean()) < 0.1 and float(flipped[~pos].float().mean()) > 0.9
    # One uniform per sample decides under every rule: a positive tagged at probability 1 - p
    # is also tagged at probability p.
    assert not (flipped & pos & ~with_m).any()


def test_probe_rejects_foreign_ids(shortcut: BrainLesionsShortcut) -> None:
    _, remove = shortcut.probe_sets()["test_without_marker"]
    with pytest.raises(ValueError, match=r"sample id 'train-000001' is not a test id"):
        remove(shortcut.get("train", [1]))


# -- CT -------------------------------------------------------------------------------------------
def test_ct_hounsfield_and_window_by_hand() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    dcm = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    stored = dcm.pixel_array
    hu, tissue, spacing = ct.load_scan("neck")
    by_hand = np.maximum(stored * float(dcm.RescaleSlope) + float(dcm.RescaleIntercept), -1024)
    np.testing.assert_array_equal(hu.numpy(), by_hand.astype(np.float32))
    assert spacing == pytest.approx(0.661468)
    assert tissue.dtype == torch.bool and 0.05 < float(tissue.float().mean()) < 0.5
    # A soft-tissue window, L 40 W 400: -160 HU -> 0, 240 HU -> 1, linear between.
    win = ct.window(torch.tensor([-1000.0, -160.0, 40.0, 140.0, 240.0, 900.0]), 40, 400)
    assert win.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    # The dataset at native size, whole slice, no augmentation or noise: negatives are exactly
    # the windowed slice.
    ds = CTLesions2D(size=128, fov=1.0, scan="neck", augment=False, noise_hu=0, n_test=6)
    b = full_split(ds)
    expected = np.clip((by_hand - (40 - 200)) / 400, 0, 1)
    neg = (b.label == 0).nonzero()[0, 0]
    np.testing.assert_allclose(b.x[neg, 0].numpy(), expected, atol=1e-5)
    assert ds.spec()["window_center"] == 40.0 and ds.spec()["window_width"] == 400.0


def test_ct_head_decodes_and_uses_the_brain_window() -> None:
    hu, tissue, spacing = ct.load_scan("head")
    assert hu.shape == (512, 512) and spacing == pytest.approx(0.431)
    # Brain parenchyma is 20-45 HU; the tissue mask holds it.
    assert 20 < float(hu[tissue].median()) < 45
    ds = CTLesions2D(size=32, n_test=10)
    assert (ds.window_center, ds.window_width) == (40.0, 80.0)
    b = full_split(ds)
    assert b.mask is not None and torch.equal(b.mask.flatten(1).any(1), b.label == 1)


def test_ct_lesion_contrast_is_in_hu() -> None:
    common = {"size": 32, "scan": "neck", "n_test": 12, "noise_hu": 0, "lesion_texture": 0}
    lo = full_split(CTLesions2D(lesion_contrast_min=0.1, lesion_contrast_max=0.1, **common))
    hi = full_split(CTLesions2D(lesion_contrast_min=0.2, lesion_contrast_max=0.2, **common))
    pos = lo.label == 1
    peak = (hi.x - lo.x)[pos].flatten(1).abs().amax(1)
    # 0.1 of the 400 HU window = 40 HU = 0.1 in window units (unless clipped by the window).
    assert torch.allclose(peak, torch.full_like(peak, 0.1), rtol=0.03)


def test_ct_without_pydicom_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ct.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "pydicom" else real(name, *args)

    monkeypatch.setattr(ct.importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=r"pip install benchbox\[medical\]"):
        CTLesions2D()


# -- offline --------------------------------------------------------------------------------------
def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during loading: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    brain._template.cache_clear()
    ct.load_scan.cache_clear()
    try:
        BrainLesions2D(size=32, n_test=4).get("test", range(4))
        ct.load_scan("neck")
        ct.load_scan("head")
    finally:
        brain._template.cache_clear()
        ct.load_scan.cache_clear()


# -- slow: speed and learnability -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cls", [BrainLesions2D, CTLesions2D])
def test_generation_costs_less_than_one_pass_of_the_model(cls: type) -> None:
    """Generating 2,000 training images costs less CPU than one forward+backward of cnn_gap (the
    quickstart's model) over them, so training (≥ 12 such passes) is never bound by its data.

    A ratio measured in one process, not a budget in seconds: a shared machine inflates both
    sides alike (an absolute 5 s budget failed at 5.5 s with another worker on the core).
    Measured (AMD EPYC, one thread): 0.64 brain, 0.31 CT.
    """
    from benchbox.models.cnn import CNNGap

    d = cls(n_train=2000)
    d.get("train", range(16))  # warm-up: loads the template / slice
    net = CNNGap().network(d)
    start = time.process_time()
    x = d.get("train", range(2000)).x
    generate = time.process_time() - start
    start = time.process_time()
    for chunk in x.split(64):
        net(chunk).sum().backward()
    one_pass = time.process_time() - start
    assert generate < one_pass, (generate, one_pass)


def _train(ds: Dataset, train_seed: int = 0) -> Any:
    from benchbox.models.cnn import CNNGap

    builder = CNNGap(train_seed=train_seed)
    return builder.build(ds, seed=0, device=torch.device("cpu"), batch_size=64)


def _accuracy(model: Any, ds: Dataset, transform: Callable[[Batch], Batch]) -> float:
    """As the runner's probe accuracy."""
    correct = total = 0
    with torch.no_grad():
        for batch in ds.batches("test", 64):
            b = transform(batch)
            correct += int((model(b.x).argmax(dim=1) == b.label).sum())
            total += len(b)
    return correct / total


# cnn_gap's accuracy on BrainLesions2D at the defaults (≥ 0.95) is tested, with its training
# time, in tests/test_models_classifiers.py::test_brain_lesions_2d_defaults.


@pytest.mark.slow
def test_cnn_gap_takes_the_shortcut(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path))
    ds = BrainLesionsShortcut()
    accs = []
    for seed in TRAIN_SEEDS:
        model = _train(ds, train_seed=seed)
        accs.append({name: _accuracy(model, ds, tf) for name, (_, tf) in ds.probe_sets().items()})
    print("cnn_gap on brain_lesions_shortcut, per training seed:", accs)
    # Measured, the same for training seeds 0, 1 and 2: accuracy 0.953 with the marker, 0.500
    # without it (chance), 0.057 with the marker flipped: every replica learns the marker alone,
    # so its predictions are the same function of the marker.
    gap = [a["test_with_marker"] - a["test_without_marker"] for a in accs]
    assert sum(gap) / len(gap) >= 0.2 and min(gap) > 0.1, accs
    assert all(a["test_marker_flipped"] < a["test_without_marker"] for a in accs), accs
