"""CLI: ``neuroflood mesh``."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..volume import FORMATS_HELP


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "mesh",
        "write a segmentation as neuroglancer precomputed with 3-D meshes (and skeletons)",
        "Write segmentation SEG as a neuroglancer precomputed segmentation in DIR with a mesh of "
        "every segment (zmesh marching cubes, simplified; legacy mesh format, one fragment per "
        "block) and, with --skeletons, TEASAR skeletons (kimimaro). Works block by block, so "
        "memory is bounded by a block, not the volume. Coordinates are nm from the volume's "
        "voxel size. Also writes DIR/neuroflood-segments.json (ids by size) and "
        "DIR/largest_segments.png. Look at it with: neuroflood view IMG DIR. "
        f"Volume specs: {FORMATS_HELP}.",
    )
    p.add_argument("seg", metavar="SEG", help="segmentation volume spec (integer labels, 0 = background)")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory, e.g. seg.precomputed (created)")
    p.add_argument("--skeletons", action="store_true", help="also write skeletons (needs the 'skeletons' extra: kimimaro)")
    p.add_argument("--bbox", metavar="Z0,Y0,X0:Z1,Y1,X1", help="mesh this region only; the output keeps SEG's coordinates (empty outside)")
    p.add_argument("--voxel-size", metavar="Z,Y,X", help="voxel size in nm (default: SEG's resolution attribute, else 1,1,1)")
    p.add_argument("--block-size", type=int, default=128, help="edge of a block in voxels (memory grows with its cube)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier neuroflood mesh output at DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_mesh)


def _mesh(args: argparse.Namespace) -> int:
    from ..bbox import BoundingBox
    from .build import PICTURE, write_meshes

    bbox = BoundingBox.parse(args.bbox) if args.bbox else None
    summary = write_meshes(
        args.seg,
        args.out,
        bbox=bbox,
        voxel_size=_voxel_size(args.voxel_size) if args.voxel_size else None,
        block_size=args.block_size,
        skeletons=args.skeletons,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    skeletons = f", {summary['skeletons']} skeletons" if args.skeletons else ""
    print(
        f"{summary['segments']} segments meshed in {summary['blocks']} blocks "
        f"({summary['fragments']} fragments, {summary['triangles']:,} triangles{skeletons}); "
        f"wrote {args.out} (open as precomputed://; picture {args.out}/{PICTURE})"
    )
    return 0


def _voxel_size(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < float("inf") for v in values):
        raise ConfigError(f"--voxel-size {text!r} is not three positive numbers z,y,x in nm (e.g. 8,8,8)")
    return values
