"""Explain and score tensors directly: ``benchbox.explain`` and ``benchbox.evaluate``.

    import benchbox
    from benchbox.methods import GradCAM, IntegratedGradients, SmoothGrad

    maps = benchbox.explain(net, x)                                   # saliency, predicted class
    maps = benchbox.explain(net, x, y, method="integrated_gradients", steps=16)
    maps = benchbox.explain(net, x, y, SmoothGrad(IntegratedGradients(steps=16), n=20))
    hits = benchbox.evaluate("pointing_game", net, x, maps, y, mask=lesions)  # float64 [B]

``net`` is a plain ``nn.Module`` mapping ``x`` ``[B, C, *spatial]`` to class scores ``[B, K]``
(or an ``ExplainedModel``); it is wrapped for the call (see :func:`as_explained`). Every random
draw comes from ``generator`` (default: seeded with 0 on ``x``'s device), so a call repeated
gives the same maps and scores. These are the same classes the suites run; the suite file is
one way to call them, this is another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .core import (
    Batch,
    Capability,
    ExplainedModel,
    Method,
    Metric,
    MetricContext,
    as_explained,
    check_x,
    with_eval,
)
from .errors import UserError
from .seeding import make_generator

__all__ = ["as_explained", "evaluate", "explain"]

# What to do when the model lacks what a method or metric needs.
_HINTS = {
    Capability.TARGET_LAYER: "name the layer: layer='features.3' (a dotted submodule path)",
    Capability.GAP_HEAD: (
        "CAM needs conv features -> global average pooling -> linear; use grad_cam, or wrap "
        "the model in ExplainedModel(provides=...) if it has that head"
    ),
    Capability.ATTENTION_MAPS: "wrap it in an ExplainedModel that provides its attention maps",
    Capability.RECONSTRUCTION: "wrap it in an ExplainedModel that provides its reconstruction",
    Capability.MASKS: "pass mask=: a bool tensor [B, 1, *spatial] of the ground-truth regions",
    Capability.VOLUMES_3D: "give x as [B, C, D, H, W]",
    Capability.IMAGES_2D: "give x as [B, C, H, W]",
}


def explain(
    model: nn.Module | ExplainedModel,
    x: Tensor,
    target: Tensor | int | None = None,
    method: str | Method = "saliency",
    *,
    generator: torch.Generator | None = None,
    layer: str | nn.Module | None = None,
    **params: Any,
) -> Tensor:
    """Attributions float32 ``[B, 1, *spatial]`` of ``method`` for ``x`` ``[B, C, *spatial]``.

    ``target``: the explained class per sample (long ``[B]``, or one int for all); default the
    model's prediction. ``method``: a registered name with its ``params`` (validated as in a
    suite), or a ``Method`` object (then no ``params``). ``layer``: the CAM layer of a plain
    module (see :func:`as_explained`). The model is put in eval mode for the call and given
    back in the mode it had; its parameters and hooks are left as they were.
    """
    from . import registry

    explainer: Method = _component(method, params, registry.methods, Method, "method")

    def attribute(explained: ExplainedModel) -> Tensor:
        return _attribute(explainer, explained, x, _target(explained, x, target), generator)

    return with_eval(model, attribute, x, layer)


def evaluate(
    metric: str | Metric,
    model: nn.Module | ExplainedModel,
    x: Tensor,
    attributions: Tensor,
    target: Tensor | int | None = None,
    mask: Tensor | None = None,
    *,
    method: str | Method | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    layer: str | nn.Module | None = None,
    **params: Any,
) -> Tensor | dict[str, Tensor]:
    """One score per sample, float ``[B]`` (NaN where undefined), of ``attributions`` ``[B, 1,
    *spatial]`` for ``x`` under ``metric``; a metric with variants gives ``{variant: [B]}``.

    ``metric``: a registered name with its ``params``, or a ``Metric`` object. ``target``: the
    explained class (default: the prediction), as for :func:`explain`. ``mask``: bool ``[B, 1,
    *spatial]`` ground-truth regions, needed by the localization metrics. ``method``: the method
    that made the maps, needed by the metrics that re-explain (randomization, robustness,
    fragility). ``batch_size`` bounds the rows of one forward pass. Metrics that retrain a
    model (data randomization, repeatability) run only in a suite.
    """
    from . import registry

    scorer: Metric = _component(metric, params, registry.metrics, Metric, "metric")
    explainer = (
        None if method is None else _component(method, {}, registry.methods, Method, "method")
    )

    def score(explained: ExplainedModel) -> Tensor | dict[str, Tensor]:
        t = _target(explained, x, target)
        if mask is not None and (mask.dtype != torch.bool or mask.shape != attributions.shape):
            raise UserError(
                f"mask: expected a bool tensor of the maps' shape {tuple(attributions.shape)}, got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
        have = (
            explained.provides | _data_caps(x) | ({Capability.MASKS} if mask is not None else set())
        )
        _require(scorer, have, "metric")
        batch = Batch(x=x, label=t, ids=tuple(str(i) for i in range(len(x))), target=t, mask=mask)
        gen = generator if generator is not None else make_generator(0, x.device)
        ctx = MetricContext(
            explained, batch, attributions, explainer or _NoMethod(scorer), gen, batch_size
        )
        out = scorer.score(ctx)
        if isinstance(out, Mapping):
            return {k: v.values for k, v in out.items()}
        return out.values

    return with_eval(model, score, x, layer)


# -- helpers ---------------------------------------------------------------------------------------
def _component(obj: Any, params: dict[str, Any], reg: Any, base: type, what: str) -> Any:
    if isinstance(obj, base):
        if params:
            raise UserError(
                f"{what}: {type(obj).__name__} is already constructed; give its parameters to its "
                f"constructor, not to this call ({', '.join(sorted(params))})"
            )
        return obj
    if not isinstance(obj, str):
        raise UserError(
            f"{what}: expected a registered name or a {base.__name__} object, got "
            f"{type(obj).__name__}"
        )
    return reg.get(obj)(**params)  # unknown names and bad parameters: UserError, one line


class _NoMethod(Method):
    """Stands in for the method of a metric context when none was given."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def attribute(self, *args: Any, **kwargs: Any) -> Tensor:
        from .registry import name_of

        raise UserError(
            f"{name_of(type(self._metric))} re-explains the model: pass method= (the method "
            f"that made the maps, a name or a Method object)"
        )


def _data_caps(x: Tensor) -> set[Capability]:
    return {Capability.LABELS, Capability.IMAGES_2D if x.dim() == 4 else Capability.VOLUMES_3D}


def _require(component: Any, have: set[Capability] | frozenset[Capability], what: str) -> None:
    from .registry import name_of

    missing = sorted(component.requirements() - set(have), key=str)
    if missing:
        name = name_of(type(component))
        hints = "; ".join(_HINTS[c] for c in missing if c in _HINTS)
        raise UserError(
            f"{what} {name} needs {', '.join(map(str, missing))}, which this model and data do "
            f"not provide" + (f": {hints}" if hints else "")
        )


def _target(model: ExplainedModel, x: Tensor, target: Tensor | int | None) -> Tensor:
    check_x(x)
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    if isinstance(target, int):
        return torch.full((len(x),), target, dtype=torch.long, device=x.device)
    if not isinstance(target, Tensor) or target.shape != (len(x),) or target.is_floating_point():
        got = f"{target.dtype} {tuple(target.shape)}" if isinstance(target, Tensor) else target
        raise UserError(
            f"target: expected one class per sample, an integer tensor [{len(x)}], got {got}"
        )
    return target.to(device=x.device, dtype=torch.long)


def _attribute(
    method: Method, model: ExplainedModel, x: Tensor, target: Tensor, gen: torch.Generator | None
) -> Tensor:
    _require(method, model.provides | _data_caps(x), "method")
    return method(model, x, target, generator=gen)  # no generator: Method's seeded default
