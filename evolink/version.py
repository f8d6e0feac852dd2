"""The installed version of this project, read once from its distribution's metadata."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Final

DISTRIBUTION: Final = "prefect-evolink"
UNKNOWN: Final = "0+unknown"


@functools.cache
def installed_version() -> str:
    """`prefect-evolink`'s version as installed (`pip install -e .` counts), or `0+unknown` for
    a tree that was never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # pragma: no cover - only when run from a tree never installed
        return UNKNOWN
