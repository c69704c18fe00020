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
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bbox import BoundingBox
from .errors import VolumeError

__all__ = ["Volume", "open_volume", "create_volume", "write_volume", "FORMATS_HELP"]

FORMATS_HELP = (
    "file.h5:dataset, dir.zarr/array, dir.n5/dataset, precomputed://path, "
    "'dir/*.png' or 'dir/*.tif' slice stacks, stack.tif, file.npy, file.npz:key"
)

_H5_EXT = (".h5", ".hdf5", ".hdf")
_TIFF_EXT = (".tif", ".tiff")


class Volume:
    """A lazily read n-d array with z, y, x as its first three axes.

    Subclasses implement ``_read(slices)`` (and ``_write`` when writable); this class checks
    indices so that every backend reports an out-of-range read the same way.
    """

    def __init__(self, spec: str, shape: Sequence[int], dtype: Any, writable: bool = False):
        self.spec = spec
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.writable = writable

    # -- public API ---------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def attrs(self) -> dict:
        """Metadata stored with the volume (HDF5/zarr attributes); empty where unsupported."""
        return {}

    def __getitem__(self, key: Any) -> np.ndarray:
        slices, squeeze = self._normalize(key)
        try:
            data = np.asarray(self._read(slices))
        except VolumeError:
            raise
        except Exception as e:  # a corrupt chunk, a truncated file, a vanished mount
            raise VolumeError(
                f"cannot read region {_region(slices)} of {self.spec}: {_short(e)}; "
                "the file may be corrupt or incomplete: rewrite it or restore it from a copy"
            ) from e
        return data[squeeze] if squeeze else data

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self.writable:
            raise VolumeError(f"{self.spec} is open read-only; create it with create_volume to write")
        slices, _ = self._normalize(key)
        want = tuple(s.stop - s.start for s in slices)
        value = np.asarray(value)
        try:
            value = np.broadcast_to(value, want)
        except ValueError:
            raise VolumeError(
                f"cannot write an array of shape {value.shape} into region {want} of {self.spec}"
            ) from None
        try:
            self._write(slices, value.astype(self.dtype, copy=False))
        except VolumeError:
            raise
        except OSError as e:
            raise VolumeError(f"cannot write region {_region(slices)} of {self.spec}: {_short(e)}; {_write_hint(e)}") from e
        except Exception as e:  # h5py and tensorstore wrap the OS error in their own types
            raise VolumeError(f"cannot write region {_region(slices)} of {self.spec}: {_short(e)}; {_write_hint(e)}") from e

    def read(self, box: BoundingBox) -> np.ndarray:
        return self[box.to_slices()]

    def write(self, box: BoundingBox, data: np.ndarray) -> None:
        self[box.to_slices()] = data

    def close(self) -> None:
        """Release file handles (a no-op for most backends)."""

    def __enter__(self) -> "Volume":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[tuple(slice(None) for _ in self.shape)]
        return data.astype(dtype) if dtype is not None else data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, shape={self.shape}, dtype={self.dtype})"

    # -- backend hooks ------------------------------------------------------------------
    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, slices: tuple[slice, ...], value: np.ndarray) -> None:
        raise NotImplementedError

    # -- index checking -----------------------------------------------------------------
    def _normalize(self, key: Any) -> tuple[tuple[slice, ...], tuple]:
        """Turn ints/slices/Ellipsis into full in-range step-1 slices, plus a squeeze index."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        if len(key) > self.ndim:
            raise VolumeError(f"{len(key)} indices for {self.spec}, which has {self.ndim} axes")
        key = key + (slice(None),) * (self.ndim - len(key))
        slices, squeeze = [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                k = int(k)
                if not 0 <= k < n:
                    raise VolumeError(
                        f"index {k} on axis {axis} is outside {self.spec} (shape {self.shape}); "
                        "read inside the volume"
                    )
                slices.append(slice(k, k + 1))
                squeeze.append(0)
            elif isinstance(k, slice):
                if k.step not in (None, 1):
                    raise VolumeError(f"strided reads are not supported on {self.spec}; use step 1")
                start = 0 if k.start is None else int(k.start)
                stop = n if k.stop is None else int(k.stop)
                if start < 0 or stop > n or stop < start:
                    raise VolumeError(
                        f"slice {start}:{stop} on axis {axis} is outside {self.spec} "
                        f"(shape {self.shape}); clip the region to the volume"
                    )
                slices.append(slice(start, stop))
                squeeze.append(slice(None))
            else:
                raise VolumeError(f"unsupported index {k!r} for {self.spec}; use ints and slices")
        needs_squeeze = any(s == 0 for s in squeeze)
        return tuple(slices), (tuple(squeeze) if needs_squeeze else ())


def _region(slices: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"


def _short(e: BaseException) -> str:
    """An exception as one short line (library messages can span lines)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def _write_hint(e: BaseException) -> str:
    text = str(e).lower()
    if "no space left" in text or getattr(e, "errno", None) == 28:
        return "the disk is full: free space or write elsewhere, then run again"
    return "check that the location is writable and has free space"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp/mkdtemp (private: 0600/0700) the umask's permissions."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~_umask())


# ----------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------


class ArrayVolume(Volume):
    """An in-memory or memory-mapped numpy array (``.npy``, ``.npz`` and tests)."""

    def __init__(self, spec: str, array: np.ndarray, writable: bool = False):
        super().__init__(spec, array.shape, array.dtype, writable)
        self.array = array

    def _read(self, slices):
        return np.array(self.array[slices])

    def _write(self, slices, value):
        self.array[slices] = value


class _WrappedArrayVolume(Volume):
    """A volume over an array object with numpy-style slicing and ``attrs`` (h5py, zarr)."""

    _arr: Any

    @property
    def attrs(self) -> dict:
        return dict(self._arr.attrs)

    def set_attrs(self, **attrs: Any) -> None:
        self._arr.attrs.update(attrs)

    def _read(self, slices):
        return self._arr[slices]

    def _write(self, slices, value):
        self._arr[slices] = value


class H5Volume(_WrappedArrayVolume):
    def __init__(self, spec: str, path: str, dataset: str, mode: str = "r"):
        import h5py

        self._file = h5py.File(path, mode)
        if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
            names = []
            self._file.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            self._file.close()
            raise VolumeError(
                f"no dataset {dataset!r} in {path} (has: {', '.join(names) or 'none'}); "
                f"name one of those after ':'"
            )
        self._arr = self._file[dataset]
        super().__init__(spec, self._arr.shape, self._arr.dtype, writable=mode != "r")

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:  # already closed
            pass


class ZarrVolume(_WrappedArrayVolume):
    def __init__(self, spec: str, array: Any, writable: bool):
        self._arr = array
        super().__init__(spec, array.shape, array.dtype, writable)

    def _read(self, slices):
        try:
            return self._arr[slices]
        except Exception as e:
            # zarr reads chunks concurrently on an asyncio loop; after one fails the others
            # are abandoned and asyncio logs each of them at exit. The failure is reported
            # here, once, naming the first chunk that cannot be read.
            import logging

            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            chunk = self._first_bad_chunk(slices)
            where = f"chunk {'.'.join(map(str, chunk))} of " if chunk else ""
            raise VolumeError(
                f"cannot read {self.spec}: {where}region {_region(slices)}: {_short(e)}; "
                "the chunk is corrupt or incomplete: rewrite the array or restore it from a copy"
            ) from e

    def _first_bad_chunk(self, slices) -> tuple[int, ...] | None:
        chunks = tuple(self._arr.chunks)
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(slices, chunks)]
        for idx in np.ndindex(*[len(r) for r in ranges]):
            key = tuple(r[i] for r, i in zip(ranges, idx))
            box = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, chunks, self.shape))
            try:
                self._arr[box]
            except Exception:
                return key
        return None


class TensorstoreVolume(Volume):
    """N5 and neuroglancer precomputed (whose stored x, y, z[, c] axes are shown as z, y, x[, c])."""

    def __init__(self, spec: str, store: Any, writable: bool, xyz: bool = False):
        self._store = store
        shape = tuple(store.domain.shape)
        self._xyz = xyz
        if xyz:  # precomputed is x, y, z, channel: present z, y, x (channel last if > 1)
            self._channels = shape[3] if len(shape) == 4 else 1
            shape = shape[:3][::-1] + ((self._channels,) if self._channels > 1 else ())
        super().__init__(spec, shape, store.dtype.numpy_dtype, writable)

    def _stored_view(self, slices):
        if not self._xyz:
            return self._store[slices]
        zyx = slices[:3]
        view = self._store[zyx[2], zyx[1], zyx[0]]
        return view

    def _read(self, slices):
        data = self._stored_view(slices).read().result()
        if self._xyz:
            data = np.transpose(data, (2, 1, 0, 3))
            data = data[..., slices[3]] if self._channels > 1 else data[..., 0]
        return data

    def _write(self, slices, value):
        if self._xyz:
            value = np.transpose(value if self._channels > 1 else value[..., None], (2, 1, 0, 3))
        future = self._stored_view(slices).write(value)
        try:
            future.result()
        except BaseException:  # e.g. Ctrl-C: let the write in flight end before cleanup
            try:
                future.result()
            except Exception:
                pass
            raise


class SliceStackVolume(Volume):
    """A z stack of 2-D image files; reads only the slices asked for."""

    def __init__(self, spec: str, files: list[str]):
        self._files = files
        first = _read_image(files[0])
        super().__init__(spec, (len(files),) + first.shape, first.dtype)

    def _read(self, slices):
        out = np.empty(tuple(s.stop - s.start for s in slices), self.dtype)
        for i, z in enumerate(range(slices[0].start, slices[0].stop)):
            img = _read_image(self._files[z])
            if img.shape != self.shape[1:]:
                raise VolumeError(
                    f"slice {self._files[z]} has shape {img.shape}, not {self.shape[1:]} like "
                    "the first; every slice of a stack must have the same size"
                )
            out[i] = img[slices[1:]]
        return out


class TiffStackVolume(Volume):
    """A multi-page TIFF, one page per z (or a single 3-D TIFF series)."""

    def __init__(self, spec: str, path: str):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        shape = series.shape
        if len(shape) == 2:
            shape = (1,) + tuple(shape)
        super().__init__(spec, shape, series.dtype)
        self._pages = len(self._tif.pages)

    def _read(self, slices):
        if self._pages == self.shape[0]:
            keys = range(slices[0].start, slices[0].stop)
            data = np.stack([self._tif.pages[z].asarray() for z in keys]) if keys else None
            if data is None:
                return np.empty(tuple(s.stop - s.start for s in slices), self.dtype)
            return data[(slice(None),) + slices[1:]]
        return self._tif.series[0].asarray().reshape(self.shape)[slices]

    def close(self) -> None:
        self._tif.close()


def _read_image(path: str) -> np.ndarray:
    if path.lower().endswith(_TIFF_EXT):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


# ----------------------------------------------------------------------------------------
# Spec parsing
# ----------------------------------------------------------------------------------------


def _split_container(spec: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """Split ``a/b.zarr/c/d`` into (``a/b.zarr``, ``c/d``) at the first container suffix."""
    m = re.search(r"^(.*?(?:%s))(?:/(.*))?$" % "|".join(re.escape(s) for s in suffixes), spec)
    if not m:
        return None
    return m.group(1), (m.group(2) or "").strip("/")


def _kind(spec: str) -> str:
    s = spec.lower()
    if s.startswith("precomputed://"):
        return "precomputed"
    if any(ch in spec for ch in "*?["):
        return "stack"
    if _split_container(s, (".zarr",)):
        return "zarr"
    if _split_container(s, (".n5",)):
        return "n5"
    if re.search(r"\.(h5|hdf5|hdf)(:|$)", s):
        return "h5"
    if re.search(r"\.npz(:|$)", s):
        return "npz"
    if s.endswith(".npy"):
        return "npy"
    if s.endswith(_TIFF_EXT):
        return "tiff"
    raise VolumeError(f"unsupported volume spec {spec!r}; use one of: {FORMATS_HELP}")


def _split_colon(spec: str, what: str) -> tuple[str, str]:
    if ":" not in spec:
        raise VolumeError(f"{spec!r} names no {what}; write it as {spec}:NAME")
    path, name = spec.rsplit(":", 1)
    return path, name


def _require_file(path: str, spec: str) -> None:
    if not os.path.exists(path):
        raise VolumeError(f"{path} does not exist (from volume spec {spec!r}); check the path")


def open_volume(spec: str | os.PathLike, mode: str = "r") -> Volume:
    """Open the volume named by ``spec`` lazily; ``mode`` is ``"r"`` or ``"r+"``.

    Raises :class:`VolumeError` for a missing file or dataset, an unsupported format, or an
    unreadable file, with a message naming the spec and what to do.
    """
    spec = os.fspath(spec)
    if mode not in ("r", "r+"):
        raise VolumeError(f"mode {mode!r} is not 'r' or 'r+'; use create_volume to make a volume")
    kind = _kind(spec)
    writable = mode == "r+"
    try:
        if kind == "h5":
            path, ds = _split_colon(spec, "dataset")
            _require_file(path, spec)
            return H5Volume(spec, path, ds, mode)
        if kind == "zarr":
            return _open_zarr(spec, writable)
        if kind == "n5":
            root, ds = _split_container(spec, (".n5",))
            _require_file(os.path.join(root, ds), spec)
            return TensorstoreVolume(spec, _ts_open({"driver": "n5", "kvstore": _kv(root, ds)}, writable), writable)
        if kind == "precomputed":
            path = spec[len("precomputed://") :]
            _require_file(os.path.join(path, "info"), spec)
            store = _ts_open(
                {"driver": "neuroglancer_precomputed", "kvstore": _kv(path), "scale_index": 0}, writable
            )
            return TensorstoreVolume(spec, store, writable, xyz=True)
        if kind == "stack":
            files = sorted(glob.glob(spec))
            if not files:
                raise VolumeError(f"no files match {spec!r}; check the directory and pattern")
            return SliceStackVolume(spec, files)
        if kind == "tiff":
            _require_file(spec, spec)
            return TiffStackVolume(spec, spec)
        if kind == "npy":
            _require_file(spec, spec)
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

    root, name = _split_container(spec, (".zarr",))
    _require_file(root, spec)
    try:
        node = zarr.open(store=root, mode="r+" if writable else "r", path=name or None)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise VolumeError(
            f"no zarr array {name!r} in {root} ({e}); name an existing array after the .zarr/"
        ) from None
    if not hasattr(node, "shape") or not hasattr(node, "dtype"):
        names = sorted(k for k, _ in node.arrays()) if hasattr(node, "arrays") else []
        raise VolumeError(
            f"{spec!r} is a zarr group, not an array (arrays: {', '.join(names) or 'none'}); "
            "name one after the .zarr/"
        )
    return ZarrVolume(spec, node, writable)


def _open_npz(spec: str) -> ArrayVolume:
    if re.search(r"\.npz$", spec, re.I):
        path, key = spec, None
    else:
        path, key = _split_colon(spec, "array")
    _require_file(path, spec)
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.keys())
        if key is None:
            if len(keys) != 1:
                raise VolumeError(f"{path} holds {len(keys)} arrays ({', '.join(keys)}); add :NAME")
            key = keys[0]
        if key not in keys:
            raise VolumeError(f"no array {key!r} in {path} (has: {', '.join(keys)}); name one after ':'")
        return ArrayVolume(spec, npz[key])


def _kv(path: str, sub: str = "") -> dict:
    full = os.path.abspath(os.path.join(path, sub)) if sub else os.path.abspath(path)
    return {"driver": "file", "path": full}


def _ts_open(spec: dict, writable: bool, **kwargs: Any) -> Any:
    import tensorstore as ts

    return ts.open(spec, read=True, write=writable, **kwargs).result()


# ----------------------------------------------------------------------------------------
# Creating volumes
# ----------------------------------------------------------------------------------------


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
        raise VolumeError(f"cannot create {os.fspath(spec)!r}: {e}; {_write_hint(e)}") from e


def _create_volume(
    spec: str,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int] | None = None,
    compression: str | None = "gzip",
    fill_value: int | float = 0,
    overwrite: bool = False,
) -> Volume:
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    chunks = tuple(int(c) for c in chunks) if chunks else default_chunks(shape)
    kind = _kind(spec)
    if kind == "h5":
        import h5py

        path, ds = _split_colon(spec, "dataset")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "a") as f:
            if ds in f:
                if not overwrite:
                    raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
                del f[ds]
            f.create_dataset(
                ds, shape=shape, dtype=dtype, chunks=chunks, compression=compression, fillvalue=fill_value
            )
        return H5Volume(spec, path, ds, "r+")
    if kind == "zarr":
        import zarr

        root, name = _split_container(spec, (".zarr",))
        comp = {}
        if compression is None:
            comp = {"compressors": None}
        arr = zarr.create_array(
            store=root,
            name=name or None,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            fill_value=fill_value,
            overwrite=overwrite,
            zarr_format=2,
            **comp,
        ) if _zarr_major() >= 3 else zarr.open(
            store=root, path=name or None, mode="w" if overwrite else "w-", shape=shape,
            dtype=dtype, chunks=chunks, fill_value=fill_value,
        )
        return ZarrVolume(spec, arr, True)
    if kind == "n5":
        root, ds = _split_container(spec, (".n5",))
        if os.path.exists(os.path.join(root, ds, "attributes.json")) and not overwrite:
            raise VolumeError(f"{spec} already exists; choose another name or pass overwrite")
        store = _ts_open(
            {
                "driver": "n5",
                "kvstore": _kv(root, ds),
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
        store = _ts_open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": _kv(path),
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
        raise VolumeError(f"cannot write {os.fspath(spec)!r}: {e}; {_write_hint(e)}") from e
    except RuntimeError as e:  # h5py reports a full disk as "Can't ... (errno = 28 ...)"
        if "errno = 28" not in str(e):
            raise
        raise VolumeError(f"cannot write {os.fspath(spec)!r}: No space left on device; {_write_hint(OSError(28, ''))}") from e


def _ensure_space(folder: str, nbytes: int, path: str) -> None:
    """Raise ENOSPC before writing ``nbytes`` (uncompressed) into ``folder`` if they cannot fit.

    HDF5 (h5py 3.16 / HDF5 2.0) can crash the process when the disk fills during a write, so
    HDF5 writes check first. Conservative: compression often makes data fit that fails here.
    """
    free = shutil.disk_usage(folder).free
    if nbytes + (1 << 20) > free:
        raise OSError(28, f"No space left on device ({nbytes / 2**20:.1f} MiB to write, {free / 2**20:.1f} MiB free)", path)


def _write_volume(spec: str, data: np.ndarray, chunks, overwrite: bool, attrs: dict | None) -> None:
    kind = _kind(spec)
    if kind == "h5":
        import h5py

        path, ds = _split_colon(spec, "dataset")
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
                    d = f.create_dataset(
                        tmp, data=data, chunks=chunks or default_chunks(data.shape), compression="gzip"
                    )
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
                d = f.create_dataset(
                    ds, data=data, chunks=chunks or default_chunks(data.shape), compression="gzip"
                )
                d.attrs.update(attrs or {})
            os.replace(tmp_path, path)
        finally:
            if os.path.exists(tmp_path):
                os.unlink(tmp_path)
        return
    if kind == "zarr":
        root, name = _split_container(spec, (".zarr",))
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
                _ensure_zarr_group(root)
                os.makedirs(os.path.dirname(target), exist_ok=True)
            old = None
            if os.path.exists(target):
                old = f"{target}.old-{os.getpid()}"
                os.replace(target, old)
            os.replace(src, target)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
        return
    vol = create_volume(spec, data.shape, data.dtype, chunks, overwrite=overwrite)
    vol[...] = data
    vol.close()


def _ensure_zarr_group(root: str) -> None:
    """Make ``root`` a zarr group (v2) if it is not a zarr node yet."""
    import zarr

    if not any(os.path.exists(os.path.join(root, f)) for f in (".zgroup", ".zarray", "zarr.json")):
        zarr.open_group(store=root, mode="a", zarr_format=2) if _zarr_major() >= 3 else zarr.open_group(root, mode="a")


EXPORT_MARK = "neuroflood_output"


def copy_volume(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    block: Sequence[int] = (128, 128, 128),
    overwrite: bool = False,
    progress: bool = True,
) -> Volume:
    """Copy a volume into another format block by block (memory stays at one block).

    The copy is written under a temporary name beside ``dst`` and moved into place only when
    complete, for every format: an interrupted or failed copy leaves nothing at ``dst`` and no
    temporary file. ``overwrite`` replaces ``dst`` only if an earlier copy wrote it (it is
    marked so); anything else at ``dst`` is refused.
    """
    from tqdm import tqdm

    from .cli import raise_if_terminated

    block = tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise VolumeError(f"copy block {block} must be 3 positive sizes z,y,x, e.g. 128,128,128")
    src_vol = open_volume(src)
    _check_copyable(src_vol)
    dst = os.fspath(dst)
    target = _Target(dst)
    if target.kind == "h5" and isinstance(src_vol, H5Volume) and os.path.exists(target.file) and os.path.samefile(src_vol._file.filename, target.file):
        raise VolumeError(f"{dst} is in the HDF5 file that {src} is read from; export into another file")
    if target.exists():
        if not overwrite:
            raise VolumeError(f"{dst} already exists; choose another name or pass --overwrite")
        if not target.exported():
            raise VolumeError(
                f"{dst} exists and was not written by neuroflood export, so --overwrite will not replace it; "
                "choose another destination"
            )
    chunks = tuple(min(b, s) for b, s in zip(block, src_vol.shape[:3])) + tuple(src_vol.shape[3:])
    shape3 = src_vol.shape[:3]
    boxes = [
        BoundingBox.from_start_stop(start, [min(a + b, s) for a, b, s in zip(start, block, shape3)])
        for start in (
            [i * b for i, b in zip(idx, block)] for idx in np.ndindex(*[-(-s // b) for s, b in zip(shape3, block)])
        )
    ]
    with target.staged() as tmp_spec:
        out = create_volume(tmp_spec, src_vol.shape, src_vol.dtype, chunks=chunks, overwrite=True)
        try:
            for box in tqdm(boxes, desc="export", unit="block", disable=not progress, file=sys.stderr):
                raise_if_terminated()
                sl = box.to_slices()
                out[sl] = src_vol[sl]
            if hasattr(out, "set_attrs"):
                for k, v in src_vol.attrs.items():
                    try:
                        out.set_attrs(**{k: v})
                    except (TypeError, ValueError):
                        pass  # an attribute this format cannot hold
                out.set_attrs(**{EXPORT_MARK: "export"})
        finally:
            out.close()
        raise_if_terminated()
    return open_volume(dst)


def _check_copyable(vol: Volume) -> None:
    if vol.ndim not in (3, 4) or vol.dtype.kind not in "biuf" or vol.size == 0:
        raise VolumeError(
            f"{vol.spec} is a {vol.ndim}-d {vol.dtype} array of shape {vol.shape}; export copies "
            "non-empty 3-d (or 4-d, channels last) numeric volumes"
        )


class _Target:
    """Where :func:`copy_volume` writes, how it stages the copy, and how it moves it into place."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind = _kind(spec)
        if self.kind not in ("h5", "zarr", "n5", "precomputed", "npy"):
            raise VolumeError(f"cannot write {spec!r}: export writes HDF5, zarr, N5, precomputed and .npy")
        if self.kind == "h5":
            self.file, self.name = _split_colon(spec, "dataset")
            if not self.name:
                raise VolumeError(f"give the HDF5 target as FILE.h5:NAME, not {spec!r}")
            self.path = self.file
        elif self.kind in ("zarr", "n5"):
            self.root, self.name = _split_container(spec, (".zarr",) if self.kind == "zarr" else (".n5",))
            if not self.name:
                raise VolumeError(f"give the {self.kind} target as DIR.{self.kind}/NAME, not {spec!r}")
            self.path = os.path.join(self.root, self.name)
        elif self.kind == "precomputed":
            self.path = spec[len("precomputed://") :].rstrip("/")
            if not self.path:
                raise VolumeError("give the precomputed target as precomputed://DIR")
        else:
            self.path = spec

    def exists(self) -> bool:
        if self.kind == "h5":
            if not os.path.exists(self.file):
                return False
            import h5py

            try:
                with h5py.File(self.file, "r") as f:
                    return self.name in f
            except OSError as e:
                raise VolumeError(f"{self.file} exists but is not an HDF5 file ({_short(e)}); choose another destination") from None
        return os.path.lexists(self.path)

    def exported(self) -> bool:
        """Whether an earlier ``export`` wrote what is at the target."""
        from .outputs import made_by

        if self.kind in ("precomputed", "n5"):
            return made_by(self.path) == "export"
        if self.kind == "npy":
            return False
        try:
            with open_volume(self.spec) as vol:
                return vol.attrs.get(EXPORT_MARK) == "export"
        except VolumeError:
            return False

    @contextmanager
    def staged(self):
        """Yield a temporary spec to write; on success move it to the target, else remove it."""
        from .outputs import write_marker

        pid = os.getpid()
        if self.kind == "h5":
            fresh = not os.path.exists(self.file)
            if fresh:  # a new file: write it whole beside, rename when complete
                tmp_file = os.path.join(os.path.dirname(os.path.abspath(self.file)), f".{os.path.basename(self.file)}.export-{pid}.h5")
                try:
                    yield f"{tmp_file}:{self.name}"
                    normal_permissions(tmp_file)
                    os.replace(tmp_file, self.file)
                finally:
                    if os.path.exists(tmp_file):
                        os.unlink(tmp_file)
                return
            import h5py

            tmp = f"{self.name}.__export_tmp__"
            with h5py.File(self.file, "a") as f:
                if tmp in f:
                    del f[tmp]
            try:
                yield f"{self.file}:{tmp}"
                with h5py.File(self.file, "a") as f:
                    if self.name in f:
                        del f[self.name]
                    f.move(tmp, self.name)
            finally:
                with h5py.File(self.file, "a") as f:
                    if tmp in f:
                        del f[tmp]
            return
        if self.kind in ("zarr", "n5"):
            fresh_root = not os.path.exists(self.root)
            ext = f".{self.kind}"
            if fresh_root:  # a new container: build it whole beside, rename when complete
                tmp_root = f"{self.root[: -len(ext)]}.export-{pid}{ext}"
                try:
                    yield f"{tmp_root}/{self.name}"
                    if self.kind == "zarr":
                        _ensure_zarr_group(tmp_root)
                    else:  # N5 datasets hold no attributes we can set: mark the directory
                        write_marker(os.path.join(tmp_root, self.name), "export")
                    os.replace(tmp_root, self.root)
                finally:
                    shutil.rmtree(tmp_root, ignore_errors=True)
                return
            tmp_name = f".{self.name.replace('/', '_')}.export-{pid}"
            tmp_path = os.path.join(self.root, tmp_name)
            try:
                yield f"{self.root}/{tmp_name}"
                if self.kind == "n5":
                    write_marker(tmp_path, "export")
                _swap_in(tmp_path, self.path)
            finally:
                shutil.rmtree(tmp_path, ignore_errors=True)
            return
        if self.kind == "precomputed":
            tmp_dir = f"{self.path}.export-{pid}"
            try:
                yield f"precomputed://{tmp_dir}"
                write_marker(tmp_dir, "export")
                _swap_in(tmp_dir, self.path)
            finally:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            return
        tmp_npy = os.path.join(os.path.dirname(os.path.abspath(self.path)), f".{os.path.basename(self.path)}.export-{pid}.npy")
        try:
            yield tmp_npy
            os.replace(tmp_npy, self.path)
        finally:
            if os.path.exists(tmp_npy):
                os.unlink(tmp_npy)


def _swap_in(new: str, target: str) -> None:
    """Move the complete ``new`` to ``target``, replacing an earlier one (already checked)."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    if os.path.lexists(target):
        old = f"{target}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
