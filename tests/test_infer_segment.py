"""Segmenting a subvolume: several canvases sharing an executor, request validation, masks
from the request, and resuming an interrupted run from its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from infer_helpers import SMALL, bright_image, bright_model
from neuroflood.errors import CheckpointError, ConfigError, DataError
from neuroflood.infer.config import InferenceRequest
from neuroflood.infer.segment import segment_many, segment_subvolume


def test_segment_many_shares_one_executor_and_matches_single_runs():
    model = bright_model()
    small = bright_image()[:, :24, :20]  # part of the slab only: few FOVs
    images = [small, small[::-1].copy(), small[:, ::-1].copy()]
    single = [segment_subvolume(model, im, SMALL) for im in images]
    many = segment_many(model, images, {**SMALL, "batch_size": 2})
    for a, b in zip(single, many):
        assert np.array_equal(a.segmentation, b.segmentation)
        assert a.fov_evaluations == b.fov_evaluations and a.fov_evaluations > 0


def test_request_validation_errors():
    model = bright_model()
    with pytest.raises(ConfigError, match="move_threshold"):
        InferenceRequest.build({"options": {"move_threshold": 1.0}})
    with pytest.raises(ConfigError, match="segment_threshold"):
        InferenceRequest.build({"options": {"segment_threshold": 0}})
    with pytest.raises(ConfigError, match="unknown option"):
        InferenceRequest.build({"options": {"move_treshold": 0.5}})
    with pytest.raises(DataError, match="smaller than the network's field of view"):
        segment_subvolume(model, np.zeros((8, 20, 20), np.uint8), SMALL)
    with pytest.raises(ConfigError, match="do not fit the model's FOV"):
        segment_subvolume(model, np.zeros((20, 20, 20), np.uint8), {"movement_policy_args": {"deltas": [5, 5, 5]}})
    with pytest.raises(ConfigError, match="exactly one source"):
        InferenceRequest.build({"masks": [{"min_value": 1}]})


def test_masks_from_config_restrict_movement_and_seeds():
    model = bright_model()
    img = bright_image()
    # Expression mask over global coordinates: nothing at x >= 20 may be visited.
    res = segment_subvolume(model, img, {**SMALL, "masks": [{"expression": "x >= 20"}]})
    assert res.segments == 1 and not np.any(res.segmentation[:, :, 24:] > 0)
    # Image mask: bright voxels may not seed; nothing is segmented.
    res = segment_subvolume(model, img, {**SMALL, "seed_masks": [{"image": True, "min_value": 128}]})
    assert res.segments == 0
    # Everything masked: nothing to do, no FOV evaluated.
    res = segment_subvolume(model, img, {**SMALL, "masks": [{"image": True, "max_value": 255}]})
    assert res.segments == 0 and res.fov_evaluations == 0


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_identical_result(tmp_path):
    model = bright_model()
    img = bright_image()
    req = {**SMALL, "checkpoint_interval": 1e-9}
    full = segment_subvolume(model, img, SMALL)
    ckpt = tmp_path / "run.cpoint.npz"

    def stop_mid_object(event, canvas):
        if event == "fov" and canvas.counters["fov_evaluations"] == 40 and len(canvas.origins) == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        segment_subvolume(model, img, req, checkpoint_path=ckpt, callback=stop_mid_object)
    assert ckpt.exists()
    state = np.load(ckpt)
    assert int(state["partial_segment_iters"]) > 0, "the checkpoint holds an object in flight"
    resumed = segment_subvolume(model, img, req, checkpoint_path=ckpt)
    assert not ckpt.exists(), "the checkpoint is deleted when the subvolume is done"
    assert np.array_equal(resumed.segmentation, full.segmentation)
    assert np.array_equal(resumed.qprob, full.qprob)
    assert {k: (o.start_zyx, o.iterations) for k, o in resumed.origins.items()} == {
        k: (o.start_zyx, o.iterations) for k, o in full.origins.items()
    }
    assert resumed.counters == full.counters


def test_checkpoint_of_another_request_is_refused(tmp_path):
    model = bright_model()
    img = bright_image()
    ckpt = tmp_path / "run.cpoint.npz"

    def stop(event, canvas):
        raise Interrupt

    with pytest.raises(Interrupt):
        segment_subvolume(model, img, {**SMALL, "checkpoint_interval": 1e-9}, checkpoint_path=ckpt, callback=stop)
    other = {"options": {"min_segment_size": 60}, "checkpoint_interval": 1e-9}
    with pytest.raises(CheckpointError, match=r"differs in: options.min_segment_size"):
        segment_subvolume(model, img, other, checkpoint_path=ckpt)
