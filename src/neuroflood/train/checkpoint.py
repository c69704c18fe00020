"""Training checkpoints: weights, optimizer, step, RNGs and example-generator state.

Layout of ``RUN_DIR/checkpoints/step-00001234/``::

    model/           native model checkpoint (model.safetensors + config.json): usable as is
                     by ``neuroflood segment`` and ``--init-from``
    state.pt         torch.save of plain containers and tensors: optimizer state, step,
                     torch RNG state, generator states, wall time (loaded with
                     ``weights_only=True``: nothing is unpickled)

A checkpoint is written under a temporary name and renamed into place, and an old one is
renamed away before it is deleted, so a directory named ``step-*`` is always complete, even
when the process is killed at any instant. Temporary names carry the writer's pid and host
(``.step-00001234.tmp-PID@HOST-XXXX``); what a killed writer left behind is removed by the
next save on that host. Files are written by Python (``torch.save`` into memory first), so a
full disk is an ``OSError`` (ENOSPC) naming the file, and the previous checkpoint is kept.
Retention follows TensorFlow's Saver: the newest ``keep_last`` plus, among older ones, one
per ``keep_every_hours`` (those carry a ``KEEP`` marker).
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import socket
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
# Temporary (being written) and trash (being deleted) directories: .step-N.(tmp|del)-PID@HOST-X
_SCRATCH = re.compile(r"^\.step-\d{8,}\.(?:tmp|del)-(\d+)@(.+)-[A-Za-z0-9_]*$")


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
    """Write ``state`` (must hold ``step``) and ``model`` atomically; returns the directory.

    On any failure (a full disk: ``OSError`` ENOSPC) the temporary directory is removed and
    the checkpoints already there are untouched.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(root)
    final = root / f"step-{int(state['step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{_owner()}-", dir=root))
    try:
        try:
            save_model(model, tmp / "model", provenance={"step": int(state["step"]), **(provenance or {})})
        except Exception as e:
            raise _as_os_error(e, tmp / "model" / "model.safetensors") from e
        buffer = io.BytesIO()  # torch.save reports a full disk only as an obscure RuntimeError
        torch.save({**state, "time": time.time()}, buffer)
        _write_durably(tmp / "state.pt", buffer.getbuffer())
        if final.exists():  # the same step saved again (e.g. at the end right after a periodic save)
            _discard(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _write_durably(path: Path, data: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # some file systems report a full disk only here


def _as_os_error(e: Exception, path: Path) -> Exception:
    """safetensors reports I/O failures as ``SafetensorError("... (os error 28)")``: make
    that the ``OSError`` it is, so that the CLI says "No space left on device" on one line."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os error (\d+)", str(e))
    if not m:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code) if code in errno.errorcode else str(e), str(path))


def _discard(path: Path) -> None:
    """Delete a checkpoint directory: rename it out of sight first, so that a kill during the
    deletion never leaves a half-deleted ``step-*`` behind."""
    trash = path.with_name(f".{path.name}.del-{_owner()}-{os.urandom(4).hex()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_scratch(root: Path) -> None:
    """Remove temporary and trash directories of writers on this host that no longer run."""
    host = socket.gethostname()
    for p in root.iterdir():
        m = _SCRATCH.match(p.name)
        if m and m.group(2) == host and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


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
            _discard(p)


def _saved_time(path: Path) -> float:
    try:
        return (path / "state.pt").stat().st_mtime
    except FileNotFoundError:  # damaged by hand (or by an older version killed mid-delete)
        return path.stat().st_mtime
