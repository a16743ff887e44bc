"""Resume: a run SIGKILLed at any point and resumed ends with exactly the uninterrupted run's rows.

The kills are deterministic: the child process sets ``BENCHBOX_FAULT_AFTER=<event>:<n>`` (the test
hook in ``benchbox.store.fault_point``) and dies by SIGKILL at that point, leaving whatever a real
kill leaves (parts, temporary files, a half-finalized folder).
"""

from __future__ import annotations

import json
import os
import signal
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
KEY = ["dataset", "model", "replica", "method", "metric", "variant", "sample_id"]

# 3 models (cnn_gap's two replicas, TinyModel) × 3 methods = 9 jobs of 3 batches; each replica
# trains once (weight cache), curves from TwoWay and deletion.
SUITE = tiny_suite(
    name="resumable",
    datasets=[{"tests.fakes:TinyData": {"n": 12}}],
    models=[{"cnn_gap": {"width": 4, "epochs": 1, "replicas": 2}}, "tests.fakes:TinyModel"],
    methods=["saliency", {"integrated_gradients": {"steps": 4}}, "random"],
    metrics=["tests.fakes:MaskMass", "tests.fakes:TwoWay", {"deletion": {"steps": 4}}],
)

CHILD = """
import json, sys
from pathlib import Path
from benchbox.runner import run_suite
from benchbox.suite import parse_suite
run_suite(parse_suite(json.loads(sys.argv[1])), output=Path(sys.argv[2]))
"""

# (event, n): the n-th time the event happens in the child. Part writes count run.json (1) and
# the first model's facts (2), so part 3 is job 0's curves and part 5 its scores (commit marker).
KILLS = [
    ("model", 1),  # first model built, none of its jobs ran
    ("batch", 5),  # in the middle of job 1
    ("part", 3),  # job 0's curves part written to a temporary file, not renamed
    ("part", 5),  # job 0's scores part (its commit marker) half-written
    ("job", 1),  # job 0 committed
    ("job", 4),  # second model's first job committed
    ("finalize", 1),  # scores.parquet written; curves, summary, manifest not; parts still there
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("cache")
    # Off: a resumed job must recompute its attributions, not read the reference run's.
    return {"BENCHBOX_CACHE": str(cache), "BENCHBOX_ATTRIBUTION_CACHE": "0"}


@pytest.fixture(scope="module")
def reference(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return run_suite(parse_suite(SUITE), output=tmp_path_factory.mktemp("ref"))


def _killed_runs(env: dict[str, str], root: Path) -> dict[tuple[str, int], Path]:
    """Start one child per kill point (two at a time) and return each one's run folder."""
    procs = []
    for i, (event, n) in enumerate(KILLS):
        out = root / f"kill{i}"
        child_env = {**os.environ, **env, "BENCHBOX_FAULT_AFTER": f"{event}:{n}"}
        cmd = [sys.executable, "-c", CHILD, json.dumps(SUITE), str(out)]
        procs.append(((event, n), out, subprocess.Popen(cmd, cwd=ROOT, env=child_env)))
    folders = {}
    for kill, out, proc in procs:
        assert proc.wait(timeout=120) == -signal.SIGKILL, kill
        (folder,) = (out / "resumable").iterdir()
        folders[kill] = folder
    return folders


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="run_id").reset_index(drop=True)


def test_killed_runs_resume_to_the_uninterrupted_rows(
    env: dict[str, str], reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ref_scores, ref_curves = _comparable(reference.scores), _comparable(reference.curves)
    assert len(ref_scores) == 9 * 4 * 12  # 9 jobs × (MaskMass, TwoWay ×2, deletion) × 12
    assert not ref_scores.duplicated(KEY).any()
    folders = _killed_runs(env, tmp_path)

    left = {kill: sorted(p.name for p in (f / "parts").glob("*")) for kill, f in folders.items()}
    assert left["model", 1] == ["model-000-000.json", "run.json"]
    assert ".curves-00000.parquet.tmp" in left["part", 3]
    assert "scores-00000.parquet" not in left["part", 5]
    assert "scores-00000.parquet" in left["job", 1] and "scores-00001.parquet" not in left["job", 1]
    assert (folders["finalize", 1] / "scores.parquet").exists()
    assert not (folders["finalize", 1] / "manifest.json").exists()

    for kill, folder in folders.items():
        res = run_suite(parse_suite(SUITE), resume=folder)
        assert res.path == folder and res.run_id == folder.name, kill
        assert res.note.startswith(f"resumed {folder}"), kill
        scores, curves = res.scores, res.curves
        assert set(scores["run_id"]) == {folder.name}, kill
        pd.testing.assert_frame_equal(_comparable(scores), ref_scores, check_exact=True)
        pd.testing.assert_frame_equal(_comparable(curves), ref_curves, check_exact=True)
        assert sorted(p.name for p in folder.iterdir()) == [
            "curves.parquet",
            "examples",
            "manifest.json",
            "scores.parquet",
            "summary.csv",
        ], kill
        pd.testing.assert_frame_equal(res.summary, reference.summary, check_exact=True)
        assert [j["index"] for j in res.manifest["jobs"]] == list(range(9)), kill
        assert [(m["model"], m["replica"]) for m in res.manifest["models"]] == [
            ("cnn_gap", 0),
            ("cnn_gap", 1),
            ("tests.fakes:TinyModel", 0),
        ], kill


def test_resuming_a_finalized_run_is_a_no_op(reference) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.path.iterdir()}
    res = run_suite(parse_suite(SUITE), resume=reference.path)
    assert res.note == f"{reference.path}: run already finalized; nothing to resume"
    assert {p.name: p.stat().st_mtime_ns for p in reference.path.iterdir()} == before
    cols = ["method", "metric", "variant", "mean", "ci_low", "ci_high", "n"]
    pd.testing.assert_frame_equal(res.summary[cols], reference.summary[cols], check_dtype=False)
    assert res.manifest["run_id"] == reference.run_id and not res.failed


def test_resume_with_another_suite_names_both_hashes(reference) -> None:
    other = parse_suite({**SUITE, "seed": 4}, source="other.yaml")
    ours = parse_suite(SUITE).hash
    with pytest.raises(
        UserError,
        match=rf"--resume .*: the run was started from a suite with hash {ours[:12]}, but "
        rf"other.yaml hashes to {other.hash[:12]}; resume with the suite file",
    ):
        run_suite(other, resume=reference.path)


def test_resume_on_another_device_or_a_foreign_folder(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import benchbox.runner as runner

    # The device check runs before anything is built; pretend a GPU to reach it.
    monkeypatch.setattr(runner, "resolve_device", lambda *a, **k: torch.device("cuda:0"))
    with pytest.raises(UserError, match=r"started on device 'cpu', not 'cuda:0'; resume with"):
        run_suite(parse_suite(SUITE), resume=reference.path)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"not a benchbox run folder .* results/<suite>/<run_id>"):
        run_suite(parse_suite(SUITE), resume=tmp_path)


def test_stale_temporary_files_are_removed(env: dict[str, str], tmp_path: Path) -> None:
    from benchbox.store import RunStore

    suite = parse_suite(tiny_suite())
    store = RunStore.create(tmp_path, suite.name, suite.hash, {"device": "cpu"})
    (store.parts / ".scores-00001.parquet.tmp").write_bytes(b"half a parquet")
    (store.parts / "curves-00001.parquet").write_bytes(b"an uncommitted job's curves")
    reopened = RunStore.open(store.path, suite.hash, "cpu", "s.yaml")
    assert sorted(p.name for p in reopened.parts.iterdir()) == ["curves-00001.parquet", "run.json"]
    assert reopened.finished() == set()
    res = run_suite(suite, resume=store.path)  # the uncommitted curves are replaced, not kept
    fresh = run_suite(suite, output=tmp_path / "fresh")
    pd.testing.assert_frame_equal(_comparable(res.curves), _comparable(fresh.curves))
