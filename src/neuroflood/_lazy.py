"""PEP 562 lazy attributes: a package names its public API without importing it at start-up."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, api: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``api[name]`` (a module path, relative to
    ``package`` when it starts with '.') on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(api[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
