"""Adapter: any Quantus metric by name, run inside a suite like a built-in metric.

A suite names it with the ``quantus:`` prefix; the registry hands the rest of the name to
``quantus_metric``, which returns a ``Metric`` *class* built for that Quantus class, whose
``__init__`` lists exactly the Quantus constructor's parameters that YAML can express (so the
suite validates them with their YAML path) plus ``call``, keyword arguments for the Quantus
``__call__``::

    metrics:
      - quantus:FaithfulnessEstimate: {features_in_step: 256}
      - quantus:PixelFlipping: {features_in_step: 64, normalise: false, call: {softmax: true}}
      - quantus:MaxSensitivity: {nr_samples: 10, lower_bound: 0.2}

What the adapter does on each batch:

- converts ``x`` ``[B, C, *sp]``, ``target``, the attributions ``[B, 1, *sp]`` and the masks
  (if the batch has any, as float ``s_batch``) to NumPy and calls the Quantus metric with
  ``model=ctx.model.module``, ``channel_first=True``, ``device`` = the batch's device,
  ``batch_size=ctx.batch_size`` and ``explain_func`` = the job's method (for metrics that
  re-explain: robustness, randomisation; a randomised copy of the model is explained with the
  same target layers, found by name);
- always ``disable_warnings=True`` (Quantus 0.6 shows its warnings only on GitHub Actions, then
  with a one-second ``sleep`` per construction: PROTOCOLS Q1), ``display_progressbar=False`` and
  ``return_aggregate=False`` (benchbox stores per-sample scores);
- seeds Quantus' global RNGs (it draws from ``np.random`` and ``torch``) from ``ctx.generator``
  inside ``torch.random.fork_rng`` and a saved/restored ``np.random`` state, so results are
  reproducible and the caller's RNG state is untouched;
- on NumPy >= 2.4, which removed ``np.trapz`` (Quantus' ``calculate_auc`` calls it), aliases
  ``np.trapz`` to ``np.trapezoid`` for the duration of the call only;
- maps with NaN/inf values are left out of the call and get NaN with a reason.

Results: a list of per-sample scores becomes the values; a list of per-sample curves (e.g.
``PixelFlipping``) becomes the stored curves, with value = their ``np.trapz(dx=1)`` area
(Quantus' ``calculate_auc``); a dict of per-sample lists (``MPRT``: one per layer) becomes one
variant per key. Batch-level results (``ROAD`` returns only the mean accuracy per percentage)
cannot give per-sample rows and raise, pointing at the built-in metric.

Direction: ``higher_is_better`` is read from the Quantus class's ``score_direction`` when the
adapter class is built (tables need it before any run). Quantus' declared direction is kept even
where it is debatable (``RegionPerturbation`` says lower although a larger drop is better:
PROTOCOLS b.3). Localisation metrics need masks (``needs = {masks}``).

Quantus' own defaults are kept, including ``normalise=True``, which divides the maps by their
maximum over the whole batch, so per-sample scores depend on the batch (PROTOCOLS Q2): pass
``normalise: false`` for batch-independent scores.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, Union

import numpy as np
import torch
from pydantic import AfterValidator
from torch import Tensor, nn

from ..core import Capability, Metric, MetricContext, MetricOutput
from ..errors import UserError
from ..methods.base import check_attributions, explaining
from ..params import int_type_for
from .toolkit import REASON_NONFINITE

__all__ = ["QuantusMetric", "quantus_metric", "quantus_names"]

REASON_NAN = "quantus returned NaN"

# Constructor arguments benchbox fixes (PROTOCOLS Q1; per-sample rows; no plots or bars).
_FORCED: dict[str, Any] = {
    "disable_warnings": True,
    "display_progressbar": False,
    "return_aggregate": False,
}
_NOT_FROM_YAML = frozenset({"aggregate_func", "default_plot_func", *_FORCED})
# __call__ arguments benchbox supplies (or that cannot come from YAML).
_SUPPLIED_CALL = frozenset(
    {
        "self",
        "model",
        "x_batch",
        "y_batch",
        "a_batch",
        "s_batch",
        "channel_first",
        "explain_func",
        "device",
        "custom_batch",
    }
)


def _quantus() -> Any:
    try:
        import quantus
    except ImportError as exc:
        raise UserError(
            f"quantus: metrics named 'quantus:<Metric>' need Quantus, which does not import "
            f"({exc}); install it with `pip install quantus`"
        ) from exc
    return quantus


def quantus_names() -> list[str]:
    """Names of the Quantus metric classes the adapter can wrap (sorted)."""
    return sorted(_quantus_classes())


def _quantus_classes() -> dict[str, type]:
    quantus = _quantus()
    from quantus.metrics.base import Metric as QMetric

    return {
        name: obj
        for name in dir(quantus)
        if inspect.isclass(obj := getattr(quantus, name))
        and issubclass(obj, QMetric)
        and obj is not QMetric
    }


# -- parameters ---------------------------------------------------------------------------------
_SCALARS: tuple[type, ...] = (bool, int, float, str, type(None))


def _yaml_type(annotation: Any) -> Any | None:
    """The part of a Quantus annotation a YAML value can satisfy; None if nothing can.

    Callables and arrays are dropped (``Union[str, Callable]`` → ``str``); generic containers
    keep their arguments; anything else not a scalar becomes ``Any``.
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return Any
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation in _SCALARS:
        return annotation
    if annotation is np.ndarray or origin is collections.abc.Callable or annotation is Callable:
        return None
    if origin in (Union, types.UnionType):
        kept = [t for t in (_yaml_type(a) for a in args) if t is not None]
        if all(t is type(None) for t in kept):
            return None  # Optional[Callable]: nothing but None is left for YAML to give
        return Union[tuple(kept)] if len(kept) > 1 else kept[0]  # noqa: UP007
    if origin in (list, tuple, dict, collections.abc.Sequence, collections.abc.Mapping):
        inner = [_yaml_type(a) if a is not Ellipsis else Ellipsis for a in args]
        if any(t is None for t in inner):
            return None
        container = {collections.abc.Sequence: list, collections.abc.Mapping: dict}.get(
            origin, origin
        )
        return container[tuple(inner)] if inner else container
    if origin is typing.Literal:
        return annotation
    return Any


def _check_call(allowed: tuple[str, ...]) -> Callable[[Mapping[str, Any] | None], Any]:
    def check(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        for key in value or {}:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                supplied = " (benchbox supplies it)" if key in _SUPPLIED_CALL else ""
                raise ValueError(
                    f"{key!r} is not a keyword of the Quantus call{supplied}; {hint}"
                    f"valid: {', '.join(allowed) or 'none'}"
                )
        return value

    return check


def _parameters(cls: type) -> tuple[list[tuple[str, Any, Any]], tuple[str, ...]]:
    """(name, annotation, default) of the adapter's ``__init__``, and the allowed call keys."""
    hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    params: list[tuple[str, Any, Any]] = []
    for p in inspect.signature(cls.__init__).parameters.values():  # type: ignore[misc]
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in _NOT_FROM_YAML or p.default is inspect.Parameter.empty:
            continue
        yaml_type = _yaml_type(hints.get(p.name, p.annotation))
        if yaml_type is int:
            yaml_type = int_type_for(p.name)  # bounded: see benchbox.params
        if yaml_type is None:
            continue  # a callable or an array: only Python code can pass it
        if p.default is None and yaml_type is not Any:
            yaml_type = Union[yaml_type, None]  # noqa: UP007 (Quantus writes List[int] = None)
        params.append((p.name, yaml_type, p.default))
    call_keys = tuple(
        p.name
        for p in inspect.signature(cls.__call__).parameters.values()
        if p.name not in _SUPPLIED_CALL and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    return params, call_keys


# -- the metric class ------------------------------------------------------------------------------
class QuantusMetric(Metric):
    """Base of the classes ``quantus_metric`` builds: Quantus parameters live in ``self.params``."""

    quantus_name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    params: dict[str, Any]
    call: dict[str, Any]

    def score(self, ctx: MetricContext) -> MetricOutput | dict[str, MetricOutput]:
        x, attr, batch = ctx.batch.x, ctx.attributions, ctx.batch
        check_attributions(attr, x)
        if batch.target is None:
            raise ValueError("batch.target is not set: the runner must choose the explained class")
        b = x.shape[0]
        finite = torch.isfinite(attr.reshape(b, -1)).all(dim=1)
        sel = finite.nonzero().squeeze(1)
        result: Any = None
        if sel.numel() > 0:
            result = self._run(ctx, sel, batch.target)
        return _outputs(result, finite, sel, self.quantus_name)

    def _run(self, ctx: MetricContext, sel: Tensor, target: Tensor) -> Any:
        quantus = _quantus()
        cls = getattr(quantus, self.quantus_name)
        batch = ctx.batch
        mask = None if batch.mask is None else batch.mask[sel].float().cpu().numpy()
        seed = int(
            torch.randint(0, 1 << 31, (1,), generator=ctx.generator, device=ctx.generator.device)
        )
        kwargs: dict[str, Any] = {
            "model": ctx.model.module,
            "x_batch": batch.x[sel].detach().float().cpu().numpy(),
            "y_batch": target[sel].cpu().numpy(),
            "a_batch": ctx.attributions[sel].detach().float().cpu().numpy(),
            "s_batch": mask,
            "channel_first": True,
            "explain_func": _explain_func(ctx),
            "device": str(batch.x.device),
            "batch_size": ctx.batch_size,
            **self.call,
        }
        with explaining(ctx.model), _seeded(seed, batch.x.device), _trapz_shim():
            metric = cls(**self.params, **_forced(cls))
            try:
                return metric(**kwargs)
            except AssertionError as exc:  # Quantus validates inputs with assert
                text = str(exc).strip().splitlines()
                raise ValueError(
                    f"quantus:{self.quantus_name} rejected the inputs: "
                    f"{text[0] if text else 'assertion failed'}"
                ) from exc


def _forced(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return {k: v for k, v in _FORCED.items() if takes_any or k in sig.parameters}


def _explain_func(ctx: MetricContext) -> Callable[..., np.ndarray]:
    """Quantus' ``explain_func(model, inputs, targets, **kw)`` calling the job's method."""
    names = {id(m): n for n, m in ctx.model.module.named_modules()}

    def explain(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        module = getattr(model, "get_model", lambda: model)()
        explained = ctx.model
        if module is not ctx.model.module:
            # A randomised copy (MPRT, RandomLogit): same target layers, found by name.
            own = dict(module.named_modules())
            layers = {
                k: own[names[id(layer)]]
                for k, layer in ctx.model.target_layers.items()
                if names.get(id(layer)) in own
            }
            explained = dataclasses.replace(ctx.model, module=module, target_layers=layers)
        device = ctx.batch.x.device
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device).reshape(-1)
        if t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        a = ctx.method.attribute(explained, x, t, generator=ctx.generator)
        return a.detach().float().cpu().numpy()

    return explain


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Quantus draws from the global NumPy and torch RNGs: seed both, restore both after."""
    state = np.random.get_state()
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


# np.trapezoid is NumPy >= 2.0, np.trapz NumPy < 2.4: the same function.
_trapezoid: Callable[..., Any] = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009


@contextmanager
def _trapz_shim() -> Iterator[None]:
    """``np.trapz`` for Quantus' ``calculate_auc`` on NumPy >= 2.4 (removed there), call-scoped."""
    if hasattr(np, "trapz"):
        yield
        return
    setattr(np, "trapz", np.trapezoid)  # noqa: B010 (numpy's stubs still declare trapz)
    try:
        yield
    finally:
        delattr(np, "trapz")


# -- results -----------------------------------------------------------------------------------
def _outputs(
    result: Any, finite: Tensor, sel: Tensor, name: str
) -> MetricOutput | dict[str, MetricOutput]:
    if result is None:  # no finite map in the batch
        return _one(np.empty((0,)), finite, sel, name)
    if isinstance(result, Mapping):
        per_sample = {k: v for k, v in result.items() if np.ndim(v) >= 1}
        if len(per_sample) != len(result) or not per_sample:
            raise ValueError(
                f"quantus:{name} returned batch-level results (a mapping of "
                f"{', '.join(map(str, list(result)[:4]))}, ...), not per-sample scores; use the "
                f"built-in metric instead (e.g. road for ROAD)"
            )
        return {
            str(k): _one(np.asarray(v, dtype=np.float64), finite, sel, name)
            for k, v in per_sample.items()
        }
    return _one(np.asarray(result, dtype=np.float64), finite, sel, name)


def _one(arr: np.ndarray, finite: Tensor, sel: Tensor, name: str) -> MetricOutput:
    b, n = finite.shape[0], sel.shape[0]
    device = finite.device
    values = torch.full((b,), float("nan"), dtype=torch.float64, device=device)
    curves: Tensor | None = None
    if n and (arr.ndim not in (1, 2) or arr.shape[0] != n):
        raise ValueError(
            f"quantus:{name} returned an array of shape {list(arr.shape)} for {n} samples; "
            f"expected one score or one curve per sample"
        )
    if arr.ndim == 2:
        curves = torch.full((b, arr.shape[1]), float("nan"), dtype=torch.float64, device=device)
        curves[sel] = torch.as_tensor(arr, device=device)
        values[sel] = torch.as_tensor(_trapezoid(arr, dx=1, axis=1), device=device)
    elif n:
        values[sel] = torch.as_tensor(arr, device=device)
    reasons: list[str | None] = [
        None if not bad else (REASON_NAN if f else REASON_NONFINITE)
        for bad, f in zip(torch.isnan(values).tolist(), finite.tolist(), strict=True)
    ]
    curve_x = None if curves is None else torch.arange(curves.shape[1], dtype=torch.float64)
    return MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)


# -- the resolver ------------------------------------------------------------------------------
def _doc(name: str, cls: type, higher: bool) -> str:
    first = (inspect.getdoc(cls) or "").strip().splitlines()
    summary = first[0].rstrip(".") if first else name
    arrow = "higher" if higher else "lower"
    return (
        f"Quantus {name} (adapter; {arrow} is better): {summary}.\n\n"
        f"Runs ``quantus.{name}`` on each batch (see ``benchbox.metrics.adapters``); parameters "
        f"are the Quantus constructor's (YAML-expressible ones) plus ``call`` (keyword arguments "
        f"of the Quantus call)."
    )


@functools.cache
def quantus_metric(name: str) -> type[QuantusMetric]:
    """The ``Metric`` class for ``quantus.<name>`` (registry prefix ``quantus:``)."""
    classes = _quantus_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(f'quantus:{c}') for c in close)}? " if close else ""
        raise UserError(
            f"unknown Quantus metric {name!r} in 'quantus:{name}'; {hint}"
            f"available: {', '.join(sorted(classes))}"
        )
    cls = classes[name]
    from quantus.helpers.enums import EvaluationCategory, ScoreDirection

    direction = getattr(cls, "score_direction", None)
    # Quantus declares a direction for every metric; a class without one reads as higher-better.
    higher = direction is not ScoreDirection.LOWER
    category = getattr(cls, "evaluation_category", None)
    needs = (
        frozenset({Capability.MASKS})
        if category is EvaluationCategory.LOCALISATION
        else frozenset()
    )
    parameters, call_keys = _parameters(cls)
    call_type = Annotated[dict[str, Any] | None, AfterValidator(_check_call(call_keys))]
    parameters.append(("call", call_type, None))
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                for n, a, d in parameters
            ),
        ]
    )

    def __init__(self: QuantusMetric, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, **kwargs)
        except TypeError as exc:
            raise TypeError(f"quantus:{name}: {exc}") from None
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k != "self"}
        call = args.pop("call") or {}
        _check_call(call_keys)(call)
        self.params = args
        self.call = dict(call)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__annotations__ = {n: a for n, a, _ in parameters}
    __init__.__annotations__["return"] = None
    namespace = {
        "__init__": __init__,
        "__doc__": _doc(name, cls, higher),
        "__module__": __name__,
        "__qualname__": f"Quantus_{name}",
        "quantus_name": name,
        "registry_name": f"quantus:{name}",
        "higher_is_better": higher,
        "needs": needs,
    }
    return type(f"Quantus_{name}", (QuantusMetric,), namespace)


# Built classes are reachable as module attributes (``benchbox.metrics.adapters.Quantus_X``) so
# that pickle (e.g. a Dask executor) finds them by name in a fresh process.
_CLASS_NAME = re.compile(r"^Quantus_(\w+)$")


def __getattr__(name: str) -> Any:
    match = _CLASS_NAME.match(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return quantus_metric(match.group(1))
