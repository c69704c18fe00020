"""Optimizers, learning-rate schedule and gradient clipping as google/ffn sets them up.

ffn-algorithms.md §1.3 and §2.7: SGD (default, lr 1e-3), momentum 0.9, Adam (β 0.9/0.999,
ε 1e-8), Adagrad (initial accumulator 0.1) and RMSProp (decay 0.9, momentum 0.9, ε 1e-8,
with TensorFlow's semantics: mean square initialised to 1 and ε inside the square root);
optional staircase exponential decay; element-wise gradient clip at ±0.7 (not a norm clip).

The learning rate is a pure function of the step (:func:`learning_rate`) that the loop sets
on every parameter group before each step, so scaling rules and warm-up compose with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import TrainConfig


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp exactly as ``tf.compat.v1.train.RMSPropOptimizer`` (non-centred).

    ``ms = decay·ms + (1−decay)·g²;  mom = momentum·mom + lr·g/√(ms + ε);  p −= mom``
    with ``ms`` starting at 1 (PyTorch's RMSprop starts at 0 and adds ε outside the root,
    which gives very different first steps).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, decay: float = 0.9, momentum: float = 0.0, eps: float = 1e-10):
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        for group in self.param_groups:
            lr, decay, mom, eps = group["lr"], group["decay"], group["momentum"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["ms"] = torch.ones_like(p)
                    state["mom"] = torch.zeros_like(p)
                g = p.grad
                state["ms"].mul_(decay).addcmul_(g, g, value=1 - decay)
                state["mom"].mul_(mom).addcdiv_(g, (state["ms"] + eps).sqrt_(), value=lr)
                p.sub_(state["mom"])
        return None


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` with the reference's defaults."""
    lr = config.learning_rate
    name = config.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.epsilon)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, initial_accumulator_value=config.adagrad_initial_accumulator, eps=1e-10)
    if name == "rmsprop":
        return TFRMSprop(params, lr=lr, decay=config.rmsprop_decay, momentum=config.momentum, eps=config.epsilon)
    raise ValueError(f"unknown optimizer {name!r}")  # unreachable: the config validates it


def learning_rate(step: int, config: TrainConfig, scale: float = 1.0, warmup_steps: int = 0) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    ``base · scale``, times ``factor ** (step // decay_steps)`` when staircase decay is set
    (google/ffn applies decay only when both values are given), ramped linearly from 0 over
    ``warmup_steps`` steps when a warm-up is asked for: ``target · step / warmup_steps``,
    exactly 0 at step 0, as the distributed trainer of Dong et al. 2019.
    """
    lr = config.learning_rate * scale
    if config.lr_decay_factor is not None and config.decay_steps is not None:
        lr *= config.lr_decay_factor ** math.floor(step / config.decay_steps)
    if warmup_steps > 0 and step < warmup_steps:
        lr *= step / warmup_steps
    return lr


def lr_scale(rule: str, workers: int) -> float:
    """Factor on the base learning rate for ``workers`` data-parallel workers: 1, N or √N."""
    if rule == "none":
        return 1.0
    if rule == "linear":
        return float(workers)
    if rule == "sqrt":
        return math.sqrt(workers)
    raise ValueError(f"unknown lr scaling {rule!r}")  # unreachable: the config validates it


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[torch.nn.Parameter], limit: float | None) -> None:
    """Element-wise ``clip_by_value(g, −limit, +limit)``, in place (after any averaging)."""
    if limit is None:
        return
    for p in params:
        if p.grad is not None:
            p.grad.clamp_(-limit, limit)
