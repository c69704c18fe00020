"""Balanced coordinates: class balance, margins, several volumes, seeds, bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from neuroflood.errors import DataError
from neuroflood.prepare import open_coordinates
from neuroflood.prepare.coordinates import build_coordinates, class_voxels


def partitions_a():
    """8^3, 255 on a 1-voxel border; inside: 40 voxels of class 2, 8 of class 1, rest class 0."""
    p = np.full((8, 8, 8), 255, np.uint8)
    p[1:7, 1:7, 1:7] = 0
    p[1:3, 1:3, 1:3] = 1  # 8 voxels
    p[4:6, 1:6, 1:5] = 2  # 40 voxels
    return p


def read_all(path):
    c = open_coordinates(path)
    return c, c.shard(0, 1)


def test_every_class_equally_frequent_and_complete(tmp_path):
    p = partitions_a()
    s = build_coordinates([p], ["a"], tmp_path / "c.nfc", margin=1, seed=3, classes=[0, 1, 2], progress=False)
    assert s["per_class"] == {"0": 216 - 48, "1": 8, "2": 40}
    coords, shard = read_all(tmp_path / "c.nfc")
    assert len(coords) == 3 * 168 == s["count"]
    classes = p[tuple(shard.centers.T)]
    assert Counter(classes.tolist()) == {0: 168, 1: 168, 2: 168}
    # Cyclic resampling: each voxel of a class appears floor or ceil(168 / n) times, all appear.
    for c, n in ((1, 8), (2, 40), (0, 168)):
        hits = Counter(map(tuple, shard.centers[classes == c].tolist()))
        assert len(hits) == n
        assert set(hits.values()) <= {168 // n, -(-168 // n)}
    assert coords.meta["per_volume"] == {"a": {"0": 168, "1": 8, "2": 40}}
    assert shard.volume_names == ["a"] and (shard.volume_index == 0).all()


def test_margin_crops_and_zero_margin_keeps_everything(tmp_path):
    p = np.zeros((6, 6, 6), np.uint8)
    p[0, 0, 0] = 1
    found = class_voxels(p, 0)
    assert sorted(found) == [0, 1] and found[1].tolist() == [0]  # margin 0: nothing cropped
    cropped = class_voxels(p, (1, 2, 0))
    assert sorted(cropped) == [0] and len(cropped[0]) == 4 * 2 * 6
    build_coordinates([p], ["v"], tmp_path / "c.nfc", margin=(1, 2, 0), progress=False)
    _, shard = read_all(tmp_path / "c.nfc")
    z, y, x = shard.centers.T
    assert z.min() >= 1 and z.max() <= 4 and y.min() >= 2 and y.max() <= 3 and x.max() <= 5


def test_several_volumes_carry_their_names(tmp_path):
    a = partitions_a()
    b = np.full((5, 7, 9), 255, np.uint8)
    b[2, 3, 4] = 1
    b[2, 3, 5] = 3
    s = build_coordinates([a, b], ["first", "second"], tmp_path / "c.nfc", margin=1, seed=0, progress=False)
    coords, shard = read_all(tmp_path / "c.nfc")
    assert coords.volume_names == ["first", "second"]
    assert s["per_volume"]["second"] == {"1": 1, "3": 1}
    for vol, part in ((0, a), (1, b)):
        sel = shard.volume_index == vol
        assert (part[tuple(shard.centers[sel].T)] != 255).all()
    # Class 3 exists only in the second volume, at one voxel; it is resampled to 168.
    from_b = shard.centers[shard.volume_index == 1]
    assert Counter(map(tuple, from_b.tolist()))[(2, 3, 5)] == 168


def test_seed_reproducible_and_lazy_volume_equivalent(tmp_path):
    from neuroflood.volume import open_volume, write_volume

    p = partitions_a()
    build_coordinates([p], ["a"], tmp_path / "1.nfc", margin=1, seed=7, progress=False)
    build_coordinates([p], ["a"], tmp_path / "2.nfc", margin=1, seed=7, progress=False)
    build_coordinates([p], ["a"], tmp_path / "3.nfc", margin=1, seed=8, progress=False)
    write_volume(tmp_path / "p.zarr/a", p)
    build_coordinates([open_volume(tmp_path / "p.zarr/a")], ["a"], tmp_path / "4.nfc", margin=1, seed=7, progress=False)
    one, two, three, four = (read_all(tmp_path / f"{i}.nfc")[1].centers for i in (1, 2, 3, 4))
    assert np.array_equal(one, two) and np.array_equal(one, four)
    assert not np.array_equal(one, three)
    assert set(map(tuple, one.tolist())) == set(map(tuple, three.tolist()))  # same voxels, other order


def test_missing_class_is_an_error_unless_allowed(tmp_path):
    p = partitions_a()
    with pytest.raises(DataError, match=r"class\(es\) \[3\] have no voxel"):
        build_coordinates([p], ["a"], tmp_path / "c.nfc", margin=1, classes=range(4), progress=False)
    assert not (tmp_path / "c.nfc").exists()
    s = build_coordinates([p], ["a"], tmp_path / "c.nfc", margin=1, classes=range(4), allow_missing_classes=True, progress=False)
    assert s["missing_classes"] == [3] and s["classes"] == [0, 1, 2]


@pytest.mark.parametrize(
    "parts, names, margin, message",
    [
        ([np.full((6, 6, 6), 255, np.uint8)], ["a"], 1, "no voxel to sample"),
        ([np.zeros((6, 6, 6), np.uint8)], ["a"], 3, "margin .* leaves no voxel"),
        ([np.zeros((6, 6, 6), np.uint8)], ["a", "b"], 1, "1 partition volumes but 2 names"),
        ([np.zeros((6, 6, 6), np.uint8)] * 2, ["a", "a"], 1, "not unique"),
        ([np.zeros((6, 6, 6), np.float32)], ["a"], 1, "dtype float32"),
    ],
)
def test_bad_input(tmp_path, parts, names, margin, message):
    with pytest.raises(DataError, match=message):
        build_coordinates(parts, names, tmp_path / "c.nfc", margin=margin, progress=False)
    assert list(tmp_path.iterdir()) == []
