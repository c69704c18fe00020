"""The :class:`Volume` interface every backend implements, and the helpers its errors use.

A :class:`Volume` is a lazily read n-d array with z, y, x as its first three axes. Indexing
with ints and step-1 slices returns a numpy array; an index outside the volume raises
:class:`~neuroflood.errors.VolumeError` (numpy would silently return less). Read and write
failures of any backend are reported as :class:`~neuroflood.errors.VolumeError` naming the
volume and the region.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..bbox import BoundingBox
from ..errors import VolumeError


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
                f"cannot read region {format_region(slices)} of {self.spec}: {short_error(e)}; "
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
            raise VolumeError(f"cannot write an array of shape {value.shape} into region {want} of {self.spec}") from None
        try:
            self._write(slices, value.astype(self.dtype, copy=False))
        except VolumeError:
            raise
        except OSError as e:
            raise VolumeError(f"cannot write region {format_region(slices)} of {self.spec}: {short_error(e)}; {write_hint(e)}") from e
        except Exception as e:  # h5py and tensorstore wrap the OS error in their own types
            raise VolumeError(f"cannot write region {format_region(slices)} of {self.spec}: {short_error(e)}; {write_hint(e)}") from e

    def read(self, box: BoundingBox) -> np.ndarray:
        return self[box.to_slices()]

    def write(self, box: BoundingBox, data: np.ndarray) -> None:
        self[box.to_slices()] = data

    def close(self) -> None:
        """Release file handles (a no-op for most backends)."""

    def __enter__(self) -> Volume:
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
                    raise VolumeError(f"index {k} on axis {axis} is outside {self.spec} (shape {self.shape}); read inside the volume")
                slices.append(slice(k, k + 1))
                squeeze.append(0)
            elif isinstance(k, slice):
                if k.step not in (None, 1):
                    raise VolumeError(f"strided reads are not supported on {self.spec}; use step 1")
                start = 0 if k.start is None else int(k.start)
                stop = n if k.stop is None else int(k.stop)
                if start < 0 or stop > n or stop < start:
                    raise VolumeError(
                        f"slice {start}:{stop} on axis {axis} is outside {self.spec} (shape {self.shape}); clip the region to the volume"
                    )
                slices.append(slice(start, stop))
                squeeze.append(slice(None))
            else:
                raise VolumeError(f"unsupported index {k!r} for {self.spec}; use ints and slices")
        needs_squeeze = any(s == 0 for s in squeeze)
        return tuple(slices), (tuple(squeeze) if needs_squeeze else ())


def format_region(slices: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in slices) + "]"


def short_error(e: BaseException) -> str:
    """An exception as one short line (library messages can span lines)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


def write_hint(e: BaseException) -> str:
    text = str(e).lower()
    if "no space left" in text or getattr(e, "errno", None) == 28:
        return "the disk is full: free space or write elsewhere, then run again"
    return "check that the location is writable and has free space"
