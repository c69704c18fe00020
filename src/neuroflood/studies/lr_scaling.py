"""Learning-rate scaling study: which LR is best for N synchronous workers?

As the LR figure of Dong et al. 2019: for each worker count N and each learning rate of a
grid, train at a fixed sample budget (``fovs`` FOVs in total, so ``fovs // (N·B)`` steps of a
global batch N·B; ``fixed_sample_budget``) and measure held-out voxel accuracy and F1 at the
end. Each metric is normalised by the best run at the same N; the figure overlays the
linear (base·N) and square-root (base·√N) rules. Every configuration runs without warm-up
and with a linear warm-up over ``warmup_fraction`` of its steps (the paper's warm-up lengths
are unknown).

Workers are emulated by default (gradient accumulation in one process: the optimisation of
N workers, exactly); ``mode="real"`` runs N ranks instead, e.g. on a cluster with a launcher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .common import STUDY_MODEL, base_options, execute_all, machine, prepare_synthetic, write_json
from .figures import plot_lr_scaling


def run_lr_scaling(
    out: str | Path,
    workers: Sequence[int] = (1, 2, 4, 8),
    lr_factors: Sequence[float] = (0.5, 1, 2, 4, 8),
    base_lr: float = 1e-3,
    warmup_fraction: float = 0.1,
    fovs: int = 2400,
    batch_size: int = 4,
    optimizer: str = "adam",
    model: str = STUDY_MODEL,
    eval_examples: int = 64,
    mode: str = "emulated",
    launcher: str | None = None,
    threads: int = 1,
    jobs: int = 2,
    data_size: int = 80,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the grid; write ``OUT/lr_scaling.json`` and ``OUT/lr_scaling_{f1,accuracy}.png``.

    The LR grid is ``base_lr × lr_factors`` at every N (absolute learning rates, no scaling
    rule applied), so that the best LR per N can be compared with the rules afterwards.
    """
    if workers and fovs < max(workers) * batch_size:
        raise ConfigError(
            f"--fovs {fovs} is less than one step of {max(workers)} workers × {batch_size} FOVs; raise --fovs to at least "
            f"{max(workers) * batch_size}"
        )
    out = Path(out)
    mcfg = ModelConfig.parse_spec(model)
    data = prepare_synthetic(out / "data", mcfg, size=data_size, seed=seed)
    grid, jobs_list = [], []
    for n in workers:
        steps = fovs // (n * batch_size)
        for factor in lr_factors:
            for warm in (False, True):
                w = max(1, round(warmup_fraction * steps)) if warm else 0
                lr = base_lr * factor
                name = f"n{n}-lr{lr:.3g}-warmup{w}"
                options = base_options(
                    out / "runs" / name,
                    mcfg,
                    data,
                    batch_size=batch_size,
                    optimizer=optimizer,
                    learning_rate=lr,
                    lr_scaling="none",
                    warmup_steps=w,
                    max_steps=fovs // batch_size,
                    fixed_sample_budget=True,
                    eval_examples=eval_examples,
                    seed=seed,
                )
                grid.append(
                    {
                        "workers": n,
                        "learning_rate": lr,
                        "lr_factor": factor,
                        "warmup": warm,
                        "warmup_steps": w,
                        "steps": steps,
                        "global_batch": n * batch_size,
                        "fovs": steps * n * batch_size,
                    }
                )
                jobs_list.append((options, n))
    results = execute_all(jobs_list, mode, launcher, threads, jobs, progress)
    rows = []
    for g, res in zip(grid, results):
        final = res["eval"][-1] if res["eval"] else {}
        rows.append(
            {
                **g,
                "accuracy": final.get("accuracy"),
                "f1": final.get("f1"),
                "loss": final.get("loss"),
                "precision": final.get("precision"),
                "recall": final.get("recall"),
                "train_time_s": final.get("time_s"),
            }
        )
    normalise(rows, ("accuracy", "f1"))
    report = {
        "study": "lr-scaling",
        "machine": machine(),
        "config": {
            "workers": list(workers),
            "lr_factors": list(lr_factors),
            "base_lr": base_lr,
            "warmup_fraction": warmup_fraction,
            "fovs": fovs,
            "batch_size_per_worker": batch_size,
            "optimizer": optimizer,
            "model": model,
            "mode": mode,
            "eval_examples": eval_examples,
            "data": f"synthetic {data_size}^3, held-out volume seed {seed + 1}",
        },
        "best": best_per_workers(rows, base_lr),
        "runs": rows,
    }
    write_json(out / "lr_scaling.json", report)
    for metric in ("f1", "accuracy"):
        plot_lr_scaling(rows, out / f"lr_scaling_{metric}.png", base_lr, metric)
    return rows


def normalise(rows: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Add ``normalized_<metric>``: the metric over the best run with the same N and warm-up."""
    for m in metrics:
        for r in rows:
            peers = [p[m] for p in rows if p["workers"] == r["workers"] and p["warmup"] == r["warmup"] and p[m] is not None]
            top = max(peers, default=0.0)
            r[f"normalized_{m}"] = (r[m] / top) if (r[m] is not None and top > 0) else None


def best_per_workers(rows: list[dict[str, Any]], base_lr: float) -> list[dict[str, Any]]:
    """Best LR at each (N, warm-up) by F1 (ties: accuracy), beside the linear and sqrt rules."""
    out = []
    for n in sorted({r["workers"] for r in rows}):
        for warm in (False, True):
            sub = [r for r in rows if r["workers"] == n and r["warmup"] == warm and r["f1"] is not None]
            if not sub:
                continue
            top = max(sub, key=lambda r: (r["f1"], r["accuracy"] or 0))
            out.append(
                {
                    "workers": n,
                    "warmup": warm,
                    "best_learning_rate": top["learning_rate"],
                    "f1": top["f1"],
                    "accuracy": top["accuracy"],
                    "linear_rule": base_lr * n,
                    "sqrt_rule": base_lr * math.sqrt(n),
                }
            )
    return out
