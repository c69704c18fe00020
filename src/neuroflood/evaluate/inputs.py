"""Open the volumes of an evaluation (segmentation, ground truth, image) and crop them alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bbox import BoundingBox
from ..errors import DataError
from ..volume import open_volume
from .metrics import check_label_volumes

__all__ = ["CroppedVolume", "EvaluationInputs", "open_evaluation_inputs", "voxel_size_of", "parse_point"]


class CroppedVolume:
    """A read-only window ``box`` of a volume, indexed from 0 like a volume of its own."""

    def __init__(self, volume: Any, box: BoundingBox):
        self.volume = volume
        self.box = box
        self.spec = f"{getattr(volume, 'spec', 'array')}[{box}]"
        self.shape = tuple(box.size) + tuple(volume.shape[3:])
        self.dtype = np.dtype(volume.dtype)
        self.attrs = getattr(volume, "attrs", {})

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if Ellipsis in key:
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (len(self.shape) - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        shifted = []
        for k, start, size in zip(key[:3], self.box.start, self.box.size):
            if isinstance(k, (int, np.integer)):
                shifted.append(start + int(k))
            else:
                a, b, _ = k.indices(size)
                shifted.append(slice(start + a, start + b))
        return self.volume[tuple(shifted) + tuple(key[3:])]


@dataclass
class EvaluationInputs:
    seg: Any
    gt: Any
    image: Any | None
    offset: tuple[int, int, int]  # where the evaluated region starts in the ground truth

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.gt.shape)


def open_evaluation_inputs(seg_spec: str, gt_spec: str, image_spec: str | None = None, bbox: BoundingBox | None = None) -> EvaluationInputs:
    """Open SEG, GT and IMG lazily; with ``bbox``, evaluate that region only.

    Ground truth and image are cropped to ``bbox``. The segmentation is cropped too when it
    has the ground truth's full shape; otherwise it must already have the box's size (a
    segmentation of just that region).
    """
    seg, gt = open_volume(seg_spec), open_volume(gt_spec)
    image = open_volume(image_spec) if image_spec else None
    offset = (0, 0, 0)
    if bbox is not None:
        if len(gt.shape) < 3 or bbox.clip(gt.shape[:3]) != bbox:
            raise DataError(f"--bbox {bbox} reaches outside ground truth {gt_spec} of shape {tuple(gt.shape)}")
        if tuple(seg.shape) == tuple(gt.shape):
            seg = CroppedVolume(seg, bbox)
        elif tuple(seg.shape) != tuple(bbox.size):
            raise DataError(
                f"segmentation shape {tuple(seg.shape)} is neither the ground truth's {tuple(gt.shape)} "
                f"nor the --bbox size {tuple(bbox.size)}; give a segmentation of one of them"
            )
        gt = CroppedVolume(gt, bbox)
        if image is not None:
            image = CroppedVolume(image, bbox)
        offset = tuple(bbox.start)
    check_label_volumes(seg, gt, image)
    return EvaluationInputs(seg, gt, image, offset)


def voxel_size_of(*volumes: Any) -> tuple[float, float, float]:
    """Voxel size z, y, x from the first volume that records one (``resolution_nm_zyx`` or
    ``resolution``), else (1, 1, 1)."""
    for vol in volumes:
        attrs = getattr(vol, "attrs", None) or {}
        for key in ("resolution_nm_zyx", "resolution"):
            if key in attrs:
                value = np.asarray(attrs[key], dtype=np.float64).ravel()
                if value.size == 3 and (value > 0).all():
                    return tuple(float(v) for v in value)
    return (1.0, 1.0, 1.0)


def parse_point(text: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """Parse ``z,y,x`` and check it lies in ``shape``."""
    from ..config import parse_ints

    point = tuple(parse_ints(text, 3, "--at"))
    if not all(0 <= p < s for p, s in zip(point, shape)):
        raise DataError(f"--at {text} lies outside the evaluated region of shape {tuple(shape)}; give z,y,x inside it")
    return point
