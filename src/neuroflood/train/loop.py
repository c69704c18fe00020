"""The FFN training loop (google/ffn ``train.train_ffn``, ffn-algorithms.md §2.6).

Read :func:`train` top to bottom: :func:`start_run` checks every input, then sets up the run
directory, the example generators, the model and the optimizer (fresh, fine-tuned from
``init_from``, or resumed from the latest checkpoint); then the loop: next batch from each
example generator → forward, loss, backward → (allreduce under DDP) → element-wise clip →
optimizer step → write the logits back into the canvases → summaries, evaluation and
checkpoints when they are due. One optimizer step per FOV move.

Shaped for data parallelism: ``rank``/``world`` select the coordinate shards and random
streams; every rank takes the same stop and checkpoint decisions at the same step; only
rank 0 writes files. The same loop emulates N workers in one process (``emulate_workers``
generators whose gradients are accumulated before the single clip and step).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distributed import any_rank
from ..errors import NeurofloodError
from ..model import FFNModel
from .checkpoint import TrainingState, latest_checkpoint, load_checkpoint, resume_from, starting_model
from .config import TrainConfig
from .device import check_memory, pick_device
from .examples import ExampleGenerator
from .inputs import open_shards, resolve_config
from .metrics import EvalTracker, MetricsLog
from .optim import build_optimizer, learning_rate, lr_scale
from .patches import PatchSource
from .rundir import hold_run_dir, prepare_run_dir, write_config
from .step import evaluate_held_out, train_step
from .timing import StepTimer, summarize_timing


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
        run = start_run(config, rank, world, wrap_model, resume)
        state, run_dir, workers = run.state, Path(config.run_dir), world * config.emulate_workers
        scale = lr_scale(config.lr_scaling, workers)  # Dong et al. 2019; emulated workers count
        last_step = config.max_steps // workers if config.fixed_sample_budget else config.max_steps
        result = TrainResult(step=state.step, checkpoint=run.resumed_from)
        summaries = Every(config.summary_every_steps, config.summary_every_secs)
        evaluations = Every(config.eval_every_steps, config.eval_every_secs)
        checkpoints = Every(config.checkpoint_every_steps, config.checkpoint_every_secs)
        log = open_metrics_log(config, run, workers, last_step)
        with log, StopFlag() as stop:
            # Every rank must take the same decisions (stop, checkpoint) at the same step, or
            # one would wait forever in a collective: flags raised on any rank count for all.
            stopping = any_rank([stop.signal is not None or run.out_of_time()])[0]
            while state.step < last_step and not stopping:
                t_step = time.perf_counter()
                lr = learning_rate(state.step, config, scale, config.warmup_steps)
                loss = run.step(lr)
                state.step += 1
                now = time.perf_counter()
                state.elapsed_s += now - t_step
                log.track_step(loss, lr)
                stopping, summary_due, eval_due, checkpoint_due = run.agree(
                    stop.signal is not None or run.out_of_time(),
                    summaries.due(state.step, now),
                    run.evaluates and evaluations.due(state.step, now),
                    checkpoints.due(state.step, now),
                )
                if summary_due:
                    result.last_train = log.summarize(state.step, state.elapsed_s, run.timing())
                    summaries.done()
                if eval_due:
                    with log.paused(), run.untimed():  # rank 0 evaluates, the others wait for it
                        result.last_eval = log.write_eval(state.step, state.elapsed_s, run.evaluate()) if run.evaluates else {}
                    evaluations.done()
                if checkpoint_due:
                    with log.paused(), run.untimed():
                        result.checkpoint = state.save(run_dir) or result.checkpoint
                    checkpoints.done()
            result.stopped_by = stop.signal
            if log.pending:
                result.last_train = log.summarize(state.step, state.elapsed_s, run.timing())
            if state.saved_step != state.step:
                result.checkpoint = state.save(run_dir) or result.checkpoint
            if stop.signal is None and run.evaluates and result.last_eval.get("step") != state.step:
                result.last_eval = log.write_eval(state.step, state.elapsed_s, run.evaluate())
    result.step = state.step
    return result


def open_metrics_log(config: TrainConfig, run: Run, workers: int, last_step: int) -> MetricsLog:
    """The run's metrics log (rank 0 writes it; other ranks only track)."""
    return MetricsLog(
        config.run_dir if run.writes else None,
        run.tracker,
        fovs_per_step=config.batch_size * workers,
        tensorboard=config.tensorboard,
        progress=config.progress and run.writes,
        total_steps=None if config.max_train_seconds else last_step,
        step=run.state.step,
    )


# ------------------------------------------------------------------------------------------
# Setting a run up
# ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A started run: the state it trains and what its steps and evaluations need."""

    config: TrainConfig
    state: TrainingState
    stepper: torch.nn.Module  # the model, wrapped for data parallelism
    tracker: EvalTracker  # of the training generators
    source: PatchSource
    device: torch.device
    resumed_from: Path | None
    writes: bool  # rank 0: writes the run directory and evaluates
    timer: StepTimer  # where this rank's steps go (data, compute, wait)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.config.precision == "bfloat16" else None

    @property
    def evaluates(self) -> bool:
        return bool(self.config.eval_coords) and self.writes

    def step(self, lr: float) -> float:
        """One optimizer step on the next batch of every generator; returns its loss."""
        generators, timer, c = self.state.generators, self.timer, self.config
        with timer.phase("data"):
            batches = [g.next_batch() for g in generators]
        timer.jitter()
        loss, logits = train_step(
            self.stepper, self.state.optimizer, batches, lr, c.grad_clip, self.device, self.autocast_dtype, c.channels_last, timer
        )  # type: ignore[arg-type]
        if not math.isfinite(loss):
            good = latest_checkpoint(c.run_dir)
            raise TrainingDiverged(
                f"the loss became {loss} at step {self.state.step}; the last good checkpoint is "
                f"{good if good else 'none (no checkpoint was written yet)'}; lower --learning-rate, "
                "keep --grad-clip, or check the image normalization (--model mean=,stddev=)"
            )
        with timer.phase("data"):
            for g, out in zip(generators, logits):
                g.update(out)
        return loss

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks (timed as waiting); closes the step's timing."""
        with self.timer.phase("wait"):
            agreed = any_rank(flags)
        self.timer.end_step()
        return agreed

    @contextmanager
    def untimed(self) -> Iterator[None]:
        """A block outside the steps (evaluation, checkpoint) that every rank leaves together,
        so that the next step's wait does not count the time rank 0 spent in it."""
        yield
        any_rank([False])  # not on an error: the other ranks may never get here

    def timing(self) -> dict[str, float | None]:
        """The timing statistics of the steps since the last summary, over all ranks (every
        rank calls it; rank 0 also appends the raw times to ``RUN_DIR/step_times.jsonl``)."""
        return summarize_timing(self.timer, self.config.run_dir if self.writes else None, self.state.step)

    def evaluate(self) -> dict[str, Any]:
        """Metrics of the model on the held-out coordinates (see :func:`~neuroflood.train.step.evaluate_held_out`)."""
        c = self.config
        assert c.eval_coords is not None
        return evaluate_held_out(self.state.model, c, self.source, c.eval_coords, self.device, self.autocast_dtype, c.channels_last)

    def out_of_time(self) -> bool:
        return self.config.max_train_seconds is not None and self.state.elapsed_s >= self.config.max_train_seconds


def start_run(
    config: TrainConfig, rank: int, world: int, wrap_model: Callable[[FFNModel], torch.nn.Module] | None, resume: bool | None
) -> Run:
    """Check every input before the run directory is written or memory is taken, then set
    up the generators, the model and the optimizer, resumed from the latest checkpoint."""
    writes = rank == 0
    device = pick_device(config.device)
    source, shards = open_shards(config, rank, world, check_eval=writes)
    check_memory(config, device)
    latest = resume_from(Path(config.run_dir), resume)
    checkpoint = load_checkpoint(latest) if latest is not None else None
    model = starting_model(config, checkpoint)
    if writes:
        prepare_run_dir(config.run_dir)
    tracker = EvalTracker(config.eval_size())
    pin = device.type == "cuda"
    generators = [ExampleGenerator(config, source, shard, tracker, worker=w, pin_memory=pin) for w, shard in shards.items()]
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    model.train()
    state = TrainingState(config, model, build_optimizer(model.parameters(), config), generators, rank, world)
    if checkpoint is not None:
        state.load_state_dict(checkpoint.state)
    stepper = wrap_model(model) if wrap_model else model
    if writes:
        write_config(config.run_dir, config)
    timer = StepTimer(config.inject_jitter_s, config.seed, rank, device)
    return Run(config, state, stepper, tracker, source, device, latest, writes, timer)


# ------------------------------------------------------------------------------------------
# When things happen
# ------------------------------------------------------------------------------------------


class Every:
    """Due every ``steps`` optimizer steps, or ``secs`` seconds after it was last done
    (whichever comes first; either may be ``None``)."""

    def __init__(self, steps: int | None, secs: float | None):
        self.steps, self.secs = steps, secs
        self.last = time.perf_counter()

    def due(self, step: int, now: float) -> bool:
        return bool(self.steps and step % self.steps == 0) or bool(self.secs and now - self.last >= self.secs)

    def done(self) -> None:
        self.last = time.perf_counter()


class StopFlag:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
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
