"""The command line as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.fakes import tiny_suite


def bb(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchbox.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "COLUMNS": "200"},
        timeout=300,
    )


def _suite(tmp_path: Path, **overrides: object) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(tiny_suite(output=str(tmp_path / "out"), **overrides)))
    return p


def _no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr + r.stdout


def test_validate_ok(tmp_path: Path) -> None:
    r = bb("validate", str(_suite(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "ok — 1 dataset(s) × 1 model(s) × 2 method(s) = 2 job(s)" in r.stdout


def test_validate_reports_three_mistakes_with_paths(tmp_path: Path) -> None:
    p = _suite(
        tmp_path,
        batch_size=-3,
        methods=["tests.fakes:Grad", "salency"],
        metrics=[{"tests.fakes:MaskMass": {"power": 0}}],
    )
    r = bb("validate", str(p))
    assert r.returncode == 2
    _no_traceback(r)
    err = r.stderr
    assert f"{p}: 3 problems" in err
    assert "batch_size: expected an integer > 0, got -3" in err
    assert "methods[1]: unknown method 'salency'; did you mean 'saliency'?" in err
    assert "metrics[0].tests.fakes:MaskMass.power: expected an integer > 0, got 0" in err


def test_validate_lists_what_will_be_skipped(tmp_path: Path) -> None:
    r = bb("validate", str(_suite(tmp_path, datasets=["tests.fakes:NoMaskData"])))
    assert r.returncode == 0
    assert "will skip tests.fakes:MaskMass" in r.stdout and "needs masks" in r.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "suite file not found"),
        ("name: x\nmethods: [a, b\n", "invalid YAML"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_run_bad_input_is_one_line_exit_2(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    p = tmp_path / "s.yaml"
    if content is not None:
        p.write_text(content)
    r = bb("run", str(p))
    assert r.returncode == 2
    _no_traceback(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {p}") and expected in lines[0]


def test_run_cuda_without_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = bb("run", str(_suite(tmp_path)), "--device", "cuda")
    assert r.returncode == 2
    _no_traceback(r)
    assert "--device: device: 'cuda' requested but no CUDA device is available" in r.stderr


def test_run_writes_results_and_prints_summary(tmp_path: Path) -> None:
    r = bb("run", str(_suite(tmp_path)), "--output", str(tmp_path / "elsewhere"))
    assert r.returncode == 0, r.stderr
    assert "summary" in r.stdout and "tests.fakes:MaskMass" in r.stdout
    (run_dir,) = (tmp_path / "elsewhere" / "tiny").iterdir()
    assert f"results: {run_dir}" in r.stdout.replace("\n", "")
    assert len(pd.read_parquet(run_dir / "scores.parquet")) == 60


def test_run_with_a_failing_job_exits_1(tmp_path: Path) -> None:
    r = bb("run", str(_suite(tmp_path, methods=["tests.fakes:Boom", "tests.fakes:Grad"])))
    assert r.returncode == 1
    _no_traceback(r)
    assert "some jobs failed" in r.stderr


def test_ls(tmp_path: Path) -> None:
    r = bb("ls", "methods")
    assert r.returncode == 0
    for name in ("saliency", "integrated_gradients", "grad_cam", "random"):
        assert name in r.stdout
    r = bb("ls", "metrics", "point")
    assert "pointing_game" in r.stdout and "deletion" not in r.stdout
    r = bb("ls", "methods", "nothing_like_this")
    assert "no methods match" in r.stderr
    r = bb("ls", "widgets")
    assert r.returncode == 2
    _no_traceback(r)


def test_help_is_fast_and_light() -> None:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "benchbox.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if "|" in ln}
    assert not {"torch", "captum", "seaborn", "pandas"} & imported


def test_ls_markdown_lists_parameters_and_direction() -> None:
    r = bb("ls", "metrics", "deletion", "--markdown")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[:2] == ["| metric | what it is | parameters (defaults) |", "|---|---|---|"]
    assert lines[2].startswith("| `deletion` ↓ | Deletion AUC")
    assert '`steps=64`, `substrate="zero"`' in lines[2]


# -- report, compare, cache ----------------------------------------------------------------------
def _plant_regression(run_dir: Path, into: Path) -> Path:
    """A copy of ``run_dir`` in which Grad's MaskMass scores are 0.1 lower on every sample."""
    import shutil

    from benchbox.store import summarize

    shutil.copytree(run_dir, into)
    scores = pd.read_parquet(into / "scores.parquet")
    grad = (scores["metric"] == "tests.fakes:MaskMass") & (scores["method"] == "tests.fakes:Grad")
    scores.loc[grad, "value"] -= 0.1
    scores.to_parquet(into / "scores.parquet")
    summarize(scores, seed=3).to_csv(into / "summary.csv", index=False)
    return into


def test_run_writes_the_report_and_compare_gates(tmp_path: Path) -> None:
    # 20 lesion images: enough pairs for the Wilcoxon test to see a drop on every one of them
    suite = _suite(tmp_path, datasets=[{"tests.fakes:TinyData": {"n": 40}}])
    first = bb("run", str(suite))
    assert first.returncode == 0, first.stderr
    (run_a,) = (tmp_path / "out" / "tiny").iterdir()
    assert (run_a / "report.html").stat().st_size > 1000
    assert f"report: {run_a / 'report.html'}" in first.stdout.replace("\n", "")
    # a rerun of the same suite: no regression, exit 0
    page = tmp_path / "page.md"
    second = bb("run", str(suite), "--baseline", str(run_a), "--no-report", "--markdown", str(page))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "✅ no regression" in second.stdout and "✅ no regression" in page.read_text()
    run_b = next(p for p in (tmp_path / "out" / "tiny").iterdir() if p != run_a)
    assert not (run_b / "report.html").exists()
    # the planted regression: exit 1, named in the Markdown (also appended to --markdown)
    planted = _plant_regression(run_b, tmp_path / "planted")
    md = tmp_path / "summary.md"
    r = bb("compare", str(run_a), str(planted), "--markdown", str(md))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "❌ 1 regression" in r.stdout
    assert "tests.fakes:Grad" in md.read_text() and "regressed" in md.read_text()
    # a tolerance above the drop lets it pass
    r = bb("compare", str(run_a), str(planted), "--tolerance", "tests.fakes:MaskMass=5")
    assert r.returncode == 0, r.stdout
    # report into another folder, from the stored files only
    r = bb("report", str(planted), "--output", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").exists()
    assert list((tmp_path / "rep" / "tables").glob("*.tex"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("compare", "{tmp}/nowhere", "{tmp}"), "baseline not found"),
        (("report", "{tmp}"), "{tmp}"),
        (("run", "{suite}", "--baseline", "{tmp}/nowhere"), "baseline not found"),
        (("compare", "{tmp}/a", "{tmp}/a", "--tolerance", "x=y"), "tolerance"),
        (("run", "{suite}", "--executor", "spark"), "--executor: unknown executor 'spark'"),
        (("run", "{suite}", "--workers", "2"), "--workers/--scheduler apply to the Dask executor"),
    ],
)
def test_new_commands_refuse_bad_input_in_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.csv").write_text("dataset\n")
    suite = _suite(tmp_path)
    fill = {"tmp": str(tmp_path), "suite": str(suite)}
    r = bb(*(a.format(**fill) for a in args))
    assert r.returncode == 2, r.stdout + r.stderr
    _no_traceback(r)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert expected.format(**fill) in lines[0]
    assert not (tmp_path / "out").exists()  # refused before any run folder


def test_cache_ls_and_clear(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "BENCHBOX_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "k.pt").write_bytes(b"x" * 2048)
    (tmp_path / "cache" / "models" / "k.json").write_text("{}")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "benchbox.cli", "cache", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    r = run("ls")
    assert r.returncode == 0, r.stderr
    models = next(ln for ln in r.stdout.splitlines() if "models" in ln)
    assert "│       1 │" in models and "2.0 KiB" in models
    r = run("clear", "attributions")
    assert r.returncode == 0 and "removed 0 file(s)" in r.stdout
    r = run("clear")
    assert r.returncode == 0 and "removed 2 file(s), 2.0 KiB" in r.stdout
    assert not list((tmp_path / "cache" / "models").iterdir())
    r = run("clear", "widgets")
    assert r.returncode == 2


def test_a_killed_run_resumes_from_the_command_line(tmp_path: Path) -> None:
    import os

    suite = _suite(tmp_path)
    env = {**os.environ, "COLUMNS": "200", "BENCHBOX_FAULT_AFTER": "job:1"}
    killed = subprocess.run(
        [sys.executable, "-m", "benchbox.cli", "run", str(suite)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert killed.returncode == -9  # SIGKILLed after the first job was committed
    (run_dir,) = (tmp_path / "out" / "tiny").iterdir()
    assert not (run_dir / "scores.parquet").exists()
    r = bb("run", str(suite), "--resume", str(run_dir), "--no-report")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_parquet(run_dir / "scores.parquet")) == 60
    again = bb("run", str(suite), "--resume", str(run_dir), "--no-report")
    assert again.returncode == 0 and "nothing to resume" in again.stdout
    other = _suite(tmp_path, seed=4)
    r = bb("run", str(other), "--resume", str(run_dir))
    assert r.returncode == 2 and "Traceback" not in r.stderr
