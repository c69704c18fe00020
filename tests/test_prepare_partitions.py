"""Partitions: hand-made volumes, a slow per-voxel oracle, FIB-25 counts, bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroflood.errors import ConfigError, DataError
from neuroflood.prepare import compute_partitions
from neuroflood.prepare.partitions import IGNORE, PartitionParams, class_lut, partition_volume

FIB25_COUNTS = [113468, 10433, 101709, 180884, 291180, 969320, 605822, 751844, 926390, 943965, 796382, 714182, 665511, 1171318]


def slow_partitions(labels, radius, thresholds, min_size, margin=(0, 0, 0), mask=None, whitelist=None, spheres=()):
    """The reference's definition, voxel by voxel (ffn-algorithms.md §2.10)."""
    seg = labels.copy()
    ids, sizes = np.unique(seg, return_counts=True)
    for i, n in zip(ids, sizes):
        if n < min_size:
            seg[seg == i] = 0
    out = np.full(seg.shape, IGNORE, np.uint8)
    border = [max(r, m) for r, m in zip(radius, margin)]
    window = np.prod([2 * r + 1 for r in radius])
    for z in range(border[0], seg.shape[0] - border[0]):
        for y in range(border[1], seg.shape[1] - border[1]):
            for x in range(border[2], seg.shape[2] - border[2]):
                box = (
                    slice(z - radius[0], z + radius[0] + 1),
                    slice(y - radius[1], y + radius[1] + 1),
                    slice(x - radius[2], x + radius[2] + 1),
                )
                if mask is not None and mask[box].any():
                    continue
                if any((z - a) ** 2 + (y - b) ** 2 + (x - c) ** 2 <= r * r for a, b, c, r in spheres):
                    continue
                label = seg[z, y, x]
                if label == 0 or (whitelist is not None and label not in whitelist):
                    out[z, y, x] = 0
                    continue
                fraction = np.count_nonzero(seg[box] == label) / window
                below = [i for i, t in enumerate(thresholds) if fraction < t]
                out[z, y, x] = below[0] + 1 if below else len(thresholds) + 1
    return out


def hand_volume():
    """9^3: a line of id 5 along z at (y, x) = (4, 4) and a slab of id 3 at x >= 6."""
    labels = np.zeros((9, 9, 9), np.uint64)
    labels[:, 4, 4] = 5
    labels[:, :, 6:] = 3
    return labels


def test_hand_made_classes_and_counts():
    p = compute_partitions(hand_volume(), lom_radius=1, thresholds=[0.5], min_size=0)
    # Core 7^3: line voxels see 3/27 of their own label (class 1); slab voxels see 18/27 at
    # x=6 and 27/27 at x=7 (class 2); the rest is background (class 0).
    assert p[1:8, 4, 4].tolist() == [1] * 7
    assert (p[1:8, 1:8, 6:8] == 2).all()
    counts = np.bincount(p.ravel(), minlength=256)
    assert counts[[0, 1, 2, 255]].tolist() == [343 - 7 - 98, 7, 98, 729 - 343]
    assert (p[0] == IGNORE).all() and (p[:, :, 8] == IGNORE).all()


def test_dust_whitelist_margin_mask_and_spheres():
    labels = hand_volume()
    dust = compute_partitions(labels, 1, [0.5], min_size=10)  # the 9-voxel line is dust
    assert dust[1:8, 4, 4].tolist() == [0] * 7 and (dust[1:8, 1:8, 6:8] == 2).all()
    white = compute_partitions(labels, 1, [0.5], 0, id_whitelist=[3])
    assert white[1:8, 4, 4].tolist() == [0] * 7
    margin = compute_partitions(labels, 1, [0.5], 0, margin=(2, 0, 3))
    assert (margin[:2] == IGNORE).all() and (margin[:, :, :3] == IGNORE).all()
    assert np.count_nonzero(margin != IGNORE) == 5 * 7 * 3
    mask = np.zeros(labels.shape, bool)
    mask[4, 4, 4] = True
    masked = compute_partitions(labels, 1, [0.5], 0, mask=mask)
    assert np.count_nonzero(masked == IGNORE) == 729 - 343 + 27
    assert (masked[3:6, 3:6, 3:6] == IGNORE).all()
    sphere = compute_partitions(labels, 1, [0.5], 0, exclusion_regions=[(4, 4, 4, 1)])
    assert np.count_nonzero(sphere == IGNORE) == 729 - 343 + 7


def test_class_lut_uses_strict_less_than():
    # Window of 4 voxels: fractions 0, .25, .5, .75, 1 against threshold 0.5.
    assert class_lut([0.5], 4).tolist() == [0, 1, 2, 2, 2]
    assert class_lut([0.25, 0.75], 4).tolist() == [0, 2, 2, 3, 3]


volumes = st.tuples(st.integers(3, 9), st.integers(3, 9), st.integers(3, 9)).flatmap(
    lambda shape: st.tuples(
        st.just(shape),
        st.integers(0, 2**32 - 1),
        st.tuples(*[st.integers(0, (s - 1) // 2) for s in shape]),
        st.tuples(*[st.integers(0, (s - 1) // 2) for s in shape]),
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    volumes,
    st.lists(st.floats(0.01, 1.0), min_size=1, max_size=5, unique=True),
    st.integers(0, 40),
    st.booleans(),
    st.integers(2, 5),
    st.booleans(),
)
def test_fast_equals_slow_per_voxel(volume, thresholds, min_size, with_mask, block, with_extras):
    shape, seed, radius, margin = volume
    rng = np.random.default_rng(seed)
    # Blobby labels: a few ids, runs along x so that fractions vary.
    labels = rng.integers(0, 5, shape).astype(np.uint64)
    labels = np.repeat(labels[:, :, ::2], 2, axis=2)[:, :, : shape[2]]
    mask = rng.random(shape) < 0.03 if with_mask else None
    whitelist = [1, 2, 4] if with_extras else None
    spheres = [tuple(int(rng.integers(0, s)) for s in shape) + (int(rng.integers(0, 3)),)] if with_extras else []
    thresholds = sorted(thresholds)
    expected = slow_partitions(labels, radius, thresholds, min_size, margin, mask, whitelist, spheres)
    extras = {"id_whitelist": whitelist, "exclusion_regions": spheres}
    kept = [i for i, n in zip(*np.unique(labels, return_counts=True)) if i != 0 and n >= min_size and (whitelist is None or i in whitelist)]
    if not kept:
        with pytest.raises(DataError):
            compute_partitions(labels, radius, thresholds, min_size, margin, mask, **extras)
        return
    got = compute_partitions(labels, radius, thresholds, min_size, margin, mask, **extras)
    np.testing.assert_array_equal(got, expected)
    # Blockwise with tiny blocks gives the same array.
    out = np.full(shape, IGNORE, np.uint8)
    params = PartitionParams.make(radius, thresholds, min_size, margin, whitelist, spheres)
    totals = partition_volume(labels, out, params, mask, block_shape=(block,) * 3, progress=False)
    np.testing.assert_array_equal(out, expected)
    assert totals.tolist() == np.bincount(expected.ravel(), minlength=256).tolist()


def test_fib25_counts_match_reference(fib25_h5):
    with h5py.File(fib25_h5, "r") as f:
        labels = f["labels"][...]
    # The reference's lom_radius is x,y,z and ours z,y,x; 24,24,24 is the same either way.
    p = compute_partitions(labels, (24, 24, 24), [0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], 10000)
    counts = np.bincount(p.ravel(), minlength=256)
    assert counts[:14].tolist() == FIB25_COUNTS
    assert counts[255] == labels.size - sum(FIB25_COUNTS)
    assert counts[14:255].sum() == 0


@pytest.mark.parametrize(
    "labels, kwargs, error, message",
    [
        (np.ones((8, 8, 8), np.float32), {}, DataError, "dtype float32"),
        (np.full((8, 8, 8), -1, np.int64), {}, DataError, "negative id -1"),
        (np.zeros((0, 8, 8), np.uint64), {}, DataError, "empty"),
        (np.zeros((8, 8, 8), np.uint64), {}, DataError, "no labelled voxel"),
        (np.ones((8, 8, 8), np.uint64), {"min_size": 1000}, DataError, "lower --min-size"),
        (np.ones((8, 8, 8), np.uint64), {"lom_radius": (1, 4, 1)}, DataError, "lom_radius 4 on axis y"),
        (np.ones((8, 8, 8), np.uint64), {"margin": (1, 1, 5)}, DataError, "margin 5 on axis x"),
        (np.ones((8, 8, 8), np.uint64), {"thresholds": [0.5, 0.2]}, ConfigError, "strictly increasing"),
        (np.ones((8, 8, 8), np.uint64), {"mask": np.zeros((8, 8, 7))}, DataError, "mask shape"),
        (np.ones((8, 8), np.uint64), {}, DataError, "3-D"),
    ],
)
def test_bad_input(labels, kwargs, error, message):
    args = {"lom_radius": 1, "thresholds": [0.5], "min_size": 0} | kwargs
    with pytest.raises(error, match=message):
        compute_partitions(labels, **args)
