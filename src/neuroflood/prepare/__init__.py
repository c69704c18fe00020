"""Training data preparation: partitions and class-balanced coordinates.

Imported lazily (PEP 562) so that the CLI starts without loading scipy and friends.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "prepare_coordinates": ".pipeline",
    "convert_tfrecords": ".pipeline",
    "PrepareConfig": ".config",
    "PartitionParams": ".params",
    "CoordinateSet": ".coordfile",
    "CoordinateShard": ".coordfile",
    "open_coordinates": ".coordfile",
    "write_coordinates": ".coordfile",
    "compute_partitions": ".partitions",
    "build_coordinates": ".coordinates",
    "read_tfrecord_coordinates": ".tfrecord",
}
__all__ = list(_API)

__getattr__ = lazy_getattr(__name__, _API)
