"""The device a run trains on, and whether its batch fits in that device's memory."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import TrainConfig


def pick_device(name: str) -> torch.device:
    """The torch device named by ``--device`` (``auto``: a CUDA GPU if there is one, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return dev


def check_memory(config: TrainConfig, device: torch.device, option: str = "--batch-size") -> None:
    """Refuse a batch that cannot fit before allocating it (a huge one would swap for minutes).

    Lower bounds: each trajectory keeps its patch (image, labels, weights) and canvas in host
    memory; one step keeps each conv's activations of the batch for the backward pass, plus
    weights, gradients and two optimizer moments (float32).
    """
    if config.eval_batch_size and config.eval_batch_size > config.batch_size * config.emulate_workers:
        # held-out trajectories run at once: no backward pass, so the training bound covers them
        check_memory(
            config.model_copy(update={"batch_size": config.eval_batch_size, "emulate_workers": 1, "eval_batch_size": None}),
            device,
            "eval_batch_size",
        )
    m = config.model
    slots = config.batch_size * config.emulate_workers
    fov = math.prod(m.fov_size)
    host = slots * (4 * math.prod(config.patch_size()) + 4 * fov) * 4
    per_activation = 2 if config.precision == "bfloat16" else 4
    step = config.batch_size * fov * per_activation * (m.activation_channels() + 2) + 4 * 4 * m.parameter_count()
    checks = [("host", host + (step if device.type == "cpu" else 0), available_host_memory())]
    if device.type == "cuda":
        checks.append(("GPU", step, torch.cuda.mem_get_info(device)[0]))
    for where, need, have in checks:
        if have is not None and need > have:
            raise ConfigError(
                f"{option} {config.batch_size} (x {config.emulate_workers} emulated worker(s)) with this model and FOV "
                f"needs at least {_gib(need)} of {where} memory per process, but {_gib(have)} is available; "
                "lower --batch-size (or --emulate-workers, the FOV or the model size)"
            )


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**50 else f"{n / 2**30:.1e} GiB"


def available_host_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None if unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap = Path(limit).read_text().strip()
            if cap != "max" and int(cap) < 2**60:
                found.append(int(cap) - int(Path(usage).read_text()))
        except (OSError, ValueError):
            continue
    return min(found) if found else None
