"""neuroflood: flood-filling networks for neuron reconstruction in volume EM, in PyTorch.

The public API is imported lazily, so that ``neuroflood --help`` and commands that need no
network do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "neuroflood.model",
    "save_model": "neuroflood.model",
    "build_model": "neuroflood.model",
    "open_volume": "neuroflood.volume",
    "create_volume": "neuroflood.volume",
    "write_volume": "neuroflood.volume",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'neuroflood' has no attribute {name!r}")
