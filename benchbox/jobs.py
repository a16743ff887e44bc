"""One job: a (dataset, model, method) with its metrics, from the test split to its result rows.

``execute_job`` streams the test split in batches to the device, computes the method's
attributions once per batch (or takes them from the attribution cache) and hands them to every
metric of the job; samples with a non-finite input, output or map leave the batch with an error
row saying why; a failing method or metric becomes ``status="error"`` rows with the message.
Both executors call it: the local one (``benchbox.runner``) and the Dask one
(``benchbox.dask_executor``), which import this module and nothing of each other's.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .attribution_cache import AttributionCache, attribution_key, state_hash
from .core import (
    Batch,
    Dataset,
    ExplainedModel,
    Method,
    Metric,
    MetricContext,
    MetricOutput,
    Split,
)
from .errors import UserError
from .outputs import declared_outputs, output_direction
from .params import canonical_json
from .planner import Job
from .schema import CURVES, SCORES
from .seeding import derive_seed, make_generator
from .store import fault_point
from .suite import ComponentSpec, Suite

__all__ = [
    "JobResult",
    "build_dataset",
    "build_model",
    "cache_counts",
    "execute_job",
    "job_rows",
    "model_seed",
]


def cache_counts(cache: AttributionCache | None) -> dict[str, int]:
    return {} if cache is None else {"cache_hits": cache.hits, "cache_misses": cache.misses}


def build_dataset(spec: ComponentSpec, suite: Suite) -> Dataset:
    try:
        ds = spec.build()
    except UserError as exc:
        raise UserError(f"{suite.source}: {spec.path}.{spec.name}: {exc}") from exc
    if not isinstance(ds, Dataset):
        raise UserError(f"{suite.source}: {spec.path}: {spec.name!r} is not a benchbox Dataset")
    return ds


def model_seed(spec: ComponentSpec, suite: Suite) -> int:
    return derive_seed(suite.seed, "model", spec.name, spec.params_json)


def build_model(
    spec: ComponentSpec,
    ds: Dataset,
    suite: Suite,
    dev: torch.device,
    *,
    probes: bool = True,
    **overrides: Any,
) -> ExplainedModel:
    """Build (train or load) the model; ``overrides`` change builder parameters (``rebuild``).

    The seed derives from the suite's parameters, not the overridden ones: a permuted-label or
    second-seed model differs from the original by exactly the overridden parameter, and so does
    a replica (``ComponentSpec.build`` raises its ``train_seed``). ``probes``:
    evaluate the dataset's probe sets into ``info`` (a Dask worker, whose facts the driver has
    recorded already, skips them)."""
    builder = spec.build(**overrides)
    seed = model_seed(spec, suite)
    model = builder.build(ds, seed=seed, device=dev, batch_size=suite.batch_size)
    model.module.eval()
    for name, (split, transform) in (ds.probe_sets() if probes else {}).items():
        model.info[f"{name}_accuracy"] = _accuracy(model, ds, split, transform, suite, dev)
    return model


def _accuracy(
    model: ExplainedModel,
    ds: Dataset,
    split: Split,
    transform: Callable[[Batch], Batch],
    suite: Suite,
    dev: torch.device,
) -> float:
    """Accuracy of ``model`` on ``transform``-ed batches of ``split`` (a dataset's probe set)."""
    correct = total = 0
    with torch.no_grad():
        for batch in ds.batches(split, suite.batch_size):
            b = transform(batch).to(dev)
            correct += int((model(b.x).argmax(dim=1) == b.label).sum())
            total += len(b)
    return correct / max(total, 1)


def _base_columns(job: Job, suite: Suite, run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "suite": suite.name,
        "dataset": job.dataset.name,
        "dataset_params": job.dataset.params_json,
        "model": job.model.name,
        "model_params": job.model.params_json,
        "replica": job.model.replica,
        "method": job.method.name,
        "method_params": job.method.params_json,
    }


def _metric_row(
    job: Job, suite: Suite, run_id: str, spec: ComponentSpec, status: str, message: str
) -> dict[str, Any]:
    return {
        **_base_columns(job, suite, run_id),
        "metric": spec.name,
        "metric_params": spec.params_json,
        "variant": "",
        "sample_id": None,
        "label": None,
        "target": None,
        "prediction": None,
        "value": float("nan"),
        "higher_is_better": declared_outputs(spec.cls)["higher_is_better"],
        "status": status,
        "message": message,
    }


def job_rows(job: Job, suite: Suite, run_id: str, status: str, message: str) -> pd.DataFrame:
    """One row per metric for a job that produced no values (skipped or failed)."""
    rows = [_metric_row(job, suite, run_id, s, status, message) for s in job.metrics]
    rows += [_metric_row(job, suite, run_id, s, "skipped", r) for s, r in job.skipped_metrics]
    return _frame(rows)


_SCORE_COLUMNS = [c.name for c in SCORES]
_CURVE_COLUMNS = [c.name for c in CURVES]


def _frame(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Score rows with exactly ``schema.SCORES``'s columns, in its order (a missing or extra
    column is a bug here, not a file the store writes wrong)."""
    df = pd.DataFrame(rows) if isinstance(rows, list) else rows
    extra = set(df.columns) - set(_SCORE_COLUMNS)
    if extra:
        raise ValueError(f"score rows with columns outside schema.SCORES: {sorted(extra)}")
    df = df[_SCORE_COLUMNS]
    for col in ("label", "target", "prediction"):
        df[col] = df[col].astype("Int64")
    return df


def _curve_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Curve rows with exactly ``schema.CURVES``'s columns, in its order."""
    extra = set(df.columns) - set(_CURVE_COLUMNS)
    if extra:
        raise ValueError(f"curve rows with columns outside schema.CURVES: {sorted(extra)}")
    return df[_CURVE_COLUMNS]


@dataclass
class _Collected:
    """Per (metric, variant) values gathered over the batches of a job."""

    ids: list[str] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    curves: list[np.ndarray] = field(default_factory=list)
    curve_x: np.ndarray | None = None

    def add(
        self,
        ids: tuple[str, ...],
        labels: np.ndarray,
        targets: np.ndarray,
        preds: np.ndarray,
        out: MetricOutput,
    ) -> None:
        """One batch's output (``ids`` and the other arrays: its samples, in order)."""
        self.ids.extend(ids)
        self.labels.append(labels)
        self.targets.append(targets)
        self.preds.append(preds)
        self.values.append(_owned(out.values))
        self.reasons.extend(out.reasons or [None] * len(ids))
        if out.curves is not None:
            self.curves.append(_owned(out.curves))
            if out.curve_x is not None:
                self.curve_x = out.curve_x.detach().double().cpu().numpy()

    def score_rows(
        self, base: dict[str, Any], spec: ComponentSpec, variant: str, hib: bool
    ) -> pd.DataFrame:
        """The ``ok`` score rows, one per sample (``base``: the job's identifying columns)."""
        return pd.DataFrame(
            {
                **base,
                "metric": spec.name,
                "metric_params": spec.params_json,
                "variant": variant,
                "sample_id": self.ids,
                "label": np.concatenate(self.labels),
                "target": np.concatenate(self.targets),
                "prediction": np.concatenate(self.preds),
                "value": np.concatenate(self.values),
                "higher_is_better": hib,
                "status": "ok",
                "message": self.reasons,
            }
        )

    def curve_rows(
        self, job: Job, suite: Suite, run_id: str, spec: ComponentSpec, variant: str
    ) -> pd.DataFrame:
        """The curve rows: one per sample and step (``x``: the metric's abscissa, else the
        step)."""
        curves = np.concatenate(self.curves)
        n, t = curves.shape
        xs = self.curve_x if self.curve_x is not None else np.arange(t, dtype=np.float64)
        return pd.DataFrame(
            {
                "run_id": run_id,
                "suite": suite.name,
                "dataset": job.dataset.name,
                "model": job.model.name,
                "replica": job.model.replica,
                "method": job.method.name,
                "metric": spec.name,
                "variant": variant,
                "sample_id": np.repeat(np.asarray(self.ids, dtype=object), t),
                "step": np.tile(np.arange(t, dtype=np.int32), n),
                "x": np.tile(xs, n),
                "y": curves.reshape(-1),
            }
        )


def _release_freed_memory() -> None:
    """Give the pages of freed batch tensors back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). glibc raises its mmap threshold after the first large free, so batch-sized
    tensors then come from the heap, where the small per-batch results kept for the job pin
    them: without a trim a job's resident memory grew by ~1.7 MB per 64×64² batch, i.e. with the
    dataset (tests/test_memory.py)."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _load_libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and other libcs have no malloc_trim
        return None


_libc = _load_libc()


def _owned(t: torch.Tensor) -> np.ndarray:
    """``t`` as float64 NumPy that owns its memory: ``.numpy()`` of a float64 view would share,
    and keep alive, the whole storage it views (a metric's batch-sized work tensors), which made
    a job's memory grow with the dataset."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float64, copy=True)


_NONFINITE_INPUT = "the input has NaN/Inf values; fix or drop this sample in the data"
_NONFINITE_OUTPUT = "the model's output is NaN/Inf for this input; check the model and its weights"
_NONFINITE_MAP = "the method's map has NaN/Inf values for this input"


@dataclass
class _Dropped:
    """A sample taken out of its batch because of a non-finite value."""

    id: str
    label: int
    target: int
    prediction: int
    reason: str


def _finite_rows(values: Tensor) -> Tensor:
    """bool ``[B]``: which samples of ``values`` ``[B, ...]`` are finite everywhere."""
    return torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)


def _record_dropped(
    dropped: list[_Dropped],
    batch: Batch,
    target: Tensor,
    pred: Tensor,
    bad: Tensor,
    reason: str,
) -> None:
    """Append the samples where ``bad`` (bool ``[B]``) to ``dropped`` with ``reason``."""
    for k in bad.nonzero().flatten().tolist():
        dropped.append(
            _Dropped(batch.ids[k], int(batch.label[k]), int(target[k]), int(pred[k]), reason)
        )


def _dropped_rows(
    dropped: list[_Dropped],
    job: Job,
    suite: Suite,
    run_id: str,
    spec: ComponentSpec,
    variant: str,
    higher_is_better: bool,
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            **_base_columns(job, suite, run_id),
            "metric": spec.name,
            "metric_params": spec.params_json,
            "variant": variant,
            "sample_id": [d.id for d in dropped],
            "label": [d.label for d in dropped],
            "target": [d.target for d in dropped],
            "prediction": [d.prediction for d in dropped],
            "value": np.nan,
            "higher_is_better": higher_is_better,
            "status": "error",
            "message": [d.reason for d in dropped],
        }
    )


def _stored_direction(declared: Mapping[str, Any], variant: str) -> bool:
    """The ``higher_is_better`` a row stores: ``outputs.output_direction``'s, a diagnostic's
    (None) as the metric's headline (the manifest's ``outputs`` says it is one)."""
    hib = output_direction(declared, variant)
    return bool(declared["higher_is_better"]) if hib is None else hib


def _save_examples(run_dir: Path, job: Job, batch: Batch, attr: Tensor) -> None:
    """Keep a few samples of the batch, lesion-bearing ones first, for the report's grid."""
    from .report import N_EXAMPLES, save_examples

    order = torch.arange(len(batch), device=batch.x.device)
    if batch.mask is not None:  # stable: samples with a non-empty mask, then the others
        has_mask = batch.mask.reshape(len(batch), -1).any(dim=1)
        order = torch.cat([order[has_mask], order[~has_mask]])
    pick = order[:N_EXAMPLES]
    save_examples(
        run_dir,
        job.dataset.name,
        job.model.name,
        job.method.name,
        batch.x[pick],
        None if batch.mask is None else batch.mask[pick],
        attr[pick],
        [batch.ids[k] for k in pick.tolist()],
    )


class _Guarded:
    """An iterator over ``items`` that stops at the first exception and keeps it as ``error``
    (a message starting with ``what``), so that a dataset failing mid-job gives the job's
    error rows, not a crash: user code, ``SystemExit`` included; only ``KeyboardInterrupt``
    passes. A ``UserError`` (a file that cannot be read) keeps its own message."""

    def __init__(self, items: Any, what: str) -> None:
        self._it = iter(items)
        self._what = what
        self.error: str | None = None

    def __iter__(self) -> _Guarded:
        return self

    def __next__(self) -> Any:
        if self.error is not None:
            raise StopIteration
        try:
            return next(self._it)
        except (StopIteration, KeyboardInterrupt):
            raise
        except UserError as exc:
            self.error = f"{self._what} failed: {exc}"
        except BaseException as exc:
            self.error = f"{self._what} failed: {type(exc).__name__}: {exc}"
        raise StopIteration


def _check_attribution(name: str, attr: Any, batch: Batch) -> None:
    expected = (len(batch), 1, *batch.x.shape[2:])
    if not isinstance(attr, torch.Tensor) or tuple(attr.shape) != expected:
        got = tuple(attr.shape) if isinstance(attr, torch.Tensor) else type(attr).__name__
        raise RuntimeError(f"method {name!r} returned {got}, expected shape {list(expected)}")
    if attr.dtype != torch.float32:
        raise RuntimeError(f"method {name!r} returned dtype {attr.dtype}, expected float32")


@dataclass
class JobResult:
    """One job's outcome: its score rows (exactly ``schema.SCORES``'s columns, in order), its
    curve rows (``schema.CURVES``'s, or None) and facts for the manifest (cache counts; the
    executors add the wall time and the worker)."""

    scores: pd.DataFrame
    curves: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool((self.scores["status"] == "error").any())


def execute_job(
    job: Job,
    ds: Dataset,
    model: ExplainedModel,
    suite: Suite,
    dev: torch.device,
    run_id: str,
    advance: Callable[[int], None],
    cache: AttributionCache | None = None,
    examples: Path | None = None,
) -> JobResult:
    """One job's rows: stream the test split, explain each batch once (or take the
    attributions from ``cache``), score them with every metric of the job.

    Samples whose input, model output or map holds NaN/Inf are taken out of the batch before
    the next step and get ``status="error"`` rows saying which (the other samples are scored).
    ``examples``: the run folder, where a few inputs and maps of the first batch are kept for
    the report's example grid (``benchbox.report.save_examples``). ``advance(1)`` after each
    batch (the progress bar)."""
    try:
        run = _JobRun(job, ds, model, suite, dev, cache)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # validated already; a failure here is recorded, not fatal
        rows = job_rows(job, suite, run_id, "error", f"building the job failed: {exc}")
        return JobResult(rows, None, cache_counts(cache))
    reading = _Guarded(ds.batches("test", suite.batch_size, suite.limit), "reading the test data")
    for cpu_batch in reading:
        if run.error is None:  # after a method or model failure the rest is only counted
            examples = run.step(cpu_batch.to(dev), examples)
        advance(1)
    error = run.error or reading.error
    if error is not None:
        return JobResult(job_rows(job, suite, run_id, "error", error), None, cache_counts(cache))
    scores, curves = run.rows(run_id)
    return JobResult(scores, curves, cache_counts(cache))


class _JobRun:
    """One job while its batches stream through: the built method and metrics with their own
    generators (adding a metric never changes another's draws or the method's), what each
    metric collected, the samples dropped for non-finite values, and the first failure."""

    def __init__(
        self,
        job: Job,
        ds: Dataset,
        model: ExplainedModel,
        suite: Suite,
        dev: torch.device,
        cache: AttributionCache | None,
    ) -> None:
        self.job, self.ds, self.model, self.suite, self.dev = job, ds, model, suite, dev
        self.method: Method = job.method.build()
        self.metrics: list[Metric] = [s.build() for s in job.metrics]
        self.method_gen = make_generator(derive_seed(suite.seed, *job.key, "method"), dev)
        self.metric_gens = [
            make_generator(derive_seed(suite.seed, *job.key, "metric", s.name, s.params_json), dev)
            for s in job.metrics
        ]
        self.cache = cache
        self.ident = _cache_ident(job, ds, model) if cache is not None else {}
        self.collected: list[dict[str, _Collected]] = [{} for _ in self.metrics]
        self.errors: dict[int, str] = {}  # metric index -> its failure
        self.dropped: list[_Dropped] = []
        self.error: str | None = None  # the model's or the method's failure: the job's rows
        self._rebuilt: dict[str, ExplainedModel] = {}

    def rebuild(self, **overrides: Any) -> ExplainedModel:
        """The job's model built again with ``overrides`` (``MetricContext.rebuild``), once."""
        key = canonical_json(overrides)
        if key not in self._rebuilt:
            try:
                self._rebuilt[key] = build_model(
                    self.job.model, self.ds, self.suite, self.dev, **overrides
                )
            except TypeError as exc:  # the builder has no such parameter
                raise UserError(
                    f"model {self.job.model.name!r} cannot be rebuilt with {overrides}: {exc}"
                ) from exc
        return self._rebuilt[key]

    def step(self, batch: Batch, examples: Path | None) -> Path | None:
        """Predict, explain and score one batch; returns ``examples`` until a batch wrote them."""
        predicted = self._predict(batch)
        if predicted is None:
            return examples
        batch, target, pred = predicted
        attr = self._explain(batch, target)
        if attr is None:
            return examples
        keep = _finite_rows(attr)
        if not bool(keep.all()):
            _record_dropped(self.dropped, batch, target, pred, ~keep, _NONFINITE_MAP)
            if not bool(keep.any()):
                return examples
            batch, target, pred, attr = batch.select(keep), target[keep], pred[keep], attr[keep]
        if examples is not None:
            _save_examples(examples, self.job, batch, attr)
            examples = None  # the first batch only
        fault_point("batch")
        self._score(batch, pred, attr)
        _release_freed_memory()
        return examples

    def _predict(self, batch: Batch) -> tuple[Batch, Tensor, Tensor] | None:
        """The batch with its explained target, minus samples with a non-finite input or
        output (recorded); None when none is left or the model failed."""
        try:
            with torch.no_grad():
                logits = self.model(batch.x)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the model's code failed on this batch: the job's rows
            self.error = f"model {self.job.model.name!r} failed: {type(exc).__name__}: {exc}"
            return None
        pred = logits.argmax(dim=1)
        # A one-score model (anomaly detection) has a single "class" to explain, whatever the
        # label says; otherwise the suite chooses the prediction or the label.
        if self.model.num_classes == 1:
            target = torch.zeros_like(pred)
        else:
            target = pred if self.suite.target == "prediction" else batch.label
        batch = batch.with_target(target)
        # One host sync for both checks.
        bad_input = ~_finite_rows(batch.x)
        bad_output = ~_finite_rows(logits) & ~bad_input
        keep = ~(bad_input | bad_output)
        if not bool(keep.all()):
            _record_dropped(self.dropped, batch, target, pred, bad_input, _NONFINITE_INPUT)
            _record_dropped(self.dropped, batch, target, pred, bad_output, _NONFINITE_OUTPUT)
            if not bool(keep.any()):
                return None
            batch, target, pred = batch.select(keep), target[keep], pred[keep]
        return batch, target, pred

    def _explain(self, batch: Batch, target: Tensor) -> Tensor | None:
        """The method's maps of the batch, from the attribution cache when it has them."""
        try:
            attr = None
            if self.cache is not None:
                key = attribution_key(
                    **self.ident,
                    ids=batch.ids,
                    target=target,
                    generator=self.method_gen,
                    device=self.dev,
                )
                attr = self.cache.load(key, self.dev, self.method_gen)
            if attr is None:
                attr = self.method.attribute(self.model, batch.x, target, generator=self.method_gen)
                _check_attribution(self.job.method.name, attr, batch)
                if self.cache is not None:
                    self.cache.save(key, attr, self.method_gen)
            return attr
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the job's rows say why; the run goes on
            self.error = f"method {self.job.method.name!r} failed: {type(exc).__name__}: {exc}"
            return None

    def _score(self, batch: Batch, pred: Tensor, attr: Tensor) -> None:
        """Every metric's outputs on the batch, collected per variant (a failing metric gets
        its error rows and is not asked again)."""
        assert batch.target is not None
        labels = batch.label.cpu().numpy()
        targets = batch.target.cpu().numpy()
        preds = pred.cpu().numpy()
        for i, (metric, gen) in enumerate(zip(self.metrics, self.metric_gens, strict=True)):
            if i in self.errors:
                continue
            ctx = MetricContext(
                self.model, batch, attr, self.method, gen, self.suite.batch_size, self.rebuild
            )
            try:
                out = metric.score(ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # recorded as this metric's error rows
                name = self.job.metrics[i].name
                self.errors[i] = f"metric {name!r} failed: {type(exc).__name__}: {exc}"
                continue
            outputs = {"": out} if isinstance(out, MetricOutput) else dict(out)
            for variant, o in outputs.items():
                c = self.collected[i].setdefault(variant, _Collected())
                c.add(batch.ids, labels, targets, preds, o)

    def rows(self, run_id: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The job's score rows (and curve rows): per metric and variant, its samples' values,
        the dropped samples' error rows, or one error row for a failed metric."""
        job, suite = self.job, self.suite
        base = _base_columns(job, suite, run_id)
        frames: list[pd.DataFrame] = []
        curve_frames: list[pd.DataFrame] = []
        for i, spec in enumerate(job.metrics):
            if i in self.errors:
                frames.append(
                    _frame([_metric_row(job, suite, run_id, spec, "error", self.errors[i])])
                )
                continue
            declared = declared_outputs(spec.cls)
            variants = dict.fromkeys([*self.collected[i], *([""] if not self.collected[i] else [])])
            for variant in variants:
                hib = _stored_direction(declared, variant)
                if self.dropped:
                    frames.append(
                        _dropped_rows(self.dropped, job, suite, run_id, spec, variant, hib)
                    )
                c = self.collected[i].get(variant)
                if c is None:
                    continue
                frames.append(c.score_rows(base, spec, variant, hib))
                if c.curves:
                    curve_frames.append(c.curve_rows(job, suite, run_id, spec, variant))
        frames += [
            _frame([_metric_row(job, suite, run_id, s, "skipped", r)])
            for s, r in job.skipped_metrics
        ]
        scores = _frame(pd.concat(frames, ignore_index=True))
        curves = _curve_frame(pd.concat(curve_frames, ignore_index=True)) if curve_frames else None
        return scores, curves


def _cache_ident(job: Job, ds: Dataset, model: ExplainedModel) -> dict[str, Any]:
    """Everything but the batch that decides the attributions (``attribution_cache``)."""
    return {
        "dataset": {"name": job.dataset.name, "spec": ds.spec()},
        "model": {
            "name": job.model.name,
            "params": job.model.params_json,
            "weights": state_hash(model.module),
            "task": model.task,
        },
        "method": {
            "name": job.method.name,
            "class": f"{job.method.cls.__module__}:{job.method.cls.__qualname__}",
            "params": job.method.params_json,
        },
    }
