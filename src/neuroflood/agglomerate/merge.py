"""From merge decisions to neurons: union-find, the mapping, and the relabelled volume.

* :func:`build_mapping` joins every merged pair (union-find, as connected components of the
  merge graph); each set of segments becomes one neuron whose id is the **smallest segment id
  of the set**, so the mapping does not depend on the order of decisions, and segments that
  were not merged keep their ids.
* :func:`relabel` applies the mapping to a block (fastremap).
* :func:`fill_holes` fills enclosed unsegmented components of at most ``max_voxels`` voxels
  with the one segment that encloses them (cc3d): a component of zeros (6-connected) whose
  every face neighbour belongs to one segment and that does not touch the edge of the volume.
  A component that reaches a block's core and has at most ``max_voxels`` voxels lies within
  ``max_voxels`` voxels of it, so a block read with that margin fills exactly what the whole
  volume would.
"""

from __future__ import annotations

import numpy as np

from ..bbox import BoundingBox


def build_mapping(segment_ids: np.ndarray, merged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(segment_ids, neuron_ids)``: every id of ``segment_ids`` (sorted, without 0) and the
    smallest id of its union-find set over the ``merged`` (n, 2) pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.unique(np.asarray(segment_ids, np.uint64))
    ids = ids[ids != 0]
    merged = np.asarray(merged, np.uint64).reshape(-1, 2)
    if not len(merged) or not len(ids):
        return ids, ids.copy()
    pos = np.searchsorted(ids, merged)
    if np.any(pos >= len(ids)) or np.any(ids[np.minimum(pos, len(ids) - 1)] != merged):
        raise ValueError("a merged pair names a segment that is not in the segmentation")
    n = len(ids)
    graph = coo_matrix((np.ones(len(pos)), (pos[:, 0], pos[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(smallest, comp, ids)  # ids are sorted: the first of a component is its smallest
    return ids, smallest[comp]


def relabel(block: np.ndarray, segment_ids: np.ndarray, neuron_ids: np.ndarray) -> np.ndarray:
    """``block`` with each id of ``segment_ids`` replaced by its neuron id (others unchanged)."""
    import fastremap

    changed = segment_ids != neuron_ids
    if not changed.any():
        return block
    table = {int(s): int(t) for s, t in zip(segment_ids[changed], neuron_ids[changed])}
    return fastremap.remap(np.ascontiguousarray(block), table, preserve_missing_labels=True)


def fill_holes(seg: np.ndarray, max_voxels: int) -> int:
    """Fill enclosed zero components of at most ``max_voxels`` voxels in place; returns voxels filled.

    A component touching a face of ``seg`` stays: at the edge of the volume it is not known
    to be enclosed, and at a block's side it reaches farther than ``max_voxels`` from the
    block's core, so it is larger than ``max_voxels`` or does not touch the core.
    """
    import cc3d

    if max_voxels <= 0 or not (seg == 0).any():
        return 0
    comps = cc3d.connected_components(seg == 0, connectivity=6)
    sizes = np.bincount(comps.ravel())
    ok = sizes <= max_voxels
    ok[0] = False
    for axis in range(3):  # components on a face of the read box are never filled
        for idx in (0, -1):
            face = np.take(comps, idx, axis=axis)
            ok[np.unique(face)] = False
    if not ok.any():
        return 0
    # the segments touching each candidate component, over the six face neighbours
    pairs = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        for c_sel, s_sel in ((lo, hi), (hi, lo)):
            c, s = comps[tuple(c_sel)], seg[tuple(s_sel)]
            m = ok[c] & (s != 0)
            pairs.append(np.stack([c[m].astype(np.uint64), s[m].astype(np.uint64)], axis=1))
    touching = np.unique(np.concatenate(pairs), axis=0)
    comp_ids, n_segments = np.unique(touching[:, 0], return_counts=True)
    enclosed = comp_ids[n_segments == 1]
    if not len(enclosed):
        return 0
    fill = np.zeros(len(sizes), seg.dtype)
    rows = touching[np.isin(touching[:, 0], enclosed)]
    fill[rows[:, 0].astype(np.int64)] = rows[:, 1]
    mask = np.isin(comps, enclosed)
    seg[mask] = fill[comps[mask]]
    return int(mask.sum())


def fill_holes_in_block(read: np.ndarray, read_box: BoundingBox, core: BoundingBox, max_voxels: int) -> tuple[np.ndarray, int]:
    """Fill holes in ``read`` (``read_box``: ``core`` grown by ``max_voxels + 1``, clipped to the
    volume) and return the core's voxels and the number filled in the core."""
    before = read[core.relative_to(read_box.start).to_slices()].copy()
    fill_holes(read, max_voxels)
    after = read[core.relative_to(read_box.start).to_slices()]
    return after, int(np.count_nonzero(after != before))


__all__ = ["build_mapping", "fill_holes", "fill_holes_in_block", "relabel"]
