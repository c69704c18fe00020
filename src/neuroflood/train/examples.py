"""The per-worker FFN example generator: trajectories of FOV moves, batched.

google/ffn ``ffn/training/examples.py`` (ffn-algorithms.md §2.3-2.5) with explicit,
checkpointable state instead of Python generators. Each of a batch's B slots follows its own
trajectory through its own example:

1. a coordinate is drawn from the worker's shard (:class:`CoordinateSampler`) and its
   augmented patch read (:mod:`neuroflood.train.patches`);
2. the canvas holds ``logit(seed_pad)`` with ``logit(0.95)`` at the centre voxel;
3. the FOV policy (:mod:`neuroflood.train.policies`) picks the next offset from the current
   canvas; :meth:`ExampleGenerator.next_batch` cuts the FOVs there, the trainer runs one step
   and :meth:`ExampleGenerator.update` writes the network's logits back into the canvases;
4. when the policy is exhausted the example is scored (metrics) and the next one loaded.

Every random stream of a worker is ``SeedSequence([seed, worker, stream])``, so a worker's
examples do not depend on how many others run; :meth:`ExampleGenerator.state_dict` holds
everything needed to continue exactly. All offsets and coordinates are z, y, x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..prepare.coordfile import CoordinateShard
from ..probability import logit
from .config import TrainConfig
from .metrics import EvalTracker
from .patches import Augmentation, Patch, PatchSource
from .policies import Policy, clone_policy, make_policy

SEED_CENTRE = 0.95  # hard-coded in google/ffn's make_seed

# Independent random streams of one worker, derived from (seed, worker, stream).
STREAM_COORDS, STREAM_AUGMENT, STREAM_MOVES, STREAM_EVAL = 0, 1, 2, 3


def worker_rng(seed: int, worker: int, stream: int) -> np.random.Generator:
    """The random stream ``stream`` of worker ``worker`` (rank or emulated worker index)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(worker), int(stream)]))


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

    policy: Policy
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
        self.slots = [_Slot(policy=clone_policy(proto)) for _ in range(config.batch_size)]
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
                raise DataError(
                    "the checkpoint's example generator state does not fit this coordinate shard; resume with the same coordinates and workers"
                )
            self._start_example(slot, int(s["index"]), aug, s["canvas"].numpy().copy())
