"""Suite files: parse, validate (every problem at once, with its YAML path), resolve.

A suite is a YAML mapping::

    name: quickstart          # results go to <output>/<name>/<run_id>/
    version: 1
    seed: 0
    device: cpu               # cpu | cuda | cuda:N | auto
    batch_size: 64
    limit: 256                # test samples per dataset (null = all)
    target: prediction        # explain the predicted class, or the label
    datasets: [synthetic_lesions_2d]
    models: [cnn_gap]
    methods: [saliency, {integrated_gradients: {steps: 32}}]
    metrics: [pointing_game, {deletion: {steps: 64}}]
    output: results

Each component is a bare registry name or a one-key mapping ``{name: {params}}``. Parameters are
checked against the component's signature (``benchbox.params``); defaults are filled in, and the
resolved suite is what the manifest records and hashes.

A model that benchbox trains may take ``replicas: N`` beside its parameters
(``{cnn_gap: {replicas: 3}}``): N independently trained copies. Replica ``r`` is built with
``train_seed`` raised by ``r``, so replica 0 is the model the suite names and replica ``r`` is the
model that ``repeatability``'s ``train_seed=r`` rebuilds (its initialisation and shuffling seed
derives from the suite seed and ``r``). ``Suite.models`` lists one spec per replica, with the
parameters as written; each row of the results says which replica (the ``replica`` column) and
the summary reports the spread across them.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .errors import SuiteError, UserError
from .params import (
    LIMITS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SIZE,
    canonical_json,
    shown,
    validate_params,
)
from .safe_yaml import read_yaml_file

__all__ = ["ComponentSpec", "Suite", "load_suite", "parse_suite"]

_SUITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_MAX = 100  # a folder name; file systems allow 255 bytes
DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")  # what the suite and --device accept
DEVICES = "cpu, cuda, cuda:N, auto"
_SECTIONS = ("datasets", "models", "methods", "metrics")
_BUILT_AT_VALIDATION = ("methods", "metrics")
# One replica trains one more model: a bound that keeps a typo (300 for 3) from costing hours.
MAX_REPLICAS = 32
_FIELDS = (
    "name",
    "version",
    "seed",
    "device",
    "batch_size",
    "limit",
    "target",
    *_SECTIONS,
    "output",
)


@dataclass(frozen=True)
class ComponentSpec:
    """One resolved component of a suite: registry name, its class and its full parameters."""

    kind: str  # "datasets" | "models" | "methods" | "metrics"
    name: str
    params: dict[str, Any]
    cls: type
    path: str  # YAML path, e.g. "methods[1]"
    needs: frozenset[Any] = frozenset()  # of the configured instance (methods and metrics)
    replica: int = 0  # models: which of the ``replicas`` independently trained copies
    replicas: int = 1

    @property
    def params_json(self) -> str:
        return canonical_json(self.params)

    @property
    def label(self) -> str:
        """The name, with the replica when there are several (``cnn_gap#1``)."""
        return self.name if self.replicas == 1 else f"{self.name}#{self.replica}"

    def build(self, **overrides: Any) -> Any:
        """The component; a model replica ``r`` > 0 gets ``train_seed + r``, under ``overrides``."""
        params = dict(self.params)
        if self.replica:
            params["train_seed"] += self.replica
        return self.cls(**{**params, **overrides})

    def resolved(self) -> dict[str, Any]:
        """``{name: params}`` as the suite gave them, ``replicas`` included when > 1."""
        if self.replicas == 1:
            return {self.name: self.params}
        return {self.name: {**self.params, "replicas": self.replicas}}


@dataclass
class Suite:
    name: str
    version: str
    seed: int
    device: str
    batch_size: int
    limit: int | None
    target: str
    datasets: list[ComponentSpec]
    models: list[ComponentSpec]
    methods: list[ComponentSpec]
    metrics: list[ComponentSpec]
    output: Path
    source: str = "<suite>"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def resolved(self) -> dict[str, Any]:
        """The suite with every default filled in: what the manifest records and hashes."""
        return {
            "name": self.name,
            "version": self.version,
            "seed": self.seed,
            "device": self.device,
            "batch_size": self.batch_size,
            "limit": self.limit,
            "target": self.target,
            # replica 0 stands for its model: the suite as written, not its expansion
            **{s: [c.resolved() for c in getattr(self, s) if c.replica == 0] for s in _SECTIONS},
        }

    @property
    def hash(self) -> str:
        """SHA-256 of the resolved suite. ``output`` is excluded: where results go is not *what*
        is computed."""
        return hashlib.sha256(canonical_json(self.resolved()).encode()).hexdigest()


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; raise ``UserError``/``SuiteError`` with every problem."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: suite file not found; check the path (e.g. suites/quickstart.yaml)")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; give the path of a suite .yaml file")
    data = read_yaml_file(p)
    return parse_suite(data, source=str(p))


def parse_suite(data: Any, *, source: str = "<suite>") -> Suite:
    """Validate a suite given as a mapping (e.g. from ``yaml.safe_load``)."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise SuiteError(source, [f"<top level>: expected a mapping of suite fields, got {kind}"])
    problems: list[str] = []

    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), _FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            label = key if isinstance(key, str) and len(key) <= 60 else shown(key)
            problems.append(f"{label}: unknown field; {hint}valid fields: {', '.join(_FIELDS)}")

    name = data.get("name")
    if not isinstance(name, str) or not _SUITE_NAME.match(name) or len(name) > _NAME_MAX:
        problems.append(
            f"name: expected a name of letters, digits, '_', '-', '.' (used as a folder), at "
            f"most {_NAME_MAX} characters, got {shown(name)}"
        )
    version = data.get("version", 1)
    if not isinstance(version, (int, str)) or isinstance(version, bool):
        problems.append(f"version: expected an integer or a string, got {shown(version)}")
    seed = _int_field(data, "seed", 0, minimum=0, maximum=MAX_SEED, problems=problems)
    batch_size = _int_field(data, "batch_size", 64, minimum=1, maximum=MAX_SIZE, problems=problems)
    limit = data.get("limit")
    if limit is not None:
        limit = _int_field(data, "limit", None, minimum=1, maximum=MAX_SAMPLES, problems=problems)
    device = data.get("device", "cpu")
    if not isinstance(device, str) or not DEVICE.match(device):
        problems.append(f"device: expected one of {DEVICES}, got {shown(device)}")
    target = data.get("target", "prediction")
    if target not in ("prediction", "label"):
        problems.append(f"target: expected one of 'prediction', 'label', got {shown(target)}")
    output = data.get("output", "results")
    if not isinstance(output, str) or not output:
        problems.append(f"output: expected a directory path, got {shown(output)}")

    sections = {s: _parse_section(data, s, problems) for s in _SECTIONS}

    if problems:
        raise SuiteError(source, problems)
    return Suite(
        name=name,  # type: ignore[arg-type]
        version=str(version),
        seed=seed,  # type: ignore[arg-type]
        device=device,
        batch_size=batch_size,  # type: ignore[arg-type]
        limit=limit,
        target=target,
        output=Path(output),
        source=source,
        raw=data,
        **sections,
    )


def _int_field(
    data: dict[str, Any],
    key: str,
    default: int | None,
    *,
    minimum: int,
    maximum: int,
    problems: list[str],
) -> int | None:
    """``data[key]`` if it is an integer in [minimum, maximum] (the bounds of
    ``benchbox.params``), else a problem and ``default``."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        problems.append(f"{key}: expected an integer {bound}, got {shown(value)}")
        return default
    if value > maximum:
        problems.append(
            f"{key}: expected an integer <= {maximum:,} ({LIMITS[maximum]}), got {shown(value)}"
        )
        return default
    return value


def _parse_section(data: dict[str, Any], section: str, problems: list[str]) -> list[ComponentSpec]:
    reg = registry.REGISTRIES[section]
    items = data.get(section)
    if items is None:
        problems.append(
            f"{section}: required; list at least one {reg.kind} (see `benchbox ls {section}`)"
        )
        return []
    if isinstance(items, (str, dict)):
        items = [items]  # a single component is a list of one
    if not isinstance(items, list) or not items:
        problems.append(f"{section}: expected a non-empty list of {reg.kind}s, got {shown(items)}")
        return []
    specs: list[ComponentSpec] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        path = f"{section}[{i}]"
        params: Any
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = {} if params is None else params
            if not isinstance(params, dict):
                problems.append(
                    f"{path}.{name}: expected a mapping of parameters, got {shown(params)}"
                )
                continue
        else:
            problems.append(
                f"{path}: expected a {reg.kind} name or a one-key mapping "
                f"{{name: {{params}}}}, got {shown(item)}"
            )
            continue
        if not isinstance(name, str):
            problems.append(f"{path}: expected a {reg.kind} name, got {shown(name)}")
            continue
        replicas = 1
        if section == "models" and "replicas" in params:
            params = dict(params)
            replicas = _replicas(params.pop("replicas"), f"{path}.{name}.replicas", problems)
        try:
            cls = reg.get(name)
        except UserError as exc:
            problems.append(f"{path}: {exc}")
            continue
        if name in seen:
            problems.append(
                f"{path}: {reg.kind} {name!r} is already listed at {seen[name]}; "
                f"list each {reg.kind} once"
            )
            continue
        seen[name] = path
        resolved, errs = validate_params(cls, params, prefix=f"{path}.{name}")
        problems.extend(errs)
        if errs:
            continue
        needs = frozenset(getattr(cls, "needs", frozenset()))
        if section in _BUILT_AT_VALIDATION:
            # Methods and metrics are cheap to construct, and constructing them catches what a
            # signature cannot: a wrapper's base and its parameters, checks across parameters.
            try:
                instance = cls(**resolved)
            except UserError as exc:
                problems.append(f"{path}: {exc}")
                continue
            resolved = instance.resolved_params(resolved)
            needs = instance.requirements()
        if replicas > 1 and "train_seed" not in resolved:
            problems.append(
                f"{path}.{name}.replicas: {name} is not trained by benchbox (it has no "
                f"train_seed), so it has no replicas; remove replicas, or list each trained "
                f"copy as a model of its own"
            )
            continue
        specs += [
            ComponentSpec(section, name, resolved, cls, path, needs, replica=r, replicas=replicas)
            for r in range(replicas)
        ]
    return specs


def _replicas(value: Any, path: str, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        problems.append(f"{path}: expected an integer from 1 to {MAX_REPLICAS}, got {shown(value)}")
        return 1
    return value
