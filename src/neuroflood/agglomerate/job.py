"""The agglomeration job on 1..N workers: decision points, resegmentation, merging, output.

:func:`agglomerate` is the library call. Every rank of the current launch (torchrun, srun,
mpiexec, or one process) runs it:

1. The segments' sizes are counted block by block (the workers share the blocks); they
   fingerprint the segmentation, so that an output made from another one is refused.
2. Optionally (``consensus``) the base segmentation is the split consensus of SEG and a
   second segmentation (:func:`~neuroflood.infer.consensus.split_segmentation_by_intersection`,
   in memory on rank 0).
3. Decision points (:mod:`.decision_points`), block by block.
4. Pairs are grouped into jobs of ``pairs_per_job``; workers claim jobs and resegment and
   score each pair (:mod:`.resegment`, :mod:`.scoring`). Blocks and jobs are claimed, marked
   done, skipped on a rerun and reported when they fail by the scheduler of blockwise
   segmentation (:func:`~neuroflood.infer.scheduler.run_phase`).
5. Rank 0 turns scores into merges and a mapping (:mod:`.merge`); all ranks write the
   relabelled segmentation; rank 0 writes the mapping beside it and renames it into place.

The files are described in :mod:`.files`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from ..atomic import atomic_savez, atomic_write_text
from ..bbox import BoundingBox
from ..distributed import DistInfo, barrier, sum_over_ranks
from ..errors import NeurofloodError
from ..infer.blocks import Block, BlockGrid
from ..infer.executor import run_with_clients
from ..infer.jobfiles import failure_lines
from ..infer.scheduler import Phase, run_phase
from .decision_points import Candidates, DecisionPoints, block_candidates, drop_small_segments, margin_for, merge_candidates
from .files import AggPaths, missing_jobs, read_records
from .options import AgglomerationOptions
from .resegment import resegment_pair


class AgglomerationFailures(NeurofloodError):
    """Some blocks or pair jobs raised; the others finished and a rerun redoes only these."""


def _gather(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def segment_sizes(seg: Any, world: BoundingBox, block_size: tuple[int, ...], info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of every id (0 included) in ``world``; the workers share the blocks."""
    import fastremap

    ids, counts = [], []
    for block in BlockGrid(world, block_size, (0, 0, 0)):
        if block.index % info.world_size == info.rank:
            u, c = fastremap.unique(np.asarray(seg.read(block.core)), return_counts=True)
            ids.append(np.asarray(u, np.uint64))
            counts.append(np.asarray(c, np.int64))
    parts = _gather(
        (np.concatenate(ids) if ids else np.zeros(0, np.uint64), np.concatenate(counts) if counts else np.zeros(0, np.int64)), info
    )
    all_ids = np.concatenate([p[0] for p in parts])
    all_counts = np.concatenate([p[1] for p in parts])
    u, inverse = np.unique(all_ids, return_inverse=True)
    return u, np.bincount(inverse.ravel(), weights=all_counts, minlength=len(u)).astype(np.int64)


def fingerprint(ids: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    h = hashlib.sha256(np.ascontiguousarray(ids, np.uint64).tobytes())
    h.update(np.ascontiguousarray(counts, np.int64).tobytes())
    return {"sha256": h.hexdigest(), "segments": int(np.count_nonzero(ids)), "voxels": int(counts.sum())}


def _bar(total: int, desc: str, unit: str, info: DistInfo, enabled: bool) -> Any:
    if not (enabled and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


def _ticker(bar: Any, folder: Any) -> Callable[[], None]:
    def tick() -> None:  # progress of all workers, from the done markers on disk
        if bar is not None:
            bar.n = sum(1 for _ in folder.glob("*.done"))
            bar.refresh()

    return tick


def _marker(path: Any, **fields: Any) -> None:
    import socket

    atomic_write_text(path, json.dumps({**fields, "pid": os.getpid(), "host": socket.gethostname()}, indent=2, default=str) + "\n")


def _raise_missing(what: str, failures: list[dict], total: int) -> None:
    if failures:
        raise AgglomerationFailures(
            f"{len(failures)} of {total} {what} failed ({failure_lines(failures)}); fix the cause and rerun the same "
            "command: finished work is kept"
        )


def find_points(
    paths: AggPaths,
    base: Any,
    world: BoundingBox,
    opts: AgglomerationOptions,
    small: np.ndarray,
    voxel_size: Any,
    info: DistInfo,
    progress: bool,
) -> DecisionPoints:
    """Phase 3: decision-point candidates block by block, then (rank 0) one point per pair."""
    grid = BlockGrid(world, opts.block_size, (0, 0, 0))
    margin = margin_for(opts.max_distance, voxel_size)

    def run(block: Block) -> dict:
        read = block.core.grow(margin).intersection(world)
        assert read is not None
        data = drop_small_segments(np.asarray(base.read(read)), 0, small)
        cand = block_candidates(data, block.core, read.start, voxel_size, opts.max_distance)
        (paths.points / f"{block.index}.failed").unlink(missing_ok=True)
        atomic_savez(paths.points / f"{block.index}.npz", cand.arrays())
        _marker(paths.points / f"{block.index}.done", block=block.index, core=str(block.core), rows=len(cand.a), rank=info.rank)
        return {}

    bar = _bar(len(grid), "decision points", "block", info, progress)
    tick = _ticker(bar, paths.points)
    phase = Phase(
        grid,
        run,
        lambda b: paths.points / f"{b.index}.done",
        lambda b: paths.points / f"{b.index}.failed",
        lambda b: f"decision points, block {b.index}",
    )
    run_phase(phase, info, f"neuroflood/{paths.work}/points", tick)
    if bar is not None:
        bar.close()
    barrier()
    failures = [
        json.loads(p.read_text())
        if (p := paths.points / f"{b.index}.failed").exists()
        else {"block": b.index, "box": str(b.core), "error": "not run"}
        for b in grid
        if not (paths.points / f"{b.index}.done").exists()
    ]
    _raise_missing("decision-point blocks", failures, len(grid))
    if info.is_main and not paths.pairs.exists():
        cands = [Candidates.from_arrays(np.load(paths.points / f"{b.index}.npz", allow_pickle=False)) for b in grid]
        atomic_savez(paths.pairs, merge_candidates(cands, opts.min_contact).arrays())
    barrier()
    return DecisionPoints.from_arrays(np.load(paths.pairs, allow_pickle=False))


def pair_jobs(points: DecisionPoints, per_job: int) -> list[Block]:
    """Consecutive pairs grouped into jobs; a job is a :class:`Block` (index, box of its points)."""
    jobs = []
    for i in range(math.ceil(len(points) / per_job)):
        pts = points.point[i * per_job : (i + 1) * per_job]
        box = BoundingBox.from_start_stop(pts.min(axis=0).tolist(), (pts.max(axis=0) + 1).tolist())
        jobs.append(Block(i, (i, 0, 0), box, box))
    return jobs


def resegment_pairs(
    paths: AggPaths,
    points: DecisionPoints,
    model: Any,
    image: Any,
    base: Any,
    world: BoundingBox,
    opts: AgglomerationOptions,
    request: Any,
    info: DistInfo,
    progress: bool,
    on_pair: Callable[[dict], None] | None = None,
) -> dict[str, int]:
    """Phase 4: workers claim pair jobs and resegment and score every pair not yet done."""
    from ..infer.executor import make_executor

    jobs = pair_jobs(points, opts.pairs_per_job)
    run_id = uuid.uuid4().hex
    executor = None
    stats = {"pairs_run": 0, "fov_evaluations_run": 0}

    def process(k: int, client: Any) -> dict:
        t0 = time.time()
        a, b, p = int(points.id_a[k]), int(points.id_b[k]), [int(v) for v in points.point[k]]
        score, rec = resegment_pair(model, client, image, base, world, a, b, p, opts, request)
        return {
            "pair": k,
            "id_a": a,
            "id_b": b,
            "point": p,
            "dist": float(points.dist[k]),
            "contact": int(points.contact[k]),
            "score": score.to_dict(),
            **rec,
            "seconds": time.time() - t0,
            "run": run_id,
            "rank": info.rank,
            "pid": os.getpid(),
        }

    def run(job: Block) -> dict:
        nonlocal executor
        if executor is None:
            executor = make_executor(model, request.batch_size, request.device, request.precision, request.tf32)
        t0 = time.time()
        partial_path = paths.jobs / f"{job.index}.partial.json"
        done = {r["pair"]: r for r in (json.loads(partial_path.read_text())["pairs"] if partial_path.exists() else [])}
        todo = [k for k in range(job.index * opts.pairs_per_job, min(len(points), (job.index + 1) * opts.pairs_per_job)) if k not in done]
        lock = threading.Lock()
        fovs = 0

        def finish(rec: dict) -> None:
            nonlocal fovs
            with lock:
                done[rec["pair"]] = rec
                fovs += rec["fov_evaluations"]
                stats["pairs_run"] += 1
                atomic_write_text(partial_path, json.dumps({"pairs": sorted(done.values(), key=lambda r: r["pair"])}))
            if on_pair is not None:
                on_pair(rec)

        run_concurrently(todo, process, finish, executor, request.batch_size)
        (paths.jobs / f"{job.index}.failed").unlink(missing_ok=True)
        atomic_write_text(paths.jobs / f"{job.index}.json", json.dumps({"pairs": sorted(done.values(), key=lambda r: r["pair"])}))
        _marker(
            paths.jobs / f"{job.index}.done", job=job.index, pairs=len(done), fov_evaluations=fovs, seconds=time.time() - t0, rank=info.rank
        )
        partial_path.unlink(missing_ok=True)
        stats["fov_evaluations_run"] += fovs
        return {"fov_evaluations": fovs}

    bar = _bar(len(jobs), "pairs", "job", info, progress)
    phase = Phase(
        jobs, run, lambda j: paths.jobs / f"{j.index}.done", lambda j: paths.jobs / f"{j.index}.failed", lambda j: f"pair job {j.index}"
    )
    try:
        run_phase(phase, info, f"neuroflood/{paths.work}/jobs", _ticker(bar, paths.jobs))
    finally:
        if bar is not None:
            bar.close()
        if executor is not None:
            executor.close()
    barrier()
    _raise_missing("pair jobs", missing_jobs(paths, len(jobs)), len(jobs))
    run_total, fovs_total = (
        sum_over_ranks([stats["pairs_run"], stats["fov_evaluations_run"]])
        if info.distributed
        else (stats["pairs_run"], stats["fov_evaluations_run"])
    )
    return {"jobs": len(jobs), "pairs_run": int(run_total), "fov_evaluations_run": int(fovs_total)}


def run_concurrently(
    todo: list[int], process: Callable[[int, Any], dict], finish: Callable[[dict], None], executor: Any, batch_size: int
) -> None:
    """``finish(process(k, client))`` for every ``k``: in order with one client, or in
    ``2 * batch_size`` threads sharing a batching executor (a GPU fills its batches)."""
    if batch_size <= 1 or len(todo) <= 1:
        client = executor.client()
        for k in todo:
            finish(process(k, client))
        return
    clients = [executor.client() for _ in range(min(len(todo), 2 * batch_size))]
    lock = threading.Lock()  # finish() writes shared records

    def one(k: int, client: Any) -> None:
        record = process(k, client)
        with lock:
            finish(record)

    run_with_clients(todo, clients, one, name="reseg")


def decide(paths: AggPaths, n_jobs: int, opts: AgglomerationOptions) -> tuple[list[dict], np.ndarray]:
    """Every pair record and whether the rule merges it."""
    from .scoring import PairScore

    records = read_records(paths, n_jobs)
    rule = opts.rule()
    return records, np.array([rule.merge(PairScore.from_dict(r["score"])) for r in records], bool)


__all__ = ["AgglomerationFailures", "decide", "find_points", "pair_jobs", "resegment_pairs", "run_concurrently", "segment_sizes"]
