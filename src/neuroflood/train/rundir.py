"""The run directory: held by one run at a time, cleaned up after a failed start.

:func:`hold_run_dir` refuses a second run on the same directory (a lock beside it, see
:func:`neuroflood.outputs.exclusive`) and, when a run fails before it wrote a checkpoint or
metrics, removes what it wrote; a directory that existed before is never removed.
:func:`prepare_run_dir` creates it and checks that it is writable;
:func:`write_config` writes the resolved ``RUN_DIR/config.json`` atomically.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import ConfigError
from ..outputs import exclusive, made_by, write_marker
from .checkpoint import latest_checkpoint
from .config import TrainConfig

CONFIG_FILE = "config.json"

# The run directory that this process (or the ``--nproc-per-node`` launcher that started it)
# holds: taking the lock again would be refused by the holder itself.
RUN_DIR_HELD = "NEUROFLOOD_RUN_DIR_HELD"


class RunDirGuard:
    """What :func:`hold_run_dir` yields; set ``failed`` for a failure that raised nothing."""

    failed = False


@contextmanager
def hold_run_dir(run_dir: str, holder: bool = True) -> Iterator[RunDirGuard]:
    """Hold ``run_dir`` for one run: refuse a second run there, clean up after a failed start.

    The process that writes the run directory (rank 0, or the ``--nproc-per-node`` launcher)
    takes :func:`neuroflood.outputs.exclusive` on it. If the run fails (an exception, or
    ``guard.failed``) before the directory holds a checkpoint or metrics, what the run wrote
    is removed: the directory and the parents made for it if it created them, else only the
    new entries. A run refused on bad input leaves nothing behind, and a directory that
    existed before is never removed.
    """
    guard = RunDirGuard()
    path = os.path.abspath(run_dir)
    if not holder or os.environ.get(RUN_DIR_HELD) == path:
        yield guard
        return
    check_run_dir_writable(run_dir)
    fresh = first_missing(Path(path))
    existing = set(os.listdir(path)) if fresh is None and os.path.isdir(path) else set()
    try:
        with exclusive(run_dir, f"--run-dir {run_dir}"):
            check_run_dir_is_ours(Path(path), run_dir)
            # Nested holders in this process and the launcher's workers see that it is held.
            previous = os.environ.get(RUN_DIR_HELD)
            os.environ[RUN_DIR_HELD] = path
            try:
                yield guard
            except BaseException:
                guard.failed = True
                raise
            finally:
                if previous is None:
                    os.environ.pop(RUN_DIR_HELD, None)
                else:
                    os.environ[RUN_DIR_HELD] = previous
                if guard.failed:
                    remove_if_unused(Path(path), keep=existing if fresh is None else None)
    finally:
        if guard.failed and fresh is not None:  # now that the lock file beside run_dir is gone
            remove_empty_dirs(Path(path).parent, fresh)


def first_missing(path: Path) -> Path | None:
    """The outermost directory on the way to ``path`` (itself included) that does not exist yet."""
    missing = None
    while not os.path.lexists(path):
        missing, path = path, path.parent
    return missing


def remove_if_unused(run_dir: Path, keep: set[str] | None) -> None:
    """After a failed run: remove what it wrote if that holds no checkpoint and no metrics.

    ``keep=None``: the run created ``run_dir``, remove all of it; else remove only the entries
    that are not in ``keep`` (the ones there before the run).
    """
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir() or latest_checkpoint(run_dir) is not None or (metrics.exists() and metrics.stat().st_size > 0):
        return
    if keep is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(os.listdir(run_dir)) - keep:
        entry = run_dir / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_empty_dirs(path: Path, top: Path) -> None:
    """rmdir ``path`` and its parents up to ``top`` while they are empty."""
    while path == top or top in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def check_run_dir_writable(run_dir: str) -> None:
    """A one-line refusal, before anything is written, for a run directory that cannot be made."""
    path = Path(os.path.abspath(run_dir))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write to run directory {run_dir} (a file is there); choose a writable --run-dir")
    parent = path.parent  # the lock file goes beside the run directory
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write to run directory {run_dir} ({parent} is a file); choose a writable --run-dir")
    for d in ([path] if path.exists() else []) + [parent]:
        if not os.access(d, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write to run directory {run_dir} ({d} is not writable); choose a writable --run-dir")


def prepare_run_dir(run_dir: str | os.PathLike) -> Path:
    """Create ``run_dir``, check that files can be written there (one-line ConfigError) and
    mark it as a training run's (see :func:`check_run_dir_is_ours`)."""
    path = Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
        if made_by(path) != "train":
            write_marker(path, "train")
    except OSError as e:
        raise ConfigError(f"cannot write to run directory {run_dir} ({e.strerror or e}); choose a writable --run-dir") from None
    return path


# What a run directory of neuroflood train holds; a directory with only these (or nothing) is
# a run's, and one with checkpoints or a metrics log is a run from before run markers existed.
RUN_FILES = {"config.json", "metrics.jsonl", "launches.jsonl", "step_times.jsonl", "checkpoints", "tb", "samples"}


def check_run_dir_is_ours(path: Path, shown: str) -> None:
    """Refuse a run directory that holds files neuroflood train did not write.

    Training writes ``config.json`` and logs into its run directory; a folder of the user's
    (their own ``config.json``, notes, data) is never written into.
    """
    if not path.is_dir() or made_by(path) == "train":
        return
    entries = {e for e in os.listdir(path) if not e.startswith(".")}
    if not entries or ((path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()) and entries <= RUN_FILES:
        return
    raise ConfigError(
        f"--run-dir {shown} holds files that neuroflood train did not write ({', '.join(sorted(entries)[:3])}); "
        "choose a new or empty run directory"
    )


def write_config(run_dir: str | os.PathLike, config: TrainConfig) -> None:
    """Write the resolved config to ``RUN_DIR/config.json`` (atomically)."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, config.to_json() + "\n")
