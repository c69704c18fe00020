"""The :class:`~neuroflood.volume.base.Volume` backends: numpy, HDF5, zarr, tensorstore
(N5 and neuroglancer precomputed), 2-D image slice stacks and multi-page TIFF.

Each backend only reads or writes the region asked for; h5py, zarr, tensorstore, tifffile
and PIL are imported when a volume of that kind is opened.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import VolumeError
from .base import Volume, format_region, short_error
from .specs import TIFF_SUFFIXES


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
    """One dataset of an HDF5 file."""

    def __init__(self, spec: str, path: str, dataset: str, mode: str = "r"):
        import h5py

        self._file = h5py.File(path, mode)
        if dataset not in self._file or not isinstance(self._file[dataset], h5py.Dataset):
            names = []
            self._file.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            self._file.close()
            raise VolumeError(f"no dataset {dataset!r} in {path} (has: {', '.join(names) or 'none'}); name one of those after ':'")
        self._arr = self._file[dataset]
        super().__init__(spec, self._arr.shape, self._arr.dtype, writable=mode != "r")

    @property
    def filename(self) -> str:
        """The HDF5 file this dataset is in."""
        return self._file.filename

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:  # already closed
            pass


class ZarrVolume(_WrappedArrayVolume):
    """A zarr (v2 or v3) array; a failed read names the first chunk that cannot be read."""

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
                f"cannot read {self.spec}: {where}region {format_region(slices)}: {short_error(e)}; "
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
    if path.lower().endswith(TIFF_SUFFIXES):
        import tifffile

        return tifffile.imread(path)
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def file_kvstore(path: str, sub: str = "") -> dict:
    """A tensorstore file kvstore for ``path`` (or ``path/sub``), as an absolute path."""
    full = os.path.abspath(os.path.join(path, sub)) if sub else os.path.abspath(path)
    return {"driver": "file", "path": full}


def open_tensorstore(spec: dict, writable: bool, **kwargs: Any) -> Any:
    """Open a tensorstore spec for reading (and writing when ``writable``) and wait for it."""
    import tensorstore as ts

    return ts.open(spec, read=True, write=writable, **kwargs).result()
