"""Run a suite: plan its jobs, dispatch them to an executor, store the results.

``run_suite`` builds the datasets and checks the user's models before any folder exists, plans
the jobs (``benchbox.planner``), hands the unfinished ones to the local executor (here, a
(dataset, model) pair's model at a time) or to Dask (``benchbox.dask_executor``), and finalizes
the run folder (``benchbox.store``) with its manifest. What one job does, from the test split to
its rows, is ``benchbox.jobs.execute_job``; what the jobs of a run share, and how a finished job
is committed, ``benchbox.dispatch.RunContext``. Finished jobs are written atomically by the
store; a failing method or metric becomes ``status="error"`` rows with the message and the run
goes on.

``run_suite(..., resume=RUN_DIR)`` reopens a killed run's folder (same suite hash and device, else
a ``UserError``), skips its committed jobs, runs the rest and finalizes exactly as an uninterrupted
run: the stored rows are gathered in job order, whichever session or worker computed them.

Environment: ``BENCHBOX_ATTRIBUTION_CACHE=0`` turns the attribution cache off;
``BENCHBOX_FAULT_AFTER``/``BENCHBOX_FAULT_ONCE`` are test hooks (``benchbox.store.fault_point``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ._version import __version__
from .attribution_cache import cache_enabled
from .core import (
    Dataset,
)
from .dispatch import Reporter, RunContext, Silent, pair_key
from .errors import SuiteError, UserError
from .jobs import build_dataset, model_seed
from .outputs import declared_outputs
from .params import shown
from .planner import Job, plan
from .store import RunStore, read_summary
from .suite import DEVICE, DEVICES, Suite

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
    rep = reporter or Silent()
    dev = resolve_device(
        *((suite.device, suite.source) if device is None else (device, "--device"))
    )
    _check_executor(executor, workers, scheduler)
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
    datasets, jobs = _checked_plan(suite, store.finished() if store is not None else set())
    if store is None:
        store, note = _new_store(suite, dev, output, started_at), ""
    else:
        note = f"resumed {store.path}: {len(store.finished())} of {len(jobs)} jobs already finished"
        rep.status(note)
    ctx = RunContext(suite, dev, store, datasets, _batches(suite, datasets), rep, use_cache)
    _dispatch(
        ctx, [j for j in jobs if j.index not in store.finished()], executor, workers, scheduler
    )
    facts = {"started_at": started_at, "resumed": resume is not None, "executor": executor}
    manifest = _manifest(ctx, facts, use_cache, round(time.perf_counter() - started, 3))
    summary = store.finalize(manifest, seed=suite.seed)
    failed = any(j.get("status") == "error" for j in manifest["jobs"])
    return RunResult(store.path, store.run_id, summary, manifest, failed, note)


def _checked_plan(suite: Suite, finished: set[int]) -> tuple[dict[str, Dataset], list[Job]]:
    """The built datasets and the jobs. Datasets are built before anything runs, so a bad path
    or parameter stops the run (exit 2) before any work or any results folder exists, and the
    plan sees what each one provides. So are the user's models and weights files of the jobs
    not ``finished`` (cheap checks, no training): a corrupt checkpoint is an input error too."""
    datasets = {d.path: build_dataset(d, suite) for d in suite.datasets}
    jobs = plan(suite, {path: frozenset(ds.provides) for path, ds in datasets.items()})
    preflight_models(suite, datasets, [j for j in jobs if j.index not in finished])
    return datasets, jobs


def _new_store(suite: Suite, dev: torch.device, output: Path | None, started_at: str) -> RunStore:
    """A new run folder; what a resume checks is written now, so a run killed at any later
    point can resume."""
    meta = {
        "device": str(dev),
        "resolved_suite": suite.resolved(),
        "suite_file": suite.source,
        "started_at": started_at,
    }
    return RunStore.create(output or suite.output, suite.name, suite.hash, meta)


def _check_executor(executor: str, workers: int | None, scheduler: str | None) -> None:
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


def _batches(suite: Suite, datasets: Mapping[str, Dataset]) -> dict[str, int]:
    """Batches of each dataset's evaluated test split (the progress bar's units)."""
    return {path: -(-_n_eval(ds, suite.limit) // suite.batch_size) for path, ds in datasets.items()}


def _dispatch(
    ctx: RunContext, todo: list[Job], executor: str, workers: int | None, scheduler: str | None
) -> None:
    """Run the unfinished jobs ``todo``: here, a (dataset, model) pair's model at a time, or on
    Dask; each finished job is committed through ``ctx``."""
    suite = ctx.suite
    ctx.rep.start(
        sum(ctx.n_batches[j.dataset.path] for j in todo if j.skip_reason is None)
        + len(suite.datasets) * len(suite.models)
    )
    if executor == "dask":
        from .dask_executor import run_dask

        run_dask(ctx, todo, workers=workers, scheduler=scheduler)
        return
    for d in suite.datasets:
        for m in suite.models:
            pair = [j for j in todo if j.dataset is d and j.model is m]
            model, model_error = ctx.model_for(d, m, pair)
            for job in pair:
                ctx.commit(*ctx.run_local(job, model, model_error))
            del model  # one pair's model at a time


def _manifest(
    ctx: RunContext, facts: dict[str, Any], use_cache: bool, wall_time_s: float
) -> dict[str, Any]:
    """``manifest.json``: the resolved suite, versions, device, models, jobs and outputs."""
    suite, store, dev = ctx.suite, ctx.store, ctx.dev
    record = store.record()
    infos = store.job_infos()
    return {
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
        "started_at": record.get("started_at", facts["started_at"]),
        "resumed_at": facts["started_at"] if facts["resumed"] else None,
        "executor": facts["executor"],
        "wall_time_s": wall_time_s,
        "attribution_cache": {
            "enabled": use_cache,
            "hits": sum(int(j.get("cache_hits", 0)) for j in infos),
            "misses": sum(int(j.get("cache_misses", 0)) for j in infos),
        },
        "models": [
            info
            for d_i in range(len(suite.datasets))
            for m_i in range(len(suite.models))
            if (info := store.model_info(pair_key(d_i, m_i))) is not None
        ],
        "jobs": infos,
        # each metric's directions and diagnostics, which the report and compare read
        "outputs": {spec.name: declared_outputs(spec.cls) for spec in suite.metrics},
    }


def _stored_result(store: RunStore, note: str) -> RunResult:
    """A finalized run read back from its files."""
    manifest = json.loads((store.path / "manifest.json").read_text())
    failed = any(j.get("status") == "error" for j in manifest.get("jobs", []))
    summary = read_summary(store.path / "summary.csv")
    return RunResult(store.path, store.run_id, summary, manifest, failed, note)


def _n_eval(ds: Dataset, limit: int | None) -> int:
    n = ds.split_size("test")
    return n if limit is None else min(n, limit)


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
                check(datasets[d_path], seed=model_seed(spec, suite))
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
    datasets = {d.path: build_dataset(d, suite) for d in suite.datasets}
    problems = [
        f"{d.path}.{d.name}: {line}" for d in suite.datasets for line in datasets[d.path].verify()
    ]
    if problems:
        raise SuiteError(suite.source, problems)
    jobs = plan(suite, {path: frozenset(ds.provides) for path, ds in datasets.items()})
    preflight_models(suite, datasets, jobs)
    return jobs


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
