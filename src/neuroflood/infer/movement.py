"""Where the field of view goes next: face-maximum moves and movement restrictions.

google/ffn ``ffn/inference/movement.py`` (ffn-algorithms.md §3.4). All positions are z, y, x.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Position = tuple[int, int, int]


def get_scored_move_offsets(deltas: Sequence[int], logits: np.ndarray, threshold: float) -> Iterator[tuple[float, Position]]:
    """Candidate moves from the maxima of the faces of the ±delta cube around the centre.

    For each of the 6 faces (axis at ±delta) of the ``(2·delta + 1)³`` cube centred in
    ``logits``, the first maximum (C order) is a candidate if it is ``>= threshold``. The
    offset is ±delta along the face's axis and the argmax's position relative to the face
    centre along the other two axes, so moves can slide sideways.

    Yields
    ------
    (score, offset_zyx)
        Distinct pairs, in the order -z, +z, -y, +y, -x, +x (not sorted by score).
    """
    center = [s // 2 for s in logits.shape]
    cube = tuple(slice(c - d, c + d + 1) for c, d in zip(center, deltas))
    seen = set()
    for axis, delta in enumerate(deltas):
        if delta == 0:
            continue
        for offset in (-delta, delta):
            face_sel = list(cube)
            face_sel[axis] = center[axis] + offset
            face = logits[tuple(face_sel)]
            flat = int(face.argmax())
            i, j = divmod(flat, face.shape[1])
            score = float(face[i, j])
            # NaN never passes (comparisons with NaN are False), as in the reference.
            if not score >= threshold:
                continue
            rel = [i - face.shape[0] // 2, j - face.shape[1] // 2]
            rel.insert(axis, offset)
            item = (score, tuple(rel))
            # Two faces can share an edge voxel: the same move is offered once.
            if item not in seen:
                seen.add(item)
                yield item


class FaceMaxMovementPolicy:
    """FIFO (breadth-first) queue of face-maximum moves with a quantized done-set.

    Parameters
    ----------
    deltas : (z, y, x)
        Move step; also the quantization cell of the done-set.
    score_threshold : float
        Minimum logit at a candidate FOV centre (``logit(move_threshold)``).
    is_valid : callable
        ``is_valid(pos) -> bool``, the canvas's check at pop time (current canvas value at
        ``pos`` >= move threshold, inside the image margin, not yet segmented).
    """

    def __init__(self, deltas: Sequence[int], score_threshold: float, is_valid: Callable[[Position], bool]):
        self.deltas = tuple(int(d) for d in deltas)
        self.score_threshold = float(score_threshold)
        self.is_valid = is_valid
        self._half = tuple(d // 2 for d in self.deltas)
        self._cell = tuple(max(d, 1) for d in self.deltas)
        self.queue: deque[tuple[float, Position]] = deque()
        self.done: set[Position] = set()
        self.start_pos: Position = (0, 0, 0)

    def reset(self, start_pos: Sequence[int]) -> None:
        """Empty the queue and the done-set for a new object seeded at ``start_pos``."""
        self.queue = deque()
        self.done = set()
        self.start_pos = tuple(int(v) for v in start_pos)

    def __len__(self) -> int:
        return len(self.queue)

    def append(self, score: float, pos: Sequence[int]) -> None:
        self.queue.append((float(score), tuple(int(v) for v in pos)))

    def quantize_pos(self, pos: Sequence[int]) -> Position:
        """The done-set cell of ``pos``: the object's origin lies in the middle of its cell."""
        s, h, c = self.start_pos, self._half, self._cell
        return (
            (int(pos[0]) - s[0] + h[0]) // c[0],
            (int(pos[1]) - s[1] + h[1]) // c[1],
            (int(pos[2]) - s[2] + h[2]) // c[2],
        )

    def __iter__(self) -> FaceMaxMovementPolicy:
        return self

    def __next__(self) -> Position:
        """Pop entries until one is in a cell not done yet and valid now."""
        while self.queue:
            _, pos = self.queue.popleft()
            if self.quantize_pos(pos) in self.done:
                continue
            if self.is_valid(pos):
                return pos
        raise StopIteration

    def update(self, logits: np.ndarray, pos: Sequence[int]) -> None:
        """Mark ``pos``'s cell done; append this step's candidates, best score first."""
        self.done.add(self.quantize_pos(pos))
        moves = sorted(get_scored_move_offsets(self.deltas, logits, self.score_threshold), reverse=True)
        for score, rel in moves:
            self.queue.append((score, (rel[0] + int(pos[0]), rel[1] + int(pos[1]), rel[2] + int(pos[2]))))

    # -- checkpoint state (plain arrays, nothing pickled) ------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        return {
            "queue_scores": np.array([s for s, _ in self.queue], dtype=np.float64),
            "queue_pos": np.array([p for _, p in self.queue], dtype=np.int64).reshape(-1, 3),
            "done": np.array(sorted(self.done), dtype=np.int64).reshape(-1, 3),
            "start_pos": np.array(self.start_pos, dtype=np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.queue = deque((float(s), tuple(int(v) for v in p)) for s, p in zip(state["queue_scores"], state["queue_pos"]))
        self.done = {tuple(int(v) for v in c) for c in state["done"]}
        self.start_pos = tuple(int(v) for v in state["start_pos"])


MOVEMENT_POLICIES = {"FaceMaxMovementPolicy": FaceMaxMovementPolicy}


class MovementRestrictor:
    """Positions the FOV may not visit and voxels that may not be seeds.

    Parameters
    ----------
    mask : bool array (z, y, x), optional
        True where the FOV may not be centred (and no seed may start).
    seed_mask : bool array (z, y, x), optional
        True where no seed may start.
    shift_mask : array (2, z', y', x'), optional
        A 2-D (y, x) shift field of the alignment, at ``shift_mask_scale`` times coarser y/x
        resolution; positions whose ``shift_mask_fov`` box contains a shift with
        ``max(|dy|, |dx|) >= shift_mask_threshold`` are invalid.
    shift_mask_fov : (start_zyx, size_zyx)
        Box around a position, relative to it; default: the network's image FOV.
    """

    def __init__(
        self,
        mask: np.ndarray | None = None,
        seed_mask: np.ndarray | None = None,
        shift_mask: np.ndarray | None = None,
        shift_mask_fov: tuple[Sequence[int], Sequence[int]] | None = None,
        shift_mask_threshold: float = 4,
        shift_mask_scale: int = 1,
    ):
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        self.seed_mask = None if seed_mask is None else np.asarray(seed_mask, dtype=bool)
        self.shift_mask = None
        if shift_mask is not None:
            if shift_mask_fov is None:
                raise ValueError("shift_mask needs shift_mask_fov (start, size) relative to the position")
            self.shift_mask = np.max(np.abs(shift_mask), axis=0) >= shift_mask_threshold
            start, size = shift_mask_fov
            self._pre = np.array(start, dtype=np.int64)
            self._post = np.array(start, dtype=np.int64) + np.array(size, dtype=np.int64) - 1
            self._scale = int(shift_mask_scale)

    def is_valid_seed(self, pos: Position) -> bool:
        return self.seed_mask is None or not self.seed_mask[pos]

    def is_valid_pos(self, pos: Position) -> bool:
        if self.mask is not None and self.mask[pos]:
            return False
        if self.shift_mask is not None:
            p = np.array(pos)
            low = np.maximum(p + self._pre, 0)
            high = p + self._post
            start, end = low // self._scale, high // self._scale
            # z is at full resolution; y and x at the shift mask's scale.
            if np.any(self.shift_mask[low[0] : high[0] + 1, start[1] : end[1] + 1, start[2] : end[2] + 1]):
                return False
        return True

    @property
    def restricts_anything(self) -> bool:
        return self.mask is not None or self.seed_mask is not None or self.shift_mask is not None
