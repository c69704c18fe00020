"""What segmenting a subvolume produces: objects' origins, quantized probabilities, results.

A leaf module (numpy only), so that the Canvas, the seed policies and the output files can
all use these types without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Origin:
    """How a segment was made: its seed (z, y, x, canvas coordinates), FOVs run, seconds."""

    start_zyx: tuple[int, int, int]
    iterations: int
    seconds: float


def quantize_probability(prob: np.ndarray) -> np.ndarray:
    """Probabilities to uint8 1..255 by ``digitize`` over ``linspace(0, 1, 255)``; NaN → 0."""
    q = np.digitize(prob, np.linspace(0.0, 1.0, 255))
    q[np.isnan(prob)] = 0
    return q.astype(np.uint8)


def dequantize_probability(q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_probability` (bin centres): ``(q - 0.5) / 255``; 0 → NaN."""
    p = (q.astype(np.float32) - 0.5) / 255.0
    p[q == 0] = np.nan
    return p


@dataclass
class SegmentationResult:
    """What one subvolume's segmentation produced.

    ``segmentation`` holds ids in the smallest sufficient unsigned dtype (0 = unsegmented);
    ``qprob`` the uint8 quantized probabilities of accepted segments (or None); ``origins``
    ``{id: Origin}`` with seeds in subvolume coordinates; ``corner`` the subvolume's global
    start (z, y, x).
    """

    segmentation: np.ndarray
    origins: dict[int, Origin]
    counters: dict[str, float]
    qprob: np.ndarray | None = None
    overlaps: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    corner: tuple[int, int, int] = (0, 0, 0)
    seconds: float = 0.0
    local_to_global: dict[int, int] = field(default_factory=dict)

    @property
    def fov_evaluations(self) -> int:
        return int(self.counters.get("fov_evaluations", 0))

    @property
    def segments(self) -> int:
        return len(self.origins)

    @property
    def unsegmented_fraction(self) -> float:
        return float(np.mean(self.segmentation == 0)) if self.segmentation.size else 0.0

    def summary(self) -> dict[str, Any]:
        """The numbers users count, for ``--summary``."""
        fovs = self.fov_evaluations
        return {
            "fov_evaluations": fovs,
            "segments": self.segments,
            "unsegmented_fraction": round(self.unsegmented_fraction, 6),
            "seconds": round(self.seconds, 3),
            "seconds_per_fov": round(self.seconds / fovs, 4) if fovs else None,
            "fovs_per_second": round(fovs / self.seconds, 3) if self.seconds > 0 else None,
            "voxels": int(self.segmentation.size),
            "shape": list(self.segmentation.shape),
            "corner": list(self.corner),
            "counters": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sorted(self.counters.items())},
        }


__all__ = ["Origin", "SegmentationResult", "dequantize_probability", "quantize_probability"]
