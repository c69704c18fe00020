"""Training metrics: google/ffn's ``EvalTracker`` counts, and the run's metrics log.

:class:`EvalTracker` scores finished training examples as the reference does
(ffn-algorithms.md §2.8): on the centre eval crop (49³ for FIB-25 geometry), prediction
``logit >= logit(0.9)`` (fixed, independent of the move threshold) against ``label > 0.5``,
giving TP/TN/FP/FN, plus the weighted sigmoid cross-entropy of the crop (``patch_loss``).
Every FOV move is counted as correct (wanted and executed), missed (wanted, not executed) or
spurious (executed, not wanted), overall and per radius ``int(|offset|)``. Counters
accumulate until :meth:`EvalTracker.reset`.

:class:`MetricsLog` owns the summaries of a run: it accumulates steps between summaries and
writes each summary to ``RUN_DIR/metrics.jsonl`` and TensorBoard.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

EVAL_THRESHOLD_LOGIT = math.log(0.9 / 0.1)  # logit(0.9), fixed as in the reference


def sigmoid_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``max(x, 0) − x·z + log(1 + exp(−|x|))``, the numerically stable form TF uses."""
    x = logits.astype(np.float64, copy=False)
    return np.maximum(x, 0) - x * labels + np.log1p(np.exp(-np.abs(x)))


def centre_crop(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centred ``shape`` window of ``a`` (a view), as ``crop_and_pad(a, (0,0,0), shape)``."""
    start = [s // 2 - c // 2 for s, c in zip(a.shape, shape)]
    return a[tuple(slice(b, b + c) for b, c in zip(start, shape))]


class EvalTracker:
    """Accumulates move and voxel statistics of finished examples.

    Parameters
    ----------
    eval_shape : (z, y, x)
        Centre region of the patch that is scored (fov + 2·deltas·fov_moves).
    max_images : int
        Centre slices (label | prediction | weight) of the last finished patches kept for
        TensorBoard, per plane (16 in the reference).
    """

    def __init__(self, eval_shape: Sequence[int], max_images: int = 16):
        self.eval_shape = tuple(int(s) for s in eval_shape)
        self.max_images = max_images
        self.reset()

    def reset(self) -> None:
        self.moves = np.zeros(3, np.int64)  # correct, missed, spurious
        self.moves_by_radius: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))
        self.counts = np.zeros(4, np.int64)  # tp, tn, fp, fn
        self.patch_loss = 0.0
        self.patches = 0
        self.voxels = np.zeros(2, np.int64)  # total, masked (weight 0) in eval crops
        self.fov_stats = np.zeros(3, np.float64)  # total voxels, masked voxels, weight sum of FOVs
        self.step_loss = 0.0
        self.steps = 0
        self.fovs = 0
        self.images: deque[np.ndarray] = deque(maxlen=self.max_images)

    def record_move(self, wanted: bool, executed: bool, offset: Sequence[int]) -> None:
        """Count one FOV move decision (true negatives are not counted, as in the reference)."""
        r = int(np.linalg.norm(np.asarray(offset, np.float64)))
        k = 0 if wanted and executed else 1 if wanted else 2 if executed else -1
        if k >= 0:
            self.moves[k] += 1
            self.moves_by_radius[r][k] += 1

    def track_weights(self, weights: np.ndarray) -> None:
        """Loss-weight statistics of the FOVs of one step."""
        self.fov_stats += (weights.size, np.count_nonzero(weights == 0), float(weights.sum(dtype=np.float64)))

    def track_step(self, loss: float, fovs: int) -> None:
        """The optimizer loss of one step over ``fovs`` FOVs."""
        self.step_loss += float(loss)
        self.steps += 1
        self.fovs += int(fovs)

    def add_patch(self, labels: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> None:
        """Score a finished example (full-patch soft labels, canvas logits and weights)."""
        labels = centre_crop(labels, self.eval_shape)
        logits = centre_crop(logits, self.eval_shape)
        weights = centre_crop(weights, self.eval_shape)
        self.patch_loss += float(np.mean(weights * sigmoid_cross_entropy(logits, labels)))
        self.voxels += (labels.size, np.count_nonzero(weights == 0))
        pred = logits >= EVAL_THRESHOLD_LOGIT
        true = labels > 0.5
        tp = np.count_nonzero(pred & true)
        fp = np.count_nonzero(pred) - tp
        fn = np.count_nonzero(true) - tp
        self.counts += (tp, labels.size - tp - fp - fn, fp, fn)
        self.patches += 1
        if self.max_images:
            self.images.append(_ortho_panel(labels, logits, weights))

    def summary(self) -> dict[str, Any]:
        """Flat metrics dict: voxel metrics are ``None`` when no example finished."""
        tp, tn, fp, fn = (int(v) for v in self.counts)
        out: dict[str, Any] = {"patches": self.patches}
        if self.patches:
            precision = tp / max(tp + fp, 1)
            recall = tp / max(tp + fn, 1)
            out.update(
                accuracy=(tp + tn) / max(tp + tn + fp + fn, 1),
                precision=precision,
                recall=recall,
                specificity=tn / max(tn + fp, 1),
                f1=2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0,
                patch_loss=self.patch_loss / self.patches,
                masked_voxel_fraction=float(self.voxels[1] / self.voxels[0]),
            )
        else:
            out.update(accuracy=None, precision=None, recall=None, specificity=None, f1=None, patch_loss=None)
        out.update(tp=tp, tn=tn, fp=fp, fn=fn)
        out["loss"] = self.step_loss / self.steps if self.steps else None
        out["steps"], out["fovs"] = self.steps, self.fovs
        total = int(self.moves.sum())
        out["moves_total"] = total
        for i, name in enumerate(("correct", "missed", "spurious")):
            out[f"moves_{name}"] = float(self.moves[i] / total) if total else None
        for r in sorted(self.moves_by_radius):
            m = self.moves_by_radius[r]
            t = int(m.sum())
            out[f"moves_r{r}_total"] = t
            for i, name in enumerate(("correct", "missed", "spurious")):
                out[f"moves_r{r}_{name}"] = float(m[i] / t) if t else None
        if self.fov_stats[0]:
            out["fov_masked_voxel_fraction"] = float(self.fov_stats[1] / self.fov_stats[0])
            out["fov_average_weight"] = float(self.fov_stats[2] / self.fov_stats[0])
        return out


def _ortho_panel(labels: np.ndarray, logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """uint8 image: rows = centre zy/xy/zx planes, columns = label | prediction | weight."""
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
    rows = []
    for axis in range(3):
        idx = [slice(None)] * 3
        idx[axis] = labels.shape[axis] // 2
        planes = [np.asarray(a[tuple(idx)], np.float32) for a in (labels, prob, np.clip(weights, 0, 1))]
        rows.append(np.concatenate(planes, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 1), (0, width - r.shape[1]))) for r in rows]
    return (np.concatenate(rows, axis=0) * 255).astype(np.uint8)


class MetricsLog:
    """The run's summaries: accumulated between writes, written to metrics.jsonl and TensorBoard.

    Each optimizer step is counted with :meth:`track_step`; :meth:`summarize` turns the
    steps since the last summary (and the :class:`EvalTracker`'s counts) into one ``train``
    record with the interval's FOVs/s and steps/s, writes it and starts the next interval.
    Time spent inside :meth:`paused` (evaluation, checkpoints) does not count against the
    rates. :meth:`write_eval` writes an ``eval`` record.

    ``RUN_DIR/metrics.jsonl`` (one JSON object per line, flushed as written) is the contract
    read by scripts and dashboards: every line has ``step``, ``time_s``, ``split`` (``train``
    or ``eval``), ``fovs_per_s``, ``loss``, ``accuracy``, ``precision``, ``recall`` and ``f1``
    (``null`` where undefined), plus the other tracker values; ``train`` lines end with
    ``steps_per_s``, the step-timing keys (``step_time_p50``, ``step_time_p90``,
    ``step_time_max``, ``step_time_cv``, ``allreduce_wait_s``, ``data_s``, ``compute_s``) and
    ``learning_rate``. With ``run_dir=None`` (ranks other than 0) nothing
    is written; the records are still returned.

    Parameters
    ----------
    run_dir : str or None
    tracker : EvalTracker
        The training generators' tracker; reset after each summary.
    fovs_per_step : int
        FOVs of one step over all workers (the global batch).
    tensorboard : bool
        Also write TensorBoard events to ``RUN_DIR/tb``.
    progress : bool
        Show a tqdm progress bar on stderr, from ``step`` to ``total_steps`` (None: open-ended).
    """

    def __init__(
        self,
        run_dir: str | None,
        tracker: EvalTracker,
        fovs_per_step: int = 1,
        tensorboard: bool = True,
        progress: bool = False,
        total_steps: int | None = None,
        step: int = 0,
    ):
        self.tracker, self.fovs_per_step = tracker, fovs_per_step
        self.path = f"{run_dir}/metrics.jsonl" if run_dir is not None else None
        self._file = open(self.path, "a", buffering=1) if self.path is not None else None
        self._tb = None
        if tensorboard and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(f"{run_dir}/tb")
        from tqdm import tqdm

        self._bar = tqdm(total=total_steps, initial=step, disable=not progress, file=sys.stderr, unit="step", dynamic_ncols=True)
        self.smoothed_loss: float | None = None
        self.learning_rate = 0.0  # of the last step counted
        self._start_interval()

    def _start_interval(self) -> None:
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def track_step(self, loss: float, learning_rate: float) -> None:
        """Count one optimizer step: its loss (over the FOVs of all workers) and learning rate."""
        self.tracker.track_step(loss, self.fovs_per_step)
        self._interval_steps += 1
        self.learning_rate = learning_rate
        self.smoothed_loss = loss if self.smoothed_loss is None else 0.95 * self.smoothed_loss + 0.05 * loss
        self._bar.update(1)

    @property
    def pending(self) -> bool:
        """Whether steps were counted since the last summary."""
        return self._interval_steps > 0

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in this block does not count against the interval's FOVs/s and steps/s."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._interval_start += time.perf_counter() - t0

    def summarize(self, step: int, time_s: float, timing: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the ``train`` record of the steps since the last summary and start anew.

        ``timing``: the interval's per-rank step-time statistics
        (:func:`~neuroflood.train.timing.timing_stats`), written before ``learning_rate``.
        """
        seconds = max(time.perf_counter() - self._interval_start, 1e-9)
        fovs_per_s = self._interval_steps * self.fovs_per_step / seconds
        metrics = self.tracker.summary()
        metrics["steps_per_s"] = self._interval_steps / seconds
        metrics.update(timing or {})
        record = {"step": step, "time_s": round(time_s, 3), "split": "train", "fovs_per_s": fovs_per_s, **metrics}
        record["learning_rate"] = self.learning_rate
        self.write(record, list(self.tracker.images))
        self.tracker.reset()
        self._bar.set_postfix(loss=f"{self.smoothed_loss:.4f}", f1=_fmt(metrics["f1"]), fovs_s=f"{fovs_per_s:.2f}", refresh=False)
        self._start_interval()
        return record

    def write_eval(self, step: int, time_s: float, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write the ``eval`` record of an evaluation's summary (which holds its ``fovs_per_s``)."""
        metrics = dict(metrics)
        record = {"step": step, "time_s": round(time_s, 3), "split": "eval", "fovs_per_s": metrics.pop("fovs_per_s"), **metrics}
        self.write(record)
        return record

    def write(self, record: dict[str, Any], images: Sequence[np.ndarray] = ()) -> None:
        """Append ``record`` (non-finite numbers as ``null``) and its images, if this log writes."""
        if self._file is None:
            return
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self._file.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
        if self._tb is not None:
            split, step = record["split"], int(record["step"])
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
            for i, img in enumerate(images):
                self._tb.add_image(f"{split}/final_slices/{i}", img, step, dataformats="HW")
            self._tb.flush()

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def summary_line(record: dict[str, Any]) -> str:
    """A short human-readable line for a metrics record."""
    keys = ("step", "split", "loss", "accuracy", "precision", "recall", "f1", "fovs_per_s")
    return json.dumps({k: (round(record[k], 4) if isinstance(record.get(k), float) else record.get(k)) for k in keys})


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")
