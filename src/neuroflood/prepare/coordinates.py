"""Class-balanced training coordinates from partition volumes (google/ffn ``build_coordinates``).

For every partition class except 255, all voxels at least ``margin`` from a face of every
volume are collected; each class is shuffled and repeated cyclically up to the size of the
largest class, then all classes are concatenated and shuffled together, so that every class
is equally frequent (ffn-algorithms.md §2.11). Unlike the reference, the result is
reproducible (one seeded generator), a margin of 0 means "no crop" rather than an empty set,
and the file is the compact :mod:`~neuroflood.prepare.coordfile` format, written in chunks.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..bbox import BoundingBox
from ..errors import DataError
from .coordfile import MAGIC, RECORD, data_offset
from .params import IGNORE, triple

#: Partition planes read at a time when collecting voxels of a lazy volume.
_SLAB_VOXELS = 1 << 24
#: Records converted and written at a time.
_WRITE_CHUNK = 1 << 20


def class_voxels(partitions: Any, margin: Sequence[int] | int, offset: int = 0) -> dict[int, np.ndarray]:
    """Flat indices (into the whole volume, plus ``offset``) of every class's voxels.

    Only voxels at least ``margin`` (z, y, x) from each face count; 255 is never a class.
    ``partitions`` is an array or a lazy volume; it is read in slabs along z.
    """
    shape = tuple(int(s) for s in partitions.shape)
    m = triple(margin, "margin")
    if len(shape) != 3:
        raise DataError(f"partitions have shape {shape}; expected a 3-D z,y,x volume")
    if any(2 * a >= s for a, s in zip(m, shape)):
        raise DataError(
            f"margin {list(m)} leaves no voxel of a partition volume of shape {list(shape)}; use a margin below half the size on every axis"
        )
    crop = BoundingBox(m, tuple(s - 2 * a for s, a in zip(shape, m)))
    plane = crop.size[1] * crop.size[2]
    step = max(1, _SLAB_VOXELS // plane)
    yy, xx = np.meshgrid(np.arange(crop.start[1], crop.stop[1]), np.arange(crop.start[2], crop.stop[2]), indexing="ij")
    plane_index = (yy * shape[2] + xx).ravel()  # flat index of a cropped plane's voxels within one z-plane
    found: dict[int, list[np.ndarray]] = {}
    for z0 in range(crop.start[0], crop.stop[0], step):
        z1 = min(z0 + step, crop.stop[0])
        slab = np.asarray(partitions[z0:z1, crop.start[1] : crop.stop[1], crop.start[2] : crop.stop[2]])
        if slab.dtype.kind not in "iu":
            raise DataError(f"partitions have dtype {slab.dtype}; expected uint8 classes from `neuroflood prepare`")
        flat = slab.ravel()
        if flat.dtype != np.uint8:
            if flat.min(initial=0) < 0 or flat.max(initial=0) > IGNORE:
                raise DataError("partition values must lie in 0..255; is this a label volume rather than partitions?")
            flat = flat.astype(np.uint8)
        order = np.argsort(flat, kind="stable")  # a radix sort for uint8
        bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=256))])
        for c in np.flatnonzero(np.diff(bounds)):
            if c == IGNORE:
                continue
            pos = order[bounds[c] : bounds[c + 1]]
            z, rest = np.divmod(pos, plane)
            found.setdefault(int(c), []).append(offset + (z + z0) * (shape[1] * shape[2]) + plane_index[rest])
    return {c: np.concatenate(parts) for c, parts in sorted(found.items())}


def balance(per_class: dict[int, list[np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    """Resample every class to the largest class's size and shuffle all together.

    Each class is permuted and then repeated cyclically (``np.resize``), as in the reference.
    """
    sizes = {c: sum(len(a) for a in parts) for c, parts in per_class.items()}
    n_max = max(sizes.values())
    out = np.empty(n_max * len(per_class), np.int64)
    for k, (_, parts) in enumerate(sorted(per_class.items())):
        voxels = rng.permutation(np.concatenate(parts))
        out[k * n_max : (k + 1) * n_max] = np.resize(voxels, n_max)
    rng.shuffle(out)
    return out


def build_coordinates(
    partitions: Sequence[Any],
    volume_names: Sequence[str],
    path: str | os.PathLike,
    margin: Sequence[int] | int = (24, 24, 24),
    seed: int = 0,
    classes: Sequence[int] | None = None,
    allow_missing_classes: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write class-balanced coordinates of one or more partition volumes to ``path``.

    Parameters
    ----------
    partitions : sequence of arrays or volumes
        Partition volumes (uint8 classes, 255 = never sampled), z, y, x.
    volume_names : sequence of str
        One name per volume; every coordinate carries its volume's name.
    path : path
        The coordinate file (:mod:`~neuroflood.prepare.coordfile` format), written atomically.
    margin : 3 ints (z, y, x) or int
        Voxels closer than this to a face are not sampled (README: 24,24,24 = fov//2 + delta).
        0 means no crop.
    seed : int
        Seed of the one generator used for the per-class permutations and the global shuffle.
    classes : sequence of int, optional
        Classes that must be present (e.g. 0..K+1 for K thresholds). Default: those found.
    allow_missing_classes : bool
        Balance over the classes found even if some of ``classes`` have no voxel (what the
        reference does silently); otherwise that is an error.
    meta : dict, optional
        Extra JSON metadata stored in the file header.

    Returns
    -------
    summary : dict
        ``count``, ``per_class`` (voxels per class), ``per_volume`` (voxels per class per
        volume), ``samples_per_class``, ``classes``, ``missing_classes``; also stored under
        ``meta`` in the file.
    """
    from tqdm import tqdm

    names = [str(n) for n in volume_names]
    if len(names) != len(partitions):
        raise DataError(f"{len(partitions)} partition volumes but {len(names)} names; give one name per volume")
    if len(set(names)) != len(names):
        raise DataError(f"volume names {names} are not unique; name each volume differently")
    if not names:
        raise DataError("no partition volume given; give at least one")
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(s) for s in p.shape) for p in partitions]
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])]).astype(np.int64)
    per_class: dict[int, list[np.ndarray]] = {}
    per_volume: dict[str, dict[str, int]] = {}
    for name, part, off in tqdm(list(zip(names, partitions, offsets)), desc="collecting voxels", unit="volume", disable=not progress):
        found = class_voxels(part, margin, int(off))
        per_volume[name] = {str(c): len(v) for c, v in found.items()}
        for c, v in found.items():
            per_class.setdefault(c, []).append(v)
    counts = {c: sum(len(a) for a in parts) for c, parts in sorted(per_class.items())}
    if not counts:
        raise DataError(
            f"no voxel to sample: every partition value within margin {list(triple(margin, 'margin'))} is 255; "
            "use a smaller margin or check the partitions"
        )
    missing = sorted(set(classes or ()) - set(counts))
    if missing and not allow_missing_classes:
        raise DataError(
            f"partition class(es) {missing} have no voxel in any volume, so the classes cannot be balanced; "
            "use fewer thresholds, more or larger volumes, or allow missing classes (--allow-missing-classes) "
            "to balance over the classes present as google/ffn does"
        )
    centers = balance(per_class, rng)
    summary = {
        "count": int(len(centers)),
        "samples_per_class": int(max(counts.values())),
        "classes": sorted(counts),
        "missing_classes": missing,
        "per_class": {str(c): int(n) for c, n in counts.items()},
        "per_volume": per_volume,
        "margin": list(triple(margin, "margin")),
        "seed": int(seed),
    }
    write_coordinate_stream(
        path,
        len(centers),
        names,
        {**(meta or {}), **summary},
        _records(centers, offsets, shapes, progress),
    )
    return summary


def _records(global_index: np.ndarray, offsets: np.ndarray, shapes: list[tuple[int, ...]], progress: bool) -> Iterator[np.ndarray]:
    """Turn (volume offset + flat index) values into coordinate records, chunk by chunk."""
    from tqdm import tqdm

    for lo in tqdm(range(0, len(global_index), _WRITE_CHUNK), desc="writing coordinates", unit="chunk", disable=not progress):
        g = global_index[lo : lo + _WRITE_CHUNK]
        vol = np.searchsorted(offsets, g, side="right") - 1
        rec = np.empty(len(g), RECORD)
        rec["volume"] = vol
        for v in np.unique(vol):
            sel = vol == v
            z, y, x = np.unravel_index(g[sel] - offsets[v], shapes[v])
            rec["z"][sel], rec["y"][sel], rec["x"][sel] = z, y, x
        yield rec


def write_coordinate_stream(
    path: str | os.PathLike,
    count: int,
    volume_names: Sequence[str],
    meta: dict[str, Any],
    chunks: Iterator[np.ndarray],
) -> Path:
    """Write a coordinate file from record chunks (same layout as ``write_coordinates``).

    Memory stays at one chunk; the file appears under its name only when complete.
    """
    path = Path(path)
    if len(volume_names) > 65535:
        raise DataError("at most 65535 volumes fit one coordinate file")
    header = json.dumps({"count": int(count), "volume_names": list(volume_names), "meta": meta}).encode()
    with atomic_file(path) as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        f.write(b"\0" * (data_offset(len(header)) - 12 - len(header)))
        written = 0
        for rec in chunks:
            f.write(np.ascontiguousarray(rec, RECORD).tobytes())
            written += len(rec)
        if written != count:
            raise AssertionError(f"wrote {written} coordinate records, announced {count}")
    return path
