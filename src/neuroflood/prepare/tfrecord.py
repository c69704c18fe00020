"""google/ffn coordinate files (TFRecords of ``tf.train.Example``), read and written without TensorFlow.

A TFRecord file is a sequence of records, each::

    uint64  length                 little-endian
    uint32  masked CRC32C of the 8 length bytes
    bytes   data[length]           here a serialized tf.train.Example
    uint32  masked CRC32C of data

google/ffn compresses the whole file with GZIP (``build_coordinates.py``); uncompressed
files are read too (detected by the absence of the GZIP magic bytes). Each Example holds
``center``: int64 [x, y, z] and ``label_volume_name``: bytes. Centres are returned and
written in neuroflood's z, y, x order.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError
from ..protowire import encode_field, encode_varint, iter_fields, masked_crc32c, read_varint

_GZIP_MAGIC = b"\x1f\x8b"


def iter_tfrecords(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield the data of every record of a (GZIP or plain) TFRecord file, checking CRCs."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"TFRecord file {path} does not exist; check the path")
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as f:
        stream = io.BufferedReader(f, 1 << 20) if gzipped else f
        yield from _records(stream, path)


def _records(f: BinaryIO, path: str) -> Iterator[bytes]:
    n = 0
    offset = 0
    try:
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DataError(f"{path} is truncated in the header of record {n} (byte {offset}); re-create or re-copy the file")
            (length,) = struct.unpack("<Q", head[:8])
            (crc,) = struct.unpack("<I", head[8:])
            if masked_crc32c(head[:8]) != crc:
                raise DataError(
                    f"{path}: record {n} (byte {offset}) has a bad length checksum; the file is corrupt "
                    "or not a TFRecord file: re-create or re-copy it"
                )
            body = f.read(length + 4)
            if len(body) < length + 4:
                raise DataError(f"{path} is truncated in record {n} (byte {offset}); re-create or re-copy the file")
            data = body[:length]
            if masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
                raise DataError(f"{path}: record {n} (byte {offset}) has a bad data checksum; the file is corrupt: re-create or re-copy it")
            yield data
            n += 1
            offset += 16 + length
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is not a readable GZIP TFRecord file ({e}); re-create or re-copy it") from None


def _fast_coordinate_example(d: bytes, names: dict[bytes, bytes]) -> tuple[int, int, int, bytes] | None:
    """The layout google/ffn writes, decoded without generators; None for anything else.

    Expects ``Example{features{feature{key, value}...}}`` with 1-byte keys and lengths below
    128 except the Example and entry lengths; returns ``(x, y, z, name)``. ``names`` caches
    the raw name feature bytes (the same for every record of a volume).
    """
    n = len(d)
    if n < 2 or d[0] != 0x0A or d[1] >= 0x80 or d[1] + 2 != n:
        return None
    p = 2
    center = name = None
    while p < n:
        if d[p] != 0x0A or d[p + 1] >= 0x80:
            return None
        q = p + 2 + d[p + 1]  # end of this map entry
        if d[p + 2] != 0x0A:
            return None
        k = p + 4 + d[p + 3]  # end of the key
        key = d[p + 4 : k]
        if k >= q or d[k] != 0x12 or d[k + 1] + k + 2 != q:
            return None
        value = d[k + 2 : q]
        if key == b"center":
            # Feature{int64_list(3){value(1), packed}}: 0x1a L 0x0a L varints
            if len(value) < 4 or value[0] != 0x1A or value[2] != 0x0A or value[3] + 4 != len(value):
                return None
            vals = []
            v = shift = 0
            for b in value[4:]:
                v |= (b & 0x7F) << shift
                if b & 0x80:
                    shift += 7
                else:
                    vals.append(v)
                    v = shift = 0
            if len(vals) != 3 or shift or any(x >= 1 << 63 for x in vals):
                return None
            center = vals
        elif key == b"label_volume_name":
            name = names.get(value)
            if name is None:
                try:
                    values = _bytes_list(value)
                except ValueError:
                    return None
                if len(values) != 1:
                    return None
                name = names[value] = values[0]
        p = q
    if center is None or name is None:
        return None
    return center[0], center[1], center[2], name


def parse_coordinate_example(data: bytes) -> tuple[tuple[int, ...], bytes]:
    """``(center (x, y, z), label_volume_name)`` of one serialized ``tf.train.Example``."""
    center: list[int] | None = None
    name: bytes | None = None
    for field, _, features in iter_fields(data):  # Example.features = 1
        if field != 1:
            continue
        for entry_field, _, entry in iter_fields(features):  # Features.feature = 1 (map entry)
            if entry_field != 1:
                continue
            key, value = b"", b""
            for f, _, v in iter_fields(entry):  # key = 1, value = 2
                if f == 1:
                    key = v
                elif f == 2:
                    value = v
            if key == b"center":
                center = _int64_list(value)
            elif key == b"label_volume_name":
                values = _bytes_list(value)
                name = values[0] if values else None
    if center is None or len(center) != 3:
        raise ValueError("no 'center' int64 feature with 3 values")
    if name is None:
        raise ValueError("no 'label_volume_name' bytes feature")
    return tuple(center), name


def _int64_list(feature: bytes) -> list[int]:
    out: list[int] = []
    for f, _, lst in iter_fields(feature):  # Feature.int64_list = 3
        if f != 3:
            continue
        for g, wire, v in iter_fields(lst):  # Int64List.value = 1, packed or not
            if g != 1:
                continue
            if wire == 2:
                pos = 0
                while pos < len(v):
                    value, pos = _varint(v, pos)
                    out.append(value)
            else:
                out.append(v if v < 1 << 63 else v - (1 << 64))
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A signed int64 varint (negative values take 10 bytes, two's complement)."""
    value, pos = read_varint(buf, pos)
    return (value if value < 1 << 63 else value - (1 << 64)), pos


def _bytes_list(feature: bytes) -> list[bytes]:
    out: list[bytes] = []
    for f, _, lst in iter_fields(feature):  # Feature.bytes_list = 1
        if f != 1:
            continue
        out.extend(v for g, _, v in iter_fields(lst) if g == 1)
    return out


def read_tfrecord_arrays(path: str | os.PathLike, progress: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a google/ffn coordinate file: ``(centers_zyx int64 [N, 3], volume_index [N], names)``.

    ``names`` lists each distinct volume name once, in order of first appearance;
    ``volume_index`` points into it.
    """
    from tqdm import tqdm

    centers: list[tuple[int, ...]] = []
    index: list[int] = []
    names: dict[bytes, int] = {}
    raw_names: dict[bytes, bytes] = {}
    label = f"reading {os.path.basename(os.fspath(path))}"
    with tqdm(desc=label, unit=" records", unit_scale=True, disable=not progress) as bar:
        for n, data in enumerate(iter_tfrecords(path)):
            fast = _fast_coordinate_example(data, raw_names)
            if fast is not None:
                center, name = fast[:3], fast[3]
            else:
                try:
                    center, name = parse_coordinate_example(data)
                except ValueError as e:
                    raise DataError(
                        f"{os.fspath(path)}: record {n} is not a google/ffn coordinate Example ({e}); "
                        "give a file written by build_coordinates.py"
                    ) from None
            centers.append(center)
            index.append(names.setdefault(name, len(names)))
            if n % 65536 == 65535:  # tqdm per record would cost more than parsing
                bar.update(65536)
        bar.update(len(centers) % 65536)
    xyz = np.array(centers, np.int64).reshape(-1, 3)
    try:
        decoded = [k.decode("utf-8") for k in names]
    except UnicodeDecodeError:
        raise DataError(f"{os.fspath(path)} has a volume name that is not UTF-8; re-create the file") from None
    return xyz[:, ::-1].copy(), np.array(index, np.int64), decoded


def read_tfrecord_coordinates(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read a google/ffn coordinate file without TensorFlow.

    Parameters
    ----------
    path : path
        GZIP-compressed (as google/ffn writes them) or plain TFRecord file of
        ``tf.train.Example`` with ``center`` int64 [x, y, z] and ``label_volume_name`` bytes.

    Returns
    -------
    centers_zyx : (N, 3) int64 ndarray
        Centres in z, y, x order.
    volume_names : list of str
        The volume name of each record (N entries; equal names share one string object).

    Raises
    ------
    DataError
        Missing, truncated or corrupt file (bad CRC), or records that are not coordinates.
    """
    centers, index, names = read_tfrecord_arrays(path)
    return centers, [names[i] for i in index]


def write_tfrecord_coordinates(
    path: str | os.PathLike, centers_zyx: np.ndarray, volume_names: Sequence[str], compress: bool = True
) -> Path:
    """Write coordinates as google/ffn does (GZIP TFRecord; ``center`` in x, y, z), atomically."""
    path = Path(path)
    centers = np.asarray(centers_zyx, np.int64)
    if centers.ndim != 2 or centers.shape[1] != 3 or len(centers) != len(volume_names):
        raise DataError("write_tfrecord_coordinates needs an [N, 3] z,y,x array and N volume names")
    with atomic_file(path) as raw, gzip.GzipFile(fileobj=raw, mode="wb") if compress else raw as f:
        for (z, y, x), name in zip(centers.tolist(), volume_names):
            data = coordinate_example((x, y, z), name.encode("utf-8"))
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data)))
    return path


def coordinate_example(center_xyz: Sequence[int], name: bytes) -> bytes:
    """Serialize ``tf.train.Example{center: int64 [x, y, z], label_volume_name: [name]}``."""
    packed = b"".join(encode_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in center_xyz)
    center = encode_field(3, encode_field(1, packed))  # Feature.int64_list{value (packed)}
    label = encode_field(1, encode_field(1, name))  # Feature.bytes_list{value}
    features = encode_field(1, encode_field(1, b"center") + encode_field(2, center)) + encode_field(
        1, encode_field(1, b"label_volume_name") + encode_field(2, label)
    )
    return encode_field(1, features)
