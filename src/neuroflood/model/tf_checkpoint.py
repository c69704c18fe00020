"""Read a TensorFlow checkpoint (tensor bundle) without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` (an SSTable mapping tensor names to
``BundleEntryProto``s) plus ``PREFIX.data-00000-of-0000N`` (raw little-endian tensors).
Every block checksum of the index and every tensor's CRC32C is verified, so a truncated or
corrupt file is an error, never silently wrong weights.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..errors import CheckpointError
from ..protowire import iter_fields, masked_crc32c, read_varint

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 9: np.int64, 10: np.bool_, 19: np.float16}


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; give the checkpoint prefix") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check the file and its permissions") from None


def _read_block(data: bytes, offset: int, size: int, path: str) -> bytes:
    """Return an SSTable block's contents after checking its trailer (type byte + masked CRC)."""
    end = offset + size
    if end + 5 > len(data):
        raise CheckpointError(f"{path} is truncated (block at {offset} runs past the end); re-download it")
    block, ctype = data[offset:end], data[end]
    (crc,) = struct.unpack("<I", data[end + 1 : end + 5])
    if masked_crc32c(data[offset : end + 1]) != crc:
        raise CheckpointError(f"{path} is corrupt (block checksum mismatch at {offset}); re-download it")
    if ctype != 0:
        raise CheckpointError(f"{path} uses compressed blocks (type {ctype}), which are not supported")
    return block


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode the prefix-compressed (key, value) entries of an SSTable block."""
    (num_restarts,) = struct.unpack("<I", block[-4:])
    limit = len(block) - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        vlen, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + vlen]))
        pos += vlen
    return entries


def _parse_entry(value: bytes) -> dict:
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
    for field, _, v in iter_fields(value):
        if field == 1:
            entry["dtype"] = v
        elif field == 2:
            for f2, _, dim in iter_fields(v):
                if f2 == 2:
                    size = next((d for f3, _, d in iter_fields(dim) if f3 == 1), 0)
                    entry["shape"].append(size)
        elif field == 3:
            entry["shard_id"] = v
        elif field == 4:
            entry["offset"] = v
        elif field == 5:
            entry["size"] = v
        elif field == 6:
            entry["crc32c"] = v
        elif field == 7:
            raise CheckpointError("partitioned (sliced) variables are not supported")
    return entry


def read_index(prefix: str) -> tuple[dict, dict[str, dict]]:
    """Parse ``PREFIX.index``: return (header fields, {tensor name: entry})."""
    path = f"{prefix}.index"
    if not os.path.exists(path):
        raise CheckpointError(
            f"no TensorFlow checkpoint at {prefix} ({path} is missing); give the prefix, e.g. model.ckpt-27465036 (without .index)"
        )
    data = _read_file(path)
    if len(data) < _FOOTER_LEN or struct.unpack("<Q", data[-8:])[0] != _TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (bad magic); check the file")
    footer = data[-_FOOTER_LEN:]
    try:
        _, pos = read_varint(footer, 0)
        _, pos = read_varint(footer, pos)
        index_off, pos = read_varint(footer, pos)
        index_size, pos = read_varint(footer, pos)
    except ValueError:
        raise CheckpointError(f"{path} has a corrupt footer; re-download it") from None
    header: dict = {}
    entries: dict[str, dict] = {}
    try:
        for _, handle in _block_entries(_read_block(data, index_off, index_size, path)):
            off, p = read_varint(handle, 0)
            size, _ = read_varint(handle, p)
            for key, value in _block_entries(_read_block(data, off, size, path)):
                if key == b"":
                    header = {f: v for f, _, v in iter_fields(value)}
                else:
                    entries[key.decode()] = _parse_entry(value)
    except (struct.error, ValueError, IndexError):  # checksums passed, yet the entries do not parse
        raise CheckpointError(f"{path} has corrupt index entries; re-download it") from None
    return header, entries


def read_tf_checkpoint(prefix: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a TensorFlow tensor-bundle checkpoint, verifying checksums."""
    prefix = os.fspath(prefix)
    header, entries = read_index(prefix)
    num_shards = header.get(1, 1)
    shards: dict[int, bytes] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, e in sorted(entries.items()):
        sid = e["shard_id"]
        if sid not in shards:
            path = f"{prefix}.data-{sid:05d}-of-{num_shards:05d}"
            if not os.path.exists(path):
                raise CheckpointError(f"checkpoint data file {path} is missing; copy it beside the .index")
            shards[sid] = _read_file(path)
        buf = shards[sid]
        dtype = _DTYPES.get(e["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor {name} has unsupported TF dtype {e['dtype']}")
        start, size = e["offset"], e["size"]
        if start + size > len(buf):
            raise CheckpointError(f"checkpoint data for {name} is truncated; re-download the .data file")
        raw = buf[start : start + size]
        if e["crc32c"] is not None and masked_crc32c(raw) != e["crc32c"]:
            raise CheckpointError(f"checkpoint data for {name} is corrupt (CRC32C mismatch); re-download it")
        shape = tuple(e["shape"])
        arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if arr.size != int(np.prod(shape)):
            raise CheckpointError(f"tensor {name}: {arr.size} values for shape {shape}; the file is corrupt")
        tensors[name] = arr.reshape(shape).astype(dtype)
    return tensors
