"""Synchronous data-parallel training, as Dong et al. 2019 ran it with Horovod, on torch.distributed.

:func:`run_training` is what ``neuroflood train`` calls in every process. Alone it is the
single-worker trainer; inside a job started by ``torchrun``, ``srun``, ``mpiexec`` or
``neuroflood train --nproc-per-node N`` (:func:`launch_training`) it is one rank of that job:

* the process group comes from the launcher's variables (gloo on CPU, nccl with one GPU per
  local rank, :func:`neuroflood.distributed.init_distributed`);
* every rank builds the same initial weights (same seed, or the same checkpoint), checked
  by a fingerprint, and DDP broadcasts rank 0's once more when it wraps the model;
* each rank runs ``emulate_workers`` example generators over its own shards of the
  coordinates, with random streams ``SeedSequence([seed, worker, stream])`` for its worker
  indices ``rank·E … rank·E + E − 1`` (recorded in ``RUN_DIR/launches.jsonl``);
* gradients are averaged by DDP's all-reduce, then clipped element-wise (±0.7), then the
  optimizer steps (:func:`neuroflood.train.step.train_step`);
* the learning rate target is ``base × {1, N, √N}`` (``lr_scaling``) with N = ranks ×
  emulated workers per rank, ramped linearly from 0 over ``warmup_steps``; with
  ``fixed_sample_budget`` the run takes ``max_steps // N`` steps;
* ranks agree every step on stopping (a signal or ``max_train_seconds`` on any rank) and on
  checkpointing, so none is left waiting in a collective; rank 0 alone writes checkpoints,
  metrics (with the global FOVs/s) and TensorBoard events. A restarted job (``torchrun
  --max-restarts``, a requeued SLURM or PBS job) resumes from the latest complete checkpoint, which
  every rank reads: the run directory must be on a filesystem all nodes share.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from ..distributed import NPROC_IN_JOB, DistInfo, cleanup, in_launched_job, init_distributed, launch_local
from ..errors import CheckpointError, ConfigError
from .checkpoint import latest_checkpoint, resume_from
from .config import TrainConfig
from .inputs import resolve_config
from .loop import TrainResult, train
from .optim import lr_scale
from .rundir import hold_run_dir

LAUNCHES = "launches.jsonl"


def run_training(config: TrainConfig, resume: bool | None = None) -> TrainResult:
    """Train in this process: alone, or as one rank of the job the environment describes."""
    info = init_distributed(config.device)
    if not info.distributed:
        return train(config, resume=resume)
    try:
        config = config.model_copy(update={"device": info.device})
        # Rank 0 holds the run directory before anything is written there, launches.jsonl
        # included, so that a second job on it is refused untouched.
        with hold_run_dir(config.run_dir, holder=info.is_main):
            record_launch(config, info)
            return train(config, rank=info.rank, world=info.world_size, wrap_model=lambda m: wrap_ddp(m, info), resume=resume)
    finally:
        # DDP's reducer holds the process group and DDP modules sit in reference cycles:
        # free them while the interpreter is whole, before the group goes. Left to interpreter
        # exit, gloo's threads were sometimes torn down mid-finalization (SIGABRT, "terminate
        # called without an active exception").
        gc.collect()
        cleanup()


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """Check that every rank holds the same weights, then wrap the model in DDP."""
    from torch.nn.parallel import DistributedDataParallel

    check_identical_weights(model, info)
    # A 1×1×1 kernel in channels-last layout has other strides than its gradient (the same
    # memory order, as every spatial size is 1); DDP would warn on every step.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 5 and tuple(p.shape[2:]) == (1, 1, 1):
                p.data = p.data.clone(memory_format=torch.contiguous_format)
    if info.device.startswith("cuda"):
        return DistributedDataParallel(model, device_ids=[torch.device(info.device).index])  # local rank % GPUs
    return DistributedDataParallel(model)


def weights_fingerprint(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares of each parameter (float64, on the CPU): equal weights, equal lists."""
    out: list[float] = []
    with torch.no_grad():
        for p in model.parameters():
            v = p.detach().cpu().double()
            out += [float(v.sum()), float(v.square().sum())]
    return out


def check_identical_weights(model: torch.nn.Module, info: DistInfo) -> None:
    """Raise :class:`CheckpointError` when a rank starts from other weights than rank 0.

    That happens when ranks resume different checkpoints (a run directory that is not shared
    by all nodes) or fine-tune from different files; DDP's broadcast would hide it while the
    optimizer and generator states stayed mismatched.
    """
    import torch.distributed as dist

    prints: list[Any] = [None] * info.world_size
    dist.all_gather_object(prints, weights_fingerprint(model))
    bad = [r for r, p in enumerate(prints) if p != prints[0]]
    if bad:
        raise CheckpointError(
            f"rank(s) {', '.join(map(str, bad))} start from other weights than rank 0; every rank must read the "
            "same checkpoint: put --run-dir (and --init-from) on a filesystem that all nodes share"
        )


def record_launch(config: TrainConfig, info: DistInfo) -> None:
    """Append this (re)start of the job to ``RUN_DIR/launches.jsonl`` (rank 0 writes).

    Records ranks, hosts, devices, the worker → random-stream table, the learning-rate rule
    and the checkpoint the job resumes from (``null`` for a fresh start). Every rank calls it.
    """
    import torch.distributed as dist

    me = {"rank": info.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": info.device}
    ranks: list[Any] = [None] * info.world_size
    dist.all_gather_object(ranks, me)
    if not info.is_main:
        return
    e = config.emulate_workers
    n = info.world_size * e
    latest = latest_checkpoint(config.run_dir)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "backend": info.backend,
        "world_size": info.world_size,
        "emulated_workers_per_rank": e,
        "workers": n,
        "global_batch": n * config.batch_size,
        "ranks": ranks,
        "random_streams": {
            "rule": "numpy SeedSequence([seed, worker, stream]), stream 0 coordinates, 1 augmentation, 2 FOV moves",
            "seed": config.seed,
            "workers_of_rank": {str(r): list(range(r * e, (r + 1) * e)) for r in range(info.world_size)},
        },
        "lr_scaling": config.lr_scaling,
        "learning_rate_target": config.learning_rate * lr_scale(config.lr_scaling, n),
        "warmup_steps": config.warmup_steps,
        "steps": config.max_steps // n if config.fixed_sample_budget else config.max_steps,
        "resumed_from": latest.name if latest is not None else None,
    }
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LAUNCHES, "a") as f:
        f.write(json.dumps(record) + "\n")


def launch_training(config: TrainConfig, nproc: int, max_restarts: int = 0, resume: bool | None = None) -> int:
    """Start ``nproc`` local workers of ``neuroflood train`` for ``config``; returns the exit code.

    The options are checked here, once, then the resolved config is handed to the workers
    in a file, so that every worker and every restart runs exactly this configuration.
    Workers resume from the latest checkpoint when there is one (restarts rely on it).
    """
    if in_launched_job(os.environ):
        raise ConfigError(NPROC_IN_JOB)
    if nproc < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {max_restarts}")
    config = resolve_config(config)
    run_dir = Path(config.run_dir)
    resume_from(run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run directory {run_dir} ({e.strerror or e}); choose a writable --run-dir") from None
    spec = run_dir / f".launch-{os.getpid()}.json"
    spec.write_text(config.to_json() + "\n")
    try:
        return launch_local(nproc, ["train", "--config", str(spec)], max_restarts, config.threads)
    finally:
        spec.unlink(missing_ok=True)
