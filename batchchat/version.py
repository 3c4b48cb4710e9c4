"""The installed package's version, as its metadata gives it (one place: pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("batchchat")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
