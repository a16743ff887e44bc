"""A metric's outputs as the stored results record them: direction and kind, resolved once.

A metric states its headline direction (``higher_is_better``), the direction of each named
output it reports differently (``variant_higher_is_better``, ``None`` for a diagnostic such as
fragility's ``accepted_steps``) and the outputs that are a reference level rather than a score
(``reference_variants``: model_randomization's ``random_pairs``). The runner writes that table
into the manifest (``outputs``), per metric, and stores each row's direction with it; the report
and the CI gate read both from the run's files and import no metric code. Plain data only: this
module imports nothing but the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["declared_outputs", "output_direction"]


def declared_outputs(cls: Any) -> dict[str, Any]:
    """What the manifest records of a metric class: ``{"higher_is_better": bool, "variants":
    {name: bool | None}, "reference": [name, ...]}``."""
    return {
        "higher_is_better": bool(getattr(cls, "higher_is_better", True)),
        "variants": dict(getattr(cls, "variant_higher_is_better", None) or {}),
        "reference": sorted(getattr(cls, "reference_variants", ()) or ()),
    }


def output_direction(declared: Mapping[str, Any], variant: str) -> bool | None:
    """``True`` (↑), ``False`` (↓) or ``None`` (a diagnostic or reference level: not ranked or
    tested) of output ``variant`` under ``declared`` (:func:`declared_outputs`).

    The longest dotted suffix of ``variant`` the metric states decides: metrics prefix their
    outputs (fragility's ``topk.com_shift``, manipulation's ``defended.target.ssim``) while they
    state the bare name; else the headline direction."""
    if variant in declared.get("reference", ()):
        return None
    stated: Mapping[str, bool | None] = declared.get("variants", {})
    parts = variant.split(".")
    for i in range(len(parts)):
        key = ".".join(parts[i:])
        if key in stated:
            return stated[key]
    return bool(declared.get("higher_is_better", True))
