"""Split consensus of two segmentations and connected-component clean-up.

google/ffn ``ffn/inference/consensus.py`` and ``segmentation.py`` (ffn-algorithms.md §4.3,
§3.7). The typical use: segment a subvolume twice, forward (``PolicyPeaks``) and in reverse
seed order (``PolicyInvertOrigins`` on the first result), and keep only what both agree on::

    consensus = split_segmentation_by_intersection(forward, reverse, min_size=1000)
"""

from __future__ import annotations

from typing import Any

import cc3d
import numpy as np

from ..errors import DataError

_LOW32 = np.uint64(0xFFFFFFFF)


def _to_uint32_space(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Ids < 2**32 (remapped through np.unique if needed) and the map back (or None)."""
    if int(x.max(initial=0)) <= 0xFFFFFFFF:
        return x, None
    values, inverse = np.unique(x, return_inverse=True)
    if len(values) > 0xFFFFFFFF:
        raise DataError("more than 2**32 - 1 distinct ids are not supported by the consensus")
    inverse = inverse.astype(np.uint64).reshape(x.shape)
    if values[0] != 0:  # keep 0 as 0
        values = np.concatenate([np.zeros(1, np.uint64), values])
        inverse += np.uint64(1)
    return inverse, values


def split_segmentation_by_intersection(a: np.ndarray, b: np.ndarray, min_size: int) -> np.ndarray:
    """Split ``a`` wherever ``b`` disagrees; every (a_id, b_id) overlap becomes its own id.

    For each id of ``a`` the overlap with the largest voxel count (ties: the smallest
    ``b`` id) keeps the ``a`` id; other overlaps get new ids above ``a.max()``, in
    increasing (b_id, a_id) order. Overlaps smaller than ``min_size`` and voxels where
    ``a`` is 0 become 0; ``(a_id, 0)`` overlaps are kept.

    Returns a new uint64 array (``a`` and ``b`` are not changed).
    """
    if a.shape != b.shape:
        raise DataError(f"consensus needs segmentations of one shape, got {a.shape} and {b.shape}")
    a64 = np.asarray(a).astype(np.uint64, copy=False).ravel()
    b64 = np.asarray(b).astype(np.uint64, copy=False).ravel()
    max_id = int(a64.max(initial=0))
    ra, a_values = _to_uint32_space(a64)
    rb, _ = _to_uint32_space(b64)

    joint = ra | (rb << np.uint64(32))
    pairs, inverse, counts = np.unique(joint, return_inverse=True, return_counts=True)
    la = pairs & _LOW32
    lb = pairs >> np.uint64(32)

    # For each a id: the b id of its largest overlap (ties: the first, i.e. smallest b id).
    order = np.lexsort((lb, -counts.astype(np.int64), la))
    first = np.ones(len(order), bool)
    first[1:] = la[order][1:] != la[order][:-1]
    a_ids, best_b = la[order][first], lb[order][first]  # a_ids ascending
    is_best = best_b[np.searchsorted(a_ids, la)] == lb

    dropped = (counts < min_size) | (la == 0)
    keep_a = ~dropped & is_best
    fresh = ~dropped & ~is_best
    new = np.zeros(len(pairs), np.uint64)
    new[keep_a] = la[keep_a] if a_values is None else a_values[la[keep_a]]
    new[fresh] = np.uint64(max_id) + np.cumsum(fresh, dtype=np.uint64)[fresh]
    return new[inverse.ravel()].reshape(np.shape(a))


def clean_up(seg: np.ndarray, split_cc: bool = True, min_size: int = 0, connectivity: int = 6) -> dict[int, int]:
    """Split segments into connected components and remove those below ``min_size``, in place.

    Returns ``{new_id: original_id}`` for the ids left (0 maps to 0). This is what google/ffn's
    ``clean_up`` intends (the reference passes ``min_size`` as the connectivity by mistake).
    """
    if connectivity not in (6, 18, 26):
        raise DataError(f"connectivity {connectivity} must be 6, 18 or 26")
    original = seg.copy()
    if split_cc:
        seg[...] = cc3d.connected_components(seg, connectivity=connectivity, out_dtype=np.uint64)
    if min_size > 0:
        ids, counts = np.unique(seg, return_counts=True)
        small = ids[(counts < min_size) & (ids != 0)]
        if len(small):
            seg[np.isin(seg, small)] = 0
    ids, first = np.unique(seg.ravel(), return_index=True)
    return {int(i): int(o) for i, o in zip(ids, original.ravel()[first])}


def compute_consensus(seg_a: np.ndarray, seg_b: np.ndarray, split_min_size: int = 1000, **clean: Any) -> np.ndarray:
    """CONSENSUS_SPLIT of two segmentations of one subvolume.

    ``clean`` (``split_cc``, ``min_size``, ``connectivity``), if given, is applied to both
    inputs first, as the reference's ``load_segmentation`` does.
    """
    for name, seg in (("A", seg_a), ("B", seg_b)):
        _check_labels(name, np.asarray(seg))
    if np.shape(seg_a) != np.shape(seg_b):
        raise DataError(f"consensus needs segmentations of one shape, got {np.shape(seg_a)} and {np.shape(seg_b)}")
    a = np.asarray(seg_a).astype(np.uint64)
    b = np.asarray(seg_b).astype(np.uint64)
    if clean:
        clean_up(a, **clean)
        clean_up(b, **clean)
    return split_segmentation_by_intersection(a, b, split_min_size)


def _check_labels(name: str, seg: np.ndarray) -> None:
    """Raise DataError unless ``seg`` is a 3-D volume of non-negative integer ids."""
    if seg.ndim != 3:
        raise DataError(f"segmentation {name} has shape {seg.shape}; the consensus needs 3-D (z, y, x) label volumes")
    if seg.dtype.kind not in "iub":
        raise DataError(f"segmentation {name} has dtype {seg.dtype}, not integer ids; give a label volume")
    if seg.dtype.kind == "i" and seg.size and seg.min() < 0:
        raise DataError(f"segmentation {name} has negative ids; ids must be >= 0")
