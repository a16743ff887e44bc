"""Validate a component's parameters against its ``__init__`` signature.

A component declares its parameters once, as keyword-only arguments with type hints and defaults
(``steps: PositiveInt = 100``). From that signature we build a pydantic model, so the suite reports
``metrics[1].deletion.steps: expected an integer > 0, got -1`` without a second schema to keep in
sync. Resolved parameters (defaults filled in) are what the results record as ``*_params``.

Types are strict: a suite's values are checked as the JSON they are (YAML gives strings, numbers,
booleans, null, lists and mappings), so ``steps: '8'`` is an error, not a silent ``8``; a list is
accepted where the signature says ``tuple`` and an integer where it says ``float`` (JSON has no
tuples and no separate integer type), but nothing else is coerced. NaN and infinity are refused
in ``float`` parameters, parameter names (and the keys of any mapping inside a value) must be
strings, and values of other YAML types (dates, ``!!binary``, ``!!set``) are refused.

Every integer parameter of a built-in component has an upper bound, from one of the shared types
below, so a typo such as ``steps: 100000000000`` is refused here instead of failing (or running
for days) once the job starts:

=========== ================================================================ =================
type        what it counts                                                   range
=========== ================================================================ =================
``Count``   repetitions per sample or per model: steps, samples, masks,      1 .. 10,000
            baselines, runs, iterations, regions, segments, epochs
``Samples`` samples a synthetic dataset generates (``n_train``, ...)         1 .. 1,000,000
``Size``    lengths and widths: pixels per side, patch/window/stride, batch  1 .. 65,536
            sizes, channels, classes, network widths
``Pixels``  pixels or voxels of one map (``features_in_step``, ``k``, ...)   1 .. 16,777,216
``Seed``    seeds                                                            0 .. 2^63 - 1
=========== ================================================================ =================

The limits are far above what any bundled suite uses (the largest defaults: 2,000 RISE masks,
1,000 LIME samples, 2,048 training samples, batch size 256, 224 pixels) and below what makes a
job fail: 10^4 steps already cost 300 times the default Integrated Gradients; 2^24 voxels is a
256³ volume; 2^63 - 1 is the largest seed every generator and the stored files accept.
"""

from __future__ import annotations

import difflib
import inspect
import json
import reprlib
import typing
from functools import cache
from typing import Annotated, Any

import pydantic
from pydantic import ConfigDict, Field, create_model

from .errors import UserError

__all__ = [
    "LIMITS",
    "MAX_COUNT",
    "MAX_PIXELS",
    "MAX_SAMPLES",
    "MAX_SEED",
    "MAX_SIZE",
    "Count",
    "Int64",
    "ParameterError",
    "Pixels",
    "Samples",
    "Seed",
    "Size",
    "canonical_json",
    "check_construction",
    "format_pydantic_error",
    "instance_params",
    "int_type_for",
    "parameter_defaults",
    "shown",
    "validate_params",
]

MAX_COUNT = 10_000
MAX_SAMPLES = 1_000_000
MAX_SIZE = 65_536
MAX_PIXELS = 1 << 24
MAX_SEED = (1 << 63) - 1

Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Samples = Annotated[int, Field(gt=0, le=MAX_SAMPLES)]
Size = Annotated[int, Field(gt=0, le=MAX_SIZE)]
Pixels = Annotated[int, Field(gt=0, le=MAX_PIXELS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]

Int64 = Annotated[int, Field(ge=-MAX_SEED - 1, le=MAX_SEED)]


def int_type_for(name: str) -> Any:
    """The bounded integer type for a parameter of a third-party class (Captum, Quantus), whose
    meaning benchbox reads from its name: ``n_*``/``nr_*``/``num_*`` and ``*steps``/``*runs``/
    ``*samples`` are counts, ``*size*``/``*_in_step`` pixel counts, ``*seed*`` seeds; any other
    integer only has to fit 64 bits (what JSON, parquet and every generator take)."""
    low = name.lower()
    if "seed" in low:
        return Seed
    if low.startswith(("n_", "nr_", "num_")) or low.endswith(("steps", "runs", "samples")):
        return Count
    if "size" in low or low.endswith("_in_step"):
        return Pixels
    return Int64


# What a bound stands for, said in the message when a value exceeds it.
LIMITS = {
    MAX_COUNT: "benchbox's limit for counts of steps/samples/epochs",
    MAX_SAMPLES: "benchbox's limit for samples",
    MAX_SIZE: "benchbox's limit for sizes, widths and batch sizes",
    MAX_PIXELS: "benchbox's limit for pixel counts (a 256³ volume)",
    MAX_SEED: "the largest seed, 2^63 - 1",
}


@cache
def _params_model(cls: type) -> type[pydantic.BaseModel]:
    init = cls.__init__  # type: ignore[misc]
    hints = typing.get_type_hints(init, include_extras=True) if init is not object.__init__ else {}
    fields: dict[str, Any] = {}
    if init is not object.__init__:
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (hints.get(p.name, Any), default)
    return create_model(
        f"{cls.__name__}Params",
        __config__=ConfigDict(
            extra="forbid", arbitrary_types_allowed=True, strict=True, allow_inf_nan=False
        ),
        **fields,
    )


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 6
_SHORT.maxlevel = 3


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def shown(value: Any) -> str:
    """``repr(value)``, shortened to about a line: what messages show of a value the user gave
    (a 10,000-item list or a 1 MB string must not become a 1 MB error line)."""
    return _SHORT.repr(value)


def _noun(annotation: Any) -> str:
    base = typing.get_origin(annotation)
    if base is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, "a value"
    )


def format_pydantic_error(err: Any, model: type[pydantic.BaseModel] | None, prefix: str) -> str:
    """One ``path: expected …, got …`` line for one pydantic error dict."""
    loc = [str(p) for p in err["loc"]]
    path = ".".join([prefix, *loc]) if prefix else ".".join(loc)
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    field = model.model_fields.get(loc[0]) if (model is not None and loc) else None
    noun = _noun(field.annotation if field is not None else None)
    if field is not None and field.metadata:
        noun = _noun(typing.Annotated[(field.annotation, *field.metadata)])
    got = f", got {shown(value)}"
    if kind == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        valid = ", ".join(known) if known else "none"
        return f"{path}: unknown parameter; {hint}valid parameters: {valid}"
    if kind == "missing":
        return f"{path}: required parameter is missing"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        bound = next(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le"))
        why = LIMITS.get(bound) if kind in ("less_than", "less_than_equal") else None
        if why is not None:
            return f"{path}: expected {noun} {bounds[kind]} {bound:,} ({why}){got}"
        return f"{path}: expected {noun} {bounds[kind]} {bound}{got}"
    if kind == "literal_error":
        return f"{path}: expected one of {ctx.get('expected')}{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{path}: expected an integer{got}"
    if kind in ("float_parsing", "float_type"):
        return f"{path}: expected a number{got}"
    if kind == "finite_number":
        return f"{path}: expected a finite number (not NaN or infinity){got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{path}: expected true or false{got}"
    if kind in ("string_type",):
        return f"{path}: expected a string{got}"
    return f"{path}: {err['msg'][0].lower()}{err['msg'][1:]}{got}"


def _plain_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Why ``value`` is not plain JSON data (a string key, a JSON type at every level), or None.

    The suite loader bounds the nesting; ``depth`` bounds it again for values given through the
    Python API."""
    if depth > 64:
        return f"{path}: nested more than 64 levels deep; flatten it"
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _plain_problem(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (
                    f"{path}: key {shown(key)} is {_a(key)}; keys must be strings "
                    f"(quote it: '{key}')"
                )
            problem = _plain_problem(item, f"{path}.{key}", depth + 1)
            if problem:
                return problem
        return None
    return (
        f"{path}: {_a(value)} ({shown(value)}) is not a suite value; write a "
        f"string, a number, true/false, null, a list or a mapping"
    )


def validate_params(
    cls: type, params: dict[str, Any], prefix: str
) -> tuple[dict[str, Any], list[str]]:
    """(resolved params with defaults, problems); ``prefix`` is the YAML path of the block.

    Strict: ``params`` is validated as the JSON it is (see the module docstring)."""
    model = _params_model(cls)
    problems: list[str] = []
    for key, value in params.items():
        if not isinstance(key, str):
            problems.append(
                f"{prefix}: parameter name {shown(key)} is {_a(key)}; parameter "
                f"names are strings (valid parameters: {', '.join(model.model_fields) or 'none'})"
            )
            continue
        problem = _plain_problem(value, f"{prefix}.{key}")
        if problem:
            problems.append(problem)
    if problems:
        return {}, problems
    try:
        text = json.dumps(params, allow_nan=True)
        resolved = model.model_validate_json(text, strict=True)
    except pydantic.ValidationError as exc:
        return {}, [format_pydantic_error(e, model, prefix) for e in exc.errors()]
    return resolved.model_dump(mode="python"), []


class ParameterError(UserError, ValueError):
    """A component constructed from Python with a parameter its signature refuses: the same
    one-line ``name.param: expected …, got …`` as a suite's (exit 2 from the CLI)."""


def check_construction(cls: type, kwargs: dict[str, Any], name: str) -> None:
    """Validate the keyword arguments a component is constructed with, as a suite's are.

    Called by ``Component.__init_subclass__``'s wrapper of every ``__init__``, so that
    ``PointingGame(tolerance=-3)`` fails at once, as ``tolerance: -3`` in a suite does. Values
    that are not plain data (a ``Method`` given to a wrapper, a tensor) are left to the
    component; a missing required argument is Python's own ``TypeError``. Raises
    :class:`ParameterError` naming ``name.param``, every problem on one line.
    """
    plain = {k: v for k, v in kwargs.items() if _plain_problem(v, k) is None}
    if not plain:
        return
    model = _params_model(cls)
    try:
        model.model_validate_json(json.dumps(plain, allow_nan=True), strict=True)
    except pydantic.ValidationError as exc:
        problems = [
            format_pydantic_error(e, model, name) for e in exc.errors() if e["type"] != "missing"
        ]
        if problems:
            raise ParameterError("; ".join(problems)) from None


def instance_params(obj: Any) -> dict[str, Any]:
    """The parameters a constructed component holds: each of its signature's parameters read
    back from the attribute of the same name (the built-ins keep them so), else its default.
    What a wrapper records of a base method given as an object."""
    out: dict[str, Any] = {}
    cls: type = type(obj)
    for name, f in _params_model(cls).model_fields.items():
        out[name] = getattr(obj, name, None if f.is_required() else f.default)
    return out


def parameter_defaults(cls: type) -> dict[str, str]:
    """Parameter name -> its default as YAML-ish text (``required`` when it has none)."""
    out: dict[str, str] = {}
    for name, f in _params_model(cls).model_fields.items():
        if f.is_required():
            out[name] = "required"
        else:
            d = f.default
            out[name] = (
                "null" if d is None else str(d).lower() if isinstance(d, bool) else json_text(d)
            )
    return out


def json_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no whitespace; what ``*_params`` columns and hashes use."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
