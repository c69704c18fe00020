"""Segment one subvolume end to end: in memory (:func:`segment_subvolume`) or file to file.

:func:`segment_subvolume` works on an image array and returns a
:class:`SegmentationResult`; it does no file I/O except the optional inference checkpoint
(and reading a previous run's origins for PolicyInvertOrigins' ``segmentation``), so blockwise segmentation of large volumes can call it per block. :func:`segment_volume`
adds the files: open the image, crop the box, skip or refuse an existing output, write the
result atomically and a JSON summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..bbox import BoundingBox
from ..errors import DataError, VolumeError
from ..outputs import exclusive
from ..volume import open_volume
from .canvas import Canvas
from .config import InferenceRequest
from .executor import BatchedExecutor, make_executor, run_with_clients
from .inputs import as_request, build_mask, check_finite, normalize_image, validate
from .movement import MovementRestrictor
from .results import SegmentationResult
from .seeds import SeedPolicyFactory, resolve_seed_policy
from .storage import (
    check_output,
    default_checkpoint_path,
    load_canvas_checkpoint,
    load_origins,
    output_kind,
    read_output,
    save_canvas_checkpoint,
    to_output_ids,
    write_segmentation,
)


# -- in memory -------------------------------------------------------------------------------
def segment_subvolume(
    model: torch.nn.Module,
    image: np.ndarray,
    request: InferenceRequest | dict[str, Any] | None = None,
    *,
    corner: Sequence[int] = (0, 0, 0),
    mask: np.ndarray | None = None,
    seed_mask: np.ndarray | None = None,
    init_segmentation: np.ndarray | None = None,
    executor: Any = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_key: dict[str, Any] | None = None,
    callback: Callable[[str, Canvas], None] | None = None,
    progress: bool = False,
    keep_checkpoint: bool = False,
    seed_policy: SeedPolicyFactory | None = None,
) -> SegmentationResult:
    """Segment one subvolume ``image`` (z, y, x, raw intensities) with ``model``.

    Parameters
    ----------
    model : FFNModel
        The network (its ``config`` gives FOV, deltas and default image statistics).
    image : array (z, y, x)
        Raw image of the subvolume; normalized here.
    request : InferenceRequest or dict, optional
        Options, policies and executor settings; default: the FIB-25 reference settings.
    corner : (z, y, x)
        Global start of the subvolume (mask expressions and results use it).
    mask, seed_mask : bool arrays, optional
        Movement and seed masks; default: built from ``request.masks`` / ``seed_masks``.
    init_segmentation : int array, optional
        Existing segments, kept as obstacles.
    executor : optional
        An executor or client with ``predict``; default: one made from the request (closed
        at the end). Pass a :class:`BatchedExecutor`'s ``client()`` to share a GPU.
    checkpoint_path : path, optional
        Inference checkpoint: restored if it exists, written every
        ``request.checkpoint_interval`` seconds (0: never), deleted when the subvolume is done.
    checkpoint_key : dict, optional
        Identifies the request in the checkpoint (a checkpoint of another key is refused);
        default: the request itself.
    keep_checkpoint : bool
        Leave the last checkpoint in place when done; the caller deletes it once the result
        is safely written (so a failed output write loses no more than one interval).
    callback : callable, optional
        ``callback(event, canvas)``, see :class:`Canvas`.
    progress : bool
        Show a progress bar (voxels segmented, objects, FOVs/s) on stderr.
    seed_policy : SeedPolicyFactory, optional
        The seed policy to use instead of the request's (blockwise: the request's, placed in
        the job); default: ``request.seed_policy`` with its arguments.

    Returns
    -------
    SegmentationResult
    """
    request = as_request(request)
    image = np.asarray(image)
    validate(model, image.shape, request)
    check_finite(image, corner)
    t0 = time.perf_counter()
    norm = normalize_image(model, image, request)
    if mask is None:
        mask = build_mask(request.masks, image, corner)
    if seed_mask is None:
        seed_mask = build_mask(request.seed_masks, image, corner)
    for name, m in (("mask", mask), ("seed_mask", seed_mask)):
        if m is not None and np.shape(m) != image.shape:
            raise DataError(f"{name} has shape {np.shape(m)}, the image {image.shape}; give one of the same shape")
    restrictor = MovementRestrictor(mask=mask, seed_mask=seed_mask)

    own_executor = executor is None
    if own_executor:
        executor = make_executor(model, request.batch_size, request.device, request.precision, request.tf32)
    client = executor.client() if hasattr(executor, "client") else executor
    key = checkpoint_key if checkpoint_key is not None else _request_key(request)

    elapsed_before = 0.0  # seconds spent before the checkpoint this run resumed from

    def save(canvas: Canvas, partial: int, rewind: bool) -> None:
        assert checkpoint_path is not None
        elapsed = elapsed_before + time.perf_counter() - t0
        save_canvas_checkpoint(checkpoint_path, canvas, partial, rewind, key, elapsed_seconds=elapsed)

    bar = _ProgressBar(image.size, enabled=progress)

    def on_event(event: str, canvas: Canvas) -> None:
        bar(event, canvas)
        if callback is not None:
            callback(event, canvas)

    movement_args = dict(request.movement_policy_args)
    canvas = Canvas(
        norm,
        client,
        request.options,
        fov_size=model.config.fov_size,
        deltas=tuple(movement_args.pop("deltas", model.config.deltas)),
        restrictor=restrictor,
        movement_policy=request.movement_policy,
        movement_policy_args=movement_args,
        voxel_size=request.voxel_size,
        keep_probability_maps=request.keep_probability_maps,
        checkpoint=save if checkpoint_path is not None else None,
        checkpoint_interval=request.checkpoint_interval,
        callback=on_event,
    )
    try:
        if init_segmentation is not None:
            canvas.init_segmentation(init_segmentation)
        if checkpoint_path is not None and os.path.exists(checkpoint_path):
            state = load_canvas_checkpoint(checkpoint_path, key)
            elapsed_before = float(state.pop("elapsed_seconds", 0.0))
            canvas.load_state_dict(state)
            bar.restored(canvas)
        # A fully masked subvolume has nothing to segment.
        if restrictor.mask is None or not np.all(restrictor.mask):
            if seed_policy is None:  # a previous run's origins are read here, not by the policy
                seed_policy = resolve_seed_policy(request.seed_policy, request.seed_policy_args, load_origins=load_origins)
            canvas.segment_all(seed_policy)
    finally:
        bar.close()
        if hasattr(client, "close") and client is not executor:
            client.close()
        if own_executor:
            executor.close()

    result = SegmentationResult(
        segmentation=to_output_ids(canvas.segmentation),
        origins=dict(canvas.origins),
        counters=dict(canvas.counters),
        qprob=canvas.seg_prob,
        overlaps=dict(canvas.overlaps),
        corner=tuple(int(c) for c in corner),
        seconds=elapsed_before + time.perf_counter() - t0,
        local_to_global=dict(canvas.local_to_global),
    )
    if checkpoint_path is not None and not keep_checkpoint and os.path.exists(checkpoint_path):
        os.unlink(checkpoint_path)
    return result


def segment_many(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    request: InferenceRequest | dict[str, Any] | None = None,
    *,
    corners: Sequence[Sequence[int]] | None = None,
    concurrency: int | None = None,
) -> list[SegmentationResult]:
    """Segment several subvolumes in threads that share one batched executor.

    ``concurrency`` canvases run at once (default: twice the batch size, so that a batch can
    fill while results are handed back); results come back in the order of ``images``.
    """
    request = as_request(request)
    corners = corners or [(0, 0, 0)] * len(images)
    n_threads = max(1, min(len(images), concurrency or 2 * request.batch_size))
    results: list[SegmentationResult | None] = [None] * len(images)
    with BatchedExecutor(model, request.batch_size, request.device, request.precision, request.tf32) as executor:
        # Register every client before any thread runs, so that the first requests wait
        # for a full batch instead of going one by one.
        clients = [executor.client() for _ in range(n_threads)]

        def one(i: int, client: Any) -> None:
            results[i] = segment_subvolume(model, images[i], request, corner=corners[i], executor=client)

        run_with_clients(list(range(len(images))), clients, one)
    return [r for r in results if r is not None]


def _request_key(request: InferenceRequest) -> dict[str, Any]:
    """The request fields that change the result (the checkpoint interval does not)."""
    d = json.loads(request.model_dump_json())
    d.pop("checkpoint_interval", None)
    return d


class _ProgressBar:
    """tqdm on stderr: voxels segmented of the subvolume, objects, FOVs/s."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            import sys

            from tqdm import tqdm

            # In a log file (no terminal) a line every 30 s instead of 10 a second.
            interval = 0.1 if sys.stderr.isatty() else 30.0
            self.bar = tqdm(total=total, unit="vox", unit_scale=True, desc="segment", dynamic_ncols=True, mininterval=interval)
        self.t0 = time.perf_counter()
        self.fovs0 = 0
        self.done = 0
        self.last = 0.0

    def restored(self, canvas: Canvas) -> None:
        self.fovs0 = int(canvas.counters.get("fov_evaluations", 0))
        self._set_done(canvas)

    def _set_done(self, canvas: Canvas) -> None:
        if self.bar is not None:
            done = int(canvas.counters.get("voxels_segmented", 0))
            self.bar.update(done - self.done)
            self.done = done

    def __call__(self, event: str, canvas: Canvas) -> None:
        if self.bar is None:
            return
        if event == "segment":
            self._set_done(canvas)
        now = time.perf_counter()
        if event == "segment" or now - self.last > 1.0:
            self.last = now
            fovs = int(canvas.counters.get("fov_evaluations", 0))
            rate = (fovs - self.fovs0) / max(now - self.t0, 1e-9)
            self.bar.set_postfix(objects=len(canvas.origins), fovs=fovs, fov_s=f"{rate:.2f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- files -----------------------------------------------------------------------------------
def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the weights (names, shapes, values): identifies the model in a request."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def segment_volume(
    model: torch.nn.Module | str | os.PathLike,
    image_spec: str,
    out_spec: str,
    bbox: BoundingBox | str | None = None,
    request: InferenceRequest | dict[str, Any] | None = None,
    *,
    overwrite: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    summary_path: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Segment the box ``bbox`` of the image at ``image_spec`` into ``out_spec``.

    Returns the summary (see :meth:`SegmentationResult.summary`). If ``out_spec`` already
    holds the result of this very request, nothing is recomputed (``"skipped": true``); if it
    holds another request's, a VolumeError says so (unless ``overwrite``). The inference
    checkpoint (default: beside the output) lets a killed run resume where it stopped.
    """
    from ..model import load_model

    request = as_request(request)
    model_path = None
    if not isinstance(model, torch.nn.Module):
        model_path = os.fspath(model)
        model = load_model(model_path)
    vol = open_volume(image_spec)
    try:
        if len(vol.shape) != 3:
            raise VolumeError(f"image {image_spec} has shape {vol.shape}; segmentation needs a 3-D (z, y, x) volume")
        full = BoundingBox.from_shape(vol.shape)
        box = BoundingBox.parse(bbox) if isinstance(bbox, str) else (bbox or full)
        if any(a < 0 for a in box.start) or any(b > s for b, s in zip(box.stop, vol.shape)):
            raise DataError(
                f"bbox {_fmt_box(box)} is outside the image {image_spec} of shape {vol.shape} (z,y,x); "
                f"choose a box inside 0,0,0:{','.join(map(str, vol.shape))}"
            )
        validate(model, box.size, request)
        key = {
            "image": os.path.abspath(image_spec) if os.path.exists(image_spec.split(":")[0]) else image_spec,
            "bbox": _fmt_box(box),
            "model_sha256": model_fingerprint(model),
            "model": json.loads(model.config.model_dump_json()),
            "request": _request_key(request),
        }
        # One writer from the look at the output to its last byte: two runs with different
        # requests would otherwise both find it empty and one result would silently win.
        with hold_output(out_spec):
            if check_output(out_spec, key, overwrite=overwrite):
                summary = dict(read_output(out_spec)["meta"].get("summary", {}))
                summary["skipped"] = True
                write_summary(summary_path, summary)
                return summary
            image = vol[box.to_slices()]
            vol.close()
            ckpt = os.fspath(checkpoint_path) if checkpoint_path is not None else default_checkpoint_path(out_spec)
            result = segment_subvolume(
                model,
                image,
                request,
                corner=box.start,
                checkpoint_path=ckpt,
                checkpoint_key=key,
                progress=progress,
                keep_checkpoint=True,
            )
            summary = result.summary()
            summary.update({"image": image_spec, "bbox": _fmt_box(box), "out": out_spec})
            if model_path:
                summary["model_path"] = model_path
            meta = {"request": key, "corner_zyx": list(box.start), "summary": summary, "counters": result.counters}
            write_segmentation(
                out_spec,
                result.segmentation,
                origins=result.origins,
                overlaps=result.overlaps,
                qprob=result.qprob,
                meta=meta,
                overwrite=True,
            )
            if os.path.exists(ckpt):  # the result is written: the checkpoint has served
                os.unlink(ckpt)
            write_summary(summary_path, summary)
            return summary
    finally:
        vol.close()


def output_lock_target(out_spec: str) -> str:
    """What one run owns of an output spec: the HDF5 or npz file (its datasets share it), or
    the zarr array (arrays of one zarr are separate directories)."""
    kind, path, name = output_kind(out_spec)
    return f"{path.rstrip('/')}/{name}" if kind == "zarr" else path


@contextmanager
def hold_output(out_spec: str, target: str | None = None) -> Iterator[None]:
    """:func:`~neuroflood.outputs.exclusive` on ``out_spec`` for the whole run.

    A second run on the same output is refused with one line. Folders made only to hold the
    lock are removed again if the run fails before writing into them.
    """
    target = target or output_lock_target(out_spec)
    made = []
    parent = Path(os.path.abspath(target)).parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    try:
        with exclusive(target, f"--out {out_spec}"):
            yield
    finally:
        for folder in made:  # deepest first; a folder with the output in it stays
            try:
                folder.rmdir()
            except OSError:
                break


def _fmt_box(box: BoundingBox) -> str:
    return f"{','.join(map(str, box.start))}:{','.join(map(str, box.stop))}"


def write_summary(path: str | os.PathLike | None, summary: dict[str, Any]) -> None:
    """Write ``summary`` as JSON to ``path`` (atomically; nothing if ``path`` is None)."""
    if path is not None:
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


__all__ = [
    "SegmentationResult",
    "hold_output",
    "launch_holding",
    "model_fingerprint",
    "output_lock_target",
    "segment_many",
    "segment_subvolume",
    "segment_volume",
    "write_summary",
]


def launch_holding(out: str, target: str, nproc: int, argv: Sequence[str], threads: int | None) -> int:
    """Start ``nproc`` local workers of this command (``argv``) while holding ``out``.

    One writer per output: the launcher takes the output's lock and tells its workers
    (``HELD_OUTPUT_ENV``) that it holds ``target`` for them. Returns the workers' exit status.
    """
    from ..distributed import launch_local, strip_launch_args
    from .blockwise import HELD_OUTPUT_ENV

    with hold_output(out, target):
        os.environ[HELD_OUTPUT_ENV] = target
        try:
            return launch_local(nproc, strip_launch_args(list(argv)), threads_per_worker=threads, sigterm_exit=143)
        finally:
            os.environ.pop(HELD_OUTPUT_ENV, None)
