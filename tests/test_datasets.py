"""Tests of the built-in synthetic lesion dataset (benchbox.datasets.synthetic)."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from benchbox import registry
from benchbox.core import Capability
from benchbox.datasets import synthetic
from benchbox.datasets.synthetic import SyntheticLesions2D
from benchbox.errors import UserError
from benchbox.params import validate_params

SMALL = {"size": 32, "n_train": 40, "n_val": 20, "n_test": 30}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the timing test then measures this code, not a busy machine's
    OpenMP barriers (with more runnable threads than cores, 2 threads ran 4-20x slower than 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ds() -> SyntheticLesions2D:
    return SyntheticLesions2D(**SMALL)


@pytest.fixture(scope="module")
def test_batch(ds: SyntheticLesions2D):
    return ds.get("test", range(ds.split_size("test")))


def test_registered_with_description() -> None:
    assert registry.datasets.get("synthetic_lesions_2d") is SyntheticLesions2D
    assert "lesion" in registry.datasets.describe("synthetic_lesions_2d")


def test_class_facts(ds: SyntheticLesions2D) -> None:
    assert ds.provides == {Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D}
    assert ds.num_classes == 2
    assert ds.channels == 1
    assert ds.spatial_size == (SMALL["size"], SMALL["size"])


def test_shapes_dtypes_ranges(ds: SyntheticLesions2D, test_batch) -> None:
    n, s = SMALL["n_test"], SMALL["size"]
    b = test_batch
    assert b.x.shape == (n, 1, s, s) and b.x.dtype == torch.float32
    assert b.label.shape == (n,) and b.label.dtype == torch.long
    assert b.mask is not None and b.mask.shape == (n, 1, s, s) and b.mask.dtype == torch.bool
    assert b.target is None
    assert b.x.device.type == "cpu"
    assert float(b.x.min()) >= 0.0 and float(b.x.max()) <= 1.0
    assert torch.isfinite(b.x).all()
    assert set(b.label.tolist()) == {0, 1}
    assert len(b) == n and len(b.ids) == n


def test_mask_nonempty_iff_positive(ds: SyntheticLesions2D) -> None:
    for split in ("train", "val", "test"):
        b = ds.get(split, range(ds.split_size(split)))
        assert b.mask is not None
        assert torch.equal(b.mask.flatten(1).any(1), b.label == 1), split


def test_tiny_lesions_still_have_a_mask() -> None:
    tiny = SyntheticLesions2D(size=16, n_test=20, lesion_radius_min=0.01, lesion_radius_max=0.01)
    b = tiny.get("test", range(20))
    assert b.mask is not None
    assert torch.equal(b.mask.flatten(1).any(1), b.label == 1)


def test_lesion_brighter_than_its_surroundings(ds: SyntheticLesions2D) -> None:
    b = ds.get("train", range(ds.split_size("train")))
    assert b.mask is not None
    pos = b.label == 1
    mask = b.mask[pos].float()
    ring = (F.max_pool2d(mask, 7, 1, 3) - mask).bool()  # a 3-px band around the lesion
    inside = (b.x[pos] * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)
    around = (b.x[pos] * ring).flatten(1).sum(1) / ring.flatten(1).sum(1)
    # Soft edges, bias field and noise eat part of the contrast, but not most of it.
    assert float((inside - around).mean()) > 0.5 * ds.lesion_contrast
    assert float((inside > around).float().mean()) > 0.9


def test_brightest_pixel_is_not_the_lesion() -> None:
    """The bright scalp and distractors keep 'point at the brightest pixel' from being right."""
    d = SyntheticLesions2D(size=64, n_test=200)
    b = d.get("test", range(200))
    assert b.mask is not None
    pos = b.label == 1
    argmax = b.x[pos].flatten(1).argmax(1, keepdim=True)
    hits = b.mask[pos].flatten(1).gather(1, argmax).float().mean()
    assert float(hits) < 0.5


def test_negatives_have_bright_distractors() -> None:
    with_d = SyntheticLesions2D(size=32, n_test=40, noise=0.0, bias_field=0.0)
    without = SyntheticLesions2D(size=32, n_test=40, noise=0.0, bias_field=0.0, max_distractors=0)
    a, b = with_d.get("test", range(40)), without.get("test", range(40))
    neg = a.label == 0
    assert torch.equal(a.label, b.label)
    diff = (a.x[neg] - b.x[neg]).flatten(1).amax(1)
    # Some negatives gain a spot brighter than tissue by at least 0.3 x the lesion contrast.
    assert float((diff > 0.3 * with_d.lesion_contrast).float().mean()) > 0.3
    # ...and the spots only ever brighten the image.
    assert float((a.x[neg] - b.x[neg]).min()) > -1e-6


def test_deterministic_across_instances(ds: SyntheticLesions2D, test_batch) -> None:
    again = SyntheticLesions2D(**SMALL).get("test", range(SMALL["n_test"]))
    assert torch.equal(test_batch.x, again.x)
    assert torch.equal(test_batch.label, again.label)
    assert torch.equal(test_batch.mask, again.mask)
    assert test_batch.ids == again.ids


def test_sample_independent_of_batch(ds: SyntheticLesions2D) -> None:
    full = ds.get("val", range(8))
    part = ds.get("val", [3, 4])
    swapped = ds.get("val", [4, 3])
    assert torch.equal(part.x, full.x[3:5])
    assert torch.equal(part.mask, full.mask[3:5])
    assert torch.equal(part.label, full.label[3:5])
    assert torch.equal(swapped.x, full.x[[4, 3]])
    assert part.ids == full.ids[3:5]


def test_sample_independent_of_render_chunk(
    ds: SyntheticLesions2D, test_batch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic, "_CHUNK", 7)
    chunked = ds.get("test", range(SMALL["n_test"]))
    assert torch.equal(chunked.x, test_batch.x)
    assert torch.equal(chunked.mask, test_batch.mask)


def test_split_sizes_and_balance(ds: SyntheticLesions2D) -> None:
    for split in ("train", "val", "test"):
        n = SMALL[f"n_{split}"]
        assert ds.split_size(split) == n
        labels = ds.get(split, range(n)).label
        assert int(labels.sum()) == round(n * ds.positive_fraction)
        assert torch.equal(ds.labels(split), labels)
    skewed = SyntheticLesions2D(n_test=50, positive_fraction=0.2)
    assert int(skewed.labels("test").sum()) == 10


def test_splits_are_distinct(ds: SyntheticLesions2D) -> None:
    xs = [ds.get(split, range(5)).x for split in ("train", "val", "test")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.equal(xs[i], xs[j])
    # ...and samples within a split differ from each other.
    assert not torch.equal(xs[0][0], xs[0][1])


def test_ids_are_stable(ds: SyntheticLesions2D) -> None:
    b = ds.get("test", [0, 7, 29])
    assert b.ids == ("test-000000", "test-000007", "test-000029")
    assert ds.get("test", [7]).ids == ("test-000007",)
    assert ds.get("train", [7]).ids == ("train-000007",)


def test_empty_request(ds: SyntheticLesions2D) -> None:
    b = ds.get("test", [])
    assert b.x.shape == (0, 1, SMALL["size"], SMALL["size"]) and len(b.ids) == 0


def test_batches_cover_the_split(ds: SyntheticLesions2D, test_batch) -> None:
    parts = list(ds.batches("test", 8))
    assert [len(p) for p in parts] == [8, 8, 8, 6]
    assert torch.equal(torch.cat([p.x for p in parts]), test_batch.x)


def test_seed_changes_images() -> None:
    a = SyntheticLesions2D(**SMALL, seed=0).get("test", range(4)).x
    b = SyntheticLesions2D(**SMALL, seed=1).get("test", range(4)).x
    assert not torch.equal(a, b)


def test_spec_is_complete_and_changes_with_every_param(ds: SyntheticLesions2D) -> None:
    spec = ds.spec()
    json.dumps(spec)  # part of a cache key: must be plain JSON
    params = [p for p in inspect.signature(SyntheticLesions2D).parameters if p != "self"]
    assert set(params) <= set(spec)
    assert spec["class"].endswith(":SyntheticLesions2D") and "version" in spec
    changed = {
        "size": 48,
        "n_train": 41,
        "n_val": 21,
        "n_test": 31,
        "positive_fraction": 0.4,
        "lesion_radius_min": 0.06,
        "lesion_radius_max": 0.12,
        "lesion_contrast": 0.4,
        "max_distractors": 2,
        "noise": 0.05,
        "bias_field": 0.1,
        "seed": 3,
    }
    assert set(changed) == set(params)
    for name, value in changed.items():
        other = SyntheticLesions2D(**{**SMALL, name: value}).spec()
        assert other != spec, name
        assert other[name] == value


def test_bad_split_is_a_user_error(ds: SyntheticLesions2D) -> None:
    with pytest.raises(UserError, match=r"unknown split 'tset'; expected one of train, val, test"):
        ds.get("tset", [0])  # type: ignore[arg-type]
    with pytest.raises(UserError, match="unknown split"):
        ds.split_size("validation")  # type: ignore[arg-type]


def test_index_out_of_range(ds: SyntheticLesions2D) -> None:
    with pytest.raises(IndexError, match=r"index 30 out of range for split 'test' of size 30"):
        ds.get("test", [0, 30])
    with pytest.raises(IndexError, match="index -1"):
        ds.get("test", [-1])


def test_radius_range_must_be_ordered() -> None:
    with pytest.raises(UserError, match=r"lesion_radius_min \(0.2\) must not exceed"):
        SyntheticLesions2D(lesion_radius_min=0.2, lesion_radius_max=0.1)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"size": 8}, r"d\.size: expected an integer >= 16, got 8"),
        ({"n_train": 0}, r"d\.n_train: expected an integer > 0, got 0"),
        (
            {"positive_fraction": 1.5},
            r"d\.positive_fraction: expected a number < 1(\.0)?, got 1\.5",
        ),
        ({"lesion_contrast": 0}, r"d\.lesion_contrast: expected a number > 0"),
        ({"max_distractors": 9}, r"d\.max_distractors: expected an integer <= 8"),
        ({"nosie": 0.1}, r"d\.nosie: unknown parameter; did you mean 'noise'\?"),
    ],
)
def test_params_validated_from_signature(params: dict[str, object], message: str) -> None:
    resolved, problems = validate_params(SyntheticLesions2D, params, "d")
    assert resolved == {} and len(problems) == 1
    assert re.search(message, problems[0]), problems[0]


def test_defaults_resolve() -> None:
    resolved, problems = validate_params(SyntheticLesions2D, {}, "d")
    assert problems == []
    assert resolved == {k: v for k, v in SyntheticLesions2D().spec().items() if k in resolved}


@pytest.mark.slow
def test_generation_is_fast() -> None:
    d = SyntheticLesions2D(n_train=2000)
    d.get("train", range(16))  # warm-up
    start = time.perf_counter()
    d.get("train", range(2000))
    assert time.perf_counter() - start < 5.0
