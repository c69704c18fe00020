"""Configuration of ``neuroflood prepare`` (partitions and balanced coordinates).

Defaults are the google/ffn README's (ffn-algorithms.md §2.2, §2.10, §2.11): lom_radius and
margin 24,24,24 (fov//2 + delta for the FIB-25 geometry), the 12 README thresholds,
min_size 10000. Axis order is z, y, x.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import Config, parse_ints
from .params import README_THRESHOLDS, PartitionParams


class PrepareConfig(Config):
    """Partition and coordinate parameters; stored in the output's ``summary.json``."""

    lom_radius: tuple[int, int, int] = Field(
        (24, 24, 24), description="radius z,y,x of the box in which each voxel's same-label fraction is measured"
    )
    thresholds: tuple[float, ...] = Field(
        README_THRESHOLDS, description="strictly increasing fractions; K thresholds give classes 1..K+1 (0 = background)"
    )
    min_size: int = Field(10000, ge=0, description="objects (label ids) with fewer voxels are background (dust)")
    margin: tuple[int, int, int] = Field(
        (24, 24, 24), description="voxels closer than this (z,y,x) to a face are never sampled (fov//2 + delta)"
    )
    seed: int = Field(0, description="seed of the per-class permutations and the global shuffle")
    id_whitelist: list[int] | None = Field(None, description="only these label ids get classes 1..K+1; others are class 0")
    exclusion_regions: list[tuple[int, int, int, int]] = Field(
        default_factory=list, description="spheres z,y,x,radius whose voxels are never sampled (255)"
    )
    allow_missing_classes: bool = Field(
        False, description="balance over the classes present when some class has no voxel (google/ffn's behaviour)"
    )
    block_shape: tuple[int, int, int] = Field(
        (256, 256, 256), description="partitions are computed block by block (plus a lom_radius halo) of this size"
    )
    partition_format: Literal["zarr", "h5"] = Field(
        "zarr", description="partitions are written to OUT/partitions.zarr/NAME or OUT/partitions.h5:NAME"
    )

    @field_validator("lom_radius", "margin", "block_shape", mode="before")
    @classmethod
    def _triples(cls, v: Any) -> Any:
        if isinstance(v, (int, str)):
            return parse_ints(str(v), 3)
        return v

    @field_validator("thresholds", mode="before")
    @classmethod
    def _floats(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return tuple(float(t) for t in v.split(",") if t.strip())
            except ValueError:
                raise ValueError(f"thresholds {v!r} must be comma-separated numbers") from None
        return v

    @field_validator("id_whitelist")
    @classmethod
    def _label_ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(not 0 < i < 2**64 for i in v):
            bad = next(i for i in v if not 0 < i < 2**64)
            raise ValueError(f"label id {bad} is not a positive uint64 object id; list the ids of labelled objects")
        return v

    @field_validator("block_shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s < 1 for s in v):
            raise ValueError(f"block_shape {v} must be positive")
        return v

    def partition_params(self) -> PartitionParams:
        """The validated parameters of :func:`~neuroflood.prepare.partitions.compute_partitions`."""
        return PartitionParams.make(self.lom_radius, self.thresholds, self.min_size, self.margin, self.id_whitelist, self.exclusion_regions)
