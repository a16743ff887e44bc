"""The Dask executor gives the local executor's rows, survives a killed worker, stays optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchbox.errors import UserError
from benchbox.runner import run_suite
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite

ROOT = Path(__file__).parents[1]
# 2 models × 2 methods = 4 jobs; cnn_gap is trained by the driver and loaded by the workers.
SUITE = tiny_suite(
    name="spread",
    models=[{"cnn_gap": {"width": 4, "epochs": 1}}, "tests.fakes:TinyModel"],
    methods=["saliency", "tests.fakes:Noise"],
    metrics=["tests.fakes:MaskMass", "tests.fakes:TwoWay"],
)


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="run_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def local(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(cache_dir))
        return run_suite(parse_suite(SUITE), output=tmp_path_factory.mktemp("local"), cache=False)


def test_two_workers_equal_local_and_a_killed_worker_is_retried(
    local, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed")
    ref = local
    # The first task to start SIGKILLs its worker process (and removes the marker, so the
    # rescheduled attempt lives): Dask must run it again elsewhere and the rows must not change.
    marker = tmp_path / "kill-once"
    marker.touch()
    monkeypatch.setenv("BENCHBOX_FAULT_AFTER", "task:1")
    monkeypatch.setenv("BENCHBOX_FAULT_ONCE", str(marker))
    monkeypatch.setenv("BENCHBOX_CACHE", str(cache_dir))
    res = run_suite(parse_suite(SUITE), output=tmp_path, executor="dask", workers=2, cache=False)
    assert not marker.exists()  # a worker did die
    assert res.manifest["executor"] == "dask" and not res.failed
    # (Which worker ran which job is up to the scheduler: the survivor may take every job left
    # before the nanny has restarted the killed one, so the pids are not asserted.)
    assert all(j.get("worker") for j in res.manifest["jobs"] if j["status"] != "skipped")
    pd.testing.assert_frame_equal(
        _comparable(res.scores), _comparable(ref.scores), check_exact=True
    )
    pd.testing.assert_frame_equal(
        _comparable(res.curves), _comparable(ref.curves), check_exact=True
    )
    # the driver loaded the local run's weights from the weight cache (trained once)
    got, want = res.manifest["models"][0], ref.manifest["models"][0]
    assert got["from_cache"] and got["cache_key"] == want["cache_key"]
    assert got["test_accuracy"] == want["test_accuracy"]


def test_option_errors() -> None:
    suite = parse_suite(SUITE)
    with pytest.raises(UserError, match=r"--workers/--scheduler apply to the Dask executor only"):
        run_suite(suite, workers=2)
    with pytest.raises(UserError, match=r"--executor: unknown executor 'ray'; use one of local"):
        run_suite(suite, executor="ray")
    pytest.importorskip("distributed")
    with pytest.raises(UserError, match=r"--workers 2 and --scheduler tcp://h:1: .* give one"):
        run_suite(suite, executor="dask", workers=2, scheduler="tcp://h:1")
    with pytest.raises(UserError, match=r"--workers: expected an integer > 0, got 0"):
        run_suite(suite, executor="dask", workers=0)
    with pytest.raises(UserError, match=r"--scheduler: 'localhost' is not a scheduler address"):
        run_suite(suite, executor="dask", scheduler="localhost")


def test_dask_stays_optional(tmp_path: Path) -> None:
    # A fresh interpreter: importing the runner loads no dask; without dask installed (blocked
    # here by a None entry in sys.modules) the executor names the extra to install.
    code = """
import sys
import benchbox.runner
assert "dask" not in sys.modules and "distributed" not in sys.modules, "dask imported"
sys.modules["distributed"] = None
from benchbox.errors import UserError
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite
try:
    benchbox.runner.run_suite(parse_suite(tiny_suite()), executor="dask", output=sys.argv[1])
except UserError as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        '--executor dask: dask.distributed is not installed; pip install "benchbox[dask]" '
        "(or use --executor local)"
    )
    assert not any(tmp_path.iterdir())  # refused before any results folder exists
