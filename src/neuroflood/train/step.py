"""One synchronous training step, and the forward-only steps of an evaluation.

:func:`train_step` is google/ffn's step (ffn-algorithms.md §2.6): weighted sigmoid
cross-entropy over batch × FOV, gradients of several workers averaged (one all-reduce under
DDP, :func:`allreduce_gradients`), the element-wise clip, then the update; a non-finite loss
leaves the weights alone.
:func:`evaluate_held_out` runs full trajectories on held-out coordinates with the same policy and
metrics, without augmentation or weight updates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from ..prepare.coordfile import open_coordinates
from .config import TrainConfig
from .examples import Batch, ExampleGenerator
from .metrics import EvalTracker
from .optim import clip_gradients, set_learning_rate
from .patches import PatchSource
from .timing import StepTimer


def weighted_sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean(weights · sigmoid_xent(logits, labels))`` over batch × FOV (float32)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels, weight=weights)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    lr: float,
    grad_clip: float | None,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    timer: StepTimer | None = None,
) -> tuple[float, list[torch.Tensor]]:
    """One synchronous step over the batches of several workers; returns (loss, logits).

    Gradients of the workers' mean losses are accumulated, then averaged over the ranks of a
    DDP model by one explicit all-reduce (:func:`allreduce_gradients`), then clipped
    element-wise, then the update. The loss is checked before the update: a non-finite loss
    returns without touching the weights. The logits are the forward pass's (before the
    update), as the reference writes them back. ``timer`` times the work (``compute``) and the
    all-reduce (``wait``) apart.
    """
    timer = timer or StepTimer()
    with timer.phase("compute"):
        set_learning_rate(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        losses, outputs = [], []
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        for b in batches:
            image, seed, labels, weights = (
                t.to(device, non_blocking=True).contiguous(memory_format=fmt) for t in (b.image, b.seed, b.labels, b.weights)
            )
            # Under DDP no backward synchronizes: the all-reduce runs once, below, timed apart.
            with model.no_sync() if hasattr(model, "no_sync") else nullcontext():  # type: ignore[operator]
                amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
                with amp:
                    logits = model(image, seed)
                loss = weighted_sigmoid_loss(logits, labels, weights)
                (loss / len(batches)).backward()
            losses.append(loss.detach())
            outputs.append(logits.detach().float())
    if hasattr(model, "no_sync"):
        with timer.phase("wait"):
            allreduce_gradients(model)
    with timer.phase("compute"):
        loss_value = float(torch.stack(losses).mean())
        if not math.isfinite(loss_value):
            return loss_value, outputs
        clip_gradients(model.parameters(), grad_clip)
        optimizer.step()
    return loss_value, outputs


def allreduce_gradients(model: torch.nn.Module) -> None:
    """Average the gradients over the ranks of a DDP model, as DDP's reducer does.

    One flat buffer of every gradient, divided by the number of ranks, then summed by one
    all-reduce and copied back: DDP's arithmetic (divide, then sum), without its overlap of
    communication with the backward pass, so that a rank's own work and its wait for the
    others can be timed apart.
    """
    import torch.distributed as dist

    group = getattr(model, "process_group", None)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    flat.div_(dist.get_world_size(group))
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view(g.shape))
        offset += g.numel()


# ------------------------------------------------------------------------------------------
# Evaluation on held-out coordinates (no weight updates)
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_held_out(
    model: torch.nn.Module,
    config: TrainConfig,
    source: PatchSource,
    coords_path: str,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Run full trajectories on the first ``eval_examples`` held-out coordinates.

    Same policy and metrics as training, no augmentation; returns the tracker summary with
    ``loss`` (mean FOV loss), ``fovs`` and ``fovs_per_s``. ``config.eval_batch_size``
    trajectories run at once (default ``batch_size``): the examples, their trajectories and
    the figures do not depend on it.
    """
    coords = open_coordinates(coords_path)
    shard = coords.shard(0, 1)
    n = min(len(shard), config.eval_examples)
    shard = type(shard)(shard.centers[:n], shard.volume_index[:n], shard.volume_names)
    tracker = EvalTracker(config.eval_size())
    if config.eval_batch_size:  # more trajectories per network call: each is run as with one
        config = config.model_copy(update={"batch_size": config.eval_batch_size})
    gen = ExampleGenerator(config, source.for_volumes(coords.volume_names), shard, tracker, train=False)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    t0 = time.perf_counter()
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        while (batch := gen.next_batch()) is not None:
            image, seed, labels, weights = (
                t.to(device).contiguous(memory_format=fmt) for t in (batch.image, batch.seed, batch.labels, batch.weights)
            )
            amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with amp:
                logits = model(image, seed)
            loss = float(weighted_sigmoid_loss(logits, labels, weights))
            tracker.track_step(loss, len(batch))
            loss_sum += loss * len(batch)
            gen.update(logits)
    finally:
        model.train(was_training)
    out = tracker.summary()
    # The mean over FOVs, not over steps: independent of how many trajectories share a step.
    out["loss"] = loss_sum / tracker.fovs if tracker.fovs else None
    out["fovs_per_s"] = tracker.fovs / max(time.perf_counter() - t0, 1e-9)
    return out
