"""Figures of the distributed-training studies, drawn like the paper's (Dong et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# Dong et al. 2019, scaling figure (digitized, KNL nodes): (nodes, FOVs/s).
PAPER_SCALING = [
    (1, 0.71),
    (2, 1.24),
    (4, 2.54),
    (8, 4.79),
    (16, 9.27),
    (32, 18.3),
    (64, 36.1),
    (128, 71.0),
    (256, 146),
    (512, 280),
    (1024, 522),
]


def plot_scaling(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str = "", reference: Sequence[tuple[int, float]] | None = None
) -> Path:
    """FOVs/s against workers, log–log, with the ideal line through the 1-worker point.

    ``reference`` adds another curve, e.g. :data:`PAPER_SCALING`, for comparison.
    """
    rows = sorted(rows, key=lambda r: r["workers"])
    w = np.array([r["workers"] for r in rows], float)
    f = np.array([r["fovs_per_s"] for r in rows], float)
    base = f[0] / w[0]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = np.array([w.min(), w.max()])
    ax.plot(xs, base * xs, "k--", label="ideal scaling")
    ax.plot(w, f, "o-", color="C0", label="neuroflood")
    if reference:
        rw, rf = zip(*reference)
        ax.plot(rw, rf, "s:", color="C7", ms=4, label="Dong et al. 2019 (KNL nodes)")
        xs = np.array([min(w.min(), min(rw)), max(w.max(), max(rw))])
        ax.plot(xs, rf[0] / rw[0] * xs, ":", color="C7", lw=0.8)
    for wi, fi, r in zip(w, f, rows):
        ax.annotate(f"{100 * r['efficiency']:.0f}%", (wi, fi), textcoords="offset points", xytext=(6, -12), fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2, numticks=12))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("workers")
    ax.set_ylabel("throughput (FOVs/s)")
    ax.set_title(title or "Training throughput vs workers (labels: efficiency)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _value(point: dict[str, Any], metric: str) -> float | None:
    """A point's figure: the mean of ``{"mean", "ci95"}``, or a plain number."""
    v = point.get(metric)
    return v.get("mean") if isinstance(v, dict) else v


def _ci(point: dict[str, Any], metric: str) -> float:
    """The 95 % CI half-width of a point's figure; 0 where there is none (one seed)."""
    v = point.get(metric)
    return float(v.get("ci95") or 0.0) if isinstance(v, dict) else 0.0


def _label(metric: str) -> str:
    return "F1" if metric == "f1" else metric


def _rules_panel(ax, points: Sequence[dict[str, Any]], metric: str) -> None:
    """Mean held-out metric against N per LR rule, with the 95 % CI over seeds as error bars."""
    rules = [r for r in ("none", "linear", "sqrt") if any(p["rule"] == r for p in points)]
    for i, rule in enumerate(rules):
        for warm, style in ((False, "-"), (True, "--")):
            sub = sorted(
                (p for p in points if p["rule"] == rule and p["warmup"] == warm and _value(p, metric) is not None),
                key=lambda p: p["workers"],
            )
            if not sub:
                continue
            shift = 1.04 ** (i - 1 + (0.5 if warm else -0.5) / 3)  # side by side, not on top of each other
            ys = [_value(p, metric) for p in sub]
            cis = [_ci(p, metric) for p in sub]
            # A t-interval can reach past what the figure can be (a loss below 0, an accuracy
            # above 1): the bars stop at those bounds.
            lo, hi = (0.0, math.inf) if metric == "loss" else (0.0, 1.0)
            ax.errorbar(
                [p["workers"] * shift for p in sub],
                ys,
                yerr=[[max(0.0, min(c, y - lo)) for y, c in zip(ys, cis)], [max(0.0, min(c, hi - y)) for y, c in zip(ys, cis)]],
                fmt="o" + style,
                color=f"C{i}",
                capsize=3,
                mfc="white" if warm else f"C{i}",
                label=f"{rule}{' + warm-up' if warm else ''}",
            )
    workers = sorted({p["workers"] for p in points})
    seeds = max((p.get("seeds", 1) for p in points), default=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("workers N")
    ax.set_ylabel(f"held-out {_label(metric)}, final window")
    ci = f"mean ± 95 % CI over {seeds} seeds" if seeds > 1 else "one seed: no CI"
    ax.set_title(f"LR rules: held-out {_label(metric)} ({ci})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _grid_panel(ax, fig, points: Sequence[dict[str, Any]], base_lr: float, metric: str, warm: bool) -> None:
    """The paper's form: every (N, LR) coloured by its mean over the best mean at the same N."""
    sub = list({(p["workers"], p["learning_rate"]): p for p in points if p["warmup"] == warm and _value(p, metric) is not None}.values())
    if not sub:
        return
    norm = matplotlib.colors.Normalize(vmin=0.5, vmax=1.0)
    workers = sorted({p["workers"] for p in sub})
    best = {n: max(_value(p, metric) for p in sub if p["workers"] == n) for n in workers}
    c = [_value(p, metric) / best[p["workers"]] if best[p["workers"]] > 0 else 0.0 for p in sub]
    sc = ax.scatter(
        [p["workers"] for p in sub], [p["learning_rate"] for p in sub], c=c, cmap="viridis", norm=norm, s=90, edgecolors="k", zorder=3
    )
    n = np.geomspace(min(workers), max(workers), 50)
    ax.plot(n, base_lr * n, "C3-", label=f"linear: {base_lr:g}·N")
    ax.plot(n, base_lr * np.sqrt(n), "C1--", label=f"sqrt: {base_lr:g}·√N")
    for nw in workers:
        top = max((p for p in sub if p["workers"] == nw), key=lambda p: _value(p, metric))
        ax.scatter([nw], [top["learning_rate"]], marker="*", s=320, facecolors="none", edgecolors="r", linewidths=1.5, zorder=4)
    ax.scatter([], [], marker="*", s=160, facecolors="none", edgecolors="r", label="best mean at each N")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers N (global batch = N × per-worker batch)")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{'With linear warm-up' if warm else 'No warm-up'}: mean held-out {_label(metric)} / best at N", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(min(workers) / 1.3, max(workers) * 1.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    fig.colorbar(sc, ax=ax, label=f"held-out {_label(metric)} / best at the same N")


def plot_lr_scaling(
    points: Sequence[dict[str, Any]], path: str | Path, base_lr: float, metric: str = "accuracy", grid: bool = True
) -> Path:
    """The LR rules with error bars, then the paper's normalised (N, LR) grid without and with warm-up.

    ``points`` are lr_scaling.json's: ``rule`` (none, linear, sqrt or grid), ``workers``,
    ``learning_rate``, ``warmup`` and ``metric`` as ``{"mean", "ci95"}`` (or a number). The
    left panel shows the rules (mean ± 95 % CI over seeds); the others every (N, LR), coloured
    by its mean divided by the best mean at the same N (1.0 = best), as in the paper's figure.
    ``grid=False`` draws the rules only (for the loss, where the best is the lowest).
    """
    has_rules = any(p["rule"] != "grid" for p in points)
    panels = sorted({bool(p["warmup"]) for p in points}) if grid else []
    ncols = len(panels) + int(has_rules)
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.8), squeeze=False)
    row = list(axes[0])
    if has_rules:
        _rules_panel(row.pop(0), [p for p in points if p["rule"] != "grid"], metric)
    for ax, warm in zip(row, panels):
        _grid_panel(ax, fig, points, base_lr, metric, warm)
    return _save(fig, path)


def _band(ax, xs: Sequence[float], pts: Sequence[dict[str, Any]], metric: str, style: str, color: str, label: str) -> None:
    """A mean curve with its 95 % CI over seeds as a shaded band (none with one seed)."""
    ys = np.array([p[metric] for p in pts], float)
    ci = np.array([p.get(f"{metric}_ci95") or 0.0 for p in pts], float)
    ax.plot(xs, ys, style, color=color, label=label, ms=4)
    if ci.any():
        ax.fill_between(xs, ys - ci, ys + ci, color=color, alpha=0.2, lw=0)


def plot_batch_size(
    curves: Sequence[dict[str, Any]], path: str | Path, metric: str = "f1", time_key: str = "time_s", time_label: str = "training time (s)"
) -> Path:
    """Mean held-out metric (band: 95 % CI over seeds) against wall time and FOVs, one line per global batch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    label = _label(metric)
    for i, c in enumerate(sorted(curves, key=lambda c: c["global_batch"])):
        pts = [p for p in c["points"] if p[metric] is not None]
        name = f"global batch {c['global_batch']} ({c['workers']} × {c['global_batch'] // c['workers']})"
        _band(a, [p[time_key] for p in pts], pts, metric, "o-", f"C{i}", name)
        _band(b, [p["fovs"] for p in pts], pts, metric, "o-", f"C{i}", name)
    seeds = max((c.get("seeds", 1) for c in curves), default=1)
    a.set_xlabel(time_label)
    b.set_xlabel("FOVs processed")
    for ax in (a, b):
        ax.set_ylabel(f"held-out {label}" + (f" (mean, band: 95 % CI over {seeds} seeds)" if seeds > 1 else ""))
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    a.set_title(f"Batch size: held-out {label} vs wall time")
    b.set_title(f"Batch size: held-out {label} vs FOVs processed")
    return _save(fig, path)


def _optimizer_panel(ax, rows: Sequence[dict[str, Any]], metric: str) -> None:
    """Mean ``metric`` against N per optimizer (colour) and warm-up (dashed, open), error bars: 95 % CI."""
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    workers = sorted({r["workers"] for r in rows})
    series = [(i, n, warm) for i, n in enumerate(names) for warm in (False, True)]
    for k, (i, name, warm) in enumerate(series):
        sub = sorted(
            (r for r in rows if r["optimizer"] == name and r["warmup"] == warm and _value(r, metric) is not None),
            key=lambda r: r["workers"],
        )
        if not sub:
            continue
        shift = 1.035 ** (k - (len(series) - 1) / 2)  # side by side at each N, not on top of each other
        lr = next(r["learning_rate"] for r in rows if r["optimizer"] == name)
        ax.errorbar(
            [r["workers"] * shift for r in sub],
            [_value(r, metric) for r in sub],
            yerr=[_ci(r, metric) for r in sub],
            fmt="o" + ("--" if warm else "-"),
            color=f"C{i}",
            mfc="white" if warm else f"C{i}",
            capsize=3,
            label=f"{name} (lr {lr:g}){' + warm-up' if warm else ''}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(workers, [str(w) for w in workers])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(min(workers) / 1.4, max(workers) * 1.4)
    ax.set_xlabel("workers N (same FOV budget at every N)")
    ax.grid(True, which="both", alpha=0.3)


def plot_optimizers(
    rows: Sequence[dict[str, Any]], path: str | Path, target_accuracy: float = 0.95, comparable_accuracy: float | None = None
) -> Path:
    """The optimizer study against N: final-window accuracy, FOVs to the level, [modelled time], curves at the largest N.

    ``rows`` are optimizers.json's points (``optimizer``, ``warmup``, ``workers``,
    ``learning_rate``, ``accuracy`` and ``fovs_to_target`` / ``fovs_to_comparable`` /
    ``modelled_wall_s`` as ``{"mean", "ci95"}``, ``curve``). FOVs (and modelled times) are to
    the target unless ``comparable_accuracy`` is given (no point's mean curve reached the target).
    Error bars and bands: 95 % CI over seeds; points that never reached the level are missing.
    """
    comparable = comparable_accuracy is not None
    level = comparable_accuracy if comparable else target_accuracy
    key = "fovs_to_comparable" if comparable else "fovs_to_target"
    level_text = f"{100 * level:.1f}% (comparable level; {100 * target_accuracy:g}% not reached)" if comparable else f"{100 * level:g}%"
    modelled = any(_value(r, "modelled_wall_s") is not None for r in rows)
    # 2 × 2 with the modelled time, else one row of three.
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5)) if modelled else plt.subplots(1, 3, figsize=(18, 5))
    a, b, *rest = axes.ravel()
    seeds = max((r.get("seeds", 1) for r in rows), default=1)
    ci = f"mean ± 95 % CI, {seeds} seeds" if seeds > 1 else "one seed: no CI"
    _optimizer_panel(a, rows, "accuracy")
    a.set_ylabel("held-out voxel accuracy, final window")
    a.set_title(f"Final held-out accuracy ({ci})", fontsize=10)
    a.legend(fontsize=7, ncol=2)
    _optimizer_panel(b, rows, key)
    b.set_ylim(bottom=0)  # bounded by the budget: a linear axis reads best
    if not any(_value(r, key) is not None for r in rows):
        b.text(0.5, 0.5, "no run reached it", transform=b.transAxes, ha="center")
    b.set_ylabel("FOVs trained, runs that reached it")
    b.set_title(f"FOVs to {level_text} held-out accuracy", fontsize=10)
    if modelled:
        _optimizer_panel(rest[0], rows, "modelled_wall_s")
        rest[0].set_yscale("log")  # FOVs/s(N) spans orders of magnitude
        rest[0].set_ylabel("modelled wall time (s) = FOVs / projected FOVs/s(N)")
        rest[0].set_title(f"Modelled wall time to {level_text}", fontsize=10)
    c = rest[-1]
    top = max(r["workers"] for r in rows)
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    for r in (r for r in rows if r["workers"] == top):
        pts = [p for p in r.get("curve", []) if p["accuracy"] is not None]
        if pts:
            label = f"{r['optimizer']}{' + warm-up' if r['warmup'] else ''}"
            _band(c, [p["fovs"] for p in pts], pts, "accuracy", "--" if r["warmup"] else "-", f"C{names.index(r['optimizer'])}", label)
    c.axhline(level, color="k", lw=0.8, ls=":", label=f"{level_text.split(' (')[0]} level")
    c.set_xlabel("FOVs trained")
    c.set_ylabel("held-out voxel accuracy" + (" (mean, band: 95 % CI)" if seeds > 1 else ""))
    c.set_ylim(0, 1)
    c.set_title(f"Held-out accuracy during training, N = {top}", fontsize=10)
    c.grid(True, alpha=0.3)
    c.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def efficiency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``efficiency`` = FOVs/s ÷ (workers × FOVs/s per worker at the smallest count)."""
    rows = sorted(rows, key=lambda r: r["workers"])
    per_worker = rows[0]["fovs_per_s"] / rows[0]["workers"]
    for r in rows:
        r["efficiency"] = r["fovs_per_s"] / (r["workers"] * per_worker) if per_worker > 0 else math.nan
    return rows
