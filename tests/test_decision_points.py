"""Decision points (google/ffn find_decision_points): the reference's cases, the expansion,
the contact and size filters, and block-size independence of the out-of-core computation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from neuroflood.agglomerate.decision_points import expand_segments, find_decision_points
from neuroflood.synthetic import make_em_volume


def test_two_slabs_as_in_the_reference():
    seg = np.zeros((100, 80, 60), np.uint64)
    seg[:40] = 1
    seg[60:] = 2
    points = find_decision_points(seg).as_dict()
    assert list(points) == [(1, 2)]
    dist, zyx, contact = points[(1, 2)]
    assert dist == 10 and zyx == (49, 39, 29)  # google/ffn's test: xyz (29, 39, 49)
    assert contact == 80 * 60  # one face per voxel of the interface plane


def test_three_squares_and_max_distance_as_in_the_reference():
    seg = np.zeros((1, 100, 100), np.uint64)
    seg[0, :20, :20] = 1
    seg[0, :20, -20:] = 2
    seg[0, -20:, 40:60] = 3
    points = find_decision_points(seg).as_dict()
    assert {k: v[1] for k, v in points.items()} == {(1, 2): (0, 9, 49), (1, 3): (0, 49, 29), (2, 3): (0, 49, 69)}
    assert list(find_decision_points(seg, max_distance=30.0).as_dict()) == [(1, 2)]


def test_expansion_gives_each_empty_voxel_its_nearest_segment():
    rng = np.random.default_rng(0)
    seg = np.zeros((12, 13, 14), np.uint32)
    for i, p in enumerate(rng.integers(0, 12, size=(6, 3)), start=1):
        seg[tuple(p)] = i
    expanded, edt = expand_segments(seg, max_distance=5.0)
    pts = np.argwhere(seg > 0)
    for v in [(0, 0, 0), (11, 12, 13), (5, 6, 7), (3, 9, 1)]:
        d = np.sqrt(((pts - np.array(v)) ** 2).sum(axis=1))
        if d.min() > 5:
            assert expanded[v] == 0
        else:
            assert seg[tuple(pts[np.argmin(d)])] == expanded[v] or np.sum(d == d.min()) > 1
            assert edt[v] == pytest.approx(d.min())


def test_contact_and_size_filters():
    seg = np.zeros((10, 10, 20), np.uint32)
    seg[:, :, :8] = 1
    seg[:, :, 8:] = 2
    seg[0, 0, 19] = 3  # a 1-voxel segment touching 2
    assert set(find_decision_points(seg).as_dict()) == {(1, 2), (2, 3)}
    assert set(find_decision_points(seg, min_size=2).as_dict()) == {(1, 2)}
    assert set(find_decision_points(seg, min_contact=50).as_dict()) == {(1, 2)}  # 100 faces vs 2
    assert set(find_decision_points(seg, min_contact=101).as_dict()) == set()


def test_empty_and_single_segment_volumes_have_no_points():
    assert len(find_decision_points(np.zeros((5, 5, 5), np.uint8))) == 0
    assert len(find_decision_points(np.ones((5, 5, 5), np.uint8))) == 0


@pytest.mark.parametrize("block", [(7, 9, 11), (13, 17, 36), (20, 20, 20), (36, 5, 36)])
def test_block_size_does_not_change_the_result(block):
    image, labels = make_em_volume((36, 36, 36), seed=1)
    seg = labels.copy()
    seg[image < np.percentile(image, 25)] = 0  # gaps for the expansion to cross
    seg[ndimage.binary_erosion(seg > 0, iterations=1) == 0] = 0
    kw = {"max_distance": 3.0, "min_size": 20, "min_contact": 3}
    whole = find_decision_points(seg, **kw).as_dict()
    assert len(whole) > 10
    assert find_decision_points(seg, block_size=block, **kw).as_dict() == whole


def test_anisotropic_voxels_stay_block_independent():
    image, labels = make_em_volume((24, 30, 30), seed=2)
    seg = labels.copy()
    seg[image < np.percentile(image, 30)] = 0
    kw = {"voxel_size": (2.0, 1.0, 1.0), "max_distance": 4.0}
    assert find_decision_points(seg, block_size=(8, 11, 30), **kw).as_dict() == find_decision_points(seg, **kw).as_dict()
