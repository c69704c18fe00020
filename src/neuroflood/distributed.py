"""Process-group set-up shared by training and segmentation.

One code path for every launcher:

* ``neuroflood train|segment --nproc-per-node N …`` re-launches itself under torchrun's
  elastic agent (``torch.distributed.run``), which starts N local workers, watches them and
  stops them all if one dies (optionally restarting with ``--max-restarts``);
* ``torchrun [--nnodes … --rdzv-endpoint …] -m neuroflood train|segment …`` sets the usual
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables;
* ``srun neuroflood …`` under SLURM: the ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
  variables are translated, with the first host of ``SLURM_JOB_NODELIST`` as master;
* ``mpiexec -n N neuroflood …`` (MPICH/Hydra, Cray PALS, Open MPI, MVAPICH; PBS jobs): the
  launcher's rank variables are translated (:func:`mpi_ranks`), with ``MASTER_ADDR``, else
  the first host of ``$PBS_NODEFILE``, else 127.0.0.1 when every rank is on this node, as
  master. Environment variables only: no MPI library is loaded.

Priority: ``RANK`` (torchrun, or set by hand), then SLURM, then the MPI launcher's variables
(which win over SLURM's when they disagree: ``mpiexec`` run inside a SLURM allocation).
gloo on CPU, nccl on GPU with one GPU per local rank (``cuda:LOCAL_RANK % visible GPUs``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

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


DEFAULT_MASTER_PORT = 29500  # torchrun's; under SLURM and PBS the job number is added (mod 1000)


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


def _slurm_env(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables for a task of a multi-task ``srun`` ({} otherwise)."""
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or _first_slurm_host(env.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT + int(env.get("SLURM_JOB_ID", "0")) % 1000),
    }


# (launcher, rank, world size, local rank, ranks on this node): the first whose rank variable
# is set is used. MVAPICH and Cray PALS set PMI_* as well, to the same values.
_MPI_LAUNCHERS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", ("OMPI_COMM_WORLD_LOCAL_RANK",), ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
    ("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", ("MV2_COMM_WORLD_LOCAL_RANK",), ("MV2_COMM_WORLD_LOCAL_SIZE",)),
    ("Cray PALS", "PALS_RANKID", "PMI_SIZE", ("PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"), ("PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE")),
    ("MPICH", "PMI_RANK", "PMI_SIZE", ("PMI_LOCAL_RANK", "MPI_LOCALRANKID"), ("PMI_LOCAL_SIZE", "MPI_LOCALNRANKS")),
)


@dataclass(frozen=True)
class MpiRanks:
    """Where an MPI launcher (``mpiexec``, ``mpirun``) placed this process."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int | None  # index on its node (None: the launcher did not say)
    local_size: int | None  # ranks on this node (None: the launcher did not say)


def _int_var(env: Mapping[str, str], name: str, launcher: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"{name}={env[name]!r} (set by {launcher}) is not a whole number; check the mpiexec command") from None


def mpi_ranks(env: Mapping[str, str]) -> MpiRanks | None:
    """This process's place in an MPI launch, read from the launcher's variables (None: none).

    Only environment variables are read, so no MPI library (mpi4py) is needed.
    """
    for launcher, rank_var, size_var, local_vars, local_size_vars in _MPI_LAUNCHERS:
        if rank_var not in env:
            continue
        if size_var not in env:
            raise ConfigError(f"{rank_var} is set ({launcher}) but {size_var} is not; set WORLD_SIZE and RANK for each rank instead")
        rank, size = _int_var(env, rank_var, launcher), _int_var(env, size_var, launcher)
        if not 0 <= rank < size:
            raise ConfigError(f"{rank_var}={rank} is not a rank of {size_var}={size} ({launcher}); check the mpiexec command")
        local_var = next((v for v in (*local_vars, "LOCAL_RANK") if v in env), None)
        local_size_var = next((v for v in local_size_vars if v in env), None)
        return MpiRanks(
            launcher,
            rank,
            size,
            _int_var(env, local_var, launcher) if local_var else None,
            _int_var(env, local_size_var, launcher) if local_size_var else None,
        )
    return None


def _nodefile_host(env: Mapping[str, str]) -> str | None:
    """The first host of the PBS job's node file (where ``mpiexec`` puts rank 0), if any."""
    path = env.get("PBS_NODEFILE")
    if not path:
        return None
    try:
        with open(path) as f:
            hosts = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ConfigError(f"cannot read PBS_NODEFILE {path} ({e.strerror or e}); set MASTER_ADDR to rank 0's host") from None
    if not hosts:
        raise ConfigError(f"PBS_NODEFILE {path} lists no host; set MASTER_ADDR to rank 0's host")
    return hosts[0]


def _is_this_host(host: str) -> bool:
    """Whether ``host`` names this machine: one of its addresses can be bound here."""
    try:
        addrs = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in addrs:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((sockaddr[0], 0, *sockaddr[2:]))
            return True
        except OSError:
            continue
    return False


def _mpi_env(env: Mapping[str, str], ranks: MpiRanks) -> dict[str, str]:
    """torch.distributed's variables for rank ``ranks`` of a multi-rank MPI launch."""
    if ranks.local_rank is None:  # it picks the GPU
        local_vars = next(names for name, *_, names, _ in _MPI_LAUNCHERS if name == ranks.launcher)
        raise ConfigError(
            f"{ranks.launcher} set no local rank ({' or '.join(local_vars)}); set LOCAL_RANK (the rank's index on its node) for each rank"
        )
    host = env.get("MASTER_ADDR")
    if not host:
        host = _nodefile_host(env)
        # Rank 0 hosts the rendezvous: if it is not on the node file's first host (a custom
        # placement), the other ranks would wait out the timeout; say so now instead.
        if host and ranks.rank == 0 and not _is_this_host(host):
            raise ConfigError(
                f"rank 0 runs on {socket.gethostname()}, not on {host} (the first host of PBS_NODEFILE); set MASTER_ADDR to rank 0's host"
            )
    if not host and ranks.local_size == ranks.world_size:
        host = "127.0.0.1"  # every rank is on this node
    if not host:
        raise ConfigError(
            f"{ranks.launcher} started {ranks.world_size} ranks but rank 0's host is unknown (no MASTER_ADDR, no PBS_NODEFILE); "
            "set MASTER_ADDR to rank 0's host (and MASTER_PORT, default 29500)"
        )
    job = re.match(r"\d+", env.get("PBS_JOBID", ""))  # 1234.server -> 1234: jobs sharing a node differ
    port = env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT + (int(job.group()) % 1000 if job else 0))
    out = {
        "RANK": str(ranks.rank),
        "WORLD_SIZE": str(ranks.world_size),
        "LOCAL_RANK": str(ranks.local_rank),
        "MASTER_ADDR": host,
        "MASTER_PORT": port,
    }
    if ranks.local_size is not None:
        out["LOCAL_WORLD_SIZE"] = str(ranks.local_size)
    return out


def launch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
    to add for a process that ``srun`` or ``mpiexec`` started as one of several ranks.

    {} when ``RANK`` is already set (torchrun, or by hand) or when there is no multi-rank job.
    SLURM comes before the MPI launchers, except when both are set and disagree: that is
    ``mpiexec`` started inside a SLURM allocation, whose ``SLURM_*`` describe the batch step.
    """
    if "RANK" in env:
        return {}
    slurm = _slurm_env(env)
    try:
        mpi = mpi_ranks(env)
    except ConfigError:
        if slurm:  # srun's PMI plugins may set PMI_* partially: SLURM's variables describe the job
            return slurm
        raise
    if mpi is None:
        return slurm
    if slurm and (slurm["RANK"], slurm["WORLD_SIZE"]) == (str(mpi.rank), str(mpi.world_size)):
        return slurm  # srun --mpi=pmi2 sets PMI_* too: the same job, SLURM's rules
    return _mpi_env(env, mpi) if mpi.world_size > 1 else {}


def in_launched_job(env: Mapping[str, str]) -> bool:
    """Whether this process is one rank of a multi-rank job (torchrun, srun or mpiexec)."""
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    mpi = mpi_ranks(env)
    return mpi is not None and mpi.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment, or run as a single process.

    ``device`` is ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``.
    """
    os.environ.update(launch_env(os.environ))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = "cpu"
    if use_cuda:
        # One GPU per local rank; modulo, so that ranks each shown one GPU (CUDA_VISIBLE_DEVICES
        # set per rank, as GPU-affinity wrappers on Polaris do) all take their GPU 0.
        index = local_rank % torch.cuda.device_count()
        dev = f"cuda:{index}"
        torch.cuda.set_device(index)
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
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": str(threads),
    }


NPROC_IN_JOB = (
    "--nproc-per-node starts the workers itself; inside torchrun, a multi-task srun or a multi-rank mpiexec, drop --nproc-per-node"
)


def launch_local(
    nproc: int,
    argv: Sequence[str],
    max_restarts: int = 0,
    threads_per_worker: int | None = None,
    shutdown_timeout_s: int = 120,
    sigterm_exit: int = 0,
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

    if in_launched_job(os.environ):
        raise ConfigError(NPROC_IN_JOB)
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
        # The workers got the signal too; on SIGTERM they checkpoint and exit 0. Training
        # jobs report that as 0 (``sigterm_exit``); a segmentation that has not written its
        # output reports 143, so that `segment … && next-step` does not go on without it.
        print(f"neuroflood: stopped by {e.sigval.name}; rerun the same command to resume", file=sys.stderr)
        return 130 if e.sigval == signal.SIGINT else sigterm_exit
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
