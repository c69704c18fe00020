"""``agglomerate(model, image, seg, out)``: the library call behind ``neuroflood agglomerate``.

It checks the inputs before anything is written, holds the output against a second run,
runs the phases of :mod:`.job` and writes the result (:mod:`.files`): the agglomerated
segmentation ``ROOT.zarr/NAME``, and beside it ``NAME.agglomeration/`` with the mapping,
every pair's scores and decision, and the summary.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np

from ..atomic import atomic_savez, atomic_write_text, remove_tree
from ..bbox import BoundingBox
from ..distributed import DistInfo, barrier, sum_over_ranks
from ..errors import DataError, VolumeError
from ..infer.blocks import BlockGrid
from .files import AggPaths, finished, prepare_work, save_pairs_table
from .job import decide, find_points, fingerprint, resegment_pairs, segment_sizes
from .merge import build_mapping, fill_holes_in_block, relabel
from .options import AgglomerationOptions


def open_inputs(image: str, seg: str, consensus: str | None, bbox: BoundingBox | str | None) -> tuple[Any, Any, Any, BoundingBox]:
    """Open and check the image, the segmentation (and the consensus partner) and the box."""
    from ..volume import open_volume

    seg_vol = open_volume(seg)
    img_vol = open_volume(image)
    if seg_vol.ndim != 3:
        raise VolumeError(f"segmentation {seg} has shape {seg_vol.shape}; agglomeration needs a 3-D (z, y, x) label volume")
    if np.dtype(seg_vol.dtype).kind not in "iu":
        raise DataError(f"segmentation {seg} has dtype {seg_vol.dtype}, not integer ids; give a label volume")
    if tuple(img_vol.shape) != tuple(seg_vol.shape):
        raise DataError(
            f"segmentation {seg} has shape {tuple(seg_vol.shape)} but the image {image} {tuple(img_vol.shape)}; give the segmentation of this image"
        )
    seg2 = None
    if consensus:
        seg2 = open_volume(consensus)
        if tuple(seg2.shape) != tuple(seg_vol.shape) or np.dtype(seg2.dtype).kind not in "iu":
            raise DataError(
                f"--consensus {consensus} has shape {tuple(seg2.shape)} ({seg2.dtype}); give an integer segmentation of shape {tuple(seg_vol.shape)}"
            )
    full = BoundingBox.from_shape(seg_vol.shape)
    world = BoundingBox.parse(bbox) if isinstance(bbox, str) else (bbox or full)
    if world.intersection(full) != world or world.is_empty():
        raise DataError(f"--bbox {world} is outside the segmentation of shape {tuple(seg_vol.shape)} (z,y,x); choose a box inside it")
    return img_vol, seg_vol, seg2, world


def make_consensus(paths: AggPaths, seg: Any, seg2: Any, world: BoundingBox, min_size: int, info: DistInfo) -> Any:
    """Rank 0: the split consensus of ``seg`` and ``seg2`` over ``world`` (in memory), saved once."""
    from ..infer.consensus import split_segmentation_by_intersection
    from ..volume import open_volume, write_volume

    done = paths.work / "consensus.done"
    if info.is_main and not done.exists():
        base = split_segmentation_by_intersection(seg.read(world), seg2.read(world), min_size)
        # the base keeps the global coordinates of SEG: a box outside ``world`` is never read
        full = np.zeros(tuple(seg.shape), np.uint64) if world != BoundingBox.from_shape(seg.shape) else None
        if full is not None:
            full[world.to_slices()] = base
            base = full
        write_volume(paths.consensus_spec, base, chunks=(64, 64, 64), overwrite=True)
        atomic_write_text(done, json.dumps({"segments": int(len(np.unique(base)) - 1)}) + "\n")
    barrier()
    return open_volume(paths.consensus_spec)


def write_output(
    paths: AggPaths,
    base: Any,
    world: BoundingBox,
    segment_ids: np.ndarray,
    neuron_ids: np.ndarray,
    opts: AgglomerationOptions,
    info: DistInfo,
    attrs: dict,
) -> int:
    """All ranks relabel their share of blocks into a temporary array; rank 0 renames it to
    ``ROOT.zarr/NAME``. Returns the voxels filled as holes (over all ranks)."""
    from ..volume import create_volume, open_volume

    dtype = np.dtype(base.dtype) if np.dtype(base.dtype).kind == "u" else np.dtype(np.uint64)
    grid = BlockGrid(world, opts.block_size, (0, 0, 0))
    if info.is_main:
        create_volume(paths.writing, world.size, dtype, chunks=grid.block_size, overwrite=True)
    barrier()
    out = open_volume(paths.writing, mode="r+")
    filled = 0
    for block in grid:
        if block.index % info.world_size != info.rank:
            continue
        if opts.fill_holes > 0:
            read = block.core.grow(opts.fill_holes + 1).intersection(world)
            assert read is not None
            data = relabel(np.asarray(base.read(read)), segment_ids, neuron_ids)
            data, n = fill_holes_in_block(np.array(data), read, block.core, opts.fill_holes)
            filled += n
        else:
            data = relabel(np.asarray(base.read(block.core)), segment_ids, neuron_ids)
        out.write(block.core.relative_to(world.start), data.astype(dtype, copy=False))
    barrier()
    filled = sum_over_ranks([filled])[0] if info.distributed else filled
    if info.is_main:
        out.set_attrs(**attrs)
        if paths.out.exists():
            remove_tree(paths.out)
        os.replace(paths.writing, paths.out)
    barrier()
    return int(filled)


def agglomerate(
    model: Any,
    image: str,
    seg: str,
    out: str,
    *,
    bbox: BoundingBox | str | None = None,
    request: Any = None,
    options: AgglomerationOptions | None = None,
    consensus: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    summary_path: str | os.PathLike | None = None,
    on_pair: Callable[[dict], None] | None = None,
) -> dict[str, Any] | None:
    """Agglomerate the segmentation ``seg`` of ``image`` with the FFN ``model`` into ``out``.

    ``model``: a model or its path; ``image``, ``seg``: volume specs of one shape; ``out``:
    ``DIR.zarr/NAME``; ``request``: the inference request (default: FIB-25 reference
    settings); ``options``: :class:`AgglomerationOptions`; ``consensus``: a second
    segmentation to split ``seg`` by first; ``on_pair(record)`` is called after each pair.
    Runs on every rank of the current launch; rank 0 returns the summary (and writes it to
    ``summary_path``), other ranks None. Rerunning resumes; a finished output is left as is.
    """
    from ..distributed import cleanup, init_distributed
    from ..infer.blockwise import HELD_OUTPUT_ENV
    from ..infer.inputs import as_request
    from ..infer.segment import hold_output, model_fingerprint, write_summary
    from ..model import load_model

    options = options or AgglomerationOptions()
    options.check()
    request = as_request(request)
    paths = AggPaths.from_spec(out)
    info = init_distributed(request.device)
    target = os.path.abspath(paths.out)
    held = hold_output(out, target) if info.is_main and os.environ.get(HELD_OUTPUT_ENV) != target else nullcontext()
    t0 = time.time()
    try:
        with held:
            img_vol, seg_vol, seg2, world = open_inputs(image, seg, consensus, bbox)
            if isinstance(model, (str, os.PathLike)):
                model = load_model(model)
            opts = options.resolved(model.config.fov_size, model.config.deltas)
            ids, counts = segment_sizes(seg_vol, world, opts.block_size, info)
            if not np.any(ids != 0):
                raise DataError(f"segmentation {seg} has no segments in {world} (every voxel is 0); give a segmentation with segments")
            key = {
                "image": _abs(image),
                "segmentation": _abs(seg),
                "consensus": _abs(consensus) if consensus else None,
                "bbox": str(world),
                "model_sha256": model_fingerprint(model),
                "model": json.loads(model.config.model_dump_json()),
                "request": json.loads(request.model_dump_json()),
                "options": opts.resegmentation_key(),
            }
            merge_key = opts.merge_key()
            if info.is_main:
                prior = finished(paths)
                if prior is not None and prior.get("merge") == json.loads(json.dumps(merge_key)) and not overwrite:
                    prepare_work(paths, key, fingerprint(ids, counts), overwrite=False)  # refuses another SEG/request
                    summary = {**prior["summary"], "skipped": True}
                    write_summary(summary_path, summary)
                    skip = True
                else:
                    if prior is not None and not overwrite:
                        raise DataError(
                            f"{paths.spec} holds an agglomeration with other merge options; choose another --out, or --overwrite to redo the merging"
                        )
                    prepare_work(paths, key, fingerprint(ids, counts), overwrite)
                    skip = False
            else:
                skip = False
            skip = bool(sum_over_ranks([int(skip)])[0]) if info.distributed else skip
            if skip:
                return summary if info.is_main else None
            base = make_consensus(paths, seg_vol, seg2, world, opts.consensus_min_size, info) if seg2 is not None else seg_vol
            if seg2 is not None:
                ids, counts = segment_sizes(base, world, opts.block_size, info)
            small = ids[(counts < opts.min_segment_size) & (ids != 0)]
            points = find_points(paths, base, world, opts, small, request.voxel_size, info, progress)
            work = resegment_pairs(paths, points, model, img_vol, base, world, opts, request, info, progress, on_pair)
            summary = None
            if info.is_main:
                records, merged = decide(paths, work["jobs"], opts)
                pairs = np.array([[r["id_a"], r["id_b"]] for r in records], np.uint64).reshape(-1, 2)
                seg_ids, neuron_ids = build_mapping(ids, pairs[merged])
                atomic_savez(paths.work / "mapping.npz", {"segment_ids": seg_ids, "neuron_ids": neuron_ids})
            barrier()
            m = np.load(paths.work / "mapping.npz", allow_pickle=False)
            attrs = {"agglomerated_from": _abs(seg), "bbox": str(world)}
            filled = write_output(paths, base, world, m["segment_ids"], m["neuron_ids"], opts, info, attrs)
            if info.is_main:
                summary = _summary(records, merged, m["segment_ids"], m["neuron_ids"], work, filled, time.time() - t0, out, len(points))
                paths.result.mkdir(parents=True, exist_ok=True)
                atomic_savez(paths.mapping, {"segment_ids": m["segment_ids"], "neuron_ids": m["neuron_ids"]})
                save_pairs_table(paths.result / "pairs.npz", records, merged)
                report = {"request": key, "merge": merge_key, "summary": summary}
                atomic_write_text(paths.report, json.dumps(report, indent=2, default=str) + "\n")
                write_summary(summary_path, summary)
            return summary
    finally:
        cleanup()


def _summary(
    records: list[dict],
    merged: np.ndarray,
    seg_ids: np.ndarray,
    neuron_ids: np.ndarray,
    work: dict,
    filled: int,
    seconds: float,
    out: str,
    n_pairs: int,
) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["score"]["status"]] = statuses.get(r["score"]["status"], 0) + 1
    fovs = int(sum(r["fov_evaluations"] for r in records))
    return {
        "pairs": int(n_pairs),
        "merges": int(merged.sum()),
        "fov_evaluations": fovs,
        "fov_evaluations_per_pair": fovs / n_pairs if n_pairs else 0.0,
        "seconds": seconds,
        "pair_seconds": float(sum(r["seconds"] for r in records)),
        "segments": int(len(seg_ids)),
        "neurons": int(len(np.unique(neuron_ids))),
        "pairs_run": work["pairs_run"],
        "pairs_kept": int(n_pairs - work["pairs_run"]),
        "jobs": work["jobs"],
        "statuses": statuses,
        "filled_voxels": filled,
        "out": out,
    }


def _abs(spec: str) -> str:
    return os.path.abspath(spec) if os.path.exists(spec.split(":")[0]) else spec


__all__ = ["agglomerate", "make_consensus", "open_inputs", "write_output"]
