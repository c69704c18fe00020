"""The hand-made units the infer tests share: a hand-wired network that floods bright regions,
an image of two bright objects, a small request, and an executor client with preset logits.

The tests of each infer module are in test_infer_<module>.py; the FIB-25 parity tests in
test_infer_fib25.py."""

from __future__ import annotations

import numpy as np
import torch

from neuroflood.config import ModelConfig
from neuroflood.model import build_model

# -- a hand-wired network and image -------------------------------------------------------------


def bright_model(fov: int = 9, delta: int = 2) -> torch.nn.Module:
    """A 1-level convstack whose update is ``10 * relu(image) - 3`` with image = raw / 255.

    Bright voxels (raw 255) rise to p > 0.9 in one visit, dark ones fall: it floods exactly
    the bright connected regions the FOV can reach, quickly and deterministically.
    """
    cfg = ModelConfig(depth=1, features=1, fov_size=(fov,) * 3, deltas=(delta,) * 3, image_mean=0.0, image_stddev=255.0)
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        for conv in model.layers.values():
            conv.weight.zero_()
            conv.bias.zero_()
        model.layers["conv0_a"].weight[0, 0, 1, 1, 1] = 1.0  # image channel, centre tap
        model.layers["conv0_b"].weight[0, 0, 1, 1, 1] = 1.0
        model.layers["conv_lom"].weight[0, 0, 0, 0, 0] = 10.0
        model.layers["conv_lom"].bias[0] = -3.0
    return model.eval()


def bright_image(shape=(40, 40, 40)) -> np.ndarray:
    """Two bright objects on a dark background: a slab and a ball."""
    img = np.zeros(shape, np.uint8)
    img[6:20, 6:34, 6:16] = 255
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    img[(z - 28) ** 2 + (y - 26) ** 2 + (x - 27) ** 2 <= 7**2] = 255
    return img


SMALL = {"options": {"min_segment_size": 50}, "checkpoint_interval": 0}


class FixedClient:
    """An executor client that returns preset logits and records what it was given."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def predict(self, image, seed):
        self.seen.append((image.copy(), seed.copy()))
        return self.logits.copy()
