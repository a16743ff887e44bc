"""Components constructed in Python validate their parameters as a suite's are validated."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import torch
from pydantic import Field
from torch import Tensor

from benchbox import registry
from benchbox.core import ExplainedModel, Method
from benchbox.errors import UserError
from benchbox.params import Count, ParameterError, validate_params


@pytest.mark.parametrize(
    ("kind", "name", "params"),
    [
        ("metrics", "pointing_game", {"tolerance": -3}),
        ("methods", "integrated_gradients", {"steps": "8"}),
        ("methods", "integrated_gradients", {"steps": 100_000_000_000}),
        ("methods", "occlusion", {"windwo": 4}),
        ("metrics", "deletion", {"steps": 0, "baseline": "black"}),
        ("datasets", "synthetic_lesions_2d", {"n_train": -1}),
        ("models", "cnn_gap", {"epochs": 2.5}),
    ],
)
def test_python_construction_refuses_what_a_suite_refuses(
    kind: str, name: str, params: dict[str, Any]
) -> None:
    cls = registry.REGISTRIES[kind].get(name)
    _, problems = validate_params(cls, params, name)  # the suite's check, YAML path = the name
    assert problems
    with pytest.raises(ParameterError) as info:
        cls(**params)
    assert str(info.value) == "; ".join(problems)
    assert "\n" not in str(info.value)
    # a UserError (the CLI's exit 2, one line) and a ValueError (what Python code catches)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_valid_python_values_construct_and_are_not_coerced() -> None:
    ig = registry.methods.get("integrated_gradients")(steps=8)
    assert ig.steps == 8  # type: ignore[attr-defined]
    pg = registry.metrics.get("pointing_game")(tolerance=15)
    assert pg.tolerance == 15  # type: ignore[attr-defined]
    # a tuple where the signature says tuple, an int where it says float
    assert registry.metrics.get("road")(percentages=(10.0, 50)).percentages == (10.0, 50)  # type: ignore[attr-defined]


def test_a_wrapper_is_checked_against_its_own_signature_once() -> None:
    smooth = registry.methods.get("smoothgrad")
    with pytest.raises(ParameterError, match=r"^smoothgrad\.n: expected an integer > 0, got 0$"):
        smooth(base="saliency", n=0)
    assert smooth(base="saliency", n=2).n == 2  # type: ignore[attr-defined]


class Scaled(Method):
    """A user's method: the input times a factor."""

    def __init__(self, *, factor: Annotated[float, Field(gt=0)] = 1.0, n: Count = 1) -> None:
        self.factor, self.n = factor, n

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        return (x * self.factor).sum(1, keepdim=True)


def test_a_users_component_is_checked_by_its_class_name() -> None:
    with pytest.raises(ParameterError, match=r"^Scaled\.factor: expected a number > 0\.0, got -1$"):
        Scaled(factor=-1)
    with pytest.raises(ParameterError, match=r"^Scaled\.n: expected an integer <= 10,000"):
        Scaled(n=10**6)
    assert Scaled(factor=2).factor == 2


def test_values_that_are_not_plain_data_are_left_to_the_component() -> None:
    # A tensor is no suite value: the check leaves it to the component, as Python would.
    class Holder(Method):
        def __init__(self, *, value: Any = None, k: Count = 1) -> None:
            self.value, self.k = value, k

        def attribute(self, *args: Any, **kwargs: Any) -> Tensor:
            raise NotImplementedError

    t = torch.ones(2)
    assert Holder(value=t).value is t
    with pytest.raises(ParameterError, match=r"^Holder\.k: expected an integer > 0, got 0$"):
        Holder(value=t, k=0)
    with pytest.raises(TypeError):  # a missing or extra positional stays Python's own error
        Holder(1)  # type: ignore[misc]
