"""Seed policies on hand-made images: what each proposes, in which order, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflood.errors import ConfigError
from neuroflood.infer.movement import MovementRestrictor
from neuroflood.infer.seeds import make_seed_policy, resolve_seed_policy


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
    moved = list(
        make_seed_policy(
            "PolicyGrid3d", PolicyCanvas(np.zeros((8, 8, 8)), margin=(0, 0, 0)), {"step": 4, "offsets": [0], "origin": [1, -2, 7]}
        )
    )
    assert moved == [(z, y, x) for z in (1, 5) for y in (2, 6) for x in (3, 7)]
    flat = list(
        make_seed_policy(
            "PolicyGrid2d", PolicyCanvas(np.zeros((2, 8, 8)), margin=(0, 0, 0)), {"step": 4, "offsets": [0], "origin": [5, 1, 2]}
        )
    )
    assert flat == [(z, y, x) for z in (0, 1) for y in (1, 5) for x in (2, 6)]
    dense = list(make_seed_policy("PolicyDenseSeeds", canvas, {"threshold": 4}))
    assert dense == [(2, 2, 4), (3, 3, 3)]
    rev = list(make_seed_policy("ReverseCoords", canvas, {"policy_to_reverse": "PolicyDenseSeeds", "threshold": 4}))
    assert rev == [(3, 3, 3), (2, 2, 4)]
    seq = make_seed_policy(
        "SequentialPolicies", canvas, {"policies": [["PolicyDenseSeeds", {"threshold": 6}], ["PolicyDenseSeeds", {"threshold": 4}]]}
    )
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


def test_invert_origins_reads_a_previous_run_only_through_the_loader_it_is_given():
    calls = []

    def load_origins(spec):
        calls.append(spec)
        return {1: (2, 2, 2), 2: (3, 3, 3)}

    policy = resolve_seed_policy("PolicyInvertOrigins", {"segmentation": "prev.npz"}, load_origins=load_origins)
    assert calls == ["prev.npz"] and "segmentation" not in policy.args
    assert list(policy(PolicyCanvas(np.zeros((6, 6, 6)), margin=(1, 1, 1)))) == [(3, 3, 3), (2, 2, 2)]
    wrapped = resolve_seed_policy(
        "ReverseCoords", {"policy_to_reverse": "PolicyInvertOrigins", "segmentation": "p"}, load_origins=load_origins
    )
    assert wrapped.args["policy_to_reverse"].args["origins"] == {1: (2, 2, 2), 2: (3, 3, 3)}
    with pytest.raises(ConfigError, match="read when the policy is resolved"):
        make_seed_policy("PolicyInvertOrigins", PolicyCanvas(np.zeros((6, 6, 6))), {"segmentation": "prev.npz"})
