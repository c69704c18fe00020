"""Blockwise segmentation: block grid, overlap rule, union-find, and stitching without seams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroflood.bbox import BoundingBox
from neuroflood.config import ModelConfig
from neuroflood.distributed import DistInfo
from neuroflood.errors import ConfigError, DataError, VolumeError
from neuroflood.infer.blocks import BlockGrid
from neuroflood.infer.blockwise import BlockFailures, run_blockwise_job
from neuroflood.infer.handover import handover_seeds, merge_extension
from neuroflood.infer.jobfiles import JobPaths
from neuroflood.infer.reconcile import (
    OverlapRule,
    apply_mapping,
    build_mapping,
    confirmed_pairs,
    encode,
    handover_pairs,
    inblock_pairs,
    overlap_pairs,
)
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
        for c0, c1, b0, b1, o, lo, hi in zip(b.core.start, b.core.stop, b.box.start, b.box.stop, grid.overlap, bbox.start, bbox.stop):
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


def test_confirmed_pairs_need_the_other_side_to_touch_unless_unowned():
    agreeing = np.array([[1, 5], [2, 7], [9, 3], [4, 8]], np.uint64)
    touching = np.array([[5, 1], [3, 9], [3, 9], [7, 6]], np.uint64)
    core_ids = np.array([1, 2, 3, 5, 7, 8, 9], np.uint64)  # 4 lies only in its block's margins
    # (1,5): 5 touches 1; (2,7): 7 touches 6, not 2; (9,3): 3 touches 9; (4,8): 4 is unowned
    assert confirmed_pairs(agreeing, touching, core_ids).tolist() == [[1, 5], [3, 9], [4, 8]]
    assert confirmed_pairs(np.zeros((0, 2), np.uint64), touching, core_ids).shape == (0, 2)


def test_handover_seeds_go_where_a_neighbour_reaches_into_empty_core():
    """Two blocks along x (cores x < 16 and x >= 16, boxes overlapping by 4 on each side)."""
    grid = BlockGrid(BoundingBox.from_shape((16, 16, 32)), (16, 16, 24), (8, 8, 8))
    a, b = grid[0], grid[1]
    assert (a.box.stop[2], b.box.start[2], b.core.start[2]) == (20, 12, 16)
    seg = {0: np.zeros(a.box.size, np.uint32), 1: np.zeros(b.box.size, np.uint32)}
    seg[0][2:14, 2:14, 8:] = 7  # A's object 7 reaches x = 19, 4 voxels into B's core
    seg[0][2:4, 2:4, 4:] = 3  # A's object 3: 2 x 2 x 4 = 16 voxels in B's core, a sliver
    seg[1][8:14, 2:14, 4:] = 5  # B flooded the upper z half of 7's continuation itself (x >= 16)
    seeds, sources = handover_seeds(grid, b, seg.__getitem__, min_voxels=20)
    # one piece of 7 where B is empty (z 2..7, minus A's sliver 3), big enough: its seed lies
    # deep in 7 and away from B's 5, inside B's core; 3's 16 voxels are too few
    assert sources.tolist() == [[0, 7]]
    ((z, y, x),) = seeds.tolist()
    assert 16 <= x < 20 and seg[1][z, y, x - 12] == 0 and seg[0][z, y, x] == 7 and z <= 6
    assert handover_seeds(grid, a, seg.__getitem__, min_voxels=20)[0].shape == (0, 3)  # A's core is covered
    # a seed box that leaves out where 7's piece lies (z < 8): no seed
    assert handover_seeds(grid, b, seg.__getitem__, 20, BoundingBox((8, 0, 0), (8, 16, 32)))[0].shape == (0, 3)
    assert handover_seeds(grid, b, seg.__getitem__, min_voxels=10)[1].tolist() == [[0, 7], [0, 3]]  # by size


def test_merge_extension_keeps_the_old_ids_and_numbers_new_objects_after_them():
    old = np.array([0, 4, 4, 9, 0, 0])
    canvas = np.array([3, 1, 1, 2, 4, 3])  # canvas ids: 1, 2 are the old 4, 9; 3, 4 are new
    assert merge_extension(old, canvas, {1: 4, 2: 9}).tolist() == [10, 4, 4, 9, 11, 10]
    with pytest.raises(AssertionError, match="changed the block's existing objects"):
        merge_extension(old, np.array([3, 1, 2, 2, 4, 3]), {1: 4, 2: 9})


def test_handover_objects_join_their_source_when_the_other_side_touches_it():
    rule = OverlapRule(min_overlap_voxels=50)
    touching = np.array([[10, 1], [11, 2], [5, 3], [12, 4]], np.uint64)  # (own, neighbour) in own's margin
    shared = np.array([60, 49, 80, 70])
    handed = np.array([[10, 1], [11, 2], [13, 3], [12, 9]], np.uint64)  # (new object, source object)
    # 10 touches its source 1 on 60 voxels; 11 touches 2 on only 49; 13 never touches 3 but
    # its fill ran over 5, which does (80); 12's source 9 is touched by nobody
    ran_over = np.array([[13, 5]], np.uint64)
    assert handover_pairs(handed, touching, shared, rule, ran_over).tolist() == [[10, 1], [13, 3]]
    assert handover_pairs(handed, touching, shared, rule).tolist() == [[10, 1]]
    # in the block: (new, other, covered, |new|, |other|): 60 of min(100, 400) -> join; 60 of
    # min(200, 400) < 0.5 -> no; 40 voxels < 50 -> no
    overlaps = [[7, 3, 60, 100, 400], [8, 3, 60, 200, 400], [9, 4, 40, 50, 60]]
    assert inblock_pairs(2, overlaps, rule).tolist() == encode(2, np.array([[7, 3]])).tolist()


def test_block_peaks_are_the_one_subvolume_peaks_inside_the_canvas():
    """PolicyPeaks in a block: computed beyond the canvas, with the whole box's noise."""
    from neuroflood.infer.block_segmenter import FFNBlockSegmenter
    from neuroflood.infer.config import InferenceRequest
    from neuroflood.infer.movement import MovementRestrictor
    from neuroflood.infer.seeds import PEAKS_CONTEXT, ImageView, PolicyPeaks, position_noise, subvolume_noise
    from neuroflood.synthetic import make_em_volume

    class Model:
        config = ModelConfig(depth=1, features=4, fov_size=(9, 9, 9), deltas=(2, 2, 2))

    image, _ = make_em_volume((40, 40, 200), seed=1)
    job = BoundingBox.from_shape(image.shape)
    block = BoundingBox((0, 0, 80), (40, 40, 40))
    seg = FFNBlockSegmenter(Model(), InferenceRequest(), job_box=job)
    assert seg.context == (4 + PEAKS_CONTEXT,) * 3
    read = block.grow(seg.context).clip(image.shape)
    assert read.size[2] < image.shape[2]  # the block does not see the whole volume
    box, corner = seg.canvas_box(image[read.to_slices()], block.relative_to(read.start), read.start)
    policy = seg.block_policy(image[read.to_slices()], read.start, box)
    assert policy.cls.__name__ == "PolicyInvertOrigins" and policy.args["corner"] == list(corner)
    origins = policy.args["origins"]
    got = [origins[k] for k in sorted(origins, reverse=True)]  # the order the canvas tries them
    norm = (image.astype(np.float32) - 128) / 33  # the model's default statistics
    whole = [tuple(int(v) for v in p) for p in PolicyPeaks(ImageView(norm, MovementRestrictor(), (1.0, 1.0, 1.0), (4, 4, 4)))]
    canvas = BoundingBox(corner, box.size)
    want = [p for p in whole if canvas.contains(BoundingBox(p, (1, 1, 1)))]
    assert len(want) > 10 and got == want
    # the noise: the whole box's RandomState(42) stream, drawn from the box's position on
    sub = BoundingBox((3, 5, 7), (4, 6, 8))
    assert np.array_equal(
        subvolume_noise((10, 12, 14), sub.start, sub.size), np.random.RandomState(42).rand(10, 12, 14)[sub.to_slices()] * 1e-4
    )
    # ... and above the size limit, a hash of the position: the same in every crop
    assert np.array_equal(position_noise((2, 3, 4), (5, 5, 5))[1:, 2:, 3:], position_noise((3, 5, 7), (4, 3, 2)))


class GroundTruthSegmenter:
    """Connected components of the ground truth inside the block: a perfect segmenter."""

    context = (2, 2, 2)

    def __init__(self, labels: np.ndarray, fail_at: tuple | None = None):
        self.labels = labels
        self.fail_at = fail_at
        self.calls: list = []

    def __call__(self, image, block, corner):
        import cc3d

        start = tuple(int(v) for v in image[0, 0, 0:3])  # the test image encodes its origin
        assert tuple(corner) == start  # which is what the segmenter is told
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
    res = run_blockwise_job(
        out,
        image,
        BoundingBox.from_shape(labels.shape),
        (24, 24, 24),
        (8, 8, 8),
        seg,
        {"model": "gt"},
        DistInfo(),
        OverlapRule(min_overlap_voxels=1, min_overlap_fraction=0.5),
        progress=False,
    )
    assert res.blocks == 27 and len(res.blocks_run) == 27
    stitched = open_volume(out)[...]
    # one-to-one correspondence between stitched ids and ground-truth objects
    pairs = np.unique(np.stack([stitched.ravel(), labels.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(pairs[0]) == len(np.unique(pairs[1]))
    assert stitched.min() >= 1 and stitched.max() == len(np.unique(stitched))
    # rerun: everything is done, nothing is recomputed
    seg.calls.clear()
    res2 = run_blockwise_job(
        out,
        image,
        BoundingBox.from_shape(labels.shape),
        (24, 24, 24),
        (8, 8, 8),
        seg,
        {"model": "gt"},
        DistInfo(),
        OverlapRule(min_overlap_voxels=1, min_overlap_fraction=0.5),
        progress=False,
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
        run_blockwise_job(out, *args, bad, {"m": 1}, DistInfo(), progress=False)
    paths = JobPaths.from_spec(out)
    assert json.loads(paths.failed(4).read_text())["box"] == "20,0,0:48,28,28"
    assert not (tmp_path / "seg.zarr" / "seg").exists()  # no half-written output
    good = GroundTruthSegmenter(labels)
    run_blockwise_job(out, *args, good, {"m": 1}, DistInfo(), progress=False)
    assert good.calls == ["20,0,0:48,28,28"]  # only the failed block was redone
    assert not paths.failed(4).exists()


def test_different_request_in_same_output_is_refused(tmp_path, synth_small):
    _, labels = synth_small
    image = OriginVolume("origin", np.zeros(labels.shape, np.uint8))
    out = f"{tmp_path}/seg.zarr/seg"
    args = (image, BoundingBox.from_shape(labels.shape), (32, 32, 32), (8, 8, 8))
    run_blockwise_job(out, *args, GroundTruthSegmenter(labels), {"model": "a"}, DistInfo(), progress=False)
    with pytest.raises(DataError, match="different request \\(differs in: model\\)"):
        run_blockwise_job(out, *args, GroundTruthSegmenter(labels), {"model": "b"}, DistInfo(), progress=False)
    # another overlap (e.g. a job begun under the old default): the refusal says how to resume it
    other = (*args[:3], (4, 4, 4))
    with pytest.raises(DataError, match=r"differs in: overlap; it was made with --overlap 8,8,8\)"):
        run_blockwise_job(out, *other, GroundTruthSegmenter(labels), {"model": "a"}, DistInfo(), progress=False)
    with pytest.raises(VolumeError, match="DIR.zarr/NAME"):
        JobPaths.from_spec(f"{tmp_path}/seg.h5:seg")


class LeakySegmenter(GroundTruthSegmenter):
    """A perfect segmenter, except that the block at the origin merges every object it sees."""

    def __call__(self, image, block, corner):
        seg, counters = super().__call__(image, block, corner)
        if self.calls[-1].startswith("0,0,0:"):
            seg[seg > 0] = 1
        return seg, counters


@pytest.mark.parametrize("both_sides", [True, False])
def test_a_leak_in_one_blocks_margin_merges_nothing_when_both_sides_must_agree(tmp_path, both_sides):
    # Along x: neuron 1 on x < 9, a membrane at x = 9, neuron 2 on x >= 10. Blocks of 16 with
    # overlap 8 (stride 8): block 0 owns x < 8 and sees x < 12, where it merges the two
    # neurons. In its margin its merged object agrees with both pieces of block 1; in block 1's
    # margin (x in 4..7, block 0's core) only neuron 1's piece meets it.
    labels = np.zeros((4, 4, 24), np.int64)
    labels[..., :9] = 1
    labels[..., 10:] = 2
    image = OriginVolume("origin", np.zeros(labels.shape, np.uint8))
    seg = LeakySegmenter(labels)
    out = f"{tmp_path}/seg.zarr/seg"
    run_blockwise_job(
        out,
        image,
        BoundingBox.from_shape(labels.shape),
        (4, 4, 16),
        (0, 0, 8),
        seg,
        {"model": "leaky"},
        DistInfo(),
        OverlapRule(min_overlap_voxels=1, min_overlap_fraction=0.5, both_sides=both_sides),
        progress=False,
    )
    assert any(c.startswith("0,0,0:") for c in seg.calls)  # the leaky block ran
    stitched = open_volume(out)[...]
    neuron1, neuron2 = np.unique(stitched[labels == 1]), np.unique(stitched[labels == 2])
    assert len(neuron1) == 1 and len(neuron2) == 1  # each neuron is one object, across the faces
    assert (neuron1[0] != neuron2[0]) == both_sides  # one side's word merges them


def test_block_grid_seeds_are_anchored_at_the_job_not_the_block():
    from neuroflood.infer.block_segmenter import FFNBlockSegmenter
    from neuroflood.infer.config import InferenceRequest
    from neuroflood.infer.seeds import resolve_seed_policy

    class Model(torch.nn.Module):
        config = ModelConfig(depth=1, features=4, fov_size=(9, 9, 9), deltas=(2, 2, 2))

    job, canvas = BoundingBox((10, 0, 5), (100, 100, 100)), BoundingBox((30, 20, 5), (20, 20, 20))
    grid = resolve_seed_policy("PolicyGrid3d")
    assert grid.in_job(job, canvas).args["origin"] == [-20, -20, 0]
    assert grid.args == {}  # the job's policy is not changed
    mine = resolve_seed_policy("PolicyGrid3d", {"origin": [1, 2, 3]})
    assert mine.in_job(job, canvas).args["origin"] == [1, 2, 3]
    other = resolve_seed_policy("PolicyMax")
    assert other.in_job(job, canvas) is other
    # without a job box, the lattice is anchored at the volume's first voxel
    assert grid.in_job(None, canvas).args["origin"] == [-30, -20, -5]
    # a wrapped grid is placed in the job too
    reverse = resolve_seed_policy("ReverseCoords", {"policy_to_reverse": "PolicyGrid2d", "step": 8})
    placed = reverse.in_job(job, canvas).args["policy_to_reverse"]
    assert placed.args == {"step": 8, "origin": [-20, -20, 0]}
    sequence = resolve_seed_policy("SequentialPolicies", {"policies": [["PolicyMax", {}], ["PolicyGrid3d", {}]]})
    inner = sequence.in_job(job, canvas).args["policies"]
    assert inner[0] is sequence.args["policies"][0] and inner[1].args["origin"] == [-20, -20, 0]
    # the segmenter resolves the request's policy once; PolicyPeaks asks for image beyond the canvas
    seg = FFNBlockSegmenter(Model(), InferenceRequest.model_validate({"seed_policy": "PolicyGrid3d"}), job_box=job)
    assert seg.seed_policy == grid and seg.context == (4, 4, 4)
    wrapped = InferenceRequest.model_validate(
        {"seed_policy": "SequentialPolicies", "seed_policy_args": {"policies": [["PolicyPeaks", {}]]}}
    )
    assert FFNBlockSegmenter(Model(), wrapped).context == FFNBlockSegmenter(Model(), InferenceRequest()).context != (4, 4, 4)
