"""The options of an agglomeration, their defaults and checks (one-line ConfigErrors).

Defaults (docs/agglomeration.md gives the reasons):

* ``radius`` — the resegmentation subvolume is the decision point ± ``radius``; default
  ``fov // 2 + 2 * delta`` (FIB-25: 32, a 65³ subvolume), so that seeds, which must lie a
  FOV radius inside the subvolume, can sit up to two FOV steps from the point.
* ``analysis_radius`` — the box in which fills are scored; default ``radius - fov // 2``
  (FIB-25: 16), the setting google/ffn's ``ResegmentationRequest`` recommends.
* ``max_retry_iters`` 1, ``segment_recovery_fraction`` 0, ``terminate_early`` off: the
  ``ResegmentationRequest`` defaults; ``exclusion_radius`` (only used by retries) defaults to
  the FOV step.
* the merge rule: google/ffn's manual rule (:class:`~.scoring.MergeRule`).
* decision points: segments expand at most ``max_distance`` 8 voxels into empty space (two
  segments up to 16 voxels apart become a pair), segments of fewer than ``min_segment_size``
  1000 voxels (the FFN's own minimum segment size) are ignored, and a pair needs at least
  ``min_contact`` 10 voxel faces of contact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import ConfigError
from .scoring import MergeRule


@dataclass(frozen=True)
class AgglomerationOptions:
    """Everything that decides which pairs are resegmented, how, and which are merged."""

    # decision points
    max_distance: float = 8.0
    min_segment_size: int = 1000
    min_contact: int = 10
    block_size: tuple[int, int, int] = (128, 128, 128)
    # resegmentation (None: from the model, see the module docstring)
    radius: tuple[int, int, int] | None = None
    analysis_radius: tuple[int, int, int] | None = None
    max_retry_iters: int = 1
    exclusion_radius: tuple[int, int, int] | None = None
    segment_recovery_fraction: float = 0.0
    terminate_early: bool = False
    pairs_per_job: int = 16
    # scoring and merging
    threshold: float = 0.5
    min_iou: float = 0.8
    min_consistency: float = 0.6
    max_deleted_fraction: float = 0.02
    one_sided: bool = False
    # before and after
    consensus_min_size: int = 1000
    fill_holes: int = 0

    def rule(self) -> MergeRule:
        return MergeRule(self.min_iou, self.min_consistency, self.max_deleted_fraction, self.one_sided)

    def resolved(self, fov_size: Sequence[int], deltas: Sequence[int]) -> AgglomerationOptions:
        """These options with the model-dependent defaults filled in, checked against the model."""
        half = [int(f) // 2 for f in fov_size]
        radius = self.radius or tuple(h + 2 * int(d) for h, d in zip(half, deltas))
        analysis = self.analysis_radius or tuple(max(1, r - h) for r, h in zip(radius, half))
        exclusion = self.exclusion_radius or tuple(int(d) for d in deltas)
        if any(r < h for r, h in zip(radius, half)):
            raise ConfigError(f"--radius {_fmt(radius)} is smaller than the network's FOV radius {_fmt(half)}; raise it")
        if any(a > r for a, r in zip(analysis, radius)):
            raise ConfigError(f"--analysis-radius {_fmt(analysis)} is larger than --radius {_fmt(radius)}; lower it")
        return replace(self, radius=tuple(radius), analysis_radius=tuple(analysis), exclusion_radius=tuple(exclusion))

    def check(self) -> None:
        """Raise ConfigError for an option out of range (before anything is loaded)."""
        if not (self.max_distance > 0 and math.isfinite(self.max_distance)):
            raise ConfigError(f"--max-distance {self.max_distance} must be a positive number (voxel-size units), e.g. 8")
        for name, v, lo in (
            ("--min-segment-size", self.min_segment_size, 0),
            ("--min-contact", self.min_contact, 0),
            ("--max-retry-iters", self.max_retry_iters, 1),
            ("--pairs-per-job", self.pairs_per_job, 1),
            ("--consensus-min-size", self.consensus_min_size, 0),
            ("--fill-holes", self.fill_holes, 0),
        ):
            if v < lo:
                raise ConfigError(f"{name} {v} must be >= {lo}")
        if min(self.block_size) < 1:
            raise ConfigError(f"--block-size {_fmt(self.block_size)} must be positive on every axis (z,y,x)")
        for name, r in (
            ("--radius", self.radius),
            ("--analysis-radius", self.analysis_radius),
            ("--exclusion-radius", self.exclusion_radius),
        ):
            if r is not None and min(r) < 0:
                raise ConfigError(f"{name} {_fmt(r)} must be >= 0 on every axis (z,y,x)")
        for name, v in (
            ("--threshold", self.threshold),
            ("--min-iou", self.min_iou),
            ("--min-consistency", self.min_consistency),
            ("--max-deleted-fraction", self.max_deleted_fraction),
            ("--segment-recovery-fraction", self.segment_recovery_fraction),
        ):
            if not 0 <= v <= 1:  # NaN fails too
                raise ConfigError(f"{name} {v} must be a fraction in [0, 1]")

    def resegmentation_key(self) -> dict[str, Any]:
        """The options that change which pairs are resegmented and their scores."""
        d = asdict(self)
        for k in ("min_iou", "min_consistency", "max_deleted_fraction", "one_sided", "fill_holes"):
            d.pop(k)
        return d

    def merge_key(self) -> dict[str, Any]:
        """The options that only change the decisions and the output (no FFN rerun)."""
        return {k: getattr(self, k) for k in ("min_iou", "min_consistency", "max_deleted_fraction", "one_sided", "fill_holes")}


def _fmt(v: Sequence[int]) -> str:
    return ",".join(str(int(x)) for x in v)


__all__ = ["AgglomerationOptions"]
