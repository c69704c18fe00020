"""FOV-move policies of FFN training: where the FOV goes next inside a training patch.

google/ffn ``ffn/training/examples.py`` (ffn-algorithms.md §2.4). A policy is asked for the
next offset (z, y, x, relative to the patch centre) *from the current canvas*, so each
decision sees the network's previous output. Every decision is counted in the
:class:`~neuroflood.train.metrics.EvalTracker` as a move (wanted: inside the object;
executed: valid). A policy's state (``state_dict``/``load_state_dict``) is what a
checkpoint needs to continue a trajectory where it stopped.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..probability import expit, logit
from .config import TrainConfig
from .metrics import EvalTracker

Offset = tuple[int, int, int]


def fov_shifts(deltas: Sequence[int], fov_moves: int = 1) -> list[Offset]:
    """Neighbour offsets, z,y,x, in google/ffn's order (x outermost, z innermost).

    ``fov_moves == 1``: the 26 offsets of ``FFNModel.shifts``; more moves: every multiple of
    the deltas within ±fov_moves·delta (the JAX trainer's generalisation), nearest first.
    """
    dz, dy, dx = (int(d) for d in deltas)
    steps = range(-fov_moves, fov_moves + 1)
    out = []
    for mx, my, mz in itertools.product(steps, steps, steps):
        off = (mz * dz, my * dy, mx * dx)
        if off != (0, 0, 0) and off not in out:
            out.append(off)
    if fov_moves > 1:
        out.sort(key=lambda o: max(abs(v) // max(d, 1) for v, d in zip(o, (dz, dy, dx))))
    return out


def shuffled_shifts(shifts: list[Offset], fov_moves: int, rng: np.random.Generator) -> list[Offset]:
    """Shuffle once per run; with several moves, only within groups of equal distance."""
    if fov_moves == 1:
        return [shifts[i] for i in rng.permutation(len(shifts))]
    out: list[Offset] = []
    for _, group in itertools.groupby(shifts, key=lambda o: sum(abs(v) for v in o)):
        g = list(group)
        out += [g[i] for i in rng.permutation(len(g))]
    return out


def eval_move(canvas: np.ndarray, labels: np.ndarray, off: Offset, threshold_logit: float) -> tuple[bool, bool]:
    """``(valid, wanted)``: canvas logit at the target ≥ threshold; label there ≥ threshold."""
    c = tuple(s // 2 + o for s, o in zip(canvas.shape, off))
    lc = tuple(s // 2 + o for s, o in zip(labels.shape, off))
    return bool(canvas[c] >= threshold_logit), bool(labels[lc] >= expit(threshold_logit))


class FixedPolicy:
    """``fixed_offsets``: the centre, then each shift whose target the canvas already reaches.

    Every candidate is recorded as a move (wanted = inside the object, executed = valid);
    only valid moves are executed. The labels are never consulted for the decision.
    """

    def __init__(self, shifts: Sequence[Offset], threshold_logit: float):
        self.offsets = [(0, 0, 0)] + [tuple(int(v) for v in s) for s in shifts]
        self.threshold = threshold_logit
        self.index = 0

    def start(self) -> None:
        self.index = 0

    def _valid(self, canvas: np.ndarray, labels: np.ndarray, off: Offset) -> tuple[bool, bool]:
        return eval_move(canvas, labels, off, self.threshold)

    def next(self, canvas: np.ndarray, labels: np.ndarray, tracker: EvalTracker) -> Offset | None:
        while self.index < len(self.offsets):
            off = self.offsets[self.index]
            self.index += 1
            valid, wanted = self._valid(canvas, labels, off)
            tracker.record_move(wanted, valid, off)
            if valid:
                return off
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


class FixedWindowPolicy(FixedPolicy):
    """``fixed_offsets_window``: a shift is valid if any voxel of the ±delta shell within
    ``radius`` of its target crosses the threshold (follows thin processes better)."""

    def __init__(self, shifts: Sequence[Offset], threshold_logit: float, deltas: Sequence[int], canvas_shape: Sequence[int], radius: int):
        super().__init__(shifts, threshold_logit)
        self.radius = int(radius)
        self.centre = np.array(canvas_shape) // 2
        grid = np.indices(tuple(canvas_shape)) - self.centre.reshape(3, 1, 1, 1)
        inside = np.all([np.abs(grid[a]) <= deltas[a] for a in range(3)], axis=0)
        on_shell = np.any([np.abs(grid[a]) == deltas[a] for a in range(3)], axis=0)
        self.halo = inside & on_shell

    def _valid(self, canvas: np.ndarray, labels: np.ndarray, off: Offset) -> tuple[bool, bool]:
        if off == (0, 0, 0):
            return eval_move(canvas, labels, off, self.threshold)
        target = self.centre + off
        window = tuple(slice(max(t - self.radius, 0), t + self.radius + 1) for t in target)
        sel = self.halo[window]
        lab_shift = np.array(labels.shape) // 2 - self.centre
        lab_window = tuple(slice(w.start + s, w.stop + s) for w, s in zip(window, lab_shift))
        valid = bool(np.any(canvas[window][sel] >= self.threshold))
        wanted = bool(np.any(labels[lab_window][sel] >= expit(self.threshold)))
        return valid, wanted


class NoStepPolicy:
    """``no_offsets``: one step at the centre, always counted as a correct move."""

    def __init__(self) -> None:
        self.done = False

    def start(self) -> None:
        self.done = False

    def next(self, canvas: np.ndarray, labels: np.ndarray, tracker: EvalTracker) -> Offset | None:
        if self.done:
            return None
        self.done = True
        tracker.record_move(True, True, (0, 0, 0))
        return (0, 0, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state["done"])


def scored_move_offsets(deltas: Sequence[int], logits: np.ndarray, threshold: float) -> list[tuple[float, Offset]]:
    """Face-max candidates of one FOV (ffn-algorithms.md §3.4), z,y,x, relative to its centre.

    For each face of the ±delta cube around the centre: the first maximum of the face; kept
    if it reaches ``threshold``, with its sideways position relative to the face centre.
    """
    centre = np.array(logits.shape) // 2
    sub = [slice(c - d, c + d + 1) for c, d in zip(centre, deltas)]
    out: list[tuple[float, Offset]] = []
    for axis, d in enumerate(deltas):
        if d == 0:
            continue
        for axis_off in (-d, d):
            sel = list(sub)
            sel[axis] = int(centre[axis] + axis_off)  # type: ignore[call-overload]
            face = logits[tuple(sel)]
            pos = np.unravel_index(int(np.argmax(face)), face.shape)
            score = float(face[pos])
            if score < threshold:
                continue
            rel = [int(pos[0] - face.shape[0] // 2), int(pos[1] - face.shape[1] // 2)]
            rel.insert(axis, int(axis_off))
            cand = (score, tuple(rel))
            if cand not in out:
                out.append(cand)  # type: ignore[arg-type]
    return out


class MaxPredPolicy:
    """``max_pred_offsets``: inference-like BFS over face-max moves inside the patch.

    Offsets beyond ``max_radius`` (patch radius − FOV radius) are dropped, visited cells
    (quantized by the deltas) skipped; a move is executed if the canvas reaches the threshold
    there and it lies inside the ground-truth object (the centre needs validity only); with
    ``legacy`` every valid move is executed (google/ffn 2017-2023). All moves are recorded at
    radius 0, as in the reference.
    """

    def __init__(
        self, deltas: Sequence[int], fov_size: Sequence[int], threshold_logit: float, max_radius: Sequence[int], legacy: bool = False
    ):
        self.deltas = np.array(deltas, np.int64)
        self.fov = tuple(int(f) for f in fov_size)
        self.threshold = threshold_logit
        self.max_radius = np.array(max_radius, np.int64)
        self.legacy = legacy
        self.start()

    def start(self) -> None:
        self.queue: deque[Offset] = deque([(0, 0, 0)])
        self.done: set[tuple[float, ...]] = set()
        self.last: Offset | None = None

    def _quantize(self, off: Offset) -> tuple[float, ...]:
        return tuple(float(v) for v in (np.array(off) + self.deltas / 2) // np.maximum(self.deltas, 1))

    def next(self, canvas: np.ndarray, labels: np.ndarray, tracker: EvalTracker) -> Offset | None:
        if self.last is not None:  # score the FOV the previous step wrote back
            start = [s // 2 - f // 2 + o for s, f, o in zip(canvas.shape, self.fov, self.last)]
            fov = canvas[tuple(slice(b, b + f) for b, f in zip(start, self.fov))]
            cands = sorted(scored_move_offsets(self.deltas.tolist(), fov, self.threshold), reverse=True)
            self.queue.extend(tuple(int(a + b) for a, b in zip(rel, self.last)) for _, rel in cands)  # type: ignore[misc]
            self.last = None
        while self.queue:
            off = self.queue.popleft()
            if np.any(np.abs(off) > self.max_radius):
                continue
            q = self._quantize(off)
            if q in self.done:
                continue
            valid, wanted = eval_move(canvas, labels, off, self.threshold)
            tracker.record_move(wanted, valid, (0, 0, 0))
            if not valid or (not wanted and not self.legacy and any(q)):
                continue
            self.done.add(q)
            self.last = off
            return off
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "queue": [list(o) for o in self.queue],
            "done": [list(q) for q in sorted(self.done)],
            "last": list(self.last) if self.last else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = deque(tuple(int(v) for v in o) for o in state["queue"])  # type: ignore[misc]
        self.done = {tuple(float(v) for v in q) for q in state["done"]}
        self.last = tuple(int(v) for v in state["last"]) if state["last"] is not None else None  # type: ignore[assignment]


Policy = FixedPolicy | NoStepPolicy | MaxPredPolicy  # FixedWindowPolicy is a FixedPolicy


def make_policy(config: TrainConfig, rng: np.random.Generator) -> Policy:
    """The FOV policy of ``config`` (the fixed shifts are shuffled here, once per run)."""
    m = config.model
    thr = logit(config.threshold)
    if config.fov_policy == "no_step":
        return NoStepPolicy()
    if config.fov_policy == "max_pred_moves":
        radius = [p // 2 - f // 2 for p, f in zip(config.patch_size(), m.fov_size)]
        return MaxPredPolicy(m.deltas, m.fov_size, thr, radius, legacy=config.legacy_max_pred)
    shifts = fov_shifts(m.deltas, config.fov_moves)
    if config.shuffle_moves:
        shifts = shuffled_shifts(shifts, config.fov_moves, rng)
    if config.fov_policy == "fixed_window":
        return FixedWindowPolicy(shifts, thr, m.deltas, config.patch_size(), config.fixed_window_radius)
    return FixedPolicy(shifts, thr)


def clone_policy(proto: Policy) -> Policy:
    """A fresh policy of the same kind and offset order (policies carry per-slot state)."""
    p = copy.deepcopy(proto)
    p.start()
    return p
