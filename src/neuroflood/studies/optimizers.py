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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .common import STUDY_MODEL, base_options, execute_all, first_time, machine, prepare_synthetic, write_json
from .figures import plot_optimizers

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
    """Train every optimizer with and without warm-up; write ``OUT/optimizers.json`` and ``.png``."""
    unknown = [o for o in optimizers if o not in OPTIMIZERS]
    if unknown:
        raise ConfigError(f"unknown optimizer(s) {unknown}; choose from {', '.join(OPTIMIZERS)}")
    lrs = {**DEFAULT_LRS, **(learning_rates or {})}
    if evaluations < 1:
        raise ConfigError(f"--evaluations {evaluations} must be >= 1")
    steps = fovs // (workers * batch_size)
    if steps < 1:
        raise ConfigError(f"--fovs {fovs} is less than one step of {workers} × {batch_size} FOVs; raise --fovs")
    out = Path(out)
    mcfg = ModelConfig.parse_spec(model)
    data = prepare_synthetic(out / "data", mcfg, size=data_size, seed=seed)
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
                seed=seed,
            )
            jobs_list.append((options, workers))
            meta.append({"optimizer": opt, "learning_rate": lrs[opt], "warmup": warm, "warmup_steps": w, "steps": steps})
    results = execute_all(jobs_list, mode, launcher, threads, jobs, progress)
    rows = []
    for m, res in zip(meta, results):
        ev = res["eval"]
        final = ev[-1] if ev else {}
        rows.append(
            {
                **m,
                "f1": final.get("f1"),
                "accuracy": final.get("accuracy"),
                "loss": final.get("loss"),
                "best_accuracy": max((r["accuracy"] for r in ev if r["accuracy"] is not None), default=None),
                f"time_to_{target_accuracy:g}_accuracy_s": first_time(ev, "accuracy", target_accuracy),
                "train_time_s": final.get("time_s"),
                "curve": [{"step": r["step"], "time_s": r["time_s"], "accuracy": r["accuracy"], "f1": r["f1"]} for r in ev],
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
            "model": model,
            "mode": mode,
            "eval_examples": eval_examples,
            "data": f"synthetic {data_size}^3, held-out volume seed {seed + 1}",
        },
        "runs": rows,
    }
    write_json(out / "optimizers.json", report)
    plot_optimizers(rows, out / "optimizers.png", target_accuracy)
    return rows
