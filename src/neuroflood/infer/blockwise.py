"""Segmenting volumes of any size on 1..N workers into one consistent segmentation.

:func:`segment_blockwise` is the library call: an FFN model, an image spec, a zarr output
``DIR.zarr/NAME`` and the blockwise options; it runs on every rank of the current launch
(torchrun, srun, mpiexec, or one process) and returns the summary on rank 0.
:func:`run_blockwise_job` is the job itself, for any :class:`BlockSegmenter`:

1. The box is split into overlapping blocks (:mod:`neuroflood.infer.blocks`); workers claim
   blocks (:mod:`neuroflood.infer.scheduler`), segment each with image context around it,
   save it, write its core's block ids and mark it done (:mod:`neuroflood.infer.jobfiles`).
   Finished blocks are skipped, so a rerun of the same job resumes.
2. Hand-over rounds (:mod:`neuroflood.infer.handover`): each block is handed seeds where its
   neighbours' objects reach into its core on voxels it left unsegmented, and floods them
   from its saved segmentation; a round's seeds are computed from the previous round's
   blocks and saved first, and each round writes its blocks to new files, so a killed
   round resumes exactly.
3. Rank 0 joins agreeing objects across the overlaps; all ranks relabel the cores into
   ``NAME`` (:mod:`neuroflood.infer.stitch`).

A block that raises is recorded and the others go on; the job then raises
:class:`BlockFailures`, and a rerun redoes only the failed blocks.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_savez
from ..bbox import BoundingBox
from ..distributed import DistInfo, barrier, sum_over_ranks
from ..errors import DataError, NeurofloodError, VolumeError
from ..volume import Volume, open_volume
from .block_segmenter import BlockSegmenter, FFNBlockSegmenter
from .block_threads import run_phase_threads
from .blocks import Block, BlockGrid, default_overlap, fov_categories
from .config import BlockwiseConfig, InferenceRequest
from .handover import MIN_HANDOVER_VOXELS, handover_seeds
from .jobfiles import (
    JobPaths,
    failure_lines,
    gather_failures,
    load_block,
    prepare_job,
    read_box,
    save_block,
    write_done,
)
from .reconcile import OverlapRule
from .scheduler import Phase
from .stitch import reconcile_blocks, write_blockwise_output

# Set by the process that launches local workers and holds their output: its workers must
# not try to take the same lock.
HELD_OUTPUT_ENV = "NEUROFLOOD_HELD_OUTPUT"


@dataclass
class BlockwiseResult:
    blocks: int
    blocks_run: list[int]
    blocks_skipped: int
    failed: list[dict] = field(default_factory=list)
    blocks_run_total: int | None = None  # over all workers (blocks_run lists this worker's)
    segments: int = 0
    joins: int = 0
    fov_evaluations: int = 0
    seconds: float = 0.0
    handover_seeds: list[int] = field(default_factory=list)  # seeds handed over, per round run
    # wall seconds of this worker per step: blocks, handover, reconcile (rank 0), output
    phase_seconds: dict[str, float] = field(default_factory=dict)


class BlockFailures(NeurofloodError):
    """Some blocks raised; the job exits non-zero after the others finished."""


def _progress_bar(total: int, desc: str, info: DistInfo, enabled: bool) -> Any:
    if not (enabled and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="block", file=sys.stderr, dynamic_ncols=True)


def cost_counters(counters: dict, block: Block, read: BoundingBox, seg: np.ndarray) -> dict:
    """A block's counters with what it cost, if the segmenter reports it: where its FOVs were
    centred (:func:`~neuroflood.infer.blocks.fov_categories` of ``fov_centres``), the FOVs
    of objects with no voxel in the core (``fov_outside_core``, from ``fov_by_object``: they
    serve only reconciliation); and the image voxels it read (``voxels_read``)."""
    counters = dict(counters)
    centres = counters.pop("fov_centres", None)
    if centres is not None:
        counters.update(fov_categories(centres, block))
    by_object = counters.pop("fov_by_object", None)
    if by_object is not None:
        in_core = set(np.unique(seg[block.core.relative_to(block.box.start).to_slices()]).tolist())
        counters["fov_outside_core"] = int(sum(n for i, n in by_object.items() if i not in in_core))
    counters["voxels_read"] = int(read.volume)
    return counters


def run_blocks(
    paths: JobPaths, grid: BlockGrid, image: Volume, segmenter: BlockSegmenter, info: DistInfo, progress: bool = True
) -> BlockwiseResult:
    """Segment every unfinished block; return what this worker did (all ranks call this)."""
    cores = open_volume(paths.cores_spec, mode="r+")
    bar = _progress_bar(len(grid), "blocks", info, progress)

    def tick() -> None:  # global progress (all workers), from the done markers on disk
        if bar is not None:
            done = [int(p.stem) for p in paths.blocks.glob("*.done")]
            bar.n = len(done)
            bar.set_postfix(voxels=f"{sum(grid[i].core.volume for i in done) / 1e6:.1f}M", refresh=False)
            bar.refresh()

    def run(block: Block) -> dict:
        t = time.time()
        data, context = read_box(image, block.box, segmenter.context, getattr(segmenter, "job_box", None))
        read_seconds, t = time.time() - t, time.time()
        seg, counters = segmenter(data, block.box.relative_to(context.start), context.start)
        if seg.shape != tuple(block.box.size):
            raise DataError(f"segmenter returned shape {seg.shape} for block of size {block.box.size}")
        counters = cost_counters(counters, block, context, seg)
        paths.failed(block.index).unlink(missing_ok=True)
        save_block(paths.block_seg(block.index), grid, block, seg, cores)
        write_done(paths.done(block.index), block, seg, time.time() - t, counters, info, read_seconds=read_seconds)
        return counters

    tick()
    t0 = time.time()
    # largest blocks first, so that workers finish together (blocks are independent: the
    # order changes who runs what, not the result)
    order = sorted(grid, key=lambda b: (-b.box.volume, b.index))
    phase = Phase(order, run, lambda b: paths.done(b.index), lambda b: paths.failed(b.index), lambda b: f"block {b.index}")
    done = run_phase_threads(phase, info, f"neuroflood/{paths.work}/claim", tick, getattr(segmenter, "concurrency", 1))
    if bar is not None:
        bar.close()
    return BlockwiseResult(
        blocks=len(grid),
        blocks_run=done.run,
        blocks_skipped=done.skipped,
        failed=done.failed,
        fov_evaluations=done.fov_evaluations,
        seconds=time.time() - t0,
    )


def run_handover_round(
    paths: JobPaths,
    grid: BlockGrid,
    image: Volume,
    segmenter: BlockSegmenter,
    info: DistInfo,
    round_: int,
    min_voxels: int = MIN_HANDOVER_VOXELS,
    progress: bool = True,
) -> tuple[int, BlockwiseResult]:
    """One hand-over round on every worker; returns (seeds handed over in all, this worker's work).

    First every block's seeds are computed from the blocks as the previous round left them
    and saved (``handover/K/I.seeds.npz``; the workers share the blocks); after a barrier,
    workers claim the blocks that were handed seeds and flood them. A block with a
    ``handover/K/I.done`` marker is skipped, so a rerun resumes the round.
    """
    folder = paths.handover(round_)
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    barrier()
    # seeds only where an FOV centred on them fits in the canvas (the Canvas refuses others):
    # in the image, and in the job's box if the segmenter keeps its canvases there
    c = getattr(segmenter, "fov_context", segmenter.context)
    limit = getattr(segmenter, "job_box", None) or BoundingBox.from_shape(image.shape)
    seed_box = BoundingBox.from_start_stop(
        [s + a for s, a in zip(limit.start, c)], [max(s + a, e - a) for s, e, a in zip(limit.start, limit.stop, c)]
    )
    for block in grid:  # seeds: a static share each, cheap next to segmenting
        target = folder / f"{block.index}.seeds.npz"
        if block.index % info.world_size == info.rank and not target.exists():
            found, sources = handover_seeds(grid, block, lambda i: load_block(paths, i, round_ - 1), min_voxels, seed_box)
            # a seed that started nothing in an earlier round would start nothing again
            tried = {
                tuple(p)
                for k in range(1, round_)
                for p in np.load(paths.handover(k) / f"{block.index}.seeds.npz", allow_pickle=False)["seeds"]
            }
            fresh = np.array([tuple(p) not in tried for p in found], bool)
            atomic_savez(target, {"seeds": found[fresh], "sources": sources[fresh]})
    barrier()
    saved = {b.index: np.load(folder / f"{b.index}.seeds.npz", allow_pickle=False) for b in grid}
    seeds = {i: f["seeds"] for i, f in saved.items()}
    handed = [i for i in range(len(grid)) if len(seeds[i])]
    if not handed:
        return 0, BlockwiseResult(blocks=0, blocks_run=[], blocks_skipped=0)
    cores = open_volume(paths.cores_spec, mode="r+")
    bar = _progress_bar(len(handed), f"hand-over {round_}", info, progress)

    def tick() -> None:
        if bar is not None:
            bar.n = sum(1 for _ in folder.glob("*.done"))
            bar.refresh()

    def run(block: Block) -> dict:
        t = time.time()
        # the canvas's image only: seeds are given, so no seed policy looks beyond it
        data, context = read_box(image, block.box, c, getattr(segmenter, "job_box", None))
        read_seconds = time.time() - t
        old = load_block(paths, block.index, round_ - 1)
        ext = segmenter.extend(  # type: ignore[attr-defined]
            data, block.box.relative_to(context.start), context.start, old, seeds[block.index]
        )
        seg, counters = ext.segmentation, cost_counters(ext.counters, block, context, ext.segmentation)
        (folder / f"{block.index}.failed").unlink(missing_ok=True)
        save_block(folder / f"{block.index}.npz", grid, block, seg, cores)
        # which neighbour's object each new object was seeded in: a join candidate
        sources = saved[block.index]["sources"]
        seeded_in = [[int(new_id), *map(int, sources[k])] for new_id, k in sorted(ext.seeded_from.items())]
        write_done(
            folder / f"{block.index}.done",
            block,
            seg,
            time.time() - t,
            counters,
            info,
            read_seconds=read_seconds,
            round=round_,
            seeds=len(seeds[block.index]),
            new_segments=len(seeded_in),
            handed=seeded_in,
            overlaps=[list(map(int, o)) for o in ext.overlaps],
        )
        return counters

    phase = Phase(
        sorted((grid[i] for i in handed), key=lambda b: (-len(seeds[b.index]), -b.box.volume, b.index)),
        run,
        lambda b: folder / f"{b.index}.done",
        lambda b: folder / f"{b.index}.failed",
        lambda b: f"hand-over round {round_}, block {b.index}",
        {"round": round_},
    )
    done = run_phase_threads(phase, info, f"neuroflood/{paths.work}/handover/{round_}", tick, getattr(segmenter, "concurrency", 1))
    if bar is not None:
        bar.close()
    barrier()
    missing = [i for i in handed if not (folder / f"{i}.done").exists()]
    if missing:
        failures = [json.loads(p.read_text()) for i in missing if (p := folder / f"{i}.failed").exists()]
        lines = failure_lines(failures) or f"blocks {missing[:5]} did not finish"
        raise BlockFailures(
            f"hand-over round {round_}: {len(missing)} of {len(handed)} blocks failed ({lines}); fix the cause and "
            "rerun the same command: finished blocks are kept"
        )
    result = BlockwiseResult(
        blocks=len(handed),
        blocks_run=done.run,
        blocks_skipped=done.skipped,
        failed=done.failed,
        fov_evaluations=done.fov_evaluations,
    )
    return int(sum(len(s) for s in seeds.values())), result


def run_blockwise_job(
    out_spec: str,
    image: Volume,
    bbox: BoundingBox,
    block_size: Sequence[int],
    overlap: Sequence[int],
    segmenter: BlockSegmenter,
    request: dict,
    info: DistInfo,
    rule: OverlapRule = OverlapRule(),
    progress: bool = True,
    handover_rounds: int = 2,
) -> BlockwiseResult:
    """The whole job: blocks, hand-over rounds, reconciliation and output. Raises if a block failed.

    ``request`` (JSON-able) identifies what is computed: a rerun with another is refused.
    ``handover_rounds``: at most this many rounds of :func:`run_handover_round` (0: none);
    they stop early when no block is handed a seed. A segmenter without ``extend`` is
    never handed seeds. Every rank of the job calls this.
    """
    if bbox.clip(image.shape) != bbox:
        raise DataError(f"bounding box {bbox} lies outside the image of shape {image.shape}; clip it")
    paths = JobPaths.from_spec(out_spec)
    grid = BlockGrid(bbox, block_size, overlap)
    if not hasattr(segmenter, "extend"):
        handover_rounds = 0
    request = {
        **request,
        "bbox": str(bbox),
        "block_size": list(grid.block_size),
        "overlap": list(grid.overlap),
        "rule": asdict(rule),
        "handover_rounds": int(handover_rounds),
    }
    prepare_job(paths, grid, request, info)
    t0 = time.time()
    result = run_blocks(paths, grid, image, segmenter, info, progress)
    barrier()
    result.phase_seconds["blocks"] = time.time() - t0
    if info.distributed:  # counts for the whole job, not just this worker
        run, result.blocks_skipped, result.fov_evaluations = sum_over_ranks(
            [len(result.blocks_run), result.blocks_skipped, result.fov_evaluations]
        )
        result.blocks_run_total = run
    failures = gather_failures(paths, grid)
    if failures:
        result.failed = failures
        raise BlockFailures(
            f"{len(failures)} of {len(grid)} blocks failed ({failure_lines(failures)}); fix the cause and rerun the "
            "same command: finished blocks are kept"
        )
    t = time.time()
    for round_ in range(1, handover_rounds + 1):
        seeds, handed = run_handover_round(paths, grid, image, segmenter, info, round_, progress=progress)
        if not seeds:
            break
        result.handover_seeds.append(seeds)
        result.fov_evaluations += sum_over_ranks([handed.fov_evaluations])[0]
    result.phase_seconds["handover"], t = time.time() - t, time.time()
    if info.is_main:
        result.segments, result.joins = reconcile_blocks(paths, grid, rule)
    barrier()
    result.phase_seconds["reconcile"], t = time.time() - t, time.time()
    write_blockwise_output(paths, grid, info, attrs={"request": json.dumps(request, default=str), "bbox": str(bbox)})
    result.phase_seconds["output"] = time.time() - t
    if info.is_main:
        result.segments = int(np.load(paths.mapping, allow_pickle=False)["global_ids"].max(initial=0))
    result.seconds = time.time() - t0
    return result


def segment_blockwise(
    model: Any,
    image: str,
    out: str,
    *,
    bbox: BoundingBox | str | None = None,
    request: InferenceRequest | dict[str, Any] | None = None,
    block_size: Sequence[int] | str | None = None,
    overlap: Sequence[int] | str | None = None,
    min_overlap_voxels: int = 50,
    min_overlap_fraction: float = 0.5,
    handover_rounds: int = 2,
    one_sided_joins: bool = False,
    progress: bool = True,
    summary_path: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """Segment the box ``bbox`` of ``image`` with the FFN ``model`` into the zarr array ``out``.

    ``model``: a model or its path (native checkpoint or google/ffn TF prefix); ``image``: a
    volume spec; ``out``: ``DIR.zarr/NAME``; ``request``: the inference request (default:
    the FIB-25 reference settings). The other options are those of :class:`BlockwiseConfig`.
    Runs on every rank of the current launch (torchrun, srun, mpiexec; one process without
    one), joining and leaving its process group; rank 0 holds the output against other runs
    and returns the summary (also written to ``summary_path``), the other ranks None.
    Rerunning the same call resumes; a finished output is left as is.
    """
    from ..distributed import cleanup, init_distributed
    from ..model import load_model
    from .executor import check_batch_memory
    from .inputs import as_request
    from .segment import hold_output, model_fingerprint, write_summary

    options = BlockwiseConfig.build(
        {
            "block_size": block_size,
            "overlap": overlap,
            "min_overlap_voxels": min_overlap_voxels,
            "min_overlap_fraction": min_overlap_fraction,
            "handover_rounds": handover_rounds,
            "one_sided_joins": one_sided_joins,
        }
    )
    request = as_request(request)
    paths = JobPaths.from_spec(out)
    target = os.path.abspath(paths.root / paths.name)
    info = init_distributed(request.device)
    held = hold_output(out, target) if info.is_main and os.environ.get(HELD_OUTPUT_ENV) != target else nullcontext()
    try:
        with held:
            if isinstance(model, (str, os.PathLike)):
                model = load_model(model)
            check_batch_memory(model, request.batch_size, request.device)
            volume = open_volume(image)
            if volume.ndim != 3:
                raise VolumeError(f"image {image} has shape {volume.shape}; segmentation needs a 3-D (z, y, x) volume")
            box = BoundingBox.parse(bbox) if isinstance(bbox, str) else (bbox or BoundingBox.from_shape(volume.shape))
            cfg = model.config
            job_request = {
                "image": os.path.abspath(image) if os.path.exists(image.split(":")[0]) else image,
                "model_sha256": model_fingerprint(model),
                "model": json.loads(cfg.model_dump_json()),
                "request": json.loads(request.model_dump_json()),
            }
            result = run_blockwise_job(
                out,
                volume,
                box,
                options.block_size or box.size,
                options.overlap or default_overlap(cfg.fov_size, cfg.deltas),
                FFNBlockSegmenter(model, request, job_box=box),
                job_request,
                info,
                OverlapRule(options.min_overlap_voxels, options.min_overlap_fraction, not options.one_sided_joins),
                progress=progress,
                handover_rounds=options.handover_rounds,
            )
            if not info.is_main:
                return None
            summary = blockwise_summary(out, image, box, result)
            write_summary(summary_path, summary)
            return summary
    finally:
        cleanup()


def blockwise_summary(out: str, image: str, bbox: BoundingBox, result: BlockwiseResult) -> dict[str, Any]:
    """The single-subvolume summary, with block counts; FOVs counted over all blocks ever run."""
    paths = JobPaths.from_spec(out)
    handover = paths.handover_records()
    blocks = [json.loads(p.read_text()) for p in sorted(paths.blocks.glob("*.done"))]
    done = blocks + handover
    fovs = int(sum(d["counters"].get("fov_evaluations", 0) for d in done))
    seconds = float(sum(d["seconds"] for d in done))
    volume = open_volume(out)
    zeros = 0
    grid = BlockGrid(bbox, [int(v) for v in json.loads((paths.work / "request.json").read_text())["block_size"]], [0, 0, 0])
    for b in grid:  # stream the output block by block
        zeros += int((volume.read(b.core.relative_to(bbox.start)) == 0).sum())
    return {
        "fov_evaluations": fovs,
        "segments": int(result.segments),
        "unsegmented_fraction": zeros / bbox.volume,
        "seconds": result.seconds,
        "segment_seconds_all_blocks": seconds,
        "seconds_per_fov": seconds / fovs if fovs else None,
        "blocks": result.blocks,
        "blocks_run": result.blocks_run_total if result.blocks_run_total is not None else len(result.blocks_run),
        "blocks_skipped": result.blocks_skipped,
        "blocks_failed": len(result.failed),
        "joins": result.joins,
        "handover_rounds": len({d["round"] for d in handover}),
        "handover_seeds": int(sum(d["seeds"] for d in handover)),
        "handover_segments": int(sum(d["new_segments"] for d in handover)),
        "cost": cost_summary(blocks, handover),
        "phase_seconds": {k: round(v, 2) for k, v in result.phase_seconds.items()},
        "image": image,
        "bbox": str(bbox),
        "out": out,
    }


def cost_summary(blocks: list[dict], handover: list[dict]) -> dict[str, float]:
    """Where a job's FOVs and image reads went, from its blocks' and hand-over rounds' records."""

    def total(records: list[dict], key: str) -> int:
        return int(sum(d["counters"].get(key, 0) for d in records))

    keys = ("fov_evaluations", "fov_core", "fov_margin", "fov_context", "fov_rejected", "fov_outside_core", "voxels_read")
    return {
        **{f"blocks_{k}": total(blocks, k) for k in keys},
        **{f"handover_{k}": total(handover, k) for k in keys},
        # rough: seconds over all workers placing the seed policy (PolicyPeaks' peaks), reading
        "blocks_seed_policy_seconds": round(sum(d["counters"].get("seed_policy_seconds", 0.0) for d in blocks), 2),
        "read_seconds": round(sum(d.get("read_seconds", 0.0) for d in blocks + handover), 2),
    }


__all__ = [
    "HELD_OUTPUT_ENV",
    "BlockFailures",
    "BlockwiseResult",
    "blockwise_summary",
    "cost_counters",
    "cost_summary",
    "run_blocks",
    "run_blockwise_job",
    "run_handover_round",
    "segment_blockwise",
]
