"""Parity with google/ffn on FIB-25: the published model segments training_sample2 as the
original code does, and a run resumed mid-object from its checkpoint ends identically."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from neuroflood.infer import segment_subvolume

# The reference settings (configs/inference_training_sample2.pbtxt), spelled out.
REFERENCE = {
    "options": {
        "init_activation": 0.95,
        "pad_value": 0.05,
        "move_threshold": 0.9,
        "min_boundary_dist": [1, 1, 1],
        "segment_threshold": 0.6,
        "min_segment_size": 1000,
    },
    "seed_policy": "PolicyPeaks",
    "image_mean": 128,
    "image_stddev": 33,
}
SNAPSHOT_AT_FOV = 35  # inside the fourth object (FOVs 28..42)


@pytest.fixture(scope="module")
def crop64(fib25_h5):
    with h5py.File(fib25_h5, "r") as f:
        return f["image"][:64, :64, :64]


@pytest.fixture(scope="module")
def reference_run(fib25_model, crop64, tmp_path_factory):
    """The 64³ crop at the origin, checkpointing at every step; a copy of the checkpoint
    taken mid-object stands in for a run killed there."""
    tmp = tmp_path_factory.mktemp("fib25")
    ckpt, snapshot = tmp / "run.cpoint.npz", tmp / "killed.cpoint.npz"

    def snap(event, canvas):
        if event == "fov" and canvas.counters["fov_evaluations"] == SNAPSHOT_AT_FOV:
            shutil.copy(ckpt, snapshot)  # the state saved after the previous FOV

    request = {**REFERENCE, "checkpoint_interval": 1e-9}
    result = segment_subvolume(fib25_model, crop64, request, checkpoint_path=ckpt, callback=snap)
    return result, request, snapshot


def test_fib25_64_crop_matches_the_reference(reference_run):
    result, _, _ = reference_run
    assert result.segments == 4
    assert result.fov_evaluations == 42
    assert round(100 * result.unsegmented_fraction, 1) == 50.6
    assert sorted(result.origins) == [1, 2, 3, 4]
    assert result.segmentation.dtype == np.uint8
    # Accepted segments carry quantized probabilities >= segment_threshold (0.6 -> bin 153).
    assert result.qprob[result.segmentation > 0].min() >= 153
    assert not result.qprob[result.segmentation == 0].any()


def test_fib25_run_killed_mid_object_resumes_identically(reference_run, fib25_model, crop64):
    result, request, snapshot = reference_run
    state = np.load(snapshot)
    assert int(state["partial_segment_iters"]) > 0 and len(state["origin_ids"]) == 3, "killed inside object 4"
    resumed = segment_subvolume(fib25_model, crop64, request, checkpoint_path=snapshot)
    assert np.array_equal(resumed.segmentation, result.segmentation)
    assert np.array_equal(resumed.qprob, result.qprob)
    assert resumed.counters == result.counters
    assert {k: (o.start_zyx, o.iterations) for k, o in resumed.origins.items()} == {
        k: (o.start_zyx, o.iterations) for k, o in result.origins.items()
    }
    assert not snapshot.exists()
