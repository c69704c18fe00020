"""Segmentation outputs and inference checkpoints, written atomically.

google/ffn ``ffn/inference/storage.py`` (ffn-algorithms.md §3.7, §3.8), in neuroflood's
volume specs. An output spec names the segmentation array; its companions sit beside it:

=====================  =====================================================================
``seg.h5:NAME``        datasets ``NAME`` (ids), ``NAME_prob`` (uint8 quantized probabilities)
``seg.zarr/NAME``      and ``NAME_info`` (UTF-8 JSON bytes: ``origins`` {id: [z, y, x,
                       iterations, seconds]} and ``overlaps`` {id: [[ids], [voxels]]});
                       ``NAME`` carries the attribute ``neuroflood`` (JSON: format, request,
                       counters, corner, summary)
``seg.npz``            one file with arrays ``segmentation``, ``qprob``, and the JSON strings
                       ``meta`` and ``info``
=====================  =====================================================================

The segmentation is written last: when it exists, the result is complete. Ids are stored in
the smallest unsigned type that holds them; failed-seed markers (-1) become 0.
Nothing is pickled: checkpoints are ``.npz`` files of plain arrays and JSON strings.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_savez, remove_tree
from ..errors import CheckpointError, VolumeError
from ..volume import open_volume, write_volume
from .results import Origin, dequantize_probability

if TYPE_CHECKING:
    from .canvas import Canvas

FORMAT = "neuroflood-segmentation"
VERSION = 1


def smallest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"{max_value} does not fit in uint64")


def to_output_ids(segmentation: np.ndarray) -> np.ndarray:
    """Ids in the smallest sufficient unsigned dtype, negative markers zeroed."""
    seg = np.asarray(segmentation)
    top = int(seg.max(initial=0))
    return np.where(seg > 0, seg, 0).astype(smallest_uint(max(top, 0)))


def info_json(origins: dict[int, Origin], overlaps: dict[int, tuple[list[int], list[int]]] | None) -> str:
    """Origins and overlaps as JSON: ``{"origins": {id: [z, y, x, iters, s]}, "overlaps": ...}``."""
    return json.dumps(
        {
            "origins": {str(k): [*o.start_zyx, o.iterations, round(o.seconds, 6)] for k, o in sorted(origins.items())},
            "overlaps": {str(k): [list(v[0]), list(v[1])] for k, v in sorted((overlaps or {}).items())},
        }
    )


def origins_from_info(text: str) -> dict[int, Origin]:
    origins = json.loads(text).get("origins", {})
    return {int(k): Origin((int(v[0]), int(v[1]), int(v[2])), int(v[3]), float(v[4])) for k, v in origins.items()}


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves where two JSON-like values differ (for error messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


# -- output specs ----------------------------------------------------------------------------
def output_kind(spec: str) -> tuple[str, str, str]:
    """(kind, container path, array name) of an output spec; only h5, zarr and npz."""
    s = spec.lower()
    if re.search(r"\.npz(:[^/]*)?$", s):
        return "npz", spec.split(":", 1)[0] if ":" in spec else spec, "segmentation"
    m = re.match(r"^(.*?\.zarr)(?:/(.*))?$", spec, re.I)
    if m:
        name = (m.group(2) or "").strip("/")
        if not name:
            raise VolumeError(f"output {spec!r} names no array inside the zarr; write it as {spec.rstrip('/')}/segmentation")
        return "zarr", m.group(1), name
    if re.search(r"\.(h5|hdf5|hdf)(:|$)", s):
        if ":" not in spec:
            raise VolumeError(f"output {spec!r} names no dataset; write it as {spec}:segmentation")
        path, name = spec.rsplit(":", 1)
        return "h5", path, name
    raise VolumeError(f"output {spec!r} is not an HDF5, zarr or npz spec; use seg.h5:segmentation, seg.zarr/segmentation or seg.npz")


def _sibling(kind: str, path: str, name: str, suffix: str) -> str:
    return f"{path}:{name}{suffix}" if kind == "h5" else f"{path}/{name}{suffix}"


def default_checkpoint_path(out_spec: str) -> str:
    """Where ``neuroflood segment`` keeps the inference checkpoint of ``out_spec``."""
    kind, path, name = output_kind(out_spec)
    base = path if kind == "npz" else f"{path.rstrip('/')}.{name.replace('/', '_')}"
    return f"{base}.cpoint.npz"


def read_output_meta(out_spec: str) -> dict[str, Any] | None:
    """The ``neuroflood`` metadata of a finished output, or None if there is no output."""
    kind, path, name = output_kind(out_spec)
    if kind == "npz":
        if not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as f:
            if "meta" not in f:
                raise VolumeError(f"{path} exists but was not written by neuroflood segment; choose another --out")
            return json.loads(str(f["meta"]))
    try:
        vol = open_volume(f"{path}:{name}" if kind == "h5" else f"{path}/{name}")
    except VolumeError:
        return None
    try:
        raw = vol.attrs.get("neuroflood")
    finally:
        vol.close()
    if raw is None:
        raise VolumeError(f"{out_spec} exists but was not written by neuroflood segment; choose another --out or pass --overwrite")
    return json.loads(raw)


def check_output(out_spec: str, request: dict[str, Any], overwrite: bool = False) -> bool:
    """True if ``out_spec`` already holds the result of exactly ``request`` (nothing to do).

    Raises VolumeError if it holds the result of another request (unless ``overwrite``).
    """
    if overwrite:
        output_kind(out_spec)
        return False
    meta = read_output_meta(out_spec)
    if meta is None:
        return False
    old = meta.get("request", {})
    if old == request:
        return True
    keys = differences(old, request)
    raise VolumeError(
        f"{out_spec} already holds a segmentation of another request (differs in: {', '.join(keys)}); "
        "choose another --out or pass --overwrite"
    )


def write_segmentation(
    out_spec: str,
    segmentation: np.ndarray,
    *,
    origins: dict[int, Origin],
    overlaps: dict[int, tuple[list[int], list[int]]] | None = None,
    qprob: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Write a segmentation result: all of it, or (on failure) none of it.

    Every array is first written under a hidden temporary name beside its final one, then
    they are renamed into place, the segmentation last (when it exists, the result is
    complete). A failure while writing (a full disk) removes the temporaries and leaves an
    earlier result at ``out_spec`` whole; a stale probability map of an earlier result is
    removed when this one has none.
    """
    kind, path, name = output_kind(out_spec)
    seg = to_output_ids(segmentation)
    meta = {"format": FORMAT, "version": VERSION, **(meta or {})}
    meta_json = json.dumps(meta, sort_keys=True)
    info = info_json(origins, overlaps)
    if kind == "npz":
        arrays = {"segmentation": seg, "meta": np.array(meta_json), "info": np.array(info)}
        if qprob is not None:
            arrays["qprob"] = qprob
        atomic_savez(path, arrays)
        return
    info_bytes = np.frombuffer(info.encode(), np.uint8)
    parts = [("_prob", qprob, {}), ("_info", info_bytes, {"chunks": (len(info_bytes),)}), ("", seg, {"attrs": {"neuroflood": meta_json}})]
    existed = os.path.exists(path)
    staged: list[tuple[str, str]] = []  # (temporary member, final member)
    try:
        for suffix, data, kw in parts:
            if data is None:
                continue
            final = f"{name}{suffix}"
            head, sep, tail = final.rpartition("/")
            tmp = f"{head}{sep}.{tail}.tmp-{os.getpid()}"
            staged.append((tmp, final))
            write_volume(_member(kind, path, tmp), data, overwrite=True, **kw)
        _commit(kind, path, staged, stale=[] if qprob is not None else [f"{name}_prob"])
        staged = []
    finally:
        if staged:
            _discard_staged(kind, path, [t for t, _ in staged], remove_file=not existed)


def _member(kind: str, path: str, member: str) -> str:
    return f"{path}:{member}" if kind == "h5" else f"{path}/{member}"


def _commit(kind: str, path: str, staged: list[tuple[str, str]], stale: list[str]) -> None:
    """Rename staged arrays into place (in order; the segmentation is last) and drop ``stale``."""
    if kind == "h5":
        import h5py

        with h5py.File(path, "a") as f:
            for member in stale:
                if member in f:
                    del f[member]
            for tmp, final in staged:
                if final in f:
                    del f[final]
                f.move(tmp, final)
        return
    root = Path(path)
    for member in stale:
        if (root / member).exists():
            remove_tree(root / member)
    for tmp, final in staged:
        src, dst = root / tmp, root / final
        if dst.exists():  # swap: the old array is renamed away before it is deleted
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(src, dst)
            remove_tree(old)
        else:
            os.replace(src, dst)


def _discard_staged(kind: str, path: str, members: list[str], remove_file: bool) -> None:
    """Best-effort removal of staged arrays after a failure (the failure itself propagates)."""
    try:
        if kind == "h5":
            if remove_file:  # the file was made for this output: nothing else is in it
                os.unlink(path)
                return
            import h5py

            with h5py.File(path, "a") as f:
                for member in members:
                    if member in f:
                        del f[member]
            return
        for member in members:
            remove_tree(Path(path) / member)
    except Exception:  # noqa: BLE001 - never hide the error that got us here
        pass


def read_output(out_spec: str) -> dict[str, Any]:
    """``segmentation``, ``qprob`` (or None), ``origins`` and ``meta`` of a written result."""
    kind, path, name = output_kind(out_spec)
    if kind == "npz":
        if not os.path.exists(path):
            raise VolumeError(f"{path} does not exist; run neuroflood segment first or check the path")
        with np.load(path, allow_pickle=False) as f:
            return {
                "segmentation": f["segmentation"],
                "qprob": f["qprob"] if "qprob" in f else None,
                "origins": origins_from_info(str(f["info"])) if "info" in f else {},
                "meta": json.loads(str(f["meta"])) if "meta" in f else {},
            }

    def read(suffix: str, required: bool = True) -> np.ndarray | None:
        spec = _sibling(kind, path, name, suffix) if suffix else (f"{path}:{name}" if kind == "h5" else f"{path}/{name}")
        try:
            vol = open_volume(spec)
        except VolumeError:
            if required:
                raise
            return None
        try:
            return vol[...]
        finally:
            vol.close()

    meta = read_output_meta(out_spec) or {}
    info = read("_info", required=False)
    return {
        "segmentation": read(""),
        "qprob": read("_prob", required=False),
        "origins": origins_from_info(info.tobytes().decode()) if info is not None else {},
        "meta": meta,
    }


def load_origins(out_spec: str) -> dict[int, Origin]:
    """The origins ``{id: Origin}`` of a written result (for PolicyInvertOrigins)."""
    return read_output(out_spec)["origins"]


def load_segmentation(
    out_spec: str,
    threshold: float | None = None,
    split_cc: bool = True,
    min_size: int = 0,
    connectivity: int = 6,
) -> tuple[np.ndarray, dict[int, Origin]]:
    """A written segmentation, cleaned up as google/ffn's ``load_segmentation`` intends.

    Voxels whose stored probability is below ``threshold`` are cleared; segments are split
    into connected components (``connectivity`` 6, 18 or 26) and components smaller than
    ``min_size`` removed; origins follow the component that keeps the seed's id mapping.
    """
    from .consensus import clean_up

    out = read_output(out_spec)
    seg = out["segmentation"].astype(np.uint64)
    if threshold is not None:
        if out["qprob"] is None:
            raise VolumeError(f"{out_spec} has no probability map; segment with keep_probability_maps = true")
        prob = dequantize_probability(out["qprob"])
        seg[~(prob >= threshold)] = 0
    new_to_old = clean_up(seg, split_cc=split_cc, min_size=min_size, connectivity=connectivity)
    origins = {int(new): out["origins"][int(old)] for new, old in new_to_old.items() if new and int(old) in out["origins"]}
    return seg, origins


# -- inference checkpoints -------------------------------------------------------------------
def save_canvas_checkpoint(
    path: str | os.PathLike,
    canvas: Canvas,
    partial_segment_iters: int,
    rewind_seed: bool,
    request: dict[str, Any],
    elapsed_seconds: float = 0.0,
) -> None:
    """Write the canvas state (``Canvas.state_dict``), the request it belongs to and the time spent."""
    state = canvas.state_dict(partial_segment_iters, rewind_seed)
    state["request"] = np.array(json.dumps(request, sort_keys=True))
    state["elapsed_seconds"] = np.array(elapsed_seconds, np.float64)
    atomic_savez(path, state)


# What Canvas.state_dict always writes, plus the request: a file without them is not ours.
_CHECKPOINT_KEYS = (
    "request",
    "segmentation",
    "seed",
    "min_pos",
    "max_pos",
    "max_id",
    "partial_segment_iters",
    "history",
    "history_deleted",
    "origin_ids",
    "origin_start",
    "origin_iters",
    "origin_seconds",
    "overlaps",
    "local_to_global",
    "counters",
)


def load_canvas_checkpoint(path: str | os.PathLike, request: dict[str, Any]) -> dict[str, np.ndarray]:
    """Read a checkpoint written for ``request``; another request's checkpoint is an error.

    A file that is not such a checkpoint (damaged, truncated by a copy, another program's)
    raises :class:`CheckpointError` saying so and how to start over, not numpy's own text
    (e.g. its advice about ``allow_pickle``).
    """

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(
            f"inference checkpoint {path} is corrupt or not written by neuroflood segment ({why}); "
            "delete it and rerun to segment this subvolume from the start"
        )

    try:
        with open(path, "rb") as raw:
            if raw.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                raise corrupt("not an .npz archive")
        with np.load(path, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    except CheckpointError:
        raise
    except OSError as e:
        if e.errno is None:  # zipfile and zlib failures of a damaged archive
            raise corrupt("a damaged .npz archive") from None
        raise CheckpointError(f"inference checkpoint {path} cannot be read ({e.strerror}); check the path and its permissions") from None
    except Exception:  # BadZipFile, zlib.error, EOFError, ValueError (pickled objects): all damage
        raise corrupt("a damaged .npz archive, or one holding Python objects") from None
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise corrupt(f"it lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    try:
        saved = json.loads(str(state.pop("request")))
    except ValueError:
        raise corrupt("its request is not JSON") from None
    if saved != request:
        keys = differences(saved, request)
        raise CheckpointError(
            f"inference checkpoint {path} belongs to another request (differs in: {', '.join(keys)}); "
            "delete it to start over, or rerun with the request that wrote it"
        )
    return state


# The name tests/test_enospc.py still uses; remove when it calls load_canvas_checkpoint.
load_checkpoint = load_canvas_checkpoint
