"""Seed policies from peaks: of the distance to image edges (PolicyPeaks, the reference's
default), per slice, of the distance to segmented voxels, and the helpers they share.

google/ffn ``ffn/inference/seed.py`` (ffn-algorithms.md §3.5). In a blockwise job
PolicyPeaks computes its peaks on the image ``PEAKS_CONTEXT`` voxels beyond a block's canvas
and keeps those inside it (:meth:`PolicyPeaks.in_job`), so the blocks propose the seeds one
subvolume over the job's box would.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import edt
import numpy as np
import skimage.feature
from scipy import ndimage

from ...bbox import BoundingBox
from .base import ImageSource, SeedCanvas, SeedPolicy, SeedPolicyFactory, exclusion_mask
from .explicit import explicit_seeds

# How far beyond a block's canvas PolicyPeaks looks: the reach of its edge filter (a Gaussian
# of sigma 49/6, truncated at 4 sigma), so that edges, distances and peaks inside the canvas
# are those one subvolume over the whole box would compute (for cells narrower than this).
PEAKS_CONTEXT = int(np.ceil(4 * 49 / 6))
# Up to this many voxels in the job's box, blocks draw PolicyPeaks' tie-breaking noise from the
# stream one subvolume over the box would use; above it, from a hash of the position (the same
# in every block, but not the one-subvolume run's).
SUBVOLUME_NOISE_VOXELS = 1 << 30


def find_peaks(values: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``peak_local_max`` of ``values`` plus uniform [0, 1e-4) noise from RandomState(42).

    The noise breaks ties between equal distances reproducibly, whatever ran before.
    """
    rng = np.random.RandomState(seed=42)
    return skimage.feature.peak_local_max(values + rng.rand(*values.shape) * 1e-4, **kwargs)


def sorted_rows(idxs: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Rows sorted lexicographically (z, then y, then x)."""
    idxs = np.asarray(idxs, np.int64).reshape(-1, 3)
    order = np.lexsort(idxs.T[::-1])
    return idxs[order[::-1] if reverse else order]


def edges(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude above its Gaussian (σ = 49/6) local average."""
    magnitude = ndimage.generic_gradient_magnitude(image.astype(np.float32), ndimage.sobel)
    local = np.zeros(magnitude.shape, dtype=np.float32)
    ndimage.gaussian_filter(magnitude, 49.0 / 6.0, output=local, mode="reflect")
    return magnitude > local


class PolicyPeaks(SeedPolicy):
    """Peaks of the distance to image edges: the reference's default seed policy.

    Sobel gradient magnitude of the float32 image; edges where it exceeds its Gaussian
    (σ = 49/6, reflect) average; masked areas count as edges; Euclidean distance transform of
    the non-edge voxels (``edt``, anisotropic by voxel size); excluded voxels and non-finite
    values set to -1; ``peak_local_max`` with min_distance 3, threshold_abs 0,
    threshold_rel 0 on the distance plus seeded noise; sorted lexicographically by z, y, x.
    """

    semaphore = threading.Semaphore(4)  # bounds memory when many canvases start together

    def init_coords(self) -> np.ndarray | None:
        return distance_peaks(self.canvas, self.exclusion_mask())

    @classmethod
    def context_beyond_canvas(cls, args: dict[str, Any]) -> int:
        return PEAKS_CONTEXT

    @classmethod
    def in_job(
        cls, policy: SeedPolicyFactory, job_box: BoundingBox | None, canvas_box: BoundingBox, image_beyond: ImageSource = None
    ) -> SeedPolicyFactory:
        """The peaks of the image around the canvas that lie in the canvas, as explicit seeds.

        A cell cut by the canvas has its largest distance to an edge on the canvas border,
        where no peak is taken; computed beyond the canvas, its peak is the one a subvolume
        over the whole job would find. Ties between equal distances are broken with the noise
        of one subvolume over ``job_box`` (up to ``SUBVOLUME_NOISE_VOXELS``; above it, or
        without a job box, with :func:`position_noise`), so neighbouring blocks agree on which
        of them holds a cell's peak.
        """
        if image_beyond is None:
            return policy
        view = image_beyond()
        seen = view.box
        job = job_box or seen
        if job_box is not None and job_box.volume <= SUBVOLUME_NOISE_VOXELS:
            noise = subvolume_noise(job.size, seen.relative_to(job.start).start, seen.size)
        else:
            noise = position_noise(seen.start, seen.size)
        found = distance_peaks(view, exclusion_mask(view), noise)
        peaks = np.zeros((0, 3), np.int64) if found is None else np.asarray(found, np.int64).reshape(-1, 3) + seen.start
        # as the one-subvolume run's policy filters them: its FOVs stay inside its box
        m = np.asarray(view.margin)
        peaks = peaks[np.all((peaks - m >= job.start) & (peaks + m < np.asarray(job.stop)), axis=1)]
        peaks = peaks[np.all((peaks >= canvas_box.start) & (peaks < canvas_box.stop), axis=1)]
        return explicit_seeds(peaks, canvas_box.start)


def distance_peaks(canvas: SeedCanvas, exclusion: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray | None:
    """PolicyPeaks' seeds for ``canvas``.

    ``noise``: what breaks ties between equal distances, in [0, 1e-4); default that of
    :func:`find_peaks` (google/ffn's RandomState(42) over the array).
    """
    filt_edges = edges(canvas.image)
    r = canvas.restrictor
    # Masked areas count as edges so that they do not distort the distances elsewhere.
    if r is not None:
        if r.mask is not None:
            filt_edges[r.mask] = 1
        if r.seed_mask is not None:
            filt_edges[r.seed_mask] = 1
    if np.all(filt_edges):
        return None
    with PolicyPeaks.semaphore:
        dt = edt.edt(1 - filt_edges, anisotropy=tuple(canvas.voxel_size)).astype(np.float32)
        dt[exclusion] = -1
        dt[~np.isfinite(dt)] = -1
        kwargs = {"min_distance": 3, "threshold_abs": 0, "threshold_rel": 0}
        idxs = find_peaks(dt, **kwargs) if noise is None else skimage.feature.peak_local_max(dt + noise, **kwargs)
    return sorted_rows(idxs)


def subvolume_noise(subvolume_shape: Sequence[int], start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The part ``start``, ``shape`` of :func:`find_peaks`' noise for a whole subvolume.

    That noise is RandomState(42) over the subvolume in C order, so this draws the stream up
    to the box's last plane: time grows with the box's position (about 10 s per 10^9 voxels).
    """
    _, ny, nx = (int(v) for v in subvolume_shape)
    rng = np.random.RandomState(seed=42)
    skip = int(start[0]) * ny * nx
    while skip:  # draws before the box's first plane
        n = min(skip, 1 << 24)
        rng.rand(n)
        skip -= n
    planes = [rng.rand(ny, nx)[start[1] : start[1] + shape[1], start[2] : start[2] + shape[2]] for _ in range(int(shape[0]))]
    return np.stack(planes) * 1e-4


def position_noise(start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Tie-breaking noise in [0, 1e-4) that depends only on each voxel's global position.

    Two crops of one volume see the same noise where they overlap, so their distance peaks
    agree there (blockwise seeds; :func:`find_peaks`' noise depends on the array's shape). A
    splitmix64 hash of ``z << 42 | y << 21 | x``.
    """
    z, y, x = (np.arange(a, a + n, dtype=np.uint64) for a, n in zip(start, shape))
    key = (z[:, None, None] << np.uint64(42)) | (y[None, :, None] << np.uint64(21)) | x[None, None, :]
    h = key + np.uint64(0x9E3779B97F4A7C15)
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 1e-4


class PolicyPeaks2d(SeedPolicy):
    """:class:`PolicyPeaks` per z-slice in 2-D, with its own peak parameters."""

    def __init__(self, canvas: SeedCanvas, min_distance: int = 7, threshold_abs: float = 2.5, sort_cmp: str = "ascending"):
        super().__init__(canvas)
        self.min_distance = int(min_distance)
        self.threshold_abs = float(threshold_abs)
        self.sort_reverse = sort_cmp.strip().lower().startswith("de")

    def init_coords(self) -> np.ndarray | None:
        r = self.canvas.restrictor
        found = []
        for z in range(self.canvas.image.shape[0]):
            filt_edges = edges(self.canvas.image[z])
            if r is not None and r.mask is not None:
                filt_edges[r.mask[z]] = 1
            dt = edt.edt(1 - filt_edges).astype(np.float32)
            idxs = find_peaks(dt, min_distance=self.min_distance, threshold_abs=self.threshold_abs, threshold_rel=0)
            found.append(np.concatenate([np.full((len(idxs), 1), z, np.int64), idxs], axis=1))
        return sorted_rows(np.concatenate(found), reverse=self.sort_reverse)


class PolicyFillEmptySpace(SeedPolicy):
    """Peaks of the distance to segmented voxels: fills what earlier passes left empty."""

    def init_coords(self) -> np.ndarray | None:
        dt = edt.edt(self.canvas.segmentation == 0).astype(np.float32)
        # threshold_abs < 1 keeps seeds out of segmented voxels (where dt = 0).
        return sorted_rows(find_peaks(dt, min_distance=2, threshold_abs=0.5, threshold_rel=0))


__all__ = [
    "PEAKS_CONTEXT",
    "SUBVOLUME_NOISE_VOXELS",
    "PolicyFillEmptySpace",
    "PolicyPeaks",
    "PolicyPeaks2d",
    "distance_peaks",
    "edges",
    "find_peaks",
    "position_noise",
    "sorted_rows",
    "subvolume_noise",
]
