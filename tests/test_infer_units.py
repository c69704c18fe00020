"""Inference units on hand-made maps and a hand-wired network: movement, seeds, canvas rules,
executor batching, outputs, consensus, resume. Fast; the FIB-25 parity tests are in
test_infer_fib25.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from neuroflood.config import ModelConfig
from neuroflood.errors import CheckpointError, ConfigError, DataError, VolumeError
from neuroflood.infer import (
    BatchedExecutor,
    Canvas,
    FaceMaxMovementPolicy,
    InferenceOptions,
    InferenceRequest,
    LocalExecutor,
    MovementRestrictor,
    clean_up,
    dequantize_probability,
    get_scored_move_offsets,
    make_seed_policy,
    quantize_probability,
    segment_many,
    segment_subvolume,
    split_segmentation_by_intersection,
)
from neuroflood.infer.config import logit
from neuroflood.infer.storage import check_output, read_output, write_output
from neuroflood.model import build_model

# -- a hand-wired network and image -------------------------------------------------------------


def bright_model(fov: int = 9, delta: int = 2) -> torch.nn.Module:
    """A 1-level convstack whose update is ``10 * relu(image) - 3`` with image = raw / 255.

    Bright voxels (raw 255) rise to p > 0.9 in one visit, dark ones fall: it floods exactly
    the bright connected regions the FOV can reach, quickly and deterministically.
    """
    cfg = ModelConfig(depth=1, features=1, fov_size=(fov,) * 3, deltas=(delta,) * 3, image_mean=0.0, image_stddev=255.0)
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        for conv in model.layers.values():
            conv.weight.zero_()
            conv.bias.zero_()
        model.layers["conv0_a"].weight[0, 0, 1, 1, 1] = 1.0  # image channel, centre tap
        model.layers["conv0_b"].weight[0, 0, 1, 1, 1] = 1.0
        model.layers["conv_lom"].weight[0, 0, 0, 0, 0] = 10.0
        model.layers["conv_lom"].bias[0] = -3.0
    return model.eval()


def bright_image(shape=(40, 40, 40)) -> np.ndarray:
    """Two bright objects on a dark background: a slab and a ball."""
    img = np.zeros(shape, np.uint8)
    img[6:20, 6:34, 6:16] = 255
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    img[(z - 28) ** 2 + (y - 26) ** 2 + (x - 27) ** 2 <= 7**2] = 255
    return img


SMALL = {"options": {"min_segment_size": 50}, "checkpoint_interval": 0}


class FixedClient:
    """An executor client that returns preset logits and records what it was given."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def predict(self, image, seed):
        self.seen.append((image.copy(), seed.copy()))
        return self.logits.copy()


# -- movement ----------------------------------------------------------------------------------


def test_face_max_offsets_threshold_ties_and_sideways_moves():
    p = np.full((9, 9, 9), -5.0, np.float32)  # centre 4, deltas 2: faces at 2 and 6
    p[2, 4, 4] = 3.0  # -z face centre
    p[6, 5, 3] = 2.5  # +z face, off-centre: slides sideways
    p[4, 6, 3] = 2.5  # +y face
    p[4, 6, 5] = 2.5  # +y face tie: the first in C order (x=3) wins
    p[4, 4, 6] = 0.1  # +x face below threshold
    moves = list(get_scored_move_offsets((2, 2, 2), p, threshold=1.0))
    assert moves == [(3.0, (-2, 0, 0)), (2.5, (2, 1, -1)), (2.5, (0, 2, -1))]


def test_face_max_offsets_shared_edge_voxel_offered_once_and_zero_delta_axis_skipped():
    p = np.full((9, 9, 9), -5.0, np.float32)
    p[2, 2, 4] = 3.0  # on both the -z and the -y face
    assert list(get_scored_move_offsets((2, 2, 2), p, 1.0)) == [(3.0, (-2, -2, 0))]
    p[4, 2, 4] = 2.0  # with no z moves the cube is the z = 4 plane: only the -y face sees it
    assert list(get_scored_move_offsets((0, 2, 2), p, 1.0)) == [(2.0, (0, -2, 0))]


def test_face_max_policy_fifo_quantized_done_set_and_validity_at_pop_time():
    valid = {"ok": True}
    pol = FaceMaxMovementPolicy((2, 2, 2), 1.0, lambda pos: valid["ok"] and pos != (20, 20, 24))
    pol.reset((20, 20, 20))
    assert pol.quantize_pos((20, 20, 20)) == (0, 0, 0)
    assert pol.quantize_pos((20, 19, 22)) == (0, 0, 1)  # cells are [-delta//2, delta - delta//2)
    assert pol.quantize_pos((18, 20, 20)) == (-1, 0, 0)
    p = np.full((9, 9, 9), -5.0, np.float32)
    p[2, 4, 4], p[6, 4, 4], p[4, 4, 6] = 2.0, 3.0, 4.0
    pol.update(p, (20, 20, 20))
    # Candidates appended best first: +x (invalid at pop), +z, -z.
    assert [c for _, c in pol.queue] == [(20, 20, 22), (22, 20, 20), (18, 20, 20)]
    assert next(pol) == (20, 20, 22)
    pol.update(p, (20, 20, 22))  # marks cell (0, 0, 1) done; appends 3 more
    assert next(pol) == (22, 20, 20)
    pol.queue.appendleft((9.0, (20, 20, 21)))  # in a done cell: skipped
    assert next(pol) == (18, 20, 20)
    valid["ok"] = False
    with pytest.raises(StopIteration):
        next(pol)
    state = pol.get_state()
    pol2 = FaceMaxMovementPolicy((2, 2, 2), 1.0, lambda pos: True)
    pol2.set_state(state)
    assert pol2.done == pol.done and list(pol2.queue) == list(pol.queue) and pol2.start_pos == (20, 20, 20)


def test_restrictor_masks():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = True
    seed_mask = np.zeros_like(mask)
    seed_mask[2, 2, 2] = True
    r = MovementRestrictor(mask=mask, seed_mask=seed_mask)
    assert not r.is_valid_pos((1, 1, 1)) and r.is_valid_pos((2, 2, 2))
    assert not r.is_valid_seed((2, 2, 2)) and r.is_valid_seed((1, 1, 1))
    shift = np.zeros((2, 5, 5, 5), np.float32)
    shift[1, 3, 3, 3] = 5.0
    r = MovementRestrictor(shift_mask=shift, shift_mask_fov=((-1, -1, -1), (3, 3, 3)), shift_mask_threshold=4)
    assert not r.is_valid_pos((2, 2, 2)) and r.is_valid_pos((1, 1, 1))


# -- seed policies ---------------------------------------------------------------------------------


class PolicyCanvas:
    """The canvas attributes seed policies read."""

    def __init__(self, image, margin=(2, 2, 2), mask=None, seed_mask=None):
        self.image = image.astype(np.float32)
        self.shape = image.shape
        self.margin = np.array(margin)
        self.segmentation = np.zeros(image.shape, np.int32)
        self.restrictor = MovementRestrictor(mask=mask, seed_mask=seed_mask)
        self.voxel_size = (1.0, 1.0, 1.0)


def _cells_image():
    """Dark membranes on a 12-voxel lattice: bright cubic cells."""
    img = np.full((30, 30, 30), 200.0, np.float32)
    for a in (0, 12, 24):
        img[a, :, :] = img[:, a, :] = img[:, :, a] = 20.0
    return img


def test_policy_peaks_finds_cell_centres_sorted_and_inside_margin():
    canvas = PolicyCanvas(_cells_image(), margin=(4, 4, 4))
    pol = make_seed_policy("PolicyPeaks", canvas)
    seeds = list(pol)
    assert seeds == sorted(seeds), "lexicographic z, y, x order"
    assert all(4 <= c < 26 for s in seeds for c in s)
    # Each full cell (interior 1..11, 13..23) holds one seed near its centre (6, 18).
    near = {tuple(min((6, 18), key=lambda c: abs(c - v)) for v in s) for s in seeds}
    assert {(6, 6, 6), (18, 18, 18), (6, 18, 6)} <= near
    assert pol.get_state()[1] == len(seeds)
    assert pol.get_state(previous=True)[1] == len(seeds) - 1


def test_policy_peaks_respects_exclusion_and_all_edges():
    img = _cells_image()
    mask = np.zeros(img.shape, bool)
    mask[:, :, :13] = True
    canvas = PolicyCanvas(img, mask=mask)
    seeds = list(make_seed_policy("PolicyPeaks", canvas))
    assert seeds and all(s[2] >= 13 for s in seeds)
    canvas = PolicyCanvas(img, mask=np.ones(img.shape, bool))
    assert list(make_seed_policy("PolicyPeaks", canvas)) == []


def test_simple_policies_on_hand_made_images():
    img = np.zeros((6, 6, 6), np.float32)
    img[3, 3, 3], img[2, 2, 4] = 9, 5
    canvas = PolicyCanvas(img, margin=(1, 1, 1))
    assert list(make_seed_policy("PolicyMax", canvas))[:2] == [(3, 3, 3), (2, 2, 4)]
    grid = list(make_seed_policy("PolicyGrid3d", PolicyCanvas(np.zeros((8, 8, 8)), margin=(0, 0, 0)), {"step": 4, "offsets": [0, 2]}))
    assert grid[:3] == [(0, 0, 0), (0, 0, 4), (0, 4, 0)] and grid[8] == (2, 2, 2) and len(grid) == 16
    # anchored elsewhere (blockwise: at the job's first voxel), the lattice shifts with it
    moved = list(make_seed_policy("PolicyGrid3d", PolicyCanvas(np.zeros((8, 8, 8)), margin=(0, 0, 0)), {"step": 4, "offsets": [0], "origin": [1, -2, 7]}))
    assert moved == [(z, y, x) for z in (1, 5) for y in (2, 6) for x in (3, 7)]
    flat = list(make_seed_policy("PolicyGrid2d", PolicyCanvas(np.zeros((2, 8, 8)), margin=(0, 0, 0)), {"step": 4, "offsets": [0], "origin": [5, 1, 2]}))
    assert flat == [(z, y, x) for z in (0, 1) for y in (1, 5) for x in (2, 6)]
    dense = list(make_seed_policy("PolicyDenseSeeds", canvas, {"threshold": 4}))
    assert dense == [(2, 2, 4), (3, 3, 3)]
    rev = list(make_seed_policy("ReverseCoords", canvas, {"policy_to_reverse": "PolicyDenseSeeds", "threshold": 4}))
    assert rev == [(3, 3, 3), (2, 2, 4)]
    seq = make_seed_policy("SequentialPolicies", canvas, {"policies": [["PolicyDenseSeeds", {"threshold": 6}], ["PolicyDenseSeeds", {"threshold": 4}]]})
    assert list(seq) == [(3, 3, 3), (2, 2, 4), (3, 3, 3)]
    inv = make_seed_policy("PolicyInvertOrigins", canvas, {"origins": {1: (2, 2, 2), 3: (3, 3, 3), 2: (4, 4, 4)}})
    assert list(inv) == [(3, 3, 3), (4, 4, 4), (2, 2, 2)]
    two_d = list(make_seed_policy("PolicyPeaks2d", PolicyCanvas(_cells_image()[4:7], margin=(0, 2, 2)), {"threshold_abs": 1}))
    assert {s[0] for s in two_d} == {0, 1, 2} and two_d == sorted(two_d)


def test_seed_policy_errors():
    canvas = PolicyCanvas(np.zeros((6, 6, 6)))
    with pytest.raises(ConfigError, match="unknown seed policy"):
        make_seed_policy("PolicyNope", canvas)
    with pytest.raises(ConfigError, match="no argument stepp"):
        make_seed_policy("PolicyGrid3d", canvas, {"stepp": 3})
    with pytest.raises(ConfigError, match=r"PolicyGrid2d origin \[4, 4\] must be 3 integers z, y, x"):
        make_seed_policy("PolicyGrid2d", canvas, {"origin": [4, 4]})


# -- canvas rules ------------------------------------------------------------------------------------


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
    from neuroflood.infer.segment import normalize_image

    return Canvas(
        normalize_image(model, image, req), LocalExecutor(model, "cpu"), req.options,
        fov_size=(9, 9, 9), deltas=(2, 2, 2), **kw,
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


def test_quantize_probability_round_trip():
    p = np.array([0.0, 1.0, 0.5, np.nan, 0.999], np.float32)
    q = quantize_probability(p)
    assert q.tolist() == [1, 255, 128, 0, 254]
    back = dequantize_probability(q)  # the reference's (q - 0.5) / 255: within one bin
    assert np.isnan(back[3]) and np.all(np.abs(back[[0, 1, 2, 4]] - p[[0, 1, 2, 4]]) <= 2.0 / 254)


# -- executor -----------------------------------------------------------------------------------------


def test_batched_executor_matches_local_and_batches_across_threads():
    model = bright_model()
    rng = np.random.default_rng(0)
    images = [rng.random((9, 9, 9), np.float32) for _ in range(12)]
    seeds = [rng.normal(size=(9, 9, 9)).astype(np.float32) for _ in range(12)]
    local = LocalExecutor(model, "cpu")
    expected = [local.predict(i, s) for i, s in zip(images, seeds)]
    out: dict[int, np.ndarray] = {}
    with BatchedExecutor(model, batch_size=4, device="cpu") as ex:
        clients = [ex.client() for _ in range(4)]

        def work(k):
            with clients[k] as client:
                for j in range(k, 12, 4):
                    out[j] = client.predict(images[j], seeds[j])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = ex.stats()
    for j in range(12):
        np.testing.assert_allclose(out[j], expected[j], atol=1e-6)
    assert stats["fovs"] == 12 and stats["batches"] == 3  # every batch full


def test_batched_executor_passes_errors_to_the_caller():
    model = bright_model()
    with BatchedExecutor(model, batch_size=2, device="cpu") as ex:
        with ex.client() as client:
            with pytest.raises(RuntimeError):
                client.predict(np.zeros((9, 9), np.float32), np.zeros((9, 9), np.float32))


def test_segment_many_shares_one_executor_and_matches_single_runs():
    model = bright_model()
    small = bright_image()[:, :24, :20]  # part of the slab only: few FOVs
    images = [small, small[::-1].copy(), small[:, ::-1].copy()]
    single = [segment_subvolume(model, im, SMALL) for im in images]
    many = segment_many(model, images, {**SMALL, "batch_size": 2})
    for a, b in zip(single, many):
        assert np.array_equal(a.segmentation, b.segmentation)
        assert a.fov_evaluations == b.fov_evaluations and a.fov_evaluations > 0


def test_device_and_precision_errors():
    model = bright_model()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        LocalExecutor(model, "cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            LocalExecutor(model, "cuda")
    # bf16 autocast runs on CPU and stays close to fp32.
    img = np.random.default_rng(1).random((9, 9, 9), np.float32)
    seed = np.zeros((9, 9, 9), np.float32)
    a = LocalExecutor(model, "cpu").predict(img, seed)
    b = LocalExecutor(model, "cpu", precision="bf16").predict(img, seed)
    assert np.abs(a - b).max() < 0.1


# -- request validation ---------------------------------------------------------------------------------


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


# -- outputs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bright_result():
    return segment_subvolume(bright_model(), bright_image(), SMALL)


@pytest.mark.parametrize("spec", ["seg.h5:segmentation", "seg.zarr/segmentation", "seg.npz"])
def test_write_read_output_and_request_conflicts(tmp_path, spec, bright_result):
    res = bright_result
    out = str(tmp_path / spec)
    meta = {"request": {"a": 1}, "summary": res.summary()}
    write_output(out, res.segmentation, origins=res.origins, overlaps=res.overlaps, qprob=res.qprob, meta=meta)
    back = read_output(out)
    assert back["segmentation"].dtype == np.uint8
    assert np.array_equal(back["segmentation"], res.segmentation)
    assert np.array_equal(back["qprob"], res.qprob)
    assert {k: (o.start_zyx, o.iterations) for k, o in back["origins"].items()} == {
        k: (o.start_zyx, o.iterations) for k, o in res.origins.items()
    }
    assert check_output(out, {"a": 1}) is True
    with pytest.raises(VolumeError, match=r"another request \(differs in: a\)"):
        check_output(out, {"a": 2})
    assert check_output(out, {"a": 2}, overwrite=True) is False


def test_output_spec_errors(tmp_path):
    with pytest.raises(VolumeError, match="names no dataset"):
        write_output(str(tmp_path / "x.h5"), np.zeros((2, 2, 2)), origins={})
    with pytest.raises(VolumeError, match="not an HDF5, zarr or npz"):
        write_output(str(tmp_path / "x.tif"), np.zeros((2, 2, 2)), origins={})


# -- consensus -------------------------------------------------------------------------------------------------


def test_split_segmentation_by_intersection_reference_semantics():
    a = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3], np.uint64)
    b = np.array([5, 5, 5, 6, 7, 7, 0, 7, 7, 8, 9], np.uint64)
    out = split_segmentation_by_intersection(a, b, min_size=1)
    # (1,5) largest keeps 1; (1,6) new; (2,7) keeps 2; (2,0) new; (0,*) -> 0;
    # (3,8) and (3,9) tie: the smaller b id keeps 3. New ids above max(a)=3 in (b, a) order.
    assert out.tolist() == [1, 1, 1, 5, 2, 2, 4, 0, 0, 3, 6]
    out = split_segmentation_by_intersection(a, b, min_size=2)
    assert out.tolist() == [1, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0]
    big = a.copy()
    big[big == 2] = 2**40  # ids beyond 32 bits are remapped and restored
    out = split_segmentation_by_intersection(big, b, min_size=1)
    assert out[4] == 2**40 and out[6] == 2**40 + 1


def test_clean_up_splits_components_and_removes_dust():
    seg = np.zeros((1, 1, 9), np.uint64)
    seg[0, 0, [0, 1, 2, 4, 6, 7]] = [3, 3, 3, 3, 5, 5]
    m = clean_up(seg, split_cc=True, min_size=2)
    kept = sorted(set(seg.ravel().tolist()) - {0})
    assert len(kept) == 2 and seg[0, 0, 4] == 0
    assert {m[k] for k in kept} == {3, 5}


# -- resume ----------------------------------------------------------------------------------------------------


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
