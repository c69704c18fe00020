"""neuroflood: flood-filling networks for neuron reconstruction in volume EM, in PyTorch."""

from .model import build_model, load_model, save_model
from .volume import create_volume, open_volume

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "build_model", "open_volume", "create_volume", "__version__"]
