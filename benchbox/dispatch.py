"""What every job of one run shares, and how a finished job is committed.

``RunContext`` holds the suite, the device, the run's store, the built datasets and the
progress reporter; both executors use it to build each (dataset, model) pair's model once,
settle the jobs that run no batch (skipped, or their model failed) and commit every finished
job's rows. The local executor (``benchbox.runner``) runs the rest with ``run_local``; the Dask
one (``benchbox.dask_executor``) sends them to workers, which call ``benchbox.jobs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from .attribution_cache import AttributionCache
from .core import Dataset, ExplainedModel
from .errors import UserError
from .jobs import JobResult, build_model, execute_job, job_rows
from .planner import Job, replan
from .store import RunStore, fault_point
from .suite import ComponentSpec, Suite

__all__ = ["Reporter", "RunContext", "pair_key"]


class Reporter(Protocol):
    """Progress callbacks; the CLI draws a rich progress bar, the API passes none."""

    def start(self, total: int) -> None: ...
    def status(self, text: str) -> None: ...
    def advance(self, n: int = 1) -> None: ...


class Silent:
    """A reporter that says nothing (the API's default)."""

    def start(self, total: int) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def pair_key(d_index: int, m_index: int) -> str:
    return f"{d_index:03d}-{m_index:03d}"


@dataclass
class RunContext:
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
                model = build_model(m, self.datasets[d.path], suite, self.dev)
                key = pair_key(suite.datasets.index(d), suite.models.index(m))
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
    ) -> tuple[Job, JobResult | None]:
        """``job`` re-checked against the built model, and its result if it runs no batches
        (skipped, or its model failed); ``None``: the job must be executed."""
        n = self.n_batches[job.dataset.path]
        if model is not None and job.skip_reason is None:
            d_caps = frozenset(self.datasets[job.dataset.path].provides)
            job = replan(job, self.suite.metrics, d_caps, frozenset(model.provides))
            if job.skip_reason is not None:
                self.rep.advance(n)
        run_id = self.store.run_id
        if job.skip_reason is not None:
            return job, JobResult(job_rows(job, self.suite, run_id, "skipped", job.skip_reason))
        if model is None:
            self.rep.advance(n)
            message = model_error or "model unavailable"
            return job, JobResult(job_rows(job, self.suite, run_id, "error", message))
        return job, None

    def run_local(
        self, job: Job, model: ExplainedModel | None, model_error: str | None
    ) -> tuple[Job, JobResult]:
        """``job`` settled, or executed in this process; its result carries its wall time."""
        t0 = time.perf_counter()
        self.rep.status(job.label)
        job, result = self.settle(job, model, model_error)
        if result is None:
            assert model is not None  # settle returned a result otherwise
            result = execute_job(
                job,
                self.datasets[job.dataset.path],
                model,
                self.suite,
                self.dev,
                self.store.run_id,
                self.rep.advance,
                AttributionCache() if self.use_cache else None,
                self.store.path,
            )
        result.info = {"wall_time_s": round(time.perf_counter() - t0, 4), **result.info}
        return job, result

    def commit(self, job: Job, result: JobResult) -> None:
        """Write one finished job's rows and facts (atomically, the scores part last)."""
        info = {
            "index": job.index,
            "dataset": job.dataset.name,
            "model": job.model.name,
            "replica": job.model.replica,
            "method": job.method.name,
            "status": "skipped" if job.skip_reason else ("error" if result.failed else "ok"),
            **result.info,
        }
        self.store.write_job(job.index, result.scores, result.curves, info)
