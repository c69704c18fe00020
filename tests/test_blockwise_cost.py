"""What a blockwise job costs: FOVs by where they were centred, image voxels read, block order."""

from __future__ import annotations

import json

import numpy as np

from neuroflood.bbox import BoundingBox
from neuroflood.distributed import DistInfo
from neuroflood.infer.block_segmenter import FFNBlockSegmenter, counters_of, fov_recorder
from neuroflood.infer.blocks import Block, BlockGrid, fov_categories
from neuroflood.infer.blockwise import blockwise_summary, run_blockwise_job
from neuroflood.infer.config import InferenceRequest
from neuroflood.infer.jobfiles import JobPaths
from neuroflood.infer.segment import segment_subvolume
from neuroflood.volume import ArrayVolume
from test_blockwise_seam import REQUEST, OracleFFN, coded_image


def test_fov_categories_split_centres_by_core_margin_and_outside():
    block = Block(0, (0, 0, 0), BoundingBox((0, 0, 0), (10, 10, 10)), BoundingBox((0, 0, 0), (8, 8, 8)))
    centres = [(1, 1, 1), (7, 7, 7), (8, 1, 1), (9, 9, 9), (10, 1, 1), (-1, 0, 0)]
    assert fov_categories(np.array(centres), block) == {"fov_core": 2, "fov_margin": 2, "fov_context": 2}
    assert fov_categories(np.zeros((0, 3)), block) == {"fov_core": 0, "fov_margin": 0, "fov_context": 0}


def test_recording_fov_centres_changes_nothing_and_misses_none():
    image, _ = coded_image(3, (24, 32, 32))
    plain = segment_subvolume(OracleFFN(), image, REQUEST)
    centres: list = []
    recorded = segment_subvolume(OracleFFN(), image, REQUEST, callback=fov_recorder(centres))
    assert np.array_equal(plain.segmentation, recorded.segmentation) and plain.counters == recorded.counters
    assert len(centres) == recorded.fov_evaluations > 0
    # the first FOV of every accepted object is at its seed
    assert {o.start_zyx for o in recorded.origins.values()} <= {tuple(map(int, c)) for c in centres}
    counters = counters_of(recorded)
    assert 0 <= counters["fov_rejected"] < counters["fov_evaluations"]
    assert counters["fov_rejected"] == counters["fov_evaluations"] - sum(o.iterations for o in recorded.origins.values())


def test_job_records_where_fovs_went_and_what_it_read(tmp_path):
    """Every FOV is counted once, centred inside its block's box; reads are the block's box
    with the context the segmenter asks for, and hand-over rounds read no seed-policy context."""
    image, _ = coded_image(4, (32, 40, 40))
    bbox = BoundingBox.from_shape(image.shape)
    request = InferenceRequest.model_validate({**REQUEST, "seed_policy": "PolicyPeaks"})
    segmenter = FFNBlockSegmenter(OracleFFN(), request, job_box=bbox)
    assert segmenter.context != segmenter.fov_context  # PolicyPeaks looks beyond the canvas
    out = f"{tmp_path}/seg.zarr/seg"
    result = run_blockwise_job(
        out, ArrayVolume("coded", image), bbox, (24, 28, 28), (8, 8, 8), segmenter, {"model": "oracle"}, DistInfo(), progress=False
    )
    paths = JobPaths.from_spec(out)
    grid = BlockGrid(bbox, (24, 28, 28), (8, 8, 8))
    blocks = [json.loads(p.read_text()) for p in paths.blocks.glob("*.done")]
    handover = paths.handover_records()
    assert handover, "this volume needs hand-over rounds"
    for records, context in ((blocks, segmenter.context), (handover, segmenter.fov_context)):
        for d in records:
            c, block = d["counters"], grid[d["block"]]
            assert c["fov_core"] + c["fov_margin"] == c["fov_evaluations"] and c["fov_context"] == 0
            assert c["voxels_read"] == block.box.grow(context).clip(image.shape).volume
            assert 0 <= c["fov_outside_core"] <= c["fov_evaluations"] and 0 <= c["fov_rejected"] <= c["fov_evaluations"]
            assert d["read_seconds"] >= 0
    assert sum(d["counters"]["fov_margin"] for d in blocks) > 0  # margins are segmented twice
    summary = blockwise_summary(out, "coded", bbox, result)
    cost = summary["cost"]
    assert cost["blocks_fov_evaluations"] + cost["handover_fov_evaluations"] == summary["fov_evaluations"] == result.fov_evaluations
    assert cost["blocks_voxels_read"] == sum(d["counters"]["voxels_read"] for d in blocks)
    assert set(summary["phase_seconds"]) == {"blocks", "handover", "reconcile", "output"}


class OrderSegmenter:
    """Labels each block's box 1 and records the order the blocks came in."""

    context = (0, 0, 0)

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
        self.sizes.append(block.volume)
        return np.ones(block.size, np.uint32), {"fov_evaluations": 0}


def test_largest_blocks_are_claimed_first(tmp_path):
    """A worker that takes the small last blocks last finishes with the others (largest first)."""
    shape = (50, 24, 40)  # 3 x 1 x 2 blocks: the last along z is thin
    segmenter = OrderSegmenter()
    run_blockwise_job(
        f"{tmp_path}/o.zarr/seg",
        ArrayVolume("zeros", np.zeros(shape, np.uint8)),
        BoundingBox.from_shape(shape),
        (24, 24, 24),
        (4, 4, 4),
        segmenter,
        {"model": "none"},
        DistInfo(),
        progress=False,
    )
    assert len(segmenter.sizes) == 6 and segmenter.sizes == sorted(segmenter.sizes, reverse=True)
    assert segmenter.sizes[0] > segmenter.sizes[-1]  # the grid's blocks differ in size


def test_one_block_over_a_crop_is_one_subvolume_over_it(tmp_path):
    """Blocks keep their FOVs (and reads) inside the job's box, as one subvolume over it does:
    a job of one block over a crop of a larger volume gives exactly the subvolume result."""
    from neuroflood.volume import open_volume

    image, _ = coded_image(5, (32, 40, 40))
    crop = BoundingBox((3, 5, 4), (24, 30, 32))
    request = REQUEST  # grid seeds, anchored at the job's first voxel
    one = segment_subvolume(OracleFFN(), image[crop.to_slices()], request).segmentation
    segmenter = FFNBlockSegmenter(OracleFFN(), InferenceRequest.model_validate(request), job_box=crop)
    out = f"{tmp_path}/crop.zarr/seg"
    run_blockwise_job(
        out, ArrayVolume("coded", image), crop, crop.size, (0, 0, 0), segmenter, {"model": "oracle"}, DistInfo(), progress=False
    )
    stitched = open_volume(out)[...]
    pairs = set(zip(stitched.ravel().tolist(), one.ravel().tolist()))
    assert one.max() > 3 and len(pairs) == len(np.unique(one)) == len(np.unique(stitched))  # the same objects, renumbered
    done = json.loads(next(JobPaths.from_spec(out).blocks.glob("*.done")).read_text())
    assert done["counters"]["voxels_read"] == crop.volume  # nothing beyond the crop
