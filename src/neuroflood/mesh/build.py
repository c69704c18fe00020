"""``neuroflood mesh``: a segmentation as neuroglancer precomputed, with meshes and skeletons.

Block by block (memory bounded by one block, never the volume): read the block with a
one-voxel overlap, copy its labels into the precomputed volume, mesh every segment in it
(one fragment per segment and block, :mod:`.meshing`), and with skeletons keep each
segment's block pieces, joined at the end. Everything is written into a temporary directory
beside the output and renamed into place when complete; the output carries a marker so that
``--overwrite`` replaces only an earlier ``neuroflood mesh`` output.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import remove_tree
from ..bbox import BoundingBox
from ..errors import ConfigError, DataError
from ..outputs import check_replaceable, exclusive, write_marker
from . import precomputed
from .meshing import REDUCTION_FACTOR, iter_blocks, merge_skeletons, mesh_labels, padded_block, skeletonize_labels

__all__ = ["write_meshes", "PICTURE", "COMMAND"]

COMMAND = "mesh"
PICTURE = "largest_segments.png"  # a matplotlib view of the largest segments, beside the data


def write_meshes(
    seg: str,
    out: str | os.PathLike,
    bbox: BoundingBox | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    block_size: int = 128,
    skeletons: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    reduction_factor: int = REDUCTION_FACTOR,
    picture_segments: int = 8,
) -> dict[str, Any]:
    """Write ``seg`` (a volume spec) to ``out`` as a precomputed segmentation with meshes.

    Parameters
    ----------
    seg : str
        Integer label volume (any spec :func:`~neuroflood.volume.open_volume` reads).
    out : path
        The output directory (``DIR.precomputed`` by convention); open it in neuroglancer as
        ``precomputed://`` + its URL.
    bbox : BoundingBox, optional
        Mesh only this region. The output keeps the volume's coordinates (empty outside).
    voxel_size : 3 floats, optional
        z, y, x in nm; default: the volume's ``resolution_nm_zyx`` attribute, else 1.
    block_size : int
        Edge of a block in voxels; memory grows with its cube.
    skeletons : bool
        Also write TEASAR skeletons (needs kimimaro).
    overwrite : bool
        Replace an earlier ``neuroflood mesh`` output (never anything else).
    reduction_factor : int
        Mesh simplification (0: none).
    picture_segments : int
        Draw this many of the largest segments into ``out/largest_segments.png`` (0: none).

    Returns
    -------
    dict
        ``segments``, ``blocks``, ``fragments``, ``triangles``, ``skeletons``, ``voxel_size_zyx``.
    """
    from ..evaluate.inputs import voxel_size_of
    from ..volume import open_volume

    if block_size < 1:
        raise ConfigError(f"--block-size {block_size} must be >= 1 (voxels per block edge)")
    out = Path(out)
    what = f"--out {out}"
    check_replaceable(out, COMMAND, overwrite, inputs=(seg,))  # a refusal costs nothing
    volume = open_volume(seg)
    if len(volume.shape) != 3 or volume.dtype.kind not in "iu":
        raise DataError(f"segmentation {seg} has shape {tuple(volume.shape)} and dtype {volume.dtype}; give a 3-D integer label volume")
    region = BoundingBox.from_shape(volume.shape)
    if bbox is not None:
        if region.intersection(bbox) != bbox:
            raise DataError(f"--bbox {bbox} reaches outside segmentation {seg} of shape {tuple(volume.shape)}; give a box inside it")
        region = bbox
    voxel_size = tuple(float(v) for v in voxel_size) if voxel_size is not None else voxel_size_of(volume)
    with exclusive(out, what):
        replacing = check_replaceable(out, COMMAND, overwrite, inputs=(seg,))
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        remove_tree(tmp)
        try:
            summary = _write(volume, seg, tmp, region, voxel_size, block_size, skeletons, progress, reduction_factor)
            if picture_segments > 0:
                from .render import render_precomputed

                (tmp / PICTURE).write_bytes(render_precomputed(tmp, picture_segments))
            write_marker(tmp, COMMAND)
            _swap_in(tmp, out, replacing)
        finally:
            remove_tree(tmp)
    return summary


def _write(
    volume: Any,
    spec: str,
    root: Path,
    region: BoundingBox,
    voxel_size: tuple[float, float, float],
    block_size: int,
    with_skeletons: bool,
    progress: bool,
    reduction_factor: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    from ..volume import create_volume

    dtype = np.uint32 if volume.dtype.itemsize <= 4 else np.uint64  # neuroglancer's label types
    labels_out = create_volume(f"precomputed://{root}", volume.shape, dtype, chunks=(64, 64, 64))
    (root / precomputed.MESH_DIR).mkdir()
    fragments: dict[int, list[str]] = defaultdict(list)
    pieces: dict[int, list] = defaultdict(list)
    sizes: dict[int, int] = defaultdict(int)
    blocks = list(iter_blocks(region, block_size))
    triangles = 0
    show = progress and sys.stderr.isatty()
    for block in tqdm(blocks, desc="mesh", unit="block", file=sys.stderr, disable=not show, dynamic_ncols=True):
        read_box = BoundingBox.from_start_stop(block.start, [min(b + 1, r) for b, r in zip(block.stop, region.stop)])
        read = np.asarray(volume[read_box.to_slices()])
        if read.dtype.kind == "i" and read.size and read.min() < 0:
            raise DataError(f"segmentation {spec} has negative labels in {read_box}; ids must be >= 0 (0 = background)")
        core = read[tuple(slice(0, s) for s in block.size)]
        labels_out[block.to_slices()] = core
        ids, counts = np.unique(core, return_counts=True)
        for i, n in zip(ids.tolist(), counts.tolist()):
            if i:
                sizes[i] += n
        if not read.any():  # background only, overlap included: no surface in this block
            continue
        labels, origin = padded_block(read, block, read_box, region)
        for segment, (vertices, faces) in mesh_labels(labels, voxel_size, origin, reduction_factor).items():
            name = precomputed.fragment_name(segment, read_box)
            precomputed.write_fragment(root, name, vertices, faces)
            fragments[segment].append(name)
            triangles += len(faces)
        if with_skeletons:
            for segment, piece in skeletonize_labels(labels, voxel_size, origin).items():
                pieces[segment].append(piece)
    if not sizes:
        where = f" inside --bbox {region}" if region != BoundingBox.from_shape(volume.shape) else ""
        raise DataError(f"segmentation {spec} holds no segment (every voxel{where} is 0); give a segmentation with ids > 0")
    labels_out.close()
    precomputed.write_manifests(root, fragments)
    n_skeletons = _write_skeletons(root, pieces, voxel_size) if with_skeletons else 0
    precomputed.finish_volume_info(root, voxel_size, with_skeletons)
    extra = {"source": spec, "bbox": str(region), "voxel_size_nm_zyx": list(voxel_size)}
    precomputed.write_segment_sizes(root, sizes, extra)
    return {
        "segments": len(sizes),
        "blocks": len(blocks),
        "fragments": sum(len(v) for v in fragments.values()),
        "triangles": triangles,
        "skeletons": n_skeletons,
        "voxel_size_zyx": list(voxel_size),
    }


def _write_skeletons(root: Path, pieces: dict[int, list], voxel_size: tuple[float, float, float]) -> int:
    precomputed.write_skeleton_info(root)
    written = 0
    for segment, parts in sorted(pieces.items()):
        skeleton = merge_skeletons(parts, segment, voxel_size)
        if skeleton is None:
            continue
        skeleton.extra_attributes = precomputed.SKELETON_ATTRIBUTES  # radius only, as the info says
        (root / precomputed.SKELETON_DIR / str(segment)).write_bytes(skeleton.to_precomputed())
        written += 1
    return written


def _swap_in(tmp: Path, out: Path, replacing: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an earlier output is moved aside first, then removed."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if replacing:
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if replacing:
            os.replace(old, out)
        raise
    remove_tree(old)
