"""The Canvas: flood-fill segmentation of one subvolume, one object at a time.

google/ffn ``ffn/inference/inference.py: Canvas`` (ffn-algorithms.md §3.3). State for the
whole subvolume (z, y, x):

``seed``          float32 object-mask logits of the object being flooded; NaN = not predicted
``segmentation``  int32; 0 free, > 0 segment id, -1 a seed that failed here
``seg_prob``      uint8 quantized probabilities of accepted segments (optional)
``origins``       {id: Origin(start_zyx, iterations, seconds)}
``overlaps``      {id: (ids, counts)} of existing segments the new object's mask covered

An object grows from a seed by moving the network's FOV (face-maximum moves, a FIFO queue);
each prediction overwrites the canvas window. The object is accepted if its seed stayed
strong and it claims at least ``min_segment_size`` free voxels at ``segment_threshold``;
voxels already segmented are never taken (first come, first served).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from scipy.special import expit

from ..errors import CheckpointError
from ..probability import logit
from .config import InferenceOptions
from .movement import (
    MOVEMENT_POLICIES,
    FaceMaxMovementPolicy,
    MovementRestrictor,
    Position,
)
from .results import Origin, quantize_probability
from .seeds import SeedPolicy, SeedPolicyFactory, resolve_seed_policy

MAX_SELF_CONSISTENT_ITERS = 32  # consistency_threshold re-runs (2017 reference)
_LOGIT_0_8 = logit(0.8)


class PredictClient(Protocol):
    def predict(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray: ...


class Canvas:
    """Inference state and flood-filling logic for one subvolume.

    Parameters
    ----------
    image : float32 array (z, y, x)
        The normalized image, ``(img - mean) / stddev``.
    client : object with ``predict(image, seed) -> logits``
        An executor client (:mod:`neuroflood.infer.executor`).
    options : InferenceOptions
        Thresholds as probabilities (converted to logits here).
    fov_size, deltas : (z, y, x)
        The network's field of view and move step.
    restrictor : MovementRestrictor, optional
        Movement and seed masks.
    movement_policy, movement_policy_args
        Movement policy name and keyword arguments (``deltas`` and ``score_threshold``, a
        probability, default to the network's deltas and ``move_threshold``).
    voxel_size : (z, y, x)
        For the distance transforms of seed policies.
    keep_probability_maps : bool
        Store quantized probabilities of accepted segments in ``seg_prob``.
    checkpoint : callable, optional
        ``checkpoint(canvas, partial_segment_iters, rewind_seed)``; called at most every
        ``checkpoint_interval`` seconds before each seed attempt, after each FOV and after
        each accepted segment (see :mod:`neuroflood.infer.storage`).
    callback : callable, optional
        ``callback(event, canvas)`` with event ``"fov"`` after each network evaluation and
        ``"segment"`` after each accepted segment (progress bars; tests interrupt from it).
    keep_history : bool
        Record the FOV positions of the current object and the voxels each step deleted.
    """

    def __init__(
        self,
        image: np.ndarray,
        client: PredictClient,
        options: InferenceOptions | None = None,
        *,
        fov_size: Sequence[int] = (33, 33, 33),
        deltas: Sequence[int] = (8, 8, 8),
        restrictor: MovementRestrictor | None = None,
        movement_policy: str = "FaceMaxMovementPolicy",
        movement_policy_args: dict[str, Any] | None = None,
        voxel_size: Sequence[float] = (1, 1, 1),
        keep_probability_maps: bool = False,
        checkpoint: Callable[[Canvas, int, bool], None] | None = None,
        checkpoint_interval: float = 0.0,
        callback: Callable[[str, Canvas], None] | None = None,
        keep_history: bool = False,
    ):
        self.image = image
        self.shape = tuple(int(s) for s in image.shape)
        self.client = client
        self.options = options or InferenceOptions()
        lg = self.options.logits()
        self.t_init = np.float32(lg["init_activation"])
        self.t_pad = np.float32(lg["pad_value"])
        self.t_move = lg["move_threshold"]
        self.t_segment = lg["segment_threshold"]
        self.restrictor = restrictor or MovementRestrictor()
        self.voxel_size = tuple(float(v) for v in voxel_size)

        self.fov_size = np.array(fov_size, dtype=np.int64)
        self.pred_size = self.fov_size  # convstack_3d predicts its whole FOV
        self.margin = self.fov_size // 2
        self._margin = tuple(int(m) for m in self.margin)
        self._half = tuple(int(s) // 2 for s in self.fov_size)

        self.seed = np.full(self.shape, np.nan, dtype=np.float32)
        self.segmentation = np.zeros(self.shape, dtype=np.int32)
        self.seg_prob = np.zeros(self.shape, dtype=np.uint8) if keep_probability_maps else None
        self.keep_probability_maps = keep_probability_maps
        self.origins: dict[int, Origin] = {}
        self.overlaps: dict[int, tuple[list[int], list[int]]] = {}
        self.local_to_global: dict[int, int] = {}
        self.counters: dict[str, float] = {}
        self.max_id = 0

        args = dict(movement_policy_args or {})
        args.setdefault("deltas", tuple(int(d) for d in deltas))
        score = args.pop("score_threshold", None)
        score = self.t_move if score is None else logit(float(score))
        cls = MOVEMENT_POLICIES[movement_policy]
        self.movement: FaceMaxMovementPolicy = cls(args.pop("deltas"), score, self.is_valid_pos, **args)

        self.seed_policy: SeedPolicy | None = None
        self._seed_policy_state: tuple[np.ndarray | None, int] | None = None
        self.partial_segment_iters = 0
        self.history: list[Position] = []
        self.history_deleted: list[int] = []
        self.keep_history = keep_history
        self.min_pos = np.zeros(3, np.int64)
        self.max_pos = np.zeros(3, np.int64)
        # Box of the seed canvas written since the last clear (whole canvas: unknown).
        self._dirty: tuple[slice, ...] | None = tuple(slice(0, s) for s in self.shape)
        self._seed_in = np.empty(tuple(int(s) for s in self.fov_size), np.float32)
        self._segment_seconds_before = 0.0  # of an object resumed from a checkpoint
        self._segment_t0 = time.monotonic()

        self.checkpoint = checkpoint
        self.checkpoint_interval = float(checkpoint_interval)
        self._last_checkpoint = time.monotonic()
        self.callback = callback

    # -- counters --------------------------------------------------------------------------
    def count(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- validity ----------------------------------------------------------------------------
    def is_valid_pos(self, pos: Position, ignore_move_threshold: bool = False) -> bool:
        """True if the FOV may be centred at ``pos`` (z, y, x).

        Unless ``ignore_move_threshold`` (a new seed), the current canvas value at ``pos``
        must reach the move threshold; the FOV must fit in the image and ``pos`` must not be
        segmented.
        """
        if not ignore_move_threshold and not self.seed[pos] >= self.t_move:
            self.count("skip_threshold")
            return False
        m, s = self._margin, self.shape
        if pos[0] < m[0] or pos[1] < m[1] or pos[2] < m[2] or pos[0] + m[0] >= s[0] or pos[1] + m[1] >= s[1] or pos[2] + m[2] >= s[2]:
            self.count("skip_invalid_pos")
            return False
        if self.segmentation[pos] > 0:
            self.count("skip_invalid_pos")
            return False
        return True

    # -- one network step --------------------------------------------------------------------
    def _fov(self, pos: Position) -> tuple[slice, slice, slice]:
        h = self._half
        return (
            slice(pos[0] - h[0], pos[0] - h[0] + int(self.fov_size[0])),
            slice(pos[1] - h[1], pos[1] - h[1] + int(self.fov_size[1])),
            slice(pos[2] - h[2], pos[2] - h[2] + int(self.fov_size[2])),
        )

    def predict(self, pos: Position, seed_logits: np.ndarray) -> np.ndarray:
        """One network evaluation at ``pos`` with the given seed logits (no NaN)."""
        self.count("fov_evaluations")
        return self.client.predict(self.image[self._fov(pos)], seed_logits)

    def update_at(self, pos: Position) -> np.ndarray:
        """Run the network at ``pos`` and write its logits into the canvas window.

        NaN (never predicted) voxels are fed as ``pad_value``. With disco freezing on
        (``disco_seed_threshold >= 0``), voxels already below 0.5 cannot rise while this
        object is flooded. The new logits replace the old ones (no averaging).
        """
        sel = self._fov(pos)
        seed_in = self._seed_in
        np.copyto(seed_in, self.seed[sel])
        np.copyto(seed_in, self.t_pad, where=np.isnan(seed_in))
        logits = self.predict(pos, seed_in)
        if self.options.consistency_threshold > 0:
            logits = self._self_consistent(pos, seed_in, logits)

        if self.options.disco_seed_threshold >= 0:
            old = self.seed[sel]
            if self.keep_history:
                self.history_deleted.append(int(np.sum((old >= _LOGIT_0_8) & (logits < 0))))
            if np.mean(logits >= self.t_move) > self.options.disco_seed_threshold:
                # min(new, old) where old < 0 keeps predicted background from rising; NaN < 0
                # is False, so voxels never predicted are unaffected.
                np.minimum(logits, old, out=logits, where=old < 0)
        self.seed[sel] = logits
        return logits

    def _self_consistent(self, pos: Position, seed_in: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Re-run at ``pos`` with the last output as seed until mean |Δp| < threshold."""
        prev = expit(seed_in)
        for _ in range(MAX_SELF_CONSISTENT_ITERS - 1):
            prob = expit(logits)
            if np.mean(np.abs(prob - prev)) < self.options.consistency_threshold:
                break
            prev = prob
            logits = self.predict(pos, logits.copy())
        return logits

    # -- one object ---------------------------------------------------------------------------
    def init_seed(self, pos: Position) -> None:
        """Clear the object mask (NaN) and place ``init_activation`` at ``pos``."""
        if self._dirty is not None:
            self.seed[self._dirty] = np.nan
        self.seed[pos] = self.t_init
        self._dirty = tuple(slice(p, p + 1) for p in pos)

    def _mark_dirty(self) -> None:
        lo = np.maximum(self.min_pos - self.margin, 0)
        hi = self.max_pos + self.margin + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        if self._dirty is None:
            self._dirty = box
        else:
            self._dirty = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(self._dirty, box))

    def segment_at(self, start_pos: Position, partial_segment_iters: int = 0) -> int:
        """Flood one object from ``start_pos``; returns the number of FOV evaluations.

        With ``partial_segment_iters`` > 0 an object restored from a checkpoint is continued
        (the canvas and queue are not reset).
        """
        if not partial_segment_iters:
            self.count("segment_at_calls")
            self.init_seed(start_pos)
            self.movement.reset(start_pos)
            self.history, self.history_deleted = [], []
            self.min_pos = np.array(start_pos, np.int64)
            self.max_pos = np.array(start_pos, np.int64)
            if not len(self.movement):
                self.movement.append(2 * self.movement.score_threshold, start_pos)

        num_iters = partial_segment_iters
        try:
            for pos in self.movement:
                # Stop early once the seed voxel itself is no longer believed.
                if self.seed[start_pos] < self.t_move:
                    self.count("seed_got_too_weak")
                    break
                if not self.restrictor.is_valid_pos(pos):
                    self.count("skip_restricted_pos")
                    continue
                pred = self.update_at(pos)
                self.min_pos = np.minimum(self.min_pos, pos)
                self.max_pos = np.maximum(self.max_pos, pos)
                num_iters += 1
                self.movement.update(pred, pos)
                if self.keep_history:
                    self.history.append(pos)
                if self.callback is not None:
                    self.callback("fov", self)
                self.maybe_checkpoint(partial_segment_iters=num_iters)
        finally:
            self._mark_dirty()
        return num_iters

    # -- the whole subvolume -------------------------------------------------------------------
    def segment_all(self, seed_policy: str | SeedPolicyFactory | SeedPolicy = "PolicyPeaks", seed_policy_args: dict | None = None) -> None:
        """Try to start a segment at every seed of ``seed_policy``, in order.

        ``seed_policy``: a resolved policy (:func:`~neuroflood.infer.seeds.resolve_seed_policy`),
        one already made for this canvas, or a policy name with ``seed_policy_args``.
        """
        if isinstance(seed_policy, SeedPolicy):
            self.seed_policy = seed_policy
        elif isinstance(seed_policy, SeedPolicyFactory):
            self.seed_policy = seed_policy(self)
        else:
            self.seed_policy = resolve_seed_policy(seed_policy, seed_policy_args)(self)
        if self._seed_policy_state is not None:
            self.seed_policy.set_state(self._seed_policy_state)
            self._seed_policy_state = None
        partial = self.partial_segment_iters
        self.partial_segment_iters = 0
        mbd = np.array(self.options.min_boundary_dist, np.int64)

        for pos in self.seed_policy:
            if not (
                self.is_valid_pos(pos, ignore_move_threshold=True)
                and self.restrictor.is_valid_pos(pos)
                and self.restrictor.is_valid_seed(pos)
            ):
                if partial:
                    raise CheckpointError(f"the checkpoint's object in flight starts at an invalid seed {pos}; delete the checkpoint")
                self.count("seed_policy_items")
                continue
            if not partial:
                # Rewound seed policy and counters from before this seed: a resumed run
                # retries it exactly as this run is about to.
                self.maybe_checkpoint(partial_segment_iters=0, rewind_seed=True)
                self.count("seed_policy_items")

            lo = np.array(pos) - mbd
            hi = np.array(pos) + mbd + 1
            box = tuple(slice(max(int(a), 0), int(b)) for a, b in zip(lo, hi))
            if np.any(self.segmentation[box] > 0) and not partial:
                self.count("rejected_boundary_dist")
                self.segmentation[pos] = -1
                continue

            self._segment_t0 = time.monotonic()
            num_iters = self.segment_at(pos, partial_segment_iters=partial)
            partial = 0
            t_seg = time.monotonic() - self._segment_t0 + self._segment_seconds_before
            self._segment_seconds_before = 0.0

            if num_iters <= 0:
                self.count("rejected_no_iterations")
                continue
            if self.seed[pos] < self.t_move:
                self.count("rejected_weak_seed")
                if self.segmentation[pos] == 0:
                    self.segmentation[pos] = -1
                continue

            # Threshold only the box the FOVs of this object touched.
            lo = np.maximum(self.min_pos - self.pred_size // 2, 0)
            hi = self.max_pos + self.pred_size // 2 + 1
            sel = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            mask = self.seed[sel] >= self.t_segment
            raw = int(np.count_nonzero(mask))
            seg = self.segmentation[sel]
            ids, counts = np.unique(seg[mask], return_counts=True)
            keep = ids > 0
            mask &= seg <= 0
            n = int(np.count_nonzero(mask))
            if n < self.options.min_segment_size:
                self.count("rejected_too_small")
                if self.segmentation[pos] == 0:
                    self.segmentation[pos] = -1
                continue

            sid = self.next_segment_id()
            seg[mask] = sid
            if self.seg_prob is not None:
                self.seg_prob[sel][mask] = quantize_probability(expit(self.seed[sel][mask]))
            self.overlaps[sid] = ([int(i) for i in ids[keep]], [int(c) for c in counts[keep]])
            self.origins[sid] = Origin(tuple(int(p) for p in pos), int(num_iters), float(t_seg))
            self.count("segments_created")
            self.count("voxels_segmented", n)
            self.count("voxels_overlapping", raw - n)
            if self.callback is not None:
                self.callback("segment", self)
            self.maybe_checkpoint(partial_segment_iters=0)

    def next_segment_id(self) -> int:
        """The smallest id above the largest one given out that no origin uses."""
        self.max_id += 1
        while self.max_id in self.origins:
            self.max_id += 1
        return self.max_id

    # -- existing segmentation -----------------------------------------------------------------
    def init_segmentation(self, segmentation: np.ndarray) -> None:
        """Start from an existing segmentation: its objects are obstacles, never overwritten.

        Ids are made contiguous (``local_to_global`` maps them back); their voxels get
        probability 1.
        """
        seg = np.asarray(segmentation)
        if seg.shape != self.shape:
            raise ValueError(f"initial segmentation has shape {seg.shape}, the canvas {self.shape}")
        ids, local = np.unique(seg, return_inverse=True)
        local = local.reshape(seg.shape)
        if ids.size and ids[0] != 0:  # keep 0 as background
            local += 1
            ids = np.concatenate([[0], ids])
        self.segmentation[...] = local
        self.local_to_global = {int(i): int(g) for i, g in enumerate(ids) if i > 0}
        if self.seg_prob is not None:
            self.seg_prob[self.segmentation > 0] = quantize_probability(np.array([1.0]))[0]
        self.max_id = int(self.segmentation.max(initial=0))

    # -- checkpoints -----------------------------------------------------------------------------
    def maybe_checkpoint(self, partial_segment_iters: int = 0, rewind_seed: bool = False) -> None:
        """Save a checkpoint if one is configured and ``checkpoint_interval`` has passed."""
        if self.checkpoint is None or self.checkpoint_interval <= 0:
            return
        if time.monotonic() - self._last_checkpoint < self.checkpoint_interval:
            return
        self.checkpoint(self, partial_segment_iters, rewind_seed or partial_segment_iters > 0)
        self._last_checkpoint = time.monotonic()

    def state_dict(self, partial_segment_iters: int = 0, rewind_seed: bool = False) -> dict[str, np.ndarray]:
        """Everything needed to resume, as plain arrays (nothing to unpickle)."""
        state: dict[str, np.ndarray] = {
            "segmentation": self.segmentation,
            "seed": self.seed,
            "min_pos": self.min_pos,
            "max_pos": self.max_pos,
            "max_id": np.array(self.max_id, np.int64),
            "partial_segment_iters": np.array(partial_segment_iters, np.int64),
            "history": np.array(self.history, np.int64).reshape(-1, 3),
            "history_deleted": np.array(self.history_deleted, np.int64),
            "origin_ids": np.array(list(self.origins), np.int64),
            "origin_start": np.array([o.start_zyx for o in self.origins.values()], np.int64).reshape(-1, 3),
            "origin_iters": np.array([o.iterations for o in self.origins.values()], np.int64),
            "origin_seconds": np.array([o.seconds for o in self.origins.values()], np.float64),
            "overlaps": np.array(json.dumps({str(k): v for k, v in self.overlaps.items()})),
            "local_to_global": np.array(json.dumps({str(k): v for k, v in self.local_to_global.items()})),
            "counters": np.array(json.dumps(self.counters)),
        }
        if partial_segment_iters:
            elapsed = time.monotonic() - self._segment_t0
            state["segment_seconds"] = np.array(self._segment_seconds_before + elapsed, np.float64)
        if self.seg_prob is not None:
            state["seg_qprob"] = self.seg_prob
        for k, v in self.movement.get_state().items():
            state[f"movement_{k}"] = v
        policy_state = self.seed_policy.get_state(rewind_seed) if self.seed_policy is not None else self._seed_policy_state
        if policy_state is not None:
            coords, idx = policy_state
            if coords is not None:
                state["seed_policy_coords"] = coords
            state["seed_policy_idx"] = np.array(idx, np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> int:
        """Restore :meth:`state_dict` output; returns the in-flight object's FOV count (or 0)."""
        self.segmentation[...] = state["segmentation"]
        self.seed[...] = state["seed"]
        self._dirty = tuple(slice(0, s) for s in self.shape)
        if self.seg_prob is not None and "seg_qprob" in state:
            self.seg_prob[...] = state["seg_qprob"]
        self.min_pos = np.array(state["min_pos"], np.int64)
        self.max_pos = np.array(state["max_pos"], np.int64)
        self.max_id = int(state["max_id"])
        self.history = [tuple(int(v) for v in p) for p in state["history"]]
        self.history_deleted = [int(v) for v in state["history_deleted"]]
        self.origins = {
            int(i): Origin(tuple(int(v) for v in s), int(n), float(t))
            for i, s, n, t in zip(state["origin_ids"], state["origin_start"], state["origin_iters"], state["origin_seconds"])
        }
        self.overlaps = {int(k): (v[0], v[1]) for k, v in json.loads(str(state["overlaps"])).items()}
        self.local_to_global = {int(k): int(v) for k, v in json.loads(str(state["local_to_global"])).items()}
        self.counters = json.loads(str(state["counters"]))
        self.movement.set_state({k[len("movement_") :]: v for k, v in state.items() if k.startswith("movement_")})
        if "seed_policy_idx" in state:
            coords = state.get("seed_policy_coords")
            self._seed_policy_state = (None if coords is None else np.asarray(coords), int(state["seed_policy_idx"]))
        self.partial_segment_iters = int(state["partial_segment_iters"])
        self._segment_seconds_before = float(state.get("segment_seconds", 0.0))
        return self.partial_segment_iters
