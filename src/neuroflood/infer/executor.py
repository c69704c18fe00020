"""Run the network for Canvases: one request at a time, or batched across Canvas threads.

google/ffn ``ffn/inference/executor.py`` (ffn-algorithms.md §3.6). A Canvas calls
``client.predict(image, seed) -> logits`` with one FOV (z, y, x float32 arrays); the
executor runs the model and returns ``seed + update`` logits of the same shape.

- :class:`LocalExecutor` runs each request immediately in the calling thread: the CPU path,
  no queueing or thread hand-off.
- :class:`BatchedExecutor` is a server thread that collects requests of several Canvases
  (each in its own thread, each a registered client) until ``min(active clients,
  batch_size)`` are waiting, runs them as one batch and hands each row back: the way to
  fill a GPU.

Both take the device (``auto``/``cpu``/``cuda[:N]``), the precision (fp32, or bf16/fp16
autocast; bf16 on CPU only where the CPU has bf16 instructions, see
:mod:`neuroflood.precision`) and the TF32 switch for CUDA convolutions. Under autocast only
the network runs in bf16: the logits come back float32, and the canvas and thresholds stay
float32. On CPU a batch of FOVs gives each FOV exactly the logits it gets alone (oneDNN,
see :mod:`neuroflood.model.convstack`), so batching never changes a segmentation there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..precision import check_precision

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → ``cuda`` if available else ``cpu``; a CUDA device must exist."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use device = 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist (this machine has {torch.cuda.device_count()} CUDA devices)")
    elif dev.type != "cpu":
        raise ConfigError(f"device {name!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def fov_bytes(model: torch.nn.Module) -> int:
    """Rough memory of one FOV in a forward pass: image, seed and output, plus about three
    live feature maps of the convolution stack (float32)."""
    cfg = model.config
    voxels = int(np.prod(cfg.fov_size))
    return 4 * voxels * (3 + 3 * int(cfg.features))


def device_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes: the GPU's, or this machine's RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_batch_memory(model: torch.nn.Module, batch_size: int, device: str = "auto") -> None:
    """Raise ConfigError if ``batch_size`` FOVs cannot fit in the memory of ``device``.

    A batch is allocated as one block: a size beyond the machine would otherwise fail deep
    inside torch with a traceback, after the image was read.
    """
    dev = resolve_device(device)
    per_fov, total = fov_bytes(model), device_memory(dev)
    if batch_size * per_fov > total:
        raise ConfigError(
            f"batch_size {batch_size} needs about {_size(batch_size * per_fov)} of memory (about {_size(per_fov)} per FOV "
            f"of {tuple(model.config.fov_size)} voxels), more than the {_size(total)} of {dev}; "
            f"use batch_size {max(1, total // per_fov // 2)} or less"
        )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


class _Runner:
    """The model on its device with the chosen arithmetic; runs one batch."""

    def __init__(self, model: torch.nn.Module, device: str = "auto", precision: str = "fp32", tf32: bool = False):
        self.device = resolve_device(device)
        # bf16 on a CPU without bf16 instructions is refused (oneDNN would emulate it)
        self.precision = check_precision(precision, self.device.type)
        self.model = model.to(self.device).eval()
        if self.device.type == "cuda":
            # Global switches: PyTorch lets cuDNN use TF32 by default; fidelity needs it off.
            torch.backends.cudnn.allow_tf32 = bool(tf32)
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.benchmark = True  # FOV shapes never change
        self.fovs = 0
        self.batches = 0
        self.seconds = 0.0

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def run(self, images: torch.Tensor, seeds: torch.Tensor) -> np.ndarray:
        """``[B, Z, Y, X]`` CPU float32 tensors in, ``[B, Z, Y, X]`` float32 logits out."""
        t0 = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            if self.device.type == "cpu":
                out = self.model(images.unsqueeze(1), seeds.unsqueeze(1))
            else:
                img = images.to(self.device, non_blocking=True).unsqueeze(1)
                seed = seeds.to(self.device, non_blocking=True).unsqueeze(1)
                out = self.model(img, seed).cpu()
        logits = np.ascontiguousarray(out[:, 0].float().numpy())
        self.seconds += time.perf_counter() - t0
        self.fovs += len(logits)
        self.batches += 1
        return logits

    def stats(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "fovs": self.fovs,
            "batches": self.batches,
            "network_seconds": round(self.seconds, 3),
        }


class LocalExecutor:
    """Runs each FOV request at once in the calling thread (one request per forward pass).

    It is its own client: ``client()`` returns ``self``; a lock serializes callers from
    several threads.
    """

    def __init__(self, model: torch.nn.Module, device: str = "auto", precision: str = "fp32", tf32: bool = False):
        self.runner = _Runner(model, device, precision, tf32)
        self._img: torch.Tensor | None = None
        self._seed: torch.Tensor | None = None
        self._lock = threading.Lock()

    def client(self) -> LocalExecutor:
        return self

    def _buffers(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._img is None or tuple(self._img.shape[1:]) != shape:
            pin = self.runner.device.type == "cuda"
            self._img = torch.empty((1, *shape), dtype=torch.float32, pin_memory=pin)
            self._seed = torch.empty((1, *shape), dtype=torch.float32, pin_memory=pin)
        return self._img, self._seed

    def predict(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """Logits (``seed + update``) for one FOV; image and seed are z, y, x float32."""
        with self._lock:
            img_t, seed_t = self._buffers(image.shape)
            img_t.numpy()[0] = image
            seed_t.numpy()[0] = seed
            return self.runner.run(img_t, seed_t)[0]

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return self.runner.stats()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Request:
    __slots__ = ("image", "seed", "done", "result", "error")

    def __init__(self, image: np.ndarray, seed: np.ndarray):
        self.image, self.seed = image, seed
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None


class ExecutorClient:
    """One Canvas's handle on a :class:`BatchedExecutor`; ``close()`` deregisters it.

    A client registered at once counts as active from the start: batches wait for its
    requests. A ``lazy`` one registers with its first request, so that a Canvas still
    preparing (reading its image, placing its seeds) holds no other Canvas's batch back.
    """

    def __init__(self, executor: BatchedExecutor, lazy: bool = False):
        self._executor = executor
        self._open = True
        self._registered = not lazy

    def predict(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        if not self._open:
            raise RuntimeError("this executor client is closed")
        req = _Request(image, seed)
        self._executor._submit(req, register=not self._registered)
        self._registered = True
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def close(self) -> None:
        if self._open:
            self._open = False
            if self._registered:
                self._executor._deregister()

    def __enter__(self) -> ExecutorClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BatchedExecutor:
    """A server thread that batches the FOV requests of several Canvas threads.

    It waits until ``min(active clients, batch_size)`` requests are pending, so a batch is
    always as full as the clients can make it; a client that finishes must ``close()`` so
    that the others do not wait for it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int = 1,
        device: str = "auto",
        precision: str = "fp32",
        tf32: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size} must be >= 1")
        if hasattr(model, "config"):
            check_batch_memory(model, batch_size, device)
        self.runner = _Runner(model, device, precision, tf32)
        self.batch_size = int(batch_size)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._active = 0
        self._stop = False
        self._bufs: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._thread = threading.Thread(target=self._serve, name="neuroflood-executor", daemon=True)
        self._thread.start()

    def client(self, lazy: bool = False) -> ExecutorClient:
        """A new client (one per Canvas), registered now or, if ``lazy``, with its first request."""
        with self._cond:
            if self._stop:
                raise RuntimeError("the executor is closed")
            if not lazy:
                self._active += 1
        return ExecutorClient(self, lazy)

    def _deregister(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def _submit(self, req: _Request, register: bool = False) -> None:
        with self._cond:
            if self._stop:
                raise RuntimeError("the executor is closed")
            self._active += int(register)
            self._pending.append(req)
            self._cond.notify_all()

    def _ready(self) -> bool:
        return bool(self._pending) and len(self._pending) >= min(max(self._active, 1), self.batch_size)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._ready():
                    self._cond.wait()
                if self._stop and not self._pending:
                    return
                batch = self._pending[: self.batch_size]
                del self._pending[: len(batch)]
            try:
                logits = self._run(batch)
                for i, req in enumerate(batch):
                    req.result = logits[i]
            except BaseException as e:  # hand the failure to every waiting Canvas
                for req in batch:
                    req.error = e
            for req in batch:
                req.done.set()

    def _run(self, batch: list[_Request]) -> np.ndarray:
        shape = batch[0].image.shape
        if any(r.image.shape != shape for r in batch):
            raise ValueError("all FOV requests of one executor must have the same shape")
        n = len(batch)
        if shape not in self._bufs or len(self._bufs[shape][0]) < n:
            # as many rows as the clients can fill, not batch_size: one Canvas fills one
            rows = min(self.batch_size, max(n, self._active))
            pin = self.runner.device.type == "cuda"
            self._bufs[shape] = (
                torch.empty((rows, *shape), dtype=torch.float32, pin_memory=pin),
                torch.empty((rows, *shape), dtype=torch.float32, pin_memory=pin),
            )
        img_t, seed_t = self._bufs[shape]
        img_np, seed_np = img_t.numpy(), seed_t.numpy()
        for i, req in enumerate(batch):
            img_np[i] = req.image
            seed_np[i] = req.seed
        return self.runner.run(img_t[:n], seed_t[:n])

    def close(self) -> None:
        """Stop the server once pending requests are answered."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    def stats(self) -> dict[str, Any]:
        return {**self.runner.stats(), "batch_size": self.batch_size}

    def __enter__(self) -> BatchedExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_executor(
    model: torch.nn.Module, batch_size: int = 1, device: str = "auto", precision: str = "fp32", tf32: bool = False
) -> LocalExecutor | BatchedExecutor:
    """A :class:`LocalExecutor` for batch size 1, else a :class:`BatchedExecutor`."""
    if batch_size <= 1:
        return LocalExecutor(model, device, precision, tf32)
    return BatchedExecutor(model, batch_size, device, precision, tf32)


def run_with_clients(todo: list[int], clients: list[Any], work_one: Any, name: str = "canvas") -> None:
    """``work_one(i, client)`` for every ``i`` of ``todo``, one thread per executor client.

    Each thread takes the next item until none is left; the first exception stops the others
    from taking more and is raised here once every thread has finished. Clients are entered
    (``with client``) by their thread, so a batching executor knows when one is done.
    """
    lock = threading.Lock()
    queue = list(todo)
    errors: list[BaseException] = []

    def work(client: Any) -> None:
        with client:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    i = queue.pop(0)
                try:
                    work_one(i, client)
                except BaseException as e:  # re-raised in the caller's thread
                    with lock:
                        errors.append(e)
                    return

    threads = [threading.Thread(target=work, args=(c,), name=f"{name}-{k}") for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
