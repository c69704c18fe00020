"""Seed policies: where the Canvas tries to start new objects, in order.

google/ffn ``ffn/inference/seed.py`` (ffn-algorithms.md §3.5). A policy is an iterator of
z, y, x positions inside the image margin. It computes its coordinates lazily, on the first
seed requested, from the canvas it belongs to, which provides:

``image``         the normalized float32 image (z, y, x)
``shape``         its shape
``margin``        half the network's image FOV (z, y, x)
``segmentation``  int32 ids (> 0 segmented)
``restrictor``    a :class:`~neuroflood.infer.movement.MovementRestrictor`
``voxel_size``    z, y, x (anisotropy of distance transforms)

Its state for checkpoints is ``(coords, idx)``; ``previous=True`` steps back one seed so
that an interrupted object is retried from the same seed.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from typing import Any, Sequence

import edt
import numpy as np
import skimage.feature
import skimage.morphology
from scipy import ndimage

from ..errors import ConfigError


class SeedPolicy:
    """Base class: lazy coordinates, image-margin filtering and checkpoint state."""

    def __init__(self, canvas: Any):
        self.canvas = canvas
        self.coords: np.ndarray | None = None  # [N, 3] z, y, x
        self.idx = 0

    def init_coords(self) -> np.ndarray | None:
        """All candidate seeds in order, [N, 3] z, y, x; None when there are none."""
        raise NotImplementedError

    def _ensure_coords(self) -> None:
        if self.coords is not None:
            return
        coords = self.init_coords()
        coords = np.zeros((0, 3), np.int64) if coords is None else np.asarray(coords, np.int64).reshape(-1, 3)
        # Early filtering of seeds too close to the image border (they can never be used).
        margin = np.asarray(self.canvas.margin)[None]
        inside = np.all((coords - margin >= 0) & (coords + margin < np.asarray(self.canvas.shape)), axis=1)
        self.coords = coords[inside]

    def __iter__(self) -> "SeedPolicy":
        return self

    def __next__(self) -> tuple[int, int, int]:
        self._ensure_coords()
        assert self.coords is not None
        if self.idx < len(self.coords):
            pos = self.coords[self.idx]
            self.idx += 1
            return (int(pos[0]), int(pos[1]), int(pos[2]))
        raise StopIteration

    def __len__(self) -> int:
        self._ensure_coords()
        assert self.coords is not None
        return len(self.coords)

    def get_state(self, previous: bool = False) -> tuple[np.ndarray | None, int]:
        """``(coords, idx)``; with ``previous`` the last seed handed out is handed out again."""
        return self.coords, max(0, self.idx - 1) if previous else self.idx

    def set_state(self, state: tuple[np.ndarray | None, int]) -> None:
        coords, idx = state
        self.coords = None if coords is None else np.asarray(coords, np.int64).reshape(-1, 3)
        self.idx = int(idx)

    def exclusion_mask(self) -> np.ndarray:
        """Voxels where no seed can be valid: segmented, movement-masked or seed-masked."""
        mask = self.canvas.segmentation > 0
        r = self.canvas.restrictor
        if r is not None:
            if r.mask is not None:
                mask |= r.mask
            if r.seed_mask is not None:
                mask |= r.seed_mask
        return mask


def find_peaks(values: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``peak_local_max`` of ``values`` plus uniform [0, 1e-4) noise from RandomState(42).

    The noise breaks ties between equal distances reproducibly, whatever ran before.
    """
    rng = np.random.RandomState(seed=42)
    return skimage.feature.peak_local_max(values + rng.rand(*values.shape) * 1e-4, **kwargs)


def _sorted_rows(idxs: np.ndarray, reverse: bool = False) -> np.ndarray:
    """Rows sorted lexicographically (z, then y, then x)."""
    idxs = np.asarray(idxs, np.int64).reshape(-1, 3)
    order = np.lexsort(idxs.T[::-1])
    return idxs[order[::-1] if reverse else order]


def _edges(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude above its Gaussian (σ = 49/6) local average."""
    edges = ndimage.generic_gradient_magnitude(image.astype(np.float32), ndimage.sobel)
    local = np.zeros(edges.shape, dtype=np.float32)
    ndimage.gaussian_filter(edges, 49.0 / 6.0, output=local, mode="reflect")
    return edges > local


class PolicyPeaks(SeedPolicy):
    """Peaks of the distance to image edges: the reference's default seed policy.

    Sobel gradient magnitude of the float32 image; edges where it exceeds its Gaussian
    (σ = 49/6, reflect) average; masked areas count as edges; Euclidean distance transform of
    the non-edge voxels (``edt``, anisotropic by voxel size); excluded voxels and non-finite
    values set to -1; ``peak_local_max`` with min_distance 3, threshold_abs 0,
    threshold_rel 0 on the distance plus seeded noise; sorted lexicographically by z, y, x.
    """

    _sem = threading.Semaphore(4)  # bounds memory when many canvases start together

    def init_coords(self) -> np.ndarray | None:
        return distance_peaks(self.canvas, self.exclusion_mask())


def distance_peaks(canvas: Any, exclusion: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray | None:
    """PolicyPeaks' seeds for ``canvas`` (anything with ``image``, ``restrictor``, ``voxel_size``).

    ``noise``: what breaks ties between equal distances, in [0, 1e-4); default that of
    :func:`find_peaks` (google/ffn's RandomState(42) over the array).
    """
    filt_edges = _edges(canvas.image)
    r = canvas.restrictor
    # Masked areas count as edges so that they do not distort the distances elsewhere.
    if r is not None:
        if r.mask is not None:
            filt_edges[r.mask] = 1
        if r.seed_mask is not None:
            filt_edges[r.seed_mask] = 1
    if np.all(filt_edges):
        return None
    with PolicyPeaks._sem:
        dt = edt.edt(1 - filt_edges, anisotropy=tuple(canvas.voxel_size)).astype(np.float32)
        dt[exclusion] = -1
        dt[~np.isfinite(dt)] = -1
        kwargs = {"min_distance": 3, "threshold_abs": 0, "threshold_rel": 0}
        idxs = find_peaks(dt, **kwargs) if noise is None else skimage.feature.peak_local_max(dt + noise, **kwargs)
    return _sorted_rows(idxs)


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
    planes = [rng.rand(ny, nx)[start[1]:start[1] + shape[1], start[2]:start[2] + shape[2]] for _ in range(int(shape[0]))]
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

    def __init__(self, canvas: Any, min_distance: int = 7, threshold_abs: float = 2.5, sort_cmp: str = "ascending"):
        super().__init__(canvas)
        self.min_distance = int(min_distance)
        self.threshold_abs = float(threshold_abs)
        self.sort_reverse = sort_cmp.strip().lower().startswith("de")

    def init_coords(self) -> np.ndarray | None:
        r = self.canvas.restrictor
        found = []
        for z in range(self.canvas.image.shape[0]):
            filt_edges = _edges(self.canvas.image[z])
            if r is not None and r.mask is not None:
                filt_edges[r.mask[z]] = 1
            dt = edt.edt(1 - filt_edges).astype(np.float32)
            idxs = find_peaks(dt, min_distance=self.min_distance, threshold_abs=self.threshold_abs, threshold_rel=0)
            found.append(np.concatenate([np.full((len(idxs), 1), z, np.int64), idxs], axis=1))
        return _sorted_rows(np.concatenate(found), reverse=self.sort_reverse)


class PolicyFillEmptySpace(SeedPolicy):
    """Peaks of the distance to segmented voxels: fills what earlier passes left empty."""

    def init_coords(self) -> np.ndarray | None:
        dt = edt.edt(self.canvas.segmentation == 0).astype(np.float32)
        # threshold_abs < 1 keeps seeds out of segmented voxels (where dt = 0).
        return _sorted_rows(find_peaks(dt, min_distance=2, threshold_abs=0.5, threshold_rel=0))


class PolicyMax(SeedPolicy):
    """Every voxel, by descending image intensity."""

    def init_coords(self) -> np.ndarray | None:
        image = self.canvas.image
        order = np.argsort(image.ravel())[::-1]
        return np.stack(np.unravel_index(order, image.shape), axis=1)


class PolicyMaxPeaks(SeedPolicy):
    """Local intensity maxima (excluded voxels zeroed), sorted by z, y, x."""

    def init_coords(self) -> np.ndarray | None:
        img = self.canvas.image.astype(np.float32).copy()
        img[self.exclusion_mask()] = 0
        return _sorted_rows(find_peaks(img, min_distance=3, threshold_abs=0, threshold_rel=0))


class PolicyImagePeaks3D2D(SeedPolicy):
    """3-D intensity peaks, then 2-D intensity peaks of every z-slice (negative distance: skip)."""

    def __init__(self, canvas: Any, min_distance_2d: int = 2, min_distance_3d: int = 4):
        super().__init__(canvas)
        self.min_distance_2d = int(min_distance_2d)
        self.min_distance_3d = int(min_distance_3d)

    def init_coords(self) -> np.ndarray | None:
        img = self.canvas.image
        coords: list[Sequence[int]] = []
        if self.min_distance_3d >= 0:
            coords += skimage.feature.peak_local_max(img, min_distance=self.min_distance_3d).tolist()
        if self.min_distance_2d >= 0:
            for z in range(img.shape[0]):
                coords += [(z, y, x) for y, x in skimage.feature.peak_local_max(img[z], min_distance=self.min_distance_2d)]
        return np.array(coords, np.int64).reshape(-1, 3)


class PolicyImagePeaks2DDisk(SeedPolicy):
    """2-D intensity peaks of every z-slice with a disk footprint."""

    def __init__(self, canvas: Any, min_distance_2d: int = 3, threshold_rel: float = 0.5, disk_radius: int = 1):
        super().__init__(canvas)
        self.min_distance_2d = int(min_distance_2d)
        self.threshold_rel = float(threshold_rel)
        self.disk_radius = int(disk_radius)

    def init_coords(self) -> np.ndarray | None:
        img = self.canvas.image
        footprint = skimage.morphology.disk(radius=self.disk_radius)
        coords = []
        for z in range(img.shape[0]):
            peaks = skimage.feature.peak_local_max(
                img[z], min_distance=self.min_distance_2d, p_norm=2, threshold_rel=self.threshold_rel,
                exclude_border=True, footprint=footprint,
            )
            coords += [(z, y, x) for y, x in peaks]
        return np.array(coords, np.int64).reshape(-1, 3)


class PolicyGrid3d(SeedPolicy):
    """A regular 3-D grid of step ``step``, repeated at each of the interleaved ``offsets``.

    ``origin`` (z, y, x, relative to this subvolume; default its first voxel, as google/ffn)
    is where the grids are anchored. Blockwise segmentation anchors every block's grid at the
    job's first voxel, so that the blocks propose the seeds of one subvolume over the whole box.
    """

    def __init__(self, canvas: Any, step: int = 16, offsets: Sequence[int] = (0, 8, 4, 12, 2, 10, 14), origin: Sequence[int] = (0, 0, 0)):
        super().__init__(canvas)
        self.step = int(step)
        self.offsets = tuple(int(o) for o in offsets)
        self.origin = _grid_origin(origin, type(self).__name__)
        if self.step < 1:
            raise ConfigError(f"PolicyGrid3d step {step} must be >= 1")

    def init_coords(self) -> np.ndarray | None:
        coords = [
            (z, y, x)
            for o in self.offsets
            for z in _lattice(self.canvas.shape[0], self.origin[0] + o, self.step)
            for y in _lattice(self.canvas.shape[1], self.origin[1] + o, self.step)
            for x in _lattice(self.canvas.shape[2], self.origin[2] + o, self.step)
        ]
        return np.array(coords, np.int64).reshape(-1, 3)


def _grid_origin(origin: Sequence[int], policy: str) -> tuple[int, int, int]:
    if len(origin) != 3:
        raise ConfigError(f"{policy} origin {list(origin)} must be 3 integers z, y, x, e.g. origin = [0, 0, 0]")
    return tuple(int(o) for o in origin)  # type: ignore[return-value]


def _lattice(n: int, start: int, step: int) -> range:
    """The positions in ``[0, n)`` congruent to ``start`` modulo ``step``."""
    return range(start % step, n, step)


class PolicyGrid2d(SeedPolicy):
    """A regular y/x grid on every z-slice, repeated at each of the interleaved ``offsets``.

    ``origin``: as for :class:`PolicyGrid3d` (its z is not used).
    """

    def __init__(self, canvas: Any, step: int = 16, offsets: Sequence[int] = (0, 8, 4, 12, 2, 6, 10, 14), origin: Sequence[int] = (0, 0, 0)):
        super().__init__(canvas)
        self.step = int(step)
        self.offsets = tuple(int(o) for o in offsets)
        self.origin = _grid_origin(origin, type(self).__name__)
        if self.step < 1:
            raise ConfigError(f"PolicyGrid2d step {step} must be >= 1")

    def init_coords(self) -> np.ndarray | None:
        sz, sy, sx = self.canvas.shape
        coords = [
            (z, y, x)
            for o in self.offsets
            for z in range(sz)
            for y in _lattice(sy, self.origin[1] + o, self.step)
            for x in _lattice(sx, self.origin[2] + o, self.step)
        ]
        return np.array(coords, np.int64).reshape(-1, 3)


class PolicyInvertOrigins(SeedPolicy):
    """The seeds of a previous run's segments, by segment id descending (the "reverse" run).

    Parameters
    ----------
    segmentation : str, optional
        Output spec of the previous run (its origins are read from it).
    origins : dict, optional
        ``{id: (z, y, x) or Origin}`` directly, instead of ``segmentation``.
    corner : (z, y, x)
        Global position of this subvolume when the origins are global; default: they are
        relative to this subvolume.
    """

    def __init__(
        self,
        canvas: Any,
        segmentation: str | None = None,
        origins: dict | None = None,
        corner: Sequence[int] | None = None,
    ):
        super().__init__(canvas)
        if (segmentation is None) == (origins is None):
            raise ConfigError("PolicyInvertOrigins needs exactly one of segmentation='SPEC' (a previous run) or origins")
        self.segmentation = segmentation
        self.origins = origins
        self.corner = np.zeros(3, np.int64) if corner is None else np.asarray(corner, np.int64)

    def init_coords(self) -> np.ndarray | None:
        origins = self.origins
        if origins is None:
            from .storage import load_origins

            origins = load_origins(self.segmentation)
        starts = []
        for sid in sorted(origins, reverse=True):
            o = origins[sid]
            starts.append(getattr(o, "start_zyx", o))
        return np.array(starts, np.int64).reshape(-1, 3) - self.corner


class PolicyDenseSeeds(SeedPolicy):
    """Every voxel of the thresholded (optionally inverted, eroded) image, in C order."""

    def __init__(self, canvas: Any, threshold: float = 0.5, num_erosions: int = 0, invert: bool = False):
        super().__init__(canvas)
        self.threshold = float(threshold)
        self.num_erosions = int(num_erosions)
        self.invert = bool(invert)

    def init_coords(self) -> np.ndarray | None:
        x = np.asarray(self.canvas.image > self.threshold)
        if self.invert:
            x = ~x
        for _ in range(self.num_erosions):
            x = skimage.morphology.binary_erosion(x)
        return np.argwhere(x)


class ReverseCoords(SeedPolicy):
    """Another policy's seeds in reverse order."""

    def __init__(self, canvas: Any, policy_to_reverse: str, **policy_kwargs: Any):
        super().__init__(canvas)
        self.policy = make_seed_policy(policy_to_reverse, canvas, policy_kwargs)

    def init_coords(self) -> np.ndarray | None:
        return np.array(list(self.policy)[::-1], np.int64).reshape(-1, 3)


class SequentialPolicies(SeedPolicy):
    """The seeds of several policies, one policy after the other.

    ``policies`` is a list of ``[name, {kwargs}]`` pairs. Coordinates of all policies are
    computed when the first seed is requested (as the reference does), so later policies see
    the segmentation as it was then.
    """

    def __init__(self, canvas: Any, policies: Sequence[tuple[str, dict[str, Any]]]):
        super().__init__(canvas)
        if not policies:
            raise ConfigError("SequentialPolicies needs a non-empty policies list of [name, {args}] pairs")
        self.policies = []
        for item in policies:
            if isinstance(item, str):
                name, kwargs = item, {}
            else:
                name, kwargs = item[0], (item[1] if len(item) > 1 else {})
            self.policies.append(make_seed_policy(name, canvas, kwargs))

    def init_coords(self) -> np.ndarray | None:
        return np.array(list(itertools.chain(*self.policies)), np.int64).reshape(-1, 3)


SEED_POLICIES: dict[str, type[SeedPolicy]] = {
    cls.__name__: cls
    for cls in (
        PolicyPeaks, PolicyPeaks2d, PolicyFillEmptySpace, PolicyMax, PolicyMaxPeaks, PolicyImagePeaks3D2D,
        PolicyImagePeaks2DDisk, PolicyGrid3d, PolicyGrid2d, PolicyInvertOrigins, PolicyDenseSeeds,
        ReverseCoords, SequentialPolicies,
    )
}
# The reference manual's name for PolicyInvertOrigins.
SEED_POLICIES["PolicyInverseOrigins"] = PolicyInvertOrigins


def check_seed_policy(name: str, kwargs: dict[str, Any] | None = None) -> None:
    """Raise ConfigError if ``name`` is unknown or ``kwargs`` do not fit its parameters."""
    cls = SEED_POLICIES.get(name)
    if cls is None:
        raise ConfigError(f"unknown seed policy {name!r}; choose one of {', '.join(sorted(SEED_POLICIES))}")
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs or {}) - set(params) - {"self"})
    if unknown:
        allowed = [p for p in params if p not in ("self", "canvas")]
        raise ConfigError(
            f"seed policy {name} has no argument {', '.join(unknown)}; it takes: {', '.join(allowed) or 'none'}"
        )


def make_seed_policy(name: str, canvas: Any, kwargs: dict[str, Any] | None = None) -> SeedPolicy:
    """The seed policy ``name`` for ``canvas`` with keyword arguments ``kwargs``."""
    check_seed_policy(name, kwargs)
    try:
        return SEED_POLICIES[name](canvas, **(kwargs or {}))
    except TypeError as e:
        raise ConfigError(f"seed policy {name}: {e}") from None

