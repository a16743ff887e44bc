"""``report.html``: one self-contained page (inline CSS, figures as base64 PNG, no script, no
external URL) that opens from disk.

Every string that comes from the run (suite, dataset, model, method and metric names, messages,
manifest values, file names) goes through ``html.escape``; the only markup is this module's.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from typing import Any

from .figures import Figure
from .groups import GROUPS
from .load import RunData
from .tables import Table, split_spans, to_html

__all__ = ["render_html"]

e = html.escape

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1250px;padding:1.2em 2em;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.6em;color:#234}p.q{color:#555;margin-top:-.4em;font-style:italic}
table.bb{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
table.bb caption{caption-side:bottom;text-align:left;color:#555;font-size:.9em;padding-top:.4em;
max-width:1100px}
table.bb th,table.bb td{padding:.25em .7em;border-bottom:1px solid #e4e4e4;text-align:right;
white-space:nowrap}
table.bb thead th{border-bottom:1.5px solid #333;text-align:center}
table.bb th.span{border-bottom:1px solid #999}
table.bb tbody th{text-align:left;font-weight:normal}
table.bb tbody tr:last-child td,table.bb tbody tr:last-child th{border-bottom:1.5px solid #333}
table.kv td,table.kv th{text-align:left;white-space:normal}
figure{margin:1em 0 1.6em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;max-width:1100px}
nav ul{columns:2;font-size:.92em}details{margin:.8em 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em;max-height:30em}
.note{color:#8a4b00}.muted{color:#777}
"""


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{e(f.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><strong>{e(f.title)}.</strong> {e(f.caption)} "
        f'<span class="muted">({e(f.png.name)}, {e(f.svg.name)})</span></figcaption></figure>'
    )


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{e(str(k))}</th><td>{e(_text(v))}</td></tr>" for k, v in rows)
    return f'<table class="bb kv"><tbody>{body}</tbody></table>'


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True, default=str)
    return "—" if v is None else str(v)


def _records(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{e(_text(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f'<table class="bb kv"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _manifest(run: RunData) -> str:
    m = run.manifest
    git = m.get("git") or {}
    facts = [
        ("suite", m.get("suite")),
        ("suite file", m.get("suite_file")),
        ("suite version", (m.get("resolved_suite") or {}).get("version")),
        ("suite hash", m.get("suite_hash")),
        ("run id", m.get("run_id")),
        ("started (UTC)", m.get("started_at")),
        ("wall time (s)", m.get("wall_time_s")),
        ("seed", m.get("seed")),
        ("device", f"{m.get('device')} ({m.get('device_name')})"),
        ("torch threads", m.get("torch_threads")),
        ("benchbox", m.get("benchbox_version")),
        ("git", f"{git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''}"),
        ("python", m.get("python")),
        ("platform", m.get("platform")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items())),
    ]
    models = m.get("models") or []
    model_cols = ["dataset", "model"] + [
        k
        for k in ("test_accuracy", "test_auroc", "val_accuracy", "train_seconds", "from_cache")
        if any(k in x for x in models)
    ]
    model_cols += sorted(
        {k for x in models for k in x if k.endswith("_accuracy") and k not in model_cols}
    )
    parts = [_kv(facts)]
    if models:
        parts += ["<h3>Models</h3>", _records(models, model_cols)]
        params = [{"dataset": x.get("dataset"), "model": x.get("model"),
                   "parameters": x.get("model_params")} for x in models]  # fmt: skip
        parts.append(_records(params, ["dataset", "model", "parameters"]))
    jobs = m.get("jobs") or []
    if jobs:
        parts += [
            "<h3>Jobs</h3>",
            _records(jobs, ["index", "dataset", "model", "method", "status", "wall_time_s"]),
        ]
    suite = m.get("resolved_suite")
    if suite is not None:
        parts += [
            "<details><summary>Resolved suite</summary>",
            f"<pre>{e(json.dumps(suite, indent=2, sort_keys=True, default=str))}</pre>",
            "</details>",
        ]
    return "\n".join(parts)


def render_html(run: RunData, tables: list[Table], figures: list[Figure], notes: list[str]) -> str:
    """The page: run facts, then per (dataset, model) the groups' tables and figures, the ranks
    and tests, the examples; then skipped/error rows, undefined values and the manifest."""
    title = f"benchbox report: {run.suite} — {run.run_id}"
    pairs = run.pairs()
    body = [f"<h1>{e(title)}</h1>"]
    n_models = {(x.get("dataset"), x.get("model")): x for x in run.manifest.get("models") or []}
    nav = ['<nav><ul><li><a href="#run">Run</a></li>']
    for i, (d, m) in enumerate(pairs):
        nav.append(f'<li><a href="#pair-{i}">{e(d)} / {e(m)}</a></li>')
    nav += [
        '<li><a href="#problems">Skipped, failed and undefined</a></li>',
        '<li><a href="#manifest">Manifest</a></li></ul></nav>',
    ]
    body += nav
    mf = run.manifest
    body += [
        '<section id="run"><h2>Run</h2>',
        _kv(
            [
                ("suite", run.suite),
                ("run id", run.run_id),
                ("device", f"{mf.get('device')} ({mf.get('device_name')})"),
                ("seed", mf.get("seed")),
                ("wall time (s)", mf.get("wall_time_s")),
                ("benchbox", mf.get("benchbox_version")),
            ]
        ),
        "</section>",
    ]
    for i, pair in enumerate(pairs):
        d, m = pair
        body.append(f'<section id="pair-{i}"><h2>{e(d)} / {e(m)}</h2>')
        info = n_models.get(pair)
        if info:
            acc = [(k, v) for k, v in info.items() if k.endswith(("_accuracy", "_auroc"))]
            body.append(_kv(acc))
        mine = [t for t in tables if t.pair == pair]
        figs = [f for f in figures if f.pair == pair]
        means = next((t for t in mine if t.kind == "means"), None)
        slices = dict(split_spans(means)) if means is not None else {}
        for g in GROUPS:
            group_figs = [f for f in figs if f.section == g.key]
            if g.title not in slices and not group_figs:
                continue
            body += [f"<h3>{e(g.title)}</h3>", f'<p class="q">{e(g.question)}</p>']
            if g.title in slices:
                body.append(to_html(slices[g.title]))
            body += [_figure(f) for f in group_figs]
        body.append("<h3>Ranks and tests</h3>")
        for kind in ("ranks", "friedman"):
            body += [to_html(t) for t in mine if t.kind == kind]
        body += [_figure(f) for f in figs if f.kind in ("cd", "agreement")]
        for t in mine:
            if t.kind == "wilcoxon":
                body += [
                    f"<details><summary>{e(t.title)} ({len(t.rows)} pairs)</summary>",
                    to_html(t),
                    "</details>",
                ]
        ex = [f for f in figs if f.kind == "examples"]
        if ex:
            body += ["<h3>Examples</h3>", *(_figure(f) for f in ex)]
        body.append("</section>")
    body.append('<section id="problems"><h2>Skipped, failed and undefined</h2>')
    rest = [t for t in tables if t.pair is None]
    body += [to_html(t) for t in rest]
    if not any(t.kind == "problems" for t in rest):
        body.append("<p>No skipped or failed jobs.</p>")
    if notes:
        body.append("<h3>Notes</h3><ul>")
        body += [f"<li>{e(n)}</li>" for n in notes]
        body.append("</ul>")
    body += ["</section>", '<section id="manifest"><h2>Manifest</h2>', _manifest(run), "</section>"]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
