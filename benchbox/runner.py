"""Run a suite: the local executor (one process, one device) and the entry to the Dask one.

For each planned job it streams the test split in batches to the device, computes the method's
attributions once per batch (or takes them from the attribution cache) and hands them to every
metric of the job. Finished jobs are written atomically by the store; a failing method or metric
becomes ``status="error"`` rows with the message and the run goes on.

``run_suite(..., resume=RUN_DIR)`` reopens a killed run's folder (same suite hash and device, else
a ``UserError``), skips its committed jobs, runs the rest and finalizes exactly as an uninterrupted
run: the stored rows are gathered in job order, whichever session or worker computed them.
``executor="dask"`` runs the jobs as Dask distributed tasks (``benchbox.dask_executor``).

Environment: ``BENCHBOX_ATTRIBUTION_CACHE=0`` turns the attribution cache off;
``BENCHBOX_FAULT_AFTER``/``BENCHBOX_FAULT_ONCE`` are test hooks (``benchbox.store.fault_point``).
"""

from __future__ import annotations

import ctypes
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import __version__
from .attribution_cache import AttributionCache, attribution_key, cache_enabled, state_hash
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
from .errors import SuiteError, UserError
from .params import canonical_json, shown
from .planner import Job, plan, replan
from .seeding import derive_seed, make_generator
from .store import RunStore, fault_point, read_summary
from .suite import DEVICE, DEVICES, ComponentSpec, Suite

__all__ = [
    "EXECUTORS",
    "Reporter",
    "RunResult",
    "check_files",
    "preflight_models",
    "resolve_device",
    "run_suite",
]

EXECUTORS = ("local", "dask")

_VERSIONED = ("torch", "captum", "numpy", "pandas", "scipy", "pyarrow", "pydantic", "quantus")


class Reporter(Protocol):
    """Progress callbacks; the CLI draws a rich progress bar, the API passes none."""

    def start(self, total: int) -> None: ...
    def status(self, text: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


@dataclass
class RunResult:
    path: Path
    run_id: str
    summary: pd.DataFrame
    manifest: dict[str, Any]
    failed: bool
    note: str = ""  # e.g. what a resume found: "3 of 8 jobs already finished"

    @property
    def computed(self) -> bool:
        """Whether any row has a value; ``benchbox run`` exits 1 for a run that computed
        nothing (every row skipped or failed), never 0."""
        return bool((self.summary["n"] > 0).any()) if len(self.summary) else False

    @property
    def scores(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "scores.parquet")

    @property
    def curves(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "curves.parquet")


def resolve_device(requested: str, source: str = "suite") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; a clear error when CUDA is asked for, absent,
    or the name is none of these (``--device tpu`` must not quietly run on the CPU)."""
    if not isinstance(requested, str) or not DEVICE.match(requested):
        raise UserError(
            f"{source}: unknown device {shown(requested)}; valid devices: {DEVICES} "
            f"(N = 0, 1, ...: a GPU's index)"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"{source}: device: {requested!r} requested but no CUDA device is available to "
                f"torch {torch.__version__}; use device: cpu (or --device cpu), or install a "
                f"CUDA build of torch on a machine with a GPU"
            )
        dev = torch.device(requested)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"{source}: device: {requested!r} but only {torch.cuda.device_count()} CUDA "
                f"device(s) are visible; use cuda:0"
            )
        return dev
    return torch.device("cpu")


def run_suite(
    suite: Suite,
    *,
    device: str | None = None,
    output: Path | None = None,
    reporter: Reporter | None = None,
    resume: Path | str | None = None,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    cache: bool | None = None,
) -> RunResult:
    """Run every job of ``suite`` and store the results; returns where they went.

    Args:
        device: overrides the suite's device (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        output: results root (default: the suite's ``output``); the run goes to
            ``<output>/<suite>/<run_id>/``.
        resume: a run folder of the same suite to finish instead of starting a new run; a
            finalized one is returned as it is (``note`` says so).
        executor: ``local`` (this process) or ``dask`` (jobs as Dask distributed tasks).
        workers: Dask only: size of the ``LocalCluster`` to start (default: CPU count).
        scheduler: Dask only: address of a running scheduler to join instead (``tcp://...``).
        cache: use the attribution cache; default: on unless ``BENCHBOX_ATTRIBUTION_CACHE=0``.
    """
    rep = reporter or _Silent()
    dev = (
        resolve_device(suite.device, source=suite.source)
        if device is None
        else resolve_device(device, source="--device")
    )
    if executor not in EXECUTORS:
        raise UserError(
            f"--executor: unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}"
        )
    if executor == "local" and (workers is not None or scheduler is not None):
        raise UserError(
            "--workers/--scheduler apply to the Dask executor only; add --executor dask"
        )
    if executor == "dask":
        from .dask_executor import check_dask

        check_dask(workers, scheduler)
    use_cache = cache_enabled(cache)
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat()

    store: RunStore | None = None
    if resume is not None:
        store = RunStore.open(Path(resume), suite.hash, str(dev), suite.source)
        if store.finalized:
            note = f"{store.path}: run already finalized; nothing to resume"
            rep.status(note)
            return _stored_result(store, note)
    # Datasets are built before anything runs, so a bad path or parameter stops the run (exit 2)
    # before any work or any results folder exists, and the plan sees what each one provides.
    datasets = {d.path: _build_dataset(d, suite) for d in suite.datasets}
    jobs = plan(suite, {path: frozenset(ds.provides) for path, ds in datasets.items()})
    # So are the user's models and weights files (cheap checks, no training): a missing or
    # corrupt checkpoint is an input error too, found before the run folder exists.
    finished = store.finished() if store is not None else set()
    preflight_models(suite, datasets, [j for j in jobs if j.index not in finished])
    if store is None:
        # What a resume checks is written now, so a run killed at any later point can resume.
        meta = {
            "device": str(dev),
            "resolved_suite": suite.resolved(),
            "suite_file": suite.source,
            "started_at": started_at,
        }
        store = RunStore.create(output or suite.output, suite.name, suite.hash, meta)
        note = ""
    else:
        note = f"resumed {store.path}: {len(store.finished())} of {len(jobs)} jobs already finished"
        rep.status(note)
    done = store.finished()

    n_batches = {
        path: -(-_n_eval(ds, suite.limit) // suite.batch_size) for path, ds in datasets.items()
    }
    todo = [j for j in jobs if j.index not in done]
    rep.start(
        sum(n_batches[j.dataset.path] for j in todo if j.skip_reason is None)
        + len(suite.datasets) * len(suite.models)
    )
    ctx = _RunContext(suite, dev, store, datasets, n_batches, rep, use_cache)
    if executor == "dask":
        from .dask_executor import run_dask

        run_dask(ctx, todo, workers=workers, scheduler=scheduler)
    else:
        for d in suite.datasets:
            for m in suite.models:
                pair = [j for j in todo if j.dataset is d and j.model is m]
                model, model_error = ctx.model_for(d, m, pair)
                for job in pair:
                    ctx.commit(*ctx.run_local(job, model, model_error))
                del model  # one pair's model at a time

    record = store.record()
    infos = store.job_infos()
    manifest = {
        "run_id": store.run_id,
        "suite": suite.name,
        "suite_file": suite.source,
        "suite_hash": suite.hash,
        "resolved_suite": suite.resolved(),
        "seed": suite.seed,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "benchbox_version": __version__,
        "versions": _versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git_state(),
        "started_at": record.get("started_at", started_at),
        "resumed_at": started_at if resume is not None else None,
        "executor": executor,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "attribution_cache": {
            "enabled": use_cache,
            "hits": sum(int(j.get("cache_hits", 0)) for j in infos),
            "misses": sum(int(j.get("cache_misses", 0)) for j in infos),
        },
        "models": [
            info
            for d_i in range(len(suite.datasets))
            for m_i in range(len(suite.models))
            if (info := store.model_info(_pair_key(d_i, m_i))) is not None
        ],
        "jobs": infos,
    }
    summary = store.finalize(manifest, seed=suite.seed)
    failed = any(j.get("status") == "error" for j in infos)
    return RunResult(store.path, store.run_id, summary, manifest, failed, note)


def _pair_key(d_index: int, m_index: int) -> str:
    return f"{d_index:03d}-{m_index:03d}"


def _stored_result(store: RunStore, note: str) -> RunResult:
    """A finalized run read back from its files."""
    manifest = json.loads((store.path / "manifest.json").read_text())
    failed = any(j.get("status") == "error" for j in manifest.get("jobs", []))
    summary = read_summary(store.path / "summary.csv")
    return RunResult(store.path, store.run_id, summary, manifest, failed, note)


@dataclass
class _RunContext:
    """What every job of one run shares: the suite, device, store, built datasets, progress."""

    suite: Suite
    dev: torch.device
    store: RunStore
    datasets: dict[str, Dataset]
    n_batches: dict[str, int]
    rep: Reporter
    use_cache: bool

    def model_for(
        self, d: ComponentSpec, m: ComponentSpec, pair: list[Job]
    ) -> tuple[ExplainedModel | None, str | None]:
        """Build (train or load) the pair's model if one of its ``pair`` jobs needs it; the
        model's facts go to the store at once, so a resumed run's manifest still lists them."""
        suite = self.suite
        model: ExplainedModel | None = None
        model_error: str | None = None
        if any(j.skip_reason is None for j in pair):
            self.rep.status(f"building {m.name} on {d.name}")
            try:
                model = _build_model(m, self.datasets[d.path], suite, self.dev)
                key = _pair_key(suite.datasets.index(d), suite.models.index(m))
                info = {
                    "dataset": d.name,
                    "model": m.name,
                    "model_params": m.params,
                    "replica": m.replica,
                    "replicas": m.replicas,
                }
                self.store.write_model_info(key, {**info, **model.info})
            except UserError as exc:
                model_error = f"{suite.source}: {m.path}: {exc}"
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # user code, SystemExit too: error rows; the run goes on
                model_error = f"building model {m.name!r} failed: {type(exc).__name__}: {exc}"
            fault_point("model")
        self.rep.advance()
        return model, model_error

    def settle(
        self, job: Job, model: ExplainedModel | None, model_error: str | None
    ) -> tuple[Job, pd.DataFrame | None]:
        """``job`` re-checked against the built model, and its rows if it runs no batches
        (skipped, or its model failed); ``None`` rows: the job must be executed."""
        n = self.n_batches[job.dataset.path]
        if model is not None and job.skip_reason is None:
            d_caps = frozenset(self.datasets[job.dataset.path].provides)
            job = replan(job, self.suite.metrics, d_caps, frozenset(model.provides))
            if job.skip_reason is not None:
                self.rep.advance(n)
        run_id = self.store.run_id
        if job.skip_reason is not None:
            return job, _job_rows(job, self.suite, run_id, "skipped", job.skip_reason)
        if model is None:
            self.rep.advance(n)
            message = model_error or "model unavailable"
            return job, _job_rows(job, self.suite, run_id, "error", message)
        return job, None

    def run_local(
        self, job: Job, model: ExplainedModel | None, model_error: str | None
    ) -> tuple[Job, pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
        t0 = time.perf_counter()
        self.rep.status(job.label)
        job, rows = self.settle(job, model, model_error)
        if rows is not None:
            return job, rows, None, {"wall_time_s": round(time.perf_counter() - t0, 4)}
        assert model is not None  # settle returned rows otherwise
        cache = AttributionCache() if self.use_cache else None
        scores, curves = _execute_job(
            job,
            self.datasets[job.dataset.path],
            model,
            self.suite,
            self.dev,
            self.store.run_id,
            self.rep.advance,
            cache,
            self.store.path,
        )
        info = {"wall_time_s": round(time.perf_counter() - t0, 4), **_cache_counts(cache)}
        return job, scores, curves, info

    def commit(
        self,
        job: Job,
        scores: pd.DataFrame,
        curves: pd.DataFrame | None,
        extra: dict[str, Any],
    ) -> None:
        """Write one finished job's rows and facts (atomically, the scores part last)."""
        job_failed = bool((scores["status"] == "error").any())
        info = {
            "index": job.index,
            "dataset": job.dataset.name,
            "model": job.model.name,
            "replica": job.model.replica,
            "method": job.method.name,
            "status": "skipped" if job.skip_reason else ("error" if job_failed else "ok"),
            **extra,
        }
        self.store.write_job(job.index, scores, curves, info)


def _cache_counts(cache: AttributionCache | None) -> dict[str, int]:
    return {} if cache is None else {"cache_hits": cache.hits, "cache_misses": cache.misses}


def _n_eval(ds: Dataset, limit: int | None) -> int:
    n = ds.split_size("test")
    return n if limit is None else min(n, limit)


def _build_dataset(spec: ComponentSpec, suite: Suite) -> Dataset:
    try:
        ds = spec.build()
    except UserError as exc:
        raise UserError(f"{suite.source}: {spec.path}.{spec.name}: {exc}") from exc
    if not isinstance(ds, Dataset):
        raise UserError(f"{suite.source}: {spec.path}: {spec.name!r} is not a benchbox Dataset")
    return ds


def preflight_models(suite: Suite, datasets: Mapping[str, Dataset], jobs: list[Job]) -> None:
    """``ModelBuilder.preflight`` of every (dataset, model) pair that one of ``jobs`` will
    build: imports the user's module, constructs the network, reads and applies the weights
    (``benchbox.models.external``); built-in models have nothing to check. Any failure is a
    ``UserError`` naming the suite file and the model's YAML path (exit 2)."""
    pairs = {(j.dataset.path, j.model.path): j.model for j in jobs if j.skip_reason is None}
    for (d_path, _), spec in pairs.items():
        where = f"{suite.source}: {spec.path}"
        try:
            builder = spec.build()
            check = getattr(builder, "preflight", None)
            if check is not None:
                check(datasets[d_path], seed=_model_seed(spec, suite))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the user's constructor or factory
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"{where}: checking the model {spec.name!r} raised {type(exc).__name__}"
                f"{': ' + first if first else ''}; fix its module or parameters"
            ) from exc


def check_files(suite: Suite) -> list[Job]:
    """What a run checks before any work, and more (``benchbox validate --deep``): build every
    dataset, read every file it lists (``Dataset.verify``), preflight every model (module,
    weights). Raises ``UserError`` (``SuiteError`` listing every unreadable file); returns the
    plan."""
    datasets = {d.path: _build_dataset(d, suite) for d in suite.datasets}
    problems = [
        f"{d.path}.{d.name}: {line}" for d in suite.datasets for line in datasets[d.path].verify()
    ]
    if problems:
        raise SuiteError(suite.source, problems)
    jobs = plan(suite, {path: frozenset(ds.provides) for path, ds in datasets.items()})
    preflight_models(suite, datasets, jobs)
    return jobs


def _model_seed(spec: ComponentSpec, suite: Suite) -> int:
    return derive_seed(suite.seed, "model", spec.name, spec.params_json)


def _build_model(
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
    seed = _model_seed(spec, suite)
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
        "higher_is_better": bool(getattr(spec.cls, "higher_is_better", True)),
        "status": status,
        "message": message,
    }


def _job_rows(job: Job, suite: Suite, run_id: str, status: str, message: str) -> pd.DataFrame:
    """One row per metric for a job that produced no values (skipped or failed)."""
    rows = [_metric_row(job, suite, run_id, s, status, message) for s in job.metrics]
    rows += [_metric_row(job, suite, run_id, s, "skipped", r) for s, r in job.skipped_metrics]
    return _frame(rows)


def _frame(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(rows) if isinstance(rows, list) else rows
    for col in ("label", "target", "prediction"):
        df[col] = df[col].astype("Int64")
    return df


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


def _variant_direction(per_variant: Mapping[str, bool | None], variant: str, default: bool) -> bool:
    """A variant's direction: its own entry, else its last dotted part's (``topk.com_shift`` ->
    ``com_shift``), else the metric's. A metric with mixed outputs (an attack's map similarity
    ↑ vs its centre-of-mass shift ↓) states each; None marks a diagnostic (stored with the
    metric's default)."""
    hib = per_variant.get(variant)
    if hib is None and "." in variant:
        hib = per_variant.get(variant.rsplit(".", 1)[1])
    return default if hib is None else bool(hib)


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


def _execute_job(
    job: Job,
    ds: Dataset,
    model: ExplainedModel,
    suite: Suite,
    dev: torch.device,
    run_id: str,
    advance: Callable[[int], None],
    cache: AttributionCache | None = None,
    examples: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One job's rows: stream the test split, explain each batch once (or take the
    attributions from ``cache``), score them with every metric of the job.

    Samples whose input, model output or map holds NaN/Inf are taken out of the batch before
    the next step and get ``status="error"`` rows saying which (the other samples are scored).
    ``examples``: the run folder, where a few inputs and maps of the first batch are kept for
    the report's example grid (``benchbox.report.save_examples``)."""
    try:
        method: Method = job.method.build()
        metrics: list[Metric] = [s.build() for s in job.metrics]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # validated already; a failure here is recorded, not fatal
        return _job_rows(job, suite, run_id, "error", f"building the job failed: {exc}"), None
    # Separate generators: adding a metric never changes another's draws or the method's.
    method_gen = make_generator(derive_seed(suite.seed, *job.key, "method"), dev)
    metric_gens = [
        make_generator(derive_seed(suite.seed, *job.key, "metric", s.name, s.params_json), dev)
        for s in job.metrics
    ]
    rebuilt: dict[str, ExplainedModel] = {}

    def rebuild(**overrides: Any) -> ExplainedModel:
        key = canonical_json(overrides)
        if key not in rebuilt:
            try:
                rebuilt[key] = _build_model(job.model, ds, suite, dev, **overrides)
            except TypeError as exc:  # the builder has no such parameter
                raise UserError(
                    f"model {job.model.name!r} cannot be rebuilt with {overrides}: {exc}"
                ) from exc
        return rebuilt[key]

    if cache is not None:
        # Everything but the batch that decides the attributions (attribution_cache docstring).
        ident: dict[str, Any] = {
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
    collected: list[dict[str, _Collected]] = [{} for _ in metrics]
    errors: dict[int, str] = {}
    method_error: str | None = None
    dropped: list[_Dropped] = []  # samples taken out for non-finite values, with the reason

    reading = _Guarded(ds.batches("test", suite.batch_size, suite.limit), "reading the test data")
    for cpu_batch in reading:
        if method_error is not None:
            advance(1)
            continue
        batch = cpu_batch.to(dev)
        try:
            with torch.no_grad():
                logits = model(batch.x)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the model's code failed on this batch: the job's rows
            method_error = f"model {job.model.name!r} failed: {type(exc).__name__}: {exc}"
            advance(1)
            continue
        pred = logits.argmax(dim=1)
        # A one-score model (anomaly detection) has a single "class" to explain, whatever the
        # label says; otherwise the suite chooses the prediction or the label.
        if model.num_classes == 1:
            target = torch.zeros_like(pred)
        else:
            target = pred if suite.target == "prediction" else batch.label
        batch = batch.with_target(target)
        # Samples with a non-finite input, or a finite input the model maps to a non-finite
        # output, leave the batch here (one host sync for both checks).
        bad_input = ~_finite_rows(batch.x)
        bad_output = ~_finite_rows(logits) & ~bad_input
        keep = ~(bad_input | bad_output)
        if not bool(keep.all()):
            _record_dropped(dropped, batch, target, pred, bad_input, _NONFINITE_INPUT)
            _record_dropped(dropped, batch, target, pred, bad_output, _NONFINITE_OUTPUT)
            if not bool(keep.any()):
                advance(1)
                continue
            batch, target, pred = batch.select(keep), target[keep], pred[keep]
        try:
            attr = None
            if cache is not None:
                key = attribution_key(
                    **ident, ids=batch.ids, target=target, generator=method_gen, device=dev
                )
                attr = cache.load(key, dev, method_gen)
            if attr is None:
                attr = method.attribute(model, batch.x, target, generator=method_gen)
                _check_attribution(job.method.name, attr, batch)
                if cache is not None:
                    cache.save(key, attr, method_gen)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the job's rows say why; the run goes on
            method_error = f"method {job.method.name!r} failed: {type(exc).__name__}: {exc}"
            advance(1)
            continue
        keep = _finite_rows(attr)
        if not bool(keep.all()):
            _record_dropped(dropped, batch, target, pred, ~keep, _NONFINITE_MAP)
            if not bool(keep.any()):
                advance(1)
                continue
            batch, target, pred, attr = batch.select(keep), target[keep], pred[keep], attr[keep]
        if examples is not None:
            _save_examples(examples, job, batch, attr)
            examples = None  # the first batch only
        fault_point("batch")
        labels = batch.label.cpu().numpy()
        targets = target.cpu().numpy()
        preds = pred.cpu().numpy()
        for i, (metric, gen) in enumerate(zip(metrics, metric_gens, strict=True)):
            if i in errors:
                continue
            ctx = MetricContext(model, batch, attr, method, gen, suite.batch_size, rebuild)
            try:
                out = metric.score(ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # recorded as this metric's error rows
                errors[i] = f"metric {job.metrics[i].name!r} failed: {type(exc).__name__}: {exc}"
                continue
            outputs = {"": out} if isinstance(out, MetricOutput) else dict(out)
            for variant, o in outputs.items():
                c = collected[i].setdefault(variant, _Collected())
                c.ids.extend(batch.ids)
                c.labels.append(labels)
                c.targets.append(targets)
                c.preds.append(preds)
                c.values.append(_owned(o.values))
                c.reasons.extend(o.reasons or [None] * len(batch))
                if o.curves is not None:
                    c.curves.append(_owned(o.curves))
                    if o.curve_x is not None:
                        c.curve_x = o.curve_x.detach().double().cpu().numpy()
        _release_freed_memory()
        advance(1)

    method_error = method_error or reading.error
    if method_error is not None:
        return _job_rows(job, suite, run_id, "error", method_error), None

    base = _base_columns(job, suite, run_id)
    frames: list[pd.DataFrame] = []
    curve_frames: list[pd.DataFrame] = []
    for i, spec in enumerate(job.metrics):
        if i in errors:
            frames.append(_frame([_metric_row(job, suite, run_id, spec, "error", errors[i])]))
            continue
        default_hib = bool(getattr(spec.cls, "higher_is_better", True))
        per_variant = getattr(spec.cls, "variant_higher_is_better", {})
        for variant in dict.fromkeys([*collected[i], *([""] if not collected[i] else [])]):
            hib = _variant_direction(per_variant, variant, default_hib)
            if dropped:
                frames.append(_dropped_rows(dropped, job, suite, run_id, spec, variant, hib))
            if variant not in collected[i]:
                continue
            c = collected[i][variant]
            values = np.concatenate(c.values)
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "metric": spec.name,
                        "metric_params": spec.params_json,
                        "variant": variant,
                        "sample_id": c.ids,
                        "label": np.concatenate(c.labels),
                        "target": np.concatenate(c.targets),
                        "prediction": np.concatenate(c.preds),
                        "value": values,
                        "higher_is_better": hib,
                        "status": "ok",
                        "message": c.reasons,
                    }
                )
            )
            if c.curves:
                curves = np.concatenate(c.curves)
                n, t = curves.shape
                xs = c.curve_x if c.curve_x is not None else np.arange(t, dtype=np.float64)
                curve_frames.append(
                    pd.DataFrame(
                        {
                            "run_id": run_id,
                            "suite": suite.name,
                            "dataset": job.dataset.name,
                            "model": job.model.name,
                            "replica": job.model.replica,
                            "method": job.method.name,
                            "metric": spec.name,
                            "variant": variant,
                            "sample_id": np.repeat(np.asarray(c.ids, dtype=object), t),
                            "step": np.tile(np.arange(t, dtype=np.int32), n),
                            "x": np.tile(xs, n),
                            "y": curves.reshape(-1),
                        }
                    )
                )
    frames += [
        _frame([_metric_row(job, suite, run_id, s, "skipped", r)]) for s, r in job.skipped_metrics
    ]
    scores = _frame(pd.concat(frames, ignore_index=True))
    curves_df = pd.concat(curve_frames, ignore_index=True) if curve_frames else None
    return scores, curves_df


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git_state() -> dict[str, Any] | None:
    """Commit of the benchbox source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            != ""
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}
