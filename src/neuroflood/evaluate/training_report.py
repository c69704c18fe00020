"""``neuroflood report RUN_DIR``: a training run as a report with curves and sample slices.

Reads (the contract with the trainer):

``RUN_DIR/metrics.jsonl``
    One JSON object per line with at least ``step``, ``time_s`` (wall seconds since the run
    started), ``split`` (``"train"`` or ``"eval"``), ``fovs_per_s``, ``loss``, ``accuracy``,
    ``precision``, ``recall``, ``f1``; optionally ``lr`` (or ``learning_rate``). Missing or
    null values are skipped; a
    truncated last line (a run still writing) is ignored.
    Train records of ``neuroflood train`` also hold the per-rank step timing
    (``step_time_p50``, ``step_time_p90``, ``step_time_max``, ``step_time_cv``,
    ``allreduce_wait_s``, ``data_s``, ``compute_s``); when present they are plotted against
    wall time.
``RUN_DIR/config.json``
    The run's configuration (optional), shown as a table.
``RUN_DIR/samples/*.npz`` (optional)
    Training samples to show as centre slices: ``image``, ``label`` (or ``labels``, the
    object mask) and ``prediction`` (probability) or ``logits``, each 3-D (leading batch and
    channel axes of size ≥ 1 are reduced to the first item); optional ``step``.

Writes ``report.html`` (self-contained), ``report.md``, PNGs and ``summary.json`` (the last
train and eval values) into ``RUN_DIR/report`` or ``--out``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .report import Report

__all__ = ["read_metrics_log", "write_training_report", "check_run_dir", "CURVE_METRICS"]

CURVE_METRICS = ("loss", "accuracy", "precision", "recall", "f1", "fovs_per_s")
TIMING_METRICS = ("step_time_p50", "step_time_p90", "step_time_max", "step_time_cv", "allreduce_wait_s", "data_s", "compute_s")
LR_KEYS = ("lr", "learning_rate")  # the contract's name, and the one neuroflood train writes
MAX_SAMPLES = 6


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file, in file order.

    Raises :class:`DataError` for a missing or empty file, or a malformed line other than
    a truncated last one.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not the metrics log; give the run directory that `neuroflood train` wrote")
    if not path.is_file():
        raise DataError(f"{path} does not exist; give the run directory that `neuroflood train` wrote")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); is it the metrics log of `neuroflood train`?") from None
    records = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # the trainer may be writing this line right now
                continue
            raise DataError(f"{path} line {i} is not JSON; fix or remove that line") from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise DataError(f"{path} line {i} has no 'step'; each line must be an object with step, time_s, split, …")
        records.append(rec)
    if not records:
        raise DataError(f"{path} has no records yet; wait until the run has logged a step")
    return records


def write_training_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the report of the run in ``run_dir``; returns the summary (also summary.json)."""
    from .figures import curves_figure, sample_slices_figure, to_png

    run = Path(run_dir)
    check_run_dir(run)
    records = read_metrics_log(run / "metrics.jsonl")
    config = _read_config(run / "config.json")
    out = Path(out_dir) if out_dir is not None else run / "report"

    summary = _summary(records)
    report = Report(f"neuroflood training report: {run.name}")
    report.paragraph(f"Run directory {run}; {len(records)} logged records.")
    report.heading("Summary")
    report.table(["", *summary["columns"]], summary["rows"])

    for x_key, xlabel in (("step", "step"), ("time_s", "wall time (hours)" if _hours(records) else "wall time (s)")):
        series = _series(records, x_key, scale=1 / 3600 if x_key == "time_s" and _hours(records) else 1)
        if series:
            report.heading(f"Curves against {'steps' if x_key == 'step' else 'wall time'}")
            fig = curves_figure(series, xlabel, f"Training metrics against {xlabel}")
            report.figure(
                f"curves_{'steps' if x_key == 'step' else 'time'}",
                to_png(fig),
                "Train: per-step values (light) and their running mean (dark); eval: held-out evaluations. "
                "Accuracy, precision, recall and F1 are voxel metrics of the predicted object mask (p > 0.5).",
            )
    lr_key = next((k for k in LR_KEYS if any(k in r for r in records)), "lr")
    lr = _series(records, "step", keys=(lr_key,), splits=("train",))
    if lr:
        report.heading("Learning-rate schedule")
        report.figure(
            "lr_schedule", to_png(curves_figure(lr, "step", "Learning rate", ncols=1, smooth=False)), "Learning rate against step."
        )

    hours = _hours(records)
    timing = _series(records, "time_s", keys=TIMING_METRICS, splits=("train",), scale=1 / 3600 if hours else 1)
    if timing:
        report.heading("Step timing over ranks")
        report.figure(
            "step_timing",
            to_png(curves_figure(timing, "wall time (hours)" if hours else "wall time (s)", "Per-rank step timing", smooth=False)),
            "Per summary interval, over every rank and step: percentiles, maximum and coefficient of variation of a "
            "rank's work per step (example generation + forward/backward/update, without waiting for other ranks), "
            "and the mean seconds per step spent waiting in the gradient all-reduce, generating examples (data_s) "
            "and computing (compute_s). Raw per-rank times: RUN_DIR/step_times.jsonl.",
        )
    samples, skipped = _read_samples(run / "samples")
    report.heading("Predictions against labels")
    for note in skipped:
        print(f"neuroflood: warning: skipped sample {note}", file=sys.stderr)
        report.paragraph(f"Skipped sample {note}")
    if samples:
        report.figure(
            "samples",
            to_png(sample_slices_figure(samples)),
            "Centre yx slices of training samples: image, label mask, predicted probability, and "
            "where the thresholded prediction misses (blue) or adds (red) object voxels.",
        )
    else:
        report.paragraph(f"No samples in {run / 'samples'} (the trainer writes *.npz there when asked).")
    if config:
        report.heading("Configuration")
        report.table(["key", "value"], [[k, json.dumps(v) if not isinstance(v, str) else v] for k, v in _flatten(config).items()])

    result = {"run_dir": str(run), "n_records": len(records), "last": summary["last"]}
    report.write(out, "report", {"summary.json": (json.dumps(result, indent=2) + "\n").encode()})
    return result


def check_run_dir(run_dir: str | os.PathLike) -> None:
    """Raise DataError unless ``run_dir`` is an existing directory."""
    run = Path(run_dir)
    if run.is_file():
        raise DataError(f"{run} is a file, not a run directory; give the --run-dir directory of `neuroflood train`")
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist; give the --run-dir directory of `neuroflood train`")


# -- helpers ----------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); fix the file or remove it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); fix the file or remove it") from None
    if not isinstance(config, dict):
        raise DataError(f"{path} holds a JSON {type(config).__name__}, not an object of options; fix the file or remove it")
    return config


def _values(records: list[dict], x_key: str, key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        if r.get("split", "train") != split:
            continue
        x, y = r.get(x_key), r.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys)


def _series(
    records: list[dict], x_key: str, keys: tuple[str, ...] = CURVE_METRICS, splits: tuple[str, ...] = ("train", "eval"), scale: float = 1.0
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in keys:
        for split in splits:
            x, y = _values(records, x_key, key, split)
            if len(x):
                series.setdefault(key, {})[split] = (x * scale, y)
    return series


def _hours(records: list[dict]) -> bool:
    times = [r.get("time_s") for r in records]
    return max((float(t) for t in times if isinstance(t, (int, float))), default=0.0) > 3 * 3600


def _summary(records: list[dict]) -> dict[str, Any]:
    keys = ("step", "time_s", *CURVE_METRICS, *LR_KEYS)
    last = {}
    for split in ("train", "eval"):
        recs = [r for r in records if r.get("split", "train") == split]
        if recs:
            last[split] = {k: recs[-1][k] for k in keys if k in recs[-1]}
    rows = [[k, *[last[s].get(k, "") for s in last]] for k in keys if any(k in last[s] for s in last)]
    return {"columns": [f"last {s}" for s in last], "rows": rows, "last": last}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_samples(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The last MAX_SAMPLES readable samples, and a note for each file that was skipped."""
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    samples, skipped = [], []
    for path in files[-MAX_SAMPLES:]:
        try:
            samples.append(_read_sample(path))
        except Exception as e:  # being written, or foreign: the rest of the report is still useful
            skipped.append(f"{path.name}: {e}")
    return samples, skipped


def _read_sample(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    image = _first_3d(data.get("image"))
    label = _first_3d(data.get("label", data.get("labels")))
    if "prediction" in data:
        pred = _first_3d(data["prediction"])
    elif "logits" in data:
        logits = _first_3d(data["logits"])
        pred = None if logits is None else 1 / (1 + np.exp(-logits.astype(np.float64)))
    else:
        pred = None
    if image is None or label is None or pred is None or not (image.shape == label.shape == pred.shape):
        raise DataError(
            f"sample {path} needs 3-D arrays 'image', 'label' and 'prediction' (or 'logits') of one shape; it has {sorted(data)}"
        )
    step = data.get("step")
    title = path.stem + (f"\nstep {int(step)}" if step is not None else "")
    return {"image": image, "label": label, "prediction": pred, "title": title}


def _first_3d(a: np.ndarray | None) -> np.ndarray | None:
    """Drop leading batch/channel axes (taking item 0) and trailing size-1 axes down to 3-D."""
    if a is None:
        return None
    a = np.asarray(a)
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    while a.ndim > 3:
        a = a[0]
    return a if a.ndim == 3 else None
