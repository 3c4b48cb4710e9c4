"""The installed package's version, as its metadata gives it (one place: pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed(distribution: str, missing: str = "unknown") -> str:
    """The installed version of ``distribution``, or ``missing`` where it is not installed."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return missing


__version__ = installed("batchchat", "0+unknown")  # 0+unknown: a source tree that was never installed
