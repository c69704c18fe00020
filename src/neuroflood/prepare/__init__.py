"""Training data preparation: partitions and class-balanced coordinates.

Imported lazily (PEP 562) so that the CLI starts without loading scipy and friends.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "CoordinateSet": "coordfile",
    "CoordinateShard": "coordfile",
    "open_coordinates": "coordfile",
    "write_coordinates": "coordfile",
    "compute_partitions": "partitions",
    "build_coordinates": "coordinates",
    "read_tfrecord_coordinates": "tfrecord",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
