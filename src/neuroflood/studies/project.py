"""``neuroflood study project``: extrapolate a measured run to thousands of ranks.

Reads the per-rank work times a training run recorded (``RUN_DIR/step_times.jsonl``), the
batch per rank and the network (``RUN_DIR/config.json``: its parameter count gives the
bytes of one gradient all-reduce), and runs the model of :mod:`.projection` at each worker
count. Writes ``OUT/projection.json`` and ``OUT/projection.png`` (efficiency against
workers, with Dong et al. 2019's measured efficiencies beside the curve).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .projection import Interconnect, ProjectionPoint, cv_for_efficiency, measured_overhead, project, projection_json

# Dong et al. 2019, parallel efficiency on KNL nodes: the scaling figure (FOVs/s against nodes,
# digitized in figures.PAPER_SCALING, efficiency = FOVs/s / (nodes × 0.71)) up to 1024 nodes,
# and "about 68 %" at 2048 nodes (v4; reference §4.2).
PAPER_2048 = (2048, 0.68)
GRADIENT_BYTES = 4  # float32 gradients (the weights stay float32 under bf16 autocast too)


def paper_efficiencies() -> list[tuple[int, float]]:
    """(nodes, efficiency) of the paper, as docs/reproducing-the-paper.md lists them."""
    from .figures import PAPER_SCALING

    one = PAPER_SCALING[0][1]
    return [(n, f / (n * one)) for n, f in PAPER_SCALING] + [PAPER_2048]


def read_step_times(run_dir: Path, skip_steps: int = 1) -> dict[str, Any]:
    """Work and wait times of every rank and step after the first ``skip_steps`` steps.

    Returns ``work`` and ``wait`` (``[steps, ranks]`` arrays) and ``ranks``. Raises
    :class:`DataError` (one line) for a missing, unreadable or empty file.
    """
    path = run_dir / "step_times.jsonl"
    if not run_dir.is_dir():
        raise DataError(f"--timings {run_dir} is not a directory; give the --run-dir of a `neuroflood train` run")
    if not path.is_file():
        raise DataError(f"{path} does not exist; train with this version of neuroflood (it writes the per-rank step times)")
    work: list[np.ndarray] = []
    wait: list[np.ndarray] = []
    ranks = None
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            first, last = (int(v) for v in rec["steps"])
            w, q = np.asarray(rec["work_s"], np.float64), np.asarray(rec["wait_s"], np.float64)
            if w.ndim != 2 or w.shape != q.shape or w.shape[1] != last - first + 1 or w.shape[0] != int(rec["ranks"]):
                raise ValueError("shapes")
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} line {i} is not a step-times record (steps, ranks, work_s, wait_s); fix or remove it") from None
        if ranks is not None and w.shape[0] != ranks:
            raise DataError(f"{path} line {i} has {w.shape[0]} ranks, earlier lines {ranks}; project one job's times at a time")
        ranks = w.shape[0]
        keep = np.arange(first, last + 1) > skip_steps
        work.append(w[:, keep].T)
        wait.append(q[:, keep].T)
    if ranks is None or sum(len(w) for w in work) == 0:
        raise DataError(f"{path} holds no steps after the first {skip_steps}; train longer or lower --skip-steps")
    work_all, wait_all = np.concatenate(work), np.concatenate(wait)
    if not (np.all(np.isfinite(work_all)) and work_all.min() >= 0 and work_all.mean() > 0):
        raise DataError(f"{path} has negative, non-finite or all-zero work times; it was not written by `neuroflood train`")
    return {"work": work_all, "wait": wait_all, "ranks": ranks}


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """Batch per rank (FOVs per step) and the network's parameter count from ``config.json``."""
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; give the --run-dir of a `neuroflood train` run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); is it the config of a `neuroflood train` run?") from None
    from ..config import ModelConfig
    from ..errors import ConfigError
    from ..model import build_model

    try:
        model = ModelConfig.model_validate(config.get("model", {}))
        fovs = int(config.get("batch_size", 4)) * int(config.get("emulate_workers", 1))
    except (ValueError, TypeError, ConfigError) as e:
        raise DataError(f"{path} has no valid model and batch size ({str(e).splitlines()[0]})") from None
    parameters = build_model(model, seed=0).num_parameters()
    return {"fovs_per_step": fovs, "parameters": parameters, "model": model.model_dump(mode="json")}


def load_run(timings: str, skip_steps: int = 1) -> dict[str, Any]:
    """The step times and config of the run directory ``timings`` (one-line errors)."""
    run_dir = Path(timings)
    return {"run_dir": str(run_dir), **read_step_times(run_dir, skip_steps), **read_run_config(run_dir), "skip_steps": skip_steps}


def run_projection(
    run: dict[str, Any],
    workers: Sequence[int],
    out: str,
    net: Interconnect,
    algorithm: str = "best",
    target: float = 0.85,
    target_workers: int = 1024,
    trials: int = 2000,
    overhead_s: float | None = None,
) -> dict[str, Any]:
    """Project the run (:func:`load_run`) to ``workers`` ranks; write OUT/projection.{json,png}.

    ``overhead_s``: the fixed per-step cost beyond stragglers and the all-reduce; None
    measures it in the run itself (:func:`~.projection.measured_overhead`, 0 for one rank).
    """
    message = run["parameters"] * GRADIENT_BYTES
    work, wait, ranks = run["work"], run["wait"], run["ranks"]
    bare = project(work, run["fovs_per_step"], [ranks], net, message, algorithm, trials)[0]
    found = measured_overhead(wait, bare)
    overhead = found if overhead_s is None else overhead_s
    points = project(work, run["fovs_per_step"], workers, net, message, algorithm, trials, overhead_s=overhead)
    own = project(work, run["fovs_per_step"], [ranks], net, message, algorithm, trials, overhead_s=overhead)[0]
    mean = float(work.mean())
    comm = net.allreduce_s(target_workers, message, algorithm) + (overhead if target_workers > 1 else 0.0)
    cv_needed = cv_for_efficiency(target, target_workers, mean, comm)
    measured = {
        "ranks": ranks,
        "steps": int(work.shape[0]),
        "work_mean_s": mean,
        "work_cv": float(work.std() / mean),
        "wait_mean_s": float(wait.mean()),
        "step_mean_s": float((work + wait).mean()),
        "fovs_per_s": ranks * run["fovs_per_step"] / float((work + wait).mean(axis=1).mean()),
        "model_step_s": own.step_s,
        "model_fovs_per_s": own.fovs_per_s,
        "overhead_s": found,  # the run's wait beyond the model's stragglers and all-reduce
    }
    meta = {
        "timings": run["run_dir"],
        "algorithm": algorithm,
        "parameters": run["parameters"],
        "message_bytes": message,
        "fovs_per_step_per_rank": run["fovs_per_step"],
        "skip_steps": run["skip_steps"],
        "overhead_s": overhead,
        "overhead_source": "measured in --timings" if overhead_s is None else "--overhead-ms",
        "measured": measured,
        "cv_for_target": {"efficiency": target, "workers": target_workers, "cv": cv_needed},
        "paper": [{"workers": n, "efficiency": e} for n, e in paper_efficiencies()],
    }
    result = projection_json(points, net, meta)
    from .common import write_json

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "projection.json", result)
    plot_projection(
        points, paper_efficiencies(), out_dir / "projection.png", f"{net.name}, {algorithm} all-reduce of {message / 1e6:.2f} MB"
    )
    return result


def plot_projection(points: Sequence[ProjectionPoint], paper: Sequence[tuple[int, float]], path: Path, title: str) -> Path:
    """Efficiency against workers (log x): the model's curve, the paper's points, the 85 % line."""
    import io

    import matplotlib.ticker
    from matplotlib.figure import Figure

    from ..atomic import atomic_write_bytes

    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    w = [p.workers for p in points]
    ax.plot(w, [100 * p.efficiency for p in points], "o-", color="C0", ms=4, label="model (measured work times)")
    # Stragglers alone: mean work / E[max work], the all-reduce left out.
    alone = [100 * (p.step_s - p.straggler_s - p.allreduce_s) / max(p.step_s - p.allreduce_s, 1e-300) for p in points]
    ax.plot(w, alone, ":", color="C1", label="model, stragglers only (no all-reduce)")
    pw, pe = zip(*paper)
    ax.plot(pw, [100 * e for e in pe], "s", color="C7", ms=5, label="Dong et al. 2019, measured (KNL nodes)")
    ax.axhline(85, color="k", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("workers (ranks)")
    ax.set_ylabel("parallel efficiency (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"Projected efficiency ({title})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return path


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What the command prints: one line per worker count, the measured run, the CV needed."""
    lines = [
        f"workers {p['workers']}: efficiency {100 * p['efficiency']:.1f}%, {p['fovs_per_s']:.4g} FOVs/s "
        f"(stragglers {p['straggler_s'] * 1e3:.2f} ms, all-reduce {p['allreduce_s'] * 1e3:.3f} ms, "
        f"overhead {p.get('overhead_s', 0.0) * 1e3:.2f} ms per step)"
        for p in result["points"]
    ]
    m, t = result["measured"], result["cv_for_target"]
    lines.append(
        f"measured run: {m['ranks']} ranks, {m['fovs_per_s']:.4g} FOVs/s, work {m['work_mean_s'] * 1e3:.2f} ms/step "
        f"(CV {100 * m['work_cv']:.1f}%), waits {1e3 * m['overhead_s']:.2f} ms/step beyond stragglers and the all-reduce; "
        f"the model gives {m['model_fovs_per_s']:.4g} FOVs/s at {m['ranks']} ranks (overhead {1e3 * result['overhead_s']:.2f} ms, "
        f"{result['overhead_source']})"
    )
    cv = t["cv"]
    hold = (
        f"at most {100 * cv:.2f}%" if cv > 0 and math.isfinite(cv) else "no CV (the all-reduce and the per-step overhead alone cost more)"
    )
    lines.append(f"to keep >= {100 * t['efficiency']:.0f}% at {t['workers']} workers, the per-rank work CV must be {hold}")
    return lines
