"""Read a finished run folder: the stored files only, never in-memory state of a run.

``RunData`` holds ``scores.parquet``, ``curves.parquet``, ``summary.csv`` and ``manifest.json`` and
answers what the tables and figures ask: the (dataset, model) pairs, their methods in suite order,
and their metric outputs (``Output``: metric, variant, direction, group, diagnostic or not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..outputs import output_direction
from ..stats import replica_means
from ..store import read_summary
from .groups import GROUPS, Group, group_of, is_control

__all__ = ["Output", "RunData", "load_run"]

_REQUIRED = ("scores.parquet", "summary.csv", "manifest.json")


@dataclass(frozen=True)
class Output:
    """One column of the tables: a metric, or one variant of a multi-output metric."""

    metric: str
    variant: str
    higher_is_better: bool
    group: Group
    diagnostic: bool  # a reference level or diagnostic: shown, never ranked or tested

    @property
    def label(self) -> str:
        return f"{self.metric}/{self.variant}" if self.variant else self.metric

    @property
    def arrow(self) -> str:
        if self.diagnostic:
            return ""
        return "↑" if self.higher_is_better else "↓"


@dataclass
class RunData:
    path: Path
    scores: pd.DataFrame
    curves: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what the report should say about the files

    @property
    def suite(self) -> str:
        return str(self.manifest.get("suite") or _first(self.summary, "suite") or "")

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, model) pairs in the order they ran."""
        keys = self.summary[["dataset", "model"]].drop_duplicates()
        return [(str(d), str(m)) for d, m in keys.itertuples(index=False)]

    def methods(self, pair: tuple[str, str]) -> list[str]:
        """Methods of a pair in suite order (the summary keeps the jobs' order)."""
        s = self._pair_summary(pair)
        return [str(m) for m in dict.fromkeys(s["method"])]

    def outputs(self, pair: tuple[str, str]) -> list[Output]:
        """Metric outputs with at least one value for the pair, by group then suite order."""
        s = self._pair_summary(pair)
        s = s[(s["status"] == "ok") & (s["n"] > 0)]
        keys = list(dict.fromkeys(zip(s["metric"], s["variant"], strict=True)))
        diag = self._diagnostic(keys)
        hib = {
            (m, v): bool(h)
            for m, v, h in zip(s["metric"], s["variant"], s["higher_is_better"], strict=True)
        }
        outs = [
            Output(str(m), str(v), hib[(m, v)], group_of(str(m)), (m, v) in diag) for m, v in keys
        ]
        order = {g.key: i for i, g in enumerate(GROUPS)}
        return sorted(outs, key=lambda o: order[o.group.key])  # stable: suite order within

    def diagnostics(self) -> set[tuple[str, str]]:
        keys = set(zip(self.summary["metric"], self.summary["variant"], strict=True))
        return self._diagnostic(sorted(keys))

    def _diagnostic(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """The outputs the manifest's ``outputs`` marks as diagnostics or reference levels:
        shown, never ranked or tested (``benchbox.outputs``)."""
        declared = self.manifest.get("outputs")
        if not isinstance(declared, dict):
            return set()
        return {
            (m, v)
            for m, v in keys
            if isinstance(declared.get(m), dict) and output_direction(declared[m], v) is None
        }

    def per_sample(self) -> pd.DataFrame:
        """The ok rows with one value per sample and output: with replicas, the mean over the
        replicas (``stats.replica_means``); what the rank and paired tests take as blocks."""
        s = self.scores
        if "replica" not in s.columns or s["replica"].nunique() <= 1:
            return s
        ok = s[(s["status"] == "ok") & s["sample_id"].notna()]
        by = ["dataset", "model", "method", "metric", "variant", "higher_is_better", "status"]
        return replica_means(ok, by)

    def pair_scores(self, pair: tuple[str, str]) -> pd.DataFrame:
        d, m = pair
        return self.scores[(self.scores["dataset"] == d) & (self.scores["model"] == m)]

    def pair_curves(self, pair: tuple[str, str]) -> pd.DataFrame:
        d, m = pair
        return self.curves[(self.curves["dataset"] == d) & (self.curves["model"] == m)]

    def summary_row(self, pair: tuple[str, str], method: str, out: Output) -> pd.Series | None:
        s = self._pair_summary(pair)
        sel = (s["method"] == method) & (s["metric"] == out.metric) & (s["variant"] == out.variant)
        hit = s[sel]
        return None if hit.empty else hit.iloc[0]

    def metric_params(self, metric: str) -> dict[str, Any]:
        """The stored parameters of a metric (first ok row), {} if none."""
        rows = self.scores[(self.scores["metric"] == metric) & self.scores["metric_params"].notna()]
        if rows.empty:
            return {}
        try:
            value = json.loads(str(rows["metric_params"].iloc[0]))
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def problems(self) -> pd.DataFrame:
        """Rows with status skipped or error, one per (dataset, model, method, metric, message)."""
        bad = self.scores[self.scores["status"] != "ok"]
        cols = ["dataset", "model", "method", "metric", "status", "message"]
        out = bad[cols].copy()
        out["message"] = out["message"].fillna("")
        return out.drop_duplicates().reset_index(drop=True)

    def nan_reasons(self) -> pd.DataFrame:
        """Counts of undefined values (ok rows with NaN) per output and reason."""
        s = self.scores
        nan = s[(s["status"] == "ok") & ~np.isfinite(s["value"].to_numpy(dtype=np.float64))]
        cols = ["dataset", "model", "method", "metric", "variant"]
        if nan.empty:
            return pd.DataFrame(columns=[*cols, "message", "count"])
        nan = nan.assign(message=nan["message"].fillna("(no reason given)"))
        return nan.groupby([*cols, "message"], sort=False).size().reset_index(name="count")

    def _pair_summary(self, pair: tuple[str, str]) -> pd.DataFrame:
        d, m = pair
        return self.summary[(self.summary["dataset"] == d) & (self.summary["model"] == m)]


def _first(df: pd.DataFrame, col: str) -> Any:
    return df[col].iloc[0] if col in df.columns and len(df) else None


def load_run(run_dir: Path) -> RunData:
    """Read a finished run folder; a ``UserError`` naming the path and the fix otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"{run_dir}: no such folder; pass a run folder written by `benchbox run` "
            f"(results/<suite>/<run_id>/)"
        )
    missing = [name for name in _REQUIRED if not (run_dir / name).is_file()]
    if missing:
        runs = sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "summary.csv").is_file())
        if runs:
            hint = f"it holds runs; pass one of them, e.g. {runs[-1]}"
        elif (run_dir / "parts").is_dir():
            hint = "the run did not finish; rerun the suite with `benchbox run` (or --resume)"
        else:
            hint = "pass a run folder written by `benchbox run` (results/<suite>/<run_id>/)"
        raise UserError(
            f"{run_dir}: not a finished benchbox run folder (missing {', '.join(missing)}); {hint}"
        )
    try:
        scores = pd.read_parquet(run_dir / "scores.parquet")
        curves_path = run_dir / "curves.parquet"
        curves = pd.read_parquet(curves_path) if curves_path.is_file() else _no_curves()
        summary = read_summary(run_dir / "summary.csv")
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # pyarrow/pandas/json parse errors are ValueErrors
        raise UserError(
            f"{run_dir}: cannot read the run's files ({type(exc).__name__}: {exc}); "
            f"rerun the suite to write them again"
        ) from exc
    scores["variant"] = scores["variant"].fillna("")
    curves["variant"] = curves["variant"].fillna("")
    summary["message"] = summary["message"].where(summary["message"].notna(), None)
    if not isinstance(manifest, dict):
        raise UserError(f"{run_dir / 'manifest.json'}: expected a JSON object; rerun the suite")
    notes = []
    if not isinstance(manifest.get("outputs"), dict):
        notes.append(
            "this run's manifest does not record its metrics' outputs (written before benchbox "
            "stored them): diagnostics are ranked like scores here; rerun the suite to tell them "
            "apart"
        )
    return RunData(run_dir, scores, curves, summary, manifest, notes)


def _no_curves() -> pd.DataFrame:
    from ..schema import CURVES

    return pd.DataFrame({c.name: pd.Series(dtype=object) for c in CURVES})


def split_controls(methods: list[str]) -> tuple[list[str], list[str]]:
    """(methods, controls) in their given order."""
    return [m for m in methods if not is_control(m)], [m for m in methods if is_control(m)]
