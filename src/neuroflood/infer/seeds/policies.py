"""The other seed policies (intensity, grids, dense, wrappers), the registry of all of them
by name, and resolving a name and its arguments into a :class:`SeedPolicyFactory`.

google/ffn ``ffn/inference/seed.py`` (ffn-algorithms.md §3.5).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import skimage.feature
import skimage.morphology

from ...bbox import BoundingBox
from ...errors import ConfigError
from .base import ImageSource, SeedCanvas, SeedPolicy, SeedPolicyFactory
from .explicit import PolicyInvertOrigins
from .peaks import (
    PolicyFillEmptySpace,
    PolicyPeaks,
    PolicyPeaks2d,
    find_peaks,
    sorted_rows,
)


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
        return sorted_rows(find_peaks(img, min_distance=3, threshold_abs=0, threshold_rel=0))


class PolicyImagePeaks3D2D(SeedPolicy):
    """3-D intensity peaks, then 2-D intensity peaks of every z-slice (negative distance: skip)."""

    def __init__(self, canvas: SeedCanvas, min_distance_2d: int = 2, min_distance_3d: int = 4):
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

    def __init__(self, canvas: SeedCanvas, min_distance_2d: int = 3, threshold_rel: float = 0.5, disk_radius: int = 1):
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
                img[z],
                min_distance=self.min_distance_2d,
                p_norm=2,
                threshold_rel=self.threshold_rel,
                exclude_border=True,
                footprint=footprint,
            )
            coords += [(z, y, x) for y, x in peaks]
        return np.array(coords, np.int64).reshape(-1, 3)


class GridPolicy(SeedPolicy):
    """Base of the grid policies: in a blockwise job the lattice is anchored at the job's
    first voxel (unless ``origin`` is given), so that every block proposes the seeds of one
    subvolume over the whole box and overlapping blocks propose the same ones."""

    @classmethod
    def in_job(
        cls, policy: SeedPolicyFactory, job_box: BoundingBox | None, canvas_box: BoundingBox, image_beyond: ImageSource = None
    ) -> SeedPolicyFactory:
        if "origin" in policy.args:
            return policy
        anchor = job_box.start if job_box is not None else (0, 0, 0)
        origin = [int(a) - int(c) for a, c in zip(anchor, canvas_box.start)]
        return SeedPolicyFactory(cls, {**policy.args, "origin": origin})


class PolicyGrid3d(GridPolicy):
    """A regular 3-D grid of step ``step``, repeated at each of the interleaved ``offsets``.

    ``origin`` (z, y, x, relative to this subvolume; default its first voxel, as google/ffn)
    is where the grids are anchored.
    """

    def __init__(
        self, canvas: SeedCanvas, step: int = 16, offsets: Sequence[int] = (0, 8, 4, 12, 2, 10, 14), origin: Sequence[int] = (0, 0, 0)
    ):
        super().__init__(canvas)
        self.step = int(step)
        self.offsets = tuple(int(o) for o in offsets)
        self.origin = grid_origin(origin, type(self).__name__)
        if self.step < 1:
            raise ConfigError(f"PolicyGrid3d step {step} must be >= 1")

    def init_coords(self) -> np.ndarray | None:
        coords = [
            (z, y, x)
            for o in self.offsets
            for z in lattice(self.canvas.shape[0], self.origin[0] + o, self.step)
            for y in lattice(self.canvas.shape[1], self.origin[1] + o, self.step)
            for x in lattice(self.canvas.shape[2], self.origin[2] + o, self.step)
        ]
        return np.array(coords, np.int64).reshape(-1, 3)


def grid_origin(origin: Sequence[int], policy: str) -> tuple[int, int, int]:
    if len(origin) != 3:
        raise ConfigError(f"{policy} origin {list(origin)} must be 3 integers z, y, x, e.g. origin = [0, 0, 0]")
    return tuple(int(o) for o in origin)  # type: ignore[return-value]


def lattice(n: int, start: int, step: int) -> range:
    """The positions in ``[0, n)`` congruent to ``start`` modulo ``step``."""
    return range(start % step, n, step)


class PolicyGrid2d(GridPolicy):
    """A regular y/x grid on every z-slice, repeated at each of the interleaved ``offsets``.

    ``origin``: as for :class:`PolicyGrid3d` (its z is not used).
    """

    def __init__(
        self, canvas: SeedCanvas, step: int = 16, offsets: Sequence[int] = (0, 8, 4, 12, 2, 6, 10, 14), origin: Sequence[int] = (0, 0, 0)
    ):
        super().__init__(canvas)
        self.step = int(step)
        self.offsets = tuple(int(o) for o in offsets)
        self.origin = grid_origin(origin, type(self).__name__)
        if self.step < 1:
            raise ConfigError(f"PolicyGrid2d step {step} must be >= 1")

    def init_coords(self) -> np.ndarray | None:
        sz, sy, sx = self.canvas.shape
        coords = [
            (z, y, x)
            for o in self.offsets
            for z in range(sz)
            for y in lattice(sy, self.origin[1] + o, self.step)
            for x in lattice(sx, self.origin[2] + o, self.step)
        ]
        return np.array(coords, np.int64).reshape(-1, 3)


class PolicyDenseSeeds(SeedPolicy):
    """Every voxel of the thresholded (optionally inverted, eroded) image, in C order."""

    def __init__(self, canvas: SeedCanvas, threshold: float = 0.5, num_erosions: int = 0, invert: bool = False):
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
    """Another policy's seeds in reverse order (in a job, the other policy is placed in it)."""

    def __init__(self, canvas: SeedCanvas, policy_to_reverse: str | SeedPolicyFactory, **policy_kwargs: Any):
        super().__init__(canvas)
        if not isinstance(policy_to_reverse, SeedPolicyFactory):
            policy_to_reverse = resolve_seed_policy(policy_to_reverse, policy_kwargs)
        self.policy = policy_to_reverse(canvas)

    @classmethod
    def resolve_args(
        cls, args: dict[str, Any], resolve: Callable[..., SeedPolicyFactory], load_origins: Callable[[str], dict] | None = None
    ) -> dict[str, Any]:
        if not isinstance(args.get("policy_to_reverse"), str):
            return args  # refused with its own message when made
        inner = {k: v for k, v in args.items() if k != "policy_to_reverse"}
        return {"policy_to_reverse": resolve(args["policy_to_reverse"], inner)}

    @classmethod
    def context_beyond_canvas(cls, args: dict[str, Any]) -> int:
        return args["policy_to_reverse"].context_beyond_canvas

    @classmethod
    def in_job(
        cls, policy: SeedPolicyFactory, job_box: BoundingBox | None, canvas_box: BoundingBox, image_beyond: ImageSource = None
    ) -> SeedPolicyFactory:
        inner = policy.args["policy_to_reverse"]
        placed = inner.in_job(job_box, canvas_box, image_beyond)
        return policy if placed is inner else SeedPolicyFactory(cls, {"policy_to_reverse": placed})

    def init_coords(self) -> np.ndarray | None:
        return np.array(list(self.policy)[::-1], np.int64).reshape(-1, 3)


class SequentialPolicies(SeedPolicy):
    """The seeds of several policies, one policy after the other.

    ``policies`` is a list of ``[name, {kwargs}]`` pairs (or resolved policies). Coordinates
    of all policies are computed when the first seed is requested (as the reference does), so
    later policies see the segmentation as it was then. In a job each is placed in it.
    """

    def __init__(self, canvas: SeedCanvas, policies: Sequence[Any]):
        super().__init__(canvas)
        if not policies:
            raise ConfigError("SequentialPolicies needs a non-empty policies list of [name, {args}] pairs")
        self.policies = [
            (item if isinstance(item, SeedPolicyFactory) else resolve_seed_policy(*_name_and_args(item)))(canvas) for item in policies
        ]

    @classmethod
    def resolve_args(
        cls, args: dict[str, Any], resolve: Callable[..., SeedPolicyFactory], load_origins: Callable[[str], dict] | None = None
    ) -> dict[str, Any]:
        policies = args.get("policies")
        if not policies:
            return args  # refused with its own message when made
        return {**args, "policies": [resolve(*_name_and_args(item)) for item in policies]}

    @classmethod
    def context_beyond_canvas(cls, args: dict[str, Any]) -> int:
        return max((p.context_beyond_canvas for p in args.get("policies") or ()), default=0)

    @classmethod
    def in_job(
        cls, policy: SeedPolicyFactory, job_box: BoundingBox | None, canvas_box: BoundingBox, image_beyond: ImageSource = None
    ) -> SeedPolicyFactory:
        inner = policy.args["policies"]
        placed = [p.in_job(job_box, canvas_box, image_beyond) for p in inner]
        if all(a is b for a, b in zip(placed, inner)):
            return policy
        return SeedPolicyFactory(cls, {**policy.args, "policies": placed})

    def init_coords(self) -> np.ndarray | None:
        return np.array(list(itertools.chain(*self.policies)), np.int64).reshape(-1, 3)


def _name_and_args(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    return item[0], (item[1] if len(item) > 1 else {})


SEED_POLICIES: dict[str, type[SeedPolicy]] = {
    cls.__name__: cls
    for cls in (
        PolicyPeaks,
        PolicyPeaks2d,
        PolicyFillEmptySpace,
        PolicyMax,
        PolicyMaxPeaks,
        PolicyImagePeaks3D2D,
        PolicyImagePeaks2DDisk,
        PolicyGrid3d,
        PolicyGrid2d,
        PolicyInvertOrigins,
        PolicyDenseSeeds,
        ReverseCoords,
        SequentialPolicies,
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
        raise ConfigError(f"seed policy {name} has no argument {', '.join(unknown)}; it takes: {', '.join(allowed) or 'none'}")


def resolve_seed_policy(
    name: str, kwargs: dict[str, Any] | None = None, load_origins: Callable[[str], dict] | None = None
) -> SeedPolicyFactory:
    """The seed policy ``name`` with keyword arguments ``kwargs``, checked, ready to be made.

    Policies a wrapper names are resolved too; ``load_origins(spec)`` reads a previous run's
    origins for PolicyInvertOrigins' ``segmentation`` (the policies do no I/O themselves).
    """
    check_seed_policy(name, kwargs)
    cls = SEED_POLICIES[name]
    resolve = partial(resolve_seed_policy, load_origins=load_origins)
    return SeedPolicyFactory(cls, cls.resolve_args(dict(kwargs or {}), resolve, load_origins))


def make_seed_policy(name: str, canvas: SeedCanvas, kwargs: dict[str, Any] | None = None) -> SeedPolicy:
    """The seed policy ``name`` for ``canvas`` with keyword arguments ``kwargs``."""
    return resolve_seed_policy(name, kwargs)(canvas)


__all__ = [
    "SEED_POLICIES",
    "GridPolicy",
    "PolicyDenseSeeds",
    "PolicyGrid2d",
    "PolicyGrid3d",
    "PolicyImagePeaks2DDisk",
    "PolicyImagePeaks3D2D",
    "PolicyMax",
    "PolicyMaxPeaks",
    "ReverseCoords",
    "SequentialPolicies",
    "check_seed_policy",
    "make_seed_policy",
    "resolve_seed_policy",
]
