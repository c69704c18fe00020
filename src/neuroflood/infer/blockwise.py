"""Segmenting volumes of any size on 1..N workers into one consistent segmentation.

The job, for an output ``ROOT.zarr/NAME``::

    ROOT.zarr/.NAME.work/request.json      what is being computed (a rerun must match)
    ROOT.zarr/.NAME.work/cores             zarr, block ids of each block's core (chunk = stride)
    ROOT.zarr/.NAME.work/blocks/I.npz      block I's segmentation of its whole box (local ids)
    ROOT.zarr/.NAME.work/blocks/I.done     JSON: block I finished (box, counters, worker)
    ROOT.zarr/.NAME.work/blocks/I.failed   JSON: block I raised (box, error); rerun redoes it
    ROOT.zarr/.NAME.work/handover/K/       hand-over round K: I.seeds.npz, I.npz (block I after
                                           the round), I.done, I.failed
    ROOT.zarr/.NAME.work/mapping.npz       block id -> global id (after reconciliation)
    ROOT.zarr/NAME                         the segmentation, sequential ids (zarr)

1. Workers claim block indices from an atomic counter in the process group's store, so a
   slow block never holds the others back; finished blocks (``.done``) are skipped, which
   makes a rerun of the same command resume.
2. Each block is segmented with image context around it (the segmenter's margin), its box
   saved, its core written into ``cores``, then its ``.done`` marker.
3. Hand-over rounds (:mod:`neuroflood.infer.handover`): each block is handed seeds where its
   neighbours' objects reach into its core on voxels it left unsegmented, and floods them
   from its saved segmentation; a round's seeds are computed from the previous round's
   blocks and saved first, and each round writes its blocks to new files, so a killed
   round resumes exactly.
4. After a barrier, rank 0 compares each block's overlap with its neighbours' cores
   (:mod:`neuroflood.infer.reconcile`), joins agreeing objects by union-find and saves the
   mapping; then all ranks relabel the cores into ``NAME``, written under a temporary name and
   renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..bbox import BoundingBox
from ..distributed import DistInfo, barrier, sum_over_ranks
from ..errors import ConfigError, DataError, NeurofloodError, VolumeError
from ..volume import Volume, _split_container, create_volume, open_volume
from .blocks import Block, BlockGrid
from .handover import MIN_HANDOVER_VOXELS, extension_ids, handover_seeds
from .reconcile import (
    OverlapRule, apply_mapping, build_mapping, confirmed_pairs, encode, handover_pairs, inblock_pairs, margin_pairs,
)


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


@dataclass
class JobPaths:
    root: Path  # ROOT.zarr
    name: str  # NAME

    @classmethod
    def from_spec(cls, spec: str) -> "JobPaths":
        split = _split_container(spec, (".zarr",))
        if not split or not split[1]:
            raise VolumeError(
                f"blockwise output {spec!r} must be a zarr array spec DIR.zarr/NAME; "
                "export to HDF5 or precomputed afterwards with `neuroflood export`"
            )
        return cls(Path(split[0]), split[1])

    @property
    def spec(self) -> str:
        return f"{self.root}/{self.name}"

    @property
    def work(self) -> Path:
        return self.root / f".{self.name.replace('/', '_')}.work"

    @property
    def blocks(self) -> Path:
        return self.work / "blocks"

    @property
    def cores_spec(self) -> str:
        return f"{self.work}/cores.zarr"

    def done(self, i: int) -> Path:
        return self.blocks / f"{i}.done"

    def failed(self, i: int) -> Path:
        return self.blocks / f"{i}.failed"

    def block_seg(self, i: int) -> Path:
        return self.blocks / f"{i}.npz"

    def handover(self, round_: int) -> Path:
        return self.work / "handover" / str(round_)


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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def prepare_job(paths: JobPaths, grid: BlockGrid, request: dict, info: DistInfo) -> None:
    """Create the work directory on rank 0, or check that it holds this same request."""
    if info.is_main:
        req_path = paths.work / "request.json"
        text = json.dumps(request, indent=2, sort_keys=True, default=str)
        if req_path.exists():
            old = json.loads(req_path.read_text())
            if old != json.loads(text):
                diff = sorted(k for k in set(old) | set(request) if old.get(k) != json.loads(text).get(k))
                raise DataError(
                    f"{paths.spec} holds the output of a different request (differs in: {', '.join(diff)}); "
                    "choose another --out or delete that one"
                )
        elif (paths.root / paths.name).exists():
            raise DataError(f"{paths.spec} already exists and was not made by this request; choose another --out")
        else:
            paths.blocks.mkdir(parents=True, exist_ok=True)
            stride = grid.stride
            create_volume(paths.cores_spec, grid.bbox.size, np.uint64, chunks=stride, overwrite=True)
            _atomic_write_text(req_path, text)
    barrier()


def _claim_blocks(n: int, info: DistInfo, key: str) -> Callable[[], int | None]:
    """A function returning the next unclaimed block index (None when all are claimed)."""
    if not info.distributed:
        it = iter(range(n))
        return lambda: next(it, None)
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()

    def claim() -> int | None:
        i = int(store.add(key, 1)) - 1
        return i if i < n else None

    return claim


def run_blocks(
    paths: JobPaths,
    grid: BlockGrid,
    image: Volume,
    segmenter: BlockSegmenter,
    info: DistInfo,
    progress: bool = True,
) -> BlockwiseResult:
    """Segment every unfinished block; return what this worker did (all ranks call this)."""
    cores = open_volume(paths.cores_spec, mode="r+")
    claim = _claim_blocks(len(grid), info, f"neuroflood/{paths.work}/claim")
    result = BlockwiseResult(blocks=len(grid), blocks_run=[], blocks_skipped=0)
    bar = _progress(grid, paths, info, progress)
    t0 = time.time()
    while (i := claim()) is not None:
        block = grid[i]
        if paths.done(i).exists():
            result.blocks_skipped += 1
            _tick(bar, grid, paths)
            continue
        try:
            counters = _segment_block(paths, grid, block, image, segmenter, cores, info)
            result.fov_evaluations += int(counters.get("fov_evaluations", 0))
            result.blocks_run.append(i)
        except Exception as e:  # one bad block must not stop the others; report it at the end
            result.failed.append(_record_failure(paths.failed(i), block, e, info, f"block {i}"))
        _tick(bar, grid, paths)
    result.seconds = time.time() - t0
    if bar is not None:
        bar.close()
    return result


def _segment_block(paths, grid: BlockGrid, block: Block, image: Volume, segmenter, cores: Volume, info) -> dict:
    context = BoundingBox(block.box.start, block.box.size).grow(segmenter.context).clip(image.shape)
    data = image.read(context)
    inner = block.box.relative_to(context.start)
    t = time.time()
    seg, counters = segmenter(data, inner, context.start)
    if seg.shape != tuple(block.box.size):
        raise DataError(f"segmenter returned shape {seg.shape} for block of size {block.box.size}")
    paths.failed(block.index).unlink(missing_ok=True)
    _save_block(paths.block_seg(block.index), grid, block, seg, cores)
    _atomic_write_text(paths.done(block.index), _done_record(block, seg, time.time() - t, counters, info))
    return counters


def _record_failure(path: Path, block: Block, error: Exception, info: DistInfo, what: str, **extra: Any) -> dict:
    """Write ``path`` (the block's ``.failed`` JSON), say so on stderr, return the record."""
    record = {
        "block": block.index,
        "box": str(block.box),
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        "rank": info.rank,
        **extra,
    }
    _atomic_write_text(path, json.dumps(record, indent=2))
    print(f"neuroflood: {what} at {block.box} failed: {record['error']}", file=sys.stderr)
    return record


def _failure_lines(failures: list[dict]) -> str:
    return "; ".join(f"block {f['block']} at {f['box']}: {f['error']}" for f in failures[:5])


def _save_block(path: Path, grid: BlockGrid, block: Block, seg: np.ndarray, cores: Volume) -> None:
    """Store a block's segmentation of its box at ``path`` and write its core's block ids."""
    seg = seg.astype(np.uint32, copy=False)
    _atomic_savez(path, segmentation=seg)
    core_local = block.core.relative_to(block.box.start).to_slices()
    cores.write(block.core.relative_to(grid.bbox.start), encode(block.index, seg[core_local]))


def _done_record(block: Block, seg: np.ndarray, seconds: float, counters: dict, info: DistInfo, **extra: Any) -> str:
    return json.dumps({
        "block": block.index,
        "box": str(block.box),
        "core": str(block.core),
        "segments": int(len(np.unique(seg)) - (1 if (seg == 0).any() else 0)),
        "seconds": seconds,
        "counters": counters,
        "rank": info.rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **extra,
    }, indent=2, default=str)


def _load_block(paths: JobPaths, i: int, after_round: int | None = None) -> np.ndarray:
    """Block ``i``'s segmentation after hand-over round ``after_round`` (None: the last one).

    Each round writes its result next to its done marker (``handover/K/I.npz``) and never
    overwrites an earlier state, so a round killed half-way is redone from the same input.
    """
    rounds = sorted((int(p.name) for p in (paths.work / "handover").glob("*") if p.name.isdigit()), reverse=True)
    for k in rounds:
        if (after_round is None or k <= after_round) and (paths.handover(k) / f"{i}.done").exists():
            return np.load(paths.handover(k) / f"{i}.npz", allow_pickle=False)["segmentation"]
    return np.load(paths.block_seg(i), allow_pickle=False)["segmentation"]


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
    # seeds only where an FOV centred on them fits in the image (the Canvas refuses others)
    c = getattr(segmenter, "fov_context", segmenter.context)
    seed_box = BoundingBox.from_start_stop(c, [max(a, n - a) for a, n in zip(c, image.shape)])
    for block in grid:  # seeds: a static share each, cheap next to segmenting
        target = folder / f"{block.index}.seeds.npz"
        if block.index % info.world_size == info.rank and not target.exists():
            found, sources = handover_seeds(grid, block, lambda i: _load_block(paths, i, round_ - 1), min_voxels, seed_box)
            # a seed that started nothing in an earlier round would start nothing again
            tried = {tuple(p) for k in range(1, round_) for p in np.load(paths.handover(k) / f"{block.index}.seeds.npz", allow_pickle=False)["seeds"]}
            fresh = np.array([tuple(p) not in tried for p in found], bool)
            _atomic_savez(target, seeds=found[fresh], sources=sources[fresh])
    barrier()
    saved = {b.index: np.load(folder / f"{b.index}.seeds.npz", allow_pickle=False) for b in grid}
    seeds = {i: f["seeds"] for i, f in saved.items()}
    handed = [i for i in range(len(grid)) if len(seeds[i])]
    result = BlockwiseResult(blocks=len(handed), blocks_run=[], blocks_skipped=0)
    if not handed:
        return 0, result
    cores = open_volume(paths.cores_spec, mode="r+")
    claim = _claim_blocks(len(handed), info, f"neuroflood/{paths.work}/handover/{round_}")
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(handed), desc=f"hand-over {round_}", unit="block", file=sys.stderr, dynamic_ncols=True)
    while (j := claim()) is not None:
        block = grid[handed[j]]
        done, failed = folder / f"{block.index}.done", folder / f"{block.index}.failed"
        if done.exists():
            result.blocks_skipped += 1
        else:
            t = time.time()
            try:
                context = block.box.grow(segmenter.context).clip(image.shape)
                old = _load_block(paths, block.index, round_ - 1)
                ext = segmenter.extend(  # type: ignore[attr-defined]
                    image.read(context), block.box.relative_to(context.start), context.start, old, seeds[block.index]
                )
                seg, counters = ext.segmentation, ext.counters
                failed.unlink(missing_ok=True)
                _save_block(folder / f"{block.index}.npz", grid, block, seg, cores)
                # which neighbour's object each new object was seeded in: a join candidate
                sources = saved[block.index]["sources"]
                seeded_in = [[int(new_id), *map(int, sources[k])] for new_id, k in sorted(ext.seeded_from.items())]
                _atomic_write_text(done, _done_record(
                    block, seg, time.time() - t, counters, info,
                    round=round_, seeds=len(seeds[block.index]), new_segments=len(seeded_in), handed=seeded_in,
                    overlaps=[list(map(int, o)) for o in ext.overlaps],
                ))
                result.fov_evaluations += int(counters.get("fov_evaluations", 0))
                result.blocks_run.append(block.index)
            except Exception as e:
                what = f"hand-over round {round_}, block {block.index}"
                result.failed.append(_record_failure(failed, block, e, info, what, round=round_))
        if bar is not None:
            bar.n = sum(1 for _ in folder.glob("*.done"))
            bar.refresh()
    if bar is not None:
        bar.close()
    barrier()
    missing = [i for i in handed if not (folder / f"{i}.done").exists()]
    if missing:
        failures = [json.loads(p.read_text()) for i in missing if (p := folder / f"{i}.failed").exists()]
        lines = _failure_lines(failures) or f"blocks {missing[:5]} did not finish"
        raise BlockFailures(
            f"hand-over round {round_}: {len(missing)} of {len(handed)} blocks failed ({lines}); fix the cause and "
            "rerun the same command: finished blocks are kept"
        )
    return int(sum(len(s) for s in seeds.values())), result


def _progress(grid: BlockGrid, paths: JobPaths, info: DistInfo, enabled: bool):
    if not (enabled and info.is_main):
        return None
    from tqdm import tqdm

    bar = tqdm(total=len(grid), desc="blocks", unit="block", file=sys.stderr, dynamic_ncols=True)
    _tick(bar, grid, paths)
    return bar


def _tick(bar, grid: BlockGrid, paths: JobPaths) -> None:
    """Show global progress (all workers) from the done markers on disk."""
    if bar is None:
        return
    done = [int(p.stem) for p in paths.blocks.glob("*.done")]
    voxels = sum(grid[i].core.volume for i in done)
    bar.n = len(done)
    bar.set_postfix(voxels=f"{voxels / 1e6:.1f}M", refresh=False)
    bar.refresh()


def gather_failures(paths: JobPaths, grid: BlockGrid) -> list[dict]:
    out = []
    for i in range(len(grid)):
        if not paths.done(i).exists():
            p = paths.failed(i)
            out.append(json.loads(p.read_text()) if p.exists() else {"block": i, "box": str(grid[i].box), "error": "not run"})
    return out


def reconcile(paths: JobPaths, grid: BlockGrid, rule: OverlapRule) -> tuple[int, int]:
    """Join agreeing objects across block overlaps; save the mapping. Returns (segments, joins)."""
    cores = open_volume(paths.cores_spec)
    all_ids: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    touching: list[np.ndarray] = []
    shared: list[np.ndarray] = []
    for block in grid:
        seg = _load_block(paths, block.index)
        own = encode(block.index, seg)
        core = block.core.relative_to(block.box.start).to_slices()
        all_ids.append(np.unique(own[core]))
        region = np.ones(own.shape, bool)
        region[core] = False
        if region.any():
            neighbour = cores.read(block.box.relative_to(grid.bbox.start))
            agree, touch, n_shared = margin_pairs(own, neighbour, region, rule)
            pairs.append(agree)
            touching.append(touch)
            shared.append(n_shared)
    none = np.zeros((0, 2), np.uint64)
    agreeing = np.concatenate(pairs) if pairs else none
    touched = np.concatenate(touching) if touching else none
    core_ids = np.concatenate(all_ids)
    if rule.both_sides:
        agreeing = confirmed_pairs(agreeing, touched, core_ids)
    # objects flooded from hand-over seeds: the neighbour objects the seeds lay in, and the
    # block's older objects their fills ran over
    records = [json.loads(p.read_text()) for p in sorted(paths.work.glob("handover/*/*.done"))]
    handed = [
        (encode(d["block"], np.array([b]))[0], encode(a_block, np.array([a]))[0])
        for d in records
        for b, a_block, a in d.get("handed", [])
    ]
    if records:
        n_shared = np.concatenate(shared) if shared else np.zeros(0, np.int64)
        ran_over = [
            (encode(d["block"], np.array([new]))[0], encode(d["block"], np.array([other]))[0])
            for d in records
            for new, other, n, *_ in d.get("overlaps", [])
            if other > 0 and n >= rule.min_overlap_voxels
        ]
        extra = [handover_pairs(np.array(handed, np.uint64), touched, n_shared, rule, np.array(ran_over, np.uint64))]
        extra += [inblock_pairs(d["block"], d.get("overlaps", []), rule) for d in records]
        agreeing = np.unique(np.concatenate([agreeing, *(np.sort(e, axis=1) for e in extra)]), axis=0)
    ids, new = build_mapping(core_ids, agreeing)
    _atomic_savez(paths.work / "mapping.npz", block_ids=ids, global_ids=new)
    return int(new.max()) if len(new) else 0, int(len(agreeing))


def write_output(paths: JobPaths, grid: BlockGrid, info: DistInfo, attrs: dict | None = None) -> None:
    """Relabel every core through the mapping into ``ROOT.zarr/NAME`` (all ranks share the work)."""
    m = np.load(paths.work / "mapping.npz", allow_pickle=False)
    ids, new = m["block_ids"], m["global_ids"]
    n = int(new.max()) if len(new) else 0
    dtype = np.uint8 if n < 2**8 else np.uint16 if n < 2**16 else np.uint32 if n < 2**32 else np.uint64
    tmp_name = f".{paths.name.replace('/', '_')}.writing"
    tmp_spec = f"{paths.root}/{tmp_name}"
    if info.is_main:
        create_volume(tmp_spec, grid.bbox.size, dtype, chunks=grid.stride, overwrite=True)
    barrier()
    out = open_volume(tmp_spec, mode="r+")
    cores = open_volume(paths.cores_spec)
    for block in grid:
        if block.index % info.world_size != info.rank:
            continue
        rel = block.core.relative_to(grid.bbox.start)
        out.write(rel, apply_mapping(cores.read(rel), ids, new, dtype))
    barrier()
    if info.is_main:
        out.set_attrs(**(attrs or {}))
        target = paths.root / paths.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(paths.root / tmp_name, target)
    barrier()


def segment_blockwise(
    out_spec: str,
    image: Volume,
    bbox: BoundingBox,
    block_size: tuple[int, int, int],
    overlap: tuple[int, int, int],
    segmenter: BlockSegmenter,
    request: dict,
    info: DistInfo,
    rule: OverlapRule = OverlapRule(),
    progress: bool = True,
    handover_rounds: int = 2,
) -> BlockwiseResult:
    """The whole job: blocks, hand-over rounds, reconciliation and output. Raises if a block failed.

    ``handover_rounds``: at most this many rounds of :func:`run_handover_round` (0: none);
    they stop early when no block is handed a seed. A segmenter without ``extend`` is
    never handed seeds.
    """
    if bbox.clip(image.shape) != bbox:
        raise DataError(f"bounding box {bbox} lies outside the image of shape {image.shape}; clip it")
    paths = JobPaths.from_spec(out_spec)
    grid = BlockGrid(bbox, block_size, overlap)
    if not hasattr(segmenter, "extend"):
        handover_rounds = 0
    request = {
        **request, "bbox": str(bbox), "block_size": list(grid.block_size), "overlap": list(grid.overlap),
        "rule": asdict(rule), "handover_rounds": int(handover_rounds),
    }
    prepare_job(paths, grid, request, info)
    t0 = time.time()
    result = run_blocks(paths, grid, image, segmenter, info, progress)
    barrier()
    if info.distributed:  # counts for the whole job, not just this worker
        run, result.blocks_skipped, result.fov_evaluations = sum_over_ranks(
            [len(result.blocks_run), result.blocks_skipped, result.fov_evaluations]
        )
        result.blocks_run_total = run
    failures = gather_failures(paths, grid)
    if failures:
        result.failed = failures
        lines = _failure_lines(failures)
        raise BlockFailures(
            f"{len(failures)} of {len(grid)} blocks failed ({lines}); fix the cause and rerun the "
            "same command: finished blocks are kept"
        )
    for round_ in range(1, handover_rounds + 1):
        seeds, handed = run_handover_round(paths, grid, image, segmenter, info, round_, progress=progress)
        if not seeds:
            break
        result.handover_seeds.append(seeds)
        result.fov_evaluations += sum_over_ranks([handed.fov_evaluations])[0]
    if info.is_main:
        result.segments, result.joins = reconcile(paths, grid, rule)
    barrier()
    write_output(paths, grid, info, attrs={"request": json.dumps(request, default=str), "bbox": str(bbox)})
    if info.is_main:
        result.segments = int(np.load(paths.work / "mapping.npz", allow_pickle=False)["global_ids"].max(initial=0))
    result.seconds = time.time() - t0
    return result


class BlockFailures(NeurofloodError):
    """Some blocks raised; the job exits non-zero after the others finished."""


@dataclass
class _SeedView:
    """What a seed policy reads of a Canvas, for an image that is not one (see seeds.py)."""

    image: np.ndarray
    restrictor: Any
    voxel_size: tuple[float, ...]
    margin: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.image.shape

    @property
    def segmentation(self) -> np.ndarray:
        return np.zeros(self.image.shape, np.int32)


# How far beyond a block's canvas PolicyPeaks looks: the reach of its edge filter (a Gaussian
# of sigma 49/6, truncated at 4 sigma), so that edges, distances and peaks inside the canvas
# are those one subvolume over the whole box would compute (for cells narrower than this).
PEAKS_CONTEXT = int(np.ceil(4 * 49 / 6))
# Up to this many voxels in the job's box, blocks draw PolicyPeaks' tie-breaking noise from the
# stream one subvolume over the box would use (at most ~10 s per block); above it, from a hash
# of the position (the same in every block, but not the one-subvolume run's).
SUBVOLUME_NOISE_VOXELS = 1 << 30


class FFNBlockSegmenter:
    """Segments a block with the FFN Canvas (:func:`neuroflood.infer.segment.segment_subvolume`).

    The Canvas covers the block plus ``fov_context`` = half the FOV on every side (clipped at
    the volume's edges), so that seeds and FOV centres can reach the block's faces exactly as
    in a single-subvolume run; the result is cropped to the block. Seeds are those one
    subvolume over the whole box would propose: grid policies are anchored at the job's first
    voxel, and PolicyPeaks computes its peaks on the image ``PEAKS_CONTEXT`` voxels beyond the
    canvas (so ``context``, the image asked for around the block, includes that much more),
    within ``job_box``, with the tie-breaking noise of one subvolume over ``job_box`` (see
    ``SUBVOLUME_NOISE_VOXELS``), and keeps those inside the canvas. Otherwise a cell cut by
    the canvas has its largest distance to an edge on the canvas border, where no peak is
    taken, and no block seeds it; and blocks that break ties differently may each leave a
    cell's peak to the other.
    """

    def __init__(
        self, model: Any, request: Any, grid_anchor: Sequence[int] | None = None, job_box: BoundingBox | None = None
    ):
        self.model = model
        self.request = request
        self.job_box = job_box
        if grid_anchor is None:
            grid_anchor = job_box.start if job_box is not None else (0, 0, 0)
        self.fov_context = tuple(int(f) // 2 for f in model.config.fov_size)
        pad = PEAKS_CONTEXT if request.seed_policy == "PolicyPeaks" else 0
        self.context = tuple(c + pad for c in self.fov_context)
        self.grid_anchor = tuple(int(v) for v in grid_anchor)  # global; the job's first voxel

    def _canvas(self, image: np.ndarray, block: BoundingBox, corner: Sequence[int]) -> tuple[BoundingBox, tuple[int, ...]]:
        """The canvas box within ``image`` (the block plus half an FOV) and its global corner."""
        box = block.grow(self.fov_context).clip(image.shape)
        return box, tuple(int(c + s) for c, s in zip(corner, box.start))

    def __call__(self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
        from .segment import segment_subvolume

        box, canvas_corner = self._canvas(image, block, corner)
        request = self._peaks_beyond_canvas(image, corner, box) or self._anchored(canvas_corner)
        # the corner places masks (volumes, coordinate expressions) where this block is
        result = segment_subvolume(self.model, image[box.to_slices()], request, corner=canvas_corner)
        return result.segmentation[block.relative_to(box.start).to_slices()], _counters(result)

    def _peaks_beyond_canvas(self, image: np.ndarray, corner: Sequence[int], box: BoundingBox) -> Any:
        """For PolicyPeaks: the request with the peaks of all of ``image`` that lie in the canvas
        ``box`` as explicit seeds, in PolicyPeaks' order (None for other policies)."""
        if self.request.seed_policy != "PolicyPeaks" or self.request.seed_policy_args:
            return None
        from .movement import MovementRestrictor
        from .seeds import SeedPolicy, distance_peaks, position_noise, subvolume_noise
        from .segment import build_mask, normalize_image

        # what one subvolume over the job's box sees of the image around this block
        seen = BoundingBox(tuple(corner), image.shape)
        job = self.job_box or seen
        seen = seen.intersection(job) or seen
        sub = image[seen.relative_to(corner).to_slices()]
        view = _SeedView(
            image=normalize_image(self.model, sub, self.request),
            restrictor=MovementRestrictor(
                mask=build_mask(self.request.masks, sub, seen.start), seed_mask=build_mask(self.request.seed_masks, sub, seen.start),
            ),
            voxel_size=tuple(self.request.voxel_size),
            margin=self.fov_context,
        )
        # every block breaks ties between equal distances as its neighbours do (so a cell's
        # peak lies in one block's canvas, not in none), with the one-subvolume run's noise
        # where that is affordable
        if self.job_box is not None and self.job_box.volume <= SUBVOLUME_NOISE_VOXELS:
            noise = subvolume_noise(job.size, seen.relative_to(job.start).start, seen.size)
        else:
            noise = position_noise(seen.start, seen.size)
        found = distance_peaks(view, SeedPolicy(view).exclusion_mask(), noise)
        peaks = np.zeros((0, 3), np.int64) if found is None else np.asarray(found, np.int64).reshape(-1, 3) + seen.start
        # as the one-subvolume run's policy filters them: its FOVs stay inside its box
        m = np.asarray(self.fov_context)
        peaks = peaks[np.all((peaks - m >= job.start) & (peaks + m < np.asarray(job.stop)), axis=1)]
        canvas = box.relative_to([-c for c in corner])  # global
        peaks = peaks[np.all((peaks >= canvas.start) & (peaks < canvas.stop), axis=1)]
        return _with_seeds(self.request, peaks, [int(c + s) for c, s in zip(corner, box.start)])

    def extend(
        self, image: np.ndarray, block: BoundingBox, corner: tuple[int, int, int], segmentation: np.ndarray, seeds: np.ndarray
    ) -> Extension:
        """Continue the block from ``segmentation`` and flood from ``seeds`` (global z, y, x), in order.

        The block's objects are the canvas's initial segmentation (obstacles, kept as they
        are); the seeds go through the Canvas as any seed policy's would (a seed on a
        segmented voxel, too close to one, or that the network does not believe starts no
        object). New objects get ids above the block's.
        """
        from .segment import segment_subvolume

        box, corner = self._canvas(image, block, corner)
        image, block = image[box.to_slices()], block.relative_to(box.start)
        init = np.zeros(image.shape, np.int64)
        init[block.to_slices()] = segmentation
        request = _with_seeds(self.request, seeds, list(corner))
        result = segment_subvolume(self.model, image, request, corner=corner, init_segmentation=init)
        canvas_ids = result.segmentation.astype(np.int64)
        lut = extension_ids(init, canvas_ids, result.local_to_global)  # canvas id -> block id
        seg = lut[canvas_ids[block.to_slices()]]
        seed_index = {tuple(int(v) for v in p): k for k, p in enumerate(np.asarray(seeds) - np.asarray(corner))}
        ids, sizes = np.unique(seg, return_counts=True)
        size = dict(zip(ids.tolist(), sizes.tolist()))

        def block_id(canvas_id: int) -> int:
            return int(lut[canvas_id])

        started = {  # only new objects have origins
            block_id(int(sid)): seed_index[tuple(origin.start_zyx)]
            for sid, origin in result.origins.items()
            if block_id(int(sid)) in size
        }
        overlaps = [  # objects with voxels in the block, not only in its context
            (new, block_id(other), count, size[new], size[block_id(other)])
            for sid, (others, counts) in result.overlaps.items()
            if (new := block_id(int(sid))) in size
            for other, count in zip(others, counts)
            if block_id(other) in size
        ]
        return Extension(seg, _counters(result), started, overlaps)

    def _anchored(self, corner: Sequence[int]) -> Any:
        """The request, with grid seeds anchored at the job's first voxel instead of the block's.

        Then every block proposes the seeds that one subvolume over the whole box would, and
        where the blocks overlap they propose the same ones.
        """
        request = self.request
        if request.seed_policy not in ("PolicyGrid3d", "PolicyGrid2d") or "origin" in request.seed_policy_args:
            return request
        origin = [a - c for a, c in zip(self.grid_anchor, corner)]
        return request.model_copy(update={"seed_policy_args": {**request.seed_policy_args, "origin": origin}})


def _with_seeds(request: Any, seeds: np.ndarray, canvas_corner: Sequence[int]) -> Any:
    """``request`` seeding exactly at ``seeds`` (global z, y, x), in their order.

    PolicyInvertOrigins tries origins by id, descending: id n is the first seed.
    """
    n = len(seeds)
    origins = {n - k: tuple(int(v) for v in seed) for k, seed in enumerate(seeds)}
    return request.model_copy(update={
        "seed_policy": "PolicyInvertOrigins", "seed_policy_args": {"origins": origins, "corner": list(canvas_corner)},
    })


def _counters(result: Any) -> dict:
    """A SegmentationResult's numeric counters, with its FOV evaluations."""
    counters = {k: v for k, v in result.counters.items() if isinstance(v, (int, float))}
    counters["fov_evaluations"] = int(result.fov_evaluations)
    return counters


# ----------------------------------------------------------------------------------------
# Command line: `neuroflood segment … --block-size Z,Y,X [--overlap] [--nproc-per-node N]`
# ----------------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    """The blockwise options of ``neuroflood segment``."""
    g = parser.add_argument_group(
        "large volumes",
        "With --block-size the box is split into overlapping blocks, segmented on 1..N workers "
        "and reconciled into one segmentation with sequential ids; --out must be DIR.zarr/NAME. "
        "Rerunning the same command resumes: finished blocks are kept.",
    )
    g.add_argument("--block-size", default=None, metavar="Z,Y,X", help="block size (default: the whole box is one block)")
    g.add_argument(
        "--overlap", default=None, metavar="Z,Y,X",
        help="overlap of neighbouring blocks (default: 2*(fov//2 + delta), e.g. 48 for FIB-25)",
    )
    g.add_argument("--nproc-per-node", type=int, default=None, help="start this many local workers (torchrun)")
    g.add_argument("--min-overlap-voxels", type=int, default=OverlapRule.min_overlap_voxels, help="join objects of neighbouring blocks that share at least this many voxels ...")
    g.add_argument(
        "--min-overlap-fraction", type=float, default=OverlapRule.min_overlap_fraction,
        help="... and at least this fraction of the smaller one's voxels in the overlap",
    )
    g.add_argument(
        "--handover-rounds", type=int, default=2, metavar="N",
        help="rounds in which each block floods the objects its neighbours carry into its core (default 2; 0: none)",
    )
    g.add_argument(
        "--one-sided-joins", action="store_true",
        help="join objects on one block's word (default: the other block must see them touch in its margin, so that one leaky fill cannot merge two neurons)",
    )


def wants_blockwise(args: Any) -> bool:
    return bool(args.block_size or args.nproc_per_node)


def check_arguments(args: Any) -> None:
    """Refuse bad blockwise options before a model is loaded or a worker started."""
    from ..config import parse_ints

    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node} must be >= 1 (local workers)")
    if args.block_size:
        block = parse_ints(args.block_size, 3, "--block-size")
        if min(block) < 1:
            raise ConfigError(f"--block-size {args.block_size} must be positive on every axis (z,y,x), e.g. 128,128,128")
    if args.overlap and min(parse_ints(args.overlap, 3, "--overlap")) < 0:
        raise ConfigError(f"--overlap {args.overlap} must be >= 0 on every axis (z,y,x)")
    if not 0 < args.min_overlap_fraction <= 1:  # NaN fails too
        raise ConfigError(f"--min-overlap-fraction {args.min_overlap_fraction} must be a fraction in (0, 1], e.g. 0.5")
    if args.min_overlap_voxels < 1:
        raise ConfigError(f"--min-overlap-voxels {args.min_overlap_voxels} must be >= 1")
    if args.handover_rounds < 0:
        raise ConfigError(f"--handover-rounds {args.handover_rounds} must be 0 (none) or more")
    if wants_blockwise(args):
        JobPaths.from_spec(args.out)


# Set by the process that launches local workers and holds their output: its workers must
# not try to take the same lock (see run_cli).
HELD_OUTPUT_ENV = "NEUROFLOOD_HELD_OUTPUT"


def run_cli(args: Any, request: Any) -> int:
    """``neuroflood segment`` with --block-size and/or --nproc-per-node."""
    from ..config import parse_ints
    from ..distributed import cleanup, init_distributed, launch_local, strip_launch_args
    from ..model import load_model
    from .executor import check_batch_memory
    from .segment import _write_summary, hold_output, model_fingerprint

    check_arguments(args)
    paths = JobPaths.from_spec(args.out)
    target = os.path.abspath(paths.root / paths.name)
    # One writer per output: the launcher holds it for its workers; a rank-0 started by
    # another launcher (torchrun, srun) takes it itself.
    if args.nproc_per_node and "LOCAL_RANK" not in os.environ:
        with hold_output(args.out, target):
            os.environ[HELD_OUTPUT_ENV] = target
            try:
                return launch_local(args.nproc_per_node, strip_launch_args(args.argv), threads_per_worker=args.threads, sigterm_exit=143)
            finally:
                os.environ.pop(HELD_OUTPUT_ENV, None)
    info = init_distributed(request.device if request.device != "auto" else "auto")
    held = hold_output(args.out, target) if info.is_main and os.environ.get(HELD_OUTPUT_ENV) != target else nullcontext()
    try:  # (torch threads were set once by the command before this)
        with held:
            model = load_model(args.model)
            check_batch_memory(model, request.batch_size, request.device)
            image = open_volume(args.image)
            if image.ndim != 3:
                raise VolumeError(f"image {args.image} has shape {image.shape}; segmentation needs a 3-D (z, y, x) volume")
            bbox = BoundingBox.parse(args.bbox) if args.bbox else BoundingBox.from_shape(image.shape)
            cfg = model.config
            block = parse_ints(args.block_size, 3, "--block-size") if args.block_size else bbox.size
            overlap = (
                parse_ints(args.overlap, 3, "--overlap")
                if args.overlap
                else tuple(2 * (f // 2 + d) for f, d in zip(cfg.fov_size, cfg.deltas))
            )
            job_request = {
                "image": os.path.abspath(args.image) if os.path.exists(args.image.split(":")[0]) else args.image,
                "model_sha256": model_fingerprint(model),
                "model": json.loads(cfg.model_dump_json()),
                "request": json.loads(request.model_dump_json()),
            }
            result = segment_blockwise(
                args.out, image, bbox, block, overlap, FFNBlockSegmenter(model, request, job_box=bbox), job_request, info,
                OverlapRule(args.min_overlap_voxels, args.min_overlap_fraction, not args.one_sided_joins), progress=not args.no_progress,
                handover_rounds=args.handover_rounds,
            )
            if info.is_main:
                summary = _summary(args, bbox, result)
                if args.summary:
                    _write_summary(args.summary, summary)
                print(
                    f"{summary['segments']} segments, {summary['fov_evaluations']} FOV evaluations in "
                    f"{summary['blocks']} blocks ({summary['blocks_run']} run, {summary['blocks_skipped']} kept), "
                    f"{100 * summary['unsegmented_fraction']:.1f}% unsegmented, {summary['seconds']:.1f} s -> {args.out}"
                )
            return 0
    finally:
        cleanup()


def _summary(args: Any, bbox: BoundingBox, result: BlockwiseResult) -> dict:
    """The single-subvolume summary, with block counts; FOVs counted over all blocks ever run."""
    paths = JobPaths.from_spec(args.out)
    done = [json.loads(p.read_text()) for p in sorted(paths.blocks.glob("*.done"))]
    handover = [json.loads(p.read_text()) for p in sorted(paths.work.glob("handover/*/*.done"))]
    done += handover
    fovs = int(sum(d["counters"].get("fov_evaluations", 0) for d in done))
    seconds = float(sum(d["seconds"] for d in done))
    out = open_volume(args.out)
    zeros = 0
    grid = BlockGrid(bbox, [int(v) for v in json.loads((paths.work / "request.json").read_text())["block_size"]], [0, 0, 0])
    for b in grid:  # stream the output block by block
        zeros += int((out.read(b.core.relative_to(bbox.start)) == 0).sum())
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
        "image": args.image,
        "bbox": str(bbox),
        "out": args.out,
    }
