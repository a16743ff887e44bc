"""Tables, figures and a self-contained report.html from a finished run folder.

``write_report(run_dir)`` reads only the stored files (``scores.parquet``, ``curves.parquet``,
``summary.csv``, ``manifest.json`` and, when present, ``examples/*.npz``), so it runs anywhere,
without a GPU and without the models, and writes::

    <out>/tables/{means,ranks,wilcoxon,friedman,problems,undefined}.{tex,md}
    <out>/figures/<kind>__<dataset>__<model>[__<group or metric>].{png,svg}
    <out>/report.html

``out`` defaults to the run folder. Tables and the page are organised by the five elements of
interpretability for medical imaging (``groups``); statistics are in ``benchbox.stats``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .examples import N_EXAMPLES, load_examples, save_examples

__all__ = ["N_EXAMPLES", "Report", "load_examples", "save_examples", "write_report"]


@dataclass
class Report:
    """What ``write_report`` wrote."""

    run_dir: Path
    out: Path
    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # figures not drawn and why; fixed directions

    @property
    def paths(self) -> list[Path]:
        return [self.html, *self.tables, *self.figures]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write the report: {exc.strerror or exc}; free space or pass another "
            f"output folder"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_report(run_dir: Path, out: Path | None = None) -> Report:
    """Write every table and figure the run's metrics allow, and report.html, under ``out``.

    Raises ``UserError`` (one line: the path and the fix) when ``run_dir`` is not a finished
    run folder. Skipped and failed rows are listed in the tables and the page, never fatal.
    """
    from .figures import draw_figures
    from .html import render_html
    from .load import load_run
    from .tables import build_tables, compute_stats, to_latex, to_markdown

    run = load_run(Path(run_dir))
    out = Path(out) if out is not None else run.path
    try:
        (out / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{out}: cannot create the report folder: {exc.strerror or exc}; pass another output "
            f"folder"
        ) from exc
    st = compute_stats(run)
    tables = build_tables(run, st)
    written: list[Path] = []
    for kind in dict.fromkeys(t.kind for t in tables):
        mine = [t for t in tables if t.kind == kind]
        head = f"benchbox {run.suite} {run.run_id}: {kind}"
        tex = out / "tables" / f"{kind}.tex"
        _write(tex, f"% {head}; needs \\usepackage{{booktabs}}\n" + "\n".join(map(to_latex, mine)))
        md = out / "tables" / f"{kind}.md"
        _write(md, f"<!-- {head} -->\n\n" + "\n".join(map(to_markdown, mine)))
        written += [tex, md]
    figures, notes = draw_figures(run, st, out / "figures")
    notes = [*run.notes, *notes]
    page = out / "report.html"
    _write(page, render_html(run, tables, figures, notes))
    return Report(
        run_dir=run.path,
        out=out,
        html=page,
        tables=written,
        figures=[p for f in figures for p in (f.png, f.svg)],
        notes=notes,
    )
