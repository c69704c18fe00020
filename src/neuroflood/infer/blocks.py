"""Splitting a bounding box into overlapping blocks.

Along each axis, block ``k`` covers ``[start + k·stride, start + k·stride + block_size)``
with ``stride = block_size − overlap``, clipped to the box. Each block *owns* a **core**,
``[start + k·stride, start + (k+1)·stride)`` (the last block owns up to the end), so cores
tile the box exactly and line up with an output chunk grid of ``stride``: two workers never
write the same chunk. The rest of a block, its high-side overlap, lies in the cores of its
neighbours; that is where block ids are compared during reconciliation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..bbox import BoundingBox
from ..errors import ConfigError


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
        self.block_size = tuple(min(int(b), s) for b, s in zip(block_size, bbox.size))
        self.overlap = tuple(int(o) for o in overlap)
        for axis, (b, o, s) in enumerate(zip(self.block_size, self.overlap, bbox.size)):
            if o < 0 or (b < s and o >= b):
                raise ConfigError(
                    f"overlap {self.overlap} must be smaller than the block size {tuple(block_size)} "
                    f"on axis {axis}; lower --overlap or raise --block-size"
                )
        self.stride = tuple(b - o if b < s else s for b, o, s in zip(self.block_size, self.overlap, bbox.size))
        self.shape = tuple(
            1 if b >= s else max(1, math.ceil((s - o) / st))
            for b, o, s, st in zip(self.block_size, self.overlap, bbox.size, self.stride)
        )

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
        start, stop, cstop = [], [], []
        for k, n, a, z, b, st in zip(pos, self.shape, self.bbox.start, self.bbox.stop, self.block_size, self.stride):
            s0 = a + k * st
            start.append(s0)
            stop.append(min(s0 + b, z))
            cstop.append(z if k == n - 1 else s0 + st)
        return Block(
            index,
            pos,
            BoundingBox.from_start_stop(start, stop),
            BoundingBox.from_start_stop(start, cstop),
        )

    def positions(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(n) for n in self.shape))
