"""Plan: datasets × models × methods → jobs, matching what each component needs and provides.

A job is the unit of execution, caching, resuming and distribution: one (dataset, model, method)
with all the suite's metrics, so attributions are computed once and shared. Combinations whose
needs are not met are kept as skipped jobs (or skipped metrics inside a job) with the reason; the
store writes them as ``status="skipped"`` rows, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .core import Capability
from .suite import ComponentSpec, Suite

__all__ = ["Job", "plan"]


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
        """Identity of the job: what its seed and its cache entries derive from."""
        return tuple(f"{c.name}{c.params_json}" for c in (self.dataset, self.model, self.method))

    @property
    def label(self) -> str:
        return f"{self.dataset.name} / {self.model.name} / {self.method.name}"


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
            have = d_caps | _caps(m, "provides")
            model_gap = _missing(_caps(m, "needs"), d_caps)
            for meth in suite.methods:
                reason = None
                if model_gap:
                    reason = (
                        f"model {m.name!r} needs {model_gap}, which dataset {d.name!r} "
                        f"does not provide"
                    )
                elif gap := _missing(_caps(meth, "needs"), have):
                    reason = (
                        f"method {meth.name!r} needs {gap}, which neither dataset "
                        f"{d.name!r} nor model {m.name!r} provides"
                    )
                ok: list[ComponentSpec] = []
                skipped: list[tuple[ComponentSpec, str]] = []
                for met in suite.metrics:
                    if gap := _missing(_caps(met, "needs"), have):
                        skipped.append(
                            (
                                met,
                                f"metric {met.name!r} needs {gap}, which neither "
                                f"dataset {d.name!r} nor model {m.name!r} provides",
                            )
                        )
                    else:
                        ok.append(met)
                jobs.append(Job(len(jobs), d, m, meth, tuple(ok), tuple(skipped), reason))
    return jobs
