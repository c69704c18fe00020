"""Figures for reports: ortho-slice overlays, an error map, close-ups of the worst errors, curves.

All figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no GUI
backend) and turned into PNG bytes by :func:`to_png`.

Colours: ground-truth objects get a colour from a hash of their id, so an id has the same
colour in every figure. A segment that is the *matched* partner of a ground-truth object (it
covers most of the object and the object is most of it) takes that object's colour; every
other segment gets its own hashed colour. Correct segments therefore look like the ground
truth, a false merge shows one colour spreading over several objects, and a false split shows
a differently coloured piece inside an object. Thin black lines mark label boundaries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .metrics import ERROR_CLASSES, Contingency, error_classes, majority_maps

__all__ = [
    "to_png",
    "id_colors",
    "label_rgb",
    "overlay_figure",
    "error_gallery_figure",
    "size_histogram_figure",
    "curves_figure",
    "sample_slices_figure",
    "PLANES",
]

# (name, axis cut, axes shown as rows/cols) for the three ortho planes, in z, y, x order.
PLANES = (("yx", 0), ("zx", 1), ("zy", 2))

_CURVE_TITLES = {"f1": "F1", "fovs_per_s": "FOVs/s", "lr": "learning rate", "learning_rate": "learning rate"}

# Okabe–Ito colour-blind-safe colours for the error classes of metrics.ERROR_CLASSES.
ERROR_COLORS = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.835, 0.369, 0.0, 0.85),  # merge: vermillion
    2: (0.0, 0.447, 0.698, 0.85),  # split: blue
    3: (0.8, 0.475, 0.655, 0.9),  # both: reddish purple
    4: (0.941, 0.894, 0.259, 0.85),  # unsegmented: yellow
    5: (0.35, 0.35, 0.35, 0.6),  # unlabelled: grey
}


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def id_colors(ids: np.ndarray) -> np.ndarray:
    """A bright RGB colour (float, [..., 3]) for each integer id, from a hash of the id; 0 → black."""
    ids = np.asarray(ids).astype(np.uint64)
    h = _splitmix64(ids)
    hue = (h & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
    sat = 0.55 + 0.45 * ((h >> np.uint64(16)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    val = 0.75 + 0.25 * ((h >> np.uint64(24)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    rgb = _hsv_to_rgb(hue, sat, val)
    rgb[ids == 0] = 0.0
    return rgb


def label_rgb(labels: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.6, color_ids: np.ndarray | None = None) -> np.ndarray:
    """RGB of a 2-D label slice blended over a grey image, with black boundaries.

    ``color_ids`` (same shape) chooses the colour of each pixel instead of ``labels`` (used
    to give matched segments their object's colour); label 0 shows the image only.
    """
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    grey = _grey(image, labels.shape)
    rgb = id_colors(labels if color_ids is None else color_ids)
    out = np.where((labels != 0)[..., None], (1 - alpha) * grey[..., None] + alpha * rgb, grey[..., None])
    out[find_boundaries(labels, mode="inner") & (labels != 0)] = 0.0
    return out


def error_rgb(classes: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """RGB of a 2-D error-class slice (metrics.ERROR_CLASSES) blended over a grey image."""
    grey = _grey(image, classes.shape)[..., None] * np.ones(3)
    colors = np.array([ERROR_COLORS[k] for k in sorted(ERROR_COLORS)])
    rgba = colors[classes]
    return (1 - rgba[..., 3:]) * grey + rgba[..., 3:] * rgba[..., :3]


def matched_color_ids(table: Contingency, seg: np.ndarray) -> np.ndarray:
    """Colour ids for segment pixels: the matched ground-truth object's id, else the segment's own id.

    Own ids are offset into a range that cannot clash with object ids.
    """
    (seg_ids, seg_main), (gt_ids, gt_main) = majority_maps(table)
    s = np.asarray(seg).astype(np.uint64)
    idx = np.clip(np.searchsorted(seg_ids, s), 0, len(seg_ids) - 1)
    main_gt = np.where(seg_ids[idx] == s, seg_main[idx], 0)
    gidx = np.clip(np.searchsorted(gt_ids, main_gt), 0, len(gt_ids) - 1)
    mutual = (gt_ids[gidx] == main_gt) & (gt_main[gidx] == s) & (s != 0)
    own = s ^ np.uint64(0x9E3779B97F4A7C15)  # a different hash input, same id → same colour
    return np.where(mutual, main_gt, np.where(s == 0, 0, own))


def overlay_figure(
    image: Any,
    gt: Any,
    seg: Any,
    table: Contingency,
    center: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    offset: Sequence[int] = (0, 0, 0),
) -> Figure:
    """Ortho-slices through ``center`` (z, y, x): image, ground truth, segmentation, error map.

    One row per plane (yx, zx, zy); ``image`` may be None (grey background then). ``center``
    indexes the given volumes; labels show it plus ``offset`` (the region's start).
    """
    columns = ["image", "ground truth", "segmentation (matched colours)", "error map"]
    if image is None:
        columns = columns[1:]
    # row heights follow the planes' physical aspect (yx: y/x, zx: z/x, zy: z/y)
    extent = [s * v for s, v in zip(gt.shape, voxel_size)]
    ratios = [extent[1] / extent[2], extent[0] / extent[2], extent[0] / extent[1]]
    ratios = [min(2.0, max(0.25, r)) for r in ratios]
    fig = Figure(figsize=(4.0 * len(columns), 4.0 * sum(ratios) + 1.6), layout="constrained")
    axes = fig.subplots(3, len(columns), squeeze=False, gridspec_kw={"height_ratios": ratios})
    for row, (plane, axis) in enumerate(PLANES):
        cut = _plane_index(axis, center[axis])
        img = None if image is None else np.asarray(image[cut])
        g = np.asarray(gt[cut])
        s = np.asarray(seg[cut])
        panels = {
            "image": _grey_rgb(img, g.shape),
            "ground truth": label_rgb(g, img),
            "segmentation (matched colours)": label_rgb(s, img, color_ids=matched_color_ids(table, s)),
            "error map": error_rgb(error_classes(table, s, g), img),
        }
        aspect = _aspect(axis, voxel_size)
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(panels[name], interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=13)
            if col == 0:
                rows_axis = plane[0]
                where = int(center[axis]) + int(offset[axis])
                ax.set_ylabel(f"{plane} plane, {'zyx'[axis]} = {where}\n← {rows_axis}", fontsize=11)
            ax.set_xlabel(f"{plane[1]} →", fontsize=9)
    fig.legend(handles=_error_legend(), loc="outside lower center", ncol=5, fontsize=11, title="error map")
    if title:
        fig.suptitle(title, fontsize=14)
    return fig


def error_gallery_figure(
    image: Any,
    gt: Any,
    seg: Any,
    table: Contingency,
    errors: dict[str, list[dict]],
    per_kind: int = 3,
    window: int = 96,
    offset: Sequence[int] = (0, 0, 0),
) -> Figure | None:
    """Close-ups (yx plane) of the largest merges and splits, centred on their coordinates.

    Coordinates index the given volumes; labels show them plus ``offset`` (the region's start).
    """
    items = [("merge", e) for e in errors.get("merges", [])[:per_kind] if "coordinate_zyx" in e]
    items += [("split", e) for e in errors.get("splits", [])[:per_kind] if "coordinate_zyx" in e]
    if not items:
        return None
    columns = ["image", "ground truth", "segmentation", "error map"] if image is not None else ["ground truth", "segmentation", "error map"]
    fig = Figure(figsize=(3.2 * len(columns), 3.5 * len(items)), layout="constrained")
    axes = fig.subplots(len(items), len(columns), squeeze=False)
    shape = gt.shape
    for row, (kind, e) in enumerate(items):
        z, y, x = e["coordinate_zyx"]
        y0 = int(np.clip(y - window // 2, 0, max(0, shape[1] - window)))
        x0 = int(np.clip(x - window // 2, 0, max(0, shape[2] - window)))
        cut = (z, slice(y0, min(shape[1], y0 + window)), slice(x0, min(shape[2], x0 + window)))
        img = None if image is None else np.asarray(image[cut])
        g, s = np.asarray(gt[cut]), np.asarray(seg[cut])
        panels = {
            "image": _grey_rgb(img, g.shape),
            "ground truth": label_rgb(g, img),
            "segmentation": label_rgb(s, img, color_ids=matched_color_ids(table, s)),
            "error map": error_rgb(error_classes(table, s, g), img),
        }
        if kind == "merge":
            label = (
                f"merge #{row + 1}: segment {e['segment']} covers {e['n_gt_objects']} objects\n"
                f"{e['error_voxels']:,} voxels outside object {e['gt_objects'][0]['id']}"
            )
        else:
            label = (
                f"split #{row + 1 - sum(k == 'merge' for k, _ in items)}: object {e['gt_object']} "
                f"in {e['n_segments']} segments\n{e['error_voxels']:,} voxels outside segment {e['segments'][0]['id']}"
            )
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(panels[name], interpolation="nearest")
            ax.plot([x - x0], [y - y0], marker="+", markersize=16, mew=2.5, color="white")
            ax.plot([x - x0], [y - y0], marker="+", markersize=12, mew=1.2, color="black")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=12)
            if col == 0:
                at = ",".join(str(c + o) for c, o in zip((z, y, x), offset))
                ax.set_ylabel(f"{label}\nat z,y,x = {at}", fontsize=9)
    fig.legend(handles=_error_legend(), loc="outside lower center", ncol=5, fontsize=10, title="error map")
    fig.suptitle("Largest errors (yx plane through the marked voxel)", fontsize=13)
    return fig


def size_histogram_figure(table: Contingency) -> Figure:
    """Size distributions (voxels, log scale) of ground-truth objects and segments."""
    _, gt_size = table.gt_sizes()
    _, seg_size = table.seg_sizes()
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    top = max(int(gt_size.max()), int(seg_size.max()) if seg_size.size else 1)
    bins = np.logspace(0, np.log10(top) + 0.1, 40)
    ax.hist(gt_size, bins=bins, histtype="step", lw=2, label=f"ground-truth objects ({len(gt_size)})")
    ax.hist(seg_size, bins=bins, histtype="step", lw=2, label=f"segments ({len(seg_size)})")
    ax.set_xscale("log")
    ax.set_xlabel("size inside the labelled region (voxels)")
    ax.set_ylabel("count")
    ax.set_title("Object and segment sizes")
    ax.legend()
    return fig


def curves_figure(
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    xlabel: str,
    title: str,
    ncols: int = 3,
    smooth: bool = True,
) -> Figure:
    """Small multiples: one panel per metric, one line per split.

    ``series[metric][split] = (x, y)``. With ``smooth``, long train series are drawn faint
    with their running mean on top.
    """
    names = list(series)
    nrows = max(1, -(-len(names) // ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = {"train": "#0072B2", "eval": "#D55E00"}
    for ax, name in zip(axes, names):
        for split, (x, y) in series[name].items():
            color = colors.get(split)
            if smooth and split == "train" and len(y) > 20:  # noisy per-step values: faint, with a running mean
                ax.plot(x, y, color=color, lw=0.8, alpha=0.3)
                ax.plot(x, _running_mean(y, max(5, len(y) // 25)), color=color, lw=1.8, label=f"{split} (running mean)")
            else:
                ax.plot(x, y, color=color, lw=1.6, marker="o" if len(y) < 60 else None, ms=3, label=split)
        log = name == "loss" and all((y > 0).all() for _, y in series[name].values())
        if log:
            ax.set_yscale("log")
        ax.set_title(_CURVE_TITLES.get(name, name) + (" (log scale)" if log else ""))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(series[name]) > 1 or (smooth and any(len(y) > 20 for _, y in series[name].values())):
            ax.legend(fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    return fig


def sample_slices_figure(samples: list[dict[str, Any]]) -> Figure:
    """Centre yx slices of training samples: image, label, predicted probability, error.

    Each sample is a dict with 3-D ``image``, ``label`` (object mask, 0/1 or probability),
    ``prediction`` (probability in [0, 1]) and a ``title``.
    """
    fig = Figure(figsize=(12, 3.1 * len(samples)), layout="constrained")
    axes = fig.subplots(len(samples), 4, squeeze=False)
    for row, sample in enumerate(samples):
        z = sample["image"].shape[0] // 2
        img = sample["image"][z].astype(np.float64)
        lab = sample["label"][z].astype(np.float64)
        pred = sample["prediction"][z].astype(np.float64)
        diff = (pred > 0.5).astype(np.int8) - (lab > 0.5).astype(np.int8)
        panels = [
            ("image", img, dict(cmap="gray")),
            ("label (object mask)", lab, dict(cmap="viridis", vmin=0, vmax=1)),
            ("prediction p(object)", pred, dict(cmap="viridis", vmin=0, vmax=1)),
            ("prediction − label (p>0.5)", diff, dict(cmap="coolwarm", vmin=-1, vmax=1)),
        ]
        for col, (name, data, kw) in enumerate(panels):
            ax = axes[row, col]
            im = ax.imshow(data, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=11)
            if col == 0:
                ax.set_ylabel(sample.get("title", ""), fontsize=9)
            if col == 3:
                cb = fig.colorbar(im, ax=ax, ticks=[-1, 0, 1], shrink=0.8)
                cb.ax.set_yticklabels(["missed", "ok", "extra"])
    fig.suptitle("Centre slices (yx) of training samples", fontsize=13)
    return fig


# -- helpers ----------------------------------------------------------------------------------
def _error_legend() -> list[Patch]:
    return [Patch(facecolor=ERROR_COLORS[k][:3], edgecolor="black", label=ERROR_CLASSES[k]) for k in (1, 2, 3, 4, 5)]


def _plane_index(axis: int, position: int) -> tuple:
    cut: list[Any] = [slice(None)] * 3
    cut[axis] = int(position)
    return tuple(cut)


def _aspect(axis: int, voxel_size: Sequence[float]) -> float:
    """Pixel aspect (row spacing / column spacing) of the plane cut across ``axis``."""
    rows, cols = [a for a in range(3) if a != axis]
    return float(voxel_size[rows]) / float(voxel_size[cols])


def _grey(image: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Image scaled to [0, 1] by its 1st–99th percentiles; mid-grey when there is no image."""
    if image is None:
        return np.full(shape, 0.75)
    img = np.asarray(image, np.float64)
    if img.ndim == 3:  # channels last: show the first
        img = img[..., 0]
    lo, hi = np.percentile(img, (1, 99))
    return np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)


def _running_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(y, np.float64), 0, 0.0))
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(0, i - window)
    return (c[i] - c[lo]) / (i - lo)


def _grey_rgb(image: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.repeat(_grey(image, shape)[..., None], 3, axis=-1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb

    return hsv_to_rgb(np.stack([h, s, v], axis=-1))
