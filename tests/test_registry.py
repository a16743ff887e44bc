from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import pytest

from benchbox import registry as registry_mod
from benchbox.core import Method
from benchbox.errors import UserError
from benchbox.registry import REGISTRIES, Registry, import_object


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("bb_fake_components")

    class Thing(Method):
        """A thing for tests.

        More text that ls must not show.
        """

    class NotAComponent:
        """A class that is no benchbox component."""

    mod.Thing = Thing  # type: ignore[attr-defined]
    mod.NotAComponent = NotAComponent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bb_fake_components", mod)
    return mod


def test_lazy_entry_is_imported_on_first_get(fake_module: types.ModuleType) -> None:
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    sys.modules.pop("bb_lazy_probe", None)
    reg.register("thing", "bb_fake_components:Thing")
    entry = reg._entries["thing"]
    assert isinstance(entry.target, str)  # not resolved yet
    assert reg.get("thing") is fake_module.Thing
    assert entry.target is fake_module.Thing


def test_clash_raises() -> None:
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    reg.register("a", "x:y")
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a", "x:z", origin="plugin")


@pytest.mark.parametrize("bad", ["CamelCase", "with-dash", "1abc", "", "a b"])
def test_names_are_snake_case(bad: str) -> None:
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    with pytest.raises(ValueError, match="snake_case"):
        reg.register(bad, "x:y")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown method 'salency'; did you mean 'saliency'\?"):
        registry_mod.methods.get("salency")
    with pytest.raises(UserError, match=r"available: .*grad_cam.*saliency"):
        registry_mod.methods.get("zzzz")


def test_user_module_attr_name(fake_module: types.ModuleType) -> None:
    assert registry_mod.methods.get("bb_fake_components:Thing") is fake_module.Thing
    with pytest.raises(UserError, match="has no attribute 'Nope'"):
        registry_mod.methods.get("bb_fake_components:Nope")
    with pytest.raises(UserError, match="cannot import module 'no_such_mod_xyz'"):
        registry_mod.methods.get("no_such_mod_xyz:Thing")
    with pytest.raises(
        UserError, match=r"is a class 'NotAComponent', not a method; name a subclass of benchbox"
    ):
        registry_mod.methods.get("bb_fake_components:NotAComponent")
    with pytest.raises(UserError, match=r"'os:path' is a module, not a dataset"):
        registry_mod.datasets.get("os:path")


def test_import_object_rejects_malformed_path() -> None:
    with pytest.raises(UserError, match=r"not of the form 'package\.module:attr'"):
        import_object("justamodule:")


def test_prefix_resolver() -> None:
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    reg.register_prefix("lib", lambda rest: ("resolved", rest))
    assert reg.get("lib:Occlusion") == ("resolved", "Occlusion")
    with pytest.raises(ValueError, match="prefix 'lib' is already registered"):
        reg.register_prefix("lib", lambda rest: rest)


def test_entry_point_plugins_load_and_clash(
    monkeypatch: pytest.MonkeyPatch, fake_module: types.ModuleType
) -> None:
    class EP:
        def __init__(self, name: str, value: str):
            self.name, self.value = name, value
            self.dist = types.SimpleNamespace(name="bb-plugin")

    eps = [EP("plugin_thing", "bb_fake_components:Thing")]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps)
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    assert reg.names() == ["plugin_thing"]
    assert reg.get("plugin_thing") is fake_module.Thing
    assert reg._entries["plugin_thing"].origin == "entry point of bb-plugin"

    clashing: Registry[Any] = Registry("thing", "benchbox.test_things")
    clashing.register("plugin_thing", "x:y")
    with pytest.raises(ValueError, match="already registered"):
        clashing.names()


def test_describe_uses_first_docstring_line(fake_module: types.ModuleType) -> None:
    reg: Registry[Any] = Registry("thing", "benchbox.test_things")
    reg.register("thing", "bb_fake_components:Thing")
    reg.register("broken", "no_such_mod_xyz:Thing")
    assert reg.describe("thing") == "A thing for tests."
    assert reg.describe("broken").startswith("(unavailable: cannot import module")


def test_four_registries_with_builtins() -> None:
    assert set(REGISTRIES) == {"datasets", "models", "methods", "metrics"}
    assert {"saliency", "integrated_gradients", "grad_cam", "random"} <= set(
        REGISTRIES["methods"].names()
    )
    assert {"pointing_game", "deletion"} <= set(REGISTRIES["metrics"].names())


def test_import_benchbox_is_light() -> None:
    code = (
        "import sys, benchbox, benchbox.registry, benchbox.cli, benchbox.suite;"
        "heavy = [m for m in ('captum', 'seaborn', 'matplotlib', 'dask', 'quantus')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _builtin_entries() -> list[tuple[str, str]]:
    return [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.names()]


@pytest.mark.parametrize(("kind", "name"), _builtin_entries())
def test_every_builtin_resolves_to_its_base_class(kind: str, name: str) -> None:
    from benchbox.core import Dataset, Method, Metric, ModelBuilder

    base = {"datasets": Dataset, "models": ModelBuilder, "methods": Method, "metrics": Metric}
    cls = REGISTRIES[kind].get(name)
    assert isinstance(cls, type) and issubclass(cls, base[kind])
    doc = REGISTRIES[kind].describe(name)
    assert doc and not doc.startswith("(unavailable"), doc
    if kind == "metrics":
        assert isinstance(cls.higher_is_better, bool)


def _int_bounds(annotation: Any, metadata: list[Any]) -> list[tuple[bool, bool]]:
    """(has a lower bound, has an upper bound) of every ``int`` inside a field's annotation."""
    import typing

    import annotated_types

    out: list[tuple[bool, bool]] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        flat = [m for e in extra for m in (getattr(e, "metadata", None) or [e])]
        return _int_bounds(inner, [*metadata, *flat])
    if annotation is int:
        lo = any(isinstance(m, (annotated_types.Ge, annotated_types.Gt)) for m in metadata)
        hi = any(isinstance(m, (annotated_types.Le, annotated_types.Lt)) for m in metadata)
        custom = any(type(m).__name__ == "BeforeValidator" for m in metadata)
        return [(lo or custom, hi or custom)]
    for arg in typing.get_args(annotation):
        union = origin is typing.Union or origin is types.UnionType
        out += _int_bounds(arg, metadata if union else [])
    return out


BUILTINS = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg._entries]


@pytest.mark.parametrize(("kind", "name"), BUILTINS, ids=[f"{k}:{n}" for k, n in BUILTINS])
def test_every_integer_parameter_is_bounded(kind: str, name: str) -> None:
    """A count or size without an upper bound lets ``steps: 100000000000`` through validation
    to fail at run time; every built-in declares one (the shared types of benchbox.params)."""
    from benchbox.params import _params_model

    cls = REGISTRIES[kind].get(name)
    for field_name, info in _params_model(cls).model_fields.items():
        for lo, hi in _int_bounds(info.annotation, list(info.metadata)):
            assert lo and hi, f"{name}.{field_name}: an int without bounds ({info.annotation})"


def test_third_party_integers_are_bounded_by_their_name() -> None:
    from benchbox.params import Count, Int64, Pixels, Seed, int_type_for

    assert int_type_for("n_steps") is Count and int_type_for("nr_samples") is Count
    assert int_type_for("features_in_step") is Pixels and int_type_for("subset_size") is Pixels
    assert int_type_for("seed") is Seed and int_type_for("target") is Int64
