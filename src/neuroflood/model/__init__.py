"""The FFN network, native checkpoints and google/ffn TensorFlow checkpoint import.

Imported lazily (PEP 562) so that the CLI starts without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "ConvStack3D": "convstack",
    "layer_names": "convstack",
    "FFNModel": "checkpoint",
    "build_model": "checkpoint",
    "import_tf": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
