"""What segments one block of a blockwise job: the interface, and the FFN Canvas behind it.

A :class:`BlockSegmenter` is called with the image around a block and returns the block's
local ids; one with ``extend`` can also continue a block from its saved segmentation and
flood hand-over seeds (:class:`Extension`). :class:`FFNBlockSegmenter` does both with the
FFN Canvas (:func:`neuroflood.infer.segment.segment_subvolume`), and places its seed policy
in the job (:meth:`neuroflood.infer.seeds.SeedPolicyFactory.in_job`) so that the blocks
propose the seeds one subvolume over the whole box would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..bbox import BoundingBox
from .handover import extension_ids
from .inputs import build_mask, normalize_image
from .movement import MovementRestrictor
from .results import SegmentationResult
from .seeds import ImageView, SeedPolicyFactory, explicit_seeds, resolve_seed_policy
from .segment import segment_subvolume
from .storage import load_origins


class BlockSegmenter(Protocol):
    """What segments one block: FFN inference in practice, anything with this shape in tests."""

    context: tuple[int, int, int]  # image margin wanted around the block, z,y,x

    def __call__(self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
        """Segment ``image[block]`` (``block`` is relative to ``image``, which includes the
        context and starts at global position ``corner``); return (local ids of the block
        region, counters)."""

    # Optional, for hand-over rounds (segmenters without it are not handed seeds):
    # extend(image, block, corner, segmentation, seeds) -> Extension continues from
    # ``segmentation`` (the block's ids, kept unchanged) and floods from ``seeds`` (global
    # z, y, x), giving new objects ids above the existing ones.


@dataclass
class Extension:
    """What a hand-over run of one block made (:meth:`FFNBlockSegmenter.extend`)."""

    segmentation: np.ndarray  # the block's ids: the old ones unchanged, new objects above them
    counters: dict
    seeded_from: dict[int, int]  # new object id -> index of the seed it started from
    # (new id, other id, voxels of the other object the new one's fill covered before it was
    # cut to free voxels, voxels of the new object, voxels of the other), within the block
    overlaps: list[tuple[int, int, int, int, int]] = field(default_factory=list)


class FFNBlockSegmenter:
    """Segments a block with the FFN Canvas.

    The Canvas covers the block plus ``fov_context`` = half the FOV on every side (clipped at
    the volume's edges and to ``job_box``), so that seeds and FOV centres can reach the
    block's faces exactly as in a single-subvolume run over ``job_box``; the result is
    cropped to the block. The request's seed policy
    is resolved once and placed in the job for each block's canvas: grid policies are
    anchored at ``job_box``'s first voxel (the volume's without one), PolicyPeaks computes its
    peaks on the image ``context_beyond_canvas`` voxels beyond the canvas, clipped to
    ``job_box`` (so ``context``, the image asked for around the block, includes that much
    more), and keeps those inside the canvas.
    """

    def __init__(self, model: Any, request: Any, job_box: BoundingBox | None = None):
        self.model = model
        self.request = request
        self.job_box = job_box
        self.seed_policy = resolve_seed_policy(request.seed_policy, request.seed_policy_args, load_origins=load_origins)
        self.fov_context = tuple(int(f) // 2 for f in model.config.fov_size)
        pad = self.seed_policy.context_beyond_canvas
        self.context = tuple(c + pad for c in self.fov_context)
        # Blocks a worker runs at once (threads of the scheduler), their FOVs batched by one
        # shared executor; 1 keeps the one-Canvas path (an executor per block, one FOV a call).
        self.concurrency = int(getattr(request, "batch_size", 1))
        self._executor: Any = None
        self._in_flight = 0
        self._lock = threading.Lock()
        self._totals = {"fovs": 0, "batches": 0, "network_seconds": 0.0}

    def _open_client(self) -> Any:
        """None at batch size 1 (the block's Canvas makes its own executor), else a lazy client
        of the worker's shared :class:`~neuroflood.infer.executor.BatchedExecutor`, started
        for the first block in flight."""
        if self.concurrency <= 1:
            return None
        with self._lock:
            if self._executor is None:
                from .executor import BatchedExecutor

                r = self.request
                self._executor = BatchedExecutor(self.model, r.batch_size, r.device, r.precision, r.tf32)
            self._in_flight += 1
            return self._executor.client(lazy=True)

    def _close_client(self, client: Any) -> None:
        """Close a block's client; the executor stops with the last block in flight (no thread
        outlives a phase)."""
        client.close()
        done = None
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                done, self._executor = self._executor, None
        if done is not None:
            done.close()
            with self._lock:
                for k in self._totals:
                    self._totals[k] += done.stats()[k]

    def stats(self) -> dict[str, Any]:
        """FOVs and network calls of the shared executors so far (zeros at batch size 1)."""
        with self._lock:
            return {**self._totals, "batch_size": self.concurrency}

    def _segment(self, image: np.ndarray, **kwargs: Any) -> tuple[SegmentationResult, np.ndarray]:
        """Run the Canvas; return its result and the centres of its FOVs (canvas z, y, x)."""
        client = self._open_client()
        centres: list[tuple[int, ...]] = []
        try:
            result = segment_subvolume(self.model, image, self.request, executor=client, callback=fov_recorder(centres), **kwargs)
        finally:
            if client is not None:
                self._close_client(client)
        return result, np.array(centres, np.int64).reshape(-1, 3)

    def canvas_box(self, image: np.ndarray, block: BoundingBox, corner: Sequence[int]) -> tuple[BoundingBox, tuple[int, ...]]:
        """The canvas box within ``image`` (the block plus half an FOV, inside the job's box)
        and its global corner."""
        box = block.grow(self.fov_context).clip(image.shape)
        if self.job_box is not None:
            # FOVs stay inside the job's box, as those of one subvolume over it: beyond it a
            # block would flood (and pay for) what the job does not ask for
            box = box.intersection(self.job_box.relative_to(corner)) or box
        return box, tuple(int(c + s) for c, s in zip(corner, box.start))

    def block_policy(self, image: np.ndarray, corner: Sequence[int], box: BoundingBox) -> SeedPolicyFactory:
        """The seed policy for the canvas ``box`` of ``image`` (which starts at global ``corner``)."""
        canvas = BoundingBox(tuple(int(c + s) for c, s in zip(corner, box.start)), box.size)

        def image_beyond() -> ImageView:
            # what one subvolume over the job's box sees of the image around this block
            seen = BoundingBox(tuple(corner), image.shape)
            if self.job_box is not None:
                seen = seen.intersection(self.job_box) or seen
            sub = image[seen.relative_to(corner).to_slices()]
            restrictor = MovementRestrictor(
                mask=build_mask(self.request.masks, sub, seen.start),
                seed_mask=build_mask(self.request.seed_masks, sub, seen.start),
            )
            return ImageView(
                normalize_image(self.model, sub, self.request),
                restrictor,
                tuple(self.request.voxel_size),
                self.fov_context,
                tuple(seen.start),
            )

        return self.seed_policy.in_job(self.job_box, canvas, image_beyond)

    def __call__(self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
        box, canvas_corner = self.canvas_box(image, block, corner)
        t = time.perf_counter()
        policy = self.block_policy(image, corner, box)  # PolicyPeaks computes its peaks here
        seed_seconds = time.perf_counter() - t
        # the corner places masks (volumes, coordinate expressions) where this block is
        result, centres = self._segment(image[box.to_slices()], corner=canvas_corner, seed_policy=policy)
        counters = {
            **counters_of(result),
            "fov_centres": centres + np.asarray(canvas_corner),
            "fov_by_object": {int(sid): o.iterations for sid, o in result.origins.items()},
            "seed_policy_seconds": seed_seconds,
        }
        return result.segmentation[block.relative_to(box.start).to_slices()], counters

    def extend(
        self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int], segmentation: np.ndarray, seeds: np.ndarray
    ) -> Extension:
        """Continue the block from ``segmentation`` and flood from ``seeds`` (global z, y, x), in order.

        The block's objects are the canvas's initial segmentation (obstacles, kept as they
        are); the seeds go through the Canvas as any seed policy's would (a seed on a
        segmented voxel, too close to one, or that the network does not believe starts no
        object). New objects get ids above the block's.
        """
        box, corner = self.canvas_box(image, block, corner)
        image, block = image[box.to_slices()], block.relative_to(box.start)
        init = np.zeros(image.shape, np.int64)
        init[block.to_slices()] = segmentation
        result, centres = self._segment(
            image,
            corner=corner,
            init_segmentation=init,
            seed_policy=explicit_seeds(seeds, corner),
        )
        canvas_ids = result.segmentation.astype(np.int64)
        lut = extension_ids(init, canvas_ids, result.local_to_global)  # canvas id -> block id
        seg = lut[canvas_ids[block.to_slices()]]
        seed_index = {tuple(int(v) for v in p): k for k, p in enumerate(np.asarray(seeds) - np.asarray(corner))}
        ids, sizes = np.unique(seg, return_counts=True)
        size = dict(zip(ids.tolist(), sizes.tolist()))

        def block_id(canvas_id: int) -> int:
            return int(lut[canvas_id])

        started = {  # only new objects have origins
            block_id(int(sid)): seed_index[tuple(origin.start_zyx)] for sid, origin in result.origins.items() if block_id(int(sid)) in size
        }
        overlaps = [  # objects with voxels in the block, not only in its context
            (new, block_id(other), count, size[new], size[block_id(other)])
            for sid, (others, counts) in result.overlaps.items()
            if (new := block_id(int(sid))) in size
            for other, count in zip(others, counts)
            if block_id(other) in size
        ]
        counters = {
            **counters_of(result),
            "fov_centres": centres + np.asarray(corner),
            "fov_by_object": {block_id(int(sid)): o.iterations for sid, o in result.origins.items()},
        }
        return Extension(seg, counters, started, overlaps)


def fov_recorder(centres: list[tuple[int, ...]]) -> Callable[[str, Any], None]:
    """A Canvas callback that appends the centre of every FOV evaluation to ``centres``.

    The Canvas records FOV positions only with ``keep_history``, which the request does not
    set; the callback turns it on at the first evaluation, which is always at the first
    object's seed (``movement.start_pos``). Recording changes nothing the Canvas computes.
    """

    def on_event(event: str, canvas: Any) -> None:
        if event != "fov":
            return
        if canvas.keep_history:
            centres.append(canvas.history[-1])
        else:
            canvas.keep_history = True
            centres.append(canvas.movement.start_pos)

    return on_event


def counters_of(result: SegmentationResult) -> dict:
    """A SegmentationResult's numeric counters, with its FOV evaluations and those spent on
    objects the Canvas then rejected (too small, weak seed: ``fov_rejected``; FOV positions,
    so with self-consistency re-runs also those of accepted objects)."""
    counters = {k: v for k, v in result.counters.items() if isinstance(v, (int, float))}
    counters["fov_evaluations"] = int(result.fov_evaluations)
    counters["fov_rejected"] = int(result.fov_evaluations) - int(sum(o.iterations for o in result.origins.values()))
    return counters


__all__ = ["BlockSegmenter", "Extension", "FFNBlockSegmenter", "counters_of"]
