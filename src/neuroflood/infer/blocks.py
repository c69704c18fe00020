"""Splitting a bounding box into overlapping blocks.

With ``stride = block_size − overlap``, block ``k`` along an axis *owns* the **core**
``[start + k·stride, start + (k+1)·stride)`` (the last core ends at the box's end), so cores
tile the box exactly and line up with an output chunk grid of ``stride``: two workers never
write the same chunk. The block segments its core grown by ``overlap // 2`` below and
``overlap − overlap // 2`` above (clipped to the box), i.e. ``block_size`` voxels: every core
voxel is seen with at least half the overlap of the block around it, and the margins lie in
the neighbours' cores, where block ids are compared during reconciliation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..bbox import BoundingBox
from ..errors import ConfigError


def default_overlap(fov_size: Sequence[int], deltas: Sequence[int]) -> tuple[int, int, int]:
    """The overlap of neighbouring blocks when none is given: ``fov // 2 + delta`` per axis.

    Each block then sees half of it beyond its core, and its objects reach that far into the
    neighbour's core for the overlap rule. It is the smallest overlap with no face-made split
    on the seam test's oracle volumes (2 voxels less splits objects). On a 256³ volume with the
    demo network neither it nor twice it (the default until 2026-11-30) split any object at a
    face with both pieces holding >= 1 % of it, and blocks of 128³ cost 1.2x one subvolume's
    FOVs instead of 1.43x (docs/benchmarks.md). FIB-25: 24.
    """
    return tuple(int(f) // 2 + int(d) for f, d in zip(fov_size, deltas))  # type: ignore[return-value]


@dataclass(frozen=True)
class Block:
    index: int  # position in C order over the grid
    grid_pos: tuple[int, int, int]
    box: BoundingBox  # what the block segments (global coordinates)
    core: BoundingBox  # what the block owns in the output

    @property
    def name(self) -> str:
        return "_".join(str(v) for v in self.grid_pos)


class BlockGrid:
    """Overlapping blocks over ``bbox``; see the module docstring."""

    def __init__(self, bbox: BoundingBox, block_size: Sequence[int], overlap: Sequence[int]):
        self.bbox = bbox
        if len(block_size) != 3 or min(int(b) for b in block_size) < 1:
            raise ConfigError(f"block size {tuple(block_size)} must be positive on every axis (z,y,x); raise --block-size")
        if len(overlap) != 3:
            raise ConfigError(f"overlap {tuple(overlap)} needs 3 values (z,y,x)")
        self.block_size = tuple(min(int(b), s) for b, s in zip(block_size, bbox.size))
        self.overlap = tuple(int(o) for o in overlap)
        for axis, (b, o, s) in enumerate(zip(self.block_size, self.overlap, bbox.size)):
            if o < 0 or (b < s and o >= b):
                raise ConfigError(
                    f"overlap {self.overlap} must be smaller than the block size {tuple(block_size)} "
                    f"on axis {axis}; lower --overlap or raise --block-size"
                )
        self.stride = tuple(b - o if b < s else s for b, o, s in zip(self.block_size, self.overlap, bbox.size))
        self.shape = tuple(max(1, math.ceil(s / st)) for s, st in zip(bbox.size, self.stride))

    def __len__(self) -> int:
        return math.prod(self.shape)

    def __iter__(self) -> Iterator[Block]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(index)
        pos = []
        rest = index
        for n in reversed(self.shape):
            pos.append(rest % n)
            rest //= n
        pos = tuple(reversed(pos))
        start, stop, cstart, cstop = [], [], [], []
        for k, n, a, z, o, st in zip(pos, self.shape, self.bbox.start, self.bbox.stop, self.overlap, self.stride):
            c0 = a + k * st
            c1 = z if k == n - 1 else c0 + st
            cstart.append(c0)
            cstop.append(c1)
            start.append(max(a, c0 - o // 2))
            stop.append(min(z, c1 + o - o // 2))
        return Block(
            index,
            pos,
            BoundingBox.from_start_stop(start, stop),
            BoundingBox.from_start_stop(cstart, cstop),
        )

    def positions(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.shape))


def fov_categories(centres: np.ndarray, block: Block) -> dict[str, int]:
    """Where a block's FOVs were centred (global z, y, x ``[k, 3]``): in its core, in its
    margins (box minus core: work its neighbours repeat), or outside its box (the context)."""
    centres = np.asarray(centres, np.int64).reshape(-1, 3)

    def inside(box: BoundingBox) -> np.ndarray:
        return np.all((centres >= np.asarray(box.start)) & (centres < np.asarray(box.stop)), axis=1)

    in_core, in_box = inside(block.core), inside(block.box)
    return {
        "fov_core": int(in_core.sum()),
        "fov_margin": int((in_box & ~in_core).sum()),
        "fov_context": int((~in_box).sum()),
    }
