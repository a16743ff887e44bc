"""Plan: datasets × models × methods → jobs, matching what each component needs and provides.

A job is the unit of execution, caching, resuming and distribution: one (dataset, model, method)
with all the suite's metrics, so attributions are computed once and shared. Combinations whose
needs are not met are kept as skipped jobs (or skipped metrics inside a job) with the reason; the
store writes them as ``status="skipped"`` rows, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .core import Capability
from .suite import ComponentSpec, Suite

__all__ = ["Job", "plan", "replan"]


@dataclass(frozen=True)
class Job:
    index: int
    dataset: ComponentSpec
    model: ComponentSpec
    method: ComponentSpec
    metrics: tuple[ComponentSpec, ...]
    skipped_metrics: tuple[tuple[ComponentSpec, str], ...] = ()
    skip_reason: str | None = None  # the whole job is skipped

    @property
    def key(self) -> tuple[str, ...]:
        """Identity of the job: what its seed and its cache entries derive from.

        A model's replicas share it: their jobs draw the same random numbers (noise, baselines,
        perturbation orders), so the spread across replicas is the training's alone."""
        return tuple(f"{c.name}{c.params_json}" for c in (self.dataset, self.model, self.method))

    @property
    def label(self) -> str:
        return f"{self.dataset.name} / {self.model.label} / {self.method.name}"


def _caps(spec: ComponentSpec, attr: str) -> frozenset[Capability]:
    return frozenset(getattr(spec.cls, attr, frozenset()))


def _missing(needs: frozenset[Capability], have: frozenset[Capability]) -> str:
    return ", ".join(sorted(str(c) for c in needs - have))


def plan(
    suite: Suite, dataset_provides: Mapping[str, frozenset[Capability]] | None = None
) -> list[Job]:
    """Jobs in suite order. ``dataset_provides`` (keyed by the dataset's YAML path) overrides a
    dataset class's declared capabilities with those of the built instance: whether a folder of
    files has masks, or is 2D or 3D, is known only once it has been read."""
    jobs: list[Job] = []
    for d in suite.datasets:
        d_caps = (dataset_provides or {}).get(d.path, _caps(d, "provides"))
        for m in suite.models:
            for meth in suite.methods:
                jobs.append(
                    _job(len(jobs), d, m, meth, suite.metrics, d_caps, _caps(m, "provides"))
                )
    return jobs


def replan(
    job: Job,
    metrics: Sequence[ComponentSpec],
    dataset_provides: frozenset[Capability],
    model_provides: frozenset[Capability],
) -> Job:
    """``job`` re-checked against a built model's capabilities (a user's net without a conv layer
    has no target layer; a TorchScript module allows no hooks), so unmet needs become skips.
    ``metrics`` are the suite's, in suite order."""
    return _job(
        job.index, job.dataset, job.model, job.method, metrics, dataset_provides, model_provides
    )


def _job(
    index: int,
    d: ComponentSpec,
    m: ComponentSpec,
    meth: ComponentSpec,
    metrics: Sequence[ComponentSpec],
    d_caps: frozenset[Capability],
    m_caps: frozenset[Capability],
) -> Job:
    have = d_caps | m_caps
    where = f"neither dataset {d.name!r} nor model {m.name!r} provides"
    reason = None
    if gap := _missing(m.needs, d_caps):
        reason = f"model {m.name!r} needs {gap}, which dataset {d.name!r} does not provide"
    elif gap := _missing(meth.needs, have):
        reason = f"method {meth.name!r} needs {gap}, which {where}"
    ok: list[ComponentSpec] = []
    skipped: list[tuple[ComponentSpec, str]] = []
    for met in metrics:
        if gap := _missing(met.needs, have):
            skipped.append((met, f"metric {met.name!r} needs {gap}, which {where}"))
        else:
            ok.append(met)
    return Job(index, d, m, meth, tuple(ok), tuple(skipped), reason)
