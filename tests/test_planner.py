from __future__ import annotations

from benchbox.planner import plan
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite


def test_cross_product_in_order() -> None:
    suite = parse_suite(
        tiny_suite(
            datasets=["tests.fakes:TinyData", "tests.fakes:NoMaskData"],
            models=["tests.fakes:TinyModel", "tests.fakes:NoLayerModel"],
        )
    )
    jobs = plan(suite)
    assert len(jobs) == 2 * 2 * 2
    assert [j.index for j in jobs] == list(range(8))
    assert [(j.dataset.name[12:], j.model.name[12:], j.method.name[12:]) for j in jobs[:3]] == [
        ("TinyData", "TinyModel", "Grad"),
        ("TinyData", "TinyModel", "Noise"),
        ("TinyData", "NoLayerModel", "Grad"),
    ]
    assert len({j.key for j in jobs}) == 8


def test_method_needing_a_layer_is_skipped_on_a_model_without_one() -> None:
    suite = parse_suite(
        tiny_suite(
            models=["tests.fakes:TinyModel", "tests.fakes:NoLayerModel"],
            methods=["tests.fakes:NeedsLayer"],
        )
    )
    ok, skipped = plan(suite)
    assert ok.skip_reason is None
    assert skipped.skip_reason == (
        "method 'tests.fakes:NeedsLayer' needs target_layer, which neither dataset "
        "'tests.fakes:TinyData' nor model 'tests.fakes:NoLayerModel' provides"
    )


def test_metric_needing_masks_is_skipped_on_a_dataset_without_them() -> None:
    suite = parse_suite(
        tiny_suite(datasets=["tests.fakes:NoMaskData"], methods=["tests.fakes:Grad"])
    )
    (job,) = plan(suite)
    assert job.skip_reason is None
    assert [m.name for m in job.metrics] == ["tests.fakes:TwoWay"]
    ((spec, reason),) = job.skipped_metrics
    assert spec.name == "tests.fakes:MaskMass"
    assert "needs masks" in reason


def test_model_needs_are_checked_against_the_dataset() -> None:
    from benchbox.core import Capability
    from tests import fakes

    class Needs3D(fakes.TinyModel):
        needs = frozenset({Capability.VOLUMES_3D})

    fakes.Needs3D = Needs3D  # type: ignore[attr-defined]
    try:
        suite = parse_suite(tiny_suite(models=["tests.fakes:Needs3D"]))
        assert all("needs volumes_3d" in (j.skip_reason or "") for j in plan(suite))
    finally:
        del fakes.Needs3D  # type: ignore[attr-defined]


def test_built_dataset_capabilities_override_the_class() -> None:
    from benchbox.core import Capability

    suite = parse_suite(tiny_suite(methods=["tests.fakes:Grad"]))
    no_masks = frozenset({Capability.LABELS, Capability.IMAGES_2D})
    (job,) = plan(suite, {"datasets[0]": no_masks})
    assert [m.name for m in job.metrics] == ["tests.fakes:TwoWay"]
    assert job.skipped_metrics[0][0].name == "tests.fakes:MaskMass"
    (job,) = plan(suite)  # the class declares masks
    assert len(job.metrics) == 2
