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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .common import STUDY_MODEL, base_options, execute_all, machine, prepare_synthetic, write_json
from .figures import plot_batch_size


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
    model: str = STUDY_MODEL,
    eval_examples: int = 64,
    mode: str = "emulated",
    launcher: str | None = None,
    threads: int = 1,
    jobs: int = 1,
    data_size: int = 80,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train each global batch; write ``OUT/batch_size.json`` and ``OUT/batch_size.png``."""
    bad = [g for g in global_batches if g % batch_size or g < batch_size]
    if bad:
        raise ConfigError(f"global batch(es) {bad} are not multiples of the per-worker batch {batch_size}; choose multiples")
    if global_batches and fovs < max(global_batches):
        raise ConfigError(f"--fovs {fovs} is less than one step of the global batch {max(global_batches)}; raise --fovs")
    if evaluations < 1:
        raise ConfigError(f"--evaluations {evaluations} must be >= 1")
    out = Path(out)
    mcfg = ModelConfig.parse_spec(model)
    data = prepare_synthetic(out / "data", mcfg, size=data_size, seed=seed)
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
            seed=seed,
        )
        jobs_list.append((options, n))
        meta.append({"global_batch": g, "workers": n, "steps": steps, "warmup_steps": options["warmup_steps"]})
    results = execute_all(jobs_list, mode, launcher, threads, jobs, progress)
    curves = []
    for m, res in zip(meta, results):
        n = m["workers"]
        points = [
            {
                "step": r["step"],
                "fovs": r["step"] * m["global_batch"],
                "time_s": r["time_s"],
                "modelled_time_s": r["time_s"] / n if mode == "emulated" else r["time_s"],
                "f1": r["f1"],
                "accuracy": r["accuracy"],
                "loss": r["loss"],
            }
            for r in res["eval"]
        ]
        curves.append({**m, "points": points, "final_f1": points[-1]["f1"] if points else None})
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
            "model": model,
            "mode": mode,
            "eval_examples": eval_examples,
            "data": f"synthetic {data_size}^3, held-out volume seed {seed + 1}",
        },
        "curves": curves,
    }
    write_json(out / "batch_size.json", report)
    time_key = "modelled_time_s" if mode == "emulated" else "time_s"
    time_label = "modelled wall time on N workers (s): measured ÷ N" if mode == "emulated" else "wall time (s)"
    plot_batch_size(curves, out / "batch_size.png", time_key=time_key, time_label=time_label)
    return curves
