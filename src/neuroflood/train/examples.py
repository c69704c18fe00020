"""FFN training examples: patches, FOV-move policies and the per-worker example generator.

This is google/ffn ``ffn/training/examples.py`` (ffn-algorithms.md §2.3-2.5) with explicit,
checkpointable state instead of Python generators:

1. A coordinate is drawn from the worker's shard; the image, labels (and optional loss
   weights) of a patch of ``fov + 2·deltas·moves`` around it are read (49³ for FIB-25).
2. Target: the object containing the patch centre, softened to 0.95 / 0.05 (all 0.05 when the
   centre is background). Augmentation: one random permutation of the permutable axes, then
   an independent flip of each reflectable axis, identical for image, labels and weights;
   optional contrast/brightness. Image normalized ``(img − mean) / stddev`` per volume.
3. The canvas holds ``logit(seed_pad)`` with ``logit(0.95)`` at the centre voxel.
4. The FOV policy picks the next offset *from the current canvas*; the trainer runs one step
   on the FOV there and writes the network's full logits back into the canvas before the
   next decision. When the policy is exhausted the example is scored (metrics) and the next
   coordinate is loaded.
5. A batch is B independent slots, each at its own point of its own trajectory.

All offsets and coordinates are z, y, x.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..prepare.coordfile import CoordinateShard
from ..volume import Volume, open_volume
from .config import TrainConfig
from .metrics import EvalTracker

SEED_CENTRE = 0.95  # hard-coded in google/ffn's make_seed
LABEL_SOFTNESS = 0.05  # soften_labels: 0.95 inside the object, 0.05 elsewhere
Offset = tuple[int, int, int]

# Independent random streams of one worker, derived from (seed, worker, stream).
STREAM_COORDS, STREAM_AUGMENT, STREAM_MOVES, STREAM_EVAL = 0, 1, 2, 3


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def worker_rng(seed: int, worker: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of worker ``worker`` (rank or emulated worker index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(worker), int(stream)]))


# --------------------------------------------------------------------------------------------
# FOV-move policies
# --------------------------------------------------------------------------------------------


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
    return bool(canvas[c] >= threshold_logit), bool(labels[lc] >= _expit(threshold_logit))


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


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
        wanted = bool(np.any(labels[lab_window][sel] >= _expit(self.threshold)))
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

    def __init__(self, deltas: Sequence[int], fov_size: Sequence[int], threshold_logit: float, max_radius: Sequence[int], legacy: bool = False):
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
        return {"queue": [list(o) for o in self.queue], "done": [list(q) for q in sorted(self.done)], "last": list(self.last) if self.last else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = deque(tuple(int(v) for v in o) for o in state["queue"])  # type: ignore[misc]
        self.done = {tuple(float(v) for v in q) for q in state["done"]}
        self.last = tuple(int(v) for v in state["last"]) if state["last"] is not None else None  # type: ignore[assignment]


def make_policy(config: TrainConfig, rng: np.random.Generator) -> FixedPolicy | NoStepPolicy | MaxPredPolicy:
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


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """One example's augmentation: axis permutation (of z,y,x), flips, contrast, brightness."""

    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    contrast: float = 1.0
    brightness: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, config: TrainConfig) -> "Augmentation":
        """Draw in the reference's order: permutation, then one Bernoulli(½) flip per axis."""
        perm = [0, 1, 2]
        axes = list(config.permutable_axes)
        if axes:
            for a, b in zip(axes, rng.permutation(axes)):
                perm[a] = int(b)
        flips = [False, False, False]
        for a, f in zip(config.reflectable_axes, rng.random(len(config.reflectable_axes)) > 0.5):
            flips[a] = bool(f)
        contrast = float(rng.uniform(*config.contrast_factor_range)) if config.contrast_factor_range else 1.0
        brightness = float(rng.uniform(*config.brightness_factor_range)) if config.brightness_factor_range else 0.0
        return cls(tuple(perm), tuple(flips), contrast, brightness)  # type: ignore[arg-type]

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Permute, then flip; a contiguous copy."""
        a = np.transpose(a, self.permutation)
        return np.ascontiguousarray(a[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)])


@dataclass
class Patch:
    """One training patch: normalized image, soft labels, weights (float32, z,y,x)."""

    image: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


@dataclass
class _Volumes:
    name: str
    image: Volume
    labels: Volume
    weights: Volume | None
    mean: float
    stddev: float


class PatchSource:
    """Opens the image/label/weight volumes named in a coordinate file and reads patches.

    Raises :class:`DataError` for unknown volume names, image/labels shape mismatches,
    non-integer labels and coordinates too close to a volume's edge for the patch.
    """

    def __init__(self, config: TrainConfig, volume_names: Sequence[str]):
        self.patch_size = config.patch_size()
        self.config = config
        self.volumes: dict[int, _Volumes] = {}
        self._names = list(volume_names)
        self._adjust_to = config.apply_adjustment_to

    def _open(self, index: int) -> _Volumes:
        if index in self.volumes:
            return self.volumes[index]
        c = self.config
        name = self._names[index]
        if name not in c.images or name not in c.labels:
            have = ", ".join(sorted(set(c.images) & set(c.labels))) or "none"
            raise DataError(
                f"the coordinates use volume {name!r}, but no image and labels are given for it "
                f"(have: {have}); pass --image {name}=SPEC --labels {name}=SPEC"
            )
        image, labels = open_volume(c.images[name]), open_volume(c.labels[name])
        if tuple(image.shape) != tuple(labels.shape) or len(image.shape) != 3:
            raise DataError(
                f"volume {name!r}: image {c.images[name]} has shape {tuple(image.shape)} but labels "
                f"{c.labels[name]} have {tuple(labels.shape)}; give a 3-D image and labels of one shape"
            )
        if np.dtype(labels.dtype).kind not in "iu":
            raise DataError(f"labels {c.labels[name]} have dtype {labels.dtype}; give integer object ids")
        weights = None
        if name in c.loss_weights:
            weights = open_volume(c.loss_weights[name])
            if tuple(weights.shape) != tuple(image.shape):
                raise DataError(
                    f"loss weights {c.loss_weights[name]} have shape {tuple(weights.shape)}, "
                    f"the image {tuple(image.shape)}; give weights of the image's shape"
                )
            if np.dtype(weights.dtype).kind not in "biuf":
                raise DataError(f"loss weights {c.loss_weights[name]} have dtype {weights.dtype}; give real numbers (e.g. a 0/1 mask)")
        mean, std = c.image_offset_scale.get(name, (c.model.image_mean, c.model.image_stddev))
        vol = _Volumes(name, image, labels, weights, float(mean), float(std))
        self.volumes[index] = vol
        return vol

    def check(self, shard: CoordinateShard, source: str) -> None:
        """Validate every coordinate of ``shard`` (vectorized) before training starts."""
        s = np.array(self.patch_size)
        lo_margin, hi_margin = (s - 1) // 2, s // 2
        for index in np.unique(shard.volume_index):
            vol = self._open(int(index))
            centers = shard.centers[shard.volume_index == index]
            shape = np.array(vol.image.shape)
            bad = np.any((centers - lo_margin < 0) | (centers + hi_margin >= shape), axis=1)
            if bad.any():
                first = tuple(int(v) for v in centers[np.argmax(bad)])
                raise DataError(
                    f"{int(bad.sum())} of {len(centers)} coordinates in {source} for volume {vol.name!r} "
                    f"(shape {tuple(int(v) for v in shape)}) are outside it or too close to its edge for the "
                    f"{'x'.join(map(str, s))} training patch, e.g. z,y,x {first}; regenerate the coordinates "
                    f"with a margin of at least {','.join(map(str, lo_margin))}"
                )

    def load(self, center: Sequence[int], volume: int, aug: Augmentation) -> Patch:
        """Read, target, augment and normalize the patch around ``center`` (z, y, x)."""
        vol = self._open(volume)
        s = self.patch_size
        box = tuple(slice(int(c) - (n - 1) // 2, int(c) - (n - 1) // 2 + n) for c, n in zip(center, s))
        labels = np.asarray(vol.labels[box])
        centre_id = labels[tuple(n // 2 for n in s)]
        obj = (labels > 0) & (labels == centre_id)
        soft = np.where(obj, np.float32(1 - LABEL_SOFTNESS), np.float32(LABEL_SOFTNESS))
        image = np.asarray(vol.image[box], np.float32)
        if aug.contrast != 1.0 or aug.brightness != 0.0:
            adjusted = (image - image.mean()) * np.float32(aug.contrast) + image.mean() + np.float32(aug.brightness)
            if self._adjust_to == "foreground":
                adjusted = np.where(obj, adjusted, image)
            elif self._adjust_to == "background":
                adjusted = np.where(obj, image, adjusted)
            image = adjusted.astype(np.float32)
        image = (image - np.float32(vol.mean)) / np.float32(vol.stddev)
        if vol.weights is not None:
            weights = np.asarray(vol.weights[box], np.float32)
            # Checked patch by patch (the volume may be huge): a NaN or negative weight would
            # otherwise surface as a diverged loss blamed on the learning rate.
            if not (np.isfinite(weights).all() and (weights >= 0).all()):
                raise DataError(
                    f"loss weights {self.config.loss_weights[vol.name]} hold NaN, infinite or negative values in the "
                    f"patch around z,y,x {tuple(int(v) for v in center)}; loss weights must be finite and >= 0"
                )
        else:
            weights = np.ones(s, np.float32)
        if not np.isfinite(image).all():
            raise DataError(
                f"image {self.config.images[vol.name]} holds NaN or infinite values in the patch around z,y,x "
                f"{tuple(int(v) for v in center)}; give a finite image (uint8 EM)"
            )
        return Patch(aug.apply(image), aug.apply(soft), aug.apply(weights))


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------


class CoordinateSampler:
    """Endless walk over a shard, a fresh permutation per epoch (or file order)."""

    def __init__(self, n: int, rng: np.random.Generator, shuffle: bool = True):
        if n == 0:
            raise DataError("this worker's shard of the coordinate file is empty; use more coordinates or fewer workers")
        self.n, self.rng, self.shuffle = n, rng, shuffle
        self.epoch, self.pos = 0, 0
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_rng_state = self.rng.bit_generator.state
        self.order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)

    def next(self) -> int:
        if self.pos == self.n:
            self.epoch += 1
            self.pos = 0
            self._new_epoch()
        i = int(self.order[self.pos])
        self.pos += 1
        return i

    def state_dict(self) -> dict[str, Any]:
        # The permutation is recomputed from the RNG state at the epoch's start (it may be huge).
        return {"epoch": self.epoch, "pos": self.pos, "rng": self._epoch_rng_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.rng.bit_generator.state = state["rng"]
        self._new_epoch()


# --------------------------------------------------------------------------------------------
# The per-worker generator
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One batch row: a trajectory through one example."""

    policy: Any
    index: int = -1  # coordinate index in the shard
    aug: Augmentation = field(default_factory=Augmentation)
    patch: Patch | None = None
    canvas: np.ndarray | None = None
    view: tuple[slice, ...] | None = None  # the FOV of the current step inside the canvas


@dataclass
class Batch:
    """One step's inputs, ``[n, 1, z, y, x]`` float32 CPU tensors (n ≤ batch size)."""

    seed: torch.Tensor
    image: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return int(self.seed.shape[0])


class ExampleGenerator:
    """Stateful FFN example generator of one worker (a rank or an emulated worker).

    Parameters
    ----------
    config : TrainConfig
    source : PatchSource
        Opened volumes.
    shard : CoordinateShard
        This worker's coordinates (``open_coordinates(path).shard(worker, workers)``).
    tracker : EvalTracker
        Receives move statistics and finished examples.
    worker : int
        Index of this worker's random streams.
    train : bool
        ``False`` for evaluation: coordinates in file order, each used once, no augmentation;
        batches shrink when the coordinates run out.
    pin_memory : bool
        Page-lock the batch buffers (when training on a GPU).
    """

    def __init__(
        self,
        config: TrainConfig,
        source: PatchSource,
        shard: CoordinateShard,
        tracker: EvalTracker,
        worker: int = 0,
        train: bool = True,
        pin_memory: bool = False,
    ):
        self.config, self.source, self.shard, self.tracker = config, source, shard, tracker
        self.train = train
        self.fov = tuple(config.model.fov_size)
        self.patch_size = config.patch_size()
        stream = (lambda s: worker_rng(config.seed, worker, s)) if train else (lambda s: worker_rng(config.seed, 0, STREAM_EVAL + s))
        self.augment_rng = stream(STREAM_AUGMENT)
        policy_rng = stream(STREAM_MOVES) if train else worker_rng(config.seed, 0, STREAM_MOVES)
        self.sampler = CoordinateSampler(len(shard), stream(STREAM_COORDS), shuffle=train and config.shuffle_coordinates) if train else None
        self._eval_next = 0
        # One policy object per slot, all sharing the run's shuffled offset order.
        proto = make_policy(config, policy_rng)
        self.slots = [_Slot(policy=_clone_policy(proto)) for _ in range(config.batch_size)]
        b, f = config.batch_size, self.fov
        # Reused every step (no per-step allocation); pinned for fast copies to a GPU.
        self._buffers = [torch.empty((b, 1) + f, dtype=torch.float32, pin_memory=pin_memory) for _ in range(4)]
        self._active: list[int] = []

    # -- examples ------------------------------------------------------------------------------

    def _next_index(self) -> int | None:
        if self.sampler is not None:
            return self.sampler.next()
        if self._eval_next >= len(self.shard):
            return None
        self._eval_next += 1
        return self._eval_next - 1

    def _start_example(self, slot: _Slot, index: int, aug: Augmentation | None = None, canvas: np.ndarray | None = None) -> None:
        slot.index = index
        slot.aug = aug if aug is not None else (Augmentation.sample(self.augment_rng, self.config) if self.train else Augmentation())
        slot.patch = self.source.load(self.shard.centers[index], int(self.shard.volume_index[index]), slot.aug)
        if canvas is None:
            canvas = np.full(self.patch_size, logit(self.config.seed_pad), np.float32)
            canvas[tuple(n // 2 for n in self.patch_size)] = logit(SEED_CENTRE)
            slot.policy.start()
        slot.canvas = canvas

    def _finish_example(self, slot: _Slot) -> None:
        assert slot.patch is not None and slot.canvas is not None
        self.tracker.add_patch(slot.patch.labels, slot.canvas, slot.patch.weights)
        slot.patch = slot.canvas = None

    def _advance(self, slot: _Slot) -> tuple[int, int, int] | None:
        """The slot's next FOV offset, loading new examples as trajectories end."""
        while True:
            if slot.patch is None:
                index = self._next_index()
                if index is None:
                    return None
                self._start_example(slot, index)
            assert slot.patch is not None and slot.canvas is not None
            off = slot.policy.next(slot.canvas, slot.patch.labels, self.tracker)
            if off is not None:
                return off
            self._finish_example(slot)

    # -- the two calls of a training step ---------------------------------------------------

    def next_batch(self) -> Batch | None:
        """Inputs of the next step; ``None`` when an evaluation generator has run dry."""
        seed, image, labels, weights = (buf.numpy() for buf in self._buffers)
        self._active = []
        for i, slot in enumerate(self.slots):
            off = self._advance(slot)
            if off is None:
                continue
            assert slot.patch is not None and slot.canvas is not None
            start = [s // 2 - f // 2 + o for s, f, o in zip(self.patch_size, self.fov, off)]
            slot.view = tuple(slice(b, b + f) for b, f in zip(start, self.fov))
            row = len(self._active)
            seed[row, 0] = slot.canvas[slot.view]
            image[row, 0] = slot.patch.image[slot.view]
            labels[row, 0] = slot.patch.labels[slot.view]
            weights[row, 0] = slot.patch.weights[slot.view]
            self._active.append(i)
        n = len(self._active)
        if n == 0:
            return None
        batch = Batch(*(buf[:n] for buf in self._buffers))
        self.tracker.track_weights(weights[:n])
        return batch

    def update(self, logits: torch.Tensor | np.ndarray) -> None:
        """Write the step's full FOV logits ``[n, 1, z, y, x]`` back into each slot's canvas."""
        out = logits.detach().float().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float32)
        for row, i in enumerate(self._active):
            slot = self.slots[i]
            assert slot.canvas is not None and slot.view is not None
            slot.canvas[slot.view] = out[row, 0]

    # -- checkpoint state -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: RNGs, sampler, in-flight trajectories.

        Patches are re-read from their coordinate and augmentation; canvases are stored.
        Take it between steps (after :meth:`update`).
        """
        slots = []
        for slot in self.slots:
            slots.append(
                {
                    "index": slot.index if slot.patch is not None else -1,
                    "aug": [list(slot.aug.permutation), list(slot.aug.flips), slot.aug.contrast, slot.aug.brightness],
                    "canvas": torch.from_numpy(slot.canvas.copy()) if slot.canvas is not None else torch.zeros(0),
                    "policy": slot.policy.state_dict(),
                }
            )
        return {
            "augment_rng": self.augment_rng.bit_generator.state,
            "sampler": self.sampler.state_dict() if self.sampler else None,
            "slots": slots,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["slots"]) != len(self.slots):
            raise DataError(
                f"the checkpoint has {len(state['slots'])} trajectories per worker but batch_size is "
                f"{len(self.slots)}; resume with the batch size it was trained with"
            )
        self.augment_rng.bit_generator.state = state["augment_rng"]
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        for slot, s in zip(self.slots, state["slots"]):
            slot.policy.load_state_dict(s["policy"])
            if s["index"] < 0:
                slot.patch = slot.canvas = None
                continue
            perm, flips, contrast, brightness = s["aug"]
            aug = Augmentation(tuple(int(v) for v in perm), tuple(bool(v) for v in flips), float(contrast), float(brightness))  # type: ignore[arg-type]
            if not 0 <= int(s["index"]) < len(self.shard):
                raise DataError("the checkpoint's example generator state does not fit this coordinate shard; resume with the same coordinates and workers")
            self._start_example(slot, int(s["index"]), aug, s["canvas"].numpy().copy())


def _clone_policy(proto: Any) -> Any:
    """A fresh policy of the same kind and offset order (policies carry per-slot state)."""
    import copy

    p = copy.deepcopy(proto)
    p.start()
    return p
