"""neuroflood: flood-filling networks for neuron reconstruction in volume EM, in PyTorch.

The public API is imported lazily, so that ``neuroflood --help`` and commands that need no
network do not pay for importing torch.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_API = {
    "load_model": ".model",
    "save_model": ".model",
    "build_model": ".model",
    "open_volume": ".volume",
    "create_volume": ".volume",
    "write_volume": ".volume",
}
__all__ = [*_API, "__version__"]

__getattr__ = lazy_getattr(__name__, _API)
