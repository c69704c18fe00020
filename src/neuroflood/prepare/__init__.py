"""Training data preparation: partitions and class-balanced coordinates."""

from .coordfile import CoordinateSet, CoordinateShard, open_coordinates, write_coordinates
from .coordinates import build_coordinates
from .partitions import compute_partitions
from .tfrecord import read_tfrecord_coordinates

__all__ = [
    "CoordinateSet",
    "CoordinateShard",
    "open_coordinates",
    "write_coordinates",
    "compute_partitions",
    "build_coordinates",
    "read_tfrecord_coordinates",
]
