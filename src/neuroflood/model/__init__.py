"""The FFN network, native checkpoints and google/ffn TensorFlow checkpoint import.

Imported lazily (PEP 562) so that the CLI starts without loading torch.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "ConvStack3D": ".convstack",
    "layer_names": ".convstack",
    "FFNModel": ".checkpoint",
    "build_model": ".checkpoint",
    "import_tf": ".checkpoint",
    "load_model": ".checkpoint",
    "save_model": ".checkpoint",
}
__all__ = list(_API)

__getattr__ = lazy_getattr(__name__, _API)
