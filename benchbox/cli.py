"""The ``benchbox`` command: run, validate and list.

Exit codes: 0 ok; 1 a job failed; 2 a usage or input error (one line, no traceback).
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
out = Console()
err = Console(stderr=True)


class Kind(str, enum.Enum):
    datasets = "datasets"
    models = "models"
    methods = "methods"
    metrics = "metrics"


@app.command()
def run(
    suite: Annotated[Path, typer.Argument(help="Suite YAML file.")],
    device: Annotated[
        str | None, typer.Option(help="Override the suite's device: cpu, cuda, cuda:N, auto.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Override the suite's output folder (default results/).")
    ] = None,
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
    with progress:
        reporter = _ProgressReporter(progress)
        result = run_suite(s, device=device, output=output, reporter=reporter)
    _print_summary(result.summary)
    for info in result.manifest["models"]:
        acc = info.get("test_accuracy")
        if acc is not None:
            out.print(
                f"model {info['model']} on {info['dataset']}: test accuracy {acc:.3f}"
                + (f", AUROC {info['test_auroc']:.3f}" if "test_auroc" in info else "")
            )
    out.print(f"results: {result.path}")
    if result.failed:
        err.print("[red]some jobs failed; see the status and message columns of scores.parquet")
        raise typer.Exit(EXIT_FAILED)


class _ProgressReporter:
    def __init__(self, progress: Any):
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def start(self, total: int) -> None:
        self.progress.update(self.task, total=total)

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
    title = f"summary{' — ' + fixed if fixed else ''}: mean, 95% bootstrap CI, n"
    table = Table(title=title)
    for col in (*keys, "method", "metric", "mean", "95% CI", "n"):
        table.add_column(col, justify="right" if col in ("mean", "n") else "left", no_wrap=True)
    for r in summary.itertuples(index=False):
        metric = r.metric + (f".{r.variant}" if r.variant else "")
        metric += " ↑" if r.higher_is_better else " ↓"
        cells = [str(getattr(r, k)) for k in keys] + [r.method, metric]
        if r.status != "ok":
            table.add_row(*cells, r.status, str(r.message), "0")
        else:
            ci = f"{_fmt(r.ci_low)}–{_fmt(r.ci_high)}"
            table.add_row(*cells, _fmt(r.mean), ci, str(r.n))
    out.print(table)


@app.command()
def validate(suite: Annotated[Path, typer.Argument(help="Suite YAML file.")]) -> None:
    """Check a suite: every problem is reported with its YAML path; exit 2 if any."""
    from .planner import plan
    from .suite import load_suite

    s = load_suite(suite)
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
