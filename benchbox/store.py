"""Results on disk: ``<output>/<suite>/<run_id>/``.

Each finished job is written atomically (temporary file, then ``os.replace``) into ``parts/``;
``finalize`` gathers the parts into ``scores.parquet`` and ``curves.parquet`` and writes
``summary.csv`` and ``manifest.json``. A run directory is created exclusively, so a run never
overwrites an earlier one. The columns are those of ``benchbox.schema``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UserError
from .schema import CURVES, SCORES, SUMMARY, Column, arrow_schema
from .seeding import derive_seed
from .stats import bootstrap_ci

__all__ = ["RunStore", "read_summary", "summarize"]

_GROUP = ["suite", "dataset", "model", "method", "metric", "variant"]


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write results: {exc.strerror or exc}; free space or choose another "
            f"--output directory"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _table(df: pd.DataFrame, columns: tuple[Column, ...]) -> pa.Table:
    missing = [c.name for c in columns if c.name not in df.columns]
    if missing:
        raise ValueError(f"results frame lacks columns {missing}")
    return pa.Table.from_pandas(
        df[[c.name for c in columns]], schema=arrow_schema(columns), preserve_index=False
    )


class RunStore:
    """Writes one run's results. Create with :meth:`create`."""

    def __init__(self, path: Path, run_id: str, suite: str):
        self.path = path
        self.run_id = run_id
        self.suite = suite
        self.parts = path / "parts"

    @classmethod
    def create(cls, output: Path, suite: str, suite_hash: str) -> RunStore:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        base = f"{stamp}-{suite_hash[:8]}"
        root = Path(output) / suite
        try:
            root.mkdir(parents=True, exist_ok=True)
            for n in range(1000):
                run_id = base if n == 0 else f"{base}-{n}"
                try:
                    (root / run_id).mkdir()  # exclusive: never reuse an earlier run's folder
                except FileExistsError:
                    continue
                (root / run_id / "parts").mkdir()
                return cls(root / run_id, run_id, suite)
        except OSError as exc:
            raise UserError(
                f"{root}: cannot create the results folder: {exc.strerror or exc}; "
                f"choose another --output directory"
            ) from exc
        raise UserError(f"{root}: too many runs started in the same second")

    def write_job(self, index: int, scores: pd.DataFrame, curves: pd.DataFrame | None) -> None:
        with _writing(self.parts / f"scores-{index:05d}.parquet") as tmp:
            pq.write_table(_table(scores, SCORES), tmp)
        if curves is not None and len(curves):
            with _writing(self.parts / f"curves-{index:05d}.parquet") as tmp:
                pq.write_table(_table(curves, CURVES), tmp)

    def _gather(self, prefix: str, columns: tuple[Column, ...]) -> pa.Table:
        files = sorted(self.parts.glob(f"{prefix}-*.parquet"))
        if not files:
            return arrow_schema(columns).empty_table()
        return pa.concat_tables([pq.read_table(f) for f in files])

    def finalize(self, manifest: dict[str, Any], seed: int) -> pd.DataFrame:
        """Write scores/curves/summary/manifest; returns the summary frame."""
        scores = self._gather("scores", SCORES)
        with _writing(self.path / "scores.parquet") as tmp:
            pq.write_table(scores, tmp)
        with _writing(self.path / "curves.parquet") as tmp:
            pq.write_table(self._gather("curves", CURVES), tmp)
        summary = summarize(scores.to_pandas(), seed=seed)
        with _writing(self.path / "summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
        with _writing(self.path / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        shutil.rmtree(self.parts, ignore_errors=True)
        return summary


def summarize(scores: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Mean, 95% bootstrap CI, std and counts per (dataset, model, method, metric, variant).

    NaN values (metric undefined for a sample) are counted in ``n_nan`` and left out of the mean.
    Each group's bootstrap draws from a seed derived from the suite seed and the group's key, so
    summaries are reproducible and independent of group order.
    """
    rows = []
    for key, g in scores.groupby(_GROUP, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        v = ok["value"].to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        low, high = bootstrap_ci(finite, seed=derive_seed(seed, "summary", *key))
        bad = g[g["status"] != "ok"]
        status = "ok" if len(ok) else (bad["status"].iloc[0] if len(bad) else "ok")
        if len(bad) and (bad["status"] == "error").any():
            status = "error"
        rows.append(
            {
                **dict(zip(_GROUP, key, strict=True)),
                "mean": float(finite.mean()) if finite.size else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
                "n": int(finite.size),
                "n_nan": int(v.size - finite.size),
                "higher_is_better": bool(g["higher_is_better"].iloc[0]),
                "status": status,
                "message": bad["message"].iloc[0] if len(bad) else None,
            }
        )
    return pd.DataFrame(rows, columns=[c.name for c in SUMMARY])


def read_summary(path: Path) -> pd.DataFrame:
    """Read ``summary.csv`` back with its types (``variant`` '' stays '', not NaN)."""
    df = pd.read_csv(path, dtype={"variant": str, "message": str}, keep_default_na=True)
    df["variant"] = df["variant"].fillna("")
    return df
