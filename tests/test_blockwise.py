"""Blockwise segmentation: block grid, overlap rule, union-find, and stitching without seams."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroflood.bbox import BoundingBox
from neuroflood.distributed import DistInfo
from neuroflood.errors import ConfigError, DataError, VolumeError
from neuroflood.infer.blocks import BlockGrid
from neuroflood.infer.blockwise import BlockFailures, JobPaths, segment_blockwise
from neuroflood.infer.reconcile import OverlapRule, apply_mapping, build_mapping, encode, overlap_pairs
from neuroflood.volume import ArrayVolume, open_volume


def test_grid_cores_tile_the_box_and_blocks_overlap():
    bbox = BoundingBox((3, 0, 5), (130, 64, 50))
    grid = BlockGrid(bbox, (64, 40, 64), (16, 8, 16))
    assert grid.shape == (3, 2, 1) and grid.stride == (48, 32, 50)
    cover = np.zeros(bbox.size, np.int32)
    for b in grid:
        assert bbox.contains(b.box) and b.box.contains(b.core)
        cover[b.core.relative_to(bbox.start).to_slices()] += 1
        # every core voxel has half the overlap of block around it, unless at the box's edge
        for a, c0, c1, b0, b1, o, lo, hi in zip(range(3), b.core.start, b.core.stop, b.box.start, b.box.stop, grid.overlap, bbox.start, bbox.stop):
            assert b0 == max(lo, c0 - o // 2) and b1 == min(hi, c1 + o - o // 2)
    assert (cover == 1).all()  # cores tile the box exactly once
    # neighbours overlap by the requested amount
    below, above = grid[0], grid[grid.shape[1]]
    assert below.box.stop[0] - above.box.start[0] == 16
    assert below.core.stop[0] == above.core.start[0] == 3 + 48
    with pytest.raises(ConfigError, match="overlap"):
        BlockGrid(bbox, (32, 32, 32), (32, 0, 0))


def test_overlap_rule_and_union_find():
    own = encode(0, np.array([1, 1, 1, 1, 2, 2, 3, 0]))
    nb = encode(1, np.array([5, 5, 5, 6, 7, 7, 7, 7]))
    region = np.ones(8, bool)
    pairs = overlap_pairs(own, nb, region, OverlapRule(min_overlap_voxels=2, min_overlap_fraction=0.6))
    got = {(int(a) & 0xFFFFFFFF, int(b) & 0xFFFFFFFF) for a, b in pairs}
    # 1 meets 5 on 3 voxels (3/min(4,3) = 1) -> join; 2 meets 7 on 2 of 2 -> join;
    # 3 meets 7 on 1 voxel -> below min voxels; 1 meets 6 once -> no
    assert got == {(1, 5), (2, 7)}
    ids = np.concatenate([np.unique(own), np.unique(nb)])
    ids_sorted, new = build_mapping(ids, pairs)
    relabelled = apply_mapping(np.concatenate([own, nb]), ids_sorted, new)
    assert relabelled[0] == relabelled[8]  # 1 ~ 5
    assert relabelled[4] == relabelled[12]  # 2 ~ 7
    assert relabelled[6] != relabelled[4]  # 3 stays apart
    # 6 objects, 2 joins: 4 objects numbered 1..4
    assert sorted(np.unique(relabelled[relabelled > 0])) == [1, 2, 3, 4]


class GroundTruthSegmenter:
    """Connected components of the ground truth inside the block: a perfect segmenter."""

    context = (2, 2, 2)

    def __init__(self, labels: np.ndarray, fail_at: tuple | None = None):
        self.labels = labels
        self.fail_at = fail_at
        self.calls: list = []

    def __call__(self, image, block):
        import cc3d

        start = tuple(int(v) for v in image[0, 0, 0:3])  # the test image encodes its origin
        box_global = BoundingBox(tuple(s + b for s, b in zip(start, block.start)), block.size)
        self.calls.append(str(box_global))
        if self.fail_at is not None and box_global.start == self.fail_at:
            raise RuntimeError("simulated failure")
        gt = self.labels[box_global.to_slices()]
        return cc3d.connected_components(gt, connectivity=6).astype(np.uint32), {"fov_evaluations": 1}


class OriginVolume(ArrayVolume):
    """Reads whose first voxels encode the read origin, so a test segmenter knows where it is."""

    def _read(self, slices):
        data = np.zeros(tuple(s.stop - s.start for s in slices), np.int64)
        data[0, 0, 0:3] = [s.start for s in slices][:3] if data.shape[2] >= 3 else 0
        return data


def test_stitching_a_perfect_segmenter_recovers_the_ground_truth(tmp_path, synth_small):
    _, labels = synth_small
    image = OriginVolume("origin", np.zeros(labels.shape, np.uint8))
    seg = GroundTruthSegmenter(labels)
    out = f"{tmp_path}/seg.zarr/seg"
    res = segment_blockwise(
        out, image, BoundingBox.from_shape(labels.shape), (24, 24, 24), (8, 8, 8), seg, {"model": "gt"},
        DistInfo(), OverlapRule(min_overlap_voxels=1, min_overlap_fraction=0.5), progress=False,
    )
    assert res.blocks == 27 and len(res.blocks_run) == 27
    stitched = open_volume(out)[...]
    # one-to-one correspondence between stitched ids and ground-truth objects
    pairs = np.unique(np.stack([stitched.ravel(), labels.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(pairs[0]) == len(np.unique(pairs[1]))
    assert stitched.min() >= 1 and stitched.max() == len(np.unique(stitched))
    # rerun: everything is done, nothing is recomputed
    seg.calls.clear()
    res2 = segment_blockwise(
        out, image, BoundingBox.from_shape(labels.shape), (24, 24, 24), (8, 8, 8), seg, {"model": "gt"},
        DistInfo(), OverlapRule(min_overlap_voxels=1, min_overlap_fraction=0.5), progress=False,
    )
    assert seg.calls == [] and res2.blocks_skipped == 27
    np.testing.assert_array_equal(open_volume(out)[...], stitched)


def test_failed_block_is_reported_then_redone(tmp_path, synth_small):
    _, labels = synth_small
    image = OriginVolume("origin", np.zeros(labels.shape, np.uint8))
    out = f"{tmp_path}/seg.zarr/seg"
    args = (image, BoundingBox.from_shape(labels.shape), (32, 32, 32), (8, 8, 8))
    bad = GroundTruthSegmenter(labels, fail_at=(20, 0, 0))
    with pytest.raises(BlockFailures, match=r"1 of 8 blocks failed \(block 4 at 20,0,0:48,28,28: RuntimeError"):
        segment_blockwise(out, *args, bad, {"m": 1}, DistInfo(), progress=False)
    paths = JobPaths.from_spec(out)
    assert json.loads(paths.failed(4).read_text())["box"] == "20,0,0:48,28,28"
    assert not (tmp_path / "seg.zarr" / "seg").exists()  # no half-written output
    good = GroundTruthSegmenter(labels)
    segment_blockwise(out, *args, good, {"m": 1}, DistInfo(), progress=False)
    assert good.calls == ["20,0,0:48,28,28"]  # only the failed block was redone
    assert not paths.failed(4).exists()


def test_different_request_in_same_output_is_refused(tmp_path, synth_small):
    _, labels = synth_small
    image = OriginVolume("origin", np.zeros(labels.shape, np.uint8))
    out = f"{tmp_path}/seg.zarr/seg"
    args = (image, BoundingBox.from_shape(labels.shape), (32, 32, 32), (8, 8, 8))
    segment_blockwise(out, *args, GroundTruthSegmenter(labels), {"model": "a"}, DistInfo(), progress=False)
    with pytest.raises(DataError, match="different request \\(differs in: model\\)"):
        segment_blockwise(out, *args, GroundTruthSegmenter(labels), {"model": "b"}, DistInfo(), progress=False)
    with pytest.raises(VolumeError, match="DIR.zarr/NAME"):
        JobPaths.from_spec(f"{tmp_path}/seg.h5:seg")
