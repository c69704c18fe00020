"""google/ffn coordinate TFRecords, read without TensorFlow, from files written here by hand."""

from __future__ import annotations

import gzip
import struct

import google_crc32c
import numpy as np
import pytest

from neuroflood.errors import DataError
from neuroflood.prepare import read_tfrecord_coordinates
from neuroflood.prepare.tfrecord import write_tfrecord_coordinates


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C, written out here independently of neuroflood.protowire."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:  # length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(xyz, name: bytes, packed: bool = True, value_first: bool = False) -> bytes:
    """tf.train.Example{center: int64_list [x, y, z], label_volume_name: bytes_list [name]}."""
    if packed:
        int64_list = field(1, b"".join(varint(v) for v in xyz))
    else:
        int64_list = b"".join(bytes([0x08]) + varint(v) for v in xyz)
    center = field(3, int64_list)  # Feature.int64_list = 3
    label = field(1, field(1, name))  # Feature.bytes_list = 1

    def entry(key: bytes, value: bytes) -> bytes:
        parts = [field(2, value), field(1, key)] if value_first else [field(1, key), field(2, value)]
        return field(1, b"".join(parts))  # Features.feature map entry

    return field(1, entry(b"label_volume_name", label) + entry(b"center", center))


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write(path, records, compress=True) -> None:
    blob = b"".join(records)
    path.write_bytes(gzip.compress(blob) if compress else blob)


CENTERS_XYZ = [(30, 40, 50), (200, 1, 7), (129, 16384, 3)]
NAMES = [b"sample2", b"sample2", b"other"]


@pytest.mark.parametrize("compress", [True, False])
def test_reads_centres_as_zyx_with_names(tmp_path, compress):
    path = tmp_path / "coords.tfrecord"
    write(path, [record(example(c, n)) for c, n in zip(CENTERS_XYZ, NAMES)], compress)
    centers, names = read_tfrecord_coordinates(path)
    assert centers.dtype.kind == "i" and centers.shape == (3, 3)
    assert centers.tolist() == [list(c[::-1]) for c in CENTERS_XYZ]
    assert names == ["sample2", "sample2", "other"]


def test_unpacked_values_and_any_field_order(tmp_path):
    path = tmp_path / "c.tfrecord"
    write(path, [record(example((1, 2, 300), b"v", packed=False, value_first=True))])
    centers, names = read_tfrecord_coordinates(path)
    assert centers.tolist() == [[300, 2, 1]] and names == ["v"]


def test_roundtrip_with_writer(tmp_path):
    rng = np.random.default_rng(0)
    zyx = rng.integers(0, 70000, (500, 3))
    names = [("a", "bb", "c" * 200)[i % 3] for i in range(500)]  # a long name takes the slow parser
    write_tfrecord_coordinates(tmp_path / "w.tfrecord", zyx, names)
    centers, got = read_tfrecord_coordinates(tmp_path / "w.tfrecord")
    assert np.array_equal(centers, zyx) and got == names


def corrupt_variants(good: bytes):
    bad_data = bytearray(good)
    bad_data[20] ^= 0x01  # inside the Example bytes
    bad_length = bytearray(good)
    bad_length[8] ^= 0xFF  # the length's CRC
    return {
        "bad data checksum": bytes(bad_data),
        "bad length checksum": bytes(bad_length),
        "truncated in record 0": good[:-3],
        "truncated in the header": good[:5],
    }


@pytest.mark.parametrize("kind", ["bad data checksum", "bad length checksum", "truncated in record 0", "truncated in the header"])
def test_corrupt_records(tmp_path, kind):
    blob = corrupt_variants(record(example((1, 2, 3), b"v")))[kind]
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(gzip.compress(blob))
    with pytest.raises(DataError, match=kind):
        read_tfrecord_coordinates(path)


def test_truncated_gzip_and_other_bad_files(tmp_path):
    good = gzip.compress(b"".join(record(example((i, 2, 3), b"v")) for i in range(50)))
    (tmp_path / "cut.tfrecord").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not a readable GZIP TFRecord"):
        read_tfrecord_coordinates(tmp_path / "cut.tfrecord")
    with pytest.raises(DataError, match="does not exist"):
        read_tfrecord_coordinates(tmp_path / "missing.tfrecord")
    write(tmp_path / "other.tfrecord", [record(field(1, field(1, field(1, b"image") + field(2, b""))))])
    with pytest.raises(DataError, match="not a google/ffn coordinate Example"):
        read_tfrecord_coordinates(tmp_path / "other.tfrecord")
