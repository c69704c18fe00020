"""3-D pictures for the evaluation report: the largest segments, the worst merge, the worst split.

The worst merge is the segment that contributes most to VI merge, the worst split the
ground-truth object that contributes most to VI split, both over segmented labelled voxels
(``seg != 0``, ``gt != 0``; unsegmented voxels are counted by the coverage metrics):

* segment ``s`` adds ``Σ_g n_gs / N · log2(n_s / n_gs)`` to H(gt | seg),
* object ``g`` adds ``Σ_s n_gs / N · log2(n_g / n_gs)`` to H(seg | gt).

The merged segment is drawn cut into the ground-truth objects it covers (each in its colour;
grey where unlabelled), the split object cut into its segments (grey where unsegmented), so
the picture shows what went wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .metrics import Contingency

__all__ = ["vi_contributions", "views_3d"]


def vi_contributions(table: Contingency) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-segment VI merge and per-object VI split, in bits, over segmented labelled voxels.

    Returns ``((segment ids, merge bits, objects covered), (object ids, split bits, segments))``.
    """
    keep = table.seg != 0
    g, s, n = table.gt[keep], table.seg[keep], table.count[keep].astype(np.float64)
    total = n.sum() or 1.0
    out = []
    for owner in (s, g):  # rows are distinct (gt, seg) pairs: an owner's rows count its partners
        ids, inverse, parts = np.unique(owner, return_inverse=True, return_counts=True)
        size = np.bincount(inverse, weights=n, minlength=len(ids))
        bits = np.bincount(inverse, weights=n / total * np.log2(size[inverse] / n), minlength=len(ids))
        out.append((ids, bits, parts))
    return out[0], out[1]


def views_3d(inputs: Any, table: Contingency, voxel_size: Sequence[float], n_largest: int = 6) -> tuple[Figure | None, dict[str, Any]]:
    """The figure (None when nothing is segmented) and what it shows, for metrics.json."""
    from ..mesh.render import mesh_figure, object_meshes

    seg_ids, seg_sizes = table.seg_sizes()
    if not len(seg_ids):
        return None, {}
    largest = [int(i) for i in seg_ids[np.argsort(-seg_sizes, kind="stable")[:n_largest]]]
    panels = [(f"the {len(largest)} largest segments", object_meshes(inputs.seg, largest, voxel_size))]
    shown: dict[str, Any] = {"largest_segments": largest}
    (merge_ids, merge_bits, covered), (split_ids, split_bits, cut) = vi_contributions(table)
    if len(merge_ids) and merge_bits.max() > 0:
        k = int(np.argmax(merge_bits))
        segment = int(merge_ids[k])
        shown["worst_merge"] = {"segment": segment, "vi_merge_bits": float(merge_bits[k]), "n_gt_objects": int(covered[k])}
        panels.append(
            (
                f"worst merge: segment {segment} touching {int(covered[k])} objects",
                object_meshes(inputs.seg, [segment], voxel_size, split_by=inputs.gt),
            )
        )
    if len(split_ids) and split_bits.max() > 0:
        k = int(np.argmax(split_bits))
        obj = int(split_ids[k])
        shown["worst_split"] = {"gt_object": obj, "vi_split_bits": float(split_bits[k]), "n_segments": int(cut[k])}
        panels.append(
            (f"worst split: object {obj} touching {int(cut[k])} segments", object_meshes(inputs.gt, [obj], voxel_size, split_by=inputs.seg))
        )
    return mesh_figure(panels), shown
