"""Create writable volumes (:func:`create_volume`) and write whole arrays atomically
(:func:`write_volume`) as HDF5, zarr, N5, neuroglancer precomputed or ``.npy``.

:func:`create_volume` refuses to replace an existing volume unless ``overwrite`` is set.
:func:`write_volume` guarantees that readers see either the old volume or the new one.
Write failures (a full disk included) are raised as :class:`~neuroflood.errors.VolumeError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import normal_permissions, remove_tree
from ..errors import VolumeError
from .backends import ArrayVolume, H5Volume, TensorstoreVolume, ZarrVolume, file_kvstore, open_tensorstore
from .base import Volume, write_hint
from .specs import spec_kind, split_colon, split_container


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(min(64, int(s)) for s in shape[:3]) + tuple(int(s) for s in shape[3:])


def create_volume(
    spec: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int] | None = None,
    compression: str | None = "gzip",
    fill_value: int | float = 0,
    overwrite: bool = False,
) -> Volume:
    """Create a writable, chunked, compressed volume (HDF5, zarr, N5, precomputed or npy).

    Refuses to replace an existing volume unless ``overwrite`` is set. For whole arrays,
    :func:`write_volume` writes atomically.
    """
    try:
        return _create_volume(os.fspath(spec), shape, dtype, chunks, compression, fill_value, overwrite)
    except VolumeError:
        raise
    except OSError as e:
        raise VolumeError(f"cannot create {os.fspath(spec)!r}: {e}; {write_hint(e)}") from e


def _create_volume(
    spec: str, shape: Sequence[int], dtype: Any, chunks: Any, compression: str | None, fill_value: float, overwrite: bool
) -> Volume:
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    chunks = tuple(int(c) for c in chunks) if chunks else default_chunks(shape)
    kind = spec_kind(spec)
    if kind == "h5":
        import h5py

        path, ds = split_colon(spec, "dataset")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "a") as f:
            if ds in f:
                if not overwrite:
                    raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
                del f[ds]
            f.create_dataset(ds, shape=shape, dtype=dtype, chunks=chunks, compression=compression, fillvalue=fill_value)
        return H5Volume(spec, path, ds, "r+")
    if kind == "zarr":
        import zarr

        root, name = split_container(spec, (".zarr",))
        comp = {}
        if compression is None:
            comp = {"compressors": None}
        arr = (
            zarr.create_array(
                store=root,
                name=name or None,
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                fill_value=fill_value,
                overwrite=overwrite,
                zarr_format=2,
                **comp,
            )
            if _zarr_major() >= 3
            else zarr.open(
                store=root,
                path=name or None,
                mode="w" if overwrite else "w-",
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                fill_value=fill_value,
            )
        )
        return ZarrVolume(spec, arr, True)
    if kind == "n5":
        root, ds = split_container(spec, (".n5",))
        if os.path.exists(os.path.join(root, ds, "attributes.json")) and not overwrite:
            raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
        store = open_tensorstore(
            {
                "driver": "n5",
                "kvstore": file_kvstore(root, ds),
                "metadata": {
                    "dimensions": list(shape),
                    "blockSize": list(chunks),
                    "dataType": dtype.name,
                    "compression": {"type": "gzip"} if compression else {"type": "raw"},
                },
            },
            True,
            create=True,
            delete_existing=overwrite,
        )
        return TensorstoreVolume(spec, store, True)
    if kind == "precomputed":
        path = spec[len("precomputed://") :]
        if os.path.exists(os.path.join(path, "info")) and not overwrite:
            raise VolumeError(f"{spec} already exists; choose another path or pass overwrite")
        if overwrite and os.path.isdir(path):
            shutil.rmtree(path)
        channels = shape[3] if len(shape) == 4 else 1
        store = open_tensorstore(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": file_kvstore(path),
                "multiscale_metadata": {
                    "type": "segmentation" if dtype.kind in "ui" and dtype.itemsize >= 4 else "image",
                    "data_type": dtype.name,
                    "num_channels": channels,
                },
                "scale_metadata": {
                    "size": list(shape[:3][::-1]),
                    "chunk_size": list(chunks[:3][::-1]),
                    "resolution": [1, 1, 1],
                    "encoding": "raw",
                },
            },
            True,
            create=True,
        )
        return TensorstoreVolume(spec, store, True, xyz=True)
    if kind == "npy":
        if os.path.exists(spec) and not overwrite:
            raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
        Path(spec).parent.mkdir(parents=True, exist_ok=True)
        arr = np.lib.format.open_memmap(spec, mode="w+", dtype=dtype, shape=shape)
        arr[...] = fill_value
        return ArrayVolume(spec, arr, writable=True)
    raise VolumeError(f"cannot create {spec!r}: writing supports HDF5, zarr, N5, precomputed and .npy")


def _zarr_major() -> int:
    import zarr

    return int(zarr.__version__.split(".")[0])


def write_volume(
    spec: str | os.PathLike,
    data: np.ndarray,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    attrs: dict | None = None,
) -> None:
    """Write a whole array to ``spec`` atomically: readers see the old volume or the new one.

    HDF5 datasets are written into a temporary file that replaces the target file only when
    the target does not hold other datasets; otherwise the dataset is written under a
    temporary name and renamed inside the file. zarr arrays are written to a temporary
    directory and renamed.
    """
    try:
        _write_volume(os.fspath(spec), np.asarray(data), chunks, overwrite, attrs)
    except VolumeError:
        raise
    except OSError as e:
        raise VolumeError(f"cannot write {os.fspath(spec)!r}: {e}; {write_hint(e)}") from e
    except RuntimeError as e:  # h5py reports a full disk as "Can't ... (errno = 28 ...)"
        if "errno = 28" not in str(e):
            raise
        raise VolumeError(f"cannot write {os.fspath(spec)!r}: No space left on device; {write_hint(OSError(28, ''))}") from e


def _ensure_space(folder: str, nbytes: int, path: str) -> None:
    """Raise ENOSPC before writing ``nbytes`` (uncompressed) into ``folder`` if they cannot fit.

    HDF5 (h5py 3.16 / HDF5 2.0) can crash the process when the disk fills during a write, so
    HDF5 writes check first. Conservative: compression often makes data fit that fails here.
    """
    free = shutil.disk_usage(folder).free
    if nbytes + (1 << 20) > free:
        raise OSError(28, f"No space left on device ({nbytes / 2**20:.1f} MiB to write, {free / 2**20:.1f} MiB free)", path)


def _write_volume(spec: str, data: np.ndarray, chunks, overwrite: bool, attrs: dict | None) -> None:
    kind = spec_kind(spec)
    if kind == "h5":
        import h5py

        path, ds = split_colon(spec, "dataset")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _ensure_space(os.path.dirname(os.path.abspath(path)), data.nbytes, path)
        if os.path.exists(path):
            with h5py.File(path, "a") as f:
                if ds in f and not overwrite:
                    raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
                tmp = f"{ds}.__tmp__"
                if tmp in f:  # left by a process that was killed outright
                    del f[tmp]
                try:
                    d = f.create_dataset(tmp, data=data, chunks=chunks or default_chunks(data.shape), compression="gzip")
                    d.attrs.update(attrs or {})
                    if ds in f:
                        del f[ds]
                    f.move(tmp, ds)
                finally:
                    if tmp in f:  # failed or interrupted: drop the half-written copy
                        del f[tmp]
            return
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp.h5", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        normal_permissions(tmp_path)
        try:
            with h5py.File(tmp_path, "w") as f:
                d = f.create_dataset(ds, data=data, chunks=chunks or default_chunks(data.shape), compression="gzip")
                d.attrs.update(attrs or {})
            os.replace(tmp_path, path)
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
        return
    if kind == "zarr":
        root, name = split_container(spec, (".zarr",))
        target = os.path.join(root, name) if name else root
        if os.path.exists(target) and not overwrite:
            raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
        # Write the array next to its final place, then swap it in with renames.
        tmp_root = f"{root}.tmp-{os.getpid()}.zarr"
        try:
            vol = create_volume(f"{tmp_root}/{name}" if name else tmp_root, data.shape, data.dtype, chunks, overwrite=True)
            vol[...] = data
            if attrs:
                vol.set_attrs(**attrs)
            src = os.path.join(tmp_root, name) if name else tmp_root
            if name:
                ensure_zarr_group(root)
                os.makedirs(os.path.dirname(target), exist_ok=True)
            old = None
            if os.path.exists(target):
                old = f"{target}.old-{os.getpid()}"
                os.replace(target, old)
            os.replace(src, target)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            remove_tree(tmp_root)  # zarr's writers may still be finishing after a failure
        return
    vol = create_volume(spec, data.shape, data.dtype, chunks, overwrite=overwrite)
    vol[...] = data
    vol.close()


def ensure_zarr_group(root: str) -> None:
    """Make ``root`` a zarr group (v2) if it is not a zarr node yet."""
    import zarr

    if not any(os.path.exists(os.path.join(root, f)) for f in (".zgroup", ".zarray", "zarr.json")):
        zarr.open_group(store=root, mode="a", zarr_format=2) if _zarr_major() >= 3 else zarr.open_group(root, mode="a")
