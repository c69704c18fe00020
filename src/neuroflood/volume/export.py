"""Copy a volume into another format block by block (:func:`copy_volume`, the ``export``
command), staged under a temporary name and moved into place only when complete.

An interrupted or failed copy leaves nothing at the destination and no temporary file.
A copy is marked (:data:`EXPORT_MARK` attribute, or an output marker for N5 and
precomputed) so that ``overwrite`` replaces only what an earlier export wrote.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

from ..atomic import normal_permissions, remove_tree
from ..bbox import BoundingBox
from ..errors import VolumeError
from .backends import H5Volume
from .base import Volume, short_error
from .create import create_volume, ensure_zarr_group
from .open import open_volume
from .specs import spec_kind, split_colon, split_container

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

    from ..cli import raise_if_terminated

    block = tuple(int(b) for b in block)
    if len(block) != 3 or min(block) < 1:
        raise VolumeError(f"copy block {block} must be 3 positive sizes z,y,x, e.g. 128,128,128")
    src_vol = open_volume(src)
    _check_copyable(src_vol)
    dst = os.fspath(dst)
    target = _Target(dst)
    if (
        target.kind == "h5"
        and isinstance(src_vol, H5Volume)
        and os.path.exists(target.file)
        and os.path.samefile(src_vol.filename, target.file)
    ):
        raise VolumeError(f"{dst} is in the HDF5 file that {src} is read from; export into another file")
    if target.exists():
        if not overwrite:
            raise VolumeError(f"{dst} already exists; choose another name or pass --overwrite")
        if not target.exported():
            raise VolumeError(
                f"{dst} exists and was not written by neuroflood export, so --overwrite will not replace it; choose another destination"
            )
    chunks = tuple(min(b, s) for b, s in zip(block, src_vol.shape[:3])) + tuple(src_vol.shape[3:])
    shape3 = src_vol.shape[:3]
    boxes = [
        BoundingBox.from_start_stop(start, [min(a + b, s) for a, b, s in zip(start, block, shape3)])
        for start in ([i * b for i, b in zip(idx, block)] for idx in np.ndindex(*[-(-s // b) for s, b in zip(shape3, block)]))
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
        self.kind = spec_kind(spec)
        if self.kind not in ("h5", "zarr", "n5", "precomputed", "npy"):
            raise VolumeError(f"cannot write {spec!r}: export writes HDF5, zarr, N5, precomputed and .npy")
        if self.kind == "h5":
            self.file, self.name = split_colon(spec, "dataset")
            if not self.name:
                raise VolumeError(f"give the HDF5 target as FILE.h5:NAME, not {spec!r}")
            self.path = self.file
        elif self.kind in ("zarr", "n5"):
            self.root, self.name = split_container(spec, (".zarr",) if self.kind == "zarr" else (".n5",))
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
                raise VolumeError(f"{self.file} exists but is not an HDF5 file ({short_error(e)}); choose another destination") from None
        return os.path.lexists(self.path)

    def exported(self) -> bool:
        """Whether an earlier ``export`` wrote what is at the target."""
        from ..outputs import made_by

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
        from ..outputs import write_marker

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
                        ensure_zarr_group(tmp_root)
                    else:  # N5 datasets hold no attributes we can set: mark the directory
                        write_marker(os.path.join(tmp_root, self.name), "export")
                    os.replace(tmp_root, self.root)
                finally:
                    remove_tree(tmp_root)
                return
            tmp_name = f".{self.name.replace('/', '_')}.export-{pid}"
            tmp_path = os.path.join(self.root, tmp_name)
            try:
                yield f"{self.root}/{tmp_name}"
                if self.kind == "n5":
                    write_marker(tmp_path, "export")
                _swap_in(tmp_path, self.path)
            finally:
                remove_tree(tmp_path)
            return
        if self.kind == "precomputed":
            tmp_dir = f"{self.path}.export-{pid}"
            try:
                yield f"precomputed://{tmp_dir}"
                write_marker(tmp_dir, "export")
                _swap_in(tmp_dir, self.path)
            finally:
                remove_tree(tmp_dir)
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
