"""Built-in models, by class: ``from benchbox.models import ...``.

Each model builder is also registered by name in ``benchbox.registry.models`` (what a suite names);
a class is imported from its module when first asked for, so importing this package is cheap.
"""

from __future__ import annotations

from .. import registry as _registry

__getattr__, __dir__, __all__ = _registry.lazy_exports(_registry.models, __name__)
