"""benchbox: benchmark and sanity-check attribution methods on medical images.

``import benchbox`` is cheap: components are imported when a suite names them, and the Python API
(``benchbox.run``, ``benchbox.load``, ``benchbox.explain``, ``benchbox.evaluate``) is imported
when first used. ``benchbox.compare`` is the
module of the CI gate (``benchbox.compare.compare``), not a lazy name: a submodule and a function
of the same name would shadow one another depending on import order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["Results", "__version__", "evaluate", "explain", "load", "run"]

if TYPE_CHECKING:
    from .api import Results, load, run
    from .direct import evaluate, explain

# name -> module that defines it; imported on first access (PEP 562), so `import benchbox` and
# `benchbox --help` never pay for torch, pandas or scipy.
_LAZY = {
    "run": "benchbox.api",
    "load": "benchbox.api",
    "Results": "benchbox.api",
    "explain": "benchbox.direct",
    "evaluate": "benchbox.direct",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'benchbox' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
