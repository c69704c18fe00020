"""The prepare pipeline as library functions: :func:`prepare_coordinates` (partition
labelled volumes, then draw class-balanced coordinates) and :func:`convert_tfrecords`
(google/ffn coordinate files to the neuroflood format).

Both write into a directory and return the summary they store there; staging, locking and
``--overwrite`` are the command's (:mod:`neuroflood.prepare.commands`). Layout::

    OUT/partitions.zarr/NAME     partition volume per labelled volume (or OUT/partitions.h5:NAME)
    OUT/coordinates.nfc          class-balanced training coordinates (neuroflood format)
    OUT/summary.json             parameters, counts per class and volume, seconds
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError
from .config import PrepareConfig

COORDINATES = "coordinates.nfc"
SUMMARY = "summary.json"


def prepare_coordinates(
    labels: dict[str, str],
    out: str | os.PathLike,
    config: PrepareConfig | None = None,
    images: dict[str, str] | None = None,
    masks: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Partition labelled volumes and draw class-balanced training coordinates into ``out``.

    Parameters
    ----------
    labels : {name: volume spec}
        Labelled volumes (integer ids, 0 = background); the names are those training uses.
    out : directory
        Receives ``partitions.zarr/NAME`` (or ``partitions.h5:NAME``), ``coordinates.nfc``
        and ``summary.json``; created if missing. Existing partitions are not replaced.
    config : PrepareConfig, optional
        Partition and coordinate parameters (default: ``PrepareConfig()``).
    images, masks : {name: volume spec}, optional
        The image (checked to have the labels' shape, recorded) and exclusion mask
        (non-zero = excluded) of some labelled volumes, by the labels' names.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    The summary written to ``out/summary.json``: parameters, per-volume partition counts,
    coordinate counts and seconds.

    Raises
    ------
    DataError
        A volume that is not integer labels, an image or mask of another shape, a radius or
        margin that leaves no voxel, or no voxel to sample.
    """
    from ..volume import create_volume, open_volume
    from .coordinates import build_coordinates
    from .partitions import IGNORE, check_labels_dtype, partition_volume

    config = PrepareConfig() if config is None else config
    images = images or {}
    masks = masks or {}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = config.partition_params()
    t0 = time.time()
    volumes = {}
    for name, spec in labels.items():  # open and check everything before the long work
        vol = open_volume(spec)
        check_labels_dtype(vol.dtype, vol.shape, f"labels {spec}")
        params.core_box(vol.shape)
        for what, table in (("image", images), ("mask", masks)):
            if name in table:
                other = open_volume(table[name])
                if tuple(other.shape[:3]) != tuple(vol.shape) or len(other.shape) not in (3, 4):
                    raise DataError(
                        f"{what} {table[name]} has shape {tuple(other.shape)} but labels {spec} have "
                        f"{tuple(vol.shape)}; give the {what} of the same volume"
                    )
        volumes[name] = vol
    summary: dict[str, Any] = {"parameters": json.loads(config.model_dump_json()), "volumes": {}}
    partition_specs = []
    for name, vol in volumes.items():
        spec, rel = _partition_spec(out_dir, name, config.partition_format)
        part = create_volume(spec, vol.shape, "uint8", chunks=_chunks(config.block_shape), fill_value=IGNORE)
        mask = open_volume(masks[name]) if name in masks else None
        totals = partition_volume(vol, part, params, mask, config.block_shape, progress, name=name)
        counts = {str(c): int(n) for c, n in enumerate(totals) if n}
        if hasattr(part, "set_attrs"):  # plain numbers and strings, so that HDF5 and zarr both take them
            values = [int(c) for c in counts]
            part.set_attrs(
                lom_radius=list(params.lom_radius),
                thresholds=list(params.thresholds),
                min_size=params.min_size,
                margin=list(params.margin),
                partition_counts=[values, [counts[str(v)] for v in values]],  # as np.unique(return_counts)
                labels=labels[name],
                prepare_parameters=json.dumps(params.to_dict()),
            )
        part.close()
        partition_specs.append(spec)
        summary["volumes"][name] = {
            "labels": labels[name],
            "image": images.get(name),
            "mask": masks.get(name),
            "partitions": rel,
            "shape": list(vol.shape),
            "partition_counts": counts,
        }
    t1 = time.time()
    parts = [open_volume(s) for s in partition_specs]
    coords = build_coordinates(
        parts,
        list(volumes),
        out_dir / COORDINATES,
        margin=config.margin,
        seed=config.seed,
        classes=range(len(config.thresholds) + 2),
        allow_missing_classes=config.allow_missing_classes,
        meta={"source": "neuroflood prepare", "volumes": summary["volumes"], "parameters": summary["parameters"]},
        progress=progress,
    )
    t2 = time.time()
    summary["coordinates"] = {"path": COORDINATES, **coords}
    summary["seconds"] = {"partitions": round(t1 - t0, 3), "coordinates": round(t2 - t1, 3), "total": round(t2 - t0, 3)}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _partition_spec(out_dir: Path, name: str, fmt: str) -> tuple[str, str]:
    if fmt == "h5":
        return f"{out_dir}/partitions.h5:{name}", f"partitions.h5:{name}"
    return f"{out_dir}/partitions.zarr/{name}", f"partitions.zarr/{name}"


def _chunks(block_shape: Any) -> tuple[int, int, int]:
    """Chunks that tile the blocks exactly (so each block writes whole chunks)."""
    return tuple(next(c for c in (64, 32, 16, 8, 4, 2, 1) if b % c == 0) for b in block_shape)  # type: ignore[return-value]


def convert_tfrecords(files: Sequence[str], out: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Convert google/ffn coordinate TFRecord files (GZIP or plain) into ``out/coordinates.nfc``.

    Records of all files are concatenated in order; volume names are numbered in order of
    first appearance. Writes ``out/summary.json`` too (``out`` is created if missing) and
    returns that summary. Raises :class:`~neuroflood.errors.DataError` for files without
    records or with negative centres.
    """
    import numpy as np

    from .coordfile import write_coordinates
    from .tfrecord import read_tfrecord_arrays

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    centers, index, names = [], [], []
    for f in files:
        c, i, n = read_tfrecord_arrays(f, progress)
        remap = np.array([names.index(v) if v in names else names.append(v) or len(names) - 1 for v in n], np.int64)
        centers.append(c)
        index.append(remap[i] if len(i) else i)
    all_centers = np.concatenate(centers) if centers else np.zeros((0, 3), np.int64)
    if not len(all_centers):
        raise DataError(f"{', '.join(files)} hold no coordinate records; give google/ffn coordinate files")
    if all_centers.min() < 0:
        raise DataError(f"{', '.join(files)} hold negative centres; they cannot be voxel coordinates")
    vidx = np.concatenate(index)
    per_volume = {n: int(np.count_nonzero(vidx == k)) for k, n in enumerate(names)}
    meta = {"source": "google/ffn TFRecord", "files": [os.path.abspath(f) for f in files], "per_volume": per_volume}
    write_coordinates(out_dir / COORDINATES, all_centers, vidx, names, meta)
    summary = {
        "coordinates": {"path": COORDINATES, "count": int(len(all_centers)), **meta},
        "seconds": {"total": round(time.time() - t0, 3)},
    }
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
