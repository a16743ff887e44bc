"""benchbox.metrics.toolkit: what every metric does around its formula, defined once."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from benchbox.metrics import toolkit
from benchbox.metrics.toolkit import REASON_NONFINITE, finish, finite_rows, resolve_k


def test_finite_rows_zeroes_the_bad_entries_and_flags_their_rows() -> None:
    x = torch.tensor([[1.0, 2.0], [math.nan, 3.0], [math.inf, -math.inf]])
    zeroed, finite = finite_rows(x)
    assert finite.tolist() == [True, False, False]
    assert zeroed.tolist() == [[1.0, 2.0], [0.0, 3.0], [0.0, 0.0]]


def test_finish_nans_the_flagged_samples_and_names_the_first_reason() -> None:
    values = torch.tensor([0.5, 0.7, 0.9, math.nan, 0.2], dtype=torch.float64)
    a = torch.tensor([False, True, True, False, False])
    b = torch.tensor([False, False, True, False, True])
    out, reasons = finish(values, [(a, "first"), (b, "second")])
    assert out[[0]].tolist() == [0.5] and out[1:3].isnan().all() and out[4].isnan()
    assert reasons == [None, "first", "first", None, "second"]
    # a NaN no check explains gets the fallback reason
    _, reasons = finish(values, [(a, "first")], unexplained="model score is non-finite")
    assert reasons == [None, "first", "first", "model score is non-finite", None]
    empty, none = finish(torch.zeros(0, dtype=torch.float64), [])
    assert empty.shape == (0,) and none == []


def test_resolve_k() -> None:
    assert resolve_k(0.05, 100) == 5 and resolve_k(0.025, 100) == 3  # half up
    assert resolve_k(1e-6, 100) == 1 and resolve_k(1.0, 100) == 100
    assert resolve_k(7, 100) == 7 and resolve_k(700, 100) == 100  # clamped
    with pytest.raises(ValueError, match=r"^topk_intersection.k: 700 exceeds the 100 pixels"):
        resolve_k(700, 100, name="topk_intersection.k")


@pytest.mark.parametrize(
    "module",
    ["localization", "faithfulness", "complexity", "similarity", "robustness", "adversarial"],
)
def test_every_metric_module_uses_the_one_non_finite_reason(module: str) -> None:
    m = importlib.import_module(f"benchbox.metrics.{module}")
    assert m.REASON_NONFINITE is toolkit.REASON_NONFINITE == REASON_NONFINITE
