"""Resegmentation: run the FFN from inside each of two segments at their decision point.

google/ffn ``ffn/inference/resegmentation.py: process_point`` (ffn-algorithms.md §4.5):

1. A Canvas over the decision point ± ``radius`` (clipped to the volume: google/ffn skips
   points without that much context, which would leave pairs near the edges unmerged
   forever), holding the base segmentation with segments A and B cleared; the other
   segments stay as obstacles the FOV cannot be centred on. History is kept.
2. For A, then B: the EDT of the segment in the subvolume, zeroed within the FOV radius of
   the subvolume's faces (a seed needs a whole FOV of image); up to ``max_retry_iters``
   times: seed at the EDT maximum, zero an ``exclusion_radius`` box there, flood with
   ``segment_at``; the attempt is "recovered" when its fill (p ≥ ``segment_threshold``) holds
   at least ``segment_recovery_fraction`` of the segment, or ``min_segment_size`` voxels when
   that fraction is 0. The probability map of the last attempt is kept.
3. With ``terminate_early``, B is not flooded when A was not recovered (or, with a recovery
   fraction, when A's fill did not recover that fraction of B): the pair is not merged.

The two fills are then scored (:mod:`.scoring`) in the analysis box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import expit

from ..bbox import BoundingBox
from ..infer.canvas import Canvas
from ..infer.config import InferenceRequest
from ..infer.inputs import normalize_image
from .options import AgglomerationOptions
from .scoring import PairScore, score_pair


@dataclass
class Fill:
    """One segment's resegmentation: probabilities (NaN: never predicted), FOV centres and the
    voxels each step deleted (subvolume coordinates), the seeds tried, and whether recovered."""

    prob: np.ndarray
    moves: np.ndarray
    deleted: np.ndarray
    starts: list[tuple[int, int, int]] = field(default_factory=list)
    recovered: bool = False


def subvolume_box(point: Sequence[int], radius: Sequence[int], world: BoundingBox) -> BoundingBox | None:
    """The point ± radius, clipped to ``world`` (None if nothing is left)."""
    box = BoundingBox.from_start_stop(
        [int(p) - int(r) for p, r in zip(point, radius)], [int(p) + int(r) + 1 for p, r in zip(point, radius)]
    )
    return box.intersection(world)


def seed_distances(mask: np.ndarray, margin: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """EDT of ``mask`` with the ``margin`` next to every face zeroed (no seed there)."""
    dists = ndimage.distance_transform_edt(mask, sampling=tuple(float(v) for v in voxel_size))
    for axis, m in enumerate(margin):
        if m <= 0:
            continue
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, m), slice(-m, None)
        dists[tuple(lo)] = 0
        dists[tuple(hi)] = 0
    return dists


def next_seed(dists: np.ndarray, exclusion_radius: Sequence[int]) -> tuple[int, int, int]:
    """The EDT maximum; the ``exclusion_radius`` box around it is zeroed for later retries."""
    pos = tuple(int(v) for v in np.unravel_index(int(np.argmax(dists)), dists.shape))
    dists[tuple(slice(max(p - r, 0), p + r + 1) for p, r in zip(pos, exclusion_radius))] = 0
    return pos  # type: ignore[return-value]


def flood_segment(canvas: Canvas, mask: np.ndarray, opts: AgglomerationOptions, voxel_size: Sequence[float]) -> Fill | None:
    """Steps 2 of the module docstring for one segment; None if no seed could be placed."""
    dists = seed_distances(mask, [int(m) for m in canvas.margin], voxel_size)
    size = int(np.count_nonzero(mask))
    threshold = canvas.options.segment_threshold
    fill: Fill | None = None
    assert opts.exclusion_radius is not None
    for _ in range(opts.max_retry_iters):
        pos = next_seed(dists, opts.exclusion_radius)
        if not mask[pos]:
            continue
        canvas.segment_at(pos)
        prob = expit(canvas.seed)  # NaN stays NaN: never predicted
        fill = Fill(
            prob,
            np.array(canvas.history, np.int64).reshape(-1, 3),
            np.array(canvas.history_deleted, np.int64),
            (fill.starts if fill else []) + [pos],
        )
        got = int(np.count_nonzero((np.nan_to_num(prob) >= threshold) & mask))
        if opts.segment_recovery_fraction > 0:
            fill.recovered = got / size >= opts.segment_recovery_fraction
        else:
            fill.recovered = got >= canvas.options.min_segment_size
        if fill.recovered:
            break
    return fill


def resegment_pair(
    model: Any,
    client: Any,
    image: Any,
    seg: Any,
    world: BoundingBox,
    id_a: int,
    id_b: int,
    point: Sequence[int],
    opts: AgglomerationOptions,
    request: InferenceRequest,
) -> tuple[PairScore, dict[str, Any]]:
    """Resegment the pair (``id_a``, ``id_b``) at ``point`` (global z, y, x) and score it.

    ``image`` and ``seg`` are volumes (read lazily, only the subvolume), ``world`` the box
    the job covers, ``client`` an executor client, ``opts`` resolved options. Returns the
    scores and a record: FOV evaluations, seeds (global z, y, x), subvolume.
    """
    cfg = model.config
    assert opts.radius is not None and opts.analysis_radius is not None
    info: dict[str, Any] = {"fov_evaluations": 0, "starts_a": [], "starts_b": []}
    box = subvolume_box(point, opts.radius, world)
    if box is None or any(s < f for s, f in zip(box.size, cfg.fov_size)):
        return PairScore(status="no_context"), info
    info["subvolume"] = str(box)
    base = np.asarray(seg.read(box))
    mask_a, mask_b = base == id_a, base == id_b
    if not mask_a.any() or not mask_b.any():
        return PairScore(status="segment_absent"), info
    init = base.copy()
    init[mask_a | mask_b] = 0
    movement_args = dict(request.movement_policy_args)
    canvas = Canvas(
        normalize_image(model, image.read(box), request),
        client,
        request.options,
        fov_size=cfg.fov_size,
        deltas=tuple(movement_args.pop("deltas", cfg.deltas)),
        movement_policy=request.movement_policy,
        movement_policy_args=movement_args,
        voxel_size=request.voxel_size,
        keep_history=True,
    )
    canvas.init_segmentation(init)
    fills: list[Fill] = []
    for k, mask in enumerate((mask_a, mask_b)):
        fill = flood_segment(canvas, mask, opts, request.voxel_size)
        if fill is None:
            break
        fills.append(fill)
        info["starts_a" if k == 0 else "starts_b"] = [[int(p) + int(c) for p, c in zip(s, box.start)] for s in fill.starts]
        if opts.terminate_early and k == 0 and not _continue(fill, mask_b, opts, canvas):
            break
    info["fov_evaluations"] = int(canvas.counters.get("fov_evaluations", 0))
    if len(fills) < 2:
        return PairScore(status="no_seed" if not fills or fills[-1].recovered else "not_recovered"), info
    analysis = subvolume_box(point, opts.analysis_radius, box)
    assert analysis is not None
    rel = analysis.relative_to(box.start).to_slices()
    score = score_pair(
        fills[0].prob,
        fills[1].prob,
        base,
        id_a,
        id_b,
        rel,
        [(f.moves, f.deleted) for f in fills],
        request.voxel_size,
        opts.threshold,
    )
    score.from_a.origin = tuple(info["starts_a"][-1])
    score.from_b.origin = tuple(info["starts_b"][-1])
    return score, info


def _continue(fill: Fill, mask_b: np.ndarray, opts: AgglomerationOptions, canvas: Canvas) -> bool:
    """``terminate_early``: flood B only if A was recovered (and, with a recovery fraction,
    A's fill recovered that fraction of B)."""
    if not fill.recovered:
        return False
    if opts.segment_recovery_fraction > 0:
        got = np.count_nonzero((np.nan_to_num(fill.prob) >= canvas.options.segment_threshold) & mask_b)
        return got / max(1, int(np.count_nonzero(mask_b))) >= opts.segment_recovery_fraction
    return True


__all__ = ["Fill", "flood_segment", "next_seed", "resegment_pair", "seed_distances", "subvolume_box"]
