"""Seeds given explicitly: a previous run's origins, or a list of positions.

google/ffn ``PolicyInvertOrigins``. The origins are given as a dict; a previous run's output
spec (``segmentation='SPEC'``) is read into origins when the policy is resolved, by the
``load_origins`` the caller passes to :func:`~neuroflood.infer.seeds.resolve_seed_policy`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import ConfigError
from .base import SeedCanvas, SeedPolicy, SeedPolicyFactory


class PolicyInvertOrigins(SeedPolicy):
    """The seeds of a previous run's segments, by segment id descending (the "reverse" run).

    Parameters
    ----------
    segmentation : str, optional
        Output spec of the previous run; its origins are read when the policy is resolved.
    origins : dict, optional
        ``{id: (z, y, x) or Origin}`` directly, instead of ``segmentation``.
    corner : (z, y, x)
        Global position of this subvolume when the origins are global; default: they are
        relative to this subvolume.
    """

    def __init__(
        self,
        canvas: SeedCanvas,
        segmentation: str | None = None,
        origins: dict | None = None,
        corner: Sequence[int] | None = None,
    ):
        super().__init__(canvas)
        if (segmentation is None) == (origins is None):
            raise ConfigError("PolicyInvertOrigins needs exactly one of segmentation='SPEC' (a previous run) or origins")
        if origins is None:
            raise ConfigError(
                f"PolicyInvertOrigins: the origins of segmentation={segmentation!r} are read when the policy is "
                "resolved with a load_origins; use segment_subvolume, or pass origins"
            )
        self.origins = origins
        self.corner = np.zeros(3, np.int64) if corner is None else np.asarray(corner, np.int64)

    @classmethod
    def resolve_args(
        cls, args: dict[str, Any], resolve: Callable[..., SeedPolicyFactory], load_origins: Callable[[str], dict] | None = None
    ) -> dict[str, Any]:
        if args.get("segmentation") is None or args.get("origins") is not None or load_origins is None:
            return args
        rest = {k: v for k, v in args.items() if k != "segmentation"}
        return {**rest, "origins": load_origins(args["segmentation"])}

    def init_coords(self) -> np.ndarray | None:
        starts = []
        for sid in sorted(self.origins, reverse=True):
            o = self.origins[sid]
            starts.append(getattr(o, "start_zyx", o))
        return np.array(starts, np.int64).reshape(-1, 3) - self.corner


def explicit_seeds(seeds: np.ndarray, canvas_corner: Sequence[int]) -> SeedPolicyFactory:
    """A policy seeding exactly at ``seeds`` (global z, y, x), in their order.

    PolicyInvertOrigins tries origins by id, descending: id n is the first seed.
    """
    n = len(seeds)
    origins = {n - k: tuple(int(v) for v in seed) for k, seed in enumerate(seeds)}
    return SeedPolicyFactory(PolicyInvertOrigins, {"origins": origins, "corner": [int(c) for c in canvas_corner]})


__all__ = ["PolicyInvertOrigins", "explicit_seeds"]
