"""benchbox: benchmark and sanity-check attribution methods on medical images.

``import benchbox`` is cheap: components are imported when a suite names them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
