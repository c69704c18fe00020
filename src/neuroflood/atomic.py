"""Write a file so that readers see the old one or the complete new one, never a part.

Every helper writes to a temporary file beside the target (same directory, so the final
``os.replace`` is an atomic rename on one file system), gives it the umask's permissions
(``mkstemp`` makes files private), and removes it on any failure. A failed write that names
no file (a full disk) is re-raised naming the target, so the one-line error says where.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(path: str | os.PathLike) -> None:
    """Give a file made by mkstemp/mkdtemp (private: 0600/0700) the umask's permissions."""
    mode = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, mode & ~_umask())


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Yield a binary file to write; it replaces ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        normal_permissions(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno is not None and e.filename is None:  # a full disk names no file: name ours
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """``np.savez[_compressed]`` of ``arrays`` to ``path`` atomically."""
    with atomic_file(path) as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)


def remove_tree(path: str | os.PathLike) -> None:
    """``rmtree`` that also wins against zarr's chunk writers still finishing in threads
    after a failed write (they recreate their folders); gives up quietly after a second."""
    import shutil
    import time

    path = Path(path)
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.05)
