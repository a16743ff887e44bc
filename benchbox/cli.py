"""The ``benchbox`` command: run, validate, list, report, compare and the caches.

Exit codes: 0 ok; 1 a job failed or a regression was found; 2 a usage or input error (one
line, no traceback).
Heavy imports (torch, captum) happen inside the commands, so ``benchbox --help`` stays fast.
"""

from __future__ import annotations

import enum
import fnmatch
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import EXIT_FAILED, EXIT_USAGE, UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["app", "main"]

app = typer.Typer(
    name="benchbox",
    help="Benchmark and sanity-check attribution methods on medical images.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# soft_wrap: a line with a path is never broken (it must paste back whole); tables still fit
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Kind(str, enum.Enum):
    datasets = "datasets"
    models = "models"
    methods = "methods"
    metrics = "metrics"


_TOLERANCE_HELP = (
    "Change a regression must exceed, in the metric's units: NUMBER for every metric (default "
    "0.02) or METRIC[.VARIANT]=NUMBER; repeatable."
)


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    device: Annotated[
        str | None, typer.Option(help="Override the suite's device: cpu, cuda, cuda:N, auto.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Override the suite's output folder (default results/).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Finish this killed run of the same suite: finished jobs are kept."),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="local (this process) or dask (jobs as Dask tasks; extra dask).")
    ] = "local",
    workers: Annotated[
        int | None, typer.Option(help="Dask: start a LocalCluster with N worker processes.")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask: join the scheduler at this address (tcp://…).")
    ] = None,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse cached attributions (default on).")
    ] = True,
    baseline: Annotated[
        Path | None,
        typer.Option(help="Compare with this run folder or summary.csv; exit 1 on a regression."),
    ] = None,
    tolerance: Annotated[list[str] | None, typer.Option(help=_TOLERANCE_HELP)] = None,
    alpha: Annotated[
        float, typer.Option(help="Significance level of --baseline, Holm-corrected.")
    ] = 0.05,
    markdown: Annotated[
        Path | None,
        typer.Option(help="--baseline: also append the summary here (e.g. $GITHUB_STEP_SUMMARY)."),
    ] = None,
    report: Annotated[
        bool,
        typer.Option("--report/--no-report", help="Write tables, figures and report.html."),
    ] = True,
    allow_different_suites: Annotated[
        bool,
        typer.Option("--allow-different-suites", help="--baseline may be a run of another suite."),
    ] = False,
) -> None:
    """Run a suite; write results/<suite>/<run_id>/ and print the summary."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .runner import run_suite
    from .suite import load_suite

    s = load_suite(suite)
    # The baseline and the tolerance are checked before any work, so a typo costs nothing.
    tol = _tolerance(tolerance)
    base = None
    if baseline is not None:
        from .compare import check_same_suite, load_side

        base = load_side(baseline, "baseline")
        check_same_suite(
            base, s.name, f"--baseline: {suite}", allow_different_suites=allow_different_suites
        )
    progress = Progress(
        TextColumn("[bold]{task.description:<48.48}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    reporter = _ProgressReporter(progress)
    try:
        with reporter:
            result = run_suite(
                s,
                device=device,
                output=output,
                reporter=reporter,
                resume=resume,
                executor=executor,
                workers=workers,
                scheduler=scheduler,
                cache=cache,
            )
    except OSError as exc:  # the results disk: full, read-only, a file in the way
        where = exc.filename or output or s.output
        raise UserError(
            f"{where}: cannot write results: {exc.strerror or exc}; free space or choose another "
            f"--output (finished jobs are kept in the run folder's parts/: --resume it)"
        ) from exc
    if result.note:
        out.print(result.note)
    _print_summary(result.summary)
    for info in result.manifest["models"]:
        acc = info.get("test_accuracy")
        if acc is not None:
            replica = f" (replica {info['replica']})" if info.get("replicas", 1) > 1 else ""
            out.print(
                f"model {info['model']}{replica} on {info['dataset']}: test accuracy {acc:.3f}"
                + (f", AUROC {info['test_auroc']:.3f}" if "test_auroc" in info else "")
            )
    out.print(f"results: {result.path}")
    if report:
        _report(result.path, None)
    regressed = False
    if base is not None:
        from .compare import compare as compare_runs

        comparison = compare_runs(
            base,
            result.path,
            tolerance=tol,
            alpha=alpha,
            allow_different_suites=allow_different_suites,
        )
        _print_comparison(comparison.to_markdown(), markdown)
        regressed = comparison.regressed
    if not result.computed:
        err.print(
            "[red]no value was computed: every row is skipped or an error; see the status and "
            "message columns of scores.parquet"
        )
    elif result.failed:
        err.print("[red]some jobs failed; see the status and message columns of scores.parquet")
    if result.failed or not result.computed or regressed:
        raise typer.Exit(EXIT_FAILED)


def _tolerance(values: list[str] | None) -> float | dict[str, float]:
    from .compare import DEFAULT_TOLERANCE, parse_tolerance

    return parse_tolerance(values) if values else DEFAULT_TOLERANCE


def _report(run_dir: Path, output: Path | None) -> None:
    from .report import write_report

    rep = write_report(run_dir, output)
    out.print(
        f"report: {rep.html} ({len(rep.tables)} table files, {len(rep.figures)} figure files)"
    )
    for note in rep.notes:
        out.print(f"  [dim]{escape(note)}[/dim]")


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of into the run folder.")
    ] = None,
) -> None:
    """Write tables/, figures/ and report.html for a finished run; reads only the stored files."""
    _report(run_dir, output)


@app.command("compare")
def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline run folder or its summary.csv.")],
    new: Annotated[Path, typer.Argument(help="The new run folder.")],
    tolerance: Annotated[list[str] | None, typer.Option(help=_TOLERANCE_HELP)] = None,
    alpha: Annotated[float, typer.Option(help="Significance level, Holm-corrected.")] = 0.05,
    markdown: Annotated[
        Path | None,
        typer.Option(help="Also write the summary here (e.g. $GITHUB_STEP_SUMMARY)."),
    ] = None,
    allow_different_suites: Annotated[
        bool,
        typer.Option(
            "--allow-different-suites",
            help="Compare runs of two suites on the rows they share (refused otherwise).",
        ),
    ] = False,
) -> None:
    """Compare two runs metric by metric; exit 1 when one regressed beyond tolerance, 2 when
    they are runs of different suites or share no row."""
    from .compare import compare as compare_runs

    comparison = compare_runs(
        baseline,
        new,
        tolerance=_tolerance(tolerance),
        alpha=alpha,
        allow_different_suites=allow_different_suites,
    )
    _print_comparison(comparison.to_markdown(), markdown)
    raise typer.Exit(comparison.exit_code)


def _print_comparison(text: str, markdown: Path | None) -> None:
    from .compare import append_markdown

    out.print(text, markup=False, highlight=False, soft_wrap=True)
    if markdown is not None:
        append_markdown(text, markdown, "--markdown")


cache_app = typer.Typer(help="The model and attribution caches ($BENCHBOX_CACHE).")
app.add_typer(cache_app, name="cache")


class CacheKind(str, enum.Enum):
    models = "models"
    attributions = "attributions"


@cache_app.command("ls")
def cache_ls() -> None:
    """Entries and size of each cache."""
    from .attribution_cache import cache_ls as listing

    table = Table(title="benchbox caches")
    for col in ("kind", "entries", "size", "path"):
        table.add_column(col, justify="right" if col in ("entries", "size") else "left")
    for r in listing().itertuples(index=False):
        table.add_row(r.kind, str(r.entries), _size(int(r.bytes)), r.path)
    out.print(table)


@cache_app.command("clear")
def cache_clear(
    kind: Annotated[
        CacheKind | None, typer.Argument(help="models or attributions (default: both).")
    ] = None,
) -> None:
    """Delete cached weights and/or attributions (they are recomputed when needed)."""
    from .attribution_cache import cache_clear as clear

    n, size = clear(kind.value if kind is not None else None)
    out.print(f"removed {n} file(s), {_size(size)}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class _ProgressReporter:
    """The runner's progress on a rich bar, shown from ``start`` on: a suite refused before any
    work (a bad path, a bad option) prints its one error line and no bar."""

    def __init__(self, progress: Any):
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def __enter__(self) -> _ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)
        self.progress.start()

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)


def _fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def _print_summary(summary: pd.DataFrame) -> None:
    """Rich table of the summary; dataset/model columns are folded into the title when constant."""
    keys = [k for k in ("dataset", "model") if summary[k].nunique() > 1]
    fixed = " / ".join(str(summary[k].iloc[0]) for k in ("dataset", "model") if k not in keys)
    replicas = int(summary["replicas"].max()) if len(summary) else 1
    spread = (
        ["replica sd (min–max)"] if replicas > 1 else []
    )  # the spread across training seeds, beside the CI over samples
    title = f"summary{' — ' + fixed if fixed else ''}: mean, 95% bootstrap CI, n"
    table = Table(title=title)
    for col in (*keys, "method", "metric", "mean", "95% CI", "n", *spread):
        table.add_column(col, justify="right" if col in ("mean", "n") else "left", no_wrap=True)
    for r in summary.itertuples(index=False):
        metric = r.metric + (f".{r.variant}" if r.variant else "")
        metric += " ↑" if r.higher_is_better else " ↓"
        cells = [str(getattr(r, k)) for k in keys] + [r.method, metric]
        if r.status != "ok":
            table.add_row(*cells, r.status, str(r.message), "0", *("" for _ in spread))
        else:
            ci = f"{_fmt(r.ci_low)}–{_fmt(r.ci_high)}"
            sd = f"{_fmt(r.replica_std)} ({_fmt(r.replica_min)}–{_fmt(r.replica_max)})"
            table.add_row(*cells, _fmt(r.mean), ci, str(r.n), *([sd] if spread else []))
    out.print(table)


@app.command()
def validate(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also build every dataset and read every file it lists (images, masks: "
            "corrupt, truncated, NaN), and check your models' modules and weights files.",
        ),
    ] = False,
) -> None:
    """Check a suite: every problem is reported with its YAML path; exit 2 if any."""
    from .suite import load_suite

    s = load_suite(suite)  # a file refused as YAML costs no torch import (a second)
    from .planner import plan

    if deep:
        from .runner import check_files

        jobs = check_files(s)
    else:
        jobs = plan(s)
    skipped = [j for j in jobs if j.skip_reason]
    out.print(
        f"{suite}: ok — {len(s.datasets)} dataset(s) × {len(s.models)} model(s) × "
        f"{len(s.methods)} method(s) = {len(jobs)} job(s), {len(s.metrics)} metric(s) each"
    )
    for j in skipped:
        out.print(f"  will skip {j.label}: {j.skip_reason}")
    for j in jobs:
        for spec, reason in j.skipped_metrics:
            out.print(f"  will skip {spec.name} in {j.label}: {reason}")


@app.command("ls")
def ls(
    kind: Annotated[Kind, typer.Argument(help="What to list.")],
    pattern: Annotated[str | None, typer.Argument(help="Glob or substring filter.")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="A Markdown table with parameters and defaults.")
    ] = False,
) -> None:
    """List registered datasets, models, methods or metrics with one-line descriptions."""
    from .registry import REGISTRIES

    reg = REGISTRIES[kind.value]
    names = reg.names()
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, glob)]
    if markdown:
        print(_markdown_table(reg, names))
        return
    table = Table(show_header=True, box=None)
    table.add_column(kind.value[:-1], style="bold")
    table.add_column("description")
    for name in names:
        table.add_row(name, reg.describe(name))
    out.print(table)
    if not names:
        err.print(f"no {kind.value} match {pattern!r}; `benchbox ls {kind.value}` lists all")


def _markdown_table(reg: Any, names: list[str]) -> str:
    """``| name | description | parameters (defaults) |`` rows; what the README's reference is."""
    from .params import parameter_defaults

    rows = [f"| {reg.kind} | what it is | parameters (defaults) |", "|---|---|---|"]
    for name in names:
        desc = reg.describe(name).replace("|", "\\|")
        try:
            defaults = parameter_defaults(reg.get(name))
        except UserError:
            defaults = {}
        params = (", ".join(f"`{k}={v}`" for k, v in defaults.items()) or "—").replace("|", "\\|")
        arrow = ""
        hib = getattr(reg.get(name), "higher_is_better", None) if reg.kind == "metric" else None
        if hib is not None:
            arrow = " ↑" if hib else " ↓"
        rows.append(f"| `{name}`{arrow} | {desc} | {params} |")
    return "\n".join(rows)


def main() -> None:
    # Like `python -m`, let a suite name `mypkg.module:Class` from the current directory.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        app()
    except UserError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
