"""Movement: face-maximum move offsets, the FIFO movement policy, movement and seed masks."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflood.infer.movement import FaceMaxMovementPolicy, MovementRestrictor, get_scored_move_offsets


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
