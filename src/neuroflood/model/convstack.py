"""The FFN network: google/ffn ``convstack_3d``, layer for layer.

Input: the normalized image ``(img - mean) / std`` and the current object-mask logits (the
"seed"), each ``[B, 1, Z, Y, X]``. Output: ``seed + update`` logits, ``[B, 1, Z, Y, X]``.

Layer order (ffn-algorithms.md §1.2)::

    x = concat(image, seed)
    x = relu(conv0_a(x)); x = conv0_b(x)
    for i in 1 .. depth-1:                  # residual modules
        skip = x                            # taken BEFORE the ReLU
        x = relu(x); x = relu(conv{i}_a(x)); x = conv{i}_b(x); x = x + skip
    x = relu(x)
    logits = seed + conv_lom(x)             # 1x1x1 conv to one channel

Layers are named as in the TensorFlow checkpoint (``conv0_a`` … ``conv_lom``) so that the
import is a table lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import features_per_layer
from ..errors import ConfigError


def _conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, but through oneDNN for a single CPU float32 input, or any batch without autograd.

    PyTorch's CPU heuristic (ATen ``ConvParams::use_mkldnn``) sends a batch of one whose
    ``C * Z * Y`` is at most 20,480 to its reference ``Slow3d`` kernel, which for FFN shapes
    is ~3x slower than oneDNN. Inference evaluates one FOV at a time, so every conv of a
    small network (and the 2-channel ``conv0_a`` of any network) took that path. oneDNN
    computes the same convolution (equal within float rounding) and supports autograd.
    With one thread the heuristic also sends batches below 16 to ``Slow3d``; without
    autograd (inference, held-out evaluation) every batch goes to oneDNN, whose result for
    each FOV of a batch is bit-identical to that FOV's alone (checked for batches 2..32, 1
    and 2 threads): a batched executor then gives exactly the segmentation of one FOV at a
    time. Training steps (batches under autograd) keep PyTorch's choice.
    Under autocast (bf16) the call is left to PyTorch, which casts for ``conv3d`` only.
    """
    if (
        (x.shape[0] == 1 or not torch.is_grad_enabled())
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return conv(x)


def layer_names(depth: int) -> list[str]:
    """Names of the conv layers in order, as in google/ffn's checkpoint."""
    names = ["conv0_a", "conv0_b"]
    for i in range(1, depth):
        names += [f"conv{i}_a", f"conv{i}_b"]
    return names + ["conv_lom"]


def _features_per_layer(depth: int, features: int | Sequence[int]) -> list[int]:
    """One positive channel count per 3x3x3 conv; a ConfigError if they cannot form the stack."""
    return features_per_layer(depth, features)


class ConvStack3D(nn.Module):
    """FFN ``convstack_3d`` with additive output: ``logits = seed + update``.

    Parameters
    ----------
    depth : int
        Number of residual levels; ``depth - 1`` residual modules follow the stem
        (google/ffn default 9; the published FIB-25 model uses 12).
    features : int or sequence of int
        Channels of every 3x3x3 conv, or one value per conv in the order conv0_a, conv0_b,
        conv1_a, ...
    fov_size, deltas : (z, y, x)
        Field of view and FOV move step. They do not change the layers (the stack is fully
        convolutional) but travel with the model for training and inference.
    """

    def __init__(
        self,
        depth: int = 9,
        features: int | Sequence[int] = 32,
        fov_size: Sequence[int] = (33, 33, 33),
        deltas: Sequence[int] = (8, 8, 8),
    ):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        self.depth = int(depth)
        self.fov_size = tuple(int(v) for v in fov_size)
        self.deltas = tuple(int(v) for v in deltas)
        feats = _features_per_layer(self.depth, features)
        self.features = features if isinstance(features, int) else list(feats)
        in_ch = [2] + feats[:-1]
        self.layers = nn.ModuleDict()
        for name, cin, cout in zip(layer_names(depth)[:-1], in_ch, feats):
            self.layers[name] = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.layers["conv_lom"] = nn.Conv3d(feats[-1], 1, kernel_size=1)
        self.reset_parameters()
        # Channels-last 3-D layout makes oneDNN's (CPU) and cuDNN's conv3d about 2x faster
        # than NCDHW for these shapes; results are the same within float rounding.
        self.to(memory_format=torch.channels_last_3d)

    def reset_parameters(self) -> None:
        """Glorot-uniform weights (fan_avg over in·k³ and out·k³) and zero biases, as tf_slim."""
        for conv in self.layers.values():
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, image: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        L = self.layers
        x = torch.cat([image, seed], dim=1).contiguous(memory_format=torch.channels_last_3d)
        x = F.relu(_conv(L["conv0_a"], x))
        x = _conv(L["conv0_b"], x)
        for i in range(1, self.depth):
            skip = x
            x = F.relu(x)
            x = F.relu(_conv(L[f"conv{i}_a"], x))
            x = _conv(L[f"conv{i}_b"], x)
            x = x + skip
        x = F.relu(x)
        return seed + _conv(L["conv_lom"], x)

    def architecture(self) -> dict:
        """The constructor arguments, enough to rebuild this network."""
        return {
            "name": "convstack_3d",
            "depth": self.depth,
            "features": self.features,
            "fov_size": list(self.fov_size),
            "deltas": list(self.deltas),
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_voxel(self) -> int:
        """Multiply-adds x 2 per output voxel of one forward pass (convs only)."""
        total = 0
        for conv in self.layers.values():
            k = conv.kernel_size[0] * conv.kernel_size[1] * conv.kernel_size[2]
            total += 2 * conv.in_channels * conv.out_channels * k
        return total
