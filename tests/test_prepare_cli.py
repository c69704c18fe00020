"""``neuroflood prepare``: outputs, several volumes, formats, conversion and bad input."""

from __future__ import annotations

import gzip
import json
import struct

import h5py
import numpy as np
import pytest

from neuroflood.cli import main
from neuroflood.prepare import compute_partitions, open_coordinates
from neuroflood.volume import open_volume


@pytest.fixture(autouse=True)
def only_prepare_command(monkeypatch):
    """Build the CLI with the prepare command alone, so other stages' imports cannot interfere."""
    import neuroflood.cli

    monkeypatch.setattr(neuroflood.cli, "COMMAND_MODULES", ["neuroflood.prepare.commands"])


ARGS = ["--lom-radius", "2,2,2", "--thresholds", "0.2,0.6", "--min-size", "0", "--margin", "2,2,2", "--no-progress"]


def toy_labels(shape=(20, 20, 20)):
    """A block (classes 2 at its edges, 3 inside), a 1-voxel line (class 1), background (0)."""
    labels = np.zeros(shape, np.uint64)
    labels[2:18, 2:18, 10:18] = 7
    labels[:, 5, 5] = 9
    return labels


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def leftovers(parent, keep):
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_prepare_writes_partitions_coordinates_and_summary(tmp_path, capsys):
    labels = toy_labels()
    write_h5(tmp_path / "v.h5", labels=labels, image=np.zeros(labels.shape, np.uint8))
    out = tmp_path / "out"
    rc = main(["prepare", "--labels", f"{tmp_path}/v.h5:labels", "--image", f"{tmp_path}/v.h5:image", "--out", str(out), *ARGS])
    assert rc == 0, capsys.readouterr().err
    expected = compute_partitions(labels, 2, [0.2, 0.6], 0, margin=2)
    assert np.array_equal(open_volume(f"{out}/partitions.zarr/v")[...], expected)
    summary = json.loads((out / "summary.json").read_text())
    counts = np.bincount(expected.ravel(), minlength=256)
    assert summary["volumes"]["v"]["partition_counts"] == {str(c): int(n) for c, n in enumerate(counts) if n}
    assert summary["volumes"]["v"]["image"] == f"{tmp_path}/v.h5:image"
    assert summary["parameters"]["lom_radius"] == [2, 2, 2] and set(summary["seconds"]) >= {"partitions", "coordinates"}
    coords = open_coordinates(out / "coordinates.nfc")
    shard = coords.shard(0, 1)
    assert coords.volume_names == ["v"] and len(coords) == 4 * int(counts[:4].max()) == summary["coordinates"]["count"]
    assert np.bincount(expected[tuple(shard.centers.T)]).tolist() == [int(counts[:4].max())] * 4
    assert coords.meta["per_class"] == {str(c): int(counts[c]) for c in range(4)}
    assert leftovers(tmp_path, {"v.h5", "out"}) == []


def test_two_named_volumes_h5_partitions_and_mask(tmp_path, capsys):
    a, b = toy_labels(), toy_labels((22, 20, 24))
    write_h5(tmp_path / "a.h5", labels=a)
    write_h5(tmp_path / "b.h5", labels=b, mask=np.zeros(b.shape, np.uint8))
    out = tmp_path / "out"
    rc = main(
        [
            "prepare",
            "--labels",
            f"left={tmp_path}/a.h5:labels",
            "--labels",
            f"right={tmp_path}/b.h5:labels",
            "--mask",
            f"right={tmp_path}/b.h5:mask",
            "--partition-format",
            "h5",
            "--block-shape",
            "8,8,8",
            "--seed",
            "5",
            "--out",
            str(out),
            *ARGS,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    coords = open_coordinates(out / "coordinates.nfc")
    assert coords.volume_names == ["left", "right"]
    assert set(np.unique(coords.shard(0, 1).volume_index).tolist()) == {0, 1}
    with h5py.File(out / "partitions.h5", "r") as f:
        assert np.array_equal(f["right"][...], compute_partitions(b, 2, [0.2, 0.6], 0, margin=2))
        assert f["left"].attrs["min_size"] == 0


def test_overwrite_and_refusal(tmp_path, capsys):
    write_h5(tmp_path / "v.h5", labels=toy_labels())
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    cmd = ["prepare", "--labels", f"{tmp_path}/v.h5:labels", "--out", str(out), *ARGS]
    assert main(cmd) == 2
    assert "exists" in capsys.readouterr().err and (out / "old.txt").exists()
    # A directory that prepare did not write is never replaced, not even with --overwrite.
    assert main([*cmd, "--overwrite"]) == 2
    assert "not written by neuroflood prepare" in capsys.readouterr().err and (out / "old.txt").exists()
    (out / "old.txt").unlink()
    out.rmdir()
    assert main(cmd) == 0
    first = (out / "coordinates.nfc").stat().st_ino
    assert main([*cmd, "--overwrite"]) == 0  # an earlier prepare output is replaced whole
    assert (out / "coordinates.nfc").stat().st_ino != first
    assert leftovers(tmp_path, {"v.h5", "out"}) == []


def tfrecord(path, centers_xyz, name=b"vol"):
    from neuroflood.prepare.tfrecord import coordinate_example
    from neuroflood.protowire import masked_crc32c

    blob = b""
    for c in centers_xyz:
        data = coordinate_example(c, name)
        n = struct.pack("<Q", len(data))
        blob += n + struct.pack("<I", masked_crc32c(n)) + data + struct.pack("<I", masked_crc32c(data))
    path.write_bytes(gzip.compress(blob))
    return path


def test_from_tfrecord_converts(tmp_path, capsys):
    f1 = tfrecord(tmp_path / "a.tfrecord", [(1, 2, 3), (4, 5, 6)], b"s1")
    f2 = tfrecord(tmp_path / "b.tfrecord", [(7, 8, 9)], b"s2")
    out = tmp_path / "out"
    assert main(["prepare", "--from-tfrecord", str(f1), "--from-tfrecord", str(f2), "--out", str(out), "--no-progress"]) == 0
    shard = open_coordinates(out / "coordinates.nfc").shard(0, 1)
    assert shard.centers.tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    assert [shard.volume_name(i) for i in range(3)] == ["s1", "s1", "s2"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("float", "dtype float32"),
        ("negative", "negative id -3"),
        ("shape mismatch", "image .* has shape"),
        ("radius too large", "lom_radius 12 on axis z"),
        ("margin too large", "margin 10 on axis z"),
        ("empty class", r"class\(es\) \[1\] have no voxel"),
        ("empty volume", "no labelled voxel"),
        ("bad tfrecord", "bad data checksum"),
        ("truncated tfrecord", "truncated"),
    ],
)
def test_bad_input_leaves_nothing_behind(tmp_path, capsys, case, message):
    labels = toy_labels()
    extra: list[str] = []
    datasets = {"labels": labels}
    if case == "float":
        datasets["labels"] = labels.astype(np.float32)
    elif case == "negative":
        datasets["labels"] = labels.astype(np.int64) - 3
    elif case == "shape mismatch":
        datasets["image"] = np.zeros((20, 20, 19), np.uint8)
        extra = ["--image", f"{tmp_path}/v.h5:image"]
    elif case == "radius too large":
        extra = ["--lom-radius", "12,2,2"]
    elif case == "margin too large":
        extra = ["--margin", "10,2,2"]
    elif case == "empty class":
        datasets["labels"] = np.where(labels == 9, 0, labels)  # without the line, class 1 is empty
    elif case == "empty volume":
        datasets["labels"] = np.zeros_like(labels)
    write_h5(tmp_path / "v.h5", **datasets)
    cmd = ["prepare", "--labels", f"{tmp_path}/v.h5:labels", "--out", str(tmp_path / "out"), *ARGS, *extra]
    if "tfrecord" in case:
        bad = tfrecord(tmp_path / "c.tfrecord", [(1, 2, 3)] * 3)
        raw = bytearray(gzip.decompress(bad.read_bytes()))
        if case == "bad tfrecord":
            raw[-10] ^= 0xFF
        else:
            raw = raw[:-6]
        bad.write_bytes(gzip.compress(bytes(raw)))
        cmd = ["prepare", "--from-tfrecord", str(bad), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroflood: error: ") and err.count("\n") == 1
    import re

    assert re.search(message, err), err
    assert leftovers(tmp_path, {"v.h5", "c.tfrecord"}) == []


def test_empty_class_allowed_on_request(tmp_path, capsys):
    labels = toy_labels()
    write_h5(tmp_path / "v.h5", labels=np.where(labels == 9, 0, labels))
    out = tmp_path / "out"
    cmd = ["prepare", "--labels", f"{tmp_path}/v.h5:labels", "--out", str(out), *ARGS, "--allow-missing-classes"]
    assert main(cmd) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coordinates"]["missing_classes"] == [1] and summary["coordinates"]["classes"] == [0, 2, 3]
