"""Canvas rules with a preset client and the hand-wired network: padding and freezing of the
object mask, flooding, and the rejection of weak, small and close seeds."""

from __future__ import annotations

import numpy as np

from infer_helpers import SMALL, FixedClient, bright_image, bright_model
from neuroflood.infer.canvas import Canvas
from neuroflood.infer.config import InferenceOptions, InferenceRequest
from neuroflood.infer.executor import LocalExecutor
from neuroflood.probability import logit


def test_update_at_pads_nan_and_disco_freezes_background():
    img = np.zeros((9, 9, 9), np.float32)
    new = np.full((9, 9, 9), 3.0, np.float32)
    client = FixedClient(new)
    c = Canvas(img, client, InferenceOptions(), fov_size=(9, 9, 9), deltas=(2, 2, 2))
    c.seed[4, 4, 4] = 2.0
    c.seed[0, 0, 0] = -1.0  # predicted background: frozen
    c.seed[0, 0, 1] = 0.5  # p > 0.5: free to rise
    out = c.update_at((4, 4, 4))
    fed = client.seen[0][1]
    assert fed[1, 1, 1] == np.float32(logit(0.05)) and fed[4, 4, 4] == 2.0
    assert c.seed[0, 0, 0] == -1.0 and c.seed[0, 0, 1] == 3.0 and c.seed[5, 5, 5] == 3.0
    assert out[0, 0, 0] == -1.0
    # Off (negative threshold): overwrite everything.
    c2 = Canvas(img, FixedClient(new), InferenceOptions(disco_seed_threshold=-1), fov_size=(9, 9, 9), deltas=(2, 2, 2))
    c2.seed[0, 0, 0] = -1.0
    c2.update_at((4, 4, 4))
    assert c2.seed[0, 0, 0] == 3.0
    # Freezing needs the fraction at >= move_threshold to exceed disco_seed_threshold.
    c3 = Canvas(img, FixedClient(new), InferenceOptions(disco_seed_threshold=1.0), fov_size=(9, 9, 9), deltas=(2, 2, 2))
    c3.seed[0, 0, 0] = -1.0
    c3.update_at((4, 4, 4))
    assert c3.seed[0, 0, 0] == 3.0


def _bright_canvas(image, **kw):
    model = bright_model()
    req = InferenceRequest.build(SMALL, kw.pop("request", None))
    from neuroflood.infer.inputs import normalize_image

    return Canvas(
        normalize_image(model, image, req),
        LocalExecutor(model, "cpu"),
        req.options,
        fov_size=(9, 9, 9),
        deltas=(2, 2, 2),
        **kw,
    )


def test_canvas_floods_bright_objects_and_rejects_weak_small_and_close_seeds():
    img = bright_image()
    c = _bright_canvas(img)
    c.segment_all("PolicyPeaks")
    seg = c.segmentation
    assert len(c.origins) == 2
    slab, ball = seg[12, 20, 10], seg[28, 26, 27]
    assert slab > 0 and ball > 0 and slab != ball
    inner = img[4:36, 4:36, 4:36] == 255  # the part the FOV centre can reach (margin 4)
    assert np.mean(seg[4:36, 4:36, 4:36][inner] > 0) > 0.9  # face-max moves miss a few corners
    assert not np.any(seg[img == 0] > 0)
    assert np.all(seg[seg < 0] == -1)
    # A seed in the dark background does not stay above the move threshold.
    c.segment_all("PolicyInvertOrigins", {"origins": {1: (30, 8, 8)}})
    assert c.counters["rejected_weak_seed"] == 1 and c.segmentation[30, 8, 8] == -1
    # First come, first served: a second object over the same voxels cannot take them.
    c.segmentation[c.segmentation < 0] = 0
    before = c.segmentation.copy()
    c.segment_all("PolicyDenseSeeds", {"threshold": 0.5})
    assert np.array_equal(c.segmentation[before > 0], before[before > 0])


def test_min_boundary_dist_and_min_size_mark_failed_seeds():
    img = bright_image()
    c = _bright_canvas(img, request={"options": {"min_segment_size": 10**6}})
    c.segment_all("PolicyGrid3d", {"step": 12, "offsets": [10]})
    assert not c.origins and c.counters["rejected_too_small"] > 0
    assert c.segmentation[10, 10, 10] == -1  # a bright seed whose object was too small
    c = _bright_canvas(img, request={"options": {"min_boundary_dist": 3}})
    c.segmentation[12, 20, 12] = 7  # pretend segment 3 voxels from the seed below
    c.segment_all("PolicyInvertOrigins", {"origins": {1: (12, 20, 9)}})
    assert c.counters["rejected_boundary_dist"] == 1 and c.segmentation[12, 20, 9] == -1
