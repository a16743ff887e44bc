"""The Python API: benchbox.run / benchbox.load / Results, on the tiny fakes."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import benchbox
from benchbox.api import Results
from benchbox.errors import SuiteError, UserError
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite(output=str(tmp_path / "results"))))
    return path


def test_import_benchbox_stays_light() -> None:
    code = (
        "import sys, benchbox\n"
        "heavy = ['torch', 'captum', 'seaborn', 'matplotlib', 'scipy', 'scipy.stats', 'pandas']\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "benchbox.load, benchbox.run\n"  # the lazy names resolve without torch or scipy.stats
        "print([m for m in ('torch', 'captum', 'seaborn', 'scipy.stats') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert out == ["[]", "[]"]


def test_lazy_names() -> None:
    assert benchbox.run is benchbox.api.run and benchbox.load is benchbox.api.load
    assert {"run", "load", "Results"} <= set(dir(benchbox))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        benchbox.nope  # noqa: B018


def test_run_returns_results_with_its_tables(suite_file: Path) -> None:
    res = benchbox.run(suite_file, limit=4)
    assert isinstance(res, Results) and not res.failed and res.comparison is None
    assert res.path.parent == suite_file.parent / "results" / "tiny"
    assert res.run_id == res.path.name == res.manifest["run_id"]
    assert res.manifest["resolved_suite"]["limit"] == 4
    # 2 methods × (MaskMass + TwoWay.mean + TwoWay.noise) × 4 samples
    assert len(res.scores) == 2 * 3 * 4
    assert set(res.curves.columns) >= {"sample_id", "step", "x", "y"}
    assert len(res.summary) == 2 * 3
    # The same tables, read back from disk.
    again = benchbox.load(res.path)
    pd.testing.assert_frame_equal(again.summary, res.summary)
    pd.testing.assert_frame_equal(again.scores, res.scores)
    assert again.manifest == json.loads((res.path / "manifest.json").read_text())
    assert again.failed is False
    assert repr(again) == f"Results({str(res.path)!r}: ok)"


def test_run_from_a_dict_and_from_a_suite(tmp_path: Path) -> None:
    a = benchbox.run(tiny_suite(limit=2), output=tmp_path / "a")
    s = parse_suite(tiny_suite(), source="mine.yaml")
    b = benchbox.run(s, output=tmp_path / "b", limit=2, seed=3)
    np.testing.assert_array_equal(a.scores["value"], b.scores["value"])
    assert b.manifest["suite_file"] == "mine.yaml"
    assert benchbox.run(s, output=tmp_path / "c").manifest["resolved_suite"]["limit"] is None


def test_overrides_are_validated_like_the_file(suite_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"limit: expected an integer > 0, got -1"):
        benchbox.run(suite_file, limit=-1)
    with pytest.raises(SuiteError, match=r"limti: unknown field; did you mean 'limit'\?"):
        benchbox.run(suite_file, limti=2)
    # An override can repair a file that does not validate on its own.
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(tiny_suite(limit=0, output=str(tmp_path / "r"))))
    assert benchbox.run(broken, limit=1).manifest["resolved_suite"]["limit"] == 1
    with pytest.raises(UserError, match=r"missing\.yaml: suite file not found"):
        benchbox.run(tmp_path / "missing.yaml", limit=1)
    with pytest.raises(UserError, match=r"suite: expected a suite file path, a dict or a Suite"):
        benchbox.run(3)


def test_run_with_a_baseline_compares(suite_file: Path, tmp_path: Path) -> None:
    first = benchbox.run(suite_file, limit=4)
    second = benchbox.run(suite_file, limit=4, baseline=first.path)
    assert second.comparison is not None and not second.comparison.regressed
    assert (second.comparison.table["verdict"] == "unchanged").all()
    assert repr(second).endswith(": ok, no regression)")
    assert not second.compare(first).regressed
    # A wrong baseline path fails before anything runs: no new run folder.
    runs = sorted((suite_file.parent / "results" / "tiny").iterdir())
    with pytest.raises(UserError, match=r"nope: baseline not found"):
        benchbox.run(suite_file, baseline=tmp_path / "nope")
    assert sorted((suite_file.parent / "results" / "tiny").iterdir()) == runs


def test_failed_jobs_are_reported_not_raised(tmp_path: Path) -> None:
    res = benchbox.run(
        tiny_suite(methods=["tests.fakes:Grad", "tests.fakes:Boom"], limit=2), output=tmp_path
    )
    assert res.failed and benchbox.load(res.path).failed
    assert repr(res).endswith(": failed)")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope: run folder not found"):
        benchbox.load(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match=r"file\.txt: not a folder"):
        benchbox.load(tmp_path / "file.txt")
    res = benchbox.run(tiny_suite(limit=2), output=tmp_path / "out")
    with pytest.raises(UserError, match=r"a folder of 1 run\(s\), not one run; give one, e\.g\. "):
        benchbox.load(tmp_path / "out" / "tiny")
    unfinished = tmp_path / "unfinished"
    (unfinished / "parts").mkdir(parents=True)
    with pytest.raises(
        UserError, match=r"not a finished run folder \(an unfinished run: parts/ only\): no "
    ):
        benchbox.load(unfinished)
    # A baseline folder with a summary and a manifest only: the summary loads, scores do not.
    only = tmp_path / "only"
    only.mkdir()
    for name in ("summary.csv", "manifest.json"):
        (only / name).write_bytes((res.path / name).read_bytes())
    loaded = benchbox.load(only)
    assert len(loaded.summary) == len(res.summary)
    with pytest.raises(UserError, match=r"scores\.parquet: not found"):
        loaded.scores  # noqa: B018


def test_report_calls_write_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = benchbox.run(tiny_suite(limit=2), output=tmp_path)
    calls: list[tuple[Path, dict]] = []
    fake = types.ModuleType("benchbox.report")
    fake.write_report = lambda path, **kw: calls.append((path, kw)) or path / "report.html"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchbox.report", fake)
    assert res.report(figures=False) == res.path / "report.html"
    assert calls == [(res.path, {"figures": False})]
    monkeypatch.setitem(sys.modules, "benchbox.report", types.ModuleType("benchbox.report"))
    with pytest.raises(UserError, match=r"cannot write a report: .* no benchbox\.report"):
        res.report()


def test_overrides_do_not_let_a_duplicate_key_through(tmp_path: Path) -> None:
    """A suite that fails validation is read again for the overrides: with the same loader."""
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nseed: 1\nseed: 2\n")
    with pytest.raises(SuiteError, match="duplicate key 'seed'"):
        benchbox.run(path, limit=4)


def test_run_takes_every_option_of_the_cli() -> None:
    import inspect

    from benchbox import cli

    cli_options = set(inspect.signature(cli.run).parameters)
    api_options = set(inspect.signature(benchbox.run).parameters)
    assert cli_options <= api_options, cli_options - api_options


def test_run_options_resume_report_markdown_and_other_suites(
    suite_file: Path, tmp_path: Path
) -> None:
    first = benchbox.run(suite_file, limit=4, cache=False)
    assert not (first.path / "report.html").exists()
    # a finished run resumed is returned as it is
    again = benchbox.run(suite_file, limit=4, resume=first.path)
    assert again.path == first.path
    pd.testing.assert_frame_equal(again.summary, first.summary)
    notes = tmp_path / "summary.md"
    reported = benchbox.run(suite_file, limit=4, report=True, baseline=first, markdown=notes)
    assert (reported.path / "report.html").is_file()
    assert reported.comparison is not None
    assert notes.read_text(encoding="utf-8") == reported.comparison.to_markdown() + "\n"
    # a baseline of another suite is refused before anything runs, unless allowed
    other = tiny_suite(name="other", limit=4, output=str(tmp_path / "results"))
    with pytest.raises(
        UserError,
        match=r"^baseline: <dict>: is a run of suite 'other', the .*"
        r"pass allow_different_suites=True",
    ):
        benchbox.run(other, baseline=first)
    assert not (tmp_path / "results" / "other").exists()
    allowed = benchbox.run(other, baseline=first, allow_different_suites=True)
    assert allowed.comparison is not None
