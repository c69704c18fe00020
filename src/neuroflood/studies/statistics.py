"""Statistics of the learning studies: seeds, a stable quality figure per run, confidence intervals.

A single held-out evaluation of a short run is noisy (its F1 can jump between ≈ 0 and ≈ 0.6
from one evaluation to the next), so every learning study

* repeats each configuration with ``--seeds K`` training seeds (``seed``, ``seed + 1``, …):
  the seed sets the initial weights and the order of the training examples; the data and the
  held-out examples are the same for every seed;
* scores each run by its **final window**: held-out voxel accuracy, F1 and loss averaged over
  the last :data:`FINAL_WINDOW` (20 %) of its evaluations (at least one), and keeps its full
  curve;
* reports, per configuration, the mean over seeds and the half-width of its 95 % confidence
  interval, ``t(0.975, K − 1) · s / √K`` (Student t, ``s`` the sample standard deviation);
  with one seed there is no interval (``ci95`` is None).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# Fraction of a run's evaluations (the last ones) averaged into its quality figure.
FINAL_WINDOW = 0.2
# The quality figures of a run, from its held-out evaluations.
QUALITY = ("accuracy", "f1", "loss")


def seed_list(seed: int, seeds: int) -> list[int]:
    """The training seeds of ``--seed S --seeds K``: S, S + 1, …, S + K − 1."""
    return list(range(int(seed), int(seed) + int(seeds)))


def t_critical(dof: int, level: float = 0.95) -> float:
    """Two-sided Student t critical value, e.g. ``t_critical(2) = 4.303`` (t(0.975) with 2 dof)."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, dof))


def mean_ci95(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation and 95 % CI half-width of the values that are not None.

    ``{"mean", "ci95", "sd", "n"}``; ``ci95`` and ``sd`` are None for fewer than two values,
    ``mean`` is None for none.
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    mean = sum(xs) / n if n else None
    if n < 2 or mean is None:
        return {"mean": mean, "ci95": None, "sd": None, "n": n}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return {"mean": mean, "ci95": t_critical(n - 1) * sd / math.sqrt(n), "sd": sd, "n": n}


def window_size(evaluations: int, fraction: float = FINAL_WINDOW) -> int:
    """How many of ``evaluations`` (the last ones) the final window holds: ⌈fraction·n⌉, at least 1."""
    if evaluations <= 0:
        return 0
    return max(1, min(evaluations, math.ceil(fraction * evaluations - 1e-9)))


def final_window(evals: Sequence[dict[str, Any]], fraction: float = FINAL_WINDOW, keys: Sequence[str] = QUALITY) -> dict[str, Any]:
    """Each of ``keys`` averaged over the last ``fraction`` of the evaluation records.

    Returns ``{key: mean or None, "evaluations": k, "from_step": first step averaged}``.
    """
    k = window_size(len(evals), fraction)
    window = list(evals[len(evals) - k :]) if k else []
    out: dict[str, Any] = {key: mean_ci95(r.get(key) for r in window)["mean"] for key in keys}
    out["evaluations"] = k
    out["from_step"] = window[0]["step"] if window else None
    return out


def curve(evals: Sequence[dict[str, Any]], global_batch: int) -> list[dict[str, Any]]:
    """The held-out curve of one run: step, FOVs trained, training time and the quality figures."""
    return [
        {"step": r["step"], "fovs": r["step"] * global_batch, "time_s": r.get("time_s"), **{k: r.get(k) for k in QUALITY}} for r in evals
    ]


def run_record(seed: int, result: dict[str, Any], run_dir: str, global_batch: int) -> dict[str, Any]:
    """One run of a configuration: its seed, final-window figures and curve (from :func:`~.common.execute`)."""
    ev = result["eval"]
    return {
        "seed": seed,
        "run_dir": run_dir,
        "final": final_window(ev),
        "train_time_s": ev[-1].get("time_s") if ev else None,
        "wall_s": result.get("wall_s"),
        "curve": curve(ev, global_batch),
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``seeds`` (how many runs) and, per quality figure, mean and CI over the runs' final windows."""
    return {"seeds": len(runs), **{k: mean_ci95(r["final"][k] for r in runs) for k in QUALITY}}


def mean_curve(runs: Sequence[dict[str, Any]], keys: Sequence[str] = ("time_s", *QUALITY)) -> list[dict[str, Any]]:
    """The runs' curves evaluation by evaluation: mean of each key and, for the quality figures, ``<key>_ci95``.

    The runs of one configuration evaluate at the same steps; the curve is as long as the
    shortest one.
    """
    if not runs:
        return []
    length = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(length):
        pts = [r["curve"][i] for r in runs]
        row: dict[str, Any] = {"step": pts[0]["step"], "fovs": pts[0]["fovs"]}
        for k in keys:
            s = mean_ci95(p.get(k) for p in pts)
            row[k] = s["mean"]
            if k in QUALITY:
                row[f"{k}_ci95"] = s["ci95"]
        out.append(row)
    return out
