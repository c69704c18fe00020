"""Scaling study: training throughput (FOVs/s) against the number of real workers.

As the scaling figure of Dong et al. 2019: for each worker count N the same network trains
with N ranks (``neuroflood train --nproc-per-node N`` or a launcher such as ``srun``), each
with ``batch_size`` FOVs per step and ``threads`` CPU threads; the global FOVs/s is read
from rank 0's summaries (one per step) after ``skip_steps`` warm-up steps, as total FOVs
over total wall time of the measured steps. Emulated workers do not count: they share one
process's compute. Efficiency = FOVs/s ÷ (N × FOVs/s per worker at the smallest N).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ConfigError
from .common import FIB25_MODEL, base_options, execute, machine, prepare_synthetic, write_json
from .figures import PAPER_SCALING, efficiency, plot_scaling


def run_scaling(
    out: str | Path,
    workers: Sequence[int] = (1, 2),
    model: str = FIB25_MODEL,
    batch_size: int = 4,
    steps: int = 5,
    skip_steps: int = 1,
    threads: int = 1,
    launcher: str | None = None,
    data_size: int = 96,
    device: str = "cpu",
    precision: str = "float32",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure FOVs/s at each worker count; write ``OUT/scaling.json`` and ``OUT/scaling.png``.

    Returns the rows of ``scaling.json``: ``workers``, ``fovs_per_s``, ``efficiency``,
    ``seconds_per_step``, ``load_average`` before and after, and ``config``.
    """
    if steps <= skip_steps:
        raise ConfigError(f"--steps {steps} must exceed --skip-steps {skip_steps} (the warm-up steps are not measured)")
    if not workers or min(workers) < 1:
        raise ConfigError("--workers must be positive worker counts, e.g. 1,2,4")
    out = Path(out)
    mcfg = ModelConfig.parse_spec(model)
    data = prepare_synthetic(out / "data", mcfg, size=data_size, seed=seed)
    data.pop("eval_coords")  # throughput only
    rows = []
    for n in sorted(set(workers)):
        options = base_options(
            out / "runs" / f"workers-{n}",
            mcfg,
            data,
            batch_size=batch_size,
            max_steps=steps,
            summary_every_steps=1,
            seed=seed,
            device=device,
            precision=precision,
            optimizer="adam",
            learning_rate=1e-4,
        )
        before = machine()["load_average"]
        rec = execute(options, n, "real", launcher, threads)["train"]
        measured = [r for r in rec if r["step"] > skip_steps]
        fovs = sum(r["fovs"] for r in measured)
        seconds = sum(r["fovs"] / r["fovs_per_s"] for r in measured)
        rows.append(
            {
                "workers": n,
                "fovs_per_s": fovs / seconds,
                "seconds_per_step": seconds / max(1, sum(r["steps"] for r in measured)),
                "measured_steps": sum(r["steps"] for r in measured),
                "load_average_before": before,
                "load_average_after": machine()["load_average"],
                "config": {
                    "model": model,
                    "batch_size_per_worker": batch_size,
                    "global_batch": n * batch_size,
                    "threads_per_worker": threads,
                    "steps": steps,
                    "skip_steps": skip_steps,
                    "launcher": launcher or "neuroflood train --nproc-per-node N",
                    "device": device,
                    "precision": precision,
                    "data": f"synthetic {data_size}^3",
                },
            }
        )
    rows = efficiency(rows)
    info = machine()
    for r in rows:
        r["machine"] = info
    write_json(out / "scaling.json", rows)
    title = (
        f"Training throughput vs workers (labels: efficiency)\n"
        f"depth {mcfg.depth}, {mcfg.features} features, FOV {mcfg.fov_size[0]}³, batch {batch_size}/worker, {threads} thread(s)/worker"
    )
    plot_scaling(rows, out / "scaling.png", title=title, reference=PAPER_SCALING)
    return rows
