"""An oracle network and a synthetic scene for the agglomeration tests.

:func:`oracle_model` is a real (saveable) ConvStack3D with hand-set weights that floods the
bright voxels connected to the object so far and stops at dark ones: on an image whose
objects are bright and whose membranes are dark, an FFN fill from a seed recovers exactly
that seed's ground-truth object (within the reach of the FOV moves). :func:`scene` is such an
image with a base segmentation in which one object is cut into two ids by construction.
"""

from __future__ import annotations

import numpy as np
import torch

from neuroflood.config import ModelConfig
from neuroflood.model import build_model

FOV, DELTA, DEPTH = 9, 2, 6
M = 30.0  # > 27, the most a 3x3x3 sum of reach values in [0, 1] can give


def oracle_model() -> torch.nn.Module:
    """A ConvStack3D (FOV 9, deltas 2) that is an oracle on :func:`scene`-like images.

    Channels (P, Q, B, C): reach = P - Q in [0, 1], B = brightness (raw / 255), C = the
    brightness blurred once per module (zero padding makes it peak at the FOV centre). The
    stem sets reach where the seed logit is >= 1; each residual module dilates reach by one
    voxel (3x3x3) but only onto bright voxels; the output adds +8 where reached, -8
    elsewhere, plus 0.5 C, so that a face's maximum, where the FOV moves, is its centre.
    """
    feats = [4, 4] + [6, 4] * (DEPTH - 1)
    cfg = ModelConfig(depth=DEPTH, features=feats, fov_size=(FOV,) * 3, deltas=(DELTA,) * 3, image_mean=0.0, image_stddev=255.0)
    model = build_model(cfg, seed=0)
    c = (1, 1, 1)
    with torch.no_grad():
        for conv in model.layers.values():
            conv.weight.zero_()
            conv.bias.zero_()
        L = model.layers
        w = L["conv0_a"].weight  # inputs: image, seed
        w[(0, 1, *c)] = 1.0  # P = relu(s)
        w[(1, 1, *c)] = 1.0  # Q = relu(s - 1)
        L["conv0_a"].bias[1] = -1.0
        w[(2, 0, *c)] = 1.0  # B = relu(image)
        w[(3, 0, *c)] = 1.0  # C = B
        for k in range(4):
            L["conv0_b"].weight[(k, k, *c)] = 1.0
        for i in range(1, DEPTH):
            a, b = L[f"conv{i}_a"], L[f"conv{i}_b"]
            for out, bias in ((0, -M), (1, -M - 1.0)):
                a.weight[out, 0] = 1.0  # sum of reach over the 3x3x3 neighbourhood ...
                a.weight[out, 1] = -1.0
                a.weight[(out, 2, *c)] = M  # ... only on bright voxels
                a.bias[out] = bias
            a.weight[(2, 0, *c)] = 1.0  # pass P and Q on, so that the skip can be cancelled
            a.weight[(3, 1, *c)] = 1.0
            a.weight[4, 3] = 1.0 / 27  # blurred C
            a.weight[(5, 3, *c)] = 1.0  # C passed on
            b.weight[(0, 0, *c)] = 1.0
            b.weight[(0, 2, *c)] = -1.0
            b.weight[(1, 1, *c)] = 1.0
            b.weight[(1, 3, *c)] = -1.0
            b.weight[(3, 4, *c)] = 1.0
            b.weight[(3, 5, *c)] = -1.0
        L["conv_lom"].weight[0, 0] = 16.0
        L["conv_lom"].weight[0, 1] = -16.0
        L["conv_lom"].weight[0, 3] = 0.5
        L["conv_lom"].bias[0] = -8.0
    return model.eval()


def scene(shape=(24, 32, 32)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, ground truth, base segmentation) of two objects split by a dark membrane.

    Ground truth: object 1 is x < 16, object 2 is x > 16; the membrane x == 16 is dark (0),
    everything else bright (255). The base segmentation cuts object 1 at y == 16 into ids 1
    and 2 and object 2 at z == 12 into ids 3 and 4 (splits by construction: no membrane
    there). Right: merge 1-2 and 3-4; wrong: any pair across the membrane.
    """
    image = np.full(shape, 255, np.uint8)
    image[:, :, 16] = 0
    gt = np.zeros(shape, np.uint32)
    gt[:, :, :16] = 1
    gt[:, :, 17:] = 2
    seg = np.zeros(shape, np.uint32)
    seg[:, :16, :16] = 1
    seg[:, 16:, :16] = 2
    seg[:12, :, 17:] = 3
    seg[12:, :, 17:] = 4
    return image, gt, seg


REQUEST = {"options": {"min_segment_size": 10}, "checkpoint_interval": 0}
SMALL_OPTIONS = {"radius": (8, 8, 8), "analysis_radius": (4, 4, 4), "min_segment_size": 0, "min_contact": 1, "max_distance": 4.0}
