"""Models users bring: their own ``nn.Module`` with local weights, TorchScript files, and
torchvision / timm architectures.

Nothing here trains by default and nothing downloads: weights come from a local file the suite
names, read with ``safetensors`` or ``torch.load(..., weights_only=True)``, so a checkpoint can
hold tensors but never run code (shared/DESIGN.md, "Error policy"). Every builder wraps the
network in an ``InputAdapter`` so that ``ExplainedModel.module`` keeps benchbox's contract::

    raw x [B, C_data, *sp] in [0, 1] -> (repeat to C_net channels) -> ((x - mean) / std) -> net
                                      -> scores [B, K]

- ``UserModel`` (``user_model``): ``module: "package.module:Class"`` (or a factory function),
  ``kwargs``, ``weights: path.safetensors | path.pt``; evaluated on the dataset's test split.
- ``TorchScript`` (``torchscript``): a ``torch.jit.save`` d file. Loading one *executes the
  TorchScript code it contains* (the file is a program, not data); benchbox loads it only when a
  suite names it, which is the user's explicit choice. No target layer: torch refuses forward
  hooks on ScriptModules (``register_forward_hook is not supported on ScriptModules``), so
  Grad-CAM and other CAM-type methods are skipped for it by the planner.
- ``torchvision:<arch>`` / ``timm:<arch>``: ``torchvision.models.<arch>(weights=None)`` or
  ``timm.create_model(<arch>, pretrained=False)`` with optional local weights, 1-channel
  adaptation, head replacement and optional fine-tuning (``benchbox.models.training``).

What the input adapter does, and why: benchbox feeds raw intensities in [0, 1] and perturbs them
in that space (deletion substrates, IG baselines), so normalization must be part of the model.
``normalize: add`` inserts ``(x - mean) / std`` (per network channel); ``normalize: inside`` says
the network already normalizes (``mean`` / ``std`` are then only recorded). A binary classifier
with a single logit ``z`` (``[B]`` or ``[B, 1]``) on a two-class dataset is given two logits
``[-z/2, z/2]``: ``softmax`` of them is ``[1 - σ(z), σ(z)]``, the classifier's own probabilities,
and ``∂y_1/∂x = ½ ∂z/∂x = -∂y_0/∂x``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import math
import pickle
import re
import warnings
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core import (
    Capability,
    Dataset,
    ExplainedModel,
    InputSpec,
    ModelBuilder,
    Task,
    conv_layers,
    last_conv,
    submodule,
)
from ..errors import UserError
from ..params import MAX_COUNT, Size
from ..registry import import_object
from ..seeding import derive_seed
from . import training

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputAdapter",
    "TimmModel",
    "TorchScript",
    "TorchvisionModel",
    "UserModel",
    "apply_state_dict",
    "load_state_dict_file",
    "timm_builder",
    "torchvision_builder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalize = Literal["inside", "add"]
Output = Literal["logits", "binary", "score"]
Region = Literal["predicted", "all"]  # as benchbox.models.targets (imported lazily)
Reduction = Literal["sum", "mean"]
PositiveFloat = Annotated[float, Field(gt=0)]

# Suffixes read with torch.load(weights_only=True); ".safetensors" goes to safetensors.
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Checkpoint dicts that wrap the state_dict (training scripts, Lightning) under one of these keys.
_WRAPPED_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes that wrappers add to every key: DataParallel ("module."), Lightning ("model.", "net.").
_KEY_PREFIXES = ("module.", "model.", "net.")


# -- weights ---------------------------------------------------------------------------------------
def _few(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", … ({len(keys) - n} more)" if len(keys) > n else "")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, recorded in the manifest to identify the weights used."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _existing_file(path: str, where: str, what: str) -> Path:
    p = Path(path).expanduser()
    if p.is_symlink() and not p.exists():
        raise UserError(
            f"{where}: {str(p)!r} is a symbolic link to nothing (broken, or a loop); point it "
            f"at the {what} file or give the file's own path"
        )
    if not p.exists():
        raise UserError(
            f"{where}: {what} file not found: {str(p)!r}; check the path (a relative path starts "
            f"at the working directory {str(Path.cwd())!r})"
        )
    if p.is_dir():
        raise UserError(f"{where}: {str(p)!r} is a directory; give the path of the {what} file")
    return p


def _unpickling_problem(exc: BaseException) -> tuple[str | None, str]:
    """(the global a weights-only unpickler refused, e.g. ``posix.system``, or None; a one-line
    reason), from torch's multi-paragraph message."""
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return match.group(1), f"it refers to {match.group(1)}"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return None, detail.group(1).strip() if detail else text.strip().splitlines()[0]


def _is_torchscript(path: Path) -> bool:
    """A zip with ``constants.pkl``: what torch.load itself checks before refusing a TorchScript
    archive under ``weights_only`` (checked here first, to say so without torch's warning)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_dict_file(path: str, *, where: str = "weights") -> dict[str, Tensor]:
    """Read a state_dict from ``.safetensors`` or a ``.pt/.pth/.bin/.ckpt`` file, on the CPU.

    ``.safetensors`` is read with ``safetensors.torch.load_file`` (a flat name -> tensor format
    that cannot hold code). The others are read with ``torch.load(path, map_location="cpu",
    weights_only=True)`` only: the restricted unpickler accepts tensors and plain containers and
    refuses any other global, so a checkpoint whose pickle would construct arbitrary objects (or
    call ``os.system``) is refused before anything runs. A checkpoint dict that wraps the weights
    under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is unwrapped.

    Raises ``UserError`` (one line naming ``where``, the file and the fix) when the file is
    missing, unreadable, of an unknown format, refused, or holds no name -> tensor mapping.
    """
    p = _existing_file(path, where, "weights")
    suffix = p.suffix.lower()
    obj: Any
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise UserError(
                f"{where}: cannot read {str(p)!r} as safetensors ({exc}); the file is "
                f"truncated or not a safetensors file (a torch.save file must end in .pt)"
            ) from exc
    elif suffix in _TORCH_SUFFIXES:
        if _is_torchscript(p):
            raise UserError(
                f"{where}: {str(p)!r} is a TorchScript archive, not a state_dict; name it "
                f"with the torchscript model instead (models: [{{torchscript: {{path: ...}}}}])"
            )
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused, reason = _unpickling_problem(exc)
            if refused is None:
                raise UserError(
                    f"{where}: cannot read {str(p)!r} with torch.load ({reason}); the file is "
                    f"truncated or not a PyTorch checkpoint"
                ) from None
            raise UserError(
                f"{where}: {str(p)!r} is refused: it pickles Python objects, not only tensors "
                f"({reason}), and benchbox never unpickles arbitrary objects; re-save it as a "
                f"state_dict (torch.save(model.state_dict(), path)) or as safetensors"
            ) from None
        except RuntimeError as exc:
            raise UserError(
                f"{where}: cannot read {str(p)!r} with torch.load "
                f"({str(exc).splitlines()[0]}); the file is truncated or not a PyTorch checkpoint"
            ) from exc
        except (EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise UserError(
                f"{where}: cannot read {str(p)!r} with torch.load ({type(exc).__name__}: {exc}); "
                f"the file is truncated or not a PyTorch checkpoint"
            ) from exc
    else:
        raise UserError(
            f"{where}: {str(p)!r} has the suffix {suffix or '(none)'!r}; expected .safetensors or "
            f".pt/.pth/.bin/.ckpt (a state_dict saved with torch.save); rename or convert it"
        )
    if isinstance(obj, Mapping):
        for key in _WRAPPED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        kind = "an empty mapping" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise UserError(
            f"{where}: {str(p)!r} holds {kind}, not a state_dict; save model.state_dict()"
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors or not all(isinstance(k, str) for k in obj):
        raise UserError(
            f"{where}: {str(p)!r} holds a dict whose entries {_few(not_tensors)} are not tensors "
            f"and no {' / '.join(repr(k) for k in _WRAPPED_KEYS)} entry; save model.state_dict() "
            f"(or a dict with the state_dict under 'state_dict')"
        )
    return dict(obj)


def _strip_prefix(
    state: dict[str, Tensor], own: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], str | None]:
    """Drop a wrapper's key prefix (``module.`` …) when no key matches as is but all do without."""
    if set(state) & set(own):
        return state, None
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) & set(own):
                return stripped, prefix
    return state, None


def apply_state_dict(
    net: nn.Module,
    state: dict[str, Tensor],
    *,
    strict: bool,
    where: str,
    path: str,
    shape_hint: str = "",
) -> dict[str, Any]:
    """Load ``state`` into ``net``; a mismatch is a ``UserError`` listing a few offending keys.

    Shapes are compared first (torch raises on them even with ``strict=False``); with ``strict``
    every key must match both ways, as ``nn.Module.load_state_dict(strict=True)``; without it the
    keys present in both are loaded (at least one must be). ``shape_hint`` replaces the generic
    fix of a shape mismatch. Returns facts for the manifest.
    """
    own = net.state_dict()
    state, stripped = _strip_prefix(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong:
        detail = ", ".join(
            f"{k}: file {list(state[k].shape)} vs network {list(own[k].shape)}" for k in wrong[:3]
        )
        raise UserError(
            f"{where}: {len(wrong)} tensors of {path!r} have the wrong shape ({detail}"
            f"{', …' if len(wrong) > 3 else ''}); "
            + (
                shape_hint
                or "the weights are for another architecture, another number of classes or "
                "other constructor arguments"
            )
        )
    if not set(state) & set(own):
        raise UserError(
            f"{where}: no key of {path!r} matches the network (file: {_few(unexpected)}; "
            f"network: {_few(missing)}); the weights are for another network"
        )
    if strict and (missing or unexpected):
        raise UserError(
            f"{where}: {path!r} does not match the network: {len(missing)} missing keys "
            f"({_few(missing) or 'none'}), {len(unexpected)} unexpected keys "
            f"({_few(unexpected) or 'none'}); fix module/kwargs, or set strict: false to load "
            f"only the keys that match"
        )
    net.load_state_dict(state, strict=False)
    return {
        "weights_missing_keys": len(missing),
        "weights_unexpected_keys": len(unexpected),
        "weights_prefix_stripped": stripped,
    }


def _load_weights(
    net: nn.Module, path: str, *, strict: bool, where: str, shape_hint: str = ""
) -> dict[str, Any]:
    state = load_state_dict_file(path, where=where)
    facts = apply_state_dict(
        net, state, strict=strict, where=where, path=path, shape_hint=shape_hint
    )
    p = Path(path).expanduser()
    return {"weights": str(p), "weights_sha256": file_sha256(p), **facts}


# -- the input adapter -----------------------------------------------------------------------------
class InputAdapter(nn.Module):
    """Raw ``x`` ``[B, C, *sp]`` in [0, 1] -> channel repeat -> normalization -> ``net`` -> scores.

    Args:
        net: the user's network; its submodules stay reachable as ``adapter.net.<path>``.
        repeat: if set, a 1-channel ``x`` is repeated to this many channels first.
        mean, std: per network-channel normalization ``(x - mean) / std`` (``None``: none).
        output: ``"logits"`` (``net`` returns ``[B, K]``, or ``[B, K, *sp]`` for segmentation),
            ``"binary"`` (one logit ``z`` -> ``[-z/2, z/2]``) or ``"score"`` (``[B]`` ->
            ``[B, 1]``, an anomaly score).
    """

    mean: Tensor | None
    std: Tensor | None

    def __init__(
        self,
        net: nn.Module,
        *,
        repeat: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        output: Output = "logits",
    ) -> None:
        super().__init__()
        self.net = net
        self.repeat = repeat
        self.output: Output = output
        # Buffers, so they follow .to(device) and travel with the state_dict.
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).float())
        self.register_buffer("std", None if std is None else torch.tensor(std).float())

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat:
            x = x.repeat(1, self.repeat, *([1] * (x.dim() - 2)))
        if self.mean is not None and self.std is not None:
            shape = (1, -1, *([1] * (x.dim() - 2)))
            x = (x - self.mean.view(shape)) / self.std.view(shape)
        y = self.net(x)
        if self.output == "binary":
            z = y.reshape(y.shape[0])
            return torch.stack((-0.5 * z, 0.5 * z), dim=1)
        if self.output == "score":
            return y.reshape(y.shape[0], 1)
        return y


# -- module inspection -----------------------------------------------------------------------------


def _resolve_layers(net: nn.Module, paths: Mapping[str, str], where: str) -> dict[str, nn.Module]:
    return {
        name: submodule(net, path, f"{where}.target_layers.{name}") for name, path in paths.items()
    }


def _replace(net: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, new)


@contextmanager
def _seeded(*keys: object) -> Iterator[None]:
    """Parameter initialisation from a private RNG: the weights depend on ``keys`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(*keys))
        yield


# -- assembling an ExplainedModel ------------------------------------------------------------------
@dataclass
class _Input:
    """The input-spec parameters every external builder shares."""

    channels: int | None
    size: tuple[int, ...] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    normalize: Normalize
    adapt_channels: str

    @staticmethod
    def of(
        channels: int | None,
        size: Sequence[int] | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        normalize: Normalize,
        adapt_channels: str,
    ) -> _Input:
        return _Input(
            None if channels is None else int(channels),
            None if size is None else tuple(int(s) for s in size),
            None if mean is None else tuple(float(v) for v in mean),
            None if std is None else tuple(float(v) for v in std),
            normalize,
            adapt_channels,
        )

    def params(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": None if self.size is None else list(self.size),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "normalize": self.normalize,
            "adapt_channels": self.adapt_channels,
        }


@dataclass
class _Assembled:
    module: nn.Module  # what ExplainedModel.module is (adapter, maybe task-wrapped)
    adapter: InputAdapter
    num_classes: int
    layers: dict[str, nn.Module]
    spec: InputSpec
    facts: dict[str, Any] = field(default_factory=dict)


def _dataset_name(dataset: Dataset) -> str:
    return type(dataset).__name__


def _probe_x(dataset: Dataset) -> Tensor:
    """Two test samples (or zeros of the dataset's shape if the split is empty)."""
    n = dataset.split_size("test")
    if n == 0:
        return torch.zeros(2, dataset.channels, *dataset.spatial_size)
    return dataset.get("test", range(min(2, n))).x


def _assemble(
    net: nn.Module,
    dataset: Dataset,
    *,
    where: str,
    inp: _Input,
    task: Task,
    num_classes: int | None,
    layer_paths: Mapping[str, str] | None,
    auto_layer: str | None,
    device: torch.device,
    default_mean: Sequence[float] | None = None,
    default_std: Sequence[float] | None = None,
    region: Region = "predicted",
    reduction: Reduction = "sum",
    stem_ok: bool = False,
) -> _Assembled:
    """Check the network against the dataset, wrap it, and find its classes and target layers.

    ``net`` must already be on ``device`` and hold its final weights. ``layer_paths=None`` means
    the network cannot serve target layers (TorchScript); ``stem_ok`` that the builder offers
    ``adapt_channels: stem`` (said in the fix). Every incompatibility is a UserError.
    """
    ds = _dataset_name(dataset)
    d_ch, d_size = dataset.channels, tuple(dataset.spatial_size)
    convs = conv_layers(net)
    if inp.channels is not None:
        net_ch, source = inp.channels, f"channels: {inp.channels}"
    elif convs:
        net_ch = convs[0][3]
        source = f"its first convolution {convs[0][0]!r} takes {net_ch}"
    else:
        net_ch, source = d_ch, ""
    repeat: int | None = None
    if net_ch != d_ch:
        if inp.adapt_channels == "repeat" and d_ch == 1:
            repeat = net_ch
        elif inp.adapt_channels == "repeat":
            raise UserError(
                f"{where}.adapt_channels: 'repeat' copies a 1-channel image into the network's "
                f"{net_ch} channels, but the dataset ({ds}) has {d_ch} channels; "
                + ("set adapt_channels: stem, or " if stem_ok else "")
                + f"use a network with {d_ch} input channels"
            )
        else:
            fix = "set adapt_channels: repeat to copy the image into every channel, "
            raise UserError(
                f"{where}: the network expects {net_ch} input channels ({source}) but the "
                f"dataset ({ds}) has {d_ch}; {fix}set channels: {d_ch} if the network takes "
                f"{d_ch}, or use a dataset with {net_ch} channels"
            )
    if inp.size is not None and inp.size != d_size:
        raise UserError(
            f"{where}.size: the network expects spatial size {list(inp.size)} but the dataset "
            f"({ds}) gives {list(d_size)}; set the dataset's size to match, or drop size if the "
            f"network accepts any size"
        )

    mean = inp.mean if inp.mean is not None else default_mean
    std = inp.std if inp.std is not None else default_std
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) not in (1, net_ch):
            raise UserError(
                f"{where}.{name}: expected 1 or {net_ch} values (one per network input "
                f"channel), got {len(values)}: {list(values)}"
            )
    if inp.normalize == "add" and (mean is None or std is None):
        raise UserError(
            f"{where}.normalize: 'add' needs mean and std (the values the network was trained "
            f"with, on [0, 1] intensities); give them, or set normalize: inside if the network "
            f"normalizes its input itself"
        )
    mean_t = None if mean is None else tuple(mean) * (net_ch if len(mean) == 1 else 1)
    std_t = None if std is None else tuple(std) * (net_ch if len(std) == 1 else 1)
    added = inp.normalize == "add"

    layers: dict[str, nn.Module] = {}
    layer_table: dict[str, str] = {}
    if layer_paths is not None:
        layer_table = dict(layer_paths)
        if "auto" not in layer_table:
            auto = auto_layer or last_conv(net, len(d_size))
            if auto is not None:
                layer_table["auto"] = auto
        layers = _resolve_layers(net, layer_table, where)

    adapter = InputAdapter(
        net,
        repeat=repeat,
        mean=mean_t if added else None,
        std=std_t if added else None,
    ).to(device)
    adapter.eval()
    x = _probe_x(dataset).to(device)
    try:
        with torch.no_grad():
            y = adapter(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        seen = [x.shape[0], repeat or d_ch, *d_size]
        raise UserError(
            f"{where}: a forward pass on a test batch of shape {seen} (after channel "
            f"adaptation) failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); check that "
            f"the network takes [B, C, *spatial] images of the dataset's ({ds}) shape, and "
            f"channels / size / task"
        ) from exc
    if not isinstance(y, Tensor):
        raise UserError(
            f"{where}: the network returned a {type(y).__name__}, not a tensor; wrap it in a "
            f"module (a factory function named as module) that returns the logits tensor"
        )
    output: Output = "logits"
    shape = list(y.shape)
    d_classes = dataset.num_classes
    if task == "anomaly":
        if y.numel() != x.shape[0]:
            raise UserError(
                f"{where}: with task: anomaly the network must return one score per sample "
                f"([B] or [B, 1]); it returned {shape}"
            )
        output, k_out, k = "score", 1, 1
    elif task == "segmentation":
        if y.dim() != x.dim() or tuple(y.shape[2:]) != d_size:
            raise UserError(
                f"{where}: with task: segmentation the network must return logits "
                f"[B, K, {', '.join(map(str, d_size))}]; it returned {shape}"
            )
        k_out = k = int(y.shape[1])
        if k < d_classes:
            raise UserError(
                f"{where}: the segmentation network has {k} output classes but the dataset "
                f"({ds}) has {d_classes} labels; a label must index a class map (use one logit "
                f"map per class, background included)"
            )
    else:
        if y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1):
            if d_classes != 2:
                raise UserError(
                    f"{where}: the network returns one logit per sample but the dataset ({ds}) "
                    f"has {d_classes} classes; a single logit serves binary datasets only"
                )
            output, k_out, k = "binary", 1, 2
        elif y.dim() == 2:
            k_out = k = int(y.shape[1])
        else:
            raise UserError(
                f"{where}: with task: classification the network must return logits [B, K]; "
                f"it returned {shape} (for a segmentation network set task: segmentation)"
            )
        if k != d_classes:
            raise UserError(
                f"{where}: the network outputs {k} class scores but the dataset ({ds}) has "
                f"{d_classes} classes; use a network whose head has {d_classes} outputs (a "
                f"single logit serves 2 classes)"
            )
    if num_classes is not None and num_classes != k_out:
        raise UserError(
            f"{where}.num_classes: the network outputs {k_out} scores per sample but "
            f"num_classes is {num_classes}; drop num_classes (it is inferred) or fix it"
        )
    adapter.output = output

    module: nn.Module = adapter
    if task == "segmentation":
        try:
            from .targets import SegmentationTarget
        except ImportError as exc:
            raise UserError(
                f"{where}.task: 'segmentation' needs benchbox.models.targets, which cannot be "
                f"imported ({exc}); update benchbox, or use task: classification"
            ) from exc
        module = SegmentationTarget(adapter, region=region, reduction=reduction)

    spec = InputSpec(
        channels=d_ch,
        size=d_size,
        # Per *network* input channel (after any repeat); identity when the network normalizes
        # itself and gave no values.
        mean=mean_t if mean_t is not None else (0.0,) * net_ch,
        std=std_t if std_t is not None else (1.0,) * net_ch,
    )
    facts = {
        "task": task,
        "output": output,
        "normalize": inp.normalize,
        "channel_repeat": repeat,
        "target_layers": layer_table,
    }
    return _Assembled(module, adapter, k, layers, spec, facts)


@torch.no_grad()
def _evaluate(
    built: _Assembled, dataset: Dataset, task: Task, device: torch.device, batch_size: int
) -> dict[str, Any]:
    """Test-split facts for the manifest: accuracy/AUROC (classification), AUROC (anomaly
    score vs label != 0), Dice of the predicted foreground (segmentation, if masks)."""
    if task == "classification":
        r = training.evaluate(built.module, dataset, "test", device=device, batch_size=batch_size)
        return {
            "test_accuracy": r["accuracy"],
            "test_auroc": r["auroc"],
            "test_loss": r["loss"],
            "test_n": r["n"],
        }
    built.module.eval()
    scores, labels = [], []
    inter = total = 0.0
    for batch in dataset.batches("test", batch_size):
        x = batch.x.to(device)
        if task == "anomaly":
            scores.append(built.module(x)[:, 0].float().cpu())
            labels.append(batch.label != 0)
        elif batch.mask is not None:
            fg = built.adapter(x).argmax(dim=1) != 0  # [B, *sp]: any non-background class
            mask = batch.mask[:, 0].to(device)
            inter += float((fg & mask).sum())
            total += float(fg.sum() + mask.sum())
    n = dataset.split_size("test")
    if task == "anomaly":
        return {
            "test_auroc": float(training.auroc(torch.cat(scores), torch.cat(labels))),
            "test_n": n,
        }
    return {"test_dice": 2 * inter / total if total else math.nan, "test_n": n}


def _explained(
    built: _Assembled, info: dict[str, Any], provides: frozenset[Capability], task: Task
) -> ExplainedModel:
    built.module.eval()
    caps = provides if built.layers else provides - {Capability.TARGET_LAYER}
    return ExplainedModel(
        module=built.module,
        input_spec=built.spec,
        num_classes=built.num_classes,
        target_layers=built.layers,
        info=info,
        provides=caps,
        task=task,
    )


# -- the user's own module -------------------------------------------------------------------------
class UserModel(ModelBuilder):
    """Your own nn.Module ("package.module:Class" or a factory) with local weights; no training.

    Parameters:
        module: ``"package.module:Class"`` or ``"package.module:factory"`` (called with
            ``kwargs``; must return an ``nn.Module``), or a module-level ``nn.Module`` instance
            (copied). It must be importable: install your package, or run with ``PYTHONPATH=.``.
        kwargs: constructor / factory keyword arguments.
        weights: a ``.safetensors`` file or a ``.pt/.pth`` state_dict (``torch.load`` with
            ``weights_only=True``; a dict holding it under ``"state_dict"`` / ``"model"`` is
            unwrapped; a ``module.`` DataParallel prefix is stripped). ``None``: the constructor's
            initialisation, seeded from the suite seed.
        strict: every key must match both ways (``load_state_dict(strict=True)``).
        channels: input channels the network takes (``None``: its first convolution's).
        size: spatial size the network needs, checked against the dataset (``None``: any).
        mean, std: per-channel normalization of the network's input (1 value or one per channel).
        normalize: ``"inside"`` (default): the network normalizes itself (mean/std only recorded);
            ``"add"``: benchbox adds ``(x - mean) / std`` in front, because it feeds raw [0, 1]
            intensities and perturbs them in that space.
        adapt_channels: ``"repeat"`` copies a 1-channel image into all ``channels``; ``"none"``.
        target_layers: name -> dotted submodule path for CAM-type methods (``{"auto": "layer4"}``).
            Without ``"auto"``, auto is the last ``Conv2d``/``Conv3d`` in registration order (its
            raw output, before any BatchNorm/ReLU; name the block, e.g. ``layer4``, for ResNets).
        num_classes: checked against the network's output (``None``: inferred from a forward
            pass on two test images). It must match the dataset's classes; a single logit
            ``[B]``/``[B, 1]`` serves a 2-class dataset (see the module docstring).
        task: ``"classification"`` (logits ``[B, K]``), ``"segmentation"`` (logits
            ``[B, K, *sp]``, wrapped by ``benchbox.models.targets.SegmentationTarget`` with
            ``region`` and ``reduction``) or ``"anomaly"`` (a score ``[B]``, higher = anomalous).

    The model is evaluated (not trained) on the dataset's test split: ``info`` records test
    accuracy and AUROC (classification), AUROC of the score against ``label != 0`` (anomaly) or
    the Dice of the predicted foreground (segmentation), with the weights' SHA-256.
    """

    provides = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    name: ClassVar[str] = "user_model"

    def __init__(
        self,
        *,
        module: str,
        kwargs: dict[str, Any] = {},  # noqa: B006 -- pydantic copies defaults; never mutated
        weights: str | None = None,
        strict: bool = True,
        channels: Size | None = None,
        size: list[Size] | None = None,
        mean: list[float] | None = None,
        std: list[PositiveFloat] | None = None,
        normalize: Normalize = "inside",
        adapt_channels: Literal["none", "repeat"] = "none",
        target_layers: dict[str, str] = {},  # noqa: B006
        num_classes: Size | None = None,
        task: Task = "classification",
        region: Region = "predicted",
        reduction: Reduction = "sum",
    ) -> None:
        self.module = module
        self.kwargs = dict(kwargs)
        self.weights = weights
        self.strict = strict
        self.input = _Input.of(channels, size, mean, std, normalize, adapt_channels)
        self.target_layers = dict(target_layers)
        self.num_classes = num_classes
        self.task: Task = task
        self.region, self.reduction = region, reduction

    def _construct(self, seed: int) -> nn.Module:
        where = f"{self.name}.module"
        try:
            obj = import_object(self.module)
        except UserError as exc:
            raise UserError(
                f"{where}: {exc}; the module must be importable from the working directory "
                f"(pip install -e your package, or run with PYTHONPATH=.)"
            ) from exc
        if isinstance(obj, nn.Module):
            if self.kwargs:
                raise UserError(
                    f"{self.name}.kwargs: {self.module!r} is a module instance, so kwargs "
                    f"cannot be applied; name its class or a factory function instead"
                )
            return copy.deepcopy(obj)  # never load weights into the user's global object
        if not callable(obj):
            raise UserError(
                f"{where}: {self.module!r} is a {type(obj).__name__}; name an nn.Module class or "
                f"a function that returns one"
            )
        with _seeded(self.name, "init", seed):
            try:
                net = obj(**self.kwargs)
            except TypeError as exc:
                raise UserError(
                    f"{self.name}.kwargs: calling {self.module}(**{self.kwargs!r}) failed: {exc}; "
                    f"match kwargs to its signature"
                ) from exc
        if not isinstance(net, nn.Module):
            raise UserError(
                f"{where}: {self.module}(**kwargs) returned a {type(net).__name__}, not a "
                f"torch.nn.Module; name a Module class or a function that returns one"
            )
        return net

    def preflight(self, dataset: Dataset, *, seed: int) -> None:
        """Import the module, construct the network and load the weights into it (keys and
        shapes), as ``build`` will; no forward pass, no evaluation."""
        net = self._construct(seed)
        if self.weights is not None:
            state = load_state_dict_file(self.weights, where=f"{self.name}.weights")
            where = f"{self.name}.weights"
            apply_state_dict(net, state, strict=self.strict, where=where, path=self.weights)

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        net = self._construct(seed)
        info: dict[str, Any] = {"source": self.name, "module": self.module, "weights": None}
        if self.weights is not None:
            info.update(
                _load_weights(net, self.weights, strict=self.strict, where=f"{self.name}.weights")
            )
        net.to(device).eval()
        built = _assemble(
            net,
            dataset,
            where=self.name,
            inp=self.input,
            task=self.task,
            num_classes=self.num_classes,
            layer_paths=self.target_layers,
            auto_layer=None,
            device=device,
            region=self.region,
            reduction=self.reduction,
        )
        info.update(built.facts)
        info.update(_evaluate(built, dataset, self.task, device, batch_size))
        return _explained(built, info, self.provides, self.task)


# -- TorchScript -----------------------------------------------------------------------------------
class TorchScript(ModelBuilder):
    """A TorchScript file (torch.jit.save); gradients only, no CAM layer. Loading runs its code.

    Security: a TorchScript archive is a program. ``torch.jit.load`` runs the TorchScript code
    it contains (in the TorchScript interpreter, which can call any registered operator, file
    I/O included), so load only files you trust. benchbox loads one only when a suite names it
    explicitly; a plain weights file should be given to ``user_model`` (``weights_only``).

    Parameters: ``path`` (the ``.pt`` file); ``channels``, ``size``, ``mean``, ``std``,
    ``normalize``, ``adapt_channels``, ``num_classes``, ``task``, ``region``, ``reduction`` as
    for ``user_model``.

    No target layer: torch refuses forward hooks on ScriptModules ("register_forward_hook is not
    supported on ScriptModules", torch 2.13), and CAM-type methods (captum ``LayerGradCam``) need
    them; the planner therefore skips grad_cam on this model. For CAM, give the Python class to
    ``user_model`` with the weights as a state_dict. Note: torch 2.13 deprecates TorchScript in
    favour of ``torch.export``.
    """

    provides = frozenset({Capability.GRADIENTS})
    name: ClassVar[str] = "torchscript"

    def __init__(
        self,
        *,
        path: str,
        channels: Size | None = None,
        size: list[Size] | None = None,
        mean: list[float] | None = None,
        std: list[PositiveFloat] | None = None,
        normalize: Normalize = "inside",
        adapt_channels: Literal["none", "repeat"] = "none",
        num_classes: Size | None = None,
        task: Task = "classification",
        region: Region = "predicted",
        reduction: Reduction = "sum",
    ) -> None:
        self.path = path
        self.input = _Input.of(channels, size, mean, std, normalize, adapt_channels)
        self.num_classes = num_classes
        self.task: Task = task
        self.region, self.reduction = region, reduction

    def preflight(self, dataset: Dataset, *, seed: int) -> None:
        """The file exists and is a TorchScript archive (a zip with ``constants.pkl``); it is
        not loaded here (loading runs its code: once, in ``build``)."""
        where = f"{self.name}.path"
        p = _existing_file(self.path, where, "TorchScript")
        if not _is_torchscript(p):
            hint = (
                "it is a torch.save file: give it to user_model as weights, with the Python class "
                "as module"
                if zipfile.is_zipfile(p)
                else "the file is truncated or not a torch.jit.save archive"
            )
            raise UserError(f"{where}: {str(p)!r} is not a TorchScript archive; {hint}")

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        where = f"{self.name}.path"
        p = _existing_file(self.path, where, "TorchScript")
        try:
            with warnings.catch_warnings():
                # torch 2.13 deprecates TorchScript; the docstring says so, once is enough.
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                net = torch.jit.load(str(p), map_location=device)
        except RuntimeError as exc:
            msg = str(exc).splitlines()[0]
            hint = (
                "it looks like a torch.save file: give a state_dict to user_model (weights:) "
                "with the Python class as module"
                if "constants.pkl" in msg
                else "the file is truncated or not a torch.jit.save archive"
            )
            raise UserError(
                f"{where}: cannot load {str(p)!r} as TorchScript ({msg}); {hint}"
            ) from exc
        net.eval()
        built = _assemble(
            net,
            dataset,
            where=self.name,
            inp=self.input,
            task=self.task,
            num_classes=self.num_classes,
            layer_paths=None,
            auto_layer=None,
            device=device,
            region=self.region,
            reduction=self.reduction,
        )
        info: dict[str, Any] = {
            "source": self.name,
            "path": str(p),
            "sha256": file_sha256(p),
            **built.facts,
        }
        info.update(_evaluate(built, dataset, self.task, device, batch_size))
        return _explained(built, info, self.provides, self.task)


# -- torchvision / timm ----------------------------------------------------------------------------
def _import_library(name: str) -> ModuleType:
    """Import torchvision or timm, or say how to install a build that matches torch."""
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError, OSError, AttributeError) as exc:
        # A torchvision wheel built for another torch fails with "operator torchvision::nms
        # does not exist" (RuntimeError), not ImportError.
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise UserError(
            f"{name} is not importable ({reason}); install a torchvision build that matches "
            f"torch {torch.__version__} (the same release line and CPU/CUDA variant, from the "
            f"index you installed torch from), then pip install benchbox[zoo]"
        ) from exc


class _ZooModel(ModelBuilder):
    """A torchvision / timm architecture with local weights only (shared logic)."""

    provides = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})
    library: ClassVar[str] = ""
    arch: ClassVar[str] = ""

    def __init__(
        self,
        *,
        weights: str | None = None,
        strict: bool = True,
        num_classes: Size | None = None,
        adapt_channels: Literal["repeat", "stem"] = "repeat",
        normalize: Normalize = "add",
        mean: list[float] | None = None,
        std: list[PositiveFloat] | None = None,
        target_layers: dict[str, str] = {},  # noqa: B006 -- pydantic copies defaults
        finetune_epochs: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 0,
        finetune_layers: Literal["head", "all"] = "head",
        finetune_lr: Annotated[float, Field(gt=0, le=1)] = 1e-3,
        train_batch_size: Size = 32,
    ) -> None:
        self.weights = weights
        self.strict = strict
        self.num_classes = num_classes
        self.input = _Input.of(None, None, mean, std, normalize, adapt_channels)
        self.target_layers = dict(target_layers)
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_layers = finetune_layers
        self.finetune_lr = float(finetune_lr)
        self.train_batch_size = int(train_batch_size)

    @property
    def name(self) -> str:
        return f"{self.library}:{self.arch}"

    # -- per library --------------------------------------------------------------------------
    @abstractmethod
    def _create(self, lib: ModuleType, num_classes: int) -> nn.Module:
        """The architecture with a ``num_classes`` head, randomly initialised, never downloaded."""

    @abstractmethod
    def _auto_layer(self, net: nn.Module) -> str | None:
        """The family's usual Grad-CAM layer, or None to fall back to the last conv."""

    def _default_norm(self, net: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
        return IMAGENET_MEAN, IMAGENET_STD

    # -- shared -------------------------------------------------------------------------------
    def _head(self, net: nn.Module, out_features: int) -> tuple[str, nn.Linear]:
        """The classifier: the last ``nn.Linear`` with ``out_features`` outputs."""
        heads = [
            (n, m)
            for n, m in net.named_modules()
            if isinstance(m, nn.Linear) and m.out_features == out_features
        ]
        if not heads:
            raise UserError(
                f"{self.name}: cannot find a linear head with {out_features} outputs to "
                f"replace; give weights whose head has the dataset's classes, or use user_model"
            )
        return heads[-1]

    def _adapt_stem(self, net: nn.Module, channels: int, seed: int) -> tuple[str, int]:
        """Replace the first conv by one taking ``channels``; timm's ``adapt_input_conv`` rule:
        1 channel gets the sum of the RGB filters, C channels the filters cycled and scaled
        by 3/C, so a gray image repeated to RGB gives the same first activations."""
        convs = conv_layers(net)
        if not convs:
            raise UserError(f"{self.name}.adapt_channels: 'stem' found no convolution to adapt")
        path, old, _, c_in = convs[0]
        if not isinstance(old, nn.Conv2d) or old.groups != 1:
            raise UserError(
                f"{self.name}.adapt_channels: the first convolution {path!r} cannot be adapted "
                f"(grouped or not Conv2d); use adapt_channels: repeat"
            )
        w = old.weight.detach()
        if channels == 1:
            new_w = w.sum(dim=1, keepdim=True)
        else:
            new_w = w.repeat(1, math.ceil(channels / c_in), 1, 1)[:, :channels] * (c_in / channels)
        with _seeded(self.name, "stem", seed):
            new = nn.Conv2d(
                channels,
                old.out_channels,
                old.kernel_size,  # type: ignore[arg-type]
                stride=old.stride,  # type: ignore[arg-type]
                padding=old.padding,  # type: ignore[arg-type]
                dilation=old.dilation,  # type: ignore[arg-type]
                bias=old.bias is not None,
                padding_mode=old.padding_mode,
            )
        with torch.no_grad():
            new.weight.copy_(new_w)
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
        _replace(net, path, new)
        return path, c_in

    def params(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "strict": self.strict,
            "num_classes": self.num_classes,
            "target_layers": self.target_layers,
            "finetune_epochs": self.finetune_epochs,
            "finetune_layers": self.finetune_layers,
            "finetune_lr": self.finetune_lr,
            "train_batch_size": self.train_batch_size,
            **self.input.params(),
        }

    def _loaded(self, dataset: Dataset, seed: int) -> tuple[nn.Module, int, dict[str, Any]]:
        """(the architecture with a ``k_head``-class head and the weights loaded, ``k_head``,
        facts): everything of ``build`` that only depends on the user's parameters and files."""
        if not self.arch:
            raise UserError(
                f"{type(self).__name__} needs an architecture: name it {self.library}:<arch> in "
                f"the suite (e.g. {self.library}:resnet18)"
            )
        lib = _import_library(self.library)
        d_classes = dataset.num_classes
        k_head = self.num_classes or d_classes
        if k_head != d_classes and self.finetune_epochs == 0:
            raise UserError(
                f"{self.name}.num_classes: the head has {k_head} classes but the dataset "
                f"({_dataset_name(dataset)}) has {d_classes}; benchbox would replace it with an "
                f"untrained {d_classes}-class head: set finetune_epochs (e.g. 5) to train it on "
                f"the train split, or give weights whose head has {d_classes} classes"
            )
        with _seeded(self.name, "init", seed):
            net = self._create(lib, k_head)
        info: dict[str, Any] = {
            "source": self.name,
            "library_version": getattr(lib, "__version__", None),
            "weights": None,
        }
        if self.weights is not None:
            hint = (
                f"if only the head differs, set num_classes to the file's number of classes "
                f"(and finetune_epochs to train a new {d_classes}-class head)"
            )
            info.update(
                _load_weights(
                    net,
                    self.weights,
                    strict=self.strict,
                    where=f"{self.name}.weights",
                    shape_hint=hint,
                )
            )
        return net, k_head, info

    def preflight(self, dataset: Dataset, *, seed: int) -> None:
        """The library imports, the head fits the dataset, the weights load (no fine-tuning)."""
        self._loaded(dataset, seed)

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        net, k_head, info = self._loaded(dataset, seed)
        d_classes = dataset.num_classes
        head_path = None
        if k_head != d_classes or (self.finetune_epochs and self.finetune_layers == "head"):
            head_path, old = self._head(net, k_head)
        if k_head != d_classes and head_path is not None:
            with _seeded(self.name, "head", seed):
                _replace(net, head_path, nn.Linear(old.in_features, d_classes))
            info["head_replaced"] = {"path": head_path, "from": k_head, "to": d_classes}

        mean, std = self._default_norm(net)
        convs = conv_layers(net)
        net_ch = convs[0][3] if convs else dataset.channels
        if self.input.adapt_channels == "stem" and net_ch != dataset.channels:
            path, c_in = self._adapt_stem(net, dataset.channels, seed)
            info["stem_adapted"] = {"path": path, "from": c_in, "to": dataset.channels}
            if self.input.mean is None and len(mean) != dataset.channels:
                # One value per new channel: the average of the pretrained stats (timm's choice
                # for grayscale), since the filters were averaged the same way.
                mean = (sum(mean) / len(mean),) * dataset.channels
                std = (sum(std) / len(std),) * dataset.channels
        net.eval()
        net.to(device)
        built = _assemble(
            net,
            dataset,
            where=self.name,
            inp=self.input,
            task="classification",
            num_classes=None,
            layer_paths=self.target_layers,
            auto_layer=self._auto_layer(net) or last_conv(net, len(dataset.spatial_size)),
            device=device,
            default_mean=mean,
            default_std=std,
            stem_ok=True,
        )
        info.update(built.facts)
        if self.finetune_epochs > 0:
            info.update(self._finetune(built, dataset, seed, device, batch_size, head_path, info))
        info.update(_evaluate(built, dataset, "classification", device, batch_size))
        return _explained(built, info, self.provides, "classification")

    def _finetune(
        self,
        built: _Assembled,
        dataset: Dataset,
        seed: int,
        device: torch.device,
        batch_size: int,
        head_path: str | None,
        info: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Train on the train split (``training.train_classifier``), cached by content."""
        # The weights by content, not by path; the library version, since an architecture's
        # definition (hence the trained weights) may change between releases.
        params = {
            **self.params(),
            "weights": info.get("weights_sha256"),
            "library_version": info.get("library_version"),
        }
        key = training.cache_key(dataset.spec(), type(self), params, seed)

        def fit(module: nn.Module) -> dict[str, Any]:
            target: nn.Module = module
            if head_path is not None and self.finetune_layers == "head":
                target = _FrozenBackbone(module, built.adapter.net.get_submodule(head_path))
            try:
                return training.train_classifier(
                    target,
                    dataset,
                    seed=seed,
                    device=device,
                    epochs=self.finetune_epochs,
                    lr=self.finetune_lr,
                    batch_size=self.train_batch_size,
                    eval_batch_size=batch_size,
                )
            finally:
                if isinstance(target, _FrozenBackbone):
                    target.release()

        facts = training.cached_fit(built.adapter, key, fit)
        built.adapter.to(device).eval()
        return {f"finetune_{k}": v for k, v in facts.items()}


class _FrozenBackbone(nn.Module):
    """Trains only ``head``: the rest keeps ``requires_grad=False`` and stays in eval mode, so
    BatchNorm statistics learnt on ImageNet are not overwritten by the medical train split."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._head = [head]  # a list, so the head is not registered a second time
        head_params = {id(p) for p in head.parameters()}
        self._flags = [(p, p.requires_grad) for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(id(p) in head_params)

    def train(self, mode: bool = True) -> _FrozenBackbone:
        self.training = mode
        self.model.eval()
        self._head[0].train(mode)
        return self

    def release(self) -> None:
        for p, flag in self._flags:
            p.requires_grad_(flag)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class TorchvisionModel(_ZooModel):
    """A torchvision.models architecture (local weights only), with 1-channel adaptation.

    ``torchvision:<arch>`` builds ``torchvision.models.<arch>(weights=None, num_classes=K)`` —
    never downloading — and loads ``weights`` (a local ``.safetensors`` or ``.pt`` state_dict,
    e.g. the ImageNet file saved once with ``torch.save(m.state_dict(), ...)``).

    Parameters:
        weights, strict: as for ``user_model``.
        num_classes: classes of the head the weights were saved with (``None``: the dataset's).
            If it differs from the dataset's, the head (the last ``nn.Linear`` with that many
            outputs) is replaced by a new, seeded ``nn.Linear`` with the dataset's classes, which
            requires ``finetune_epochs > 0``.
        adapt_channels: for a 1-channel dataset, ``"repeat"`` (default) feeds the image to all
            3 channels inside the wrapper, leaving the network as trained; ``"stem"`` replaces
            the first conv by a 1-channel one whose filters are the sum of the RGB filters
            (timm's rule), normalized with the mean of the ImageNet stats.
        normalize, mean, std: ``"add"`` (default) with ImageNet mean/std ``(0.485, 0.456,
            0.406)``/``(0.229, 0.224, 0.225)`` on [0, 1] intensities.
        target_layers: as for ``user_model``; ``"auto"`` is ``layer4`` for ResNet-like networks,
            ``features`` for DenseNet / VGG / EfficientNet / MobileNet / ConvNeXt, else the last
            conv.
        finetune_epochs, finetune_layers, finetune_lr, train_batch_size: optional fine-tuning
            on the train split with ``benchbox.models.training.train_classifier`` (Adam, cosine
            schedule, best validation epoch), cached like the built-in models; ``"head"`` trains
            only the classifier (the backbone stays frozen, in eval mode), ``"all"`` everything.
    """

    library = "torchvision"

    def _create(self, lib: ModuleType, num_classes: int) -> nn.Module:
        net = getattr(lib.models, self.arch)(weights=None, num_classes=num_classes)
        if not isinstance(net, nn.Module):
            raise UserError(f"{self.name}: torchvision.models.{self.arch} is not a model builder")
        return net

    def _auto_layer(self, net: nn.Module) -> str | None:
        children = dict(net.named_children())
        for name in ("layer4", "features"):
            if name in children:
                return name
        return None


class TimmModel(_ZooModel):
    """A timm architecture (local weights only), with 1-channel adaptation.

    ``timm:<arch>`` builds ``timm.create_model(<arch>, pretrained=False, num_classes=K)`` — never
    downloading — and loads ``weights`` (local). Parameters as for ``torchvision:<arch>``; the
    default mean/std are the model's ``pretrained_cfg`` values (ImageNet's when absent), and
    ``"auto"`` is ``model.feature_info[-1]["module"]`` (the last feature stage) when present.
    """

    library = "timm"

    def _create(self, lib: ModuleType, num_classes: int) -> nn.Module:
        net: nn.Module = lib.create_model(self.arch, pretrained=False, num_classes=num_classes)
        return net

    def _auto_layer(self, net: nn.Module) -> str | None:
        info = getattr(net, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], Mapping):
            module = info[-1].get("module")
            if isinstance(module, str) and module in dict(net.named_modules()):
                return module
        return None

    def _default_norm(self, net: nn.Module) -> tuple[Sequence[float], Sequence[float]]:
        cfg = getattr(net, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


_ARCH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _unknown_arch(library: str, arch: str, names: Sequence[str]) -> UserError:
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return UserError(
        f"{library} has no classification model {arch!r}; {hint}see {library}'s model list "
        f"({len(names)} names)"
    )


def _builder_class(base: type[_ZooModel], arch: str) -> type[_ZooModel]:
    # `benchbox ls` shows the first line: name the architecture there.
    doc = f"{base.library}:{arch} — {base.__doc__ or ''}"
    return type(
        f"{base.__name__}[{arch}]",
        (base,),
        {
            "arch": arch,
            "__doc__": doc,
            "__module__": __name__,
            "__qualname__": f"{base.__name__}[{arch}]",
        },
    )


def _check_arch(library: str, arch: str) -> None:
    if not _ARCH.match(arch):
        raise UserError(
            f"{library}:{arch}: expected an architecture name after '{library}:' "
            f"(e.g. {library}:resnet18)"
        )


def torchvision_builder(arch: str) -> type[_ZooModel]:
    """Resolver of ``torchvision:<arch>``: a ``TorchvisionModel`` subclass with ``arch`` bound.

    Imports torchvision (a clear UserError if it cannot be imported) and checks that
    ``torchvision.models.<arch>`` is a classification model builder.
    """
    _check_arch("torchvision", arch)
    tv = _import_library("torchvision")
    list_models: Callable[..., list[str]] | None = getattr(tv.models, "list_models", None)
    names = (
        list(list_models(module=tv.models))
        if list_models is not None
        else [n for n in dir(tv.models) if n[:1].islower() and callable(getattr(tv.models, n))]
    )
    if arch not in names:
        raise _unknown_arch("torchvision", arch, names)
    return _builder_class(TorchvisionModel, arch)


def timm_builder(arch: str) -> type[_ZooModel]:
    """Resolver of ``timm:<arch>``: a ``TimmModel`` subclass with ``arch`` bound (checked with
    ``timm.is_model``)."""
    _check_arch("timm", arch)
    timm = _import_library("timm")
    if not timm.is_model(arch):
        raise _unknown_arch("timm", arch, list(timm.list_models()))
    return _builder_class(TimmModel, arch)
