"""Training checkpoints: weights, optimizer, step, RNGs and example-generator state.

Layout of ``RUN_DIR/checkpoints/step-00001234/``::

    model/           native model checkpoint (model.safetensors + config.json): usable as is
                     by ``neuroflood segment`` and ``--init-from``
    state.pt         torch.save of plain containers and tensors: optimizer state, step,
                     torch RNG state, generator states, wall time (loaded with
                     ``weights_only=True``: nothing is unpickled)

A checkpoint is written under a temporary name and renamed into place, so a directory named
``step-*`` is always complete. Retention follows TensorFlow's Saver: the newest ``keep_last``
plus, among older ones, one per ``keep_every_hours`` (those carry a ``KEEP`` marker).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..model import FFNModel, load_model, save_model

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d{8,})$")


@dataclass
class TrainingCheckpoint:
    """A loaded checkpoint: the model plus the rest of the training state."""

    path: Path
    model: FFNModel
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | os.PathLike, model: FFNModel, state: dict[str, Any], provenance: dict | None = None) -> Path:
    """Write ``state`` (must hold ``step``) and ``model`` atomically; returns the directory."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(state['step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_model(model, tmp / "model", provenance={"step": int(state["step"]), **(provenance or {})})
        torch.save({**state, "time": time.time()}, tmp / "state.pt")
        if final.exists():  # the same step saved again (e.g. at the end right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainingCheckpoint:
    """Load a training checkpoint directory written by :func:`save_checkpoint`."""
    path = Path(path)
    state_path = path / "state.pt"
    if not state_path.exists() or not (path / "model").is_dir():
        raise CheckpointError(f"{path} is not a neuroflood training checkpoint (needs model/ and state.pt)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{state_path} cannot be read ({type(e).__name__}: {e}); delete this checkpoint to resume from an older one") from None
    model = load_model(path / "model", device=device)
    return TrainingCheckpoint(path, model, state)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, keep_every_hours: float | None, run_start: float) -> None:
    """Delete old checkpoints beyond the newest ``keep_last``, sparing one per period."""
    dirs = checkpoint_dirs(run_dir)
    old = dirs[:-keep_last] if keep_last > 0 else dirs
    anchor = run_start
    for p in dirs:
        if (p / "KEEP").exists():
            anchor = max(anchor, _saved_time(p))
    for p in old:
        if (p / "KEEP").exists():
            continue
        t = _saved_time(p)
        if keep_every_hours is not None and t >= anchor + keep_every_hours * 3600:
            (p / "KEEP").touch()
            anchor = t
        else:
            shutil.rmtree(p, ignore_errors=True)


def _saved_time(path: Path) -> float:
    return (path / "state.pt").stat().st_mtime
