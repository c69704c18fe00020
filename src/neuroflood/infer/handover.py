"""Hand-over seeds: a block floods the objects its neighbours carry into its core.

One subvolume over the whole box floods an object from wherever its seed lies, through every
block face. A block floods only the objects it seeds itself. An object seeded in block A that
reaches into block B, where no seed of B's own lands on it (a sparse seed grid, or a cell
whose distance-transform peak lies beyond B's box), is flooded by A only as far as A's box
reaches, half the overlap into B's core; the rest of it stays unsegmented in B, and the
stitched result has a hole that the one-subvolume result has not.

So after every block ran, each block B looks at its neighbours' segmentations where their
boxes reach into B's core. A piece of a neighbour's object lying there on voxels that B left
unsegmented (a 6-connected piece of at least ``min_voxels`` voxels) hands B a seed: the
piece's voxel deepest inside the neighbour's object and farthest from B's own objects (the
Canvas refuses seeds next to a segment). B then continues its own canvas from its saved
segmentation (its objects stay as they are, obstacles to the new fills) and floods from
those seeds with its own network. Objects flooded this way can reach into a further
neighbour's core; up to ``rounds`` rounds are run, until no block is handed a seed.

Seeds are only a proposal: B's network decides what to flood, and reconciliation
(:mod:`neuroflood.infer.reconcile`: the overlap rule, and the joins of hand-over objects to
the object their seed lay in) decides what to join.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from ..bbox import BoundingBox
from .blocks import Block, BlockGrid

MIN_HANDOVER_VOXELS = 50  # smaller pieces are slivers along membranes, not worth a seed


def neighbours(grid: BlockGrid, block: Block) -> list[Block]:
    """The blocks whose box reaches into ``block``'s core (itself excluded)."""
    out = []
    for delta in np.ndindex(3, 3, 3):
        pos = tuple(p + d - 1 for p, d in zip(block.grid_pos, delta))
        if pos == block.grid_pos or not all(0 <= p < n for p, n in zip(pos, grid.shape)):
            continue
        other = grid[int(np.ravel_multi_index(pos, grid.shape))]
        if other.box.intersection(block.core) is not None:
            out.append(other)
    return out


def handover_seeds(
    grid: BlockGrid,
    block: Block,
    load_segmentation: Callable[[int], np.ndarray],
    min_voxels: int = MIN_HANDOVER_VOXELS,
    seed_box: BoundingBox | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(seeds ``[k, 3]`` (global z, y, x), their sources ``[k, 2]``) that ``block``'s neighbours hand it.

    A source is (neighbour block index, the neighbour's id of the object the seed lies in).

    ``load_segmentation(i)`` returns block ``i``'s segmentation of its whole box. A seed is
    the voxel of a handed-over piece that lies deepest inside the neighbour's object and
    farthest from the block's own objects (over all the two blocks share), among those
    inside ``seed_box`` (where an FOV centred there fits in the image; default: anywhere). Seeds are ordered by piece size, largest first
    (ties by position), so a run is reproducible.
    """
    own = load_segmentation(block.index)
    found: list[tuple[int, tuple[int, ...], tuple[int, int]]] = []
    for other in neighbours(grid, block):
        shared = other.box.intersection(block.box)
        theirs = load_segmentation(other.index)[shared.relative_to(other.box.start).to_slices()]
        # voxels that B left unsegmented, and those of them in B's core
        empty = own[shared.relative_to(block.box.start).to_slices()] == 0
        free = np.zeros(theirs.shape, bool)
        free[other.box.intersection(block.core).relative_to(shared.start).to_slices()] = True
        free &= empty
        allowed = free
        if seed_box is not None:
            in_box = np.zeros(free.shape, bool)
            inside = seed_box.intersection(shared)
            if inside is not None:
                in_box[inside.relative_to(shared.start).to_slices()] = True
            allowed = free & in_box
        for obj in np.unique(theirs[allowed & (theirs > 0)]):
            mask = theirs == obj
            pieces, n = ndimage.label(free & mask)
            sizes = np.bincount(pieces.ravel(), minlength=n + 1)
            big = np.flatnonzero(sizes[1:] >= min_voxels) + 1
            if not len(big):
                continue
            # depth inside the neighbour's object and away from B's objects: where a network
            # is surest of the object, and where the Canvas takes a seed (not next to a segment)
            depth = ndimage.distance_transform_edt(np.pad(mask & empty, 1))[1:-1, 1:-1, 1:-1]
            for k in big:
                candidates = np.where((pieces == k) & allowed, depth, -1.0)
                if candidates.max() < 0:
                    continue
                at = np.unravel_index(int(np.argmax(candidates)), candidates.shape)
                seed = tuple(int(a + s) for a, s in zip(at, shared.start))
                found.append((int(sizes[k]), seed, (other.index, int(obj))))
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    return (
        np.array([f[1] for f in found], np.int64).reshape(-1, 3),
        np.array([f[2] for f in found], np.int64).reshape(-1, 2),
    )


def extension_ids(old: np.ndarray, extended: np.ndarray, local_to_global: dict[int, int]) -> np.ndarray:
    """The block id of each canvas id of a hand-over run (index: canvas id; 0 stays 0).

    ``extended`` holds the canvas ids of the continued run: the old objects as
    ``local_to_global`` maps them, new objects above them, numbered after ``old``'s largest id.
    """
    n_old = len(local_to_global)
    top = int(old.max(initial=0))
    lut = np.zeros(int(extended.max(initial=0)) + 1, np.int64)
    for local, glob in local_to_global.items():
        lut[local] = glob
    new_ids = np.arange(n_old + 1, len(lut))
    lut[new_ids] = top + new_ids - n_old
    kept = old > 0
    if not np.array_equal(lut[extended[kept]], old[kept]):
        raise AssertionError("a hand-over run changed the block's existing objects")  # Canvas keeps them: a bug
    return lut


def merge_extension(old: np.ndarray, extended: np.ndarray, local_to_global: dict[int, int]) -> np.ndarray:
    """Block ids after a hand-over run: ``old``'s ids kept, new objects numbered after them
    (:func:`extension_ids`)."""
    return extension_ids(old, extended, local_to_global)[extended]


__all__ = ["MIN_HANDOVER_VOXELS", "extension_ids", "handover_seeds", "merge_extension", "neighbours"]
