"""Optimizer study: time to accuracy of SGD, momentum, Adam, Adagrad and RMSProp, with and without warm-up, at N workers.

Dong et al. 2019 (v1–v3) compared optimizers, learning rates and warm-up periods and chose
Adam for the headline run (95 % voxel accuracy in ≈ 4.5 h on 1024 KNL nodes); its comparison
numbers are not in our sources. Here every optimizer × warm-up (no, yes) × worker count N
is a point. Every point trains on the same number of FOVs (``fovs``, the fixed sample
budget: ``fovs // (N · batch_size)`` steps of N emulated or real workers of ``batch_size``
FOVs, learning rate scaled by ``lr_scaling``), without warm-up and with a linear warm-up over
``warmup_fraction`` of its steps, and is evaluated on the same held-out coordinates at
regular intervals, ``seeds`` times (weights and example order change with the seed).

Each optimizer has its own base learning rate (:data:`DEFAULT_LRS`): one LR for all would
compare learning rates more than optimizers. They are common starting points, not tuned.

**Time to accuracy.** A run's ``fovs_to_target`` is the number of FOVs it had trained (its
curve's ``fovs``) at its first held-out evaluation whose voxel accuracy is at least
``target_accuracy`` (0.95, the paper's headline), or None. FOVs, not seconds, because FOVs
do not depend on the machine or its load; the measured training time to the target
(``time_to_<target>_accuracy_s``) is kept beside it. If no point's mean curve reaches the
target, the study also compares the points at the **comparable level**: the highest held-out
accuracy every point's mean curve reaches, ``min over points of max over evaluations of the
mean accuracy``; each run's ``fovs_to_comparable`` is read as above at that level. Per point,
each is the mean and 95 % CI (:func:`~.statistics.mean_ci95`) over the runs that reached the
level, with ``reached`` (how many of the seeds did).

**Modelled wall time.** Emulated workers give the optimisation of N workers, not their
speed. With a projection (``projection.json`` of ``neuroflood study project``, a model of N
ranks from the per-rank step times of a real run), a run's time at N workers is modelled as::

    modelled_wall_s = FOVs to the level / fovs_per_s(N)
                    = FOVs to the level / (N × per-worker FOVs/s × efficiency(N))

with ``fovs_per_s(N)`` the projection's throughput at N ranks (per-worker FOVs/s of one rank
times N times the projected efficiency). The level is the target if any point's mean curve
reaches it, else the comparable level. The projection should be of a run of the same network
and per-worker batch; the JSON records its parameter count and batch beside the study's.

Also reported per point, as in the other learning studies: the mean and CI over seeds of the
runs' final-window held-out accuracy, F1 and loss and of their best accuracy, the mean curve
and every run (:mod:`~neuroflood.studies.statistics`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .common import (
    StudyRuns,
    base_options,
    execute_seeded,
    first_time,
    machine,
    write_json,
)
from .figures import plot_optimizers
from .statistics import mean_ci95, mean_curve, run_record, seed_list, summarise

OPTIMIZERS = ("sgd", "momentum", "adam", "adagrad", "rmsprop")
DEFAULT_LRS = {"sgd": 0.05, "momentum": 0.005, "adam": 1e-3, "adagrad": 0.05, "rmsprop": 1e-3}
# What every entry of projection.json's points must hold (neuroflood study project writes them).
PROJECTION_KEYS = ("workers", "efficiency", "fovs_per_s", "straggler_s", "allreduce_s")


def fovs_to(curve: Sequence[dict[str, Any]], level: float, key: str = "accuracy") -> int | None:
    """FOVs trained at the first evaluation of ``curve`` whose ``key`` is at least ``level``, else None."""
    for p in curve:
        if p.get(key) is not None and p[key] >= level:
            return int(p["fovs"])
    return None


def comparable_level(curves: Sequence[Sequence[dict[str, Any]]], key: str = "accuracy") -> float | None:
    """The highest ``key`` every curve reaches: min over curves of each curve's max; None if one has none."""
    peaks = []
    for c in curves:
        values = [p[key] for p in c if p.get(key) is not None]
        if not values:
            return None
        peaks.append(max(values))
    return min(peaks) if peaks else None


def load_projection(path: str | Path) -> dict[str, Any]:
    """The points of a ``projection.json`` (or a directory holding one), by worker count.

    Returns ``{"path", "points": {N: point}, "interconnect", "algorithm", "parameters",
    "fovs_per_step_per_rank"}`` (None where the file has no such entry). Raises
    :class:`DataError` (one line) for a missing or unreadable file or one that is not shaped
    like a projection: a list of objects with positive ``workers``, ``fovs_per_s`` and
    ``efficiency`` and finite ``straggler_s`` and ``allreduce_s`` (bare, or under ``"points"``).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "projection.json"
    fix = "give the projection.json that `neuroflood study project` wrote"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"--projection {p} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read --projection {p} ({str(e).splitlines()[0]}); {fix}") from None
    meta = data if isinstance(data, dict) else {}
    rows = data.get("points") if isinstance(data, dict) else data
    points: dict[int, dict[str, Any]] = {}
    for row in rows if isinstance(rows, list) else [None]:
        if not _is_projection_point(row):
            raise DataError(f"--projection {p} is not a projection.json (points with {', '.join(PROJECTION_KEYS)}); {fix}")
        points[int(row["workers"])] = row
    if not points:
        raise DataError(f"--projection {p} holds no points; {fix}")
    net = meta.get("interconnect")
    return {
        "path": str(p),
        "points": points,
        "interconnect": net.get("name") if isinstance(net, dict) else None,
        "algorithm": meta.get("algorithm"),
        "parameters": meta.get("parameters"),
        "fovs_per_step_per_rank": meta.get("fovs_per_step_per_rank"),
    }


def _is_projection_point(row: Any) -> bool:
    """A dict with every key of :data:`PROJECTION_KEYS` a finite number; workers, FOVs/s and efficiency positive."""
    if not isinstance(row, dict):
        return False
    values = [row.get(k) for k in PROJECTION_KEYS]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return False
    return row["workers"] == int(row["workers"]) >= 1 and row["fovs_per_s"] > 0 and row["efficiency"] > 0


def _level_summary(records: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean and CI of the runs' ``key`` over those that reached it, and ``reached`` (how many)."""
    values = [r[key] for r in records]
    return {**mean_ci95(values), "reached": sum(v is not None for v in values)}


def compare_levels(rows: Sequence[dict[str, Any]], target: float, projection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add the time-to-accuracy figures to the points ``rows`` (each with ``workers``, ``curve``, ``runs``).

    Per run and point: ``fovs_to_target``; if no point's mean curve reaches ``target``, also
    ``fovs_to_comparable`` at the comparable level; with a ``projection``
    (:func:`load_projection`), ``modelled_wall_s`` at the level used. Returns the levels:
    ``{"target_accuracy", "target_reached_by_any", "comparable_accuracy", "compared_at"}``.
    """
    reached_any = any(fovs_to(r["curve"], target) is not None for r in rows)
    comparable = None if reached_any else comparable_level([r["curve"] for r in rows])
    level_key = "fovs_to_target" if reached_any or comparable is None else "fovs_to_comparable"
    for row in rows:
        fps = None
        if projection is not None:
            proj = projection["points"][row["workers"]]
            fps = float(proj["fovs_per_s"])
            row["projection"] = {"fovs_per_s": fps, "efficiency": proj["efficiency"]}
        for run in row["runs"]:
            run["fovs_to_target"] = fovs_to(run["curve"], target)
            run["fovs_to_comparable"] = None if comparable is None else fovs_to(run["curve"], comparable)
            run["modelled_wall_s"] = None if fps is None or run[level_key] is None else run[level_key] / fps
        row["fovs_to_target"] = _level_summary(row["runs"], "fovs_to_target")
        row["fovs_to_comparable"] = None if comparable is None else _level_summary(row["runs"], "fovs_to_comparable")
        row["modelled_wall_s"] = None if fps is None else _level_summary(row["runs"], "modelled_wall_s")
    return {
        "target_accuracy": target,
        "target_reached_by_any": reached_any,
        "comparable_accuracy": comparable,
        "compared_at": comparable if level_key == "fovs_to_comparable" else target,
    }


def summary_line(config: Mapping[str, Any]) -> str:
    """One line: which accuracy level the FOVs (and modelled times) are counted to, and why."""
    target = 100 * config["target_accuracy"]
    if config["target_reached_by_any"]:
        return f"optimizers: FOVs to the target, {target:g}% held-out voxel accuracy (reached by at least one point's mean curve)"
    comparable = config["comparable_accuracy"]
    if comparable is None:
        return f"optimizers: no point's mean curve reaches {target:g}% held-out voxel accuracy, and no comparable level exists"
    return (
        f"optimizers: no point's mean curve reaches the target {target:g}%; FOVs to the comparable level, "
        f"{100 * comparable:.1f}% held-out voxel accuracy (the highest every point's mean curve reaches)"
    )


def run_optimizers(
    out: str | Path,
    optimizers: Sequence[str] = OPTIMIZERS,
    learning_rates: Mapping[str, float] | None = None,
    workers: Sequence[int] | int = (1,),
    batch_size: int = 4,
    fovs: int = 3200,
    evaluations: int = 8,
    warmup_fraction: float = 0.1,
    lr_scaling: str = "sqrt",
    target_accuracy: float = 0.95,
    projection: str | Path | None = None,
    runs: StudyRuns = StudyRuns(),
) -> dict[str, Any]:
    """Train every optimizer × warm-up × N; write ``OUT/optimizers.json`` and ``.png``; return the report."""
    model, eval_examples, seeds, mode, launcher, threads, jobs, data_size, seed, progress = runs.values()
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ConfigError(f"unknown optimizer(s) {unknown}; choose from {', '.join(OPTIMIZERS)}")
    lrs = {**DEFAULT_LRS, **(learning_rates or {})}
    runs.check(evaluations)
    workers = sorted({int(workers)} if isinstance(workers, int) else {int(n) for n in workers})
    for n in workers:
        if fovs // (n * batch_size) < 1:
            raise ConfigError(f"--fovs {fovs} is less than one step of {n} × {batch_size} FOVs at --workers {n}; raise --fovs or drop {n}")
    proj = load_projection(projection) if projection is not None else None
    missing = [n for n in workers if proj is not None and n not in proj["points"]]
    if proj is not None and missing:
        raise ConfigError(
            f"--projection {proj['path']} has no point for {missing[0]} workers (has {sorted(proj['points'])}); "
            f"run `neuroflood study project` with {missing[0]} in --workers"
        )
    out = Path(out)
    mcfg, data = runs.prepare(out)
    jobs_list, meta = [], []
    for n in workers:
        steps = fovs // (n * batch_size)
        for opt in optimizers:
            for warm in (False, True):
                w = max(1, round(warmup_fraction * steps)) if warm else 0
                options = base_options(
                    out / "runs" / f"{opt}-n{n}-warmup{w}",
                    mcfg,
                    data,
                    batch_size=batch_size,
                    optimizer=opt,
                    learning_rate=lrs[opt],
                    lr_scaling=lr_scaling,
                    warmup_steps=w,
                    max_steps=steps,
                    eval_every_steps=max(1, steps // evaluations),
                    eval_examples=eval_examples,
                )
                jobs_list.append((options, n))
                meta.append(
                    {
                        "optimizer": opt,
                        "workers": n,
                        "learning_rate": lrs[opt],
                        "warmup": warm,
                        "warmup_steps": w,
                        "steps": steps,
                        "global_batch": n * batch_size,
                    }
                )
    results = execute_seeded(jobs_list, seed_list(seed, seeds), mode, launcher, threads, jobs, progress)
    key = f"time_to_{target_accuracy:g}_accuracy_s"
    rows = []
    for m, seeded in zip(meta, results):
        records = [run_record(s, res, run_dir, m["global_batch"]) for s, run_dir, res in seeded]
        for r in records:
            r["best_accuracy"] = max((p["accuracy"] for p in r["curve"] if p["accuracy"] is not None), default=None)
            r[key] = first_time(r["curve"], "accuracy", target_accuracy)  # measured training time, this machine
        rows.append(
            {
                **m,
                **summarise(records),
                "best_accuracy": mean_ci95(r["best_accuracy"] for r in records),
                key: mean_ci95(r[key] for r in records),
                "reached": sum(r[key] is not None for r in records),
                "curve": mean_curve(records),
                "runs": records,
            }
        )
    levels = compare_levels(rows, target_accuracy, proj)
    report = {
        "study": "optimizers",
        "machine": machine(),
        "config": {
            "optimizers": list(optimizers),
            "learning_rates": {o: lrs[o] for o in optimizers},
            "workers": workers,
            "batch_size_per_worker": batch_size,
            "fovs": fovs,
            "evaluations": evaluations,
            "warmup_fraction": warmup_fraction,
            "lr_scaling": lr_scaling,
            **levels,
            "projection": _projection_record(proj, mcfg),
            **runs.record(data),
        },
        "points": rows,
    }
    write_json(out / "optimizers.json", report)
    plot_optimizers(rows, out / "optimizers.png", target_accuracy, levels["comparable_accuracy"])
    return report


def _projection_record(proj: dict[str, Any] | None, mcfg: Any) -> dict[str, Any] | None:
    """Where the modelled times come from, and whether the projection's network is the study's."""
    if proj is None:
        return None
    from ..model import build_model

    parameters = build_model(mcfg, seed=0).num_parameters()
    return {
        **{k: v for k, v in proj.items() if k != "points"},
        "study_parameters": parameters,
        "same_network": proj["parameters"] == parameters,
    }
