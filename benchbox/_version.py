"""benchbox's version, in a module of its own so that the package's modules can record it
without importing the package's ``__init__`` (which names the API modules)."""

__version__ = "0.1.0"
