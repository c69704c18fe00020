"""The last two steps of a blockwise job: join the blocks' objects, then write one volume.

:func:`reconcile_blocks` (rank 0) compares each block's segmentation of its margins with the
block ids its neighbours wrote into their cores, adds the joins of hand-over objects
(:mod:`neuroflood.infer.reconcile` states the rules), and saves the mapping from block ids to
sequential global ids. :func:`write_blockwise_output` (all ranks) relabels the cores through
it into ``ROOT.zarr/NAME``, written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ..atomic import atomic_savez
from ..distributed import DistInfo, barrier
from ..volume import create_volume, open_volume
from .blocks import BlockGrid
from .jobfiles import JobPaths, load_block
from .reconcile import (
    OverlapRule,
    apply_mapping,
    build_mapping,
    confirmed_pairs,
    encode,
    handover_pairs,
    inblock_pairs,
    margin_pairs,
)


def reconcile_blocks(paths: JobPaths, grid: BlockGrid, rule: OverlapRule) -> tuple[int, int]:
    """Join agreeing objects across block overlaps; save the mapping. Returns (segments, joins)."""
    cores = open_volume(paths.cores_spec)
    all_ids: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    touching: list[np.ndarray] = []
    shared: list[np.ndarray] = []
    for block in grid:
        seg = load_block(paths, block.index)
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
    records = paths.handover_records()
    handed = [
        (encode(d["block"], np.array([b]))[0], encode(a_block, np.array([a]))[0]) for d in records for b, a_block, a in d.get("handed", [])
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
    atomic_savez(paths.mapping, {"block_ids": ids, "global_ids": new})
    return int(new.max()) if len(new) else 0, int(len(agreeing))


def write_blockwise_output(paths: JobPaths, grid: BlockGrid, info: DistInfo, attrs: dict | None = None) -> None:
    """Relabel every core through the mapping into ``ROOT.zarr/NAME`` (all ranks share the work)."""
    m = np.load(paths.mapping, allow_pickle=False)
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


__all__ = ["reconcile_blocks", "write_blockwise_output"]
