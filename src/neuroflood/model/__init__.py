"""The FFN network, native checkpoints and google/ffn TensorFlow checkpoint import."""

from .checkpoint import FFNModel, build_model, import_tf, load_model, save_model
from .convstack import ConvStack3D, layer_names

__all__ = ["ConvStack3D", "FFNModel", "build_model", "import_tf", "load_model", "save_model", "layer_names"]
