from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchbox.errors import UserError
from benchbox.runner import resolve_device, run_suite
from benchbox.schema import CURVES, SCORES, SUMMARY
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite


def _run(tmp_path: Path, **overrides: object):
    return run_suite(parse_suite(tiny_suite(**overrides)), output=tmp_path)


def test_rows_columns_and_files(tmp_path: Path) -> None:
    res = _run(tmp_path)
    assert res.path.parent == tmp_path / "tiny"
    assert sorted(p.name for p in res.path.iterdir()) == [
        "curves.parquet",
        "examples",
        "manifest.json",
        "scores.parquet",
        "summary.csv",
    ]
    # the report's example grid: one file per job from its first batch (4 samples), the
    # lesion-bearing (odd) samples first
    from benchbox.report import load_examples

    examples = load_examples(res.path)
    assert sorted(e.method for e in examples) == ["tests.fakes:Grad", "tests.fakes:Noise"]
    for ex in examples:
        assert list(ex.ids) == ["test-1", "test-3", "test-0", "test-2"]
        assert ex.mask.reshape(4, -1).any(axis=1).tolist() == [True, True, False, False]
    scores = res.scores
    assert list(scores.columns) == [c.name for c in SCORES]
    # 2 methods × (MaskMass + TwoWay.mean + TwoWay.noise) × 10 samples
    assert len(scores) == 2 * 3 * 10
    assert set(scores["status"]) == {"ok"}
    assert scores.groupby(["method", "metric", "variant"]).size().eq(10).all()
    # MaskMass is NaN with a reason on the label-0 samples (empty masks)
    mm = scores[scores["metric"] == "tests.fakes:MaskMass"]
    assert mm.loc[mm["label"] == 0, "value"].isna().all()
    assert (mm.loc[mm["label"] == 0, "message"] == "empty mask").all()
    assert mm.loc[mm["label"] == 1, "message"].isna().all()
    assert mm["higher_is_better"].all()
    assert json.loads(mm["metric_params"].iloc[0]) == {"mode": "abs", "power": 1}

    curves = res.curves
    assert list(curves.columns) == [c.name for c in CURVES]
    assert len(curves) == 2 * 10 * 3  # 2 methods × 10 samples × 3 points
    assert curves["x"].tolist()[:3] == [0.0, 0.5, 1.0]

    summary = pd.read_csv(res.path / "summary.csv")
    assert list(summary.columns) == [c.name for c in SUMMARY]
    row = summary[
        (summary["metric"] == "tests.fakes:MaskMass") & (summary["method"] == "tests.fakes:Grad")
    ]
    assert int(row["n"].iloc[0]) == 5 and int(row["n_nan"].iloc[0]) == 5
    values = mm[(mm["method"] == "tests.fakes:Grad")]["value"].dropna()
    assert row["mean"].iloc[0] == pytest.approx(values.mean())
    assert row["ci_low"].iloc[0] <= row["mean"].iloc[0] <= row["ci_high"].iloc[0]


def test_manifest(tmp_path: Path) -> None:
    res = _run(tmp_path)
    m = json.loads((res.path / "manifest.json").read_text())
    assert m["run_id"] == res.run_id
    assert m["suite_hash"] == parse_suite(tiny_suite()).hash
    assert m["resolved_suite"]["seed"] == 3
    assert m["device"] == "cpu"
    assert m["versions"]["torch"] == version("torch")
    assert m["models"][0]["test_accuracy"] == 0.5
    assert [j["method"] for j in m["jobs"]] == ["tests.fakes:Grad", "tests.fakes:Noise"]
    assert all(j["wall_time_s"] >= 0 for j in m["jobs"])


def test_same_suite_twice_gives_identical_values(tmp_path: Path) -> None:
    a, b = _run(tmp_path), _run(tmp_path)
    assert a.path != b.path  # never overwrites
    sa, sb = a.scores, b.scores
    np.testing.assert_array_equal(sa["value"].to_numpy(), sb["value"].to_numpy())
    assert sa["sample_id"].tolist() == sb["sample_id"].tolist()
    c = _run(tmp_path, seed=4).scores
    noise = sa["variant"] == "noise"
    assert not np.array_equal(sa.loc[noise, "value"], c.loc[noise, "value"])


def test_adding_a_metric_does_not_change_other_draws(tmp_path: Path) -> None:
    a = _run(tmp_path, metrics=["tests.fakes:TwoWay"]).scores
    b = _run(tmp_path).scores
    key = ["method", "variant", "sample_id"]
    merged = a.merge(b[b["metric"] == "tests.fakes:TwoWay"], on=key, suffixes=("_a", "_b"))
    assert len(merged) == len(a)
    np.testing.assert_array_equal(merged["value_a"], merged["value_b"])


def test_limit_and_batches(tmp_path: Path) -> None:
    scores = _run(tmp_path, limit=7, batch_size=3).scores
    assert scores.groupby(["method", "metric", "variant"]).size().eq(7).all()
    assert sorted(set(scores["sample_id"])) == sorted(f"test-{i}" for i in range(7))


def test_failures_become_error_rows_and_the_run_goes_on(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        methods=["tests.fakes:Boom", "tests.fakes:WrongShape", "tests.fakes:Grad"],
        metrics=["tests.fakes:FailingMetric", "tests.fakes:MaskMass"],
    )
    assert res.failed
    s = res.scores
    boom = s[s["method"] == "tests.fakes:Boom"]
    assert set(boom["status"]) == {"error"} and len(boom) == 2
    assert boom["message"].iloc[0] == "method 'tests.fakes:Boom' failed: RuntimeError: boom"
    shape = s[s["method"] == "tests.fakes:WrongShape"]
    assert "expected shape [4, 1, 8, 8]" in shape["message"].iloc[0]
    grad = s[s["method"] == "tests.fakes:Grad"]
    failing = grad[grad["metric"] == "tests.fakes:FailingMetric"]
    assert failing["status"].tolist() == ["error"]
    assert "ValueError: metric exploded" in failing["message"].iloc[0]
    mass = grad[grad["metric"] == "tests.fakes:MaskMass"]
    assert (mass["status"] == "ok").all() and len(mass) == 10


def test_model_build_failure_is_recorded(tmp_path: Path) -> None:
    res = _run(tmp_path, models=["tests.fakes:BrokenModel", "tests.fakes:TinyModel"])
    s = res.scores
    broken = s[s["model"] == "tests.fakes:BrokenModel"]
    assert set(broken["status"]) == {"error"}
    assert "RuntimeError: weights are corrupt" in broken["message"].iloc[0]
    assert (s.loc[s["model"] == "tests.fakes:TinyModel", "status"] == "ok").all()
    assert res.failed


def test_skipped_rows(tmp_path: Path) -> None:
    res = _run(
        tmp_path,
        datasets=["tests.fakes:NoMaskData"],
        models=["tests.fakes:NoLayerModel"],
        methods=["tests.fakes:NeedsLayer", "tests.fakes:Grad"],
    )
    assert not res.failed
    s = res.scores
    nl = s[s["method"] == "tests.fakes:NeedsLayer"]
    assert set(nl["status"]) == {"skipped"} and len(nl) == 2
    assert nl["sample_id"].isna().all()
    grad_mass = s[(s["method"] == "tests.fakes:Grad") & (s["metric"] == "tests.fakes:MaskMass")]
    assert grad_mass["status"].tolist() == ["skipped"]
    assert "needs masks" in grad_mass["message"].iloc[0]
    summ = res.summary
    assert set(summ.loc[summ["method"] == "tests.fakes:NeedsLayer", "status"]) == {"skipped"}


def test_bad_dataset_stops_before_any_results(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"datasets\[0\]\.tests\.fakes:BadPathData: missing.npz: file"
    ):
        _run(tmp_path, datasets=["tests.fakes:BadPathData"])
    assert not (tmp_path / "tiny").exists()


def test_cuda_requested_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(
        UserError, match=r"device: 'cuda' requested but no CUDA device is available"
    ):
        resolve_device("cuda", "s.yaml")
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.gpu
def test_runs_on_cuda(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    res = run_suite(parse_suite(tiny_suite(device="cuda")), output=tmp_path)
    assert res.manifest["device"].startswith("cuda")
    cpu = _run(tmp_path).scores
    grad = res.scores["method"] == "tests.fakes:Grad"
    np.testing.assert_allclose(res.scores.loc[grad, "value"], cpu.loc[grad, "value"], atol=1e-5)


def test_probe_sets_are_evaluated_into_the_manifest(tmp_path: Path) -> None:
    res = _run(tmp_path, datasets=["tests.fakes:ProbeData"])
    (info,) = res.manifest["models"]
    same, flipped = info["test_same_accuracy"], info["test_flipped_accuracy"]
    assert same + flipped == pytest.approx(1.0)
    scores = res.scores.drop_duplicates("sample_id")
    assert same == pytest.approx((scores["prediction"] == scores["label"]).mean())


def test_runner_plans_with_the_built_datasets_capabilities(tmp_path: Path) -> None:
    res = _run(tmp_path, datasets=["tests.fakes:MaybeMaskData"], methods=["tests.fakes:Grad"])
    assert not res.failed
    mass = res.scores[res.scores["metric"] == "tests.fakes:MaskMass"]
    assert mass["status"].tolist() == ["skipped"]


def test_jobs_are_rechecked_against_the_built_model(tmp_path: Path) -> None:
    res = _run(tmp_path, models=["tests.fakes:ShyModel"], methods=["tests.fakes:NeedsLayer"])
    assert not res.failed
    assert set(res.scores["status"]) == {"skipped"}
    assert "needs target_layer" in res.scores["message"].iloc[0]
    assert res.manifest["jobs"][0]["status"] == "skipped"


def test_model_user_error_names_the_suite_path(tmp_path: Path) -> None:
    suite = parse_suite(tiny_suite(models=["tests.fakes:MissingWeightsModel"]), source="s.yaml")
    res = run_suite(suite, output=tmp_path)
    assert res.failed
    assert res.scores["message"].iloc[0] == (
        "s.yaml: models[0]: weights: file 'w.safetensors' not found; check the path"
    )


def test_metrics_can_rebuild_the_model_once_per_job(tmp_path: Path) -> None:
    from tests.fakes import RebuildProbe

    RebuildProbe.builds.clear()
    res = _run(
        tmp_path, methods=["tests.fakes:Grad"], metrics=["tests.fakes:RebuildProbe"], batch_size=3
    )
    assert len(RebuildProbe.builds) == 4  # 10 samples in batches of 3
    assert len(set(RebuildProbe.builds)) == 1  # built once, shared by the batches
    # TinyModel ignores width, so the rebuilt model (same seed) equals the original
    assert (res.scores["value"] == 0).all()


def test_per_variant_direction(tmp_path: Path) -> None:
    s = _run(tmp_path, methods=["tests.fakes:Grad"], metrics=["tests.fakes:TwoWay"]).scores
    direction = s.groupby("variant")["higher_is_better"].unique().to_dict()
    assert [bool(v) for v in direction["mean"]] == [False]  # None: the class default
    assert [bool(v) for v in direction["noise"]] == [True]


def test_stored_direction_takes_the_longest_stated_suffix() -> None:
    from benchbox.jobs import _stored_direction
    from benchbox.metrics.adversarial import Fragility
    from benchbox.outputs import declared_outputs

    declared = declared_outputs(Fragility)
    assert _stored_direction(declared, "topk.com_shift") is False
    assert _stored_direction(declared, "random_sign.topk_intersection") is True
    assert _stored_direction(declared, "topk.accepted_steps") is True  # a diagnostic: headline
    assert _stored_direction(declared_outputs(object), "anything") is True


def test_the_manifest_records_each_metrics_outputs(tmp_path: Path) -> None:
    from tests.fakes import TwoWay

    res = _run(tmp_path, methods=["tests.fakes:Grad"], metrics=["tests.fakes:TwoWay"])
    (declared,) = res.manifest["outputs"].values()
    assert declared == {
        "higher_is_better": TwoWay.higher_is_better,
        "variants": dict(TwoWay.variant_higher_is_better),
        "reference": [],
    }


def test_job_rows_have_exactly_the_schemas_columns(tmp_path: Path) -> None:
    from benchbox.jobs import JobResult, _frame
    from benchbox.schema import SCORES

    res = _run(tmp_path, methods=["tests.fakes:Grad"], metrics=["tests.fakes:TwoWay"])
    assert list(res.scores.columns) == [c.name for c in SCORES]
    shuffled = res.scores.iloc[:, ::-1]
    assert list(_frame(shuffled).columns) == [c.name for c in SCORES]  # put in the schema's order
    with pytest.raises(ValueError, match=r"outside schema.SCORES: \['extra'\]"):
        _frame(res.scores.assign(extra=1))
    with pytest.raises(KeyError):
        _frame(res.scores.drop(columns=["value"]))
    assert not JobResult(res.scores).failed
    assert JobResult(res.scores.assign(status="error")).failed
