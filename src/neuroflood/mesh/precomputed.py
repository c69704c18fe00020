"""The neuroglancer precomputed layout of meshes and skeletons beside a segmentation.

A segmentation directory written by ``neuroflood mesh``::

    info                         the volume's info: "mesh": "mesh", "skeletons": "skeletons"
    <scale key>/...              the label chunks (written by tensorstore)
    mesh/info                    {"@type": "neuroglancer_legacy_mesh"}
    mesh/<id>:0                  the manifest of segment <id>: {"fragments": [names]}
    mesh/<id>:0:<x0-x1_y0-y1_z0-z1>   one fragment per block: uint32 n, float32 xyz[n],
                                 uint32 triangles[...] (zmesh's ``to_precomputed``)
    skeletons/info               {"@type": "neuroglancer_skeletons", "vertex_attributes": [radius]}
    skeletons/<id>               uint32 nv, uint32 ne, float32 xyz[nv], uint32 edges[ne],
                                 float32 radius[nv] (osteoid's ``to_precomputed``)
    neuroflood-segments.json     segment ids with their voxel counts, largest first

Vertices are in nanometres, x, y, z, in the volume's physical space (voxel ``i`` spans
``[i, i + 1) × resolution``), as neuroglancer expects for both formats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "MESH_DIR",
    "SKELETON_DIR",
    "SEGMENTS_FILE",
    "SKELETON_ATTRIBUTES",
    "fragment_name",
    "write_fragment",
    "write_manifests",
    "write_skeleton_info",
    "finish_volume_info",
    "write_segment_sizes",
    "read_segment_sizes",
    "read_segment_mesh",
    "read_skeleton",
    "has_meshes",
]

MESH_DIR = "mesh"
SKELETON_DIR = "skeletons"
SEGMENTS_FILE = "neuroflood-segments.json"
# Per-vertex attributes after the edges of a skeleton file, in order (neuroglancer reads the
# info's list to know how many bytes follow).
SKELETON_ATTRIBUTES = [{"id": "radius", "data_type": "float32", "num_components": 1}]


def fragment_name(segment: int, box_zyx: Any) -> str:
    """``<id>:0:<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``: a fragment named after its block (igneous' naming)."""
    (z0, y0, x0), (z1, y1, x1) = box_zyx.start, box_zyx.stop
    return f"{segment}:0:{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"


def write_fragment(root: str | os.PathLike, name: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write one legacy-format fragment (vertices x, y, z in nm; triangles as vertex triples)."""
    import zmesh

    mesh = zmesh.Mesh(np.asarray(vertices, np.float32), np.asarray(faces, np.uint32), None)
    Path(root, MESH_DIR, name).write_bytes(mesh.to_precomputed())


def write_manifests(root: str | os.PathLike, fragments: dict[int, list[str]]) -> None:
    """The legacy mesh info and one manifest ``<id>:0`` per segment listing its fragments."""
    folder = Path(root, MESH_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}) + "\n")
    for segment, names in fragments.items():
        (folder / f"{segment}:0").write_text(json.dumps({"fragments": sorted(names)}))


def write_skeleton_info(root: str | os.PathLike) -> None:
    """``skeletons/info``: vertices already in nm (identity transform), radius per vertex."""
    folder = Path(root, SKELETON_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "@type": "neuroglancer_skeletons",
        "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        "vertex_attributes": SKELETON_ATTRIBUTES,
        "spatial_index": None,
    }
    (folder / "info").write_text(json.dumps(info) + "\n")


def finish_volume_info(root: str | os.PathLike, voxel_size_zyx: Sequence[float], skeletons: bool) -> None:
    """Give the volume's ``info`` its voxel size (nm, x, y, z) and point it at the meshes.

    The volume writer (:func:`neuroflood.volume.create_volume`) records a resolution of 1; the
    scale's ``key`` (its chunk directory) stays as written, so the chunks are still found.
    """
    path = Path(root, "info")
    info = json.loads(path.read_text())
    info["@type"] = "neuroglancer_multiscale_volume"
    for scale in info["scales"]:
        scale["resolution"] = [float(v) for v in voxel_size_zyx[::-1]]
    info["mesh"] = MESH_DIR
    if skeletons:
        info["skeletons"] = SKELETON_DIR
    atomic_write_text(path, json.dumps(info, indent=1) + "\n")


def write_segment_sizes(root: str | os.PathLike, sizes: dict[int, int], extra: dict[str, Any]) -> None:
    """``neuroflood-segments.json``: ``segments`` as [id, voxels] pairs, largest first, plus ``extra``."""
    ranked = sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
    body = {**extra, "segments": [[int(k), int(v)] for k, v in ranked]}
    atomic_write_bytes(Path(root, SEGMENTS_FILE), (json.dumps(body) + "\n").encode())


def read_segment_sizes(root: str | os.PathLike) -> list[tuple[int, int]]:
    """The (id, voxels) pairs of a ``neuroflood mesh`` output, largest first ([] if none recorded)."""
    try:
        body = json.loads(Path(root, SEGMENTS_FILE).read_text())
        return [(int(i), int(n)) for i, n in body["segments"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def has_meshes(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a precomputed segmentation whose info names a mesh directory."""
    try:
        info = json.loads(Path(root, "info").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("type") == "segmentation" and bool(info.get("mesh"))


def read_segment_mesh(root: str | os.PathLike, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """All fragments of ``segment`` joined: (vertices float32 [n, 3] x, y, z nm, faces uint32 [m, 3])."""
    import zmesh

    folder = Path(root, MESH_DIR)
    names = json.loads((folder / f"{segment}:0").read_text())["fragments"]
    vertices, faces, n = [], [], 0
    for name in names:
        mesh = zmesh.Mesh.from_precomputed((folder / name).read_bytes())
        vertices.append(np.asarray(mesh.vertices, np.float32).reshape(-1, 3))
        faces.append(np.asarray(mesh.faces, np.uint32).reshape(-1, 3) + n)
        n += len(vertices[-1])
    if not names:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    return np.concatenate(vertices), np.concatenate(faces)


def read_skeleton(root: str | os.PathLike, segment: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A skeleton file parsed as neuroglancer does: (vertices [n, 3] nm x, y, z, edges [m, 2], radius [n])."""
    data = Path(root, SKELETON_DIR, str(segment)).read_bytes()
    nv, ne = np.frombuffer(data, "<u4", 2)
    vertices_end = 8 + 12 * int(nv)
    edges_end = vertices_end + 8 * int(ne)
    vertices = np.frombuffer(data, "<f4", 3 * int(nv), 8).reshape(-1, 3)
    edges = np.frombuffer(data, "<u4", 2 * int(ne), vertices_end).reshape(-1, 2)
    radius = np.frombuffer(data, "<f4", int(nv), edges_end)
    if len(data) != edges_end + 4 * int(nv):
        raise ValueError(f"skeleton {segment}: {len(data)} bytes, expected {edges_end + 4 * int(nv)}")
    return vertices, edges, radius
