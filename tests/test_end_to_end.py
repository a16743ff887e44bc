"""The quickstart, end to end, as the README runs it (reduced: fewer test images)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from benchbox.runner import run_suite
from benchbox.schema import SCORES
from benchbox.suite import load_suite, parse_suite

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "suites" / "quickstart.yaml"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["limit"] = 128
    data["output"] = str(tmp_path_factory.mktemp("results"))
    return data


@pytest.fixture(scope="module")
def first_run(reduced: dict, cache: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(cache))
        return run_suite(parse_suite(reduced))


def test_bundled_suites_validate() -> None:
    for path in sorted((ROOT / "suites").glob("*.yaml")):
        load_suite(path)


def test_quickstart_trains_an_accurate_model(first_run) -> None:
    (info,) = first_run.manifest["models"]
    assert info["test_accuracy"] >= 0.90
    assert not first_run.failed


def test_grad_cam_beats_random_on_the_pointing_game(first_run) -> None:
    s = first_run.summary.set_index(["method", "metric"])["mean"]
    assert s["grad_cam", "pointing_game"] - s["random", "pointing_game"] >= 0.15
    # deletion: lower is better; a map that knows nothing should not win
    assert s["grad_cam", "deletion"] < s["random", "deletion"]


def test_scores_schema_and_counts(first_run) -> None:
    scores = first_run.scores
    assert list(scores.columns) == [c.name for c in SCORES]
    assert set(scores["status"]) == {"ok"}
    assert scores.groupby(["method", "metric"]).size().eq(128).all()
    pg = scores[scores["metric"] == "pointing_game"]
    # pointing game is undefined on lesion-free images, and says so
    assert (pg.loc[pg["label"] == 0, "message"] == "empty mask").all()
    assert pg.loc[pg["label"] == 0, "value"].isna().all()
    curves = first_run.curves
    assert set(curves["metric"]) == {"deletion"}


def test_rerun_gives_identical_values(first_run, reduced: dict, cache: Path) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(cache))
        second = run_suite(parse_suite(reduced))
    assert second.manifest["models"][0]["from_cache"] is True
    assert second.path != first_run.path
    a, b = first_run.scores, second.scores
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())


def test_cli_prints_summary(first_run, reduced: dict, cache: Path, tmp_path: Path) -> None:
    suite = tmp_path / "q.yaml"
    suite.write_text(yaml.safe_dump({**reduced, "limit": 16}))
    r = subprocess.run(
        [sys.executable, "-m", "benchbox.cli", "run", str(suite)],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "BENCHBOX_CACHE": str(cache), "COLUMNS": "200"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    for word in ("summary", "grad_cam", "pointing_game", "deletion", "test accuracy"):
        assert word in r.stdout
    summary = pd.read_csv(next(Path(reduced["output"]).glob("quickstart/*/summary.csv")))
    assert set(summary["status"]) == {"ok"}


def test_readme_lists_every_builtin_component() -> None:
    from benchbox.registry import REGISTRIES

    readme = (ROOT / "README.md").read_text()
    for reg in REGISTRIES.values():
        for name in reg.names():
            assert f"`{name}`" in readme, name


def test_volumes_suite_runs_every_method_and_metric_in_3d(tmp_path: Path) -> None:
    """suites/volumes.yaml shrunk (16³ volumes, a 2-epoch model): every row ok, maps in 3D."""
    data = yaml.safe_load((ROOT / "suites" / "volumes.yaml").read_text())
    data["datasets"] = [
        {"brain_lesions_3d": {"size": 16, "n_train": 64, "n_val": 16, "n_test": 16}}
    ]
    data["models"] = [{"cnn3d": {"width": 4, "epochs": 2}}]
    data["limit"] = 8
    data["output"] = str(tmp_path / "results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
        result = run_suite(parse_suite(data))
    scores = result.scores
    assert not result.failed
    assert set(scores["status"]) == {"ok"}, scores["message"].unique()
    named = {next(iter(m)) if isinstance(m, dict) else m for m in data["methods"]}
    assert set(scores["method"]) == named
    assert scores.groupby(["method", "metric"]).size().eq(8).all()
    # deletion removes voxels of the 16³ volume: its curves end at the substrate after all steps
    deletion = result.curves[result.curves["metric"] == "deletion"]
    assert deletion.groupby(["method", "sample_id"])["x"].max().eq(1.0).all()
