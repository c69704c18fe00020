"""Partition parameters (:class:`PartitionParams`) and their defaults, validated once.

Imports no array library at module level, so that ``neuroflood prepare --help`` can show the
defaults quickly. All sizes are z, y, x.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..bbox import BoundingBox
from ..errors import ConfigError, DataError

#: The thresholds of the google/ffn README (12 values, classes 0..13).
README_THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Partition value of voxels that are never sampled.
IGNORE = 255

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class PartitionParams:
    """Validated partition parameters (all sizes z, y, x)."""

    lom_radius: Triple
    thresholds: tuple[float, ...]
    min_size: int
    margin: Triple
    id_whitelist: frozenset[int] | None = None
    exclusion_regions: tuple[tuple[int, int, int, int], ...] = ()

    @classmethod
    def make(
        cls,
        lom_radius: Sequence[int] | int,
        thresholds: Sequence[float],
        min_size: int,
        margin: Sequence[int] | int = 0,
        id_whitelist: Iterable[int] | None = None,
        exclusion_regions: Iterable[Sequence[int]] | None = None,
    ) -> PartitionParams:
        radius = triple(lom_radius, "lom_radius")
        margin_ = triple(margin, "margin")
        ths = tuple(float(t) for t in thresholds)
        if not ths:
            raise ConfigError("thresholds is empty; give at least one fraction, e.g. the README's 0.025,...,0.9")
        if any(not (0.0 < t <= 1.0) for t in ths) or any(b <= a for a, b in zip(ths, ths[1:])):
            raise ConfigError(f"thresholds {list(ths)} must be strictly increasing fractions in (0, 1]")
        if len(ths) > IGNORE - 2:
            raise ConfigError(f"{len(ths)} thresholds give more classes than fit below {IGNORE}; use at most {IGNORE - 2}")
        if int(min_size) < 0:
            raise ConfigError(f"min_size {min_size} is negative; use 0 to keep every object")
        regions = []
        for r in exclusion_regions or ():
            r = tuple(int(v) for v in r)
            if len(r) != 4 or r[3] < 0:
                raise ConfigError(f"exclusion region {r} must be z,y,x,radius with radius >= 0")
            regions.append(r)
        whitelist = None if id_whitelist is None else frozenset(int(i) for i in id_whitelist)
        return cls(radius, ths, int(min_size), margin_, whitelist, tuple(regions))

    @property
    def border(self) -> Triple:
        """Voxels this close to a face are 255: the larger of ``lom_radius`` and ``margin``."""
        return tuple(max(r, m) for r, m in zip(self.lom_radius, self.margin))  # type: ignore[return-value]

    @property
    def window_volume(self) -> int:
        return math.prod(2 * r + 1 for r in self.lom_radius)

    def core_box(self, shape: Sequence[int]) -> BoundingBox:
        """The voxels that get a class: the volume shrunk by :attr:`border`; checks it is not empty."""
        shape = tuple(int(s) for s in shape)
        for axis, (s, r, m) in enumerate(zip(shape, self.lom_radius, self.margin)):
            if 2 * r >= s:
                raise DataError(
                    f"lom_radius {r} on axis {'zyx'[axis]} leaves no voxel of a volume of size {s} "
                    f"(needs 2*radius < size); use a radius below {(s + 1) // 2}"
                )
            if 2 * m >= s:
                raise DataError(
                    f"margin {m} on axis {'zyx'[axis]} leaves no voxel of a volume of size {s} "
                    f"(needs 2*margin < size); use a margin below {(s + 1) // 2}"
                )
        b = self.border
        return BoundingBox(b, tuple(s - 2 * d for s, d in zip(shape, b)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "lom_radius": list(self.lom_radius),
            "thresholds": list(self.thresholds),
            "min_size": self.min_size,
            "margin": list(self.margin),
            "id_whitelist": None if self.id_whitelist is None else sorted(self.id_whitelist),
            "exclusion_regions": [list(r) for r in self.exclusion_regions],
        }


def triple(value: Sequence[int] | int, name: str) -> Triple:
    """``value`` as three non-negative ints z, y, x (an int is used on every axis)."""
    import numpy as np

    vals = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)  # type: ignore[arg-type]
    if len(vals) != 3:
        raise ConfigError(f"{name} {list(vals)} needs 3 values (z,y,x)")
    if any(v < 0 for v in vals):
        raise ConfigError(f"{name} {list(vals)} must be >= 0 on every axis")
    return vals  # type: ignore[return-value]
