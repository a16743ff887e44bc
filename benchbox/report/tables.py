"""Report tables: built once as ``Table`` objects, rendered to LaTeX (booktabs), Markdown and HTML.

Per (dataset, model) pair:

- ``means``: mean ± half-width of the 95% percentile bootstrap CI (from ``summary.csv``) per
  method × metric output, columns grouped by element of interpretability (``groups``), an arrow
  for the direction (↑ higher is better, ↓ lower), the best mean per column in bold;
- ``replicas`` (a model trained several times): per method × output, the standard deviation of
  the replicas' means and their range, the spread across training seeds that a CI over samples
  does not show;
- ``ranks``: mean rank over the samples per metric output (``stats.mean_ranks``; 1 = best) and
  the mean of those ranks across outputs;
- ``wilcoxon``: every pair of methods per output, Wilcoxon signed-rank p and Holm-adjusted p
  (``stats.pairwise_wilcoxon``);
- ``friedman``: Friedman χ², Iman–Davenport F and the Nemenyi critical difference per output.

Run-wide: ``problems`` (skipped and error rows) and ``undefined`` (NaN values and their reasons).
A metric with several outputs contributes one column per variant, labelled ``metric/variant``.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import stats
from .load import Output, RunData

__all__ = [
    "Cell",
    "Table",
    "build_tables",
    "fmt_ci",
    "fmt_num",
    "latex_escape",
    "split_spans",
    "to_html",
    "to_latex",
    "to_markdown",
]


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


@dataclass
class Table:
    """A rectangular table: ``stub`` label columns on the left, then value columns.

    ``spans``: optional header groups over the value columns, ``(title, width)`` left to right
    (widths sum to ``len(columns) − stub``); Markdown splits the table at them.
    """

    kind: str  # file stem: means, ranks, wilcoxon, friedman, problems, undefined
    title: str
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    stub: int = 1
    spans: list[tuple[str, int]] | None = None
    label: str = ""
    pair: tuple[str, str] | None = None
    section: str = ""  # group key the table belongs to in report.html ("" = the pair)
    notes: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [r[i].text for r in self.rows]


# -- number formatting ----------------------------------------------------------------------------
def _decimals(half: float) -> int:
    """Decimals that show two significant digits of the CI half-width (3 when it is 0/NaN)."""
    if not np.isfinite(half) or half <= 0:
        return 3
    return int(min(6, max(2, 1 - math.floor(math.log10(half)))))


def fmt_num(v: float, decimals: int = 3) -> str:
    if v is None or not np.isfinite(v):
        return "—" if v is None or np.isnan(v) else ("∞" if v > 0 else "−∞")
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10.0 ** (-decimals)):
        return f"{v:.2e}"
    return f"{v:.{decimals}f}"


def fmt_ci(mean: float, low: float, high: float) -> str:
    """``mean ± (high − low)/2``: the half-width of the 95% CI, to two significant digits."""
    if not np.isfinite(mean):
        return "—"
    half = (high - low) / 2.0 if np.isfinite(low) and np.isfinite(high) else float("nan")
    d = _decimals(half)
    return fmt_num(mean, d) if not np.isfinite(half) else f"{fmt_num(mean, d)} ± {half:.{d}f}"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "—"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


# -- renderers ------------------------------------------------------------------------------------
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "—": "---",
    "−": "$-$",
    "χ²": r"$\chi^2$",
    "Δ": r"$\Delta$",
    "ε": r"$\varepsilon$",
    "∞": r"$\infty$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in [*_LATEX_UNICODE, *_LATEX_SPECIALS]))


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters and turn the tables' symbols into math."""
    return _LATEX_RE.sub(lambda m: _LATEX_UNICODE.get(m[0]) or _LATEX_SPECIALS[m[0]], text)


def to_latex(t: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    ncol = len(t.columns)
    align = "l" * t.stub + "r" * (ncol - t.stub)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(t.caption)}}}",
    ]
    if t.label:
        lines.append(rf"\label{{{t.label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    if t.spans:
        cells, rules, start = [""] * t.stub, [], t.stub + 1
        for title, width in t.spans:
            cells.append(rf"\multicolumn{{{width}}}{{c}}{{{latex_escape(title)}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines.append(" & ".join(cells) + r" \\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(c) for c in t.columns) + r" \\")
    lines.append(r"\midrule")
    for row in t.rows:
        cells = [
            rf"\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text) for c in row
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _md_cell(text: str, bold: bool = False) -> str:
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return f"**{text}**" if bold and text else text


def _md_table(columns: list[str], rows: list[list[Cell]], stub: int) -> list[str]:
    seps = ["---"] * stub + ["---:"] * (len(columns) - stub)
    out = ["| " + " | ".join(_md_cell(c) for c in columns) + " |", "| " + " | ".join(seps) + " |"]
    out += ["| " + " | ".join(_md_cell(c.text, c.bold) for c in r) + " |" for r in rows]
    return out


def split_spans(t: Table) -> list[tuple[str, Table]]:
    """One table per column group (stub columns repeated); ``[("", t)]`` without groups."""
    if not t.spans:
        return [("", t)]
    parts, start = [], t.stub
    for title, width in t.spans:
        cols = list(range(t.stub)) + list(range(start, start + width))
        sub = Table(
            kind=t.kind,
            title=f"{t.title} — {title}",
            caption=t.caption,
            columns=[t.columns[i] for i in cols],
            rows=[[r[i] for i in cols] for r in t.rows],
            stub=t.stub,
            label=t.label,
            pair=t.pair,
        )
        parts.append((title, sub))
        start += width
    return parts


def to_markdown(t: Table) -> str:
    """GitHub-flavoured Markdown; a table with column groups becomes one table per group."""
    lines = [f"### {_md_cell(t.title)}", "", _md_cell(t.caption), ""]
    for title, sub in split_spans(t):
        if title:
            lines += [f"**{_md_cell(title)}**", ""]
        lines += [*_md_table(sub.columns, sub.rows, sub.stub), ""]
    lines += [_md_cell(n) for n in t.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_html(t: Table) -> str:
    """An HTML ``<table>``; every string is escaped (names come from suites and data)."""
    e = html.escape
    caption = f"<caption><strong>{e(t.title)}.</strong> {e(t.caption)}</caption>"
    parts = ['<table class="bb">', caption, "<thead>"]
    if t.spans:
        parts.append("<tr>" + (f'<th colspan="{t.stub}"></th>' if t.stub else ""))
        parts += [f'<th colspan="{w}" class="span">{e(title)}</th>' for title, w in t.spans]
        parts.append("</tr>")
    parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
    parts += ["</thead>", "<tbody>"]
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            tag = "th" if i < t.stub else "td"
            text = f"<strong>{e(c.text)}</strong>" if c.bold else e(c.text)
            cells.append(f"<{tag}>{text}</{tag}>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts += ["</tbody>", "</table>"]
    if t.notes:
        parts += [f'<p class="note">{e(n)}</p>' for n in t.notes]
    return "\n".join(parts)


# -- builders -------------------------------------------------------------------------------------
def _best(values: list[float], higher_is_better: bool) -> set[int]:
    """Indices of the best finite value(s) (ties all best)."""
    finite = [(i, v) for i, v in enumerate(values) if np.isfinite(v)]
    if not finite:
        return set()
    target = (max if higher_is_better else min)(v for _, v in finite)
    return {i for i, v in finite if np.isclose(v, target, rtol=1e-12, atol=0.0)}


def _spans(outs: list[Output]) -> list[tuple[str, int]]:
    spans: list[tuple[str, int]] = []
    for o in outs:
        if spans and spans[-1][0] == o.group.title:
            spans[-1] = (o.group.title, spans[-1][1] + 1)
        else:
            spans.append((o.group.title, 1))
    return spans


def _head(o: Output) -> str:
    return f"{o.label} {o.arrow}" if o.arrow else f"{o.label} (diag.)"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def means_table(run: RunData, pair: tuple[str, str]) -> Table | None:
    outs = run.outputs(pair)
    methods = run.methods(pair)
    if not outs or not methods:
        return None
    grid: list[list[Cell]] = [[Cell(m)] for m in methods]
    for o in outs:
        rows = [run.summary_row(pair, m, o) for m in methods]
        means = [float(r["mean"]) if r is not None else float("nan") for r in rows]
        best = set() if o.diagnostic else _best(means, o.higher_is_better)
        for i, r in enumerate(rows):
            text = "—" if r is None else fmt_ci(r["mean"], r["ci_low"], r["ci_high"])
            grid[i].append(Cell(text, i in best))
    d, m = pair
    n = _replicas(run, pair)
    pooled = (
        f" Each sample's value is its mean over the model's {n} replicas; their spread is in "
        f"the replicas table."
        if n > 1
        else ""
    )
    return Table(
        kind="means",
        title=f"Mean ± 95% CI — {d} / {m}",
        caption=(
            f"{run.suite}: {d} / {m}. Mean over the test samples ± half the width of the 95% "
            f"percentile bootstrap CI (summary.csv). ↑ higher is better, ↓ lower is better; best "
            f"per column in bold; diag. = diagnostic output, not ranked.{pooled}"
        ),
        columns=["method", *(_head(o) for o in outs)],
        rows=grid,
        spans=_spans(outs),
        label=f"tab:means-{_slug(d)}-{_slug(m)}",
        pair=pair,
    )


def _replicas(run: RunData, pair: tuple[str, str]) -> int:
    s = run.summary
    if "replicas" not in s.columns:
        return 1
    sel = s[(s["dataset"] == pair[0]) & (s["model"] == pair[1])]["replicas"]
    return int(sel.max()) if sel.notna().any() else 1


def replicas_table(run: RunData, pair: tuple[str, str]) -> Table | None:
    n = _replicas(run, pair)
    outs = run.outputs(pair)
    methods = run.methods(pair)
    if n < 2 or not outs or not methods:
        return None
    grid: list[list[Cell]] = [[Cell(m)] for m in methods]
    for o in outs:
        for i, m in enumerate(methods):
            r = run.summary_row(pair, m, o)
            if r is None or not np.isfinite(r["replica_std"]):
                grid[i].append(Cell("—"))
                continue
            d = _decimals(float(r["replica_std"]))
            lo, hi = fmt_num(r["replica_min"], d), fmt_num(r["replica_max"], d)
            grid[i].append(Cell(f"{r['replica_std']:.{d}f} ({lo}–{hi})"))
    d_name, m_name = pair
    return Table(
        kind="replicas",
        title=f"Spread across {n} training replicas — {d_name} / {m_name}",
        caption=(
            f"{run.suite}: {d_name} / {m_name}, trained {n} times (replicas: independent "
            f"initialisation and shuffling). Standard deviation of the replicas' means, and the "
            f"lowest–highest replica mean. A difference between methods smaller than this "
            f"spread may not survive another training run, or another CPU."
        ),
        columns=["method", *(_head(o) for o in outs)],
        rows=grid,
        spans=_spans(outs),
        label=f"tab:replicas-{_slug(d_name)}-{_slug(m_name)}",
        pair=pair,
    )


def ranks_table(run: RunData, pair: tuple[str, str], ranks: pd.DataFrame) -> Table | None:
    outs = [o for o in run.outputs(pair) if not o.diagnostic]
    methods = run.methods(pair)
    d, m = pair
    r = ranks[(ranks["dataset"] == d) & (ranks["model"] == m)]
    outs = [o for o in outs if ((r["metric"] == o.metric) & (r["variant"] == o.variant)).any()]
    if not outs:
        return None
    values = np.full((len(methods), len(outs)), np.nan)
    blocks = []
    for j, o in enumerate(outs):
        sel = r[(r["metric"] == o.metric) & (r["variant"] == o.variant)]
        blocks.append(int(sel["n"].iloc[0]))
        by_method = dict(zip(sel["method"], sel["mean_rank"], strict=True))
        for i, meth in enumerate(methods):
            values[i, j] = by_method.get(meth, np.nan)
    with np.errstate(invalid="ignore"):
        overall = np.array(
            [np.nanmean(row) if np.isfinite(row).any() else np.nan for row in values]
        )
    grid: list[list[Cell]] = [[Cell(meth)] for meth in methods]
    for j in range(len(outs)):
        best = _best(list(values[:, j]), higher_is_better=False)
        for i in range(len(methods)):
            grid[i].append(Cell(fmt_num(values[i, j], 2), i in best))
    best = _best(list(overall), higher_is_better=False)
    for i in range(len(methods)):
        grid[i].append(Cell(fmt_num(overall[i], 2), i in best))
    return Table(
        kind="ranks",
        title=f"Mean ranks — {d} / {m}",
        caption=(
            f"{run.suite}: {d} / {m}. Mean rank over the samples where every method has a value "
            f"(1 = best in the metric's direction, ties averaged; blocks per column: "
            f"{', '.join(str(b) for b in blocks)}); last column: the mean over the metric columns."
        ),
        columns=["method", *(_head(o) for o in outs), "mean rank"],
        rows=grid,
        spans=[*_spans(outs), ("All", 1)],
        label=f"tab:ranks-{_slug(d)}-{_slug(m)}",
        pair=pair,
    )


def wilcoxon_table(run: RunData, pair: tuple[str, str], tests: pd.DataFrame) -> Table | None:
    d, m = pair
    t = tests[(tests["dataset"] == d) & (tests["model"] == m)]
    if t.empty:
        return None
    outs = {(o.metric, o.variant): o for o in run.outputs(pair)}
    order = {k: i for i, k in enumerate(outs)}
    keys = zip(t["metric"], t["variant"], strict=True)
    t = t.assign(_o=[order.get(k, 1 << 30) for k in keys])
    rows = []
    for _, r in t.sort_values("_o", kind="stable").iterrows():
        o = outs.get((r["metric"], r["variant"]))
        head = _head(o) if o else str(r["metric"])
        rows.append(
            [
                Cell(head),
                Cell(str(r["method_a"])),
                Cell(str(r["method_b"])),
                Cell(str(int(r["n"]))),
                Cell(fmt_num(float(r["mean_diff"]), 3)),
                Cell(fmt_num(float(r["statistic"]), 1)),
                Cell(fmt_p(float(r["p"]))),
                Cell(fmt_p(float(r["p_holm"])), bool(r["p_holm"] < 0.05)),
                Cell(str(r["better"]) or "—"),
            ]
        )
    return Table(
        kind="wilcoxon",
        title=f"Paired Wilcoxon signed-rank tests — {d} / {m}",
        caption=(
            f"{run.suite}: {d} / {m}. Two-sided Wilcoxon signed-rank test of A − B on the "
            f"samples where both have finite values (n; zero differences dropped); p Holm-"
            f"adjusted over the method pairs of each metric; bold: p_Holm < 0.05; better: the "
            f"method ahead in the metric's direction where significant."
        ),
        columns=["metric", "A", "B", "n", "Δ mean (A − B)", "W", "p", "p Holm", "better"],
        rows=rows,
        stub=3,
        label=f"tab:wilcoxon-{_slug(d)}-{_slug(m)}",
        pair=pair,
    )


def friedman_table(run: RunData, pair: tuple[str, str], tests: pd.DataFrame) -> Table | None:
    d, m = pair
    t = tests[(tests["dataset"] == d) & (tests["model"] == m)]
    if t.empty:
        return None
    outs = {(o.metric, o.variant): o for o in run.outputs(pair)}
    rows = []
    for key, o in outs.items():
        sel = t[(t["metric"] == key[0]) & (t["variant"] == key[1])]
        if sel.empty:
            continue
        r = sel.iloc[0]
        rows.append(
            [
                Cell(_head(o)),
                Cell(str(int(r["k"]))),
                Cell(str(int(r["n"]))),
                Cell(fmt_num(float(r["chi2"]), 2)),
                Cell(fmt_p(float(r["p"])), bool(r["p"] < 0.05)),
                Cell(fmt_num(float(r["ff"]), 2)),
                Cell(fmt_p(float(r["p_f"])), bool(r["p_f"] < 0.05)),
                Cell(fmt_num(float(r["cd"]), 3)),
            ]
        )
    alpha = float(t["alpha"].iloc[0])
    return Table(
        kind="friedman",
        title=f"Friedman tests — {d} / {m}",
        caption=(
            f"{run.suite}: {d} / {m}. Friedman χ² over the k methods with the samples as blocks "
            f"(N complete blocks, tie-corrected), Iman–Davenport F, and the Nemenyi critical "
            f"difference CD of mean ranks at α = {alpha:g} (Demšar 2006); bold: p < 0.05."
        ),
        columns=["metric", "k", "N", "χ²", "p", "F", "p (F)", "CD"],
        rows=rows,
        label=f"tab:friedman-{_slug(d)}-{_slug(m)}",
        pair=pair,
    )


def problems_table(run: RunData) -> Table | None:
    p = run.problems()
    if p.empty:
        return None
    cols = ["dataset", "model", "method", "metric", "status", "message"]
    return Table(
        kind="problems",
        title="Skipped and failed jobs",
        caption=f"{run.suite}: rows with status skipped or error (no values), and why.",
        columns=cols,
        rows=[[Cell(str(r[c])) for c in cols] for _, r in p.iterrows()],
        stub=len(cols),
        label="tab:problems",
    )


def undefined_table(run: RunData) -> Table | None:
    u = run.nan_reasons()
    if u.empty:
        return None
    cols = ["dataset", "model", "method", "metric", "variant", "message", "count"]
    return Table(
        kind="undefined",
        title="Undefined values",
        caption=f"{run.suite}: samples whose value is NaN (left out of means and tests), by reason",
        columns=cols,
        rows=[[Cell(str(r[c])) for c in cols] for _, r in u.iterrows()],
        stub=len(cols) - 1,
        label="tab:undefined",
    )


@dataclass
class Stats:
    """The per-sample statistics of a run, computed once for tables and figures."""

    ranks: pd.DataFrame
    wilcoxon: pd.DataFrame
    friedman: pd.DataFrame


def compute_stats(run: RunData) -> Stats:
    skip = run.diagnostics()
    scores = run.per_sample()
    return Stats(
        ranks=stats.mean_ranks(scores, skip=skip),
        wilcoxon=stats.pairwise_wilcoxon(scores, skip=skip),
        friedman=stats.friedman_tests(scores, skip=skip),
    )


def build_tables(run: RunData, st: Stats) -> list[Table]:
    """Every table the run allows: per pair means, replicas, ranks, wilcoxon, friedman; then
    problems."""
    tables: list[Table | None] = []
    for pair in run.pairs():
        tables += [
            means_table(run, pair),
            replicas_table(run, pair),
            ranks_table(run, pair, st.ranks),
            wilcoxon_table(run, pair, st.wilcoxon),
            friedman_table(run, pair, st.friedman),
        ]
    tables += [problems_table(run), undefined_table(run)]
    return [t for t in tables if t is not None]
