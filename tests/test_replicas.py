"""Replicas: ``replicas: N`` on a model trains N copies, and every table says how far they spread.

Trained weights, and every number computed from them, depend on the training trajectory: another
seed, another thread count or another CPU's float kernels train other weights. A summary over the
samples of one model cannot show that; the replicas' spread can. These tests train ``cnn_gap`` at a
toy size (width 4, one epoch on ``TinyData``: about a second each).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchbox.compare import compare
from benchbox.errors import SuiteError
from benchbox.runner import RunResult, run_suite
from benchbox.seeding import derive_seed
from benchbox.stats import bootstrap_ci
from benchbox.suite import parse_suite

_MODEL = {"width": 4, "epochs": 1}


def _suite(replicas: int | None = 3, **overrides: Any) -> dict[str, Any]:
    params = dict(_MODEL) if replicas is None else {**_MODEL, "replicas": replicas}
    suite: dict[str, Any] = {
        "name": "replicas",
        "seed": 5,
        "batch_size": 4,
        "datasets": [{"tests.fakes:TinyData": {"n": 8, "size": 32}}],
        "models": [{"cnn_gap": params}],
        "methods": ["saliency", "random"],
        "metrics": ["sparseness", "tests.fakes:MaskMass"],
    }
    return {**suite, **overrides}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield run_suite(parse_suite(_suite()), output=tmp_path_factory.mktemp("results"))


# -- the suite -------------------------------------------------------------------------------------
def test_replicas_expand_to_one_spec_each_and_resolve_as_written() -> None:
    suite = parse_suite(_suite(3))
    assert [(m.name, m.replica, m.label) for m in suite.models] == [
        ("cnn_gap", 0, "cnn_gap#0"),
        ("cnn_gap", 1, "cnn_gap#1"),
        ("cnn_gap", 2, "cnn_gap#2"),
    ]
    # the parameters as written (the replica's train_seed is applied when it is built) ...
    assert len({m.params_json for m in suite.models}) == 1
    assert [m.build().train_seed for m in suite.models] == [0, 1, 2]
    # ... and an override (a metric's rebuild) wins over the replica's seed
    assert suite.models[2].build(train_seed=7).train_seed == 7
    (resolved,) = suite.resolved()["models"]
    assert resolved["cnn_gap"]["replicas"] == 3 and resolved["cnn_gap"]["train_seed"] == 0


def test_replicas_start_at_the_written_train_seed() -> None:
    suite = parse_suite(
        _suite(None, models=[{"cnn_gap": {**_MODEL, "train_seed": 4, "replicas": 2}}])
    )
    assert [m.build().train_seed for m in suite.models] == [4, 5]


def test_one_replica_is_the_suite_without_replicas() -> None:
    # the same hash, so runs and baselines made before replicas existed still resume and compare
    assert parse_suite(_suite(1)).hash == parse_suite(_suite(None)).hash
    assert parse_suite(_suite(2)).hash != parse_suite(_suite(None)).hash


@pytest.mark.parametrize("bad", [0, -1, 33, "3", True, 2.0, None])
def test_replicas_must_be_a_small_positive_integer(bad: Any) -> None:
    suite = _suite(None, models=[{"cnn_gap": {**_MODEL, "replicas": bad}}])
    with pytest.raises(
        SuiteError, match=r"models\[0\]\.cnn_gap\.replicas: expected an integer from 1 to 32, got"
    ):
        parse_suite(suite)


def test_replicas_of_a_model_benchbox_does_not_train_are_refused() -> None:
    suite = _suite(None, models=[{"tests.fakes:TinyModel": {"replicas": 2}}])
    with pytest.raises(
        SuiteError, match=r"replicas: tests\.fakes:TinyModel is not trained by benchbox"
    ):
        parse_suite(suite)


# -- the run ---------------------------------------------------------------------------------------
def test_each_replica_is_trained_once_with_its_own_seed(run: RunResult) -> None:
    infos = run.manifest["models"]
    assert [(i["replica"], i["replicas"], i["train_seed"]) for i in infos] == [
        (0, 3, 0),
        (1, 3, 1),
        (2, 3, 2),
    ]
    assert len({i["cache_key"] for i in infos}) == 3
    assert not any(i["from_cache"] for i in infos)
    jobs = run.manifest["jobs"]
    assert [j["replica"] for j in jobs] == [0, 0, 1, 1, 2, 2]


def test_a_replica_is_the_model_repeatability_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica r and ``train_seed=r`` of the suite's model are one model: same cache entry."""
    import torch

    from benchbox.jobs import build_model

    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path))
    suite = parse_suite(_suite(2))
    ds = suite.datasets[0].build()
    replica = build_model(suite.models[1], ds, suite, torch.device("cpu"), probes=False)
    rebuilt = build_model(
        suite.models[0], ds, suite, torch.device("cpu"), probes=False, train_seed=1
    )
    assert replica.info["cache_key"] == rebuilt.info["cache_key"]
    assert rebuilt.info["from_cache"]


def test_rows_say_which_replica_and_replicas_differ(run: RunResult) -> None:
    scores = run.scores
    assert sorted(scores["replica"].unique()) == [0, 1, 2]
    sal = scores[(scores["method"] == "saliency") & (scores["metric"] == "sparseness")]
    per_replica = sal.pivot(index="sample_id", columns="replica", values="value")
    assert per_replica.shape == (8, 3)
    # other weights, other maps: no two replicas score every sample alike
    assert not np.allclose(per_replica[0], per_replica[1])
    assert not np.allclose(per_replica[1], per_replica[2])
    # the random control knows nothing of the model: its replicas draw the same maps
    rnd = scores[(scores["method"] == "random") & (scores["metric"] == "sparseness")]
    rnd_wide = rnd.pivot(index="sample_id", columns="replica", values="value")
    assert (rnd_wide[0] == rnd_wide[1]).all() and (rnd_wide[1] == rnd_wide[2]).all()
    curves_cols = run.curves.columns
    assert "replica" in curves_cols


def test_summary_separates_samples_from_training_seeds(run: RunResult) -> None:
    """Checked against a plain loop: per-sample means over replicas for the mean and its CI, the
    replicas' own means for the spread."""
    scores = run.scores
    for r in run.summary.itertuples(index=False):
        g = scores[
            (scores["method"] == r.method)
            & (scores["metric"] == r.metric)
            & (scores["variant"] == r.variant)
            & (scores["status"] == "ok")
        ]
        per_sample: dict[str, list[float]] = {}
        per_replica: dict[int, list[float]] = {}
        for row in g.itertuples(index=False):
            if math.isfinite(row.value):
                per_sample.setdefault(row.sample_id, []).append(row.value)
                per_replica.setdefault(int(row.replica), []).append(row.value)
        sample_means = np.array([np.mean(v) for v in per_sample.values()])
        replica_means = np.array([np.mean(per_replica[k]) for k in sorted(per_replica)])
        assert r.n == len(sample_means)
        assert r.mean == pytest.approx(sample_means.mean(), rel=1e-12, abs=1e-15)
        assert r.std == pytest.approx(sample_means.std(ddof=1), rel=1e-9, abs=1e-15)
        assert r.replicas == len(replica_means) == 3
        assert r.replica_std == pytest.approx(replica_means.std(ddof=1), rel=1e-9, abs=1e-15)
        assert r.replica_min == pytest.approx(replica_means.min(), rel=1e-12)
        assert r.replica_max == pytest.approx(replica_means.max(), rel=1e-12)
        key = (r.suite, r.dataset, r.model, r.method, r.metric, r.variant)
        low, high = bootstrap_ci(sample_means, seed=derive_seed(5, "summary", *key))
        assert (r.ci_low, r.ci_high) == (low, high)
    sal = run.summary[
        (run.summary["method"] == "saliency") & (run.summary["metric"] == "sparseness")
    ]
    assert float(sal["replica_std"].iloc[0]) > 0


def test_summary_without_replicas_is_unchanged() -> None:
    """One replica: the per-sample values are the values (NaN spread), as before replicas."""
    from benchbox.store import summarize

    scores = pd.DataFrame(
        {
            "suite": "s",
            "dataset": "d",
            "model": "m",
            "method": "x",
            "metric": "k",
            "variant": "",
            "sample_id": ["a", "b", "c", "d"],
            "value": [0.1, np.nan, 0.4, 0.7],
            "higher_is_better": True,
            "status": "ok",
            "message": None,
        }
    )
    (row,) = summarize(scores, seed=0).itertuples(index=False)
    assert (row.mean, row.n, row.n_nan, row.replicas) == (pytest.approx(0.4), 3, 1, 1)
    assert math.isnan(row.replica_std) and row.replica_min == row.replica_max == pytest.approx(0.4)


def test_report_has_a_replicas_table(run: RunResult, tmp_path: Path) -> None:
    from benchbox.report import write_report

    rep = write_report(run.path, tmp_path / "report")
    md = (tmp_path / "report" / "tables" / "replicas.md").read_text()
    assert "Spread across 3 training replicas" in md
    sal = run.summary[
        (run.summary["method"] == "saliency") & (run.summary["metric"] == "sparseness")
    ]
    sd = float(sal["replica_std"].iloc[0])
    row = next(ln for ln in md.splitlines() if ln.startswith("| saliency |"))
    assert f"{sd:.2g}"[:4].rstrip("0") in row, (sd, row)
    means = (tmp_path / "report" / "tables" / "means.md").read_text()
    assert "mean over the model's 3 replicas" in means
    assert any(p.name == "replicas.tex" for p in rep.tables)


# -- the CI gate -----------------------------------------------------------------------------------
def _replica_run(folder: Path, values: dict[int, list[float]]) -> Path:
    """A stored run of one (method, metric) whose replica r scored samples a–d with values[r]."""
    import json

    from benchbox.schema import SCORES
    from benchbox.store import summarize

    ids = ["a", "b", "c", "d"]
    frames = [
        pd.DataFrame(
            {
                "run_id": "r",
                "suite": "t",
                "dataset": "d",
                "dataset_params": "{}",
                "model": "m",
                "model_params": "{}",
                "replica": r,
                "method": "x",
                "method_params": "{}",
                "metric": "k",
                "metric_params": "{}",
                "variant": "",
                "sample_id": ids,
                "label": pd.array([0] * 4, dtype="Int64"),
                "target": pd.array([0] * 4, dtype="Int64"),
                "prediction": pd.array([0] * 4, dtype="Int64"),
                "value": np.asarray(v, dtype=np.float64),
                "higher_is_better": True,
                "status": "ok",
                "message": None,
            }
        )
        for r, v in values.items()
    ]
    scores = pd.concat(frames, ignore_index=True)[[c.name for c in SCORES]]
    folder.mkdir(parents=True)
    scores.to_parquet(folder / "scores.parquet")
    summarize(scores, seed=0).to_csv(folder / "summary.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps({"suite": "t", "suite_hash": "h"}))
    return folder


def test_gate_pairs_each_sample_once_over_its_replicas(tmp_path: Path) -> None:
    # Per sample the replicas' mean is the same on both sides (0.5, 0.6, 0.7, 0.8), although
    # every single replica value moved: one difference per sample, all zero.
    base = _replica_run(tmp_path / "a", {0: [0.4, 0.5, 0.6, 0.7], 1: [0.6, 0.7, 0.8, 0.9]})
    new = _replica_run(tmp_path / "b", {0: [0.5, 0.6, 0.7, 0.8], 1: [0.5, 0.6, 0.7, 0.8]})
    c = compare(base, new)
    (row,) = c.table.itertuples(index=False)
    assert row.n_paired == 4 and row.p == 1.0 and not c.regressed
    assert (row.baseline_replicas, row.new_replicas) == (2, 2)
    assert row.baseline_replica_std == pytest.approx(np.std([0.55, 0.75], ddof=1))
    assert row.new_replica_std == 0.0


def test_gate_flags_a_regression_within_the_replicas_spread(tmp_path: Path) -> None:
    # replica 1 scores 0.4 above replica 0 on every sample; the new run is 0.05 lower throughout
    low = [0.40, 0.45, 0.50, 0.55]
    base = _replica_run(tmp_path / "a", {0: low, 1: [v + 0.4 for v in low]})
    new = _replica_run(tmp_path / "b", {0: [v - 0.05 for v in low], 1: [v + 0.35 for v in low]})
    c = compare(base, new, tolerance=0.01, alpha=0.2)
    (row,) = c.table.itertuples(index=False)
    assert row.delta == pytest.approx(-0.05)
    assert row.verdict == "regressed"  # four samples, all worse: p = 0.125 < alpha
    sd = 0.4 / math.sqrt(2)  # two replica means 0.4 apart
    assert row.baseline_replica_std == pytest.approx(sd)
    assert row.note == f"within the spread across training replicas (sd {sd:.3g})"
    md = c.to_markdown()
    assert "The model was trained 2 times (replicas)" in md
    assert f"± {sd:.4f}" in md
    # without the spread's note where the drop exceeds the spread
    worse = _replica_run(tmp_path / "c", {0: [v - 0.5 for v in low], 1: [v - 0.1 for v in low]})
    (row,) = compare(base, worse, tolerance=0.01, alpha=0.2).table.itertuples(index=False)
    assert row.verdict == "regressed" and row.note == ""
