"""Adapters: any Captum attribution class, pytorch-grad-cam method or zennit composite by name.

A suite names them with a prefix; the registry hands the rest of the name to a resolver here,
which returns a ``Method`` *class* built for that name, whose ``__init__`` signature lists exactly
the parameters the wrapped method takes (so the suite validates them with their YAML path)::

    methods:
      - captum:Occlusion: {sliding_window_shapes: [1, 8, 8], strides: [1, 4, 4]}
      - captum:LayerGradCam: {layer: block2, relu_attributions: true}
      - gradcam:GradCAMPlusPlus: {layer: auto}
      - zennit:EpsilonGammaBox: {gamma: 0.25}

``captum:<Class>`` — any class of ``captum.attr`` that explains a class score (not ``Neuron*``,
LLM or data-loader classes; ``NoiseTunnel`` is benchbox's ``smoothgrad``/``vargrad``). Parameters
are one flat mapping:

- every keyword argument of the class's ``attribute()`` except those benchbox supplies
  (``inputs``, ``target``) or that cannot come from YAML (``additional_forward_args``,
  ``return_convergence_delta``, callables), with Captum's defaults;
- the constructor's scalar options (e.g. ``multiply_by_inputs``, ``eps``);
- ``layer`` (Layer* classes and ``GuidedGradCam``): a target layer name of the model, ``auto`` by
  default; layer attributions ``[B, K, *h]`` are channel-reduced and resized to the input
  (bilinear/trilinear, ``align_corners=False``);
- ``reduce``: the channel reduction (default ``sum``, signed).

Conversions: lists become tuples (Captum's shapes); ``baselines`` may be ``zero``, ``mean`` or
``blur`` (``benchbox.methods.base.reference_image``) or a number; classes that draw baselines from a
distribution (``GradientShap``, ``DeepLiftShap`` and their Layer forms) take a number or ``zero``,
given to Captum as two identical reference images; ``feature_mask: N`` groups pixels into N×N(×N)
patches (one feature per patch, shared by the channels). Captum's stochastic classes draw from the
global RNGs (torch, NumPy, Python): benchbox seeds them from the job's generator and restores them
afterwards, so maps are reproducible and the caller's random state is untouched.

``gradcam:<Name>`` (pytorch-grad-cam: GradCAM, HiResCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM,
EigenCAM, LayerCAM, …) and ``zennit:<composite>`` (EpsilonPlusFlat, EpsilonGammaBox,
EpsilonAlpha2Beta1, …) need torchvision, which must match the installed torch; they are imported
only when named, and a failed import is one ``UserError`` saying how to fix it.

Every adapter runs inside ``explaining(model)`` (eval mode, frozen parameters, hooks removed) and
removes any attribute a library sets on the model's modules (Captum's LRP leaves ``activations``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, ClassVar, cast

import torch
from pydantic import AfterValidator, NonNegativeFloat
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from ..params import Count, Size, int_type_for
from .base import Reduce, Reference, check_inputs, explaining, finish, reduce_channels
from .base import reference_image as _reference_image

__all__ = [
    "AdapterMethod",
    "captum_method",
    "gradcam_method",
    "patch_mask",
    "seeded_global_rngs",
    "without_new_attributes",
    "zennit_method",
]

_TORCHVISION_FIX = (
    "pip install {pkg} with a torchvision matching torch {torch} (pin that torchvision version: "
    "an unpinned one pulls in another torch)"
)


# -- shared machinery ---------------------------------------------------------------------------
@contextmanager
def without_new_attributes(module: nn.Module) -> Iterator[None]:
    """Remove, on exit, every instance attribute a library added to ``module``'s submodules.

    Captum's LRP sets ``rule`` and ``activations`` on every layer (and deletes only ``rule``);
    other libraries tag modules similarly. Values of existing attributes are not touched here.
    """
    before = {m: set(vars(m)) for m in module.modules()}
    try:
        yield
    finally:
        for m, keys in before.items():
            for key in set(vars(m)) - keys:
                delattr(m, key)


def patch_mask(x: Tensor, patch: int) -> Tensor:
    """Feature ids of ``patch``-sided square (cube) patches, long ``[1, 1, *sp]``, row-major."""
    ids = torch.zeros((), dtype=torch.long, device=x.device)
    for size in x.shape[2:]:
        n = math.ceil(size / patch)
        coord = torch.arange(size, device=x.device) // patch
        ids = ids.unsqueeze(-1) * n + coord
    return ids.reshape(1, 1, *x.shape[2:])


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _to_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    return value


def _annotation_of(default: Any) -> Any:
    """A pydantic-friendly annotation from a default value (YAML gives scalars and lists)."""
    for kind in (bool, int, float, str):
        if type(default) is kind:
            return kind
    return Any


class AdapterMethod(Method):
    """Base of the classes the adapters build: parameters live in ``self.params``."""

    supports_3d: ClassVar[bool] = True
    params: dict[str, Any]


def _build_class(
    class_name: str,
    doc: str,
    needs: frozenset[Capability],
    parameters: list[tuple[str, Any, Any]],
    attribute: Callable[..., Tensor],
    wrapped: str,
    supports_3d: bool = True,
) -> type[AdapterMethod]:
    """A ``Method`` subclass whose ``__init__`` takes keyword-only ``(name, type, default)`` params.

    ``inspect.signature`` and ``typing.get_type_hints`` of its ``__init__`` see those parameters,
    so ``benchbox.params.validate_params`` checks a suite's mapping against them.
    """
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                for n, a, d in parameters
            ),
        ]
    )

    def __init__(self: AdapterMethod, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{wrapped}: {exc}") from None
        bound.apply_defaults()
        self.params = {k: v for k, v in bound.arguments.items() if k != "self"}

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__annotations__ = {n: a for n, a, _ in parameters}
    __init__.__annotations__["return"] = None
    namespace = {
        "__init__": __init__,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": class_name,
        "needs": needs,
        "supports_3d": supports_3d,
        "registry_name": wrapped,  # e.g. "captum:Occlusion": what messages name it by
        "attribute": attribute,
    }
    return type(class_name, (AdapterMethod,), namespace)


# Dynamic classes are reachable as module attributes (``benchbox.methods.adapters.Captum_Saliency``)
# so that pickle (e.g. a Dask executor) finds them by name in a fresh process.
_CLASS_NAME = re.compile(r"^(Captum|GradCam|Zennit)_(\w+)$")


def __getattr__(name: str) -> Any:
    match = _CLASS_NAME.match(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    resolver = {"Captum": captum_method, "GradCam": gradcam_method, "Zennit": zennit_method}
    try:
        return resolver[match.group(1)](match.group(2))
    except UserError as exc:  # hasattr() and pickle expect an AttributeError
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {exc}") from exc


@contextmanager
def seeded_global_rngs(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed torch's, NumPy's and Python's global RNGs from ``generator``; restore them on exit.

    Libraries such as Captum draw from the global generators (``GradientShap`` from
    ``np.random``, ``NoiseTunnel`` from torch); seeding all three from the job's generator makes
    their maps reproducible, and restoring them leaves the caller's random state untouched.
    """
    import random

    import numpy as np

    seed = int(torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device))
    devices = [device] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % (1 << 32))
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# -- captum ---------------------------------------------------------------------------------------
# attribute() arguments benchbox supplies, or that a YAML value cannot express.
_CAPTUM_SUPPLIED = frozenset(
    {
        "inputs",
        "target",
        "additional_forward_args",
        "return_convergence_delta",
        "custom_attribution_func",
        "grad_kwargs",
        "verbose",
    }
)
# Constructor arguments benchbox supplies.
_CAPTUM_MODEL_ARGS = frozenset({"forward_func", "model", "layer", "device_ids"})
_UNSUPPORTED = {
    "NoiseTunnel": "it wraps another method; use smoothgrad, smoothgrad_sq or vargrad",
    "LimeBase": "it needs Python callables; use captum:Lime or lime",
    "DataLoaderAttribution": "it explains a data loader, not a batch",
}
_REFERENCE_KINDS: tuple[str, ...] = ("zero", "mean", "blur")


def _captum_classes() -> dict[str, Any]:
    import captum.attr as ca

    return {
        n: obj
        for n in ca.__all__
        if inspect.isclass(obj := getattr(ca, n))
        and issubclass(obj, ca.Attribution)
        and hasattr(obj, "attribute")
    }


def _positive_ints(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _check(ok: Callable[[Any], bool], message: str) -> Any:
    """A pydantic ``AfterValidator`` with one clear message (unions report once per member)."""

    def validate(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("benchbox", message)
        return _to_tuples(value)

    return AfterValidator(validate)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SHAPE = Annotated[Any, _check(_positive_ints, "expected a list of integers > 0")]
_STRIDES = Annotated[
    Any,
    _check(
        lambda v: v is None or (_number(v) and v > 0 and int(v) == v) or _positive_ints(v),
        "expected an integer > 0 or a list of integers > 0",
    ),
]
_PATCH = Annotated[
    Any,
    _check(
        lambda v: v is None or (_number(v) and v > 0 and int(v) == v),
        "expected a patch size in pixels (an integer > 0)",
    ),
]
_BASELINES = Annotated[
    Any,
    _check(
        lambda v: v is None or _number(v) or v in _REFERENCE_KINDS,
        "expected 'zero', 'mean', 'blur' or a number",
    ),
]
_DISTRIBUTION_BASELINES = Annotated[
    Any,
    _check(
        lambda v: _number(v) or v == "zero",
        "expected 'zero' or a number (this method draws baselines from a distribution)",
    ),
]


def _captum_annotation(name: str, default: Any, distribution: bool) -> Any:
    known: dict[str, Any] = {
        "baselines": _DISTRIBUTION_BASELINES if distribution else _BASELINES,
        "sliding_window_shapes": _SHAPE,
        "strides": _STRIDES,
        "feature_mask": _PATCH,
        "n_steps": Count,
        "n_samples": Count,
        "perturbations_per_eval": Size,
        "internal_batch_size": Size | None,
        "stdevs": NonNegativeFloat,
    }
    annotation = known.get(name, _annotation_of(default))
    return int_type_for(name) if annotation is int else annotation


@functools.cache
def captum_method(name: str) -> type[AdapterMethod]:
    """The ``Method`` class for ``captum.attr.<name>`` (registry prefix ``captum:``)."""
    import captum.attr as ca

    classes = _captum_classes()
    if name not in classes:
        raise UserError(
            f"unknown captum method {name!r}; {_suggest(name, list(ca.__all__))}captum.attr "
            f"attribution classes: {', '.join(sorted(classes))}"
        )
    cls: Any = classes[name]
    if name in _UNSUPPORTED or name.startswith(("Neuron", "LLM", "RemoteLLM")):
        why = _UNSUPPORTED.get(name, "it explains a neuron or a language model, not a class score")
        raise UserError(f"captum:{name} is not supported as a method: {why}")
    init = list(inspect.signature(cls.__init__).parameters.values())[1:]
    attr = list(inspect.signature(cls.attribute).parameters.values())[1:]
    required_init = [
        p.name for p in init if p.default is p.empty and p.name not in _CAPTUM_MODEL_ARGS
    ]
    if required_init:
        raise UserError(
            f"captum:{name} is not supported as a method: its constructor needs {required_init}"
        )
    is_layer = any(p.name == "layer" for p in init)
    takes_target = any(p.name == "target" for p in attr)
    attr_params = [
        p
        for p in attr
        if p.name not in _CAPTUM_SUPPLIED
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and (p.default is p.empty or not callable(p.default))
    ]
    distribution = any(p.name == "baselines" and p.default is p.empty for p in attr_params)
    init_params = [
        p for p in init if p.name not in _CAPTUM_MODEL_ARGS and _annotation_of(p.default) is not Any
    ]
    parameters: list[tuple[str, Any, Any]] = []
    if is_layer:
        parameters.append(("layer", str, "auto"))
    for p in attr_params:
        default = p.default if p.default is not p.empty else inspect.Parameter.empty
        parameters.append((p.name, _captum_annotation(p.name, p.default, distribution), default))
    for p in init_params:
        parameters.append((p.name, _annotation_of(p.default), p.default))
    parameters.append(("reduce", Reduce, "sum"))
    names = [n for n, *_ in parameters]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise UserError(f"captum:{name} is not supported: parameter names {sorted(clash)} clash")
    attr_names = {p.name for p in attr_params}
    init_names = {p.name for p in init_params}
    gradient = issubclass(cls, ca.GradientAttribution) or name in ("LRP", "LayerLRP")
    needs = frozenset(
        ({Capability.GRADIENTS} if gradient else set())
        | ({Capability.TARGET_LAYER} if is_layer else set())
    )

    def attribute(
        self: AdapterMethod,
        model: ExplainedModel,
        x: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator,
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        kwargs = {k: _to_tuples(v) for k, v in self.params.items() if k in attr_names}
        if "baselines" in kwargs:
            kwargs["baselines"] = _captum_baselines(name, kwargs["baselines"], x, distribution)
        if isinstance(kwargs.get("feature_mask"), int):
            kwargs["feature_mask"] = patch_mask(x, kwargs["feature_mask"])
        if takes_target:
            kwargs["target"] = target
        init_kwargs = {k: v for k, v in self.params.items() if k in init_names}
        layer = model.target_layer(self.params["layer"]) if is_layer else None
        with (
            explaining(model) as module,
            without_new_attributes(module),
            seeded_global_rngs(generator, x.device),
            torch.enable_grad(),
        ):
            method = cls(module, layer, **init_kwargs) if is_layer else cls(module, **init_kwargs)
            inputs = x.clone().requires_grad_(gradient)
            out = method.attribute(inputs, **kwargs)
        if isinstance(out, tuple):
            out = out[0]
        return _to_map(out.detach(), x, self.params["reduce"], f"captum:{name}")

    attr_list = ", ".join(sorted(attr_names)) or "none"
    init_list = ", ".join(sorted(init_names)) or "none"
    layer_note = ", ``layer`` (a target layer name)" if is_layer else ""
    doc = (
        f"Captum's {name} (captum.attr.{name}) through benchbox's adapter.\n\n"
        f"Parameters: the keyword arguments of ``{name}.attribute`` ({attr_list}), the "
        f"constructor's scalar options ({init_list}){layer_note} and ``reduce`` (channel "
        f"reduction). See ``benchbox.methods.adapters`` for the conversions and "
        f"https://captum.ai/api/ for the method.\n\n{inspect.getdoc(cls) or ''}"
    )
    return _build_class(f"Captum_{name}", doc, needs, parameters, attribute, f"captum:{name}")


def _captum_baselines(name: str, value: Any, x: Tensor, distribution: bool) -> Any:
    if value is None:
        return None
    if distribution:
        # Two identical references: DeepLiftShap asks for more than one baseline sample.
        if value == "zero":
            value = 0.0
        if not isinstance(value, (int, float)):
            raise UserError(
                f"captum:{name}.baselines: this method draws baselines from a distribution; give "
                f"a number or 'zero', got {value!r}"
            )
        return torch.full((2, *x.shape[1:]), float(value), dtype=x.dtype, device=x.device)
    if isinstance(value, str):
        if value not in _REFERENCE_KINDS:
            raise UserError(
                f"captum:{name}.baselines: expected one of {list(_REFERENCE_KINDS)} or a number, "
                f"got {value!r}"
            )
        return _reference_image(x, cast(Reference, value))
    return float(value)


def _to_map(out: Tensor, x: Tensor, reduce: Reduce, who: str) -> Tensor:
    """Channel-reduce an attribution and resize it to ``x``'s spatial size if it is a layer's."""
    from .cam import upsample

    if not isinstance(out, Tensor) or out.dim() != x.dim() or out.shape[0] != x.shape[0]:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(
            f"{who}: the attribution has shape {shape}; expected [{x.shape[0]}, K, *spatial] "
            f"with the input's {x.dim() - 2} spatial dims (for Layer methods: choose a "
            f"convolutional layer)"
        )
    attr = reduce_channels(out.float(), reduce)
    if tuple(attr.shape[2:]) != tuple(x.shape[2:]):
        attr = upsample(attr, x)
    return finish(attr, x)


# -- pytorch-grad-cam -----------------------------------------------------------------------------
@functools.cache
def gradcam_method(name: str) -> type[AdapterMethod]:
    """The ``Method`` class for ``pytorch_grad_cam.<name>`` (registry prefix ``gradcam:``)."""
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.base_cam import BaseCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except Exception as exc:  # ImportError, or RuntimeError from a mismatched torchvision
        fix = _TORCHVISION_FIX.format(pkg="grad-cam", torch=torch.__version__)
        raise UserError(f"pytorch-grad-cam is not importable: {_first_line(exc)}; {fix}") from exc
    classes: dict[str, Any] = {
        n: obj
        for n in dir(pytorch_grad_cam)
        if inspect.isclass(obj := getattr(pytorch_grad_cam, n))
        and issubclass(obj, BaseCAM)
        and obj is not BaseCAM
    }
    if name not in classes:
        raise UserError(
            f"unknown pytorch-grad-cam method {name!r}; {_suggest(name, list(classes))}"
            f"available: {', '.join(sorted(classes))}"
        )
    cls = classes[name]

    def attribute(
        self: AdapterMethod,
        model: ExplainedModel,
        x: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator,
    ) -> Tensor:
        import numpy as np

        check_inputs(x, target)
        layer = model.target_layer(self.params["layer"])
        targets = [ClassifierOutputTarget(int(c)) for c in target.tolist()]
        out: Any = None
        with explaining(model) as module, without_new_attributes(module), torch.enable_grad():
            inputs = x.detach().clone().requires_grad_(True)
            with cls(model=module, target_layers=[layer]) as cam:
                out = cam(
                    input_tensor=inputs,
                    targets=targets,
                    aug_smooth=self.params["aug_smooth"],
                    eigen_smooth=self.params["eigen_smooth"],
                )
        if out is None:  # BaseCAM.__exit__ swallows an IndexError
            raise RuntimeError(f"gradcam:{name} failed inside pytorch-grad-cam (an IndexError)")
        maps = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(x.device)
        if maps.dim() == x.dim() - 1:
            maps = maps.unsqueeze(1)
        return _to_map(maps, x, "sum", f"gradcam:{name}")

    doc = (
        f"pytorch-grad-cam's {name} at a target layer, through benchbox's adapter.\n\n"
        f"Parameters: ``layer`` (a target layer name, ``auto`` = the model's default), "
        f"``aug_smooth`` and ``eigen_smooth`` (pytorch-grad-cam's smoothing options). The maps are "
        f"pytorch-grad-cam's: ReLU'd, min-max scaled to [0, 1] per image and resized to the "
        f"input.\n\n{inspect.getdoc(cls) or ''}"
    )
    parameters: list[tuple[str, Any, Any]] = [
        ("layer", str, "auto"),
        ("aug_smooth", bool, False),
        ("eigen_smooth", bool, False),
    ]
    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    return _build_class(
        f"GradCam_{name}", doc, needs, parameters, attribute, f"gradcam:{name}", supports_3d=False
    )


# -- zennit ---------------------------------------------------------------------------------------
_ZENNIT_OBJECT_ARGS = frozenset({"layer_map", "first_map", "canonizers", "name_map", "module_map"})


@functools.cache
def zennit_method(name: str) -> type[AdapterMethod]:
    """The ``Method`` class for zennit composite ``<name>`` (registry prefix ``zennit:``)."""
    try:
        from zennit import composites
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.core import Composite
    except Exception as exc:  # ImportError, or RuntimeError from a mismatched torchvision
        fix = _TORCHVISION_FIX.format(pkg="zennit", torch=torch.__version__)
        raise UserError(f"zennit is not importable: {_first_line(exc)}; {fix}") from exc
    classes: dict[str, Any] = {
        n: obj
        for n in dir(composites)
        if inspect.isclass(obj := getattr(composites, n))
        and issubclass(obj, Composite)
        and obj.__module__ == composites.__name__
    }
    registered: dict[str, Any] = dict(getattr(composites, "COMPOSITES", {}))
    lookup = {**classes, **registered}
    if name not in lookup:
        raise UserError(
            f"unknown zennit composite {name!r}; {_suggest(name, list(lookup))}available: "
            f"{', '.join(sorted(lookup))}"
        )
    cls = lookup[name]
    init = list(inspect.signature(cls.__init__).parameters.values())[1:]
    bounded = {p.name for p in init if p.name in ("low", "high")}
    parameters: list[tuple[str, Any, Any]] = []
    for p in init:
        if p.name in _ZENNIT_OBJECT_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in bounded:
            parameters.append((p.name, float | None, None))
        elif p.default is p.empty:
            raise UserError(f"zennit:{name} is not supported: it needs {p.name!r}")
        else:
            parameters.append((p.name, _annotation_of(p.default), p.default))
    parameters += [("canonize", bool, True), ("reduce", Reduce, "sum")]
    composite_names = [n for n, *_ in parameters[:-2]]

    def attribute(
        self: AdapterMethod,
        model: ExplainedModel,
        x: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator,
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        kwargs = {k: _to_tuples(self.params[k]) for k in composite_names}
        for bound, raw in (("low", 0.0), ("high", 1.0)):
            if bound in bounded:
                kwargs[bound] = _zennit_bound(kwargs[bound], raw, model, x)
        canonizers = [SequentialMergeBatchNorm()] if self.params["canonize"] else None
        composite = cls(canonizers=canonizers, **kwargs)
        onehot = torch.nn.functional.one_hot(target, num_classes=model.num_classes).to(x.dtype)
        with (
            explaining(model) as module,
            without_new_attributes(module),
            torch.enable_grad(),
            Gradient(model=module, composite=composite) as attributor,
        ):
            _, relevance = attributor(x.clone(), lambda out: out * onehot)
        return _to_map(relevance.detach(), x, self.params["reduce"], f"zennit:{name}")

    doc = (
        f"zennit's {name} composite (LRP-type rules per layer) through benchbox's adapter.\n\n"
        f"Parameters: the composite's options ({', '.join(composite_names) or 'none'}), "
        f"``canonize`` (merge BatchNorm into the preceding layer with zennit's "
        f"SequentialMergeBatchNorm) and ``reduce``. ``low``/``high`` (z^B bounds of the first "
        f"layer's input) default to the raw bounds 0 and 1 through the model's normalization "
        f"(``input_spec``). The output relevance is ``y_c`` (the target logit) times one-hot; the "
        f"map is zennit's relevance at the raw input, as zennit returns it (a normalization "
        f"inside the model scales it by 1/std).\n\n{inspect.getdoc(cls) or ''}"
    )
    needs = frozenset({Capability.GRADIENTS})
    return _build_class(f"Zennit_{name}", doc, needs, parameters, attribute, f"zennit:{name}")


def _zennit_bound(value: float | None, raw: float, model: ExplainedModel, x: Tensor) -> Tensor:
    """A z^B bound as a tensor of ``x``'s shape, in the model's normalized input space."""
    shape = (1, x.shape[1], *([1] * (x.dim() - 2)))
    if value is None:
        spec = model.input_spec
        mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(spec.std, dtype=x.dtype, device=x.device)
        bound = ((raw - mean) / std).expand(x.shape[1]).reshape(shape)
    else:
        bound = torch.full(shape, float(value), dtype=x.dtype, device=x.device)
    return bound.expand_as(x).contiguous()
