"""Parse volume spec strings: which format a spec names, and its file and dataset parts.

Pure string work (no file access beyond :func:`require_file`, no numpy), so that command
help can quote :data:`FORMATS_HELP` without importing any array library.
"""

from __future__ import annotations

import os
import re

from ..errors import VolumeError

FORMATS_HELP = (
    "file.h5:dataset, dir.zarr/array, dir.n5/dataset, precomputed://path, "
    "'dir/*.png' or 'dir/*.tif' slice stacks, stack.tif, file.npy, file.npz:key"
)

TIFF_SUFFIXES = (".tif", ".tiff")


def split_container(spec: str, suffixes: tuple[str, ...]) -> tuple[str, str] | None:
    """Split ``a/b.zarr/c/d`` into (``a/b.zarr``, ``c/d``) at the first container suffix."""
    alternatives = "|".join(re.escape(s) for s in suffixes)
    m = re.search(rf"^(.*?(?:{alternatives}))(?:/(.*))?$", spec)
    if not m:
        return None
    return m.group(1), (m.group(2) or "").strip("/")


def spec_kind(spec: str) -> str:
    """The format of ``spec``: h5, zarr, n5, precomputed, stack, tiff, npy or npz."""
    s = spec.lower()
    if s.startswith("precomputed://"):
        return "precomputed"
    if any(ch in spec for ch in "*?["):
        return "stack"
    if split_container(s, (".zarr",)):
        return "zarr"
    if split_container(s, (".n5",)):
        return "n5"
    if re.search(r"\.(h5|hdf5|hdf)(:|$)", s):
        return "h5"
    if re.search(r"\.npz(:|$)", s):
        return "npz"
    if s.endswith(".npy"):
        return "npy"
    if s.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise VolumeError(f"unsupported volume spec {spec!r}; use one of: {FORMATS_HELP}")


def split_colon(spec: str, what: str) -> tuple[str, str]:
    """Split ``file.h5:name`` at its last colon; ``what`` names the part in the error."""
    if ":" not in spec:
        raise VolumeError(f"{spec!r} names no {what}; write it as {spec}:NAME")
    path, name = spec.rsplit(":", 1)
    return path, name


def require_file(path: str, spec: str) -> None:
    """Raise :class:`VolumeError` naming ``spec`` when ``path`` does not exist."""
    if not os.path.exists(path):
        raise VolumeError(f"{path} does not exist (from volume spec {spec!r}); check the path")
