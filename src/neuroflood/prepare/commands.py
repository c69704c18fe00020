"""CLI: ``neuroflood prepare`` (partitions + balanced coordinates, or a TFRecord conversion).

Parses ``[NAME=]SPEC`` volume options and the configuration, then runs
:func:`~neuroflood.prepare.pipeline.prepare_coordinates` or
:func:`~neuroflood.prepare.pipeline.convert_tfrecords` in a directory beside OUT under a
temporary name, renamed to OUT when complete (a failed run leaves nothing behind). OUT is
locked while the command runs and marked as a prepare output; ``--overwrite`` replaces only
an earlier prepare output. The layout of OUT is described in :mod:`neuroflood.prepare.pipeline`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..config import load_config_file
from ..errors import ConfigError

_NAMED = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command
    from .config import PrepareConfig
    from .pipeline import COORDINATES, SUMMARY

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
    p.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="labelled volume (integer ids, 0 = background); repeat for several volumes",
    )
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="the image of each labelled volume: checked to have the labels' shape and recorded",
    )
    p.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="exclusion mask per volume (non-zero = excluded; voxels near it are never sampled)",
    )
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument(
        "--from-tfrecord",
        action="append",
        default=[],
        metavar="FILE",
        help="convert google/ffn coordinate TFRecord file(s) (GZIP or plain) instead of partitioning",
    )
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
    from ..atomic import normal_permissions
    from ..outputs import write_marker

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
    from .pipeline import prepare_coordinates

    summary = prepare_coordinates(labels, tmp, config, images, masks, progress)
    coords, seconds = summary["coordinates"], summary["seconds"]
    print(
        f"prepared {len(summary['volumes'])} volume(s): {coords['count']:,} coordinates, "
        f"{len(coords['classes'])} classes x {coords['samples_per_class']:,}; "
        f"partitions {seconds['partitions']:.1f} s, coordinates {seconds['coordinates']:.1f} s"
    )


def _convert(files: list[str], tmp: Path, progress: bool) -> None:
    from .pipeline import convert_tfrecords

    summary = convert_tfrecords(files, tmp, progress)
    coords = summary["coordinates"]
    print(f"converted {coords['count']:,} coordinates of {len(coords['per_volume'])} volume(s) from {len(files)} file(s)")
