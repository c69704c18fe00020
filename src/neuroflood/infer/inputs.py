"""A subvolume's inputs, checked and prepared before any work: the request, the image, masks.

:func:`validate` refuses a model, subvolume and request that do not fit together;
:func:`check_finite` an image with NaN or infinite values; :func:`build_mask` makes the
movement and seed masks of a request over a box; :func:`normalize_image` gives the network's
input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..bbox import BoundingBox
from ..errors import ConfigError, DataError, VolumeError
from ..volume import open_volume
from .config import InferenceRequest, MaskConfig
from .executor import check_batch_memory
from .expression import evaluate_expression
from .movement import MOVEMENT_POLICIES
from .seeds import check_seed_policy


def as_request(request: InferenceRequest | dict[str, Any] | None) -> InferenceRequest:
    """``request`` as an InferenceRequest (a dict is validated; None: the defaults)."""
    if isinstance(request, InferenceRequest):
        return request
    return InferenceRequest.build(request)


def validate(model: torch.nn.Module, shape: Sequence[int], request: InferenceRequest) -> None:
    """Raise a neuroflood error if the model, the subvolume and the request do not fit."""
    fov = tuple(model.config.fov_size)
    deltas = tuple(request.movement_policy_args.get("deltas", model.config.deltas))
    if len(shape) != 3:
        raise DataError(f"the image has {len(shape)} dimensions; segmentation needs a 3-D (z, y, x) image")
    if any(s < f for s, f in zip(shape, fov)):
        raise DataError(f"the subvolume {tuple(shape)} is smaller than the network's field of view {fov} (z,y,x); choose a larger --bbox")
    if len(deltas) != 3 or any(2 * d + 1 > f for d, f in zip(deltas, fov)):
        raise ConfigError(f"movement deltas {deltas} do not fit the model's FOV {fov}: 2*delta+1 must be <= FOV on every axis")
    check_seed_policy(request.seed_policy, request.seed_policy_args)
    if request.movement_policy not in MOVEMENT_POLICIES:
        raise ConfigError(f"unknown movement policy {request.movement_policy!r}; choose one of {', '.join(MOVEMENT_POLICIES)}")
    extra = set(request.movement_policy_args) - {"deltas", "score_threshold"}
    if extra:
        raise ConfigError(f"movement_policy_args has unknown keys {', '.join(sorted(extra))}; it takes deltas and score_threshold")
    score = request.movement_policy_args.get("score_threshold")
    if score is not None and not 0 < float(score) < 1:
        raise ConfigError(f"movement_policy_args.score_threshold {score} must be a probability in (0, 1)")
    check_batch_memory(model, request.batch_size, request.device)


def check_finite(image: np.ndarray, corner: Sequence[int] = (0, 0, 0)) -> None:
    """Raise DataError if a float image holds NaN or infinite values (the network would turn
    them into NaN logits, and nothing would be segmented without a word)."""
    if image.dtype.kind not in "fc" or bool(np.isfinite(image).all()):
        return
    bad = np.argwhere(~np.isfinite(image))
    first = tuple(int(c + v) for c, v in zip(corner, bad[0]))
    raise DataError(
        f"the image has {len(bad)} NaN or infinite values in the box at {tuple(int(c) for c in corner)} "
        f"(the first at z,y,x = {first}); replace them, e.g. with the image mean, before segmenting"
    )


def build_mask(configs: Sequence[MaskConfig], image: np.ndarray, corner: Sequence[int]) -> np.ndarray | None:
    """OR of the masks ``configs`` over the box at ``corner`` with ``image``'s shape."""
    if not configs:
        return None
    shape = image.shape
    box = BoundingBox(tuple(corner), shape)
    out = np.zeros(shape, bool)
    for cfg in configs:
        if cfg.expression is not None:
            z, y, x = np.ogrid[tuple(slice(c, c + s) for c, s in zip(corner, shape))]
            # Configs come from other labs: never eval; a checked arithmetic grammar only.
            m = np.broadcast_to(np.asarray(evaluate_expression(cfg.expression, z, y, x), bool), shape)
        else:
            if cfg.image:
                values = image
            else:
                assert cfg.volume is not None
                vol = open_volume(cfg.volume)
                try:
                    if any(b > s for b, s in zip(box.stop, vol.shape[:3])):
                        raise VolumeError(
                            f"mask volume {cfg.volume} has shape {vol.shape[:3]}, it must cover the box {tuple(corner)}..{box.stop}"
                        )
                    values = vol[box.to_slices()]
                finally:
                    vol.close()
                if values.ndim == 4:  # channel last: any channel selects
                    raise VolumeError(f"mask volume {cfg.volume} must be 3-D (z, y, x), got shape {values.shape}")
            if cfg.values is not None:
                m = np.isin(values, cfg.values)
            else:
                lo = -np.inf if cfg.min_value is None else cfg.min_value
                hi = np.inf if cfg.max_value is None else cfg.max_value
                m = (values >= lo) & (values <= hi)
        out |= ~m if cfg.invert else m
    return out


def normalize_image(model: torch.nn.Module, image: np.ndarray, request: InferenceRequest) -> np.ndarray:
    """``(image - mean) / stddev`` in float32, with the request's or else the model's statistics."""
    mean = model.config.image_mean if request.image_mean is None else request.image_mean
    std = model.config.image_stddev if request.image_stddev is None else request.image_stddev
    return (np.asarray(image).astype(np.float32) - np.float32(mean)) / np.float32(std)


__all__ = ["as_request", "build_mask", "check_finite", "normalize_image", "validate"]
