"""The package version, in a module of its own so that any room can record it (in exported
weights and index files) without importing the package's face, `lfvila/__init__.py`."""

__version__ = "0.1.0"
