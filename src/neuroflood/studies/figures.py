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


def plot_lr_scaling(rows: Sequence[dict[str, Any]], path: str | Path, base_lr: float, metric: str = "accuracy") -> Path:
    """Normalized held-out metric over (workers, LR), with base·N and base·√N overlaid.

    One panel without and one with warm-up (``row["warmup"]``); each marker is one run,
    coloured by its metric divided by the best run at the same worker count (1.0 = best),
    as in the paper's LR figure; a red star marks the best LR at each N.
    """
    panels = sorted({bool(r["warmup"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    norm = matplotlib.colors.Normalize(vmin=0.5, vmax=1.0)
    label = "F1" if metric == "f1" else metric
    for ax, warm in zip(axes[0], panels):
        sub = [r for r in rows if bool(r["warmup"]) == warm and r[metric] is not None]
        if not sub:
            continue
        workers = sorted({r["workers"] for r in sub})
        best = {n: max(r[metric] for r in sub if r["workers"] == n) for n in workers}
        c = [r[metric] / best[r["workers"]] if best[r["workers"]] > 0 else 0.0 for r in sub]
        sc = ax.scatter(
            [r["workers"] for r in sub], [r["learning_rate"] for r in sub], c=c, cmap="viridis", norm=norm, s=90, edgecolors="k", zorder=3
        )
        n = np.geomspace(min(workers), max(workers), 50)
        ax.plot(n, base_lr * n, "C3-", label=f"linear: {base_lr:g}·N")
        ax.plot(n, base_lr * np.sqrt(n), "C1--", label=f"sqrt: {base_lr:g}·√N")
        for nw in workers:
            top = max((r for r in sub if r["workers"] == nw), key=lambda r: r[metric])
            ax.scatter([nw], [top["learning_rate"]], marker="*", s=320, facecolors="none", edgecolors="r", linewidths=1.5, zorder=4)
        ax.scatter([], [], marker="*", s=160, facecolors="none", edgecolors="r", label="best LR at each N")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers N (global batch = N × per-worker batch)")
        ax.set_ylabel("learning rate")
        ax.set_title(f"LR scaling, {'with linear warm-up' if warm else 'no warm-up'}: held-out {label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(workers, [str(w) for w in workers])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(min(workers) / 1.3, max(workers) * 1.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
        fig.colorbar(sc, ax=ax, label=f"held-out {label} / best at the same N")
    return _save(fig, path)


def plot_batch_size(
    curves: Sequence[dict[str, Any]], path: str | Path, metric: str = "f1", time_key: str = "time_s", time_label: str = "training time (s)"
) -> Path:
    """Held-out metric against wall time and against FOVs processed, one line per global batch."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    label = "F1" if metric == "f1" else metric
    for i, c in enumerate(sorted(curves, key=lambda c: c["global_batch"])):
        pts = [p for p in c["points"] if p[metric] is not None]
        name = f"global batch {c['global_batch']} ({c['workers']} × {c['global_batch'] // c['workers']})"
        a.plot([p[time_key] for p in pts], [p[metric] for p in pts], "o-", color=f"C{i}", label=name, ms=4)
        b.plot([p["fovs"] for p in pts], [p[metric] for p in pts], "o-", color=f"C{i}", label=name, ms=4)
    a.set_xlabel(time_label)
    b.set_xlabel("FOVs processed")
    for ax in (a, b):
        ax.set_ylabel(f"held-out {label}")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    a.set_title(f"Batch size: held-out {label} vs wall time")
    b.set_title(f"Batch size: held-out {label} vs FOVs processed")
    return _save(fig, path)


def plot_optimizers(rows: Sequence[dict[str, Any]], path: str | Path, target_accuracy: float = 0.95) -> Path:
    """Final held-out F1, time to the target voxel accuracy, and the accuracy curves (by step)."""
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    key = f"time_to_{target_accuracy:g}_accuracy_s"
    x = np.arange(len(names))
    width = 0.38
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.8))
    for j, warm in enumerate((False, True)):
        label = "with warm-up" if warm else "no warm-up"
        f1 = [next((r["f1"] for r in rows if r["optimizer"] == n and r["warmup"] == warm), None) for n in names]
        a.bar(x + (j - 0.5) * width, [v if v is not None else np.nan for v in f1], width, label=label, color=f"C{j}")
        tt = [next((r[key] for r in rows if r["optimizer"] == n and r["warmup"] == warm), None) for n in names]
        b.bar(x + (j - 0.5) * width, [t if t is not None else np.nan for t in tt], width, label=label, color=f"C{j}")
        for xi, t in zip(x, tt):
            if t is None:
                b.annotate("not reached", (xi + (j - 0.5) * width, 0), rotation=90, ha="center", va="bottom", fontsize=8)
    for ax in (a, b):
        ax.set_xticks(x, [f"{n}\nlr {next(r['learning_rate'] for r in rows if r['optimizer'] == n):g}" for n in names])
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    a.set_ylabel("held-out F1 at the end")
    a.set_ylim(0, 1)
    a.set_title("Final held-out F1 (same FOV budget)")
    b.set_ylabel("training time (s)")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ax.set_xlim(-0.7, len(names) - 0.3)  # bars of runs that never got there are empty
    b.set_title(f"Time to {100 * target_accuracy:g}% held-out voxel accuracy")
    for i, n in enumerate(names):
        for warm, style in ((False, "-"), (True, "--")):
            r = next((r for r in rows if r["optimizer"] == n and r["warmup"] == warm), None)
            if r and r.get("curve"):
                pts = [p for p in r["curve"] if p["accuracy"] is not None]
                c.plot(
                    [p["step"] for p in pts], [p["accuracy"] for p in pts], style, color=f"C{i}", label=f"{n}{' + warm-up' if warm else ''}"
                )
    c.axhline(target_accuracy, color="k", lw=0.8, ls=":", label=f"{100 * target_accuracy:g}% target")
    c.set_xlabel("training steps (same for every optimizer; time is in the JSON)")
    c.set_ylabel("held-out voxel accuracy")
    c.set_title("Held-out accuracy during training")
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
