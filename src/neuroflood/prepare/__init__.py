"""Training data preparation: partitions and class-balanced coordinates."""

from .coordfile import CoordinateSet, CoordinateShard, open_coordinates, write_coordinates
from .partitions import compute_partitions

__all__ = ["CoordinateSet", "CoordinateShard", "open_coordinates", "write_coordinates", "compute_partitions"]
