"""Per-rank step timing: where each rank's steps go, gathered to rank 0 at every summary.

Every rank splits each of its optimizer steps into

* ``data_s``: example generation (the next batch of every generator, writing the logits
  back into the canvases and choosing the next FOV moves);
* ``compute_s``: forward, backward, element-wise clip and optimizer update;
* injected jitter (``inject_jitter_s``, a measurement aid; 0 by default);
* ``wait_s``: time inside collectives: the gradient all-reduce, and the small per-step
  agreement on stopping, summaries, evaluations and checkpoints.

``work_s = data_s + compute_s + jitter`` is everything a rank does on its own; a synchronous
step of N ranks lasts about the slowest rank's work plus the all-reduce, so the distribution
of ``work_s`` over ranks and steps is what :mod:`neuroflood.studies.projection` extrapolates.

At each summary every rank hands its rows to rank 0 (one ``all_gather`` of a small tensor),
which adds the interval's statistics to the metrics record and appends the raw per-rank,
per-step work and wait times to ``RUN_DIR/step_times.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_TIMES = "step_times.jsonl"
PHASES = ("data", "compute", "jitter", "wait")
JITTER_STREAM = 7  # SeedSequence([seed, rank, 7]): apart from the generators' streams 0-2


class StepTimer:
    """Times the phases of one rank's steps; :meth:`take` hands over the rows of an interval.

    Parameters
    ----------
    jitter_mean_s : float
        Mean of an extra Exp(mean) sleep per step (0: none), from a generator seeded by
        ``seed`` and ``rank``: a slow rank on demand, to validate the scaling model.
    device : torch.device, optional
        A CUDA device is synchronized before the compute phase ends, so that the time of the
        kernels counts as compute rather than as waiting in the next collective.
    """

    def __init__(self, jitter_mean_s: float = 0.0, seed: int = 0, rank: int = 0, device: torch.device | None = None):
        self.jitter_mean_s = float(jitter_mean_s)
        self._rng = np.random.default_rng([seed, rank, JITTER_STREAM]) if self.jitter_mean_s > 0 else None
        self._cuda = device if device is not None and device.type == "cuda" else None
        self._current = dict.fromkeys(PHASES, 0.0)
        self._rows: list[list[float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` of the current step."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if name == "compute" and self._cuda is not None:
                torch.cuda.synchronize(self._cuda)
            self._current[name] += time.perf_counter() - t0

    def jitter(self) -> None:
        """Sleep the injected jitter of this step (nothing unless ``jitter_mean_s`` > 0)."""
        if self._rng is not None:
            with self.phase("jitter"):
                time.sleep(float(self._rng.exponential(self.jitter_mean_s)))

    def end_step(self) -> None:
        """Close the current step's row."""
        c = self._current
        self._rows.append([c["data"], c["compute"], c["wait"], c["data"] + c["compute"] + c["jitter"]])
        self._current = dict.fromkeys(PHASES, 0.0)

    def take(self) -> np.ndarray:
        """The rows ``[data_s, compute_s, wait_s, work_s]`` of the steps since the last call."""
        rows = np.asarray(self._rows, np.float64).reshape(-1, 4)
        self._rows = []
        return rows


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every rank's rows as ``[ranks, steps, 4]`` (one ``all_gather``; every rank must call it).

    Ranks agree on when summaries happen, so they hold the same number of steps. Without a
    process group: ``rows[None]``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return rows[None]
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    mine = torch.as_tensor(rows, dtype=torch.float64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return torch.stack(out).cpu().numpy()


def timing_stats(rows: np.ndarray) -> dict[str, float | None]:
    """The summary keys of ``[ranks, steps, 4]`` rows: work-time percentiles and CV over ranks
    and steps, mean wait, data and compute times (``None`` when the interval has no steps)."""
    keys = ("step_time_p50", "step_time_p90", "step_time_max", "step_time_cv", "allreduce_wait_s", "data_s", "compute_s")
    if rows.size == 0:
        return dict.fromkeys(keys, None)
    work = rows[..., 3].ravel()
    mean = float(work.mean())
    p50, p90 = np.percentile(work, [50, 90])
    return dict(
        zip(
            keys,
            (
                float(p50),
                float(p90),
                float(work.max()),
                float(work.std() / mean) if mean > 0 else 0.0,
                float(rows[..., 2].mean()),
                float(rows[..., 0].mean()),
                float(rows[..., 1].mean()),
            ),
        )
    )


def write_step_times(run_dir: str | Path, last_step: int, rows: np.ndarray) -> None:
    """Append one line for the interval ending at ``last_step``: per-rank lists of work and
    wait times (seconds, rounded to 1 µs) to ``RUN_DIR/step_times.jsonl``."""
    ranks, steps = rows.shape[:2]
    if steps == 0:
        return
    record: dict[str, Any] = {
        "steps": [last_step - steps + 1, last_step],
        "ranks": ranks,
        "work_s": np.round(rows[..., 3], 6).tolist(),
        "wait_s": np.round(rows[..., 2], 6).tolist(),
    }
    with open(Path(run_dir) / STEP_TIMES, "a") as f:
        f.write(json.dumps(record) + "\n")


def summarize_timing(timer: StepTimer, run_dir: str | None, last_step: int) -> dict[str, float | None]:
    """Gather the interval's rows to every rank, write them (when ``run_dir`` is given: rank 0)
    and return the statistics for the metrics record."""
    rows = gather_rows(timer.take())
    if run_dir is not None:
        write_step_times(run_dir, last_step, rows)
    return timing_stats(rows)
