"""FFN example generation: policies, canvas write-back, augmentation, move statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuroflood.errors import DataError
from neuroflood.prepare.coordfile import CoordinateShard
from neuroflood.probability import logit
from neuroflood.train.config import TrainConfig
from neuroflood.train.examples import CoordinateSampler, ExampleGenerator
from neuroflood.train.metrics import EvalTracker
from neuroflood.train.patches import Augmentation, PatchSource
from neuroflood.train.policies import (
    FixedPolicy,
    FixedWindowPolicy,
    MaxPredPolicy,
    NoStepPolicy,
    fov_shifts,
    make_policy,
    scored_move_offsets,
    shuffled_shifts,
)
from neuroflood.volume import write_volume

THR = logit(0.9)
SMALL = {"depth": 1, "features": 4, "fov_size": (9, 9, 9), "deltas": (2, 2, 2)}  # patch 13³


def _config(tmp_path, **kw) -> TrainConfig:
    base = {"images": {"v": f"{tmp_path}/d.h5:image"}, "labels": {"v": f"{tmp_path}/d.h5:labels"}, "model": SMALL, "batch_size": 2}
    return TrainConfig.build(base, kw)


@pytest.fixture
def blocks(tmp_path):
    """A 32³ volume: labels are 4³ blocks of distinct ids; image = (label * 7) % 256."""
    z, y, x = np.indices((32, 32, 32))
    labels = (1 + z // 4 * 64 + y // 4 * 8 + x // 4).astype(np.uint64)
    image = ((labels * 7) % 256).astype(np.uint8)
    write_volume(f"{tmp_path}/d.h5:image", image)
    write_volume(f"{tmp_path}/d.h5:labels", labels)
    weights = (labels % 3).astype(np.float32)
    write_volume(f"{tmp_path}/w.h5:weights", weights)
    return image, labels, weights


def test_shifts_match_reference_order_and_count():
    s = fov_shifts((8, 8, 8))
    assert len(s) == 26 == len(set(s)) and (0, 0, 0) not in s
    # google/ffn: x outermost, then y, z innermost; offsets here are z,y,x.
    assert s[:3] == [(-8, -8, -8), (0, -8, -8), (8, -8, -8)]
    assert {int(np.linalg.norm(o)) for o in s} == {8, 11, 13}
    two = fov_shifts((4, 4, 4), fov_moves=2)
    assert len(two) == 124 and all(max(map(abs, o)) == 4 for o in two[:26])
    shuffled = shuffled_shifts(s, 1, np.random.default_rng(0))
    assert sorted(shuffled) == sorted(s) and shuffled != s


def test_fixed_policy_visits_offsets_the_canvas_allows():
    """A hand-made prediction: only targets above logit(0.9) are visited, in list order."""
    shifts = [(0, 0, 2), (0, 2, 0), (2, 0, 0), (0, 0, -2)]
    canvas = np.full((13, 13, 13), -3.0, np.float32)
    canvas[6, 6, 6] = logit(0.95)
    canvas[6, 6, 8] = 3.0  # +x target valid
    canvas[8, 6, 6] = 2.0  # +z target valid (2.0 < logit(0.9) = 2.197: not valid)
    canvas[6, 6, 4] = 2.2  # -x valid (just above threshold)
    labels = np.full((13, 13, 13), 0.05, np.float32)
    labels[6, 6, 6:9] = 0.95  # object along +x only: +x wanted, others not
    labels[6, 8, 6] = 0.95  # +y wanted but the canvas does not reach it: missed
    tracker = EvalTracker((13, 13, 13))
    pol = FixedPolicy(shifts, THR)
    visited = []
    while (off := pol.next(canvas, labels, tracker)) is not None:
        visited.append(off)
    assert visited == [(0, 0, 0), (0, 0, 2), (0, 0, -2)]
    # correct: centre, +x; missed: +y; spurious: -x; (+z neither wanted nor executed: uncounted)
    assert tracker.moves.tolist() == [2, 1, 1]
    assert tracker.moves_by_radius[0].tolist() == [1, 0, 0]
    assert tracker.moves_by_radius[2].tolist() == [1, 1, 1]


def test_fixed_policy_sees_canvas_updates_between_moves():
    """The decision for a move is taken after the previous step's write-back (lazy)."""
    pol = FixedPolicy([(0, 0, 2)], THR)
    canvas = np.full((13, 13, 13), -3.0, np.float32)
    canvas[6, 6, 6] = logit(0.95)
    labels = np.full((13, 13, 13), 0.05, np.float32)
    t = EvalTracker((13, 13, 13))
    assert pol.next(canvas, labels, t) == (0, 0, 0)
    canvas[6, 6, 8] = 5.0  # "the network predicted the object there"
    assert pol.next(canvas, labels, t) == (0, 0, 2)
    assert pol.next(canvas, labels, t) is None


def test_fixed_window_policy_accepts_a_shell_voxel_near_the_target():
    shifts = [(0, 0, 2)]
    canvas = np.full((13, 13, 13), -3.0, np.float32)
    canvas[6, 6, 6] = logit(0.95)
    canvas[6, 7, 8] = 3.0  # on the +x face, one voxel off the exact target
    labels = np.full((13, 13, 13), 0.05, np.float32)
    t = EvalTracker((13, 13, 13))
    exact = FixedPolicy(shifts, THR)
    window = FixedWindowPolicy(shifts, THR, (2, 2, 2), (13, 13, 13), radius=1)
    assert [exact.next(canvas, labels, t), exact.next(canvas, labels, t)] == [(0, 0, 0), None]
    assert [window.next(canvas, labels, t), window.next(canvas, labels, t)] == [(0, 0, 0), (0, 0, 2)]


def test_scored_move_offsets_face_maxima():
    prob = np.full((9, 9, 9), -5.0, np.float32)
    prob[4, 5, 6] = 3.0  # on the +x face (x = 4 + 2), y one above centre
    prob[2, 4, 4] = 4.0  # on the -z face, centred
    got = sorted(scored_move_offsets((2, 2, 2), prob, THR), reverse=True)
    assert got == [(4.0, (-2, 0, 0)), (3.0, (0, 1, 2))]


def test_max_pred_policy_follows_the_object_and_never_leaves_it():
    """BFS over face-max moves: executes moves inside the object only (HEAD semantics)."""
    canvas = np.full((17, 17, 17), -3.0, np.float32)
    canvas[8, 8, 8] = logit(0.95)
    labels = np.full((17, 17, 17), 0.05, np.float32)
    labels[8, 8, :] = 0.95  # a process along x
    t = EvalTracker((13, 13, 13))
    pol = MaxPredPolicy((2, 2, 2), (9, 9, 9), THR, max_radius=(4, 4, 4))
    assert pol.next(canvas, labels, t) == (0, 0, 0)
    canvas[8, 8, :] = 4.0  # the "network" fills the process ...
    canvas[10, 8, 8] = 3.0  # ... and a spurious blob on the +z face
    seq = []
    while (off := pol.next(canvas, labels, t)) is not None:
        seq.append(off)
    # Candidates are queued by descending (score, offset); ties favour the larger offset.
    assert seq == [(0, 0, 2), (0, 0, -2), (0, 0, 4), (0, 0, -4)]  # (0,0,±6) exceed max_radius
    # The +z blob is valid but outside the object: recorded (as the reference does, with
    # executed = valid) but never visited.
    assert t.moves.tolist() == [5, 0, 3]
    assert t.moves_by_radius.keys() == {0}  # recorded at radius 0, as the reference does
    legacy = MaxPredPolicy((2, 2, 2), (9, 9, 9), THR, max_radius=(4, 4, 4), legacy=True)
    assert legacy.next(canvas, labels, t) == (0, 0, 0)
    legacy_seq = []
    while (off := legacy.next(canvas, labels, t)) is not None:
        legacy_seq.append(off)
    assert (2, 0, 0) in legacy_seq and (2, 0, 0) not in seq


def test_no_step_policy():
    pol, t = NoStepPolicy(), EvalTracker((3, 3, 3))
    a = np.zeros((3, 3, 3), np.float32)
    assert [pol.next(a, a, t), pol.next(a, a, t)] == [(0, 0, 0), None]
    assert t.moves.tolist() == [1, 0, 0]


def test_soft_labels_target_the_centre_object_and_normalize(tmp_path, blocks):
    image, labels, _ = blocks
    cfg = _config(tmp_path, image_offset_scale={"v": (100.0, 10.0)})
    src = PatchSource(cfg, ["v"])
    patch = src.load((10, 10, 10), 0, Augmentation())
    box = (slice(4, 17),) * 3
    want = np.where(labels[box] == labels[10, 10, 10], 0.95, 0.05).astype(np.float32)
    np.testing.assert_array_equal(patch.labels, want)
    np.testing.assert_allclose(patch.image, (image[box].astype(np.float32) - 100) / 10)
    assert patch.weights.dtype == np.float32 and np.all(patch.weights == 1)


def test_background_centre_gives_all_pad_labels(tmp_path):
    labels = np.zeros((16, 16, 16), np.uint64)
    labels[:4] = 5
    write_volume(f"{tmp_path}/d.h5:image", np.zeros((16, 16, 16), np.uint8))
    write_volume(f"{tmp_path}/d.h5:labels", labels)
    patch = PatchSource(_config(tmp_path), ["v"]).load((8, 8, 8), 0, Augmentation())
    assert np.all(patch.labels == np.float32(0.05))


def test_augmentation_is_identical_for_image_labels_and_weights(tmp_path, blocks):
    image, labels, weights = blocks
    cfg = _config(tmp_path, loss_weights={"v": f"{tmp_path}/w.h5:weights"}, image_offset_scale={"v": (0.0, 1.0)})
    src = PatchSource(cfg, ["v"])
    aug = Augmentation(permutation=(0, 2, 1), flips=(True, False, True))
    plain, moved = src.load((12, 13, 14), 0, Augmentation()), src.load((12, 13, 14), 0, aug)
    for a, b in ((plain.image, moved.image), (plain.labels, moved.labels), (plain.weights, moved.weights)):
        np.testing.assert_array_equal(b, np.transpose(a, (0, 2, 1))[::-1, :, ::-1])
    # The three stay aligned voxel by voxel: image and weights are functions of the label id.
    ids = np.transpose(labels[6:19, 7:20, 8:21], (0, 2, 1))[::-1, :, ::-1]
    np.testing.assert_array_equal(moved.image, (ids * 7) % 256)
    np.testing.assert_array_equal(moved.weights, ids % 3)
    assert moved.labels[6, 6, 6] == np.float32(0.95)  # the centre stays the centre


def test_augmentation_sampling_respects_the_axes(tmp_path):
    rng = np.random.default_rng(0)
    cfg = TrainConfig()
    augs = [Augmentation.sample(rng, cfg) for _ in range(400)]
    assert {a.permutation for a in augs} == {(0, 1, 2), (0, 2, 1)}  # y/x transpose only
    flips = np.array([a.flips for a in augs])
    assert np.all(np.abs(flips.mean(0) - 0.5) < 0.1)
    none = TrainConfig(permutable_axes=(), reflectable_axes=())
    assert {Augmentation.sample(rng, none) for _ in range(20)} == {Augmentation()}
    bright = TrainConfig(contrast_factor_range=(0.5, 1.5), brightness_factor_range=(-5, 5))
    a = Augmentation.sample(rng, bright)
    assert 0.5 <= a.contrast <= 1.5 and -5 <= a.brightness <= 5


def _generator(tmp_path, cfg=None, n=5, **kw):
    cfg = cfg or _config(tmp_path, **kw)
    centers = np.array([[10, 10, 10], [16, 16, 16], [20, 12, 9], [9, 22, 15], [14, 14, 20]])[:n]
    shard = CoordinateShard(centers, np.zeros(len(centers), np.int64), ["v"])
    tracker = EvalTracker(cfg.eval_size())
    return ExampleGenerator(cfg, PatchSource(cfg, ["v"]), shard, tracker), tracker


def test_canvas_write_back_reaches_the_next_step(tmp_path, blocks):
    gen, tracker = _generator(tmp_path, shuffle_moves=False)
    b1 = gen.next_batch()
    assert b1.seed.shape == (2, 1, 9, 9, 9)
    centre = b1.seed[0, 0, 4, 4, 4].item()
    assert math.isclose(centre, logit(0.95), rel_tol=1e-6)
    assert math.isclose(b1.seed[0, 0, 0, 0, 0].item(), logit(0.05), rel_tol=1e-6)
    # The "network" predicts the object everywhere: every fixed move becomes valid and
    # each next FOV starts from the written-back logits.
    gen.update(torch.full((2, 1, 9, 9, 9), 7.0))
    canvas = gen.slots[0].canvas
    assert np.all(canvas[2:11, 2:11, 2:11] == 7.0) and canvas[0, 0, 0] == np.float32(logit(0.05))
    b2 = gen.next_batch()
    first_shift = fov_shifts((2, 2, 2))[0]  # (-2, -2, -2)
    assert gen.slots[0].view == tuple(slice(2 + o, 11 + o) for o in first_shift)
    np.testing.assert_array_equal(b2.seed[0, 0, 2:, 2:, 2:].numpy(), 7.0)
    assert b2.seed[0, 0, 0, 0, 0].item() == pytest.approx(logit(0.05))


def test_trajectory_ends_when_no_move_is_valid_and_the_patch_is_scored(tmp_path, blocks):
    gen, tracker = _generator(tmp_path)
    gen.next_batch()
    gen.update(torch.full((2, 1, 9, 9, 9), -9.0))  # nothing above threshold: no further moves
    assert tracker.patches == 0
    gen.next_batch()  # both slots finish and load their next examples
    assert tracker.patches == 2 and tracker.moves_by_radius[0].sum() == 4
    s = tracker.summary()
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["accuracy"] > 0.5


def test_generator_state_round_trip_continues_identically(tmp_path, blocks):
    def run(gen, steps, start=0):
        seeds = []
        for k in range(start, start + steps):
            b = gen.next_batch()
            seeds.append(b.seed.clone())
            gen.update(torch.sin(b.seed * (k + 1)) * 4)  # a deterministic stand-in network
        return seeds

    g1, _ = _generator(tmp_path)
    straight = run(g1, 40)
    g2, _ = _generator(tmp_path)
    run(g2, 17)
    state = g2.state_dict()
    g3, _ = _generator(tmp_path)
    g3.load_state_dict(state)
    resumed = run(g3, 23, start=17)
    for a, b in zip(straight[17:], resumed):
        assert torch.equal(a, b)


def test_sampler_epochs_and_state():
    s = CoordinateSampler(5, np.random.default_rng(1))
    first = [s.next() for _ in range(5)]
    assert sorted(first) == list(range(5))
    s.next()
    state = s.state_dict()
    rest = [s.next() for _ in range(7)]
    s2 = CoordinateSampler(5, np.random.default_rng(99))
    s2.load_state_dict(state)
    assert [s2.next() for _ in range(7)] == rest
    with pytest.raises(DataError, match="empty"):
        CoordinateSampler(0, np.random.default_rng(0))


def test_patch_source_rejects_bad_input(tmp_path, blocks):
    cfg = _config(tmp_path)
    src = PatchSource(cfg, ["v", "other"])
    near_edge = CoordinateShard(np.array([[10, 10, 10], [3, 16, 16]]), np.zeros(2, np.int64), ["v", "other"])
    with pytest.raises(DataError, match=r"1 of 2 coordinates .* too close to its edge .* margin of at least 6,6,6"):
        src.check(near_edge, "c.bin")
    unknown = CoordinateShard(np.array([[10, 10, 10]]), np.ones(1, np.int64), ["v", "other"])
    with pytest.raises(DataError, match="volume 'other'.*--image other=SPEC"):
        src.check(unknown, "c.bin")
    write_volume(f"{tmp_path}/m.h5:labels", np.zeros((32, 32, 30), np.uint64))
    bad = TrainConfig.build(cfg.model_dump(), {"labels": {"v": f"{tmp_path}/m.h5:labels"}})
    with pytest.raises(DataError, match="shape"):
        PatchSource(bad, ["v"]).check(near_edge, "c.bin")


def test_make_policy_kinds():
    rng = np.random.default_rng(0)
    assert isinstance(make_policy(TrainConfig(), rng), FixedPolicy)
    mp = make_policy(TrainConfig(fov_policy="max_pred_moves"), rng)
    assert isinstance(mp, MaxPredPolicy) and mp.max_radius.tolist() == [16, 16, 16]
    assert TrainConfig(fov_policy="max_pred_moves").patch_size() == (65, 65, 65)
    assert TrainConfig().patch_size() == TrainConfig().eval_size() == (49, 49, 49)
    assert isinstance(make_policy(TrainConfig(fov_policy="fixed_window"), rng), FixedWindowPolicy)
    assert isinstance(make_policy(TrainConfig(fov_policy="no_step"), rng), NoStepPolicy)


def test_tracker_counts_and_metrics():
    t = EvalTracker((3, 3, 3), max_images=2)
    labels = np.full((5, 5, 5), 0.05, np.float32)
    labels[2, 2, :] = 0.95
    logits = np.full((5, 5, 5), -3.0, np.float32)
    logits[2, 2, 1:3] = 3.0  # 2 TP inside the 3³ crop
    logits[1, 1, 1] = 3.0  # 1 FP
    t.add_patch(labels, logits, np.ones_like(labels))
    s = t.summary()
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 1, 1, 23)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3) and s["accuracy"] == pytest.approx(25 / 27)
    assert s["specificity"] == pytest.approx(23 / 24)
    x = logits[1:4, 1:4, 1:4].astype(np.float64)
    z = labels[1:4, 1:4, 1:4]
    want = np.mean(np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x))))
    assert s["patch_loss"] == pytest.approx(want)
    assert len(t.images) == 1 and t.images[0].dtype == np.uint8
    t.reset()
    assert t.summary()["f1"] is None
