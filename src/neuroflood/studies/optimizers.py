"""Optimizer study: SGD, momentum, Adam, Adagrad and RMSProp, with and without warm-up.

Dong et al. 2019 (v1–v3) compared optimizers, learning rates and warm-up periods and chose
Adam for the headline run; its numbers are not in our sources. Here every optimizer trains
on the same number of FOVs (``workers`` emulated or real workers of ``batch_size`` FOVs,
learning rate scaled by ``lr_scaling``), once without warm-up and once with a linear warm-up
over ``warmup_fraction`` of the steps, and is evaluated on held-out coordinates at regular
intervals. Reported: final held-out F1 and the training time until held-out voxel accuracy
first reaches ``target_accuracy`` (0.95, the paper's headline threshold), or None.

Each optimizer has its own base learning rate (:data:`DEFAULT_LRS`): one LR for all would
compare learning rates more than optimizers. They are common starting points, not tuned.

Every configuration trains ``seeds`` times (weights and example order change with the seed);
reported per configuration: the mean and 95 % confidence interval over seeds of the runs'
final-window held-out accuracy, F1 and loss, of their best accuracy, and of the time to the
target among the runs that reached it (``reached`` says how many), with every run and its
curve (:mod:`~neuroflood.studies.statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
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


def run_optimizers(
    out: str | Path,
    optimizers: Sequence[str] = OPTIMIZERS,
    learning_rates: Mapping[str, float] | None = None,
    workers: int = 1,
    batch_size: int = 4,
    fovs: int = 3200,
    evaluations: int = 8,
    warmup_fraction: float = 0.1,
    lr_scaling: str = "sqrt",
    target_accuracy: float = 0.95,
    runs: StudyRuns = StudyRuns(),
) -> list[dict[str, Any]]:
    """Train every optimizer with and without warm-up; write ``OUT/optimizers.json`` and ``.png``."""
    model, eval_examples, seeds, mode, launcher, threads, jobs, data_size, seed, progress = runs.values()
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ConfigError(f"unknown optimizer(s) {unknown}; choose from {', '.join(OPTIMIZERS)}")
    lrs = {**DEFAULT_LRS, **(learning_rates or {})}
    runs.check(evaluations)
    steps = fovs // (workers * batch_size)
    if steps < 1:
        raise ConfigError(f"--fovs {fovs} is less than one step of {workers} × {batch_size} FOVs; raise --fovs")
    out = Path(out)
    mcfg, data = runs.prepare(out)
    jobs_list, meta = [], []
    for opt in optimizers:
        for warm in (False, True):
            w = max(1, round(warmup_fraction * steps)) if warm else 0
            options = base_options(
                out / "runs" / f"{opt}-warmup{w}",
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
            jobs_list.append((options, workers))
            meta.append({"optimizer": opt, "learning_rate": lrs[opt], "warmup": warm, "warmup_steps": w, "steps": steps})
    results = execute_seeded(jobs_list, seed_list(seed, seeds), mode, launcher, threads, jobs, progress)
    key = f"time_to_{target_accuracy:g}_accuracy_s"
    rows = []
    for m, seeded in zip(meta, results):
        records = [run_record(s, res, run_dir, workers * batch_size) for s, run_dir, res in seeded]
        for r in records:
            r["best_accuracy"] = max((p["accuracy"] for p in r["curve"] if p["accuracy"] is not None), default=None)
            r[key] = first_time(r["curve"], "accuracy", target_accuracy)
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
    report = {
        "study": "optimizers",
        "machine": machine(),
        "config": {
            "optimizers": list(optimizers),
            "learning_rates": {o: lrs[o] for o in optimizers},
            "workers": workers,
            "batch_size_per_worker": batch_size,
            "fovs": fovs,
            "warmup_fraction": warmup_fraction,
            "lr_scaling": lr_scaling,
            "target_accuracy": target_accuracy,
            **runs.record(data),
        },
        "points": rows,
    }
    write_json(out / "optimizers.json", report)
    plot_optimizers(rows, out / "optimizers.png", target_accuracy)
    return rows
