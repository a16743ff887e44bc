"""The Python API: run a suite, load a stored run, compare two runs.

    import benchbox

    res = benchbox.run("suites/quickstart.yaml", limit=32)  # overrides any top-level suite field
    res.summary                                             # mean, 95% CI, n per row
    res.scores.groupby(["method", "metric"])["value"].mean()
    res.compare("results/baselines/ci").regressed           # the CI gate, see benchbox.compare
    same = benchbox.load(res.path)                          # the same tables, read from disk

Everything a ``Results`` holds is read from the run folder when first asked for, so a loaded run
and a fresh one behave the same, and a report can be made anywhere from the files alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compare import (
    DEFAULT_TOLERANCE,
    Comparison,
    append_markdown,
    check_same_suite,
    compare,
    load_side,
)
from .errors import SuiteError, UserError

if TYPE_CHECKING:
    import pandas as pd

    from .runner import Reporter, RunResult
    from .suite import Suite

__all__ = ["Results", "load", "run"]


class Results:
    """One stored run: its folder and its tables, loaded lazily from disk.

    Attributes:
        path: the run folder ``<output>/<suite>/<run_id>/``.
        comparison: the comparison with the baseline when ``run(..., baseline=...)`` made one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        summary: pd.DataFrame | None = None,
        manifest: dict[str, Any] | None = None,
        failed: bool | None = None,
        comparison: Comparison | None = None,
    ) -> None:
        self.path = Path(path)
        self.comparison = comparison
        # What the runner already holds in memory seeds the caches; the rest is read on demand.
        if summary is not None:
            self.__dict__["summary"] = summary
        if manifest is not None:
            self.__dict__["manifest"] = manifest
        if failed is not None:
            self.__dict__["failed"] = failed

    @classmethod
    def from_run_result(cls, result: RunResult) -> Results:
        # The summary is read back from disk (not taken from memory) so that a fresh run and a
        # loaded one give equal frames, NaN for an empty message included.
        return cls(result.path, manifest=result.manifest, failed=result.failed)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", self.path.name))

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json``: the resolved suite, versions, device, models, per-job wall time."""
        file = self.path / "manifest.json"
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{file}: cannot read the run's manifest: {exc}") from exc
        if not isinstance(data, dict):
            raise UserError(f"{file}: expected a JSON object, got {type(data).__name__}")
        return data

    @cached_property
    def summary(self) -> pd.DataFrame:
        """``summary.csv``: mean, 95% bootstrap CI, std, n per (dataset, model, method, metric,
        variant)."""
        from .store import read_summary

        return read_summary(self.path / "summary.csv")

    @cached_property
    def scores(self) -> pd.DataFrame:
        """``scores.parquet``: one row per (dataset, model, method, metric, variant, sample)."""
        return self._parquet("scores.parquet")

    @cached_property
    def curves(self) -> pd.DataFrame:
        """``curves.parquet``: per-sample curves (deletion, randomization layers, attack ε)."""
        return self._parquet("curves.parquet")

    def _parquet(self, name: str) -> pd.DataFrame:
        import pandas as pd

        file = self.path / name
        if not file.exists():
            raise UserError(f"{file}: not found; this folder holds no {name} (only a summary?)")
        return pd.read_parquet(file)

    @cached_property
    def failed(self) -> bool:
        """True when a job failed (rows with ``status="error"``): ``benchbox run`` exits 1."""
        jobs = self.manifest.get("jobs")
        if isinstance(jobs, list) and jobs:
            return any(j.get("status") == "error" for j in jobs)
        return bool((self.summary["status"] == "error").any())

    def compare(
        self,
        baseline: Any,
        *,
        tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
        alpha: float = 0.05,
    ) -> Comparison:
        """This run (the new one) against ``baseline`` (a run folder, a summary.csv or a
        ``Results``); see ``benchbox.compare.compare``."""
        return compare(baseline, self, tolerance=tolerance, alpha=alpha)

    def report(self, **kwargs: Any) -> Any:
        """Write the run's tables, figures and report.html (``benchbox.report.write_report``)."""
        import importlib

        try:
            module = importlib.import_module(f"{__package__}.report")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.report":
                raise  # the report module exists; one of its own dependencies is missing
            module = None
        write_report = getattr(module, "write_report", None)
        if write_report is None:
            raise UserError(
                f"{self.path}: cannot write a report: this installation of benchbox has no "
                f"benchbox.report.write_report; upgrade benchbox"
            )
        return write_report(self.path, **kwargs)

    def __repr__(self) -> str:
        state = "failed" if self.failed else "ok"
        regressed = ""
        if self.comparison is not None:
            regressed = ", regressed" if self.comparison.regressed else ", no regression"
        return f"Results({str(self.path)!r}: {state}{regressed})"


def load(run_dir: str | os.PathLike[str]) -> Results:
    """Open a finished run folder (``results/<suite>/<run_id>/``); tables load when first used.

    Raises ``UserError`` when ``run_dir`` is not a finished run: missing, not a folder, a folder
    of runs (the message names the latest), or lacking ``summary.csv``/``manifest.json``.
    """
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"{path}: run folder not found; give results/<suite>/<run_id>/")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; give the run folder results/<suite>/<run_id>/")
    missing = [f for f in ("summary.csv", "manifest.json") if not (path / f).exists()]
    if missing:
        runs = sorted(p.parent for p in path.glob("*/manifest.json"))
        if runs:
            raise UserError(
                f"{path}: a folder of {len(runs)} run(s), not one run; give one, e.g. {runs[-1]}"
            )
        why = " (an unfinished run: parts/ only)" if (path / "parts").is_dir() else ""
        raise UserError(
            f"{path}: not a finished run folder{why}: no {' or '.join(missing)}; give the folder "
            f"`benchbox run` printed (results/<suite>/<run_id>/)"
        )
    return Results(path)


def run(
    suite: str | os.PathLike[str] | Mapping[str, Any] | Suite,
    *,
    device: str | None = None,
    output: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    cache: bool | None = None,
    report: bool = False,
    baseline: Any = None,
    tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
    alpha: float = 0.05,
    markdown: str | os.PathLike[str] | None = None,
    allow_different_suites: bool = False,
    reporter: Reporter | None = None,
    **overrides: Any,
) -> Results:
    """Run a suite and return its ``Results``; with ``baseline``, compare against it too.

    Every option of ``benchbox run`` (README, Commands), by the same name:

    Args:
        suite: a suite file, a mapping of suite fields (as the YAML gives them) or a ``Suite``.
        device: overrides the suite's device (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        output: overrides the suite's output root; the run goes to ``<output>/<suite>/<run_id>/``.
        resume: a killed run folder of the same suite to finish (``--resume``).
        executor: ``local`` or ``dask``; ``workers`` (a Dask ``LocalCluster`` of N processes) or
            ``scheduler`` (the address of a running one) for ``dask``.
        cache: reuse cached attributions (default on unless ``BENCHBOX_ATTRIBUTION_CACHE=0``).
        report: also write tables, figures and report.html (else ``Results.report()`` later).
        baseline: a run folder, a ``summary.csv`` or a ``Results`` to compare with; it is read
            before anything runs, so a wrong path fails at once. The comparison is
            ``Results.comparison`` (``.regressed`` is the CI gate).
        tolerance, alpha, allow_different_suites: of the comparison, see
            ``benchbox.compare.compare``; a baseline of another suite is refused before the run
            unless ``allow_different_suites``.
        markdown: with ``baseline``, also append the comparison's Markdown to this file.
        reporter: progress callbacks (the CLI's progress bar); silent by default.
        **overrides: top-level suite fields replacing the suite's own before validation, e.g.
            ``limit=16, seed=1``; an unknown or invalid one raises ``UserError``.

    Raises ``UserError`` (``SuiteError``) for an invalid suite, override or baseline. A failed job
    does not raise: ``Results.failed`` says so and its rows carry the error.
    """
    from .runner import run_suite

    parsed = _suite(suite, overrides)
    base = None
    if baseline is not None:
        base = load_side(baseline, "baseline")
        check_same_suite(
            base,
            parsed.name,
            f"baseline: {parsed.source}",
            allow_different_suites=allow_different_suites,
            flag="allow_different_suites=True",
        )
    result = run_suite(
        parsed,
        device=device,
        output=Path(output) if output is not None else None,
        reporter=reporter,
        resume=Path(resume) if resume is not None else None,
        executor=executor,
        workers=workers,
        scheduler=scheduler,
        cache=cache,
    )
    res = Results.from_run_result(result)
    if report:
        res.report()
    if base is not None:
        res.comparison = compare(
            base,
            res,
            tolerance=tolerance,
            alpha=alpha,
            allow_different_suites=allow_different_suites,
        )
        if markdown is not None:
            append_markdown(res.comparison.to_markdown(), markdown)
    return res


def _suite(suite: Any, overrides: dict[str, Any]) -> Suite:
    """A validated ``Suite`` from a path, a mapping or a ``Suite``, with ``overrides`` applied to
    its fields before validation (so every problem, an override's included, is reported)."""
    from .suite import Suite, load_suite, parse_suite

    if isinstance(suite, Suite):
        if not overrides:
            return suite
        data = dict(suite.raw) or {**suite.resolved(), "output": str(suite.output)}
        source = suite.source
    elif isinstance(suite, Mapping):
        data, source = dict(suite), "<dict>"
    elif isinstance(suite, (str, os.PathLike)):
        if not overrides:
            return load_suite(Path(suite))
        data, source = _suite_data(Path(suite)), str(suite)
    else:
        raise UserError(
            f"suite: expected a suite file path, a dict or a Suite, got {type(suite).__name__}"
        )
    return parse_suite({**data, **overrides}, source=source)


def _suite_data(path: Path) -> dict[str, Any]:
    """The YAML mapping of a suite file, to which overrides are applied.

    ``load_suite`` gives the file and YAML errors (with line numbers); a suite that parses but
    does not validate may be one the overrides repair, so its mapping is read again."""
    from .safe_yaml import read_yaml_file
    from .suite import load_suite

    try:
        return dict(load_suite(path).raw)
    except SuiteError:
        data = read_yaml_file(path)  # the same limits: a duplicate key is refused here too
        if not isinstance(data, dict):
            raise
        return data
