"""Process-group set-up shared by training and segmentation.

One code path for every launcher:

* ``neuroflood train|segment --nproc-per-node N …`` re-launches itself under torchrun's
  elastic agent (``torch.distributed.run``), which starts N local workers, watches them and
  stops them all if one dies (optionally restarting with ``--max-restarts``);
* ``torchrun [--nnodes … --rdzv-endpoint …] -m neuroflood train|segment …`` sets the usual
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables;
* ``srun neuroflood …`` under SLURM: the ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
  variables are translated, with the first host of ``SLURM_JOB_NODELIST`` as master.

gloo on CPU, nccl on GPU with one GPU per local rank.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: no process group (single process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``node[03-05,07],gpu1`` -> ``node03``."""
    m = re.match(r"([^\[,]+)(\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def _env_from_slurm() -> None:
    """Translate SLURM's variables into torch.distributed's, when torchrun did not set them."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "localhost")))
    os.environ.setdefault("MASTER_PORT", str(29500 + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000))


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment, or run as a single process.

    ``device`` is ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``.
    """
    _env_from_slurm()
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps its store across restarts: without a namespace per attempt, restarted
        # workers would read the dead workers' gloo addresses and fail to connect.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"neuroflood/attempt-{attempt}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank, world, local_rank, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flags: Sequence[bool]) -> list[bool]:
    """Each flag OR-ed over all ranks (one small all-reduce; every rank must call it).

    Lets ranks agree on decisions taken from local state (a signal, a clock) so they stop or
    checkpoint at the same step. Without a process group the flags come back unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [bool(f) for f in flags]
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def sum_over_ranks(values: Sequence[int]) -> list[int]:
    """Each value summed over all ranks (one small all-reduce; every rank must call it).

    The tensor lives where the backend wants it (a GPU for NCCL). Without a process group the
    values come back unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [int(v) for v in values]
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank_env(rank: int, world: int, port: int, threads: int = 1) -> dict[str, str]:
    """The environment of rank ``rank`` of ``world`` processes on this machine, for
    :func:`init_distributed` (``env://`` rendezvous at 127.0.0.1:``port``), with
    ``threads`` OpenMP threads. For starting ranks by hand, e.g. in tests and benchmarks."""
    return {
        **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": str(threads),
    }


def launch_local(
    nproc: int,
    argv: Sequence[str],
    max_restarts: int = 0,
    threads_per_worker: int | None = None,
    shutdown_timeout_s: int = 120,
) -> int:
    """Run ``python -m neuroflood *argv`` on ``nproc`` local workers under torchrun's agent.

    When a worker fails, the agent stops the others and, while restarts remain, starts all
    of them again (they resume from the latest checkpoint). On SIGTERM/SIGINT it passes the
    signal on and gives the workers ``shutdown_timeout_s`` seconds to checkpoint and exit
    before killing them. Returns 0 when every worker succeeded or the job was stopped by
    SIGTERM (pre-emption), 130 for SIGINT, 1 when a worker failed.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {nproc}")
    if threads_per_worker is None:
        threads_per_worker = max(1, (os.cpu_count() or 1) // nproc)
    os.environ["OMP_NUM_THREADS"] = str(threads_per_worker)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The agent's own files (empty unless redirected); otherwise it leaves a temp dir behind.
    log_dir = tempfile.mkdtemp(prefix="neuroflood-agent-")
    args = get_args_parser().parse_args(
        [
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            "--monitor-interval=1",
            f"--shutdown-timeout={shutdown_timeout_s}",
            f"--log-dir={log_dir}",
            "-m",
            "neuroflood",
            *argv,
        ]
    )
    try:
        run(args)
    except SignalException as e:
        # The workers got the signal too; on SIGTERM they checkpoint and exit 0.
        print(f"neuroflood: stopped by {e.sigval.name}; rerun the same command to resume", file=sys.stderr)
        return 130 if e.sigval == signal.SIGINT else 0
    except Exception as e:  # ChildFailedError: the agent already printed each worker's failure
        print(f"neuroflood: error: a worker failed ({type(e).__name__}); see the messages above", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def strip_launch_args(argv: Sequence[str], names: Sequence[str] = ("--nproc-per-node", "--max-restarts")) -> list[str]:
    """Drop launcher options (``--opt V`` or ``--opt=V``) from argv before re-launching."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out
