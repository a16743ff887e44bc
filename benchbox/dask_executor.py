"""The Dask executor: a suite's jobs as tasks on Dask distributed (extra ``benchbox[dask]``).

``run_suite(suite, executor="dask", workers=N)`` starts a ``LocalCluster`` of ``N`` worker
processes with one thread each; ``scheduler="tcp://host:8786"`` joins a running cluster instead.
The local cluster's workers are *spawned*: a script of yours that calls ``run_suite`` this way
needs the usual ``if __name__ == "__main__":`` guard, or each worker re-runs it on start-up
(the ``benchbox`` command has one).

Division of work (chosen so that a worker's death never loses or duplicates rows):

1. The driver builds every model once, before submitting anything: trained models land in the
   weight cache (``$BENCHBOX_CACHE/models``), so the workers load them instead of N workers
   training the same model at once. The driver records the models' facts and writes the rows of
   jobs that run no batches (skipped, or their model failed to build).
2. Each task runs one job in a worker: it builds the job's dataset and loads the model (both kept
   for the worker's next job of the same pair), computes the rows exactly as the local executor
   does (same seeds: they derive from the suite seed and the job's identity, not from where it
   runs) and *returns* its frames. Workers need the same files as the driver (datasets, weights,
   ``$BENCHBOX_CACHE``) but never write results.
3. The driver commits each returned job into the run folder as it arrives (atomically, as the
   local executor does), so a killed driver resumes with ``--resume`` like a local run, and then
   finalizes: rows are gathered in job order, so completion order does not matter.

A task whose worker dies is rescheduled by Dask on another worker; a task that raises is retried
twice (``retries=2``); a job that still fails becomes ``status="error"`` rows and the run goes on.

GPUs: when the device is CUDA, each task asks for the Dask resource ``GPU: 1``, so a worker runs
one job at a time per GPU it declares. The local cluster declares ``GPU=1`` per worker (all
workers then share the visible GPUs: set ``CUDA_VISIBLE_DEVICES`` per worker, or start one
worker per GPU yourself); workers of a cluster you join must be started with
``dask worker ADDRESS --resources GPU=1`` (e.g. one per GPU with ``CUDA_VISIBLE_DEVICES=i``),
else the tasks wait for a GPU worker forever.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .core import Dataset, ExplainedModel
from .errors import UserError
from .store import fault_point

if TYPE_CHECKING:
    from .dispatch import RunContext
    from .jobs import JobResult
    from .planner import Job
    from .suite import Suite

__all__ = ["check_dask", "run_dask"]

_INSTALL = 'pip install "benchbox[dask]"'


def check_dask(workers: int | None, scheduler: str | None) -> None:
    """Raise ``UserError`` unless the Dask options can work: distributed installed, one of
    ``workers``/``scheduler``, a positive worker count."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(
            f"--executor dask: dask.distributed is not installed; {_INSTALL} "
            f"(or use --executor local)"
        ) from None
    if workers is not None and scheduler is not None:
        raise UserError(
            f"--workers {workers} and --scheduler {scheduler}: --workers starts a local cluster, "
            f"--scheduler joins a running one; give one of them"
        )
    if workers is not None and workers < 1:
        raise UserError(f"--workers: expected an integer > 0, got {workers}; e.g. --workers 2")
    if scheduler is not None and "://" not in scheduler:
        raise UserError(
            f"--scheduler: {scheduler!r} is not a scheduler address; e.g. tcp://host:8786"
        )


def run_dask(
    ctx: RunContext, todo: list[Job], *, workers: int | None, scheduler: str | None
) -> None:
    """Run ``todo`` (the run's unfinished jobs) on Dask and commit each through ``ctx``."""
    suite = ctx.suite
    tasks: list[Job] = []
    for d in suite.datasets:
        for m in suite.models:
            pair = [j for j in todo if j.dataset is d and j.model is m]
            model, model_error = ctx.model_for(d, m, pair)
            for job in pair:
                t0 = time.perf_counter()
                job, settled = ctx.settle(job, model, model_error)
                if settled is None:
                    tasks.append(job)
                else:
                    settled.info["wall_time_s"] = round(time.perf_counter() - t0, 4)
                    ctx.commit(job, settled)
            del model  # the workers load their own copy from the weight cache
    if tasks:
        _submit(ctx, tasks, workers=workers, scheduler=scheduler)


def _submit(
    ctx: RunContext, tasks: list[Job], *, workers: int | None, scheduler: str | None
) -> None:
    """Run ``tasks`` as Dask tasks (a local cluster of ``workers``, or the ``scheduler``'s) and
    commit each result as it arrives; a task that fails after its retries gets error rows."""
    from distributed import Client, LocalCluster, as_completed

    from .jobs import JobResult, job_rows

    suite = ctx.suite
    gpu = ctx.dev.type == "cuda"
    cluster = None
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="30s")
            except OSError as exc:
                raise UserError(
                    f"--scheduler {scheduler}: cannot connect ({exc}); check the address and "
                    f"that the scheduler is running"
                ) from exc
        else:
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,  # one job per process: torch threads are per process
                processes=True,
                dashboard_address=None,
                resources={"GPU": 1} if gpu else None,
            )
            client = Client(cluster)
        with client:
            futures = {
                client.submit(
                    _task,
                    suite,
                    job,
                    str(ctx.dev),
                    ctx.store.run_id,
                    ctx.use_cache,
                    str(ctx.store.path),
                    key=f"benchbox-{ctx.store.run_id}-job-{job.index}",
                    retries=2,
                    pure=False,
                    resources={"GPU": 1} if gpu else None,
                ): job
                for job in tasks
            }
            ctx.rep.status(f"{len(tasks)} jobs on Dask ({client.scheduler_info()['address']})")
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result: JobResult = future.result()
                except Exception as exc:  # after the retries: this job's rows say why
                    message = f"Dask task failed: {type(exc).__name__}: {exc}"
                    result = JobResult(job_rows(job, suite, ctx.store.run_id, "error", message))
                ctx.commit(job, result)
                ctx.rep.advance(ctx.n_batches[job.dataset.path])
    finally:
        if cluster is not None:
            cluster.close()


# -- in the worker ---------------------------------------------------------------------------------
# The last dataset and model built in this worker process: consecutive jobs of one (dataset,
# model) pair, the usual order of submission, reuse them.
_worker_state: dict[str, Any] = {}


def _task(
    suite: Suite, job: Job, device: str, run_id: str, use_cache: bool, run_dir: str | None = None
) -> JobResult:
    """Run one job in a Dask worker and return its result (the driver writes them, all
    but the example inputs and maps for the report, which go to ``run_dir/examples/`` on the
    shared file system when ``run_dir`` is given)."""
    from .attribution_cache import AttributionCache
    from .jobs import build_dataset, build_model, execute_job

    fault_point("task")
    t0 = time.perf_counter()
    dev = torch.device(device)
    d_key = (job.dataset.name, job.dataset.params_json)
    if _worker_state.get("dataset_key") != d_key:
        _worker_state.clear()
        _worker_state["dataset"] = build_dataset(job.dataset, suite)
        _worker_state["dataset_key"] = d_key
    ds: Dataset = _worker_state["dataset"]
    m_key = (job.model.name, job.model.params_json, device)
    if _worker_state.get("model_key") != m_key:
        _worker_state["model"] = build_model(job.model, ds, suite, dev, probes=False)
        _worker_state["model_key"] = m_key
    model: ExplainedModel = _worker_state["model"]
    cache = AttributionCache() if use_cache else None
    examples = Path(run_dir) if run_dir is not None else None
    result = execute_job(job, ds, model, suite, dev, run_id, lambda n: None, cache, examples)
    result.info = {
        "wall_time_s": round(time.perf_counter() - t0, 4),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        **result.info,
    }
    return result
