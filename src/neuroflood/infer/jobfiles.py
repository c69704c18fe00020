"""The files of a blockwise job, and writing them so that a killed job resumes exactly.

For an output ``ROOT.zarr/NAME``::

    ROOT.zarr/.NAME.work/request.json      what is being computed (a rerun must match)
    ROOT.zarr/.NAME.work/cores.zarr        block ids of each block's core (chunk = stride)
    ROOT.zarr/.NAME.work/blocks/I.npz      block I's segmentation of its whole box (local ids)
    ROOT.zarr/.NAME.work/blocks/I.done     JSON: block I finished (box, counters, worker)
    ROOT.zarr/.NAME.work/blocks/I.failed   JSON: block I raised (box, error); rerun redoes it
    ROOT.zarr/.NAME.work/handover/K/       hand-over round K: I.seeds.npz, I.npz (block I after
                                           the round), I.done, I.failed
    ROOT.zarr/.NAME.work/mapping.npz       block id -> global id (after reconciliation)
    ROOT.zarr/NAME                         the segmentation, sequential ids (zarr)

Every file is written atomically (:mod:`neuroflood.atomic`); a block's result is saved before
its ``.done`` marker, and a hand-over round never overwrites an earlier state, so whatever
exists after a kill is complete and a rerun redoes only what has no marker.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_savez, atomic_write_text
from ..bbox import BoundingBox
from ..distributed import DistInfo, barrier
from ..errors import DataError, VolumeError
from ..volume import Volume, create_volume, split_container
from .blocks import Block, BlockGrid
from .reconcile import encode


@dataclass
class JobPaths:
    """Where the files of the job writing ``ROOT.zarr/NAME`` are (see the module docstring)."""

    root: Path  # ROOT.zarr
    name: str  # NAME

    @classmethod
    def from_spec(cls, spec: str) -> JobPaths:
        split = split_container(spec, (".zarr",))
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

    @property
    def mapping(self) -> Path:
        return self.work / "mapping.npz"

    def done(self, i: int) -> Path:
        return self.blocks / f"{i}.done"

    def failed(self, i: int) -> Path:
        return self.blocks / f"{i}.failed"

    def block_seg(self, i: int) -> Path:
        return self.blocks / f"{i}.npz"

    def handover(self, round_: int) -> Path:
        return self.work / "handover" / str(round_)

    def handover_records(self) -> list[dict]:
        """The ``.done`` records of every hand-over round, in path order."""
        return [json.loads(p.read_text()) for p in sorted(self.work.glob("handover/*/*.done"))]


def prepare_job(paths: JobPaths, grid: BlockGrid, request: dict, info: DistInfo) -> None:
    """Create the work directory on rank 0, or check that it holds this same request."""
    if info.is_main:
        req_path = paths.work / "request.json"
        text = json.dumps(request, indent=2, sort_keys=True, default=str)
        if req_path.exists():
            old, new = json.loads(req_path.read_text()), json.loads(text)
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                # a grid of its own (e.g. the default overlap before 2026-11-30): say how to resume it
                grid_hint = "".join(
                    f"; it was made with --{key.replace('_', '-')} {','.join(map(str, old[key]))}"
                    for key in ("block_size", "overlap")
                    if key in diff and isinstance(old.get(key), list)
                )
                raise DataError(
                    f"{paths.spec} holds the output of a different request (differs in: {', '.join(diff)}{grid_hint}); "
                    "choose another --out or delete that one"
                )
        elif (paths.root / paths.name).exists():
            raise DataError(f"{paths.spec} already exists and was not made by this request; choose another --out")
        else:
            paths.blocks.mkdir(parents=True, exist_ok=True)
            create_volume(paths.cores_spec, grid.bbox.size, np.uint64, chunks=grid.stride, overwrite=True)
            atomic_write_text(req_path, text)
    barrier()


def save_block(path: Path, grid: BlockGrid, block: Block, seg: np.ndarray, cores: Volume) -> None:
    """Store a block's segmentation of its box at ``path`` and write its core's block ids."""
    seg = seg.astype(np.uint32, copy=False)
    atomic_savez(path, {"segmentation": seg})
    core_local = block.core.relative_to(block.box.start).to_slices()
    cores.write(block.core.relative_to(grid.bbox.start), encode(block.index, seg[core_local]))


def load_block(paths: JobPaths, i: int, after_round: int | None = None) -> np.ndarray:
    """Block ``i``'s segmentation after hand-over round ``after_round`` (None: the last one)."""
    rounds = sorted((int(p.name) for p in (paths.work / "handover").glob("*") if p.name.isdigit()), reverse=True)
    for k in rounds:
        if (after_round is None or k <= after_round) and (paths.handover(k) / f"{i}.done").exists():
            return np.load(paths.handover(k) / f"{i}.npz", allow_pickle=False)["segmentation"]
    return np.load(paths.block_seg(i), allow_pickle=False)["segmentation"]


def write_done(path: Path, block: Block, seg: np.ndarray, seconds: float, counters: dict, info: DistInfo, **extra: Any) -> None:
    """Mark ``block`` done at ``path`` (JSON: box, core, segments, seconds, counters, worker)."""
    atomic_write_text(
        path,
        json.dumps(
            {
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
            },
            indent=2,
            default=str,
        ),
    )


def record_failure(path: Path, block: Block, error: Exception, info: DistInfo, what: str, **extra: Any) -> dict:
    """Write ``path`` (the block's ``.failed`` JSON), say so on stderr, return the record."""
    record = {
        "block": block.index,
        "box": str(block.box),
        "error": f"{type(error).__name__}: {error}",
        "traceback": traceback.format_exc(),
        "rank": info.rank,
        **extra,
    }
    atomic_write_text(path, json.dumps(record, indent=2))
    print(f"neuroflood: {what} at {block.box} failed: {record['error']}", file=sys.stderr)
    return record


def failure_lines(failures: list[dict]) -> str:
    """The first five failures, on one line."""
    return "; ".join(f"block {f['block']} at {f['box']}: {f['error']}" for f in failures[:5])


def gather_failures(paths: JobPaths, grid: BlockGrid) -> list[dict]:
    """A record for every block without a ``.done`` marker (its ``.failed`` JSON, or "not run")."""
    out = []
    for i in range(len(grid)):
        if not paths.done(i).exists():
            p = paths.failed(i)
            out.append(json.loads(p.read_text()) if p.exists() else {"block": i, "box": str(grid[i].box), "error": "not run"})
    return out


def read_box(
    image: Volume, box: BoundingBox, context: tuple[int, ...], within: BoundingBox | None = None
) -> tuple[np.ndarray, BoundingBox]:
    """``box`` grown by ``context`` and clipped to ``image`` (and to ``within``): (its voxels, that box)."""
    grown = BoundingBox(box.start, box.size).grow(context).clip(image.shape)
    if within is not None:
        grown = grown.intersection(within) or grown
    return image.read(grown), grown


__all__ = [
    "JobPaths",
    "failure_lines",
    "gather_failures",
    "load_block",
    "prepare_job",
    "read_box",
    "record_failure",
    "save_block",
    "write_done",
]
