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
