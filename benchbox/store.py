"""Results on disk: ``<output>/<suite>/<run_id>/``.

Each finished job is written atomically (temporary file, then ``os.replace``) into ``parts/``;
``finalize`` gathers the parts into ``scores.parquet`` and ``curves.parquet`` and writes
``summary.csv`` and ``manifest.json``. A run directory is created exclusively, so a run never
overwrites an earlier one. The columns are those of ``benchbox.schema``.

Resume: at creation ``parts/run.json`` records the resolved suite, its hash and the device, so a
killed run can be reopened (:meth:`RunStore.open`) and checked against the suite it is resumed
with. A job's files are committed in the order curves, ``job-NNNNN.json`` (wall time, status,
cache counts), then ``scores-NNNNN.parquet``: the scores part is the commit marker, so a kill
between two writes leaves a job that counts as unfinished and is simply run again (its stray
files are replaced). Temporary files a kill leaves behind are removed when the run is reopened.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterator, Mapping
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

__all__ = ["RunStore", "fault_point", "read_summary", "summarize"]

_GROUP = ["suite", "dataset", "model", "method", "metric", "variant"]
_RUN_FILE = "run.json"
_fault_counts: Counter[str] = Counter()


def fault_point(event: str) -> None:
    """Test hook: SIGKILL this process at the n-th ``event`` when ``BENCHBOX_FAULT_AFTER=event:n``.

    Events (counted per process): ``model`` (a model was built, none of its jobs ran yet),
    ``batch`` (a batch's attributions were computed, mid-job), ``part`` (a part's temporary file is
    written but not yet renamed into place), ``job`` (a job is committed), ``finalize`` (
    ``scores.parquet`` is written, the rest of the final files are not), ``task`` (a Dask task
    starts in a worker). With ``BENCHBOX_FAULT_ONCE=<file>`` as well, the kill happens only while
    that file exists and removes it first, so a restarted worker does not die again. The fault
    test of ``--resume`` and the Dask retry test use it; when the variable is unset it costs one
    dictionary lookup.
    """
    spec = os.environ.get("BENCHBOX_FAULT_AFTER")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != event:
        return
    _fault_counts[event] += 1
    if _fault_counts[event] != int(n or 1):
        return
    marker = os.environ.get("BENCHBOX_FAULT_ONCE")
    if marker:
        try:
            os.unlink(marker)
        except FileNotFoundError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        fault_point("part")
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
    def create(
        cls, output: Path, suite: str, suite_hash: str, meta: Mapping[str, Any] | None = None
    ) -> RunStore:
        """A new, exclusive run folder; ``meta`` (resolved suite, device, ...) goes to
        ``parts/run.json`` beside ``suite_hash`` so that :meth:`open` can check a resume."""
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
                store = cls(root / run_id, run_id, suite)
                record = {**(meta or {}), "run_id": run_id, "suite": suite}
                record["suite_hash"] = suite_hash
                with _writing(store.parts / _RUN_FILE) as tmp:
                    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
                return store
        except OSError as exc:
            raise UserError(
                f"{root}: cannot create the results folder: {exc.strerror or exc}; "
                f"choose another --output directory"
            ) from exc
        raise UserError(f"{root}: too many runs started in the same second")

    @classmethod
    def open(cls, path: Path, suite_hash: str, device: str, source: str) -> RunStore:
        """Reopen the run folder ``path`` to resume it with the suite hashed ``suite_hash``.

        Raises ``UserError`` when ``path`` is not a benchbox run folder, or when it was started
        from another suite or on another device (its numbers would not be those of one run).
        Leftover temporary files of a killed write are removed."""
        path = Path(path)
        run_file, manifest = path / "parts" / _RUN_FILE, path / "manifest.json"
        if manifest.exists():
            record = json.loads(manifest.read_text())
        elif run_file.exists():
            record = json.loads(run_file.read_text())
        else:
            raise UserError(
                f"--resume {path}: not a benchbox run folder (no parts/{_RUN_FILE} or "
                f"manifest.json); give a folder such as results/<suite>/<run_id>"
            )
        if record.get("suite_hash") != suite_hash:
            raise UserError(
                f"--resume {path}: the run was started from a suite with hash "
                f"{str(record.get('suite_hash'))[:12]}, but {source} hashes to {suite_hash[:12]}; "
                f"resume with the suite file the run was started from, or start a new run"
            )
        if record.get("device") not in (None, device):
            raise UserError(
                f"--resume {path}: the run was started on device {record.get('device')!r}, not "
                f"{device!r}; resume with --device {record.get('device')}"
            )
        store = cls(path, str(record.get("run_id", path.name)), str(record["suite"]))
        for stale in (*path.glob(".*.tmp"), *store.parts.glob(".*.tmp")):
            stale.unlink(missing_ok=True)
        return store

    @property
    def finalized(self) -> bool:
        return (self.path / "manifest.json").exists()

    def record(self) -> dict[str, Any]:
        """What ``create`` wrote to ``parts/run.json`` (empty if absent)."""
        f = self.parts / _RUN_FILE
        return json.loads(f.read_text()) if f.exists() else {}

    def finished(self) -> set[int]:
        """Indices of the committed jobs (those whose scores part exists)."""
        return {int(f.stem.split("-")[1]) for f in self.parts.glob("scores-*.parquet")}

    def write_job(
        self,
        index: int,
        scores: pd.DataFrame,
        curves: pd.DataFrame | None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Commit one job: curves, facts, then the scores part (the commit marker) last."""
        if curves is not None and len(curves):
            with _writing(self.parts / f"curves-{index:05d}.parquet") as tmp:
                pq.write_table(_table(curves, CURVES), tmp)
        else:  # a stale curves part of an interrupted earlier attempt must not be gathered
            (self.parts / f"curves-{index:05d}.parquet").unlink(missing_ok=True)
        with _writing(self.parts / f"job-{index:05d}.json") as tmp:
            tmp.write_text(json.dumps(dict(info or {}), default=str))
        with _writing(self.parts / f"scores-{index:05d}.parquet") as tmp:
            pq.write_table(_table(scores, SCORES), tmp)
        fault_point("job")

    def job_infos(self) -> list[dict[str, Any]]:
        """The facts of the committed jobs, in job order."""
        done = sorted(self.finished())
        return [json.loads((self.parts / f"job-{i:05d}.json").read_text()) for i in done]

    def write_model_info(self, key: str, info: Mapping[str, Any]) -> None:
        with _writing(self.parts / f"model-{key}.json") as tmp:
            tmp.write_text(json.dumps(dict(info), default=str))

    def model_info(self, key: str) -> dict[str, Any] | None:
        f = self.parts / f"model-{key}.json"
        return json.loads(f.read_text()) if f.exists() else None

    def _committed(self, prefix: str) -> list[Path]:
        # Only committed jobs: a curves part whose scores part never landed is a killed job's.
        done = self.finished()
        return sorted(
            f for f in self.parts.glob(f"{prefix}-*.parquet") if int(f.stem.split("-")[1]) in done
        )

    def _stream(self, prefix: str, columns: tuple[Column, ...], dest: Path) -> None:
        """Copy the committed parts, in job order, into ``dest`` one part at a time, so the
        memory finalize needs is one job's, not the run's (batches are streamed end to end)."""
        files = self._committed(prefix)
        # The first part's schema carries the pandas metadata (nullable Int64 labels read back
        # as Int64); every part was written with the same columns and types.
        schema = pq.read_schema(files[0]) if files else arrow_schema(columns)
        with _writing(dest) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for f in files:
                writer.write_table(pq.read_table(f, schema=schema))

    def finalize(self, manifest: dict[str, Any], seed: int) -> pd.DataFrame:
        """Write scores/curves/summary/manifest; returns the summary frame."""
        self._stream("scores", SCORES, self.path / "scores.parquet")
        fault_point("finalize")
        self._stream("curves", CURVES, self.path / "curves.parquet")
        needed = [*_GROUP, "replica", "sample_id", "value", "higher_is_better", "status", "message"]
        summary = summarize(
            pq.read_table(self.path / "scores.parquet", columns=needed).to_pandas(), seed=seed
        )
        with _writing(self.path / "summary.csv") as tmp:
            summary.to_csv(tmp, index=False)
        with _writing(self.path / "manifest.json") as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        shutil.rmtree(self.parts, ignore_errors=True)
        return summary


def summarize(scores: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """Mean, 95% bootstrap CI, std and counts per (dataset, model, method, metric, variant),
    and the spread across the model's replicas.

    Two sources of variation are reported apart. Over the **samples**: each sample's value (with
    replicas, its mean over the replicas that scored it) gives the mean, its percentile bootstrap
    CI, ``std`` and ``n``. Over **training seeds**: each replica's mean over its samples gives
    ``replica_std`` (ddof 1), ``replica_min`` and ``replica_max``; a CI over samples says nothing
    of how a finding would move with another training run (or another CPU's float kernels, which
    train other weights), the replica spread does. Without replicas the per-sample values are the
    values themselves, and ``replica_std`` is NaN.

    NaN values (metric undefined for a sample) are counted in ``n_nan`` and left out of the mean.
    Each group's bootstrap draws from a seed derived from the suite seed and the group's key, so
    summaries are reproducible and independent of group order.
    """
    if "replica" not in scores.columns:  # a run stored before replicas existed
        scores = scores.assign(replica=0)
    rows = []
    for key, g in scores.groupby(_GROUP, sort=False, dropna=False):
        ok = g[g["status"] == "ok"]
        v = ok["value"].to_numpy(dtype=np.float64)
        scored = ok[np.isfinite(v)]
        if "sample_id" in scored.columns:
            finite = scored.groupby("sample_id", sort=False)["value"].mean().to_numpy()
        else:
            finite = scored["value"].to_numpy(dtype=np.float64)
        by_replica = scored.groupby("replica")["value"].mean().to_numpy(dtype=np.float64)
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
                "n_nan": int(v.size - len(scored)),
                "replicas": int(by_replica.size),
                "replica_std": float(by_replica.std(ddof=1)) if by_replica.size > 1 else math.nan,
                "replica_min": float(by_replica.min()) if by_replica.size else math.nan,
                "replica_max": float(by_replica.max()) if by_replica.size else math.nan,
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
