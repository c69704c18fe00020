"""Training patches: the image, soft labels and loss weights around a training coordinate.

google/ffn ``ffn/training/examples.py`` (ffn-algorithms.md §2.3): :class:`PatchSource` opens
the volumes a coordinate file names, checks them and the coordinates up front (one-line
:class:`~neuroflood.errors.DataError` naming the volume), and reads the patch of
``fov + 2·deltas·moves`` around a coordinate. The target is the object containing the patch
centre, softened to 0.95 / 0.05 (all 0.05 when the centre is background); the image is
normalized ``(img − mean) / stddev`` per volume. :class:`Augmentation` permutes and flips
axes (identically for image, labels and weights) and optionally changes contrast and
brightness. All coordinates are z, y, x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..prepare.coordfile import CoordinateShard
from ..volume import Volume, open_volume
from .config import TrainConfig

LABEL_SOFTNESS = 0.05  # soften_labels: 0.95 inside the object, 0.05 elsewhere


@dataclass(frozen=True)
class Augmentation:
    """One example's augmentation: axis permutation (of z,y,x), flips, contrast, brightness."""

    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    contrast: float = 1.0
    brightness: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator, config: TrainConfig) -> Augmentation:
        """Draw in the reference's order: permutation, then one Bernoulli(½) flip per axis."""
        perm = [0, 1, 2]
        axes = list(config.permutable_axes)
        if axes:
            for a, b in zip(axes, rng.permutation(axes)):
                perm[a] = int(b)
        flips = [False, False, False]
        for a, f in zip(config.reflectable_axes, rng.random(len(config.reflectable_axes)) > 0.5):
            flips[a] = bool(f)
        contrast = float(rng.uniform(*config.contrast_factor_range)) if config.contrast_factor_range else 1.0
        brightness = float(rng.uniform(*config.brightness_factor_range)) if config.brightness_factor_range else 0.0
        return cls(tuple(perm), tuple(flips), contrast, brightness)  # type: ignore[arg-type]

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Permute, then flip; a contiguous copy."""
        a = np.transpose(a, self.permutation)
        return np.ascontiguousarray(a[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)])


@dataclass
class Patch:
    """One training patch: normalized image, soft labels, weights (float32, z,y,x)."""

    image: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


@dataclass
class TrainingVolumes:
    """The opened volumes of one volume name, with its image normalization."""

    name: str
    image: Volume
    labels: Volume
    weights: Volume | None
    mean: float
    stddev: float


class PatchSource:
    """Opens the image/label/weight volumes named in a coordinate file and reads patches.

    Raises :class:`DataError` for unknown volume names, image/labels shape mismatches,
    non-integer labels and coordinates too close to a volume's edge for the patch.
    """

    def __init__(self, config: TrainConfig, volume_names: Sequence[str]):
        self.patch_size = config.patch_size()
        self.config = config
        self.volumes: dict[int, TrainingVolumes] = {}
        self.volume_names = list(volume_names)
        self._adjust_to = config.apply_adjustment_to

    def for_volumes(self, volume_names: Sequence[str]) -> PatchSource:
        """A source for another coordinate file's volume-name table (itself if they agree)."""
        if list(volume_names) == self.volume_names:
            return self
        return PatchSource(self.config, volume_names)

    def _open(self, index: int) -> TrainingVolumes:
        if index in self.volumes:
            return self.volumes[index]
        c = self.config
        name = self.volume_names[index]
        if name not in c.images or name not in c.labels:
            have = ", ".join(sorted(set(c.images) & set(c.labels))) or "none"
            raise DataError(
                f"the coordinates use volume {name!r}, but no image and labels are given for it "
                f"(have: {have}); pass --image {name}=SPEC --labels {name}=SPEC"
            )
        image, labels = open_volume(c.images[name]), open_volume(c.labels[name])
        if tuple(image.shape) != tuple(labels.shape) or len(image.shape) != 3:
            raise DataError(
                f"volume {name!r}: image {c.images[name]} has shape {tuple(image.shape)} but labels "
                f"{c.labels[name]} have {tuple(labels.shape)}; give a 3-D image and labels of one shape"
            )
        if np.dtype(labels.dtype).kind not in "iu":
            raise DataError(f"labels {c.labels[name]} have dtype {labels.dtype}; give integer object ids")
        weights = None
        if name in c.loss_weights:
            weights = open_volume(c.loss_weights[name])
            if tuple(weights.shape) != tuple(image.shape):
                raise DataError(
                    f"loss weights {c.loss_weights[name]} have shape {tuple(weights.shape)}, "
                    f"the image {tuple(image.shape)}; give weights of the image's shape"
                )
            if np.dtype(weights.dtype).kind not in "biuf":
                raise DataError(f"loss weights {c.loss_weights[name]} have dtype {weights.dtype}; give real numbers (e.g. a 0/1 mask)")
        mean, std = c.image_offset_scale.get(name, (c.model.image_mean, c.model.image_stddev))
        vol = TrainingVolumes(name, image, labels, weights, float(mean), float(std))
        self.volumes[index] = vol
        return vol

    def check(self, shard: CoordinateShard, source: str) -> None:
        """Validate every coordinate of ``shard`` (vectorized) before training starts."""
        s = np.array(self.patch_size)
        lo_margin, hi_margin = (s - 1) // 2, s // 2
        for index in np.unique(shard.volume_index):
            vol = self._open(int(index))
            centers = shard.centers[shard.volume_index == index]
            shape = np.array(vol.image.shape)
            bad = np.any((centers - lo_margin < 0) | (centers + hi_margin >= shape), axis=1)
            if bad.any():
                first = tuple(int(v) for v in centers[np.argmax(bad)])
                raise DataError(
                    f"{int(bad.sum())} of {len(centers)} coordinates in {source} for volume {vol.name!r} "
                    f"(shape {tuple(int(v) for v in shape)}) are outside it or too close to its edge for the "
                    f"{'x'.join(map(str, s))} training patch, e.g. z,y,x {first}; regenerate the coordinates "
                    f"with a margin of at least {','.join(map(str, lo_margin))}"
                )

    def load(self, center: Sequence[int], volume: int, aug: Augmentation) -> Patch:
        """Read, target, augment and normalize the patch around ``center`` (z, y, x)."""
        vol = self._open(volume)
        s = self.patch_size
        box = tuple(slice(int(c) - (n - 1) // 2, int(c) - (n - 1) // 2 + n) for c, n in zip(center, s))
        labels = np.asarray(vol.labels[box])
        centre_id = labels[tuple(n // 2 for n in s)]
        obj = (labels > 0) & (labels == centre_id)
        soft = np.where(obj, np.float32(1 - LABEL_SOFTNESS), np.float32(LABEL_SOFTNESS))
        image = np.asarray(vol.image[box], np.float32)
        if aug.contrast != 1.0 or aug.brightness != 0.0:
            adjusted = (image - image.mean()) * np.float32(aug.contrast) + image.mean() + np.float32(aug.brightness)
            if self._adjust_to == "foreground":
                adjusted = np.where(obj, adjusted, image)
            elif self._adjust_to == "background":
                adjusted = np.where(obj, image, adjusted)
            image = adjusted.astype(np.float32)
        image = (image - np.float32(vol.mean)) / np.float32(vol.stddev)
        if vol.weights is not None:
            weights = np.asarray(vol.weights[box], np.float32)
            # Checked patch by patch (the volume may be huge): a NaN or negative weight would
            # otherwise surface as a diverged loss blamed on the learning rate.
            if not (np.isfinite(weights).all() and (weights >= 0).all()):
                raise DataError(
                    f"loss weights {self.config.loss_weights[vol.name]} hold NaN, infinite or negative values in the "
                    f"patch around z,y,x {tuple(int(v) for v in center)}; loss weights must be finite and >= 0"
                )
        else:
            weights = np.ones(s, np.float32)
        if not np.isfinite(image).all():
            raise DataError(
                f"image {self.config.images[vol.name]} holds NaN or infinite values in the patch around z,y,x "
                f"{tuple(int(v) for v in center)}; give a finite image (uint8 EM)"
            )
        return Patch(aug.apply(image), aug.apply(soft), aug.apply(weights))
