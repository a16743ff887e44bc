from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchbox.errors import SuiteError, UserError
from benchbox.suite import load_suite, parse_suite
from tests.fakes import tiny_suite


def _write(tmp_path: Path, data: object, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_valid_suite_resolves_defaults(tmp_path: Path) -> None:
    s = load_suite(_write(tmp_path, tiny_suite()))
    assert (s.name, s.seed, s.batch_size, s.device, s.target, s.limit) == (
        "tiny",
        3,
        4,
        "cpu",
        "prediction",
        None,
    )
    assert [m.name for m in s.methods] == ["tests.fakes:Grad", "tests.fakes:Noise"]
    mass = s.metrics[0]
    assert mass.params == {"power": 1, "mode": "abs"}
    assert mass.params_json == '{"mode":"abs","power":1}'
    assert s.metrics[0].path == "metrics[0]"


def test_params_mapping_and_null_params(tmp_path: Path) -> None:
    suite = tiny_suite(
        metrics=[{"tests.fakes:MaskMass": {"power": 2}}, {"tests.fakes:TwoWay": None}]
    )
    s = parse_suite(suite)
    assert s.metrics[0].params == {"power": 2, "mode": "abs"}
    assert s.metrics[1].params == {}


def test_single_component_may_be_given_without_list() -> None:
    s = parse_suite(tiny_suite(methods="tests.fakes:Grad"))
    assert [m.name for m in s.methods] == ["tests.fakes:Grad"]


def test_every_problem_reported_at_once_with_paths() -> None:
    suite = tiny_suite(
        seed=-1,
        methods=["tests.fakes:Grad", "salency"],
        metrics=["tests.fakes:TwoWay", {"tests.fakes:MaskMass": {"power": -1, "mode": "log"}}],
    )
    with pytest.raises(SuiteError) as info:
        parse_suite(suite, source="s.yaml")
    problems = info.value.problems
    assert problems == [
        "seed: expected an integer >= 0, got -1",
        "methods[1]: unknown method 'salency'; did you mean 'saliency'? available: "
        + ", ".join(__import__("benchbox.registry").registry.methods.names())
        + " (or 'package.module:Class' for your own)",
        "metrics[1].tests.fakes:MaskMass.power: expected an integer > 0, got -1",
        "metrics[1].tests.fakes:MaskMass.mode: expected one of 'abs' or 'raw', got 'log'",
    ]
    assert str(info.value).startswith("s.yaml: 4 problems\n")


def test_builtin_param_error_message_matches_issue() -> None:
    suite = {
        "name": "x",
        "datasets": ["synthetic_lesions_2d"],
        "models": ["cnn_gap"],
        "methods": ["saliency"],
        "metrics": ["pointing_game", {"deletion": {"steps": -1}}],
    }
    with pytest.raises(
        SuiteError, match=r"metrics\[1\]\.deletion\.steps: expected an integer > 0, got -1"
    ):
        parse_suite(suite)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sed": 1}, r"sed: unknown field; did you mean 'seed'\?"),
        ({"name": "has space"}, r"name: expected a name of letters.*got 'has space'"),
        ({"name": None}, r"name: expected a name"),
        ({"batch_size": 0}, r"batch_size: expected an integer > 0, got 0"),
        ({"batch_size": True}, r"batch_size: expected an integer > 0, got True"),
        ({"limit": "all"}, r"limit: expected an integer > 0, got 'all'"),
        ({"device": "gpu"}, r"device: expected one of cpu, cuda, cuda:N, auto, got 'gpu'"),
        ({"target": "truth"}, r"target: expected one of 'prediction', 'label', got 'truth'"),
        ({"methods": []}, r"methods: expected a non-empty list of methods, got \[\]"),
        ({"methods": None}, r"methods: required; list at least one method"),
        ({"methods": [{"a": {}, "b": {}}]}, r"methods\[0\]: expected a method name or a one-key"),
        (
            {"methods": [{"tests.fakes:Noise": 3}]},
            r"methods\[0\]\.tests\.fakes:Noise: expected a mapping",
        ),
        (
            {"methods": [{"tests.fakes:Noise": {"scal": 2}}]},
            r"methods\[0\]\.tests\.fakes:Noise\.scal: unknown parameter; did you mean 'scale'\?",
        ),
        (
            {"methods": [{"tests.fakes:Noise": {"scale": "big"}}]},
            r"methods\[0\]\.tests\.fakes:Noise\.scale: expected a number, got 'big'",
        ),
        (
            {"methods": ["tests.fakes:Grad", "tests.fakes:Grad"]},
            r"methods\[1\]: method 'tests.fakes:Grad' is already listed at methods\[0\]",
        ),
        ({"datasets": [3]}, r"datasets\[0\]: expected a dataset name or a one-key mapping"),
    ],
)
def test_single_mistakes(change: dict, message: str) -> None:
    with pytest.raises(SuiteError, match=message):
        parse_suite(tiny_suite(**change))


def test_required_params_are_reported() -> None:
    from tests import fakes

    class Needs(fakes.Noise):
        def __init__(self, *, level: float):
            self.level = level

    fakes.NeedsParam = Needs  # type: ignore[attr-defined]
    try:
        with pytest.raises(SuiteError, match=r"NeedsParam\.level: required parameter is missing"):
            parse_suite(tiny_suite(methods=["tests.fakes:NeedsParam"]))
    finally:
        del fakes.NeedsParam  # type: ignore[attr-defined]


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope.yaml: suite file not found"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match=r"is a directory"):
        load_suite(tmp_path)
    bad = _write(tmp_path, "name: x\nmethods: [a, b\nmetrics: c\n", "bad.yaml")
    with pytest.raises(UserError, match=r"bad.yaml:\d+:\d+: invalid YAML: .*fix the syntax"):
        load_suite(bad)
    empty = _write(tmp_path, "", "empty.yaml")
    with pytest.raises(SuiteError, match=r"expected a mapping of suite fields, got empty"):
        load_suite(empty)
    listy = _write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(SuiteError, match=r"got list"):
        load_suite(listy)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    evil = _write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n", "e.yaml")
    with pytest.raises(UserError, match="invalid YAML"):
        load_suite(evil)


def test_hash_is_stable_and_ignores_output() -> None:
    a = parse_suite(tiny_suite())
    b = parse_suite(tiny_suite(output="elsewhere"))
    c = parse_suite(tiny_suite(seed=4))
    d = parse_suite(
        tiny_suite(metrics=[{"tests.fakes:MaskMass": {"power": 1}}, "tests.fakes:TwoWay"])
    )
    assert a.hash == b.hash == d.hash  # explicit default == implicit default
    assert a.hash != c.hash
    assert a.resolved()["metrics"][0] == {"tests.fakes:MaskMass": {"mode": "abs", "power": 1}}


def test_wrapped_method_params_are_validated_resolved_and_its_needs_inherited() -> None:
    bad = tiny_suite(
        methods=[{"smoothgrad": {"base": "integrated_gradients", "base_params": {"steps": 0}}}]
    )
    with pytest.raises(
        SuiteError,
        match=r"methods\[0\]: smoothgrad\.base_params\.steps: expected an integer > 0, got 0",
    ):
        parse_suite(bad)
    with pytest.raises(
        SuiteError, match=r"methods\[0\]: smoothgrad\.base: unknown method 'salency'"
    ):
        parse_suite(tiny_suite(methods=[{"smoothgrad": {"base": "salency"}}]))
    s = parse_suite(tiny_suite(methods=[{"smoothgrad": {"base": "grad_cam"}}]))
    (spec,) = s.methods
    assert spec.params["base_params"] == {"layer": "auto", "relu": True}
    from benchbox.core import Capability

    assert Capability.TARGET_LAYER in spec.needs


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_suites_validate_with_strict_types_and_bounds(path: Path) -> None:
    load_suite(path)


def test_strict_types_keep_yaml_lists_for_tuples_and_integers_for_floats() -> None:
    """JSON has neither tuples nor a separate integer type, so neither may be an error."""
    from benchbox.datasets.files import NiftiFolder
    from benchbox.methods.controls import Centre
    from benchbox.params import validate_params

    resolved, problems = validate_params(NiftiFolder, {"root": "x", "percentiles": [1, 99]}, "d")
    assert problems == [] and resolved["percentiles"] == (1.0, 99.0)
    resolved, problems = validate_params(Centre, {"sigma": 1}, "m")
    assert problems == [] and resolved["sigma"] == 1.0 and isinstance(resolved["sigma"], float)
    _, problems = validate_params(Centre, {"sigma": "1"}, "m")
    assert problems == ["m.sigma: expected a number, got '1'"]


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(SuiteError) as info:
        parse_suite(tiny_suite(seed=list(range(10_000))), source="s.yaml")
    assert len(str(info.value)) < 300, str(info.value)
