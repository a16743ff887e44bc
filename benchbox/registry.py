"""One generic registry type for datasets, models, methods and metrics.

Entries are resolved lazily: built-ins are registered as ``"module:attr"`` strings, so importing
benchbox imports neither captum nor seaborn. Third-party packages add entries through the
entry-point groups ``benchbox.datasets``, ``benchbox.models``, ``benchbox.methods`` and
``benchbox.metrics``. A suite may name a user's own class as ``"package.module:Class"``. Prefixed
names (``captum:Occlusion``) go to a resolver registered for that prefix.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from .errors import UserError

__all__ = [
    "REGISTRIES",
    "Registry",
    "RegistryEntry",
    "builtin_classes",
    "datasets",
    "import_object",
    "lazy_exports",
    "methods",
    "metrics",
    "models",
    "name_of",
]

T = TypeVar("T")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` (attr may be dotted)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UserError(f"{path!r} is not of the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"cannot import module {module_name!r} named in {path!r}: {exc}") from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's module failed on import: SystemExit too
        raise UserError(
            f"cannot import module {module_name!r} named in {path!r}: importing it raised "
            f"{_failure(exc)}; fix the module (importing it must not fail or exit)"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"module {module_name!r} has no attribute {attr!r}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a module-level __getattr__ of the user's
            raise UserError(
                f"module {module_name!r}: getting {attr!r} raised {_failure(exc)}; fix the module"
            ) from exc
    return obj


def _failure(exc: BaseException) -> str:
    """``Type: first line`` of an exception raised by user code (``SyntaxError`` with its line)."""
    if isinstance(exc, SyntaxError):
        where = f" ({exc.filename}, line {exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (it calls sys.exit)"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclass
class RegistryEntry:
    name: str
    target: Any  # the object, or a "module:attr" string until first resolved
    origin: str  # "builtin", "entry point <dist>", "user"

    def resolve(self) -> Any:
        if isinstance(self.target, str):
            self.target = import_object(self.target)
        return self.target


class Registry(Generic[T]):
    """Name -> component class. ``kind`` is the singular noun used in messages ("method")."""

    def __init__(self, kind: str, group: str, base: str | None = None):
        self.kind = kind
        self.group = group
        # "module:Class" every user-named ("pkg.mod:Attr") component must subclass; resolved
        # lazily so that building a registry imports nothing heavy.
        self.base = base
        self._entries: dict[str, RegistryEntry] = {}
        self._prefixes: dict[str, Callable[[str], T] | str] = {}
        self._plugins_loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, target: Any, *, origin: str = "builtin") -> None:
        if not _SNAKE.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be snake_case ([a-z][a-z0-9_]*)")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({self._entries[name].origin}); "
                f"cannot register it again from {origin}"
            )
        self._entries[name] = RegistryEntry(name, target, origin)

    def register_prefix(self, prefix: str, resolver: Callable[[str], T] | str) -> None:
        """Names ``prefix:rest`` resolve through ``resolver(rest)`` (adapters such as captum:).

        ``resolver`` may be a ``"module:function"`` string, imported on first use.
        """
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is already registered")
        self._prefixes[prefix] = resolver

    def prefixes(self) -> list[str]:
        return sorted(self._prefixes)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            dist = getattr(ep.dist, "name", "?")
            self.register(ep.name, ep.value, origin=f"entry point of {dist}")

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The component class for ``name``; raises ``UserError`` with suggestions if unknown."""
        self._load_plugins()
        if name in self._entries:
            return self._entries[name].resolve()
        if ":" in name:
            prefix, _, rest = name.partition(":")
            if prefix in self._prefixes:
                resolver = self._prefixes[prefix]
                if isinstance(resolver, str):
                    resolver = self._prefixes[prefix] = import_object(resolver)
                return resolver(rest)
            return self._checked(name, import_object(name))
        raise UserError(self.unknown_message(name))

    def _checked(self, name: str, obj: Any) -> Any:
        """``obj`` if it is a subclass of the registry's base class, else a ``UserError``."""
        if self.base is None:
            return obj
        base = import_object(self.base)
        if isinstance(obj, type) and issubclass(obj, base):
            return obj
        what = f"class {obj.__name__!r}" if isinstance(obj, type) else type(obj).__name__
        raise UserError(
            f"{name!r} is a {what}, not a {self.kind}; name a subclass of "
            f"{self.base.replace(':', '.')} (see README, 'Your own models')"
        )

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        return (
            f"unknown {self.kind} {name!r}; {hint}available: {', '.join(names)} "
            f"(or 'package.module:Class' for your own)"
        )

    def describe(self, name: str) -> str:
        """First line of the component's docstring, or why it could not be imported."""
        try:
            obj = self.get(name)
        except UserError as exc:
            return f"(unavailable: {exc})"
        doc = (getattr(obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


# -- the four instances, with lazily imported built-ins -------------------------------------------
datasets: Registry[Any] = Registry("dataset", "benchbox.datasets", "benchbox.core:Dataset")
models: Registry[Any] = Registry("model", "benchbox.models", "benchbox.core:ModelBuilder")
methods: Registry[Any] = Registry("method", "benchbox.methods", "benchbox.core:Method")
metrics: Registry[Any] = Registry("metric", "benchbox.metrics", "benchbox.core:Metric")

_BUILTINS: dict[Registry[Any], dict[str, str]] = {
    datasets: {
        "synthetic_lesions_2d": "benchbox.datasets.synthetic:SyntheticLesions2D",
        "brain_lesions_2d": "benchbox.datasets.brain:BrainLesions2D",
        "brain_lesions_3d": "benchbox.datasets.brain:BrainLesions3D",
        "brain_lesions_shortcut": "benchbox.datasets.brain:BrainLesionsShortcut",
        "ct_lesions_2d": "benchbox.datasets.ct:CTLesions2D",
        "image_folder": "benchbox.datasets.files:ImageFolder",
        "nifti": "benchbox.datasets.files:NiftiFolder",
        "dicom": "benchbox.datasets.files:DicomFolder",
        "medmnist_npz": "benchbox.datasets.files:MedMNISTNpz",
    },
    models: {
        "cnn_gap": "benchbox.models.cnn:CNNGap",
        "resnet_small": "benchbox.models.resnet:ResNetSmall",
        "attention_cnn": "benchbox.models.attention:AttentionCNN",
        "cnn3d": "benchbox.models.cnn3d:CNN3D",
        "vae": "benchbox.models.vae:VAE",
        "unet_small": "benchbox.models.unet:UNetSmall",
        "user_model": "benchbox.models.external:UserModel",
        "torchscript": "benchbox.models.external:TorchScript",
    },
    methods: {
        # gradient family
        "saliency": "benchbox.methods.gradient:Saliency",
        "input_x_gradient": "benchbox.methods.gradient:InputXGradient",
        "integrated_gradients": "benchbox.methods.gradient:IntegratedGradients",
        "gradient_shap": "benchbox.methods.gradient:GradientShap",
        "deeplift": "benchbox.methods.gradient:DeepLift",
        "deeplift_shap": "benchbox.methods.gradient:DeepLiftShap",
        "guided_backprop": "benchbox.methods.gradient:GuidedBackprop",
        "deconvnet": "benchbox.methods.gradient:Deconvnet",
        "smoothgrad": "benchbox.methods.noise:SmoothGrad",
        "smoothgrad_sq": "benchbox.methods.noise:SmoothGradSq",
        "vargrad": "benchbox.methods.noise:VarGrad",
        # CAM family
        "cam": "benchbox.methods.cam:CAM",
        "grad_cam": "benchbox.methods.cam:GradCAM",
        "grad_cam_pp": "benchbox.methods.cam:GradCAMPlusPlus",
        "guided_grad_cam": "benchbox.methods.cam:GuidedGradCAM",
        "score_cam": "benchbox.methods.cam:ScoreCAM",
        # perturbation
        "occlusion": "benchbox.methods.perturbation:Occlusion",
        "lime": "benchbox.methods.perturbation:Lime",
        "kernel_shap": "benchbox.methods.perturbation:KernelShap",
        "rise": "benchbox.methods.perturbation:RISE",
        "feature_ablation": "benchbox.methods.perturbation:FeatureAblation",
        # decomposition
        "lrp_epsilon": "benchbox.methods.lrp:LRPEpsilon",
        "lrp_gamma": "benchbox.methods.lrp:LRPGamma",
        "lrp_alpha_beta": "benchbox.methods.lrp:LRPAlphaBeta",
        # model-intrinsic and generative
        "attention": "benchbox.methods.intrinsic:Attention",
        "vae_residual": "benchbox.methods.intrinsic:VAEResidual",
        "iterative_saliency": "benchbox.methods.intrinsic:IterativeSaliency",
        "dominant_class": "benchbox.methods.intrinsic:DominantClass",
        # controls
        "random": "benchbox.methods.controls:Random",
        "edge": "benchbox.methods.controls:Edge",
        "centre": "benchbox.methods.controls:Centre",
        "constant": "benchbox.methods.controls:Constant",
    },
    metrics: {
        # localization against ground-truth masks
        "pointing_game": "benchbox.metrics.localization:PointingGame",
        "energy_pointing_game": "benchbox.metrics.localization:EnergyPointingGame",
        "relevance_mass": "benchbox.metrics.localization:RelevanceMass",
        "relevance_rank": "benchbox.metrics.localization:RelevanceRank",
        "topk_intersection": "benchbox.metrics.localization:TopKIntersection",
        "auroc": "benchbox.metrics.localization:AUROC",
        "auprc": "benchbox.metrics.localization:AUPRC",
        "iou": "benchbox.metrics.localization:IoU",
        "dice": "benchbox.metrics.localization:Dice",
        # faithfulness
        "deletion": "benchbox.metrics.faithfulness:Deletion",
        "insertion": "benchbox.metrics.faithfulness:Insertion",
        "pixel_flipping": "benchbox.metrics.faithfulness:PixelFlipping",
        "region_perturbation": "benchbox.metrics.faithfulness:RegionPerturbation",
        "road": "benchbox.metrics.faithfulness:ROAD",
        "faithfulness_correlation": "benchbox.metrics.faithfulness:FaithfulnessCorrelation",
        "infidelity": "benchbox.metrics.faithfulness:Infidelity",
        # complexity
        "sparseness": "benchbox.metrics.complexity:Sparseness",
        "complexity": "benchbox.metrics.complexity:Complexity",
        "effective_complexity": "benchbox.metrics.complexity:EffectiveComplexity",
        # sanity checks (randomization tests)
        "random_logit": "benchbox.metrics.randomization:RandomLogit",
        "repeatability": "benchbox.metrics.randomization:Repeatability",
        "data_randomization": "benchbox.metrics.randomization:DataRandomization",
        "model_randomization": "benchbox.metrics.randomization:ModelRandomization",
        # robustness and adversarial fragility
        "max_sensitivity": "benchbox.metrics.robustness:MaxSensitivity",
        "avg_sensitivity": "benchbox.metrics.robustness:AvgSensitivity",
        "local_lipschitz": "benchbox.metrics.robustness:LocalLipschitz",
        "fragility": "benchbox.metrics.adversarial:Fragility",
        "manipulation": "benchbox.metrics.adversarial:Manipulation",
    },
}
for _registry, _table in _BUILTINS.items():
    for _name, _path in _table.items():
        _registry.register(_name, _path)

methods.register_prefix("captum", "benchbox.methods.adapters:captum_method")
metrics.register_prefix("quantus", "benchbox.metrics.adapters:quantus_metric")
methods.register_prefix("gradcam", "benchbox.methods.adapters:gradcam_method")
methods.register_prefix("zennit", "benchbox.methods.adapters:zennit_method")
models.register_prefix("torchvision", "benchbox.models.external:torchvision_builder")
models.register_prefix("timm", "benchbox.models.external:timm_builder")

_NAMES = {path: name for table in _BUILTINS.values() for name, path in table.items()}


def builtin_classes(registry: Registry[Any]) -> dict[str, str]:
    """Class name -> ``"module:Class"`` of the registry's built-ins: what ``benchbox.methods``
    (and the other three packages) export by class, imported on first access."""
    return {path.rpartition(":")[2]: path for path in _BUILTINS[registry].values()}


def lazy_exports(registry: Registry[Any], module: str) -> tuple[Any, Any, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for the package ``module`` of ``registry``'s built-ins,
    so ``from benchbox.methods import GradCAM`` imports the one module that defines it."""
    classes = builtin_classes(registry)

    def __getattr__(name: str) -> Any:
        path = classes.get(name)
        if path is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return import_object(path)

    def __dir__() -> list[str]:
        return sorted(classes)

    return __getattr__, __dir__, sorted(classes)


def name_of(cls: type) -> str:
    """A component class's registry name (``PointingGame`` -> ``"pointing_game"``) for built-ins,
    else its class name: what messages about its parameters start with."""
    own = getattr(cls, "registry_name", None)
    return own or _NAMES.get(f"{cls.__module__}:{cls.__qualname__}", cls.__name__)


REGISTRIES: dict[str, Registry[Any]] = {
    "datasets": datasets,
    "models": models,
    "methods": methods,
    "metrics": metrics,
}
