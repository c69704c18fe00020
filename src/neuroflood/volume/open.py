"""Open the volume a spec names, lazily (:func:`open_volume`).

Every failure to open (a missing file or dataset, an unsupported format, a corrupt or
foreign file) is raised as :class:`~neuroflood.errors.VolumeError` naming the spec.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from ..errors import VolumeError
from .backends import (
    ArrayVolume,
    H5Volume,
    SliceStackVolume,
    TensorstoreVolume,
    TiffStackVolume,
    ZarrVolume,
    file_kvstore,
    open_tensorstore,
)
from .base import Volume
from .specs import require_file, spec_kind, split_colon, split_container


def open_volume(spec: str | os.PathLike, mode: str = "r") -> Volume:
    """Open the volume named by ``spec`` lazily; ``mode`` is ``"r"`` or ``"r+"``.

    Raises :class:`VolumeError` for a missing file or dataset, an unsupported format, or an
    unreadable file, with a message naming the spec and what to do.
    """
    spec = os.fspath(spec)
    if mode not in ("r", "r+"):
        raise VolumeError(f"mode {mode!r} is not 'r' or 'r+'; use create_volume to make a volume")
    kind = spec_kind(spec)
    writable = mode == "r+"
    try:
        if kind == "h5":
            path, ds = split_colon(spec, "dataset")
            require_file(path, spec)
            return H5Volume(spec, path, ds, mode)
        if kind == "zarr":
            return _open_zarr(spec, writable)
        if kind == "n5":
            root, ds = split_container(spec, (".n5",))
            require_file(os.path.join(root, ds), spec)
            return TensorstoreVolume(spec, open_tensorstore({"driver": "n5", "kvstore": file_kvstore(root, ds)}, writable), writable)
        if kind == "precomputed":
            path = spec[len("precomputed://") :]
            require_file(os.path.join(path, "info"), spec)
            store = open_tensorstore({"driver": "neuroglancer_precomputed", "kvstore": file_kvstore(path), "scale_index": 0}, writable)
            return TensorstoreVolume(spec, store, writable, xyz=True)
        if kind == "stack":
            files = sorted(glob.glob(spec))
            if not files:
                raise VolumeError(f"no files match {spec!r}; check the directory and pattern")
            return SliceStackVolume(spec, files)
        if kind == "tiff":
            require_file(spec, spec)
            return TiffStackVolume(spec, spec)
        if kind == "npy":
            require_file(spec, spec)
            return ArrayVolume(spec, np.load(spec, mmap_mode="r+" if writable else "r"), writable)
        if kind == "npz":
            return _open_npz(spec)
    except VolumeError:
        raise
    except Exception as e:  # a corrupt or foreign file: name it, keep the cause for debugging
        raise VolumeError(f"cannot open {spec!r}: {type(e).__name__}: {e}") from e
    raise AssertionError(kind)


def _open_zarr(spec: str, writable: bool) -> ZarrVolume:
    import zarr

    root, name = split_container(spec, (".zarr",))
    require_file(root, spec)
    try:
        node = zarr.open(store=root, mode="r+" if writable else "r", path=name or None)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise VolumeError(f"no zarr array {name!r} in {root} ({e}); name an existing array after the .zarr/") from None
    if not hasattr(node, "shape") or not hasattr(node, "dtype"):
        names = sorted(k for k, _ in node.arrays()) if hasattr(node, "arrays") else []
        raise VolumeError(f"{spec!r} is a zarr group, not an array (arrays: {', '.join(names) or 'none'}); name one after the .zarr/")
    return ZarrVolume(spec, node, writable)


def _open_npz(spec: str) -> ArrayVolume:
    if re.search(r"\.npz$", spec, re.I):
        path, key = spec, None
    else:
        path, key = split_colon(spec, "array")
    require_file(path, spec)
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        if key is None:
            if len(keys) != 1:
                raise VolumeError(f"{path} holds {len(keys)} arrays ({', '.join(keys)}); add :NAME")
            key = keys[0]
        if key not in keys:
            raise VolumeError(f"no array {key!r} in {path} (has: {', '.join(keys)}); name one after ':'")
        return ArrayVolume(spec, npz[key])
