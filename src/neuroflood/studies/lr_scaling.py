"""Learning-rate scaling study: which LR is best for N synchronous workers?

As the LR figure of Dong et al. 2019: every worker count N trains at a fixed sample budget
(``fovs`` FOVs in total, so ``fovs // (N·B)`` steps of a global batch N·B;
``fixed_sample_budget``), without warm-up and with a linear warm-up over ``warmup_fraction``
of its steps (the paper's warm-up lengths are unknown), at

* the learning rate of each scaling **rule** (``rules``): none = base, linear = base·N,
  sqrt = base·√N, the paper's comparison; and
* an LR **grid**, base × ``lr_factors`` at every N (absolute rates, no rule): the paper's own
  form, each point normalised by the best point at the same N and warm-up. With
  ``lr_factors="auto"`` the grid follows N: powers of 2 from 0.5 to 2N, so that it brackets
  all three rules at every N without spending runs on rates far beyond linear.

Every point trains ``seeds`` times (initial weights and example order change with the seed;
the held-out examples do not) and is scored by the mean and 95 % confidence interval over
seeds of each run's final-window held-out accuracy, F1 and loss
(:mod:`~neuroflood.studies.statistics`). A rule's rate that is also on the grid is trained
once and reported under both.

Workers are emulated by default (gradient accumulation in one process: the optimisation of
N workers, exactly); ``mode="real"`` runs N ranks instead, e.g. on a cluster with a launcher.
"""

from __future__ import annotations

import math
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
from .figures import plot_lr_scaling
from .statistics import mean_ci95, run_record, seed_list, summarise

RULES = ("none", "linear", "sqrt")


def rule_lr(rule: str, base_lr: float, workers: int) -> float:
    """The learning rate of a scaling rule for N workers: base, base·N or base·√N."""
    scale = {"none": 1.0, "linear": float(workers), "sqrt": math.sqrt(workers)}
    if rule not in scale:
        raise ConfigError(f"unknown LR rule {rule!r}; choose from {', '.join(RULES)}")
    return float(f"{base_lr * scale[rule]:.12g}")


def auto_factors(workers: int) -> list[float]:
    """The ``auto`` grid at N workers: powers of 2 from 0.5 to 2N (one step beyond none and linear)."""
    return [2.0**k for k in range(-1, math.ceil(math.log2(workers)) + 2)]


def _grid(workers: Sequence[int], rules: Sequence[str], lr_factors: Sequence[float] | str, base_lr: float) -> list[tuple[int, str, float]]:
    """(N, rule or "grid", learning rate) of every point, rules first at each N."""
    out = []
    for n in workers:
        factors = auto_factors(n) if lr_factors == "auto" else lr_factors
        out += [(n, r, rule_lr(r, base_lr, n)) for r in rules]
        out += [(n, "grid", float(f"{base_lr * f:.12g}")) for f in factors]
    return out


def run_lr_scaling(
    out: str | Path,
    workers: Sequence[int] = (1, 2, 4, 8),
    lr_factors: Sequence[float] | str = (0.5, 1, 2, 4, 8),
    rules: Sequence[str] = RULES,
    base_lr: float = 1e-3,
    warmup_fraction: float = 0.1,
    fovs: int = 2400,
    batch_size: int = 4,
    optimizer: str = "adam",
    evaluations: int = 10,
    runs: StudyRuns = StudyRuns(),
) -> list[dict[str, Any]]:
    """Run the study; write ``OUT/lr_scaling.json`` and ``OUT/lr_scaling_{f1,accuracy}.png`` (and ``_loss.png`` with rules); return its points."""
    model, eval_examples, seeds, mode, launcher, threads, jobs, data_size, seed, progress = runs.values()
    if workers and fovs < max(workers) * batch_size:
        raise ConfigError(
            f"--fovs {fovs} is less than one step of {max(workers)} workers × {batch_size} FOVs; raise --fovs to at least "
            f"{max(workers) * batch_size}"
        )
    runs.check(evaluations)
    if isinstance(lr_factors, str) and lr_factors != "auto":
        raise ConfigError(f"lr_factors {lr_factors!r}: give numbers or 'auto'")
    if not rules and not lr_factors:
        raise ConfigError("nothing to run: give --rules or --lr-factors")
    out = Path(out)
    mcfg, data = runs.prepare(out)
    points, configs = [], []
    for n, rule, lr in _grid(workers, rules, lr_factors, base_lr):
        steps = fovs // (n * batch_size)
        for warm in (False, True):
            w = max(1, round(warmup_fraction * steps)) if warm else 0
            options = base_options(
                out / "runs" / f"n{n}-lr{lr:.6g}-warmup{w}",
                mcfg,
                data,
                batch_size=batch_size,
                optimizer=optimizer,
                learning_rate=lr,
                lr_scaling="none",
                warmup_steps=w,
                max_steps=fovs // batch_size,
                fixed_sample_budget=True,
                eval_every_steps=max(1, steps // evaluations),
                eval_examples=eval_examples,
            )
            configs.append((options, n))
            points.append(
                {
                    "workers": n,
                    "rule": rule,
                    "warmup": warm,
                    "learning_rate": lr,
                    "lr_factor": lr / base_lr,
                    "warmup_steps": w,
                    "steps": steps,
                    "global_batch": n * batch_size,
                    "fovs": steps * n * batch_size,
                }
            )
    results = execute_seeded(configs, seed_list(seed, seeds), mode, launcher, threads, jobs, progress)
    for p, seeded in zip(points, results):
        p["runs"] = [run_record(s, res, run_dir, p["global_batch"]) for s, run_dir, res in seeded]
        p.update(summarise(p["runs"]))
    normalise(points, ("accuracy", "f1"))
    report = {
        "study": "lr-scaling",
        "machine": machine(),
        "config": {
            "workers": list(workers),
            "rules": list(rules),
            "lr_factors": lr_factors if isinstance(lr_factors, str) else list(lr_factors),
            "base_lr": base_lr,
            "warmup_fraction": warmup_fraction,
            "fovs": fovs,
            "batch_size_per_worker": batch_size,
            "optimizer": optimizer,
            "evaluations": evaluations,
            **runs.record(data),
        },
        "best": best_per_workers(points, base_lr),
        "rule_comparison": compare_rules(points),
        "points": points,
    }
    write_json(out / "lr_scaling.json", report)
    for metric in ("f1", "accuracy"):
        plot_lr_scaling(points, out / f"lr_scaling_{metric}.png", base_lr, metric)
    if rules:  # the rules' loss, which separates them best (the narrowest CIs); lower is better
        plot_lr_scaling(points, out / "lr_scaling_loss.png", base_lr, "loss", grid=False)
    return points


def _mean(point: dict[str, Any], metric: str) -> float | None:
    value = point.get(metric)
    return value.get("mean") if isinstance(value, dict) else value


def normalise(points: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """Add ``normalized_<metric>``: the point's mean over the best mean with the same N and warm-up."""
    for m in metrics:
        for p in points:
            peers = [v for q in points if q["workers"] == p["workers"] and q["warmup"] == p["warmup"] and (v := _mean(q, m)) is not None]
            top, mine = max(peers, default=0.0), _mean(p, m)
            p[f"normalized_{m}"] = (mine / top) if (mine is not None and top > 0) else None


def best_per_workers(points: list[dict[str, Any]], base_lr: float) -> list[dict[str, Any]]:
    """Best LR at each (N, warm-up) by mean F1 (ties: accuracy), beside the rules' rates and scores."""
    out = []
    for n in sorted({p["workers"] for p in points}):
        for warm in (False, True):
            sub = [p for p in points if p["workers"] == n and p["warmup"] == warm and _mean(p, "f1") is not None]
            if not sub:
                continue
            top = max(sub, key=lambda p: (_mean(p, "f1"), _mean(p, "accuracy") or 0))
            out.append(
                {
                    "workers": n,
                    "warmup": warm,
                    "best_learning_rate": top["learning_rate"],
                    "f1": _mean(top, "f1"),
                    "f1_ci95": top["f1"].get("ci95") if isinstance(top["f1"], dict) else None,
                    "accuracy": _mean(top, "accuracy"),
                    "linear_rule": base_lr * n,
                    "sqrt_rule": base_lr * math.sqrt(n),
                    "rules": {p["rule"]: p["f1"] for p in sub if p.get("rule", "grid") != "grid"},
                }
            )
    return out


def compare_rules(
    points: list[dict[str, Any]], metrics: Sequence[str] = ("loss", "accuracy", "f1"), alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Which LR rule is best at each (N, warm-up), per quality figure, and whether that is separable.

    The best rule has the best mean over seeds (lowest loss, highest accuracy or F1); each
    other rule gets its difference from the best and the p-value of Welch's t-test on the
    seeds' final-window values (two-sided). ``separable`` is true when every other rule
    differs from the best at ``p < alpha``. Needs two seeds or more; N = 1 (all rules alike) is
    left out.
    """
    from scipy.stats import ttest_ind

    rules = [p for p in points if p.get("rule") in RULES and p["workers"] > 1]
    out = []
    for n in sorted({p["workers"] for p in rules}):
        for warm in (False, True):
            group = [p for p in rules if p["workers"] == n and p["warmup"] == warm]
            for m in metrics:
                vals = {p["rule"]: [r["final"][m] for r in p["runs"] if r["final"].get(m) is not None] for p in group}
                vals = {r: v for r, v in vals.items() if len(v) >= 2}
                if len(vals) < 2:
                    continue
                sign = -1.0 if m == "loss" else 1.0
                means = {r: mean_ci95(v)["mean"] for r, v in vals.items()}
                best = max(means, key=lambda r: sign * means[r])
                others = {}
                for r, v in vals.items():
                    if r != best:
                        p_value = float(ttest_ind(vals[best], v, equal_var=False).pvalue)
                        diff = means[best] - means[r]
                        others[r] = {"difference": diff, "p_value": p_value if math.isfinite(p_value) else None}
                out.append(
                    {
                        "workers": n,
                        "warmup": warm,
                        "metric": m,
                        "best_rule": best,
                        "others": others,
                        "separable": all(o["p_value"] is not None and o["p_value"] < alpha for o in others.values()),
                    }
                )
    return out
