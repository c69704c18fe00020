"""Outputs a command owns: who made them, who is writing them now.

Two rules protect a user's data (docs/user-guide.md, "What can go wrong"):

* **Ownership.** A command replaces only what it created itself. Directory outputs carry a
  small marker file (:data:`MARKER`) naming the command that wrote them; ``--overwrite``
  replaces a directory only if its marker names the same command. Anything else — a user's
  data file, a directory of unrelated files, one of the command's own inputs — is refused.
* **One writer.** Two runs on one output would silently lose one result. :func:`exclusive`
  takes an advisory lock (``flock``) on a lock file beside the output for the whole run; a
  second run on the same output is refused at once. The kernel drops the lock when a process
  dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

MARKER = ".neuroflood-output.json"
_held: set[Path] = set()  # locks this process holds (nested stages may enter them again)


def _lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output``: beside it, named after it (long names hashed)."""
    path = Path(os.path.abspath(os.fspath(output)))
    name = path.name or "root"
    if len(name) > 80:
        name = hashlib.sha1(name.encode()).hexdigest()
    return path.parent / f".{name}.neuroflood-lock"


@contextmanager
def exclusive(output: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``output`` for this process while inside; refuse if another run holds it.

    Re-entrant within one process: the demo runs other commands in-process on its output.

    ``what`` names the output in the message, e.g. ``"--out prep"``. The lock file is removed
    on the way out. A lock file that is already held means another run is writing there.
    """
    lock = _lock_path(output)
    if lock in _held:  # a stage of this same run (the demo runs commands in-process)
        yield
        return
    for folder in (lock.parent, *lock.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{folder} is a file, not a directory, so {what} cannot be written there; check the path")
            break
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder of {what} ({e.strerror or e}); choose a writable location") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write beside {what} ({e.strerror or e}); choose a writable location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"another neuroflood run is writing {what} (lock {lock} is held); wait for it to finish or choose another output"
                ) from None
            raise
        # The holder before us may have removed the file between our open and our lock:
        # only a lock on the file that is at that path now counts.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _held.add(lock)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        _held.discard(lock)
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def write_marker(directory: str | os.PathLike, command: str) -> None:
    """Mark ``directory`` as the output of ``command`` (see :func:`check_replaceable`)."""
    Path(directory, MARKER).write_text(json.dumps({"command": command}) + "\n")


def made_by(directory: str | os.PathLike) -> str | None:
    """The command whose marker ``directory`` holds, or None."""
    try:
        return json.loads(Path(directory, MARKER).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(out: str | os.PathLike, command: str, overwrite: bool, inputs: tuple[str | os.PathLike, ...] = ()) -> bool:
    """Whether ``out`` exists; raise ConfigError unless this command may replace it.

    ``out`` may be replaced only with ``overwrite``, only if it is a directory that an earlier
    run of ``command`` marked, and never if one of ``inputs`` lies inside it (or is it).
    """
    path = Path(out)
    if not path.exists() and not path.is_symlink():
        return False
    flag = f"neuroflood {command}"
    if not overwrite:
        raise ConfigError(f"{out} exists; choose another output or pass --overwrite to replace an earlier {flag} output")
    real = os.path.realpath(path)
    for spec in inputs:
        inp = os.path.realpath(container_path(os.fspath(spec)))
        if inp == real or inp.startswith(real.rstrip(os.sep) + os.sep) or real.startswith(inp.rstrip(os.sep) + os.sep):
            raise ConfigError(f"{out} holds an input of this run ({spec}); --overwrite never replaces an input, choose another output")
    if path.is_symlink() or not path.is_dir() or made_by(path) != command:
        raise ConfigError(f"{out} was not written by {flag}, so --overwrite will not replace it; choose another output")
    return True


def container_path(spec: str) -> str:
    """The file or directory that holds a volume spec's data (a plain path stays itself).

    ``a.h5:ds`` → ``a.h5``, ``b.zarr/x`` → ``b.zarr``, ``precomputed://dir`` → ``dir``.
    """
    spec = spec.split("://", 1)[-1]
    for ext in (".h5:", ".hdf5:", ".hdf:", ".npz:"):
        if ext in spec:
            return spec.split(ext, 1)[0] + ext[:-1]
    for ext in (".zarr", ".n5"):
        if ext + "/" in spec:
            return spec.split(ext + "/", 1)[0] + ext
    if ":" in spec and not os.path.exists(spec):
        return spec.rsplit(":", 1)[0]
    return spec


FILES_MANIFEST = ".neuroflood-files.json"


def check_files(directory: str | os.PathLike, names: list[str] | tuple[str, ...], command: str) -> None:
    """Refuse if one of ``names`` exists in ``directory`` and ``command`` did not write it.

    For commands that write a few named files into a directory that may hold other things
    (``evaluate``, ``report``, ``study``): a file that exists and that no earlier run of the same
    command wrote (per the directory's manifest, :data:`FILES_MANIFEST`) is never replaced.
    Call it before the work, so that a refusal costs nothing; it writes nothing.
    """
    folder = Path(directory)
    manifest = _read_manifest(folder)
    for name in names:
        if (folder / name).exists() and manifest.get(name) != command:
            raise ConfigError(
                f"{folder / name} exists and was not written by neuroflood {command}, which never replaces "
                "files it did not write; choose another output directory"
            )


def record_files(directory: str | os.PathLike, names: list[str] | tuple[str, ...], command: str) -> None:
    """Note in ``directory``'s manifest that ``command`` wrote ``names`` (after writing them)."""
    from .atomic import atomic_write_text

    folder = Path(directory)
    manifest = _read_manifest(folder)
    manifest.update({name: command for name in names})
    atomic_write_text(folder / FILES_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / FILES_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def check_writable_location(path: str | os.PathLike, what: str) -> None:
    """Raise ConfigError unless the nearest existing folder above ``path`` is a writable directory
    (so that ``path`` and the folders up to it can be created)."""
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {path}: {parent} is a file, not a directory; choose another location")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write in {parent} (permission denied); choose a writable location")
