"""Just enough of the protobuf wire format and CRC32C to read TensorFlow files without TF.

Used by the TF checkpoint importer (tensor bundles) and the TFRecord coordinate reader.
"""

from __future__ import annotations

from collections.abc import Iterator

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C (used by TFRecords, SSTable blocks and tensor bundles)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for a serialized message.

    Varints come back as int, fixed32/fixed64 as int, length-delimited fields as bytes.
    """
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value = bytes(buf[pos : pos + length])
            if len(value) != length:
                raise ValueError("truncated length-delimited field")
            pos += length
        elif wire == 5:
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > n:
            raise ValueError("truncated message")
        yield field, wire, value


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_field(field: int, value: int | bytes) -> bytes:
    """Encode one varint (int) or length-delimited (bytes) field."""
    if isinstance(value, (bytes, bytearray)):
        return encode_varint(field << 3 | 2) + encode_varint(len(value)) + bytes(value)
    return encode_varint(field << 3) + encode_varint(value)
