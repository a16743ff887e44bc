"""The results schema, defined once. ``results/README.md`` documents every column listed here
(a test checks that), and the store writes exactly these columns in this order."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = ["CURVES", "SCORES", "STATUSES", "SUMMARY", "Column"]

STATUSES = ("ok", "skipped", "error")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


_KEY = [
    Column("run_id", pa.string(), "identifier of the run (UTC start time and suite hash)"),
    Column("suite", pa.string(), "suite name"),
    Column("dataset", pa.string(), "dataset registry name"),
    Column("model", pa.string(), "model registry name"),
    Column("method", pa.string(), "attribution method registry name"),
    Column("metric", pa.string(), "metric registry name"),
    Column(
        "variant",
        pa.string(),
        "output of a metric with several outputs (e.g. spearman_abs); '' for a single output",
    ),
]

_REPLICA = Column(
    "replica",
    pa.int64(),
    "which independently trained copy of the model (0 .. replicas-1; 0 without replicas)",
)

SCORES: tuple[Column, ...] = (
    *_KEY[:3],
    Column("dataset_params", pa.string(), "dataset parameters, canonical JSON"),
    _KEY[3],
    Column("model_params", pa.string(), "model parameters, canonical JSON"),
    _REPLICA,
    _KEY[4],
    Column("method_params", pa.string(), "method parameters with defaults, canonical JSON"),
    _KEY[5],
    Column("metric_params", pa.string(), "metric parameters with defaults, canonical JSON"),
    _KEY[6],
    Column("sample_id", pa.string(), "stable sample id; null on a skipped or failed job's row"),
    Column("label", pa.int64(), "ground-truth class of the sample"),
    Column("target", pa.int64(), "class the explanation is for (label or prediction)"),
    Column("prediction", pa.int64(), "class the model predicts on the unperturbed sample"),
    Column("value", pa.float64(), "the score; NaN where undefined (reason in message)"),
    Column("higher_is_better", pa.bool_(), "direction of the metric"),
    Column("status", pa.string(), "ok | skipped | error"),
    Column(
        "message",
        pa.string(),
        "why a value is NaN, why a job was skipped, or the error; null otherwise",
    ),
)

CURVES: tuple[Column, ...] = (
    *_KEY[:4],
    _REPLICA,
    *_KEY[4:],
    Column("sample_id", pa.string(), "stable sample id"),
    Column("step", pa.int32(), "index along the curve (0 = unperturbed)"),
    Column("x", pa.float64(), "curve abscissa (e.g. fraction of pixels removed)"),
    Column("y", pa.float64(), "curve ordinate (e.g. class probability)"),
)

SUMMARY: tuple[Column, ...] = (
    *_KEY[1:],
    Column(
        "mean",
        pa.float64(),
        "mean over the samples of each sample's value (with replicas: its mean over the "
        "replicas), finite values only",
    ),
    Column("ci_low", pa.float64(), "lower end of the 95% percentile bootstrap CI of the mean"),
    Column("ci_high", pa.float64(), "upper end of the 95% percentile bootstrap CI of the mean"),
    Column("std", pa.float64(), "sample standard deviation of the per-sample values"),
    Column("n", pa.int64(), "number of samples with a finite value"),
    Column("n_nan", pa.int64(), "number of NaN values (undefined for that sample and replica)"),
    Column("replicas", pa.int64(), "number of model replicas with a finite value"),
    Column(
        "replica_std",
        pa.float64(),
        "standard deviation of the replicas' means (the spread across training seeds); NaN "
        "with one replica",
    ),
    Column("replica_min", pa.float64(), "lowest mean of a replica"),
    Column("replica_max", pa.float64(), "highest mean of a replica"),
    Column("higher_is_better", pa.bool_(), "direction of the metric"),
    Column("status", pa.string(), "ok, or skipped / error when no value was computed"),
    Column("message", pa.string(), "the skip reason or error, if any"),
)


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.type) for c in columns])
