"""Batch-size study: held-out F1 against wall time and against FOVs processed.

As the batch-size figure of Dong et al. 2019 (v4): several global batch sizes, each made of
``batch_size`` FOVs per worker on ``global_batch / batch_size`` synchronous workers, trained
on the same number of FOVs and evaluated on held-out coordinates at regular intervals. The
paper found large batches reach a given F1 sooner in wall time and small batches with fewer
FOVs. The learning rate follows ``lr_scaling`` (default sqrt) from ``base_lr`` at one worker,
with a linear warm-up over ``warmup_fraction`` of each run's steps.

Wall time: with real workers (``mode="real"``) it is measured. With emulated workers one
process does the work of N, so the measured time is N times what N workers would take; the
figure then shows the *modelled* time of N workers at ideal scaling, measured time ÷ N
(both are in the JSON).

Every global batch trains ``seeds`` times (weights and example order change with the seed);
the figure shows the mean curve with its 95 % confidence interval over seeds as a band, and
the JSON each run and the mean and CI of its final-window quality figures
(:mod:`~neuroflood.studies.statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import (
    StudyRuns,
    base_options,
    execute_seeded,
    machine,
    write_json,
)
from .figures import plot_batch_size
from .statistics import mean_curve, run_record, seed_list, summarise


def run_batch_size(
    out: str | Path,
    global_batches: Sequence[int] = (4, 8, 16, 32),
    batch_size: int = 4,
    fovs: int = 4800,
    evaluations: int = 8,
    base_lr: float = 1e-3,
    lr_scaling: str = "sqrt",
    warmup_fraction: float = 0.1,
    optimizer: str = "adam",
    runs: StudyRuns = StudyRuns(),
) -> list[dict[str, Any]]:
    """Train each global batch ``seeds`` times; write ``OUT/batch_size.json`` and ``OUT/batch_size.png``."""
    model, eval_examples, seeds, mode, launcher, threads, jobs, data_size, seed, progress = runs.values()
    bad = [g for g in global_batches if g % batch_size or g < batch_size]
    if bad:
        raise ConfigError(f"global batch(es) {bad} are not multiples of the per-worker batch {batch_size}; choose multiples")
    if global_batches and fovs < max(global_batches):
        raise ConfigError(f"--fovs {fovs} is less than one step of the global batch {max(global_batches)}; raise --fovs")
    runs.check(evaluations)
    out = Path(out)
    mcfg, data = runs.prepare(out)
    jobs_list, meta = [], []
    for g in global_batches:
        n = g // batch_size
        steps = fovs // g
        options = base_options(
            out / "runs" / f"batch-{g}",
            mcfg,
            data,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=base_lr,
            lr_scaling=lr_scaling,
            warmup_steps=max(1, round(warmup_fraction * steps)) if warmup_fraction > 0 else 0,
            max_steps=steps,
            eval_every_steps=max(1, steps // evaluations),
            eval_examples=eval_examples,
        )
        jobs_list.append((options, n))
        meta.append({"global_batch": g, "workers": n, "steps": steps, "warmup_steps": options["warmup_steps"]})
    results = execute_seeded(jobs_list, seed_list(seed, seeds), mode, launcher, threads, jobs, progress)
    curves = []
    for m, seeded in zip(meta, results):
        n = m["workers"]
        records = [run_record(s, res, run_dir, m["global_batch"]) for s, run_dir, res in seeded]
        points = mean_curve(records)
        for p in points:
            p["modelled_time_s"] = p["time_s"] / n if mode == "emulated" and p["time_s"] is not None else p["time_s"]
        curves.append({**m, **summarise(records), "points": points, "runs": records})
    report = {
        "study": "batch-size",
        "machine": machine(),
        "config": {
            "global_batches": list(global_batches),
            "batch_size_per_worker": batch_size,
            "fovs": fovs,
            "base_lr": base_lr,
            "lr_scaling": lr_scaling,
            "warmup_fraction": warmup_fraction,
            "optimizer": optimizer,
            **runs.record(data),
        },
        "curves": curves,
    }
    write_json(out / "batch_size.json", report)
    time_key = "modelled_time_s" if mode == "emulated" else "time_s"
    time_label = "modelled wall time on N workers (s): measured ÷ N" if mode == "emulated" else "wall time (s)"
    plot_batch_size(curves, out / "batch_size.png", time_key=time_key, time_label=time_label)
    return curves
