"""Validate a component's parameters against its ``__init__`` signature.

A component declares its parameters once, as keyword-only arguments with type hints and defaults
(``steps: PositiveInt = 100``). From that signature we build a pydantic model, so the suite reports
``metrics[1].deletion.steps: expected an integer > 0, got -1`` without a second schema to keep in
sync. Resolved parameters (defaults filled in) are what the results record as ``*_params``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import typing
from functools import cache
from typing import Any

import pydantic
from pydantic import ConfigDict, create_model

__all__ = [
    "canonical_json",
    "format_pydantic_error",
    "parameter_defaults",
    "validate_params",
]


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
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


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
    got = f", got {value!r}"
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
        return f"{path}: expected {noun} {bounds[kind]} {bound}{got}"
    if kind == "literal_error":
        return f"{path}: expected one of {ctx.get('expected')}{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{path}: expected an integer{got}"
    if kind in ("float_parsing", "float_type"):
        return f"{path}: expected a number{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{path}: expected true or false{got}"
    if kind in ("string_type",):
        return f"{path}: expected a string{got}"
    return f"{path}: {err['msg'][0].lower()}{err['msg'][1:]}{got}"


def validate_params(
    cls: type, params: dict[str, Any], prefix: str
) -> tuple[dict[str, Any], list[str]]:
    """(resolved params with defaults, problems); ``prefix`` is the YAML path of the block."""
    model = _params_model(cls)
    try:
        resolved = model(**params)
    except pydantic.ValidationError as exc:
        return {}, [format_pydantic_error(e, model, prefix) for e in exc.errors()]
    return resolved.model_dump(mode="python"), []


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
