"""What the studies share: synthetic data, running one training configuration, results files.

A study is a list of training runs. Each run is a :class:`~neuroflood.train.config.TrainConfig`
executed either

* ``emulated``: in one process with ``emulate_workers = N`` (N example generators, gradient
  accumulation): the optimisation of N synchronous workers on a small machine, not their
  speed; or
* ``real``: as N ranks, started by ``neuroflood train --nproc-per-node N`` or by a launcher
  command such as ``srun --ntasks {workers}`` (the same command on a cluster).

Results are read back from the run's ``metrics.jsonl`` (rank 0 writes it), so both modes give
the same records.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..config import ModelConfig
from ..errors import ConfigError

# The fastest network that learns the study's synthetic volume: ≈ 600 FOVs/s of training on
# one CPU core; still learning at 38,400 FOVs (docs/reproducing-the-paper.md, "Convergence
# check"). The earlier depth=3, features=16, FOV 13³ network trained ~5× slower and reached
# the same held-out accuracy at the budgets both were run at.
STUDY_MODEL = "depth=2,features=8,fov=9,9,9,deltas=2,2,2"
# The FIB-25 network of google/ffn and Dong et al. 2019 (for throughput).
FIB25_MODEL = "depth=12,features=32,fov=33,33,33,deltas=8,8,8"
# An easier synthetic volume than make_em_volume's default: thicker, sparser processes and
# less noise, so that short training runs reach distinguishable held-out F1 values.
STUDY_SYNTH = {"radius_range": (3.0, 7.0), "density": 1.0, "noise": 4.0}
# Held-out examples per evaluation of the learning studies: the same first 512 coordinates of
# the held-out volume for every run and seed (64 gave evaluation noise of ±0.2 in F1).
EVAL_EXAMPLES = 512
# Held-out trajectories per network call: the same figures as one batch of 4, in about half
# the time for the study network (evaluation dominated the runs' cost).
STUDY_EVAL_BATCH = 64


@dataclass(frozen=True)
class StudyRuns:
    """How a learning study runs its trainings: the options lr-scaling, batch-size and
    optimizers share (the network, the held-out set, seeds, where and how runs execute)."""

    model: str = STUDY_MODEL
    eval_examples: int = EVAL_EXAMPLES
    seeds: int = 1  # training seeds seed, seed + 1, …: initial weights and data order
    mode: str = "emulated"
    launcher: str | None = None
    threads: int = 1
    jobs: int = 1
    data_size: int = 80
    seed: int = 0  # the data, the held-out volume and the first training seed
    progress: bool = True

    def values(self) -> tuple[Any, ...]:
        """The fields in declaration order (model, eval_examples, …, progress)."""
        return astuple(self)

    def check(self, evaluations: int) -> None:
        if evaluations < 1 or self.seeds < 1:
            raise ConfigError(f"--evaluations ({evaluations}) and --seeds ({self.seeds}) must be >= 1")

    def prepare(self, out: Path) -> tuple[Any, dict[str, Any]]:
        """The network's config and the study's synthetic data (made once under ``out/data``)."""
        from ..config import ModelConfig

        mcfg = ModelConfig.parse_spec(self.model)
        return mcfg, prepare_synthetic(out / "data", mcfg, size=self.data_size, seed=self.seed)

    def record(self, data: dict[str, Any]) -> dict[str, Any]:
        """The entries of a study's JSON ``config`` that describe these runs."""
        from .statistics import FINAL_WINDOW, seed_list

        return {
            "model": self.model,
            "mode": self.mode,
            "seeds": seed_list(self.seed, self.seeds),
            "final_window": FINAL_WINDOW,
            "eval_examples": heldout_examples(data, self.eval_examples),
            "data": f"synthetic {self.data_size}^3, held-out volume seed {self.seed + 1}",
        }


def prepare_synthetic(work: str | os.PathLike, model: ModelConfig, size: int = 80, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Training and held-out synthetic volumes with class-balanced coordinates.

    Two volumes of ``size``³ from :func:`~neuroflood.synthetic.make_em_volume` (seeds
    ``seed`` and ``seed + 1``), partitioned as google/ffn's ``compute_partitions`` with the
    LOM radius ``fov // 2 + delta`` (24 for the FIB-25 geometry, as the README) and sampled
    class-balanced by :func:`~neuroflood.prepare.coordinates.build_coordinates`. The held-out
    volume is a different volume, not other places of the training one. Returns the
    TrainConfig options (images, labels, coords, eval_coords). Reuses files already there.
    """
    from ..prepare.coordinates import build_coordinates
    from ..prepare.partitions import compute_partitions
    from ..synthetic import make_em_volume
    from ..volume import write_volume

    work = Path(work)
    radius = [f // 2 + d for f, d in zip(model.fov_size, model.deltas)]
    if size < 2 * max(radius) + 8:
        raise ConfigError(
            f"--data-size {size} is too small for FOV {tuple(model.fov_size)} and deltas {tuple(model.deltas)}; use at least {2 * max(radius) + 8}"
        )
    work.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"images": {}, "labels": {}}
    for name, s, key in (("train", seed, "coords"), ("heldout", seed + 1, "eval_coords")):
        h5, coords = work / f"{name}-{size}-{s}.h5", work / f"{name}-{size}-{s}-r{'_'.join(map(str, radius))}.nfc"
        if not h5.exists():
            image, labels = make_em_volume((size,) * 3, seed=s, **STUDY_SYNTH)  # type: ignore[arg-type]
            tmp = h5.with_suffix(".tmp.h5")
            write_volume(f"{tmp}:image", image, overwrite=True)
            write_volume(f"{tmp}:labels", labels, overwrite=True)
            os.replace(tmp, h5)
        if not coords.exists():
            from ..volume import open_volume

            labels = open_volume(f"{h5}:labels")[...]
            parts = compute_partitions(labels, lom_radius=radius, min_size=1000, margin=radius)
            build_coordinates([parts], [name], coords, margin=radius, seed=s, allow_missing_classes=True, progress=progress)
        options["images"][name] = f"{h5}:image"
        options["labels"][name] = f"{h5}:labels"
        options[key] = str(coords)
    return options


def base_options(run_dir: Path, model: ModelConfig, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """TrainConfig options of a study run: quiet, no periodic checkpoints, no TensorBoard."""
    return {
        **data,
        "run_dir": str(run_dir),
        "model": model.model_dump(mode="json"),
        "tensorboard": False,
        "progress": False,
        "checkpoint_every_secs": None,
        "summary_every_secs": 1e9,
        "eval_batch_size": STUDY_EVAL_BATCH,
        **kw,
    }


def _in_process(options: dict[str, Any]) -> None:
    from ..train.config import TrainConfig
    from ..train.loop import train

    options = dict(options)
    model = ModelConfig(**options.pop("model"))
    result = train(TrainConfig.build(options, {"model": model}))
    # train() turns SIGINT/SIGTERM into a clean stop of this run; the study must stop too,
    # not go on with the next run.
    if result.stopped_by == "SIGINT":
        raise KeyboardInterrupt
    if result.stopped_by == "SIGTERM":
        raise SystemExit(128 + signal.SIGTERM)


def launch_command(launcher: str | None, workers: int, threads: int) -> list[str]:
    """The command that starts ``workers`` ranks of ``neuroflood train`` (before its options).

    Without a launcher: ``python -m neuroflood train --nproc-per-node N``. A launcher is a
    template with ``{workers}`` (and optionally ``{threads}``), e.g. ``srun --ntasks {workers}
    --cpus-per-task {threads}``; ``neuroflood train`` is appended to it.
    """
    if not launcher:
        return [sys.executable, "-m", "neuroflood", "train", "--nproc-per-node", str(workers)]
    try:
        words = shlex.split(launcher.format(workers=workers, threads=threads))
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"--launcher {launcher!r} is not a valid template ({e}); use {{workers}} and {{threads}} only") from None
    return [*words, sys.executable, "-m", "neuroflood", "train"]


def execute(
    options: dict[str, Any], workers: int = 1, mode: str = "emulated", launcher: str | None = None, threads: int = 1, reuse: bool = True
) -> dict[str, Any]:
    """Run one training configuration with ``workers`` workers; return its records.

    ``emulated``: in this process (``emulate_workers = workers``); ``real``: ``workers`` ranks
    via :func:`launch_command`. Returns ``{"train": [...], "eval": [...], "wall_s": …}`` from
    the run's ``metrics.jsonl``. A run of the same configuration that finished earlier in
    the same ``run_dir`` is reused (``reuse``; see :func:`finished_run`): studies resume.
    """
    run_dir = Path(options["run_dir"])
    key = json.dumps([options, workers, mode], sort_keys=True, default=str)
    done = finished_run(run_dir, key) if reuse else finished_run(run_dir, "")
    if done is not None:
        return done
    t0 = time.perf_counter()
    if mode == "emulated":
        _in_process({**options, "emulate_workers": workers})
    elif mode == "real":
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = run_dir.parent / f"{run_dir.name}.config.json"
        cfg.write_text(json.dumps({**options, "threads": threads}))
        cmd = [*launch_command(launcher, workers, threads), "--config", str(cfg)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        returncode, stderr = _run_group(cmd, env)
        if returncode != 0:
            raise ConfigError(f"training run {run_dir} failed (exit {returncode}): {stderr.strip()[-1500:]}")
    else:
        raise ConfigError(f"unknown --mode {mode!r}; use emulated or real")
    records = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    result = {
        "train": [r for r in records if r["split"] == "train"],
        "eval": [r for r in records if r["split"] == "eval"],
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(run_dir / DONE_FILE, json.dumps({"key": key, "result": result}) + "\n")
    return result


# Written into a run's directory when it finished: a study run again on the same OUT (after
# an interruption, or with more seeds or points) reuses it instead of training it again.
DONE_FILE = "study-run.json"


def finished_run(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The records of a finished run of exactly this configuration (``key``) in ``run_dir``, or None.

    ``key=""`` matches nothing: the directory is cleared for a new run.
    A run directory without them (an interrupted run) that ``neuroflood train`` made is
    removed so that the run starts afresh; anything else there is refused.
    """
    from ..atomic import remove_tree
    from ..outputs import made_by

    try:
        saved = json.loads((run_dir / DONE_FILE).read_text())
    except (OSError, ValueError):
        saved = None
    if key and isinstance(saved, dict) and saved.get("key") == key:
        return saved["result"]
    if run_dir.exists():
        if made_by(run_dir) != "train" and any(run_dir.iterdir()):
            raise ConfigError(f"{run_dir} exists and is not a training run of this study; remove it or choose another --out")
        remove_tree(run_dir)  # an interrupted run, or one of other options: train it again
    return None


def _run_group(cmd: list[str], env: dict[str, str], grace_s: float = 10.0) -> tuple[int, str]:
    """Run ``cmd`` in a process group of its own; (exit status, stderr).

    If this process is interrupted or terminated meanwhile, the whole group (a launcher and
    the ranks it started) gets SIGTERM, then SIGKILL after ``grace_s`` seconds: no rank
    outlives the study.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate()
        return proc.returncode, stderr
    except BaseException:
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        raise


def _worker_init(threads: int) -> None:
    import torch

    # Ctrl-C reaches every process of the terminal's group: the study (the parent) decides,
    # and stops its workers itself (see _run_pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)  # once, at the start of each pool process


def _run_pool(args: list[tuple], parallel: int, threads: int, bar: Any) -> list[dict[str, Any]]:
    """``execute(*a)`` for each of ``args`` in ``parallel`` spawned processes, in order.

    On any exception, KeyboardInterrupt and SystemExit (SIGTERM) included, the workers are
    killed and reaped before it propagates: their runs are throw-away, and a pool left to
    finish its queue would keep the study alive for as long as a run takes.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(parallel, mp_context=ctx, initializer=_worker_init, initargs=(threads,))
    out: list[dict[str, Any]] = []
    try:
        for r in pool.map(_execute_star, args):
            out.append(r)
            bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        workers = [p for p in multiprocessing.active_children() if p not in before]
        for p in workers:
            p.kill()
        for p in workers:
            p.join(10)
        raise
    pool.shutdown(wait=True)
    return out


def _execute_star(args: tuple) -> dict[str, Any]:
    return execute(*args)


def execute_all(
    jobs: Sequence[tuple[dict[str, Any], int]], mode: str, launcher: str | None, threads: int, parallel: int = 1, progress: bool = True
) -> list[dict[str, Any]]:
    """Run ``(options, workers)`` pairs, ``parallel`` at a time (separate processes), in order."""
    from tqdm import tqdm

    args = [(opts, n, mode, launcher, threads) for opts, n in jobs]
    if mode == "emulated" and parallel <= 1 and args:
        # The first run in a process pays one-time costs (kernel selection, allocator
        # growth); a short throw-away run keeps them out of the timed runs.
        first = args[0][0]
        execute(
            {
                **first,
                "run_dir": str(Path(first["run_dir"]).parent / "_warmup"),
                "max_steps": 3,
                "eval_coords": None,
                "eval_every_steps": None,
                "fixed_sample_budget": False,
            },
            1,
            mode,
            launcher,
            threads,
            reuse=False,
        )
    bar = tqdm(total=len(args), desc="runs", unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out: list[dict[str, Any]] = []
    try:
        if parallel <= 1 or mode == "real":
            for a in args:
                out.append(execute(*a))
                bar.update(1)
        else:
            out = _run_pool(args, parallel, threads, bar)
    finally:
        bar.close()
    return out


def execute_seeded(
    configs: Sequence[tuple[dict[str, Any], int]],
    seeds: Sequence[int],
    mode: str,
    launcher: str | None,
    threads: int,
    parallel: int = 1,
    progress: bool = True,
) -> list[list[tuple[int, str, dict[str, Any]]]]:
    """Run every ``(options, workers)`` once per training seed; ``[(seed, run_dir, records)]`` per configuration.

    The run of seed ``s`` trains with ``seed = s`` (initial weights, example order) in
    ``<run_dir>-seed<s>``; everything else, the data and held-out examples included, is the
    configuration's. Configurations that differ only in ``run_dir`` (e.g. a rule's learning
    rate that is also on the LR grid) are trained once and share their runs.
    """
    unique: dict[str, int] = {}
    jobs: list[tuple[dict[str, Any], int]] = []
    slots: list[list[int]] = []
    for options, workers in configs:
        key = json.dumps([{k: v for k, v in options.items() if k != "run_dir"}, workers], sort_keys=True, default=str)
        if key not in unique:
            unique[key] = len(jobs)
            for s in seeds:
                jobs.append(({**options, "run_dir": f"{options['run_dir']}-seed{s}", "seed": s}, workers))
        slots.append(list(range(unique[key], unique[key] + len(seeds))))
    results = execute_all(jobs, mode, launcher, threads, parallel, progress)
    return [[(jobs[i][0]["seed"], jobs[i][0]["run_dir"], results[i]) for i in idx] for idx in slots]


def heldout_examples(data: dict[str, Any], eval_examples: int) -> int:
    """How many held-out examples an evaluation scores: the first ``eval_examples`` of the file, or all."""
    from ..prepare.coordfile import open_coordinates

    return min(eval_examples, len(open_coordinates(data["eval_coords"])))


def machine() -> dict[str, Any]:
    """Where and when the numbers were measured (load average included: shared machines)."""
    import platform

    import torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temporary name, then rename)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
    return path


def first_time(records: Sequence[dict[str, Any]], key: str, threshold: float) -> float | None:
    """Training time (``time_s``) of the first record with ``key >= threshold``, else None."""
    for r in records:
        if r.get(key) is not None and r[key] >= threshold:
            return float(r["time_s"])
    return None
