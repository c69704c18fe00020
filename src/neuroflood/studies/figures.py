"""Figures of the distributed-training studies, drawn like the paper's (Dong et al. 2019)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
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
PAPER_SCALING = [(1, 0.71), (2, 1.24), (4, 2.54), (8, 4.79), (16, 9.27), (32, 18.3), (64, 36.1),
                 (128, 71.0), (256, 146), (512, 280), (1024, 522)]


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
    fig, ax = plt.subplots(figsize=(6, 4.5))
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
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("workers")
    ax.set_ylabel("throughput (FOVs/s)")
    ax.set_title(title or "Training throughput vs workers (labels: efficiency)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_lr_scaling(rows: Sequence[dict[str, Any]], path: str | Path, base_lr: float, metric: str = "accuracy") -> Path:
    """Normalized held-out metric over (workers, LR), with base·N and base·√N overlaid.

    One panel per warm-up setting; each marker is one run, coloured by its metric divided by
    the best run at the same worker count (1.0 = best), as in the paper's LR figure.
    """
    warmups = sorted({r["warmup_steps"] for r in rows})
    fig, axes = plt.subplots(1, len(warmups), figsize=(6 * len(warmups), 4.6), squeeze=False)
    norm = matplotlib.colors.Normalize(vmin=0.9, vmax=1.0)
    for ax, wu in zip(axes[0], warmups):
        sub = [r for r in rows if r["warmup_steps"] == wu]
        workers = sorted({r["workers"] for r in sub})
        best = {n: max(r[metric] for r in sub if r["workers"] == n) or 1.0 for n in workers}
        x = [r["workers"] for r in sub]
        y = [r["learning_rate"] for r in sub]
        c = [r[metric] / best[r["workers"]] if best[r["workers"]] > 0 else 0 for r in sub]
        sc = ax.scatter(x, y, c=c, cmap="viridis", norm=norm, s=70, edgecolors="k", zorder=3)
        n = np.geomspace(min(workers), max(workers), 50)
        ax.plot(n, base_lr * n, "C3-", label=f"linear: {base_lr:g}·N")
        ax.plot(n, base_lr * np.sqrt(n), "C1-", label=f"sqrt: {base_lr:g}·√N")
        for nw in workers:  # mark the best LR at each N
            top = max((r for r in sub if r["workers"] == nw), key=lambda r: r[metric])
            ax.scatter([nw], [top["learning_rate"]], marker="*", s=220, facecolors="none", edgecolors="r", zorder=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers N")
        ax.set_ylabel("learning rate")
        ax.set_title(f"LR scaling, warm-up {wu} steps (★ best at each N)")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend(loc="lower right", fontsize=9, framealpha=0.9)
        fig.colorbar(sc, ax=ax, label=f"normalized held-out {metric}")
    return _save(fig, path)


def plot_batch_size(curves: Sequence[dict[str, Any]], path: str | Path, metric: str = "f1") -> Path:
    """Held-out metric against wall time and against FOVs processed, one line per batch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, c in enumerate(sorted(curves, key=lambda c: c["global_batch"])):
        pts = c["points"]
        t = [p["time_s"] for p in pts]
        fovs = [p["fovs"] for p in pts]
        v = [p[metric] for p in pts]
        label = f"global batch {c['global_batch']}"
        a.plot(t, v, "o-", color=f"C{i}", label=label, ms=3)
        b.plot(fovs, v, "o-", color=f"C{i}", label=label, ms=3)
    a.set_xlabel("training time (s)")
    b.set_xlabel("FOVs processed")
    for ax in (a, b):
        ax.set_ylabel(f"held-out {metric.upper() if metric == 'f1' else metric}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    a.set_title("Batch size: quality vs wall time")
    b.set_title("Batch size: quality vs FOVs processed")
    return _save(fig, path)


def plot_optimizers(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Held-out F1 and time to 95% voxel accuracy per optimizer, with and without warm-up."""
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    warm = sorted({r["warmup_steps"] for r in rows})
    x = np.arange(len(names))
    width = 0.8 / max(1, len(warm))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for j, wu in enumerate(warm):
        f1 = [next((r["f1"] for r in rows if r["optimizer"] == n and r["warmup_steps"] == wu), np.nan) for n in names]
        tt = [next((r["time_to_95_accuracy_s"] for r in rows if r["optimizer"] == n and r["warmup_steps"] == wu), None) for n in names]
        label = f"warm-up {wu} steps" if wu else "no warm-up"
        a.bar(x + j * width, f1, width, label=label)
        tv = [t if t is not None else np.nan for t in tt]
        b.bar(x + j * width, tv, width, label=label)
        for xi, t in zip(x, tt):
            if t is None:
                b.annotate("not reached", (xi + j * width, 0), rotation=90, ha="center", va="bottom", fontsize=8)
    for ax in (a, b):
        ax.set_xticks(x + width * (len(warm) - 1) / 2, names)
        ax.legend(fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    a.set_ylabel("held-out F1 at the end")
    a.set_title("Optimizers: final held-out F1")
    b.set_ylabel("seconds")
    b.set_title("Optimizers: time to 95% held-out voxel accuracy")
    return _save(fig, path)


def efficiency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``efficiency`` = FOVs/s ÷ (workers × FOVs/s per worker at the smallest count)."""
    rows = sorted(rows, key=lambda r: r["workers"])
    per_worker = rows[0]["fovs_per_s"] / rows[0]["workers"]
    for r in rows:
        r["efficiency"] = r["fovs_per_s"] / (r["workers"] * per_worker) if per_worker > 0 else math.nan
    return rows
