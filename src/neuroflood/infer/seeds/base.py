"""The seed-policy interface: what a policy reads of a canvas, and how it is made and placed.

A :class:`SeedPolicy` is an iterator of z, y, x positions where the Canvas tries to start new
objects, in order. It computes its coordinates lazily, on the first seed requested, from the
canvas it belongs to (a :class:`SeedCanvas`: only what that protocol names may be read). Its
state for checkpoints is ``(coords, idx)``; ``previous=True`` steps back one seed so that an
interrupted object is retried from the same seed.

A policy is resolved once from its name and arguments into a :class:`SeedPolicyFactory`
(google/ffn passes a ``functools.partial`` of the policy class the same way); the factory
makes the policy for a canvas. Blockwise segmentation first places the factory in the job
(:meth:`SeedPolicyFactory.in_job`), so that every block proposes the seeds one subvolume over
the whole box would; a policy class says how through :meth:`SeedPolicy.in_job` (default:
unchanged). The seed policies do no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...bbox import BoundingBox
from ...errors import ConfigError

if TYPE_CHECKING:
    from ..movement import MovementRestrictor


class SeedCanvas(Protocol):
    """What a seed policy may read of the canvas it seeds."""

    image: np.ndarray  # the normalized float32 image (z, y, x)
    margin: Sequence[int]  # half the network's image FOV (z, y, x): seeds closer to the edge are dropped
    voxel_size: Sequence[float]  # z, y, x (anisotropy of distance transforms)

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def segmentation(self) -> np.ndarray: ...  # int ids, > 0 segmented

    @property
    def restrictor(self) -> MovementRestrictor | None: ...  # movement and seed masks


@dataclass
class ImageView:
    """A :class:`SeedCanvas` over an image that is not a Canvas's: nothing segmented yet.

    ``corner`` is the view's global start (z, y, x); blockwise segmentation shows a policy
    the image around a block's canvas through it.
    """

    image: np.ndarray
    restrictor: Any
    voxel_size: tuple[float, ...]
    margin: tuple[int, ...]
    corner: tuple[int, ...] = (0, 0, 0)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.image.shape

    @property
    def segmentation(self) -> np.ndarray:
        return np.zeros(self.image.shape, np.int32)

    @property
    def box(self) -> BoundingBox:
        """The view's global box."""
        return BoundingBox(tuple(self.corner), self.image.shape)


# Builds the image view around a block's canvas on demand (policies that look beyond it).
ImageSource = Callable[[], ImageView] | None


class SeedPolicy:
    """Base class: lazy coordinates, image-margin filtering and checkpoint state."""

    def __init__(self, canvas: SeedCanvas):
        self.canvas = canvas
        self.coords: np.ndarray | None = None  # [N, 3] z, y, x
        self.idx = 0

    # -- placing the policy in a blockwise job (class level: before there is a canvas) ------
    @classmethod
    def context_beyond_canvas(cls, args: dict[str, Any]) -> int:
        """Voxels of image beyond a block's canvas that :meth:`in_job` reads (default 0)."""
        return 0

    @classmethod
    def resolve_args(
        cls,
        args: dict[str, Any],
        resolve: Callable[..., SeedPolicyFactory],
        load_origins: Callable[[str], dict] | None = None,
    ) -> dict[str, Any]:
        """``args`` as the policy takes them: policies they name resolved by ``resolve(name,
        args)`` (wrappers), output specs read by ``load_origins`` (PolicyInvertOrigins)."""
        return args

    @classmethod
    def in_job(
        cls, policy: SeedPolicyFactory, job_box: BoundingBox | None, canvas_box: BoundingBox, image_beyond: ImageSource = None
    ) -> SeedPolicyFactory:
        """The policy to use for the canvas ``canvas_box`` (global) of a job over ``job_box``.

        Default: ``policy`` unchanged. See :meth:`SeedPolicyFactory.in_job`.
        """
        return policy

    # -- seeds -----------------------------------------------------------------------------
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

    def __iter__(self) -> SeedPolicy:
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
        return exclusion_mask(self.canvas)


def exclusion_mask(canvas: SeedCanvas) -> np.ndarray:
    """Voxels of ``canvas`` where no seed can be valid: segmented, movement- or seed-masked."""
    mask = canvas.segmentation > 0
    r = canvas.restrictor
    if r is not None:
        if r.mask is not None:
            mask |= r.mask
        if r.seed_mask is not None:
            mask |= r.seed_mask
    return mask


@dataclass(frozen=True)
class SeedPolicyFactory:
    """A seed policy resolved from its name and checked arguments; ``factory(canvas)`` makes it."""

    cls: type[SeedPolicy]
    args: dict[str, Any] = field(default_factory=dict)

    def __call__(self, canvas: SeedCanvas) -> SeedPolicy:
        try:
            return self.cls(canvas, **self.args)
        except TypeError as e:
            raise ConfigError(f"seed policy {self.cls.__name__}: {e}") from None

    @property
    def context_beyond_canvas(self) -> int:
        """Voxels of image beyond a block's canvas that :meth:`in_job` reads."""
        return self.cls.context_beyond_canvas(self.args)

    def in_job(
        self,
        job_box: BoundingBox | None,
        canvas_box: BoundingBox,
        image_beyond: Callable[[], ImageView] | None = None,
    ) -> SeedPolicyFactory:
        """The policy to use for one block's canvas, placed in the job.

        ``job_box``: the whole job's box (global; None: unknown, grids then anchor at the
        volume's first voxel and peaks see only the block's surroundings); ``canvas_box``:
        the block's canvas (global); ``image_beyond()``: the image around the canvas,
        ``context_beyond_canvas`` voxels wide, clipped to the job's box (computed only if a
        policy asks for it). Grid policies anchor their lattice at the job's first voxel,
        PolicyPeaks computes its peaks beyond the canvas, wrappers place what they wrap,
        other policies are returned unchanged.
        """
        return self.cls.in_job(self, job_box, canvas_box, image_beyond)


__all__ = ["ImageView", "SeedCanvas", "SeedPolicy", "SeedPolicyFactory", "exclusion_mask"]
