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
