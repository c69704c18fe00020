"""3-D pictures of segments with matplotlib: meshes drawn as shaded triangles, one colour each.

Pictures are for reports, so they stay small and quick: each panel is simplified to a budget of
triangles (zmesh's quadric simplification, then a random subset if still over) and meshes made
from a volume are made from a subsampled copy of the objects' bounding box.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .meshing import Mesh, mesh_labels

__all__ = ["GREY_ID", "decimate", "mesh_figure", "render_precomputed", "object_meshes", "bounding_boxes"]

GREY_ID = np.iinfo(np.uint64).max - 1  # a piece with no id on the other side (unlabelled, unsegmented)
_LIGHT = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])


# The simplifier's working size: meshes are scaled to this many grid units across.
SPAN = 2.0**16


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int, seed: int = 0) -> Mesh:
    """At most ``max_faces`` triangles of a mesh: quadric simplification, then a random subset.

    The simplifier works on a grid of unit steps (up to 2^20), and zmesh 1.15's ``simplify``
    never returns on small meshes only a few units across (a 163-voxel segment of a 1-nm
    volume: tests/test_mesh.py), so the mesh is scaled to :data:`SPAN` units across first.
    """
    if len(faces) <= max_faces:
        return vertices, faces
    import zmesh

    low = vertices.min(0)
    unit = float((vertices.max(0) - low).max()) / SPAN or 1.0
    # fragments meet at block faces with duplicate vertices: join them so the surface is one piece
    mesh = zmesh.Mesh(((vertices - low) / unit).astype(np.float32), faces.astype(np.uint32), None).consolidate()
    mesher, factor = zmesh.Mesher((1, 1, 1)), int(np.ceil(len(faces) / max_faces))
    for error in SPAN * np.array([0.005, 0.01, 0.02, 0.04, 0.08]):  # the least error that meets the budget
        simple = mesher.simplify(mesh, reduction_factor=factor, max_error=float(error))
        if len(simple.faces) <= max_faces:
            break
    vertices = np.asarray(simple.vertices, np.float64) * unit + low
    faces = np.asarray(simple.faces, np.int64).reshape(-1, 3)
    if len(faces) > max_faces:  # a last resort: holes, but bounded drawing time
        keep = np.random.default_rng(seed).choice(len(faces), max_faces, replace=False)
        faces = faces[np.sort(keep)]
    return vertices, faces


def mesh_figure(panels: Sequence[tuple[str, dict[int, Mesh]]], max_faces: int = 40000, panel_size: float = 4.5) -> Figure:
    """One 3-D panel per (title, {id: mesh}); each mesh in its id's colour, lit from one side.

    Axes are x, y, z in µm (nm for panels under 2 µm across; mesh vertices are nm).
    ``max_faces`` is the budget of one panel.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    from ..evaluate.figures import id_colors

    fig = Figure(figsize=(panel_size * len(panels), panel_size + 0.4))
    for k, (title, meshes) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1, projection="3d")
        ax.set_title(title, fontsize=10)
        total = sum(len(f) for _, f in meshes.values()) or 1
        extent = max((float(np.ptp(v, axis=0).max()) for v, _ in meshes.values() if len(v)), default=0.0)
        unit, scale = ("µm", 1000.0) if extent >= 2000 else ("nm", 1.0)
        low, high = np.full(3, np.inf), np.full(3, -np.inf)
        for segment, (vertices, faces) in meshes.items():
            budget = max(50, int(max_faces * len(faces) / total))
            vertices, faces = decimate(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), budget)
            vertices = vertices / scale
            if not len(faces):
                continue
            triangles = vertices[faces]
            colour = np.array([0.6, 0.6, 0.6]) if segment == GREY_ID else id_colors(np.array([segment]))[0]
            ax.add_collection3d(Poly3DCollection(triangles, facecolors=_shade(triangles, colour), edgecolors="none"))
            low, high = np.minimum(low, vertices.min(0)), np.maximum(high, vertices.max(0))
        if np.isfinite(low).all():
            centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-3)
            for axis, c in zip("xyz", centre):
                getattr(ax, f"set_{axis}lim")(c - half, c + half)
            ax.set_box_aspect((1, 1, 1))
        else:
            ax.text2D(0.5, 0.5, "nothing to draw", ha="center", transform=ax.transAxes)
        for axis in "xyz":
            getattr(ax, f"set_{axis}label")(f"{axis} ({unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.view_init(elev=20, azim=-60)
    return fig


def _shade(triangles: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Per-triangle RGB: the colour dimmed by the angle between its normal and the light."""
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.where(length > 0, length, 1)
    light = 0.35 + 0.65 * np.abs(normals @ _LIGHT)  # two-sided: open surfaces look alike from both sides
    return np.clip(colour[None, :3] * light[:, None], 0, 1)


def render_precomputed(root: str | os.PathLike, k: int = 8, dpi: int = 100) -> bytes:
    """A PNG of the ``k`` largest segments of a ``neuroflood mesh`` output, from its fragments."""
    from ..evaluate.figures import to_png
    from .precomputed import read_segment_mesh, read_segment_sizes

    largest = [segment for segment, _ in read_segment_sizes(root)[:k]]
    meshes = {segment: read_segment_mesh(root, segment) for segment in largest}
    title = f"the {len(largest)} largest segments" if len(largest) > 1 else f"segment {largest[0]}" if largest else "no segment"
    return to_png(mesh_figure([(title, meshes)]), dpi=dpi)


def bounding_boxes(volume: Any, ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bounding box (start, stop; z, y, x voxels) of each of ``ids`` in ``volume``, read slab by slab."""
    from scipy.ndimage import find_objects

    from ..evaluate.metrics import iter_slabs, read_labels

    wanted = np.asarray(sorted({int(i) for i in ids}), np.uint64)
    boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for slab in iter_slabs(tuple(volume.shape), False, "bounding boxes"):
        labels = read_labels(volume, slab, "labels")
        where = np.searchsorted(wanted, labels).clip(0, len(wanted) - 1)
        index = np.where(wanted[where] == labels, where + 1, 0)  # 1-based position of wanted ids
        for position, found in enumerate(find_objects(index.astype(np.int32), max_label=len(wanted))):
            if found is None:
                continue
            start = np.array([found[0].start + slab.start, found[1].start, found[2].start])
            stop = np.array([found[0].stop + slab.start, found[1].stop, found[2].stop])
            key = int(wanted[position])
            if key in boxes:
                start, stop = np.minimum(start, boxes[key][0]), np.maximum(stop, boxes[key][1])
            boxes[key] = (start, stop)
    return boxes


def object_meshes(
    volume: Any,
    ids: Sequence[int],
    voxel_size: Sequence[float],
    split_by: Any = None,
    budget_voxels: int = 96**3,
) -> dict[int, Mesh]:
    """Meshes of objects ``ids`` of a label volume, from a subsampled copy of their bounding box.

    With ``split_by`` (a label volume of the same shape), the objects are cut into the pieces
    ``split_by`` gives them and each piece is meshed under that id (:data:`GREY_ID` where
    ``split_by`` is 0): a merged segment shows the ground-truth objects it covers, a split
    object the segments it is cut into. The box is subsampled by the smallest integer stride
    that keeps it under ``budget_voxels`` voxels.
    """
    boxes = bounding_boxes(volume, ids)
    if not boxes:
        return {}
    start = np.min([b[0] for b in boxes.values()], axis=0)
    stop = np.max([b[1] for b in boxes.values()], axis=0)
    stride = 1
    while np.prod(-(-(stop - start) // stride)) > budget_voxels:
        stride += 1
    crop = _strided(volume, start, stop, stride)
    inside = np.isin(crop, np.asarray(list(boxes), crop.dtype))
    if split_by is None:
        labels = np.where(inside, crop, 0).astype(np.uint64)
    else:
        other = _strided(split_by, start, stop, stride).astype(np.uint64)
        labels = np.where(inside, np.where(other == 0, GREY_ID, other), 0).astype(np.uint64)
    # pad so that objects cut by the box close; the origin moves one voxel (of the stride) down
    labels = np.pad(labels, 1)
    size = np.asarray(voxel_size, np.float64) * stride
    meshes = mesh_labels(labels, size, origin=(-1, -1, -1), reduction_factor=4)
    shift = (start[::-1] * np.asarray(voxel_size[::-1], np.float64)).astype(np.float32)
    return {k: (v + shift, f) for k, (v, f) in meshes.items()}


def _strided(volume: Any, start: np.ndarray, stop: np.ndarray, stride: int) -> np.ndarray:
    """``volume[start:stop:stride]`` on every axis, read a few planes at a time (volumes read step 1 only)."""
    planes = []
    for z in range(int(start[0]), int(stop[0]), stride):
        plane = np.asarray(volume[z : z + 1, int(start[1]) : int(stop[1]), int(start[2]) : int(stop[2])])
        planes.append(plane[0, ::stride, ::stride])
    return np.stack(planes)
