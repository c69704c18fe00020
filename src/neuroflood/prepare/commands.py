"""CLI: ``neuroflood prepare`` (partitions + balanced coordinates, or a TFRecord conversion).

The output directory is built next to its final place under a temporary name and renamed
when complete, so a failed run leaves nothing behind::

    OUT/partitions.zarr/NAME     partition volume per labelled volume (or OUT/partitions.h5:NAME)
    OUT/coordinates.nfc          class-balanced training coordinates (neuroflood format)
    OUT/summary.json             parameters, counts per class and volume, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import load_config_file
from ..errors import ConfigError, DataError

_NAMED = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")
COORDINATES = "coordinates.nfc"
SUMMARY = "summary.json"


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command
    from .config import PrepareConfig

    def doc(key: str) -> str:
        f = PrepareConfig.model_fields[key]
        default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        return f"{f.description} (default: {default})"

    p = add_command(
        sub,
        "prepare",
        "compute partitions and class-balanced training coordinates (or convert google/ffn TFRecords)",
        "Partition each labelled volume by the fraction of each voxel's own object in a box of "
        "radius --lom-radius (google/ffn compute_partitions), then draw training coordinates so "
        "that every partition class is equally frequent (google/ffn build_coordinates). Writes "
        f"OUT/partitions.zarr/NAME, OUT/{COORDINATES} and OUT/{SUMMARY}; nothing is left behind "
        "on failure. With --from-tfrecord, converts google/ffn coordinate files instead. "
        "Volumes are [NAME=]SPEC; names must match those given to `neuroflood train`.",
    )
    p.add_argument("--labels", action="append", default=[], metavar="[NAME=]SPEC",
                   help="labelled volume (integer ids, 0 = background); repeat for several volumes")
    p.add_argument("--image", action="append", default=[], metavar="[NAME=]SPEC",
                   help="the image of each labelled volume: checked to have the labels' shape and recorded")
    p.add_argument("--mask", action="append", default=[], metavar="[NAME=]SPEC",
                   help="exclusion mask per volume (non-zero = excluded; voxels near it are never sampled)")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--from-tfrecord", action="append", default=[], metavar="FILE",
                   help="convert google/ffn coordinate TFRecord file(s) (GZIP or plain) instead of partitioning")
    p.add_argument("--config", help="TOML/JSON file with prepare options (a [prepare] table or top-level keys)")
    p.add_argument("--lom-radius", metavar="Z,Y,X", help=doc("lom_radius"))
    p.add_argument("--thresholds", metavar="T1,T2,...", help=doc("thresholds"))
    p.add_argument("--min-size", type=int, metavar="N", help=doc("min_size"))
    p.add_argument("--margin", metavar="Z,Y,X", help=doc("margin"))
    p.add_argument("--seed", type=int, help=doc("seed"))
    p.add_argument("--id-whitelist", metavar="ID,ID,...", help=doc("id_whitelist"))
    p.add_argument("--exclusion-region", action="append", default=[], metavar="Z,Y,X,R", help=doc("exclusion_regions"))
    p.add_argument("--allow-missing-classes", action="store_true", default=None, help=doc("allow_missing_classes"))
    p.add_argument("--block-shape", metavar="Z,Y,X", help=doc("block_shape"))
    p.add_argument("--partition-format", choices=["zarr", "h5"], help=doc("partition_format"))
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new one is complete)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from ..outputs import check_replaceable, exclusive

    out = Path(args.out)
    if not args.out.strip():
        raise ConfigError("--out is empty; give the output directory, e.g. --out prep")
    inputs = [_volume_path(v) for v in args.labels + args.image + args.mask] + list(args.from_tfrecord)
    inputs += [args.config] if args.config else []
    with exclusive(out, f"--out {args.out}"):
        replace = check_replaceable(out, "prepare", args.overwrite, tuple(inputs))
        if args.from_tfrecord:
            if args.labels or args.image or args.mask:
                raise ConfigError("--from-tfrecord converts coordinates only; do not combine it with --labels/--image/--mask")
            for f in args.from_tfrecord:
                if not os.path.isfile(f):
                    what = "is a directory" if os.path.isdir(f) else "does not exist"
                    raise ConfigError(f"--from-tfrecord {f} {what}; give google/ffn coordinate TFRecord files")
            return _in_temporary_dir(out, replace, lambda tmp: _convert(args.from_tfrecord, tmp, args.progress))
        if not args.labels:
            raise ConfigError("give at least one labelled volume (--labels [NAME=]SPEC) or --from-tfrecord FILE")
        config = build_config(args)
        labels = _named(args.labels, "--labels")
        images = _named(args.image, "--image", labels)
        masks = _named(args.mask, "--mask", labels)
        return _in_temporary_dir(out, replace, lambda tmp: _run(config, labels, images, masks, tmp, args.progress))


def _volume_path(value: str) -> str:
    """The volume spec of a ``[NAME=]SPEC`` option."""
    m = _NAMED.match(value)
    return m.group(2) if m else value


def build_config(args: argparse.Namespace) -> Any:
    """PrepareConfig from defaults, ``--config FILE`` and the command line (later wins)."""
    from ..config import parse_ints
    from .config import PrepareConfig

    layers: list[dict[str, Any]] = []
    if args.config:
        data = load_config_file(args.config)
        layers.append(data.get("prepare", data) if isinstance(data.get("prepare"), dict) else data)
    cli: dict[str, Any] = {
        "lom_radius": args.lom_radius,
        "thresholds": args.thresholds,
        "min_size": args.min_size,
        "margin": args.margin,
        "seed": args.seed,
        "allow_missing_classes": args.allow_missing_classes,
        "block_shape": args.block_shape,
        "partition_format": args.partition_format,
    }
    if args.id_whitelist:
        cli["id_whitelist"] = list(parse_ints(args.id_whitelist, len(args.id_whitelist.split(",")), "--id-whitelist"))
    if args.exclusion_region:
        cli["exclusion_regions"] = [parse_ints(r, 4, "--exclusion-region") for r in args.exclusion_region]
    return PrepareConfig.build(*layers, cli)


def _named(values: list[str], flag: str, labels: dict[str, str] | None = None) -> dict[str, str]:
    """``[NAME=]SPEC`` options → {name: spec}; unnamed volumes are named after their file."""
    out: dict[str, str] = {}
    for i, v in enumerate(values):
        m = _NAMED.match(v)
        if m:
            name, spec = m.group(1), m.group(2)
        elif labels is not None:
            if len(values) != len(labels):
                raise ConfigError(f"{len(values)} {flag} for {len(labels)} --labels; name them as NAME=SPEC or give one per volume")
            name, spec = list(labels)[i], v
        else:
            name, spec = _default_name(v), v
        if name in out:
            raise ConfigError(f"{flag} gives volume name {name!r} twice; name each volume: {flag} NAME=SPEC")
        out[name] = spec
    if labels is not None and set(out) - set(labels):
        raise ConfigError(f"{flag} names {sorted(set(out) - set(labels))} have no --labels; use the labels' names")
    return out


def _default_name(spec: str) -> str:
    path = spec.split("://", 1)[-1]
    for ext in (".h5:", ".hdf5:", ".hdf:", ".npz:"):
        if ext in path:
            path = path.split(ext, 1)[0] + ext[:-1]
    path = re.split(r"\.(zarr|n5)(/|$)", path)[0]
    stem = Path(path.rstrip("/")).stem or "volume"
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem)


def _in_temporary_dir(out: Path, replace: bool, work: Any) -> int:
    """Run ``work(tmp)`` in a fresh directory beside ``out``, then rename it to ``out``.

    ``replace``: ``out`` is an earlier prepare output that may be swapped out (checked by the
    caller); otherwise ``out`` must still be absent when the work is done.
    """
    from ..outputs import write_marker
    from ..volume import normal_permissions

    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        normal_permissions(tmp)  # mkdtemp makes it private; OUT gets normal permissions
        work(tmp)
        write_marker(tmp, "prepare")
        if replace:  # --overwrite: swap in the complete new directory, then drop the old
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        elif os.path.lexists(out):
            raise ConfigError(f"{out} appeared while prepare ran (another program wrote it); choose another --out")
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _run(config: Any, labels: dict[str, str], images: dict[str, str], masks: dict[str, str], tmp: Path, progress: bool) -> None:
    from ..volume import create_volume, open_volume
    from .coordinates import build_coordinates
    from .partitions import IGNORE, check_labels_dtype, partition_volume

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
        spec, rel = _partition_spec(tmp, name, config.partition_format)
        out = create_volume(spec, vol.shape, "uint8", chunks=_chunks(config.block_shape), fill_value=IGNORE)
        mask = open_volume(masks[name]) if name in masks else None
        totals = partition_volume(vol, out, params, mask, config.block_shape, progress, name=name)
        counts = {str(c): int(n) for c, n in enumerate(totals) if n}
        if hasattr(out, "set_attrs"):  # plain numbers and strings, so that HDF5 and zarr both take them
            values = [int(c) for c in counts]
            out.set_attrs(
                lom_radius=list(params.lom_radius),
                thresholds=list(params.thresholds),
                min_size=params.min_size,
                margin=list(params.margin),
                partition_counts=[values, [counts[str(v)] for v in values]],  # as np.unique(return_counts)
                labels=labels[name],
                prepare_parameters=json.dumps(params.to_dict()),
            )
        out.close()
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
        tmp / COORDINATES,
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
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"prepared {len(volumes)} volume(s): {coords['count']:,} coordinates, "
        f"{len(coords['classes'])} classes x {coords['samples_per_class']:,}; "
        f"partitions {t1 - t0:.1f} s, coordinates {t2 - t1:.1f} s"
    )


def _partition_spec(tmp: Path, name: str, fmt: str) -> tuple[str, str]:
    if fmt == "h5":
        return f"{tmp}/partitions.h5:{name}", f"partitions.h5:{name}"
    return f"{tmp}/partitions.zarr/{name}", f"partitions.zarr/{name}"


def _chunks(block_shape: Any) -> tuple[int, int, int]:
    """Chunks that tile the blocks exactly (so each block writes whole chunks)."""
    return tuple(next(c for c in (64, 32, 16, 8, 4, 2, 1) if b % c == 0) for b in block_shape)  # type: ignore[return-value]


def _convert(files: list[str], tmp: Path, progress: bool) -> None:
    import numpy as np

    from .coordfile import write_coordinates
    from .tfrecord import read_tfrecord_arrays

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
    write_coordinates(tmp / COORDINATES, all_centers, vidx, names, meta)
    summary = {"coordinates": {"path": COORDINATES, "count": int(len(all_centers)), **meta}, "seconds": {"total": round(time.time() - t0, 3)}}
    (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"converted {len(all_centers):,} coordinates of {len(names)} volume(s) from {len(files)} file(s)")
