"""Axis-aligned bounding boxes in z, y, x voxel coordinates (start inclusive, stop exclusive)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import DataError


@dataclass(frozen=True)
class BoundingBox:
    """A box ``[start, start + size)`` along z, y, x."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(v) for v in self.start))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.start) != len(self.size):
            raise DataError(f"bounding box start {self.start} and size {self.size} differ in rank")
        if any(s < 0 for s in self.size):
            raise DataError(f"bounding box size {self.size} is negative; give stop >= start")

    @classmethod
    def from_start_stop(cls, start: Sequence[int], stop: Sequence[int]) -> BoundingBox:
        return cls(tuple(start), tuple(b - a for a, b in zip(start, stop)))

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> BoundingBox:
        return cls((0,) * len(shape), tuple(shape))

    @classmethod
    def parse(cls, text: str) -> BoundingBox:
        """Parse ``"z0,y0,x0:z1,y1,x1"`` (start inclusive, stop exclusive)."""
        try:
            a, b = text.split(":")
            start = [int(v) for v in a.split(",")]
            stop = [int(v) for v in b.split(",")]
        except ValueError:
            raise DataError(f"cannot parse bounding box {text!r}; write it as z0,y0,x0:z1,y1,x1") from None
        if len(start) != 3 or len(stop) != 3:
            raise DataError(f"bounding box {text!r} needs 3 values on each side of ':' (z,y,x)")
        if any(b <= a for a, b in zip(start, stop)):
            raise DataError(f"bounding box {text!r} is empty; each stop must exceed its start")
        return cls.from_start_stop(start, stop)

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(a + s for a, s in zip(self.start, self.size))

    @property
    def ndim(self) -> int:
        return len(self.start)

    @property
    def volume(self) -> int:
        n = 1
        for s in self.size:
            n *= s
        return n

    def is_empty(self) -> bool:
        return any(s == 0 for s in self.size)

    def to_slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def intersection(self, other: BoundingBox) -> BoundingBox | None:
        """The overlap of two boxes, or None when they do not overlap."""
        start = [max(a, b) for a, b in zip(self.start, other.start)]
        stop = [min(a, b) for a, b in zip(self.stop, other.stop)]
        if any(b <= a for a, b in zip(start, stop)):
            return None
        return BoundingBox.from_start_stop(start, stop)

    def clip(self, shape: Sequence[int]) -> BoundingBox | None:
        """This box clipped to a volume of ``shape``; None if nothing remains."""
        return self.intersection(BoundingBox.from_shape(shape))

    def contains(self, other: BoundingBox) -> bool:
        return all(a <= b for a, b in zip(self.start, other.start)) and all(a >= b for a, b in zip(self.stop, other.stop))

    def grow(self, margin: Sequence[int] | int) -> BoundingBox:
        m = (margin,) * self.ndim if isinstance(margin, int) else tuple(margin)
        return BoundingBox(tuple(a - d for a, d in zip(self.start, m)), tuple(s + 2 * d for s, d in zip(self.size, m)))

    def relative_to(self, origin: Sequence[int]) -> BoundingBox:
        return BoundingBox(tuple(a - o for a, o in zip(self.start, origin)), self.size)

    def __str__(self) -> str:
        return f"{','.join(map(str, self.start))}:{','.join(map(str, self.stop))}"

    def __iter__(self) -> Iterator[slice]:
        return iter(self.to_slices())
