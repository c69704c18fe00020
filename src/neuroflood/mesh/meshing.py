"""Meshes and skeletons of one block of labels, in world coordinates.

Blocks are meshed on their own and put together by neuroglancer: a block is read with one
voxel more on its upper faces, so that the marching-cubes cells of neighbouring blocks tile
the volume without gap or overlap and their fragments meet (as igneous does). Where a block
touches the edge of the meshed region it is padded with background, so that objects cut by
that edge get closed surfaces.

Coordinates follow neuroglancer: x, y, z in nanometres, voxel ``i`` spanning
``[i, i + 1) × resolution``, so a surface between voxels ``i`` and ``i + 1`` lies at
``(i + 1) × resolution``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..bbox import BoundingBox
from ..errors import ConfigError

__all__ = [
    "REDUCTION_FACTOR",
    "iter_blocks",
    "padded_block",
    "mesh_labels",
    "skeletonize_labels",
    "merge_skeletons",
    "Mesh",
]

Mesh = tuple[np.ndarray, np.ndarray]  # (vertices float32 [n, 3] x, y, z nm, faces uint32 [m, 3])

# Quadric simplification aims at this factor fewer triangles, with an error bound of half the
# smallest voxel edge (zmesh's max_error; measured moves stay under one edge), so every vertex
# stays within a voxel of the labelled surface (tests/test_mesh.py).
REDUCTION_FACTOR = 8


def iter_blocks(box: BoundingBox, block_size: int) -> Iterator[BoundingBox]:
    """The blocks of edge ``block_size`` that tile ``box`` (the last ones along an axis smaller)."""
    starts = [range(a, b, block_size) for a, b in zip(box.start, box.stop)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                start = (z, y, x)
                stop = tuple(min(s + block_size, b) for s, b in zip(start, box.stop))
                yield BoundingBox.from_start_stop(start, stop)


def padded_block(read: np.ndarray, block: BoundingBox, read_box: BoundingBox, region: BoundingBox) -> tuple[np.ndarray, np.ndarray]:
    """The labels to mesh for ``block`` and the world voxel index of their first voxel.

    ``read`` holds ``read_box`` (the block plus one voxel on its upper faces, inside
    ``region``). Faces of ``region`` are padded with background so that surfaces close there.
    """
    low = [1 if b == r else 0 for b, r in zip(block.start, region.start)]
    high = [1 if b == r else 0 for b, r in zip(read_box.stop, region.stop)]
    labels = np.pad(read, list(zip(low, high))) if any(low) or any(high) else read
    origin = np.asarray(read_box.start) - np.asarray(low)
    return labels, origin


def mesh_labels(
    labels: np.ndarray,
    voxel_size: Sequence[float],
    origin: Sequence[int] = (0, 0, 0),
    reduction_factor: int = REDUCTION_FACTOR,
) -> dict[int, Mesh]:
    """Marching-cubes meshes (zmesh) of every non-zero label of a z, y, x array.

    Parameters
    ----------
    labels : ndarray, shape (z, y, x)
        Non-negative integer labels.
    voxel_size : sequence of 3 floats
        z, y, x in nm.
    origin : sequence of 3 ints
        World voxel index (z, y, x) of ``labels[0, 0, 0]``.
    reduction_factor : int
        Simplify to about this many times fewer triangles (0: no simplification).

    Returns
    -------
    dict
        label → (vertices float32 [n, 3] x, y, z nm, faces uint32 [m, 3]).
    """
    import zmesh

    resolution = tuple(float(v) for v in voxel_size[::-1])
    mesher = zmesh.Mesher(resolution)
    # zmesh reads x, y, z: the transpose of a C-ordered z, y, x array is the same memory
    mesher.mesh(np.asarray(labels).T)
    offset = np.asarray(origin[::-1], np.float64) * np.asarray(resolution)
    max_error = 0.5 * min(resolution)
    meshes: dict[int, Mesh] = {}
    for label in mesher.ids():
        if label == 0:
            continue
        mesh = mesher.get(int(label), normals=False, reduction_factor=reduction_factor, max_error=max_error, voxel_centered=True)
        mesher.erase(int(label))  # free each mesh once taken: a block holds many
        if len(mesh.faces):
            vertices = (np.asarray(mesh.vertices, np.float64) + offset).astype(np.float32)
            meshes[int(label)] = (vertices, np.asarray(mesh.faces, np.uint32).reshape(-1, 3))
    mesher.clear()
    return meshes


def _kimimaro():
    try:
        import kimimaro
    except ImportError:
        raise ConfigError("--skeletons needs kimimaro; run: pip install 'neuroflood[skeletons]'") from None
    return kimimaro


def skeletonize_labels(labels: np.ndarray, voxel_size: Sequence[float], origin: Sequence[int] = (0, 0, 0)) -> dict:
    """TEASAR skeletons (kimimaro) of every non-zero label, vertices x, y, z nm at voxel centres.

    ``fix_borders`` puts an end point where an object leaves the array, at the same place in
    the neighbouring block (the blocks share their one-voxel overlap), so that
    :func:`merge_skeletons` joins the pieces. Returns label → ``osteoid.Skeleton``.
    """
    kimimaro = _kimimaro()
    resolution = np.asarray(voxel_size[::-1], np.float64)
    skeletons = kimimaro.skeletonize(
        np.asarray(labels).T,
        # kimimaro's neuron defaults (scale 1.5, const 300 nm at ~10 nm voxels), in voxels
        teasar_params={"scale": 1.5, "const": 30.0 * float(resolution.mean())},
        anisotropy=tuple(float(v) for v in resolution),
        dust_threshold=0,  # a block may hold only a sliver of a large object
        fix_borders=True,
        progress=False,
        parallel=1,
    )
    # kimimaro puts voxel i at i × resolution; neuroglancer's voxel centre is (i + 0.5) × resolution
    shift = (np.asarray(origin[::-1], np.float64) + 0.5) * resolution
    for skeleton in skeletons.values():
        skeleton.vertices = (np.asarray(skeleton.vertices, np.float64) + shift).astype(np.float32)
    return {int(k): s for k, s in skeletons.items()}


def merge_skeletons(pieces: list, segment: int, voxel_size: Sequence[float]) -> object | None:
    """One skeleton from a segment's block pieces: join shared border points, drop loops and
    short spurs (kimimaro's ``postprocess``). None if there are no vertices."""
    kimimaro = _kimimaro()
    from osteoid import Skeleton

    merged = Skeleton.simple_merge(pieces).consolidate()
    if not len(merged.vertices):
        return None
    unit = float(np.mean(voxel_size))
    # no dust threshold: a thin segment in small blocks may come as short pieces only
    skeleton = kimimaro.postprocess(merged.clone(), dust_threshold=0, tick_threshold=10 * unit)
    if not len(skeleton.vertices):  # postprocess removes a skeleton that is one loop: keep the loop
        skeleton = merged
    skeleton.id = int(segment)
    return skeleton
