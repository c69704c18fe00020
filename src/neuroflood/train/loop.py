"""The FFN training loop (google/ffn ``train.train_ffn``, ffn-algorithms.md §2.6).

Read :func:`train` top to bottom: set up the run directory, the data, the model and the
optimizer (fresh, fine-tuned from ``init_from``, or resumed from the latest checkpoint), then
loop: next batch from each example generator → forward, loss, backward → (allreduce under
DDP) → element-wise clip → optimizer step → write the logits back into the canvases →
summaries, evaluation and checkpoints on their schedules. One optimizer step per FOV move.

Shaped for data parallelism: :func:`train_step` works on a plain or DDP-wrapped model and
accumulates the gradients of several example generators (emulated workers) before the
single clip and step; ``rank``/``world`` select the coordinate shard and random streams;
only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import any_rank
from ..errors import CheckpointError, ConfigError, DataError, NeurofloodError
from ..model import FFNModel, build_model, load_model
from ..outputs import exclusive
from ..prepare.coordfile import open_coordinates
from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .config import TrainConfig
from .examples import Batch, ExampleGenerator, PatchSource
from .metrics import EvalTracker, MetricsLog
from .optim import build_optimizer, clip_gradients, learning_rate, lr_scale, set_learning_rate


class TrainingDiverged(NeurofloodError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    step: int
    checkpoint: Path | None
    last_train: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when interrupted


# ------------------------------------------------------------------------------------------
# One optimizer step
# ------------------------------------------------------------------------------------------


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
) -> tuple[float, list[torch.Tensor]]:
    """One synchronous step over the batches of several workers; returns (loss, logits).

    Gradients of the workers' mean losses are averaged (accumulated with ``no_sync`` under
    DDP, so the allreduce runs once, after the last backward); then the element-wise clip,
    then the update. The loss is checked before the update: a non-finite loss returns
    without touching the weights. The logits are the forward pass's (before the update), as
    the reference writes them back.
    """
    set_learning_rate(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    n = len(batches)
    losses, outputs = [], []
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for i, b in enumerate(batches):
        image, seed, labels, weights = (
            t.to(device, non_blocking=True).contiguous(memory_format=fmt) for t in (b.image, b.seed, b.labels, b.weights)
        )
        sync = model.no_sync() if (i < n - 1 and hasattr(model, "no_sync")) else nullcontext()
        with sync:
            amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with amp:
                logits = model(image, seed)
            loss = weighted_sigmoid_loss(logits, labels, weights)
            (loss / n).backward()
        losses.append(loss.detach())
        outputs.append(logits.detach().float())
    loss_value = float(torch.stack(losses).mean())
    if not math.isfinite(loss_value):
        return loss_value, outputs
    clip_gradients(model.parameters(), grad_clip)
    optimizer.step()
    return loss_value, outputs


# ------------------------------------------------------------------------------------------
# Evaluation on held-out coordinates (no weight updates)
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
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
    ``loss`` (mean FOV loss), ``fovs`` and ``fovs_per_s``.
    """
    coords = open_coordinates(coords_path)
    shard = coords.shard(0, 1)
    n = min(len(shard), config.eval_examples)
    shard = type(shard)(shard.centers[:n], shard.volume_index[:n], shard.volume_names)
    tracker = EvalTracker(config.eval_size())
    gen = ExampleGenerator(config, _source_for(source, coords.volume_names), shard, tracker, train=False)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        while (batch := gen.next_batch()) is not None:
            image, seed, labels, weights = (t.to(device).contiguous(memory_format=fmt) for t in (batch.image, batch.seed, batch.labels, batch.weights))
            amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
            with amp:
                logits = model(image, seed)
            tracker.track_step(float(weighted_sigmoid_loss(logits, labels, weights)), len(batch))
            gen.update(logits)
    finally:
        model.train(was_training)
    out = tracker.summary()
    out["fovs_per_s"] = tracker.fovs / max(time.perf_counter() - t0, 1e-9)
    return out


def _source_for(source: PatchSource, volume_names: Sequence[str]) -> PatchSource:
    """A patch source for another coordinate file's volume-name table (shares the config)."""
    if list(volume_names) == source._names:
        return source
    return PatchSource(source.config, volume_names)


# ------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Check the data options and give unnamed volumes the coordinate file's volume name."""
    if not config.coords:
        raise ConfigError("no training coordinates: give --coords PATH (made by `neuroflood prepare`)")
    if not config.run_dir.strip():
        raise ConfigError("no run directory: give --run-dir DIR")
    _check_file(config.coords, "--coords", "the coordinate file made by `neuroflood prepare`")
    if config.eval_coords is not None:
        _check_file(config.eval_coords, "--eval-coords", "a held-out coordinate file made by `neuroflood prepare`")
    if config.init_from is not None and not config.init_from.strip():
        raise ConfigError("--init-from is empty; give a checkpoint directory or a TensorFlow prefix, or leave it out")
    names = open_coordinates(config.coords).volume_names
    updates: dict[str, Any] = {}
    for key in ("images", "labels", "loss_weights"):
        specs = dict(getattr(config, key))
        if "" in specs:
            if len(names) != 1:
                raise ConfigError(
                    f"the coordinate file names volumes {', '.join(names)}; name each volume: "
                    f"--{key.replace('_', '-').rstrip('s')} NAME=SPEC"
                )
            specs[names[0]] = specs.pop("")
            updates[key] = specs
    if not config.images or not config.labels:
        raise ConfigError("give the image and labels of each training volume: --image SPEC --labels SPEC")
    # A weight volume under a name the coordinates do not use would be silently ignored.
    unknown = sorted(set(updates.get("loss_weights", config.loss_weights)) - set(names))
    if unknown:
        raise ConfigError(
            f"--loss-weights names volume(s) {', '.join(unknown)}, but {config.coords} has {', '.join(names)}; "
            "name each weight volume as its training volume (NAME=SPEC)"
        )
    return config.model_copy(update=updates) if updates else config


def _check_file(path: str, flag: str, what: str) -> None:
    """Refuse an empty path or a directory where a file is needed, naming the option."""
    if not path.strip():
        raise ConfigError(f"{flag} is empty; give {what}")
    if os.path.isdir(path):
        inside = os.path.join(path, "coordinates.nfc")
        hint = f", e.g. {inside}" if os.path.isfile(inside) else ""
        raise ConfigError(f"{flag} {path} is a directory; give {what}{hint}")


# The run directory that this process (or the ``--nproc-per-node`` launcher that started it)
# holds: taking the lock again would be refused by the holder itself.
RUN_DIR_HELD = "NEUROFLOOD_RUN_DIR_HELD"


class RunDirGuard:
    """What :func:`hold_run_dir` yields; set ``failed`` for a failure that raised nothing."""

    failed = False


@contextmanager
def hold_run_dir(run_dir: str, holder: bool = True) -> Iterator[RunDirGuard]:
    """Hold ``run_dir`` for one run: refuse a second run there, clean up after a failed start.

    The process that writes the run directory (rank 0, or the ``--nproc-per-node`` launcher)
    takes :func:`neuroflood.outputs.exclusive` on it. If the run fails (an exception, or
    ``guard.failed``) before the directory holds a checkpoint or metrics, what the run wrote
    is removed: the directory and the parents made for it if it created them, else only the
    new entries. A run refused on bad input leaves nothing behind, and a directory that
    existed before is never removed.
    """
    guard = RunDirGuard()
    path = os.path.abspath(run_dir)
    if not holder or os.environ.get(RUN_DIR_HELD) == path:
        yield guard
        return
    _check_run_dir_writable(run_dir)
    fresh = _first_missing(Path(path))
    existing = set(os.listdir(path)) if fresh is None and os.path.isdir(path) else set()
    try:
        with exclusive(run_dir, f"--run-dir {run_dir}"):
            # Nested holders in this process and the launcher's workers see that it is held.
            previous = os.environ.get(RUN_DIR_HELD)
            os.environ[RUN_DIR_HELD] = path
            try:
                yield guard
            except BaseException:
                guard.failed = True
                raise
            finally:
                if previous is None:
                    os.environ.pop(RUN_DIR_HELD, None)
                else:
                    os.environ[RUN_DIR_HELD] = previous
                if guard.failed:
                    _remove_if_unused(Path(path), keep=existing if fresh is None else None)
    finally:
        if guard.failed and fresh is not None:  # now that the lock file beside run_dir is gone
            _remove_empty_dirs(Path(path).parent, fresh)


def _first_missing(path: Path) -> Path | None:
    """The outermost directory on the way to ``path`` (itself included) that does not exist yet."""
    missing = None
    while not os.path.lexists(path):
        missing, path = path, path.parent
    return missing


def _remove_if_unused(run_dir: Path, keep: set[str] | None) -> None:
    """After a failed run: remove what it wrote if that holds no checkpoint and no metrics.

    ``keep=None``: the run created ``run_dir``, remove all of it; else remove only the entries
    that are not in ``keep`` (the ones there before the run).
    """
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir() or latest_checkpoint(run_dir) is not None or (metrics.exists() and metrics.stat().st_size > 0):
        return
    if keep is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(os.listdir(run_dir)) - keep:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _remove_empty_dirs(path: Path, top: Path) -> None:
    """rmdir ``path`` and its parents up to ``top`` while they are empty."""
    while path == top or top in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def _check_run_dir_writable(run_dir: str) -> None:
    """A one-line refusal, before anything is written, for a run directory that cannot be made."""
    path = Path(os.path.abspath(run_dir))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write to run directory {run_dir} (a file is there); choose a writable --run-dir")
    parent = path.parent  # the lock file goes beside the run directory
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write to run directory {run_dir} ({parent} is a file); choose a writable --run-dir")
    for d in ([path] if path.exists() else []) + [parent]:
        if not os.access(d, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write to run directory {run_dir} ({d} is not writable); choose a writable --run-dir")


def check_memory(config: TrainConfig, device: torch.device) -> None:
    """Refuse a batch that cannot fit before allocating it (a huge one would swap for minutes).

    Lower bounds: each trajectory keeps its patch (image, labels, weights) and canvas in host
    memory; one step keeps each conv's activations of the batch for the backward pass, plus
    weights, gradients and two optimizer moments (float32).
    """
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
                f"--batch-size {config.batch_size} (x {config.emulate_workers} emulated worker(s)) with this model and FOV "
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


def _prepare_run_dir(run_dir: str) -> Path:
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to run directory {run_dir} ({e.strerror or e}); choose a writable --run-dir") from None
    return path


def _write_config(path: Path, config: TrainConfig) -> None:
    tmp = path / f".config.json.tmp-{os.getpid()}"
    tmp.write_text(config.to_json() + "\n")
    os.replace(tmp, path / "config.json")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return dev


def _initial_model(config: TrainConfig) -> FFNModel:
    """Fresh weights from the seed, or those of ``init_from`` (geometry must agree)."""
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


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    rank: int = 0,
    world: int = 1,
    wrap_model: Callable[[FFNModel], torch.nn.Module] | None = None,
    resume: bool | None = None,
) -> TrainResult:
    """Train an FFN as google/ffn does; see the module docstring.

    Parameters
    ----------
    config : TrainConfig
    rank, world : int
        This process's rank and the number of processes (data-parallel). Each process runs
        ``config.emulate_workers`` example generators over its own coordinate shards.
    wrap_model : callable, optional
        Wraps the model for the step (e.g. in ``DistributedDataParallel``).
    resume : bool, optional
        ``None``: continue from the latest checkpoint if there is one; ``True``: require one;
        ``False``: refuse a run directory that already has checkpoints.
    """
    config = resolve_config(config)
    with hold_run_dir(config.run_dir, holder=rank == 0):
        return _train_held(config, rank, world, wrap_model, resume)


def _train_held(
    config: TrainConfig, rank: int, world: int, wrap_model: Callable[[FFNModel], torch.nn.Module] | None, resume: bool | None
) -> TrainResult:
    """:func:`train` inside the run-directory lock: check everything, then create and train."""
    is_main = rank == 0
    device = pick_device(config.device)
    autocast_dtype = torch.bfloat16 if config.precision == "bfloat16" else None

    # Data: one example generator per worker of this process, each over its own shard. Every
    # input is checked before the run directory is created or memory is taken.
    coords = open_coordinates(config.coords)
    workers = config.emulate_workers
    if len(coords) < world * workers:
        raise DataError(
            f"{config.coords} holds {len(coords)} coordinates for {world * workers} workers "
            f"({world} process(es) x {workers} emulated); every worker needs at least one: use more coordinates or fewer workers"
        )
    source = PatchSource(config, coords.volume_names)
    shards = {w: coords.shard(w, world * workers) for w in range(rank * workers, (rank + 1) * workers)}
    for shard in shards.values():
        source.check(shard, config.coords)
    if config.eval_coords and is_main:
        eval_coords = open_coordinates(config.eval_coords)
        _source_for(source, eval_coords.volume_names).check(eval_coords.shard(0, 1), config.eval_coords)
    check_memory(config, device)
    run_dir = Path(config.run_dir)
    latest = latest_checkpoint(run_dir)
    if resume is False and latest is not None:
        raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}); resume it (--resume) or choose a new --run-dir")
    if resume is True and latest is None:
        raise ConfigError(f"--resume given, but {run_dir} holds no checkpoint; drop --resume to start a new run")
    initial = _initial_model(config) if latest is None else None
    if is_main:
        _prepare_run_dir(config.run_dir)
    tracker = EvalTracker(config.eval_size())
    generators = [
        ExampleGenerator(config, source, shard, tracker, worker=w, pin_memory=device.type == "cuda") for w, shard in shards.items()
    ]

    # Model and optimizer: resumed, fine-tuned or fresh.
    state: dict[str, Any] = {}
    if latest is not None:
        ckpt = load_checkpoint(latest)
        if ckpt.model.config.model_dump() != config.model.model_dump():
            raise ConfigError(
                f"the checkpoint in {run_dir} was trained with model {ckpt.model.config.model_dump()}, "
                f"not {config.model.model_dump()}; keep the run's --model or start a new --run-dir"
            )
        model, state = ckpt.model, ckpt.state
    else:
        assert initial is not None
        model = initial
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    optimizer = build_optimizer(model.parameters(), config)
    step, elapsed = 0, 0.0
    if state:
        if state.get("optimizer_name") != config.optimizer:
            raise ConfigError(
                f"the checkpoint holds {state.get('optimizer_name')} optimizer state, the run asks for "
                f"{config.optimizer}; resume with --optimizer {state.get('optimizer_name')} or start a new --run-dir "
                "(--init-from CHECKPOINT/model keeps the weights)"
            )
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed = int(state["step"]), float(state["elapsed_s"])
        gen_states = state["generators"]
        if len(gen_states) != world * workers:
            raise ConfigError(
                f"the checkpoint was written by {len(gen_states)} workers, this run has {world * workers}; "
                "resume with the same number of workers"
            )
        for w, gen in zip(range(rank * workers, (rank + 1) * workers), generators):
            gen.load_state_dict(gen_states[w])
        torch.set_rng_state(state["torch_rng"])
    stepper = wrap_model(model) if wrap_model else model
    if is_main:
        _write_config(run_dir, config)

    log = MetricsLog(str(run_dir), tensorboard=config.tensorboard) if is_main else None
    result = TrainResult(step=step, checkpoint=latest)
    run_start = time.time() - elapsed
    fovs_per_step = config.batch_size * workers * world
    # Data-parallel rules of Dong et al. 2019, counting emulated workers as workers.
    scale = lr_scale(config.lr_scaling, world * workers)
    last_step = config.max_steps // (world * workers) if config.fixed_sample_budget else config.max_steps
    saved_step = step if latest is not None else -1

    def checkpoint() -> Path | None:
        nonlocal saved_step
        saved_step = step
        states = [g.state_dict() for g in generators]
        if world > 1:  # every rank takes part; rank 0 writes all workers' states
            states = gather_generator_states(states, world)
        if not is_main:
            return None
        path = save_checkpoint(
            run_dir,
            model,
            {
                "step": step,
                "elapsed_s": elapsed,
                "optimizer": optimizer.state_dict(),
                "optimizer_name": config.optimizer,
                "generators": states,
                "torch_rng": torch.get_rng_state(),
                "config": config.to_json(),
            },
            provenance={"run_dir": str(run_dir)},
        )
        prune_checkpoints(run_dir, config.keep_last, config.keep_every_hours, run_start)
        return path

    def summarize(split: str, metrics: dict[str, Any], fovs_per_s: float, images: Sequence[np.ndarray] = ()) -> dict[str, Any]:
        record = {"step": step, "time_s": round(elapsed, 3), "split": split, "fovs_per_s": fovs_per_s, **metrics}
        if split == "train":
            record["learning_rate"] = learning_rate(max(step - 1, 0), config, scale, config.warmup_steps)
        if log is not None:
            log.write(record, images)
        return record

    def run_eval() -> None:
        if not (config.eval_coords and is_main):
            return
        metrics = evaluate(model, config, source, config.eval_coords, device, autocast_dtype, config.channels_last)
        result.last_eval = summarize("eval", metrics, metrics.pop("fovs_per_s"))

    from tqdm import tqdm

    bar = tqdm(total=None if config.max_train_seconds else last_step, initial=step, disable=not (config.progress and is_main), file=sys.stderr, unit="step", dynamic_ncols=True)
    t_interval, steps_interval = time.perf_counter(), 0
    last_summary = last_checkpoint = last_eval = time.perf_counter()
    smoothed_loss = None
    try:
        with _StopFlag() as stop:
            def out_of_time() -> bool:
                return config.max_train_seconds is not None and elapsed >= config.max_train_seconds

            # Every rank must take the same decisions (stop, checkpoint) at the same step, or
            # one would wait forever in a collective: flags raised on any rank count for all.
            stopping = any_rank([stop.signal is not None or out_of_time()])[0]
            while step < last_step and not stopping:
                t_step = time.perf_counter()
                lr = learning_rate(step, config, scale, config.warmup_steps)
                batches = [g.next_batch() for g in generators]
                loss, logits = train_step(stepper, optimizer, batches, lr, config.grad_clip, device, autocast_dtype, config.channels_last)  # type: ignore[arg-type]
                if not math.isfinite(loss):
                    good = latest_checkpoint(run_dir)
                    raise TrainingDiverged(
                        f"the loss became {loss} at step {step}; the last good checkpoint is "
                        f"{good if good else 'none (no checkpoint was written yet)'}; lower --learning-rate, "
                        "keep --grad-clip, or check the image normalization (--model mean=,stddev=)"
                    )
                for g, out in zip(generators, logits):
                    g.update(out)
                step += 1
                steps_interval += 1
                tracker.track_step(loss, fovs_per_step)
                now = time.perf_counter()
                elapsed += now - t_step
                smoothed_loss = loss if smoothed_loss is None else 0.95 * smoothed_loss + 0.05 * loss
                bar.update(1)

                if now - last_summary >= config.summary_every_secs or (config.summary_every_steps and step % config.summary_every_steps == 0):
                    fps = steps_interval * fovs_per_step / max(now - t_interval, 1e-9)
                    metrics = tracker.summary()
                    metrics["steps_per_s"] = steps_interval / max(now - t_interval, 1e-9)
                    result.last_train = summarize("train", metrics, fps, list(tracker.images))
                    tracker.reset()
                    bar.set_postfix(loss=f"{smoothed_loss:.4f}", f1=_fmt(metrics["f1"]), fovs_s=f"{fps:.2f}", refresh=False)
                    t_interval, steps_interval, last_summary = time.perf_counter(), 0, time.perf_counter()
                if (config.eval_every_steps and step % config.eval_every_steps == 0) or (
                    config.eval_every_secs and now - last_eval >= config.eval_every_secs
                ):
                    t0 = time.perf_counter()
                    run_eval()
                    last_eval = time.perf_counter()
                    t_interval += last_eval - t0  # evaluation time does not count against FOVs/s
                stopping, checkpoint_due = any_rank([
                    stop.signal is not None or out_of_time(),
                    bool(config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)
                    or bool(config.checkpoint_every_secs and now - last_checkpoint >= config.checkpoint_every_secs),
                ])
                if checkpoint_due:
                    t0 = time.perf_counter()
                    result.checkpoint = checkpoint() or result.checkpoint
                    last_checkpoint = time.perf_counter()
                    t_interval += last_checkpoint - t0
            result.stopped_by = stop.signal
            if steps_interval:
                now = time.perf_counter()
                metrics = tracker.summary()
                metrics["steps_per_s"] = steps_interval / max(now - t_interval, 1e-9)
                result.last_train = summarize("train", metrics, steps_interval * fovs_per_step / max(now - t_interval, 1e-9), list(tracker.images))
            if saved_step != step:
                result.checkpoint = checkpoint() or result.checkpoint
            if stop.signal is None and config.eval_coords and result.last_eval.get("step") != step:
                run_eval()
    finally:
        bar.close()
        if log is not None:
            log.close()
    result.step = step
    return result


def gather_generator_states(local: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """All ranks' generator states, in worker order (every rank must call this)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    return [s for part in gathered for s in part]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary_line(record: dict[str, Any]) -> str:
    """A short human-readable line for a metrics record."""
    keys = ("step", "split", "loss", "accuracy", "precision", "recall", "f1", "fovs_per_s")
    return json.dumps({k: (round(record[k], 4) if isinstance(record.get(k), float) else record.get(k)) for k in keys})
