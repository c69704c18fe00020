"""Open and create volumes from spec strings, lazily, in z, y, x order.

Specs (see docs/user-guide.md):

=========================  ============================================================
``file.h5:dataset``        HDF5 (also ``.hdf5``, ``.hdf``); nested datasets ``a.h5:g/ds``
``dir.zarr/array``         zarr v2 or v3 (``dir.zarr`` alone when the root is an array)
``dir.n5/dataset``         N5, through tensorstore
``precomputed://path``     neuroglancer precomputed (scale 0), through tensorstore;
                           stored x,y,z[,c], presented z,y,x
``dir/*.png``, ``*.tif``   a stack of 2-D slices in sorted file-name order (z = file index)
``stack.tif``              a multi-page TIFF (one page per z)
``file.npy``               numpy array (memory-mapped)
``file.npz:key``           one array of an npz archive (``:key`` optional for one array)
=========================  ============================================================

Every volume is a :class:`Volume`: ``shape``, ``dtype``, ``vol[z0:z1, y0:y1, x0:x1]`` returns
a numpy array and reads only what it needs. Slices must lie inside the volume: unlike numpy,
reading past an edge raises :class:`~neuroflood.errors.VolumeError` instead of returning less.

Modules: :mod:`.specs` (spec parsing, no array library), :mod:`.base` (the
:class:`Volume` interface), :mod:`.backends` (one class per format), :mod:`.open`
(:func:`open_volume`), :mod:`.create` (:func:`create_volume`, :func:`write_volume`) and
:mod:`.export` (:func:`copy_volume`). The names below are imported lazily (PEP 562), so
that ``from neuroflood.volume import FORMATS_HELP`` loads no array library.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "Volume": ".base",
    "ArrayVolume": ".backends",
    "H5Volume": ".backends",
    "ZarrVolume": ".backends",
    "TensorstoreVolume": ".backends",
    "SliceStackVolume": ".backends",
    "TiffStackVolume": ".backends",
    "open_volume": ".open",
    "create_volume": ".create",
    "write_volume": ".create",
    "default_chunks": ".create",
    "copy_volume": ".export",
    "EXPORT_MARK": ".export",
    "FORMATS_HELP": ".specs",
    "split_container": ".specs",
}
__all__ = list(_API)

__getattr__ = lazy_getattr(__name__, _API)
