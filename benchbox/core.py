"""The data contracts every component is written against.

Shapes follow shared/DESIGN.md: images ``x`` are float32 raw intensities in [0, 1] with shape
``[B, C, H, W]`` (or ``[B, C, D, H, W]`` for volumes); masks are bool ``[B, 1, *spatial]``;
attributions are float32 ``[B, 1, *spatial]``; metric scores are float ``[B]``.

This module imports torch but nothing heavier (no captum, no seaborn), so it is safe to import from
the registry and the CLI.
"""

from __future__ import annotations

import contextvars
import difflib
import enum
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .errors import UserError

__all__ = [
    "Batch",
    "Capability",
    "Component",
    "Dataset",
    "ExplainedModel",
    "InputSpec",
    "Method",
    "Metric",
    "MetricContext",
    "MetricOutput",
    "ModelBuilder",
    "Split",
    "Task",
    "as_explained",
    "check_x",
    "conv_layers",
    "last_conv",
    "submodule",
    "with_eval",
]

Split = Literal["train", "val", "test"]
Task = Literal["classification", "segmentation", "anomaly"]


class Capability(str, enum.Enum):
    """What a component needs or provides; the planner matches these (no dispatch on names)."""

    LABELS = "labels"  # dataset: ground-truth class per sample
    MASKS = "masks"  # dataset: ground-truth region per sample
    IMAGES_2D = "images_2d"  # dataset: x is [B, C, H, W]
    VOLUMES_3D = "volumes_3d"  # dataset: x is [B, C, D, H, W]
    GRADIENTS = "gradients"  # model: differentiable w.r.t. its input
    TARGET_LAYER = "target_layer"  # model: a named convolutional layer for CAM-type methods
    GAP_HEAD = "gap_head"  # model: conv features -> global average pooling -> linear (CAM)
    ATTENTION_MAPS = "attention_maps"  # model: exposes its own attention maps (attention_cnn)
    RECONSTRUCTION = "reconstruction"  # model: reconstructs its input (VAE anomaly maps)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Batch:
    """One batch of samples on the job's device.

    Attributes:
        x: float32 ``[B, C, *spatial]``, raw intensities in [0, 1].
        label: long ``[B]``, ground-truth class.
        target: long ``[B]``, the class the explanation is for (label or prediction).
        mask: bool ``[B, 1, *spatial]`` ground-truth region, or None when the dataset has none.
        ids: stable sample ids, one per sample; they key every stored row.
        aux_masks: further named bool ``[B, 1, *spatial]`` regions (e.g. ``"marker"``: a
            spurious scanner tag), so a metric can ask whether a map points at them.
        meta: per-batch facts a loader keeps (e.g. ``"spacing"``: voxel size ``[B, n_dims]``).
    """

    x: Tensor
    label: Tensor
    ids: tuple[str, ...]
    target: Tensor | None = None
    mask: Tensor | None = None
    aux_masks: Mapping[str, Tensor] = field(default_factory=dict)
    meta: Mapping[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            x=self.x.to(device),
            label=self.label.to(device),
            ids=self.ids,
            target=None if self.target is None else self.target.to(device),
            mask=None if self.mask is None else self.mask.to(device),
            aux_masks={k: v.to(device) for k, v in self.aux_masks.items()},
            meta={k: v.to(device) for k, v in self.meta.items()},
        )

    def with_target(self, target: Tensor) -> Batch:
        return replace(self, target=target)

    def select(self, keep: Tensor) -> Batch:
        """The samples where ``keep`` (bool ``[B]``) is True, every per-sample field with them."""
        n = len(self)
        idx = keep.nonzero().flatten()

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx.to(t.device)]

        def per_sample(t: Tensor) -> Tensor:  # meta holds per-sample tensors [B, ...]
            return t[idx.to(t.device)] if t.ndim and t.shape[0] == n else t

        return Batch(
            x=self.x[idx],
            label=self.label[idx.to(self.label.device)],
            ids=tuple(self.ids[k] for k in idx.tolist()),
            target=take(self.target),
            mask=take(self.mask),
            aux_masks={k: v[idx.to(v.device)] for k, v in self.aux_masks.items()},
            meta={k: per_sample(v) for k, v in self.meta.items()},
        )


# ids of the components whose outermost __init__ is running: a subclass's super().__init__(...)
# is not validated again against the parent's signature.
_CONSTRUCTING: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "benchbox_constructing", default=frozenset()
)


class Component:
    """Base of every registry entry: a one-line description and declared capabilities.

    Components take keyword-only parameters in ``__init__``; they are validated against the
    signature's type hints (see ``benchbox.params``), so constraints such as ``PositiveInt`` are
    part of the signature, not of ad-hoc checks. That holds for a suite's parameters and for a
    component constructed in Python alike: every subclass's ``__init__`` is wrapped to check its
    keyword arguments first (``PointingGame(tolerance=-3)`` raises ``ParameterError``).
    """

    needs: ClassVar[frozenset[Capability]] = frozenset()
    provides: ClassVar[frozenset[Capability]] = frozenset()
    # The name a suite gives a generated class (an adapter's "captum:Occlusion"); built-ins are
    # named by the registry's table (benchbox.registry.name_of).
    registry_name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self: Any, *args: Any, **params: Any) -> None:
            active = _CONSTRUCTING.get()
            if id(self) in active:  # a parent's __init__ through super()
                init(self, *args, **params)
                return
            from .params import check_construction
            from .registry import name_of

            check_construction(type(self), params, name_of(type(self)))
            token = _CONSTRUCTING.set(active | {id(self)})
            try:
                init(self, *args, **params)
            finally:
                _CONSTRUCTING.reset(token)

        cls.__init__ = checked_init  # type: ignore[method-assign]

    def requirements(self) -> frozenset[Capability]:
        """What this instance needs; a wrapper needs what its base needs (SmoothGrad of
        Grad-CAM needs a target layer). Default: the class's ``needs``."""
        return frozenset(type(self).needs)

    def resolved_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters to record, given the validated ones; a wrapper fills in its base's
        defaults here so ``*_params`` say exactly what ran. Default: ``params`` unchanged."""
        return params


class Dataset(Component, ABC):
    """A map-style dataset with deterministic train/val/test splits.

    Subclasses produce samples by index so that batches can be streamed without holding the whole
    split in memory.
    """

    num_classes: int
    channels: int
    spatial_size: tuple[int, ...]

    @abstractmethod
    def split_size(self, split: Split) -> int: ...

    @abstractmethod
    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        """Samples ``indices`` of ``split`` as one CPU batch (``target`` left unset)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """Everything that determines the data; part of the model cache key."""

    def probe_sets(self) -> dict[str, tuple[Split, Callable[[Batch], Batch]]]:
        """Named variants of a split on which every trained model is also evaluated.

        E.g. ``{"test_without_marker": ("test", remove_marker)}``: the runner records the model's
        accuracy on each in the manifest (``<name>_accuracy``), which shows whether a model relies
        on a shortcut. Default: none.
        """
        return {}

    def verify(self) -> list[str]:
        """Read every file the dataset uses and return one line per file that cannot be used
        (``benchbox validate --deep``); reading a file is otherwise lazy, at its first batch.
        Default: nothing to read (generated data). File datasets decode every image and mask."""
        return []

    def batches(self, split: Split, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        n = self.split_size(split)
        if limit is not None:
            n = min(n, limit)
        for start in range(0, n, batch_size):
            yield self.get(split, range(start, min(start + batch_size, n)))


@dataclass(frozen=True)
class InputSpec:
    """Preprocessing facts of a model. Normalization happens *inside* the model."""

    channels: int
    size: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class ExplainedModel:
    """A model ready to be explained: eval mode, normalization inside, named target layers.

    Whatever the task, ``module`` maps raw ``x`` ``[B, C, *spatial]`` to class scores
    ``[B, num_classes]``, so methods and metrics see one scalar target function per class:
    classification — the logits; segmentation — a class's logits summed inside a region (the
    network is wrapped); anomaly detection — the anomaly score as a single "class".

    Attributes:
        module: maps raw ``x`` ``[B, C, *spatial]`` to scores ``[B, num_classes]``.
        target_layers: name -> submodule for CAM-type methods; ``"auto"`` is the last conv layer.
        info: facts recorded in the manifest (test accuracy, AUROC, cache key, ...).
    """

    module: nn.Module
    input_spec: InputSpec
    num_classes: int
    target_layers: dict[str, nn.Module] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    provides: frozenset[Capability] = frozenset({Capability.GRADIENTS})
    task: Task = "classification"

    def target_layer(self, name: str = "auto") -> nn.Module:
        from .errors import UserError

        try:
            return self.target_layers[name]
        except KeyError:
            raise UserError(
                f"model has no target layer {name!r}; available: {sorted(self.target_layers)}"
            ) from None

    def __call__(self, x: Tensor) -> Tensor:
        return self.module(x)


class ModelBuilder(Component, ABC):
    """Builds (trains or loads) a model for a dataset. Registered under ``models``."""

    @abstractmethod
    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel: ...

    def preflight(self, dataset: Dataset, *, seed: int) -> None:
        """Check what the user supplied (their module, weights files) before any job runs.

        The runner calls it for every model a run will build, before it creates the run folder,
        so a wrong path or a bad checkpoint is an input error (exit 2) rather than a run of
        error rows. It must be cheap and must not train: it imports, constructs and loads, it
        does not evaluate (what depends on the data is ``build``'s). Raise ``UserError``.
        Default: nothing to check (a built-in model has no user-supplied parts).
        """


class Method(Component, ABC):
    """An attribution method: ``attribute(model, x, target) -> [B, 1, *spatial]``.

    Implementations must leave no hooks behind, leave the model's parameters unchanged, and draw
    every random number from ``generator``. ``supports_3d`` says whether volumes
    ``[B, C, D, H, W]`` are accepted (the contract tests check it).

    Called from Python, ``model`` may also be a plain ``nn.Module`` (wrapped as
    ``benchbox.explain`` wraps it, in eval mode for the call) and ``generator`` may be left out
    (one seeded with 0 on ``x``'s device): every subclass's ``attribute`` is wrapped to supply
    both, so implementations always receive an ``ExplainedModel`` and a generator. Calling the
    method object does the same with types that say so: ``GradCAM()(net, x, target)``.
    """

    supports_3d: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("attribute")
        if impl is None or getattr(impl, "__isabstractmethod__", False):
            return

        @functools.wraps(impl)
        def attribute(
            self: Method,
            model: ExplainedModel | nn.Module,
            x: Tensor,
            target: Tensor,
            *,
            generator: torch.Generator | None = None,
        ) -> Tensor:
            if generator is None:
                from .seeding import make_generator

                generator = make_generator(0, x.device)
            if isinstance(model, ExplainedModel):
                return impl(self, model, x, target, generator=generator)
            return with_eval(
                model, lambda m: impl(self, m, x, target, generator=generator), x, None
            )

        cls.attribute = attribute  # type: ignore[method-assign]

    @abstractmethod
    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor: ...

    def __call__(
        self,
        model: ExplainedModel | nn.Module,
        x: Tensor,
        target: Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``attribute`` with a plain module allowed and the generator optional (typed so):
        ``GradCAM()(net, x, target)``."""
        return self.attribute(model, x, target, generator=generator)  # type: ignore[arg-type]


@dataclass
class MetricOutput:
    """Per-sample scores of one metric (variant) on one batch.

    Attributes:
        values: float ``[B]``; NaN where the metric is undefined for a sample.
        reasons: per-sample message (None where the score is defined), counted in the results.
        curves: optional ``[B, T]`` per-sample curve with its x-axis ``curve_x`` ``[T]``.
    """

    values: Tensor
    reasons: list[str | None] | None = None
    curves: Tensor | None = None
    curve_x: Tensor | None = None


@dataclass
class MetricContext:
    """What a metric sees: the model, the batch (with target), the attributions and the method.

    Metrics that re-explain call ``method.attribute`` on a changed model or input. Those that need
    a *differently trained* model (data randomization: permuted labels; repeatability: another
    training seed) call ``rebuild(permute_labels=True)``: the job's model builder with those
    parameters changed, trained or loaded from the weight cache like the original, built once per
    job and shared by its batches. ``rebuild`` is None outside the runner.
    """

    model: ExplainedModel
    batch: Batch
    attributions: Tensor
    method: Method
    generator: torch.Generator
    batch_size: int
    rebuild: Callable[..., ExplainedModel] | None = None


class Metric(Component, ABC):
    """A per-sample score of an attribution. Direction is a class attribute that tables read.

    ``higher_is_better`` is the headline direction; a metric whose outputs (variants) differ
    states them in ``variant_higher_is_better`` (``None``: a diagnostic, never ranked) and names
    outputs that are a reference level in ``reference_variants``. The runner records all three
    in the manifest (``benchbox.outputs``), which is what the report and the CI gate read.
    """

    higher_is_better: ClassVar[bool]
    variant_higher_is_better: ClassVar[Mapping[str, bool | None]] = {}
    reference_variants: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def score(self, ctx: MetricContext) -> MetricOutput | Mapping[str, MetricOutput]:
        """One output, or several keyed by variant name (stored in the ``variant`` column)."""


# -- plain modules: what benchbox.explain and Method.attribute wrap ---------------------------
def _conv_info(m: nn.Module) -> tuple[int, int] | None:
    """(spatial dims, input channels) of a 2D/3D convolution, also inside TorchScript."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        return (2 if isinstance(m, nn.Conv2d) else 3), int(m.in_channels)
    if isinstance(m, torch.jit.ScriptModule):
        kind = getattr(m, "original_name", "")
        if kind in ("Conv2d", "Conv3d"):
            return (2 if kind == "Conv2d" else 3), int(m.weight.shape[1] * m.groups)
    return None


def conv_layers(net: nn.Module) -> list[tuple[str, nn.Module, int, int]]:
    """``(path, module, spatial dims, in_channels)`` of every conv, in registration order."""
    out = []
    for name, m in net.named_modules():
        info = _conv_info(m)
        if info is not None:
            out.append((name, m, *info))
    return out


def last_conv(net: nn.Module, spatial_dims: int) -> str | None:
    """Path of the last conv (registration order) of the dataset's dimensionality."""
    convs = conv_layers(net)
    same = [c for c in convs if c[2] == spatial_dims] or convs
    return same[-1][0] if same else None


def as_explained(
    model: nn.Module | ExplainedModel, x: Tensor, *, layer: str | nn.Module | None = None
) -> ExplainedModel:
    """``model`` as benchbox's methods and metrics see it.

    An ``ExplainedModel`` is returned as it is (with ``layer`` as its ``"auto"`` target layer
    when given). A plain ``nn.Module`` must map raw ``x`` ``[B, C, *spatial]`` to class scores
    ``[B, K]`` (normalization inside it); one forward pass of ``x[:1]`` reads ``K``. Its CAM
    layer is ``layer`` (a dotted submodule path or the module itself), else its last
    ``Conv2d``/``Conv3d`` of ``x``'s dimensionality; without one, CAM-type methods are refused.
    """
    if isinstance(model, ExplainedModel):
        if layer is None:
            return model
        found = _layer(model.module, layer)
        return _replace_layers(model, {**model.target_layers, "auto": found})
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model: expected a torch.nn.Module (or benchbox.core.ExplainedModel), got "
            f"{type(model).__name__}"
        )
    check_x(x)
    if layer is not None:
        layers = {"auto": _layer(model, layer)}
    else:
        path = last_conv(model, x.dim() - 2)
        layers = {} if path is None else {"auto": model.get_submodule(path)}
    with torch.no_grad():
        out = model(x[:1])
    if not (isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == 1):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise UserError(
            f"model: expected class scores [B, K] from a batch [B, C, *spatial], got {shape} for "
            f"x[:1]; wrap the network so that it returns one score per class"
        )
    channels = int(x.shape[1])
    provides = {Capability.GRADIENTS} | ({Capability.TARGET_LAYER} if layers else set())
    return ExplainedModel(
        module=model,
        input_spec=InputSpec(channels, tuple(x.shape[2:]), (0.0,) * channels, (1.0,) * channels),
        num_classes=int(out.shape[1]),
        target_layers=layers,
        provides=frozenset(provides),
    )


def check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() not in (4, 5) or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise UserError(f"x: expected a float tensor [B, C, H, W] or [B, C, D, H, W], got {got}")


def _layer(net: nn.Module, layer: str | nn.Module) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in net.modules()):
            raise UserError("layer: the module given is not a submodule of the model")
        return layer
    return submodule(net, layer, "layer")


def submodule(net: nn.Module, path: str, where: str) -> nn.Module:
    """``net``'s submodule at dotted ``path``; else a ``UserError`` for ``where`` (the field
    that named it) with close names and the top-level children."""
    modules = dict(net.named_modules())
    if not path or path not in modules:
        close = difflib.get_close_matches(path, [n for n in modules if n], n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        top = ", ".join(n for n, _ in net.named_children())
        raise UserError(
            f"{where}: the network has no submodule {path!r}; {hint}give a dotted path such as "
            f"'layer4' or 'features.3' (top-level: {top})"
        )
    return modules[path]


def _replace_layers(model: ExplainedModel, layers: dict[str, nn.Module]) -> ExplainedModel:
    return replace(model, target_layers=layers, provides=model.provides | {Capability.TARGET_LAYER})


def with_eval(model: nn.Module | ExplainedModel, call: Any, x: Tensor, layer: Any) -> Any:
    """``call(as_explained(model, x, layer=layer))`` with the network in eval mode, every
    submodule's training flag given back afterwards."""
    net = model.module if isinstance(model, ExplainedModel) else model
    modes = {m: m.training for m in net.modules()} if isinstance(net, nn.Module) else {}
    if isinstance(net, nn.Module):
        net.eval()
    try:
        return call(as_explained(model, x, layer=layer))
    finally:
        for m, mode in modes.items():
            m.training = mode
