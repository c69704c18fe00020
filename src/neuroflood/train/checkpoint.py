"""Training checkpoints: the state a run continues from, and its files.

:class:`TrainingState` is what a run continues from, as torchtitan's checkpointer sees it:
the model, the optimizer, the example generators of every worker, the step, the training
time and the torch RNG, with ``state_dict()``/``load_state_dict()``. :func:`resume_from`
decides which checkpoint a run continues from, :func:`starting_model` which weights a run
starts with.

Layout of ``RUN_DIR/checkpoints/step-00001234/``::

    model/           native model checkpoint (model.safetensors + config.json): usable as is
                     by ``neuroflood segment`` and ``--init-from``
    state.pt         torch.save of plain containers and tensors: optimizer state, step,
                     torch RNG state, generator states, wall time (loaded with
                     ``weights_only=True``: nothing is unpickled)

A checkpoint is written under a temporary name and renamed into place, and an old one is
renamed away before it is deleted, so a directory named ``step-*`` is always complete, even
when the process is killed at any instant. Temporary names carry the writer's pid and host
(``.step-00001234.tmp-PID@HOST-XXXX``); what a killed writer left behind is removed by the
next save on that host. Files are written by Python (``torch.save`` into memory first), so a
full disk is an ``OSError`` (ENOSPC) naming the file, and the previous checkpoint is kept.
Retention follows TensorFlow's Saver: the newest ``keep_last`` plus, among older ones, one
per ``keep_every_hours`` (those carry a ``KEEP`` marker).
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError, ConfigError
from ..model import FFNModel, build_model, load_model, save_model
from .config import TrainConfig

if TYPE_CHECKING:
    from .examples import ExampleGenerator

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")
# Temporary (being written) and trash (being deleted) directories: .step-N.(tmp|del)-PID@HOST-X
_SCRATCH = re.compile(r"^\.step-\d{8,}\.(?:tmp|del)-(\d+)@(.+)-[A-Za-z0-9_]*$")


@dataclass
class TrainingCheckpoint:
    """A loaded checkpoint: the model plus the rest of the training state."""

    path: Path
    model: FFNModel
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | os.PathLike, model: FFNModel, state: dict[str, Any], provenance: dict | None = None) -> Path:
    """Write ``state`` (must hold ``step``) and ``model`` atomically; returns the directory.

    On any failure (a full disk: ``OSError`` ENOSPC) the temporary directory is removed and
    the checkpoints already there are untouched.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(root)
    final = root / f"step-{int(state['step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=root))
    try:
        try:
            save_model(model, tmp / "model", provenance={"step": int(state["step"]), **(provenance or {})})
        except Exception as e:
            raise _as_os_error(e, tmp / "model" / "model.safetensors") from e
        buffer = io.BytesIO()  # torch.save reports a full disk only as an obscure RuntimeError
        torch.save({**state, "time": time.time()}, buffer)
        _write_durably(tmp / "state.pt", buffer.getbuffer())
        if final.exists():  # the same step saved again (e.g. at the end right after a periodic save)
            _discard(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _write_durably(path: Path, data: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # some file systems report a full disk only here


def _as_os_error(e: Exception, path: Path) -> Exception:
    """safetensors reports I/O failures as ``SafetensorError("... (os error 28)")``: make
    that the ``OSError`` it is, so that the CLI says "No space left on device" on one line."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    if not m:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(e), str(path))


def _discard(path: Path) -> None:
    """Delete a checkpoint directory: rename it out of sight first, so that a kill during the
    deletion never leaves a half-deleted ``step-*`` behind."""
    trash = path.with_name(f".{path.name}.del-{_owner()}-{os.urandom(4).hex()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_scratch(root: Path) -> None:
    """Remove temporary and trash directories of writers on this host that no longer run."""
    host = socket.gethostname()
    for p in root.iterdir():
        m = _SCRATCH.match(p.name)
        if m and m.group(2) == host and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainingCheckpoint:
    """Load a training checkpoint directory written by :func:`save_checkpoint`."""
    path = Path(path)
    state_path = path / "state.pt"
    if not state_path.exists() or not (path / "model").is_dir():
        raise CheckpointError(f"{path} is not a neuroflood training checkpoint (needs model/ and state.pt)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{state_path} cannot be read ({type(e).__name__}: {e}); delete this checkpoint to resume from an older one"
        ) from None
    model = load_model(path / "model", device=device)
    return TrainingCheckpoint(path, model, state)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, keep_every_hours: float | None, run_start: float) -> None:
    """Delete old checkpoints beyond the newest ``keep_last``, sparing one per period."""
    dirs = checkpoint_dirs(run_dir)
    old = dirs[:-keep_last] if keep_last > 0 else dirs
    anchor = run_start
    for p in dirs:
        if (p / "KEEP").exists():
            anchor = max(anchor, _saved_time(p))
    for p in old:
        if (p / "KEEP").exists():
            continue
        t = _saved_time(p)
        if keep_every_hours is not None and t >= anchor + keep_every_hours * 3600:
            (p / "KEEP").touch()
            anchor = t
        else:
            _discard(p)


def _saved_time(path: Path) -> float:
    try:
        return (path / "state.pt").stat().st_mtime
    except FileNotFoundError:  # damaged by hand (or by an older version killed mid-delete)
        return path.stat().st_mtime


# ------------------------------------------------------------------------------------------
# What a run continues from
# ------------------------------------------------------------------------------------------


def resume_from(run_dir: str | os.PathLike, resume: bool | None) -> Path | None:
    """The checkpoint a run in ``run_dir`` continues from; ``None`` for a new run.

    ``resume``: ``None`` continues from the latest checkpoint if there is one; ``True``
    requires one; ``False`` refuses a run directory that holds checkpoints (ConfigError).
    """
    latest = latest_checkpoint(run_dir)
    if resume is False and latest is not None:
        raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}); resume it (--resume) or choose a new --run-dir")
    if resume is True and latest is None:
        raise ConfigError(f"--resume given, but {run_dir} holds no checkpoint; drop --resume to start a new run")
    return latest


def starting_model(config: TrainConfig, checkpoint: TrainingCheckpoint | None) -> FFNModel:
    """The weights a run starts with: the checkpoint's when it resumes (it must have been
    trained with ``config.model``), else those of ``init_from`` (fine-tuning: depth, features
    and FOV must agree), else fresh ones from ``config.seed``."""
    if checkpoint is not None:
        if checkpoint.model.config.model_dump() != config.model.model_dump():
            raise ConfigError(
                f"the checkpoint in {Path(config.run_dir)} was trained with model {checkpoint.model.config.model_dump()}, "
                f"not {config.model.model_dump()}; keep the run's --model or start a new --run-dir"
            )
        return checkpoint.model
    if not config.init_from:
        return build_model(config.model, seed=config.seed)
    model = load_model(config.init_from, config=config.model)
    got, want = model.config, config.model
    # A TensorFlow checkpoint records no FOV (load_model gave it the run's): compare FOVs only
    # for native checkpoints, rather than print the run's FOV as the checkpoint's.
    native = Path(config.init_from).is_dir()
    same_fov = not native or tuple(got.fov_size) == tuple(want.fov_size)
    if (got.depth, got.features) != (want.depth, want.features) or not same_fov:
        fov = f"FOV {_xyz(got.fov_size)}" if native else "no recorded FOV (a TensorFlow checkpoint)"
        raise CheckpointError(
            f"--init-from {config.init_from} has depth {got.depth}, features {got.features}, {fov}, "
            f"but the run's model has depth {want.depth}, features {want.features}, FOV {_xyz(want.fov_size)}; "
            f"set --model to match the checkpoint"
        )
    return model


def _xyz(v: Sequence[int]) -> str:
    return "x".join(str(int(a)) for a in v)


class TrainingState:
    """Everything a run continues from, saved in each checkpoint.

    Parameters
    ----------
    config : TrainConfig
    model : FFNModel
        The model being trained (not a DDP wrapper).
    optimizer : torch.optim.Optimizer
    generators : list of ExampleGenerator
        The example generators of this rank: workers ``rank·E … rank·E + E − 1`` of
        ``world·E`` (E = ``config.emulate_workers``).
    rank, world : int

    ``step`` (optimizer steps taken) and ``elapsed_s`` (training time, without evaluation
    and checkpoints) are counted by the loop. :meth:`state_dict` gathers the generator
    states of all ranks, so under data parallelism every rank must call it (and
    :meth:`save`) at the same step.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: FFNModel,
        optimizer: torch.optim.Optimizer,
        generators: list[ExampleGenerator],
        rank: int = 0,
        world: int = 1,
    ):
        self.config, self.model, self.optimizer, self.generators = config, model, optimizer, generators
        self.rank, self.world = rank, world
        self.step = 0
        self.elapsed_s = 0.0
        self.saved_step = -1  # the step of the checkpoint last written or loaded
        self.run_start = time.time()  # wall time at which elapsed_s was 0

    @property
    def workers(self) -> range:
        """Indices of this rank's workers among all ranks' workers."""
        e = self.config.emulate_workers
        return range(self.rank * e, (self.rank + 1) * e)

    def state_dict(self) -> dict[str, Any]:
        """The state to save (all ranks' generator states, in worker order)."""
        generators = [g.state_dict() for g in self.generators]
        if self.world > 1:  # every rank takes part; rank 0 writes all workers' states
            generators = gather_generator_states(generators, self.world)
        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": self.config.optimizer,
            "generators": generators,
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_json(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state; refuses one the run cannot continue (ConfigError)."""
        if state.get("optimizer_name") != self.config.optimizer:
            raise ConfigError(
                f"the checkpoint holds {state.get('optimizer_name')} optimizer state, the run asks for "
                f"{self.config.optimizer}; resume with --optimizer {state.get('optimizer_name')} or start a new --run-dir "
                "(--init-from CHECKPOINT/model keeps the weights)"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])
        self.saved_step = self.step
        self.run_start = time.time() - self.elapsed_s
        generators = state["generators"]
        if len(generators) != self.world * self.config.emulate_workers:
            raise ConfigError(
                f"the checkpoint was written by {len(generators)} workers, this run has {self.world * self.config.emulate_workers}; "
                "resume with the same number of workers"
            )
        for w, generator in zip(self.workers, self.generators):
            generator.load_state_dict(generators[w])
        torch.set_rng_state(state["torch_rng"])

    def save(self, run_dir: Path) -> Path | None:
        """Checkpoint this state and prune old checkpoints; every rank calls it, rank 0 writes.

        Returns the checkpoint directory on rank 0, ``None`` elsewhere.
        """
        self.saved_step = self.step
        state = self.state_dict()
        if self.rank != 0:
            return None
        path = save_checkpoint(run_dir, self.model, state, provenance={"run_dir": str(run_dir)})
        prune_checkpoints(run_dir, self.config.keep_last, self.config.keep_every_hours, self.run_start)
        return path


def gather_generator_states(local: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """All ranks' generator states, in worker order (every rank must call this)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    return [s for part in gathered for s in part]
