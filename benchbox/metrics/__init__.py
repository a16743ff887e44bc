"""Built-in metrics, by class: ``from benchbox.metrics import ...``.

Each metric is also registered by name in ``benchbox.registry.metrics`` (what a suite names);
a class is imported from its module when first asked for, so importing this package is cheap.
"""

from __future__ import annotations

from .. import registry as _registry

__getattr__, __dir__, __all__ = _registry.lazy_exports(_registry.metrics, __name__)
