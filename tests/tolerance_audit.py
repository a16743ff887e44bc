"""A pytest plugin: how close each float comparison in the tests comes to its tolerance.

    pytest -p tests.tolerance_audit -m "not slow"          # writes tolerance-audit/<worker>.jsonl

Every call of ``torch.testing.assert_close`` and ``numpy.testing.assert_allclose``, and every
element ``pytest.approx`` compares, is recorded with its call site and its *use*: the greatest
``|actual - expected| / (atol + rtol·|expected|)`` over the elements (1 means the comparison
sits exactly at its tolerance; exact comparisons, ``atol = rtol = 0``, are left out). Run it
under the float kernels another CPU would use, e.g. ``MKL_CBWR=COMPATIBLE`` (MKL's code path
for a CPU it does not know), ``ATEN_CPU_CAPABILITY=default`` or ``avx2`` (ATen's vector width),
``OMP_NUM_THREADS=1``, and read the sites whose use approaches 1 with
``python -m tests.tolerance_audit tolerance-audit/``: those tolerances would fail on some CPU
before the others do, and get a bound from :mod:`tests.tolerance` instead of a hand-picked
number.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

_ROOT = Path(__file__).parents[1]
_records: list[dict[str, Any]] = []


def _site() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if path.name.startswith("test_") and path.is_relative_to(_ROOT):
            return f"{path.relative_to(_ROOT)}:{frame.lineno}"
    return "?"


def _use(actual: Any, expected: Any, rtol: float, atol: float) -> float | None:
    a = torch.as_tensor(np.asarray(actual) if not torch.is_tensor(actual) else actual)
    e = torch.as_tensor(np.asarray(expected) if not torch.is_tensor(expected) else expected)
    if not (a.is_floating_point() or e.is_floating_point()) or (rtol == 0 and atol == 0):
        return None
    a, e = torch.broadcast_tensors(a.detach().double().cpu(), e.detach().double().cpu())
    finite = torch.isfinite(a) & torch.isfinite(e)
    if not finite.any():
        return None
    allowed = atol + rtol * e[finite].abs()
    return float(((a[finite] - e[finite]).abs() / allowed).max())


def _recording(original: Callable[..., Any], torch_defaults: bool) -> Callable[..., Any]:
    def wrapper(actual: Any, expected: Any, *args: Any, **kwargs: Any) -> Any:
        rtol, atol = kwargs.get("rtol"), kwargs.get("atol")
        if not torch_defaults:  # numpy: assert_allclose(actual, desired, rtol=1e-7, atol=0)
            rtol = args[0] if args else (1e-7 if rtol is None else rtol)
            atol = args[1] if len(args) > 1 else (0.0 if atol is None else atol)
        try:
            if rtol is not None and atol is not None:
                use = _use(actual, expected, float(rtol), float(atol))
                if use is not None:
                    _records.append({"site": _site(), "use": use, "rtol": rtol, "atol": atol})
        except Exception:  # the audit must never change a test's outcome
            pass
        return original(actual, expected, *args, **kwargs)

    return wrapper


def _recording_approx(original: Callable[..., bool]) -> Callable[..., bool]:
    """``ApproxScalar.__eq__``: every ``approx`` (scalar, sequence, mapping, array) ends in it."""

    def eq(self: Any, actual: Any) -> bool:
        try:
            if np.ndim(actual) == 0 and isinstance(self.expected, float) and self.tolerance > 0:
                use = abs(self.expected - float(actual)) / self.tolerance
                if np.isfinite(use):
                    _records.append(
                        {
                            "site": _site(),
                            "use": use,
                            "rtol": 1e-6 if self.rel is None else self.rel,  # approx's defaults
                            "atol": 1e-12 if self.abs is None else self.abs,
                        }
                    )
        except Exception:
            pass
        return original(self, actual)

    return eq


def pytest_configure(config: pytest.Config) -> None:
    torch.testing.assert_close = _recording(torch.testing.assert_close, True)
    np.testing.assert_allclose = _recording(np.testing.assert_allclose, False)
    scalar = type(pytest.approx(1.0))
    scalar.__eq__ = _recording_approx(scalar.__eq__)


def pytest_unconfigure(config: pytest.Config) -> None:
    out = Path(os.environ.get("BENCHBOX_TOLERANCE_AUDIT", "tolerance-audit"))
    out.mkdir(exist_ok=True)
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(out / f"{name}.jsonl", "w") as f:
        for record in _records:
            f.write(json.dumps(record) + "\n")


def main(folders: list[str]) -> None:
    """Prints the sites by their greatest use over every record in ``folders``."""
    worst: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for path in Path(folder).glob("*.jsonl"):
            for line in path.read_text().splitlines():
                r = json.loads(line)
                if r["site"] not in worst or r["use"] > worst[r["site"]]["use"]:
                    worst[r["site"]] = {**r, "run": folder}
    for r in sorted(worst.values(), key=lambda r: -r["use"])[:60]:
        tol = f"atol={r['atol']:<8g} rtol={r['rtol']:<8g}"
        print(f"{r['use']:9.3g}  {tol} {r['site']}  ({r['run']})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # `... | head`
        sys.stderr.close()
