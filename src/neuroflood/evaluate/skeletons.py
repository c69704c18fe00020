"""Expected run length (ERL) of a segmentation along ground-truth skeletons (optional extra).

ERL (Januszewski et al. 2018) is the expected length of correctly reconstructed neurite
found from a random point on a ground-truth skeleton: cut every skeleton edge that is not
reconstructed correctly, and with pieces of lengths ``l`` on skeletons of total length ``L``,
``ERL = Σ l² / Σ L``. A perfect segmentation scores ``Σ_s L_s² / Σ_s L_s`` (``erl_max_nm``).

Assumptions (documented in docs/evaluation.md):

- Skeletons come from the dense ground truth, by kimimaro's TEASAR (``pip install
  'neuroflood[skeletons]'``), in nm with the volume's voxel size; objects smaller than
  ``dust_threshold`` voxels get no skeleton and are not scored.
- Each skeleton node takes the segment id of the voxel it lies in.
- An edge is correct when both nodes lie in the same non-zero segment and that segment is not
  a *merger*. A merger is a segment containing nodes of two or more skeletons; all its edges
  count as wrong (as in funlib.evaluate). A merge with an object that has no skeleton is not
  seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import ConfigError
from .metrics import iter_slabs, read_labels

__all__ = ["skeletonize_ground_truth", "expected_run_length"]

Skeletons = dict[int, tuple[np.ndarray, np.ndarray]]  # id -> (vertices [n, 3] nm z,y,x, edges [m, 2])


def skeletonize_ground_truth(
    gt: Any, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), dust_threshold: int = 1000, progress: bool = False
) -> Skeletons:
    """TEASAR skeletons (kimimaro) of every ground-truth object of ``dust_threshold`` voxels or more.

    ``gt`` is read into memory. Vertices are in nm, in z, y, x order.
    """
    try:
        import kimimaro
    except ImportError:
        raise ConfigError("ERL needs kimimaro; run: pip install 'neuroflood[skeletons]'") from None
    labels = np.ascontiguousarray(np.asarray(gt[...]))
    skeletons = kimimaro.skeletonize(
        labels,
        # kimimaro's neuron defaults are scale 1.5, const 300 nm at ~10 nm voxels: keep the
        # invalidation radius at 30 voxels whatever the units
        teasar_params={"scale": 1.5, "const": 30.0 * float(np.mean(voxel_size))},
        anisotropy=tuple(float(v) for v in voxel_size),
        dust_threshold=dust_threshold,
        fix_branching=True,
        progress=progress,
        parallel=1,
    )
    return {int(k): (np.asarray(s.vertices, np.float64), np.asarray(s.edges, np.int64)) for k, s in skeletons.items() if len(s.edges)}


def expected_run_length(skeletons: Skeletons, seg: Any, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, Any]:
    """ERL of ``seg`` along ``skeletons`` (see the module docstring for the rules).

    Returns ``erl_nm``, ``erl_max_nm`` (a perfect segmentation's ERL), ``erl_fraction``
    (their ratio), ``skeleton_length_nm``, ``n_skeletons``, ``n_merger_segments`` and the
    skeleton length lost to each error kind (``split_length_nm``, ``merge_length_nm``,
    ``unsegmented_length_nm``; an edge that is several kinds counts as the first that applies:
    unsegmented, merge, split).
    """
    ids = sorted(skeletons)
    if not ids:
        raise ConfigError("no ground-truth skeletons to score; lower the dust threshold or give larger objects")
    size = np.asarray(voxel_size, np.float64)
    vertices = [skeletons[i][0] for i in ids]
    offsets = np.cumsum([0] + [len(v) for v in vertices])
    all_vertices = np.concatenate(vertices)
    owner = np.repeat(np.arange(len(ids)), [len(v) for v in vertices])
    edges = np.concatenate([skeletons[i][1] + offsets[k] for k, i in enumerate(ids)])
    voxel = np.clip(np.rint(all_vertices / size).astype(np.int64), 0, np.asarray(seg.shape[:3]) - 1)
    node_seg = _labels_at(seg, voxel)

    # mergers: non-zero segments holding nodes of two or more skeletons
    pairs = np.unique(np.stack([node_seg, owner.astype(np.uint64)], 1)[node_seg != 0], axis=0)
    segs, n_skeletons_in = np.unique(pairs[:, 0], return_counts=True)
    mergers = segs[n_skeletons_in > 1]

    a, b = edges[:, 0], edges[:, 1]
    length = np.linalg.norm(all_vertices[a] - all_vertices[b], axis=1)
    unsegmented = (node_seg[a] == 0) | (node_seg[b] == 0)
    merged = ~unsegmented & (np.isin(node_seg[a], mergers) | np.isin(node_seg[b], mergers))
    split = ~unsegmented & ~merged & (node_seg[a] != node_seg[b])
    correct = ~(unsegmented | merged | split)

    n = len(all_vertices)
    graph = coo_matrix((np.ones(int(correct.sum())), (a[correct], b[correct])), shape=(n, n))
    _, piece = connected_components(graph, directed=False)
    piece_length = np.bincount(piece[a[correct]], weights=length[correct], minlength=piece.max() + 1)
    skeleton_length = np.bincount(owner[a], weights=length, minlength=len(ids))
    total = float(skeleton_length.sum())
    erl = float(np.sum(piece_length**2)) / total
    erl_max = float(np.sum(skeleton_length**2)) / total
    return {
        "erl_nm": erl,
        "erl_max_nm": erl_max,
        "erl_fraction": erl / erl_max if erl_max else 0.0,
        "skeleton_length_nm": total,
        "n_skeletons": len(ids),
        "n_merger_segments": int(len(mergers)),
        "split_length_nm": float(length[split].sum()),
        "merge_length_nm": float(length[merged].sum()),
        "unsegmented_length_nm": float(length[unsegmented].sum()),
    }


def _labels_at(vol: Any, voxels: np.ndarray) -> np.ndarray:
    """Labels of ``vol`` at integer z, y, x ``voxels``, read slab by slab."""
    out = np.zeros(len(voxels), np.uint64)
    for slab in iter_slabs(vol.shape, False, "labels"):
        here = (voxels[:, 0] >= slab.start) & (voxels[:, 0] < slab.stop)
        if here.any():
            data = read_labels(vol, slab, "segmentation")
            v = voxels[here]
            out[here] = data[v[:, 0] - slab.start, v[:, 1], v[:, 2]]
    return out
