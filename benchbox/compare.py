"""The CI gate: did a run's explanation quality regress against a baseline?

``compare(baseline, new)`` matches the rows of two runs by (dataset, model, method, metric,
variant) and, per row, takes the change of the mean in the metric's direction and a test of it:

- **paired** — both sides have per-sample scores (``scores.parquet``): the two-sided Wilcoxon
  signed-rank test (Wilcoxon 1945) of the differences ``d_i = new_i − baseline_i`` over the samples
  both sides scored (matched by ``sample_id``, non-finite values dropped): ``stats.signed_rank_p``,
  the same test as the report's pairwise comparisons. Zero differences are handled with Pratt's
  method (``stats.ZERO_METHOD``, which says why: sparse regressions, such as 10 of 64
  pointing-game hits turned into misses, stay visible). Where every difference is zero (a rerun:
  CPU runs are deterministic) p = 1.
- **unpaired** — one side has only ``summary.csv``: Welch's t-test from the two summaries' mean,
  standard deviation and n (Welch, Biometrika 34 (1947) 28–35;
  ``scipy.stats.ttest_ind_from_stats(equal_var=False)``); equal means with zero spread give p = 1,
  different means with zero spread p = 0, n < 2 on either side no test (NaN).

The p-values of all tested rows form one family, Holm-corrected (Holm 1979;
``benchbox.stats.holm``): the chance that the gate fails a run in which nothing changed is at most
``alpha``, however the rows depend on one another (they share samples and a model). A row
**regresses** when it got worse by more than its tolerance *and* its Holm-adjusted p is below
``alpha``; so a change within the noise of the samples (e.g. float sums that differ with the
thread count) never fails the gate, and neither does a significant but negligible change.

The tolerance is absolute, in the metric's own units: a float for every metric, or a mapping
``{"*": 0.02, "deletion": 0.01, "model_randomization.ssim": 0.05}`` (the most specific key wins:
``metric.variant``, then ``metric``, then ``"*"``, then ``DEFAULT_TOLERANCE``).

**Replicas** (a model with ``replicas: N``): each sample's value is first averaged over the
replicas that scored it, on each side, so the paired test sees one difference per sample (the
replicas are not independent samples). The table reports each side's spread across replicas
(``baseline_replica_std``, ``new_replica_std``: the standard deviation of the replicas' means);
a regression smaller than that spread is flagged in its note, since another training run (or
another CPU, whose float kernels train other weights) moves the mean that much by itself.

Two runs of different suites (different suite names) are refused (``UserError``, exit 2) unless
``allow_different_suites=True`` (``--allow-different-suites``), and so is a comparison in which no
row is on both sides: a gate that compared nothing must not pass.

Status changes count too: a row that had values and now errors, is skipped or has no finite value
is a regression. Rows found on one side only and rows whose parameters changed (dataset, model,
method or metric parameters, read from each side's ``manifest.json``) are reported, never tested:
a changed suite needs a new baseline.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_TOLERANCE",
    "REGRESSIONS",
    "Comparison",
    "RunTables",
    "check_same_suite",
    "compare",
    "load_side",
    "parse_tolerance",
]

DEFAULT_TOLERANCE = 0.02
KEY = ["dataset", "model", "method", "metric", "variant"]
# Verdicts that fail the gate.
REGRESSIONS = ("regressed", "failed", "now skipped", "no values")
# Order of the markdown table: regressions first, then what needs a look, then the good news.
_SEVERITY = {
    "failed": 0,
    "now skipped": 0,
    "no values": 0,
    "regressed": 0,
    "not comparable": 1,
    "only in baseline": 2,
    "only in new": 2,
    "worse (not significant)": 3,
    "worse (within tolerance)": 3,
    "still failing": 4,
    "status changed": 4,
    "same mean": 4,
    "better (within tolerance)": 5,
    "better (not significant)": 5,
    "improved": 5,
    "fixed": 5,
    "unchanged": 6,
}
_ICON = {v: "❌" for v in REGRESSIONS} | {
    "not comparable": "⚠️",
    "only in baseline": "⚠️",
    "only in new": "ℹ️",
    "still failing": "⚠️",
    "improved": "✅",
    "fixed": "✅",
}
_SECTIONS = {"dataset": "datasets", "model": "models", "method": "methods", "metric": "metrics"}
_COLUMNS = [
    *KEY,
    "higher_is_better",
    "baseline_mean",
    "new_mean",
    "delta",
    "change",
    "tolerance",
    "baseline_n",
    "new_n",
    "baseline_replicas",
    "new_replicas",
    "baseline_replica_std",
    "new_replica_std",
    "n_paired",
    "test",
    "p",
    "p_holm",
    "baseline_status",
    "new_status",
    "verdict",
    "regression",
    "note",
]


# -- loading ---------------------------------------------------------------------------------------
@dataclass
class RunTables:
    """What one side of a comparison offers: its summary, and its manifest and scores if any.

    ``benchbox run --baseline`` reads the baseline with ``load_side`` *before* running, so a wrong
    path fails at once, and passes the result to ``compare``.
    """

    label: str
    summary: pd.DataFrame
    manifest: dict[str, Any] | None
    scores: pd.DataFrame | None  # ok rows only: KEY + sample_id + value

    @property
    def suite(self) -> str | None:
        """The suite's name: from the manifest, else the summary's ``suite`` column."""
        if self.manifest is not None:
            name = self.manifest.get("suite") or (self.manifest.get("resolved_suite") or {}).get(
                "name"
            )
            if isinstance(name, str):
                return name
        if "suite" in self.summary.columns:
            names = set(self.summary["suite"].dropna().astype(str))
            if len(names) == 1:
                return names.pop()
        return None

    def params(self) -> dict[str, dict[str, Any]] | None:
        """``{"methods": {name: params}, ...}`` from the manifest's resolved suite."""
        if self.manifest is None or "resolved_suite" not in self.manifest:
            return None
        resolved = self.manifest["resolved_suite"]
        out: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS.values():
            out[section] = {}
            for item in resolved.get(section, []):
                out[section].update(item)
        return out


def load_side(source: Any, role: str = "baseline") -> RunTables:
    """Read one side of a comparison; ``UserError`` naming ``role`` if it cannot be read.

    ``source``: a run folder, a folder with only ``summary.csv`` (+ ``manifest.json``), a
    ``summary.csv`` file (its folder's ``manifest.json``/``scores.parquet`` are used when
    present), or anything with a ``.path`` to such a folder (``Results``, ``RunResult``)."""
    import pandas as pd

    from .stats import replica_means
    from .store import read_summary

    if isinstance(source, RunTables):
        return source
    path = Path(getattr(source, "path", source))
    hint = "give a run folder (results/<suite>/<run_id>/) or its summary.csv"
    if not path.exists():
        raise UserError(f"{path}: {role} not found; {hint}")
    if path.is_dir():
        folder, summary_file = path, path / "summary.csv"
        if not summary_file.exists():
            runs = sorted(p.parent for p in path.glob("*/summary.csv"))
            if runs:
                raise UserError(
                    f"{path}: {role} is a folder of {len(runs)} run(s), not one run; "
                    f"give one, e.g. {runs[-1]}"
                )
            raise UserError(f"{path}: {role} has no summary.csv; {hint}")
    elif path.suffix == ".csv":
        folder, summary_file = path.parent, path
    else:
        raise UserError(f"{path}: {role} is neither a run folder nor a summary.csv; {hint}")
    need = [*KEY, "mean", "std", "n", "higher_is_better", "status"]
    try:
        header = pd.read_csv(summary_file, nrows=0).columns
        missing = [c for c in need if c not in header]
        if missing:
            raise UserError(
                f"{summary_file}: {role} summary lacks columns {missing}; give a summary.csv "
                f"written by `benchbox run`"
            )
        summary = read_summary(summary_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"{summary_file}: cannot read the {role} summary: {exc}") from exc
    manifest = None
    if (folder / "manifest.json").exists():
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{folder / 'manifest.json'}: cannot read the {role} manifest: {exc}"
            ) from exc
    scores = None
    if (folder / "scores.parquet").exists():
        cols = [*KEY, "sample_id", "value", "status"]
        try:
            raw = pd.read_parquet(folder / "scores.parquet", columns=cols)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"{folder / 'scores.parquet'}: cannot read the {role} scores: {exc}"
            ) from exc
        # One value per sample: its mean over the model's replicas (a sample no replica scored
        # stays NaN and drops out of the pairing).
        scores = replica_means(raw[(raw["status"] == "ok") & raw["sample_id"].notna()], KEY)
    return RunTables(str(path), summary, manifest, scores)


def append_markdown(text: str, path: str | os.PathLike[str], option: str = "markdown") -> None:
    """Append a comparison's Markdown to ``path`` (e.g. ``$GITHUB_STEP_SUMMARY``); a file that
    cannot be written is a ``UserError`` naming it and ``option``."""
    try:
        with Path(path).open("a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as exc:
        raise UserError(
            f"{path}: {option}: cannot write: {exc.strerror or exc}; pass a writable file"
        ) from exc


def check_same_suite(
    base: RunTables,
    new_suite: str | None,
    new_label: str,
    *,
    allow_different_suites: bool,
    flag: str = "--allow-different-suites",
) -> None:
    """``UserError`` when the baseline is a run of another suite than ``new_suite`` (names
    known on both sides), unless ``allow_different_suites``. ``benchbox run --baseline`` calls
    it before running, so the mistake costs nothing. ``flag``: how the caller allows it."""
    old = base.suite
    if allow_different_suites or old is None or new_suite is None or old == new_suite:
        return
    raise UserError(
        f"{new_label}: is a run of suite {new_suite!r}, the baseline {base.label} of suite "
        f"{old!r}; compare runs of one suite, or pass {flag} to compare the rows they share"
    )


# -- tolerance -------------------------------------------------------------------------------------
def parse_tolerance(values: Sequence[str]) -> dict[str, float]:
    """``["0.05", "deletion=0.01"]`` (what ``--tolerance`` collects) → ``{"*": 0.05, ...}``."""
    out: dict[str, float] = {}
    for raw in values:
        key, sep, number = raw.rpartition("=")
        key = key.strip() if sep else "*"
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not key or not math.isfinite(value) or value < 0:
            raise UserError(
                f"--tolerance: expected NUMBER or METRIC=NUMBER with a number >= 0 "
                f"(e.g. 0.02 or deletion=0.01), got {raw!r}"
            )
        out[key] = value
    return out


def _resolve_tolerance(
    tolerance: float | Mapping[str, float], metrics: set[tuple[str, str]]
) -> dict[str, float]:
    """Check the tolerance against the metrics present; returns a mapping with ``"*"`` set."""
    table = dict(tolerance) if isinstance(tolerance, Mapping) else {"*": tolerance}
    known = {m for m, _ in metrics} | {f"{m}.{v}" for m, v in metrics if v}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"tolerance: {key}: expected a number >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise UserError(f"tolerance: {key}: expected a number >= 0, got {value!r}")
        if key != "*" and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"tolerance: no metric {key!r} in either run; {hint}"
                f"metrics: {', '.join(sorted(known))}"
            )
    table.setdefault("*", DEFAULT_TOLERANCE)
    return {k: float(v) for k, v in table.items()}


def _tolerance_for(table: Mapping[str, float], metric: str, variant: str) -> float:
    for key in (f"{metric}.{variant}" if variant else None, metric):
        if key is not None and key in table:
            return table[key]
    return table["*"]


# -- tests -----------------------------------------------------------------------------------------
def _paired_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the differences ``d`` ``[n]``: the report's test."""
    from .stats import signed_rank_p

    return signed_rank_p(d)


def _welch_p(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> float:
    """Two-sided Welch t-test p from two summaries (mean, sample std, n)."""
    from scipy import stats

    if n1 < 2 or n2 < 2 or not all(map(math.isfinite, (m1, s1, m2, s2))):
        return math.nan
    if s1 == 0 and s2 == 0:
        return 1.0 if m1 == m2 else 0.0
    res = stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False)
    return float(res.pvalue)


# -- the comparison --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """The rows of two runs side by side, with a verdict each; ``regressed`` is the gate.

    ``table`` columns: dataset, model, method, metric, variant, higher_is_better, baseline_mean,
    new_mean, delta (new − baseline), change (delta in the metric's direction: > 0 is better),
    tolerance, baseline_n, new_n, baseline_replicas, new_replicas, baseline_replica_std,
    new_replica_std (the spread across training replicas; NaN with one), n_paired (samples in the
    paired test; 0 when unpaired), test
    (``wilcoxon`` | ``welch`` | ''), p, p_holm, baseline_status, new_status, verdict, regression
    (bool), note. Rows are sorted by severity: regressions first, worst change first.
    """

    table: pd.DataFrame
    baseline: str
    new: str
    tolerance: dict[str, float]
    alpha: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["regression"]]

    @property
    def regressed(self) -> bool:
        """True when any row regressed: the CI job should fail (``exit_code`` 1)."""
        return bool(self.table["regression"].any())

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0

    def headline(self) -> str:
        n = int(self.table["regression"].sum())
        if n == 0:
            return "✅ no regression"
        return f"❌ {n} regression{'s' if n != 1 else ''}"

    def to_markdown(self, *, max_rows: int = 50) -> str:
        """A summary for a CI job page: the headline, what was compared, then the changed rows.

        Every regression is listed; other changed rows up to ``max_rows`` in all. Unchanged rows
        are counted, not listed.
        """
        t = self.table
        tol = ", ".join(
            f"{k}: {_num(v)}" if k != "*" else _num(v) for k, v in self.tolerance.items()
        )
        tests = sorted(set(t["test"]) - {""})
        how = " and ".join(
            {"wilcoxon": "paired Wilcoxon signed-rank", "welch": "Welch's t (summaries)"}[x]
            for x in tests
        )
        changed = t[t["verdict"] != "unchanged"]
        lines = [
            f"## {self.headline()}",
            "",
            f"Baseline `{self.baseline}` → new `{self.new}`: {len(t)} rows, {len(changed)} "
            f"changed. A row regresses when it is worse by more than the tolerance ({tol}) and "
            f"significant at α = {_num(self.alpha)}"
            + (f" ({how}, Holm-corrected over {int(t['p'].notna().sum())} rows)." if how else "."),
        ]
        n_rep = int(max(t["baseline_replicas"].max(), t["new_replicas"].max(), 1))
        if n_rep > 1:
            lines += [
                "",
                f"The model was trained {n_rep} times (replicas): each sample's value is its mean "
                "over the replicas, and ± is the standard deviation of the replicas' means, the "
                "spread across training seeds.",
            ]
        if self.notes:
            lines += ["", *(f"- {n}" for n in self.notes)]
        if len(changed) == 0:
            lines += ["", "No row changed."]
            return "\n".join(lines) + "\n"
        shown = changed[changed["regression"]]
        rest = changed[~changed["regression"]]
        shown = _concat([shown, rest.head(max(0, max_rows - len(shown)))])
        cols = [c for c in ("dataset", "model") if t[c].nunique() > 1]
        header = [*cols, "method", "metric", "baseline", "new", "Δ", "p (Holm)", "verdict"]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in shown.itertuples(index=False):
            metric = r.metric + (f".{r.variant}" if r.variant else "")
            metric += " ↑" if r.higher_is_better else " ↓"
            verdict = f"{_ICON.get(r.verdict, '')} {r.verdict}".strip()
            if r.note:
                verdict += f": {r.note}"
            cells = [
                *(str(getattr(r, c)) for c in cols),
                r.method,
                metric,
                _cell(r.baseline_mean, r.baseline_status, r.baseline_replica_std),
                _cell(r.new_mean, r.new_status, r.new_replica_std),
                _signed(r.delta),
                _p(r.p_holm),
                verdict,
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if len(changed) > len(shown):
            lines += ["", f"… and {len(changed) - len(shown)} more changed rows (see the table)."]
        n_same = len(t) - len(changed)
        if n_same:
            lines += ["", f"{n_same} row{'s' if n_same != 1 else ''} unchanged."]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_markdown()


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(frames)


def _num(v: float) -> str:
    return f"{v:g}"


def _cell(mean: float, status: Any, replica_std: float = math.nan) -> str:
    if isinstance(status, str) and status != "ok":
        return status
    if not isinstance(status, str):
        return "—"  # row absent on this side
    if not math.isfinite(mean):
        return "NaN"
    return f"{mean:.4f}" + (f" ± {replica_std:.4f}" if math.isfinite(replica_std) else "")


def _signed(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:+.4f}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def compare(
    baseline: Any,
    new: Any,
    *,
    tolerance: float | Mapping[str, float] = DEFAULT_TOLERANCE,
    alpha: float = 0.05,
    allow_different_suites: bool = False,
) -> Comparison:
    """Compare run ``new`` against ``baseline``; ``Comparison.regressed`` is the CI gate.

    Args:
        baseline: a run folder, a ``summary.csv`` (or a folder holding only ``summary.csv`` and
            ``manifest.json``, like a committed baseline), or a ``Results``/``RunResult``.
        new: the same forms; normally the run just made.
        tolerance: absolute change, in the metric's units, that a regression must exceed: one
            number, or ``{"*": default, "metric": t, "metric.variant": t}``.
        alpha: family-wise significance level of the Holm-corrected tests.
        allow_different_suites: compare runs of two suites (different names) on the rows they
            share; refused otherwise.

    Raises ``UserError`` for a missing or unreadable side, runs of different suites, runs that
    share no row, an unknown metric in ``tolerance``, or an ``alpha`` outside (0, 1). See the
    module docstring for the tests and the verdicts.
    """
    import pandas as pd

    from .stats import holm

    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha: expected a number in (0, 1), e.g. 0.05, got {alpha!r}")
    base = load_side(baseline, "baseline")
    cur = load_side(new, "new run")
    check_same_suite(base, cur.suite, cur.label, allow_different_suites=allow_different_suites)
    metrics = {
        (str(m), str(v))
        for s in (base.summary, cur.summary)
        for m, v in zip(s["metric"], s["variant"], strict=True)
    }
    tol = _resolve_tolerance(tolerance, metrics)
    notes = _notes(base, cur)
    bp, cp = base.params(), cur.params()

    b = base.summary.set_index(KEY)
    c = cur.summary.set_index(KEY)
    keys = list(dict.fromkeys([*b.index, *c.index]))  # baseline's order, then new-only rows
    # Shared at the metric's level: a metric with variants that now fails writes one row.
    if not {k[:4] for k in b.index} & {k[:4] for k in c.index}:
        raise UserError(
            f"{cur.label}: nothing to compare: none of its {len(c)} rows (dataset, model, "
            f"method, metric) is in the baseline {base.label} ({len(b)} rows); compare two "
            f"runs of one suite, or make a new baseline"
        )
    # (dataset, model, method, metric) -> statuses, to tie a variant-less error row of a metric
    # that used to have variants (a metric that now fails writes one row with variant '').
    groups_b = _statuses(base.summary)
    groups_c = _statuses(cur.summary)
    paired = _pairs(base.scores, cur.scores)

    rows: list[dict[str, Any]] = []
    for key in keys:
        in_b, in_c = key in b.index, key in c.index
        rb = b.loc[key] if in_b else None
        rc = c.loc[key] if in_c else None
        ref = cast("pd.Series", rc if rb is None else rb)  # a key comes from one side at least
        row: dict[str, Any] = dict(zip(KEY, key, strict=True))
        row |= {
            "higher_is_better": bool(ref["higher_is_better"]),
            "baseline_mean": float(rb["mean"]) if rb is not None else math.nan,
            "new_mean": float(rc["mean"]) if rc is not None else math.nan,
            "tolerance": _tolerance_for(tol, key[3], key[4]),
            "baseline_n": int(rb["n"]) if rb is not None else 0,
            "new_n": int(rc["n"]) if rc is not None else 0,
            "baseline_replicas": _replicas(rb),
            "new_replicas": _replicas(rc),
            "baseline_replica_std": _replica_std(rb),
            "new_replica_std": _replica_std(rc),
            "n_paired": 0,
            "test": "",
            "p": math.nan,
            "baseline_status": str(rb["status"]) if rb is not None else None,
            "new_status": str(rc["status"]) if rc is not None else None,
            "note": "",
        }
        row["delta"] = row["new_mean"] - row["baseline_mean"]
        row["change"] = row["delta"] if row["higher_is_better"] else -row["delta"]
        if rb is None or rc is None:
            _one_sided(row, key, groups_b, groups_c)
        elif (why := _param_change(bp, cp, key)) is not None:
            row["verdict"], row["note"] = "not comparable", why
        else:
            _status_or_test(row, rb, rc, paired.get(key))
        rows.append(row)

    table = pd.DataFrame(rows, columns=[c for c in _COLUMNS if c != "p_holm"])
    table["p_holm"] = holm(table["p"].to_numpy(dtype=np.float64))
    tested = table["verdict"].isna()
    table.loc[tested, "verdict"] = [
        _verdict(r.change, r.tolerance, r.p_holm, alpha)
        for r in table[tested].itertuples(index=False)
    ]
    table["regression"] = table["verdict"].isin(REGRESSIONS)
    spread = table[["baseline_replica_std", "new_replica_std"]].max(axis=1)
    small = table["regression"] & (table["change"].abs() <= spread)
    table.loc[small, "note"] = [
        f"within the spread across training replicas (sd {s:.3g})" for s in spread[small]
    ]
    table["severity"] = table["verdict"].map(_SEVERITY)
    # Worst first within a severity; a status regression (no change to measure) leads.
    table["_order"] = table["change"].fillna(-math.inf)
    table = table.sort_values(["severity", "_order"], kind="stable").reset_index(drop=True)
    table = table[_COLUMNS]
    return Comparison(table, base.label, cur.label, tol, float(alpha), tuple(notes))


def _replicas(row: pd.Series | None) -> int:
    """Replicas behind a summary row; 1 for a summary written before replicas existed."""
    if row is None:
        return 0
    value = row.get("replicas", 1)
    return int(value) if value is not None and math.isfinite(float(value)) else 1


def _replica_std(row: pd.Series | None) -> float:
    return math.nan if row is None else float(row.get("replica_std", math.nan))


def _statuses(summary: pd.DataFrame) -> dict[tuple[str, ...], set[str]]:
    out: dict[tuple[str, ...], set[str]] = {}
    for r in summary.itertuples(index=False):
        out.setdefault((r.dataset, r.model, r.method, r.metric), set()).add(str(r.status))
    return out


def _pairs(b: pd.DataFrame | None, c: pd.DataFrame | None) -> dict[tuple[Any, ...], np.ndarray]:
    """Per row key, the differences ``new − baseline`` ``[n]`` over the shared finite samples."""
    if b is None or c is None:
        return {}
    joined = b.merge(c, on=[*KEY, "sample_id"], suffixes=("_b", "_c"), how="inner")
    vb = joined["value_b"].to_numpy(dtype=np.float64)
    vc = joined["value_c"].to_numpy(dtype=np.float64)
    keep = np.isfinite(vb) & np.isfinite(vc)
    joined = joined.loc[keep, KEY].assign(d=vc[keep] - vb[keep])
    return {k: g["d"].to_numpy() for k, g in joined.groupby(KEY, sort=False)}


def _one_sided(
    row: dict[str, Any],
    key: tuple[Any, ...],
    groups_b: dict[tuple[str, ...], set[str]],
    groups_c: dict[tuple[str, ...], set[str]],
) -> None:
    group = tuple(key[:4])
    if row["new_status"] is None:
        row["verdict"] = "only in baseline"
        if "ok" in groups_b.get(group, set()) and "error" in groups_c.get(group, set()):
            row["note"] = "the metric now fails (see its error row)"
        return
    status = row["new_status"]
    if status in ("error", "skipped") and "ok" in groups_b.get(group, set()):
        # The metric had values under other variant names and now writes one failed row.
        row["verdict"] = "failed" if status == "error" else "now skipped"
        return
    row["verdict"] = "only in new"


def _param_change(
    bp: dict[str, dict[str, Any]] | None, cp: dict[str, dict[str, Any]] | None, key: Any
) -> str | None:
    if bp is None or cp is None:
        return None
    changed = []
    for column, section in _SECTIONS.items():
        name = key[KEY.index(column)]
        pb, pc = bp[section].get(name), cp[section].get(name)
        if pb is not None and pc is not None and pb != pc:
            diff = sorted(k for k in {*pb, *pc} if pb.get(k) != pc.get(k))
            changed.append(f"{column} parameters differ ({', '.join(diff)})")
    return "; ".join(changed) or None


def _status_or_test(
    row: dict[str, Any], rb: pd.Series, rc: pd.Series, d: np.ndarray | None
) -> None:
    """Set the verdict from the statuses, or run the test and leave the verdict for later."""
    sb, sc = row["baseline_status"], row["new_status"]
    had_values = sb == "ok" and row["baseline_n"] > 0
    if had_values and sc == "error":
        row["verdict"], row["note"] = "failed", _short(rc.get("message"))
        return
    if had_values and sc == "skipped":
        row["verdict"], row["note"] = "now skipped", _short(rc.get("message"))
        return
    if sb != "ok" or row["baseline_n"] == 0:
        if sc == "ok" and row["new_n"] > 0:
            row["verdict"] = "fixed"
        elif sb == sc:
            row["verdict"] = "still failing" if sb == "error" else "unchanged"
        else:
            row["verdict"] = "status changed"
        return
    if row["new_n"] == 0:
        row["verdict"], row["note"] = "no values", "every new value is NaN"
        return
    if d is not None and d.size:
        row["test"], row["n_paired"], row["p"] = "wilcoxon", int(d.size), _paired_p(d)
    else:
        row["test"] = "welch"
        row["p"] = _welch_p(
            row["baseline_mean"], float(rb["std"]), row["baseline_n"],
            row["new_mean"], float(rc["std"]), row["new_n"],
        )  # fmt: skip
    row["verdict"] = None  # decided after the Holm correction


def _verdict(change: float, tolerance: float, p_holm: float, alpha: float) -> str:
    if change == 0:
        return "unchanged" if not (p_holm < 1) else "same mean"
    significant = bool(p_holm < alpha)  # NaN (no test possible) is never significant
    if change < 0:
        if -change <= tolerance:
            return "worse (within tolerance)"
        return "regressed" if significant else "worse (not significant)"
    if change <= tolerance:
        return "better (within tolerance)"
    return "improved" if significant else "better (not significant)"


def _short(message: Any, limit: int = 120) -> str:
    if not isinstance(message, str):
        return ""
    one = " ".join(message.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _notes(base: RunTables, cur: RunTables) -> list[str]:
    """Differences between the two runs' setups worth a line above the table."""
    notes: list[str] = []
    for side, role in ((base, "baseline"), (cur, "new run")):
        if side.manifest is None:
            notes.append(f"the {role} has no manifest.json: parameters were not checked")
        if side.scores is None:
            notes.append(f"the {role} has no scores.parquet: tested with Welch's t on summaries")
    mb, mc = base.manifest, cur.manifest
    if mb is None or mc is None:
        return notes
    if mb.get("suite_hash") != mc.get("suite_hash"):
        rb, rc = mb.get("resolved_suite", {}), mc.get("resolved_suite", {})
        fields = sorted(k for k in {*rb, *rc} if rb.get(k) != rc.get(k))
        notes.append(
            "the suites differ"
            + (f" ({', '.join(fields)})" if fields else "")
            + ": rows with changed parameters are not comparable; commit a new baseline"
        )
    for what, get in _FACTS:
        vb, vc = get(mb), get(mc)
        if vb != vc:
            notes.append(f"{what}: {vb} → {vc}")
    return notes


def _version(name: str) -> Any:
    return lambda m: (m.get("versions") or {}).get(name)


_FACTS: tuple[tuple[str, Any], ...] = (
    ("benchbox", lambda m: m.get("benchbox_version")),
    ("torch", _version("torch")),
    ("device", lambda m: m.get("device")),
    ("torch threads", lambda m: m.get("torch_threads")),
)
