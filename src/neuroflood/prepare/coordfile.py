"""The training-coordinate file: compact, memory-mapped, sharded by rank.

Layout (little-endian)::

    b"NFCOORD1"                      8-byte magic
    uint32  header length H
    H bytes JSON header               {"count": N, "volume_names": [...], "meta": {...}}
    zero padding to a multiple of 64
    N records of 14 bytes             int32 z, int32 y, int32 x, uint16 volume index

10^8 coordinates take 1.4 GB; a rank reads only its own contiguous shard through a memory
map, never the whole file. Coordinates are patch centres in z, y, x voxel order.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError

MAGIC = b"NFCOORD1"
RECORD = np.dtype([("z", "<i4"), ("y", "<i4"), ("x", "<i4"), ("volume", "<u2")])


@dataclass
class CoordinateShard:
    """Coordinates of one shard: ``centers`` int64 [n, 3] (z, y, x), ``volume_index`` [n]."""

    centers: np.ndarray
    volume_index: np.ndarray
    volume_names: list[str]

    def __len__(self) -> int:
        return len(self.centers)

    def volume_name(self, i: int) -> str:
        return self.volume_names[int(self.volume_index[i])]


class CoordinateSet:
    """A coordinate file opened lazily (memory-mapped)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise DataError(f"coordinate file {self.path} does not exist; run `neuroflood prepare` first")
        with open(self.path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != MAGIC:
                raise DataError(
                    f"{self.path} is not a neuroflood coordinate file; convert google/ffn "
                    "TFRecords with `neuroflood prepare --from-tfrecord`"
                )
            (hlen,) = struct.unpack("<I", head[8:])
            try:
                self.header: dict[str, Any] = json.loads(f.read(hlen))
            except json.JSONDecodeError:
                raise DataError(f"{self.path} has a corrupt header; regenerate it") from None
        self.offset = data_offset(hlen)
        self.count = int(self.header["count"])
        expected = self.offset + self.count * RECORD.itemsize
        if os.path.getsize(self.path) != expected:
            raise DataError(f"{self.path} is truncated ({os.path.getsize(self.path)} bytes, expected {expected}); regenerate it")
        self.volume_names: list[str] = list(self.header["volume_names"])
        self.meta: dict[str, Any] = self.header.get("meta", {})

    def __len__(self) -> int:
        return self.count

    def records(self) -> np.ndarray:
        """All records as a read-only memory map (nothing is read until indexed)."""
        if self.count == 0:
            return np.zeros(0, RECORD)
        return np.memmap(self.path, RECORD, mode="r", offset=self.offset, shape=(self.count,))

    def shard(self, rank: int = 0, world: int = 1) -> CoordinateShard:
        """The contiguous block ``[rank*N//world, (rank+1)*N//world)`` of the coordinates."""
        if not 0 <= rank < world:
            raise DataError(f"rank {rank} is outside a world of {world}")
        lo, hi = rank * self.count // world, (rank + 1) * self.count // world
        rec = np.array(self.records()[lo:hi])
        centers = np.stack([rec["z"], rec["y"], rec["x"]], axis=1).astype(np.int64)
        return CoordinateShard(centers, rec["volume"].astype(np.int64), self.volume_names)


def data_offset(header_len: int) -> int:
    """Byte offset of the first record: the 12-byte preamble and the header, padded to 64."""
    return -(-(12 + header_len) // 64) * 64


def open_coordinates(path: str | os.PathLike) -> CoordinateSet:
    """Open a coordinate file lazily; see :class:`CoordinateSet`."""
    return CoordinateSet(path)


def write_coordinates(
    path: str | os.PathLike,
    centers_zyx: np.ndarray,
    volume_index: np.ndarray | Sequence[int] | None,
    volume_names: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write coordinates atomically (temporary file, then rename).

    On failure (e.g. a full disk: ``OSError`` ENOSPC, naming ``path``) the temporary file is
    removed and an existing ``path`` is untouched.
    """
    path = Path(path)
    centers = np.asarray(centers_zyx)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise DataError(f"coordinates must be an [N, 3] z,y,x array, got shape {centers.shape}")
    vidx = np.zeros(len(centers), np.int64) if volume_index is None else np.asarray(volume_index)
    if len(vidx) != len(centers):
        raise DataError("volume_index and centers differ in length")
    if len(vidx) and (vidx.min() < 0 or vidx.max() >= len(volume_names)):
        raise DataError(f"volume index out of range for {len(volume_names)} volume names")
    if len(volume_names) > 65535:
        raise DataError("at most 65535 volumes fit one coordinate file")
    rec = np.empty(len(centers), RECORD)
    rec["z"], rec["y"], rec["x"] = centers[:, 0], centers[:, 1], centers[:, 2]
    rec["volume"] = vidx
    header = json.dumps({"count": len(rec), "volume_names": list(volume_names), "meta": meta or {}}).encode()
    with atomic_file(path) as f:
        f.write(MAGIC + struct.pack("<I", len(header)) + header)
        f.write(b"\0" * (data_offset(len(header)) - 12 - len(header)))
        f.write(rec.tobytes())
    return path
