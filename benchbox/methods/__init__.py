"""Built-in methods, by class: ``from benchbox.methods import ...``.

Each method is also registered by name in ``benchbox.registry.methods`` (what a suite names);
a class is imported from its module when first asked for, so importing this package is cheap.
"""

from __future__ import annotations

from .. import registry as _registry

__getattr__, __dir__, __all__ = _registry.lazy_exports(_registry.methods, __name__)
