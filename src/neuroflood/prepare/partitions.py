"""Partition volumes: each voxel's local same-label fraction, quantised into classes.

The reference (google/ffn ``compute_partitions.py``, ffn-algorithms.md §2.10) removes objects
smaller than ``min_size`` voxels, then, for every labelled voxel *v* at least ``lom_radius``
from the faces, counts the voxels of *v*'s own label in the box of radius ``lom_radius``
around *v* and quantises ``fraction = count / box_volume`` by ``thresholds``:

=====================  ==================================================================
class 0                background (label 0, dust, or a label outside ``id_whitelist``)
class i + 1            ``fraction < thresholds[i]`` for the first such i
class K + 1            ``fraction >= thresholds[-1]`` (K thresholds)
255                    the border (``max(lom_radius, margin)`` from a face), masked
                       neighbourhoods and exclusion spheres: never sampled
=====================  ==================================================================

The reference builds one full-volume summed-volume table per label, so its cost grows with
volume × number of labels. Here a label's table covers only the label's bounding box grown by
the radius, and is queried only at the label's own voxels, so the cost grows with the sum of
the labels' (grown) bounding boxes. Volumes larger than memory are processed in blocks with a
halo of ``lom_radius`` (:func:`partition_volume`); the result is identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..bbox import BoundingBox
from ..errors import DataError
from .params import IGNORE, README_THRESHOLDS, PartitionParams, Triple  # the first three are part of this API


def class_lut(thresholds: Sequence[float], window_volume: int) -> np.ndarray:
    """Class of every possible own-label count 0..window_volume (count 0 = background = class 0).

    The fraction is computed and compared exactly as the reference does (float64
    ``count / window_volume < threshold``), so classes match it bit for bit.
    """
    fraction = np.arange(window_volume + 1) / window_volume
    lut = np.full(window_volume + 1, len(thresholds) + 1, np.uint8)
    for i in reversed(range(len(thresholds))):  # the first threshold above the fraction wins
        lut[fraction < thresholds[i]] = i + 1
    lut[0] = 0
    return lut


# ----------------------------------------------------------------------------------------
# Input checks and dust removal
# ----------------------------------------------------------------------------------------


def check_labels_dtype(dtype: Any, shape: Sequence[int], name: str = "labels") -> None:
    """Labels must be a non-empty 3-D integer volume."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise DataError(
            f"{name} have dtype {dtype}; labels must be integer object ids (0 = background): "
            "convert them, e.g. with numpy's astype(np.uint64)"
        )
    if len(shape) != 3:
        raise DataError(f"{name} have shape {tuple(shape)}; labels must be a 3-D z,y,x volume")
    if math.prod(shape) == 0:
        raise DataError(f"{name} are empty (shape {tuple(shape)}); give a volume with labelled voxels")


def label_sizes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique label ids and their voxel counts (ids as int64 or uint64); rejects negative ids."""
    import fastremap

    ids, counts = fastremap.unique(labels, return_counts=True)
    if ids.dtype.kind == "i" and len(ids) and ids[0] < 0:
        raise DataError(f"labels contain negative id {int(ids[0])}; ids must be >= 0 (0 = background): relabel them")
    return ids, counts.astype(np.int64)


def merge_label_sizes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-block (ids, counts) into one sorted (ids, counts)."""
    ids = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


def kept_ids(ids: np.ndarray, counts: np.ndarray, params: PartitionParams) -> np.ndarray:
    """The ids that get classes 1..K+1: non-zero, at least ``min_size`` voxels, whitelisted.

    Like the reference's ``clear_dust``, whole label ids are removed by their total size in
    the volume (not connected components).
    """
    keep = (ids != 0) & (counts >= params.min_size)
    if params.id_whitelist is not None:
        keep &= np.isin(ids, np.array(sorted(params.id_whitelist), dtype=ids.dtype))
    return ids[keep]


def require_objects(kept: np.ndarray, ids: np.ndarray, params: PartitionParams, name: str = "labels") -> None:
    if len(kept):
        return
    if not np.any(ids != 0):
        raise DataError(f"{name} contain no labelled voxel (all 0); give a volume with objects")
    why = f"at least min_size={params.min_size} voxels"
    if params.id_whitelist is not None:
        why += " and in id_whitelist"
    raise DataError(f"no object in {name} has {why}; lower --min-size or check the whitelist")


# ----------------------------------------------------------------------------------------
# The core: classes of one block
# ----------------------------------------------------------------------------------------


def compact_labels(labels: np.ndarray, kept: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Relabel to small consecutive ids: kept ids → 1..n, everything else → 0.

    ``present`` (optional) lists ids that include every id of ``labels``; it saves a pass.
    Works slab by slab so that no full-size copy of 64-bit labels is made.
    """
    import fastremap

    if present is None:
        present = fastremap.unique(labels)
    here = present[np.isin(present, kept.astype(present.dtype, copy=False))]
    mapping = dict.fromkeys(present.tolist(), 0)
    mapping.update(zip(here.tolist(), range(1, len(here) + 1)))
    dtype = np.min_scalar_type(len(here))
    out = np.empty(labels.shape, dtype if dtype.itemsize > 1 else np.uint8)
    step = max(1, (1 << 20) // max(1, labels[0].size))
    for z in range(0, labels.shape[0], step):
        out[z : z + step] = fastremap.remap(np.ascontiguousarray(labels[z : z + step]), mapping, preserve_missing_labels=False)
    return out


def own_label_counts(compact: np.ndarray, roi: BoundingBox, radius: Triple) -> np.ndarray:
    """For every voxel of ``roi``, the number of voxels of its own label within ``radius``.

    ``compact`` holds small label ids (0 = background, which gets count 0); every window
    around a voxel of ``roi`` must lie inside ``compact``. For each label, a summed-volume
    table covers only the windows of the label's roi voxels, is computed only inside the
    label's own bounding box (outside it the prefix sums are constant), and is read only at
    the label's own voxels, 8 corners each.
    """
    sub = compact[roi.to_slices()]
    flat = sub.ravel()
    n_ids = int(flat.max(initial=0)) + 1
    starts = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=n_ids))])
    order = np.argsort(flat, kind="stable")  # voxels grouped by label, ascending position
    objects = ndimage.find_objects(compact, max_label=n_ids - 1)
    counts = np.zeros(sub.size, np.int32)
    workspace = np.empty(0, np.int64)
    for label in range(1, n_ids):
        lo, hi = starts[label], starts[label + 1]
        if lo == hi:
            continue
        idx = order[lo:hi]
        z, y, x = np.unravel_index(idx, sub.shape)
        # The windows of this label's roi voxels span [low, high) in block coordinates.
        first = (int(z[0]), int(y.min()), int(x.min()))  # idx is sorted, so z[0] is the min
        last = (int(z[-1]), int(y.max()), int(x.max()))
        low = [f + o - r for f, o, r in zip(first, roi.start, radius)]
        high = [e + o + r + 1 for e, o, r in zip(last, roi.start, radius)]
        table, workspace = _summed_volume_table(compact, label, low, high, objects[label - 1], workspace)
        sy, sx = table.shape[1], table.shape[2]
        # Window of roi voxel p starts at table index p + roi.start - radius - low.
        shift = [o - r - a for o, r, a in zip(roi.start, radius, low)]
        base = (z + shift[0]) * (sy * sx)
        base += (y + shift[1]) * sx
        base += x + shift[2]
        diam = [2 * r + 1 for r in radius]
        counts[idx] = _box_sums(table.ravel(), base, diam[0] * sy * sx, diam[1] * sx, diam[2])
    return counts.reshape(sub.shape)


def _summed_volume_table(
    compact: np.ndarray,
    label: int,
    low: Sequence[int],
    high: Sequence[int],
    object_box: tuple[slice, slice, slice],
    workspace: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded prefix sums of ``compact == label`` over ``[low, high)``.

    ``table[i, j, k]`` is the count of the label in ``[low, low + (i, j, k))``. Prefix sums
    are computed only over the label's own box ``object_box ∩ [low, high)``; before it they
    are 0 and after it they repeat the last computed value. The buffer is reused between
    labels (it only grows) to avoid page-faulting a fresh array each time.
    """
    shape = tuple(b - a + 1 for a, b in zip(low, high))
    n = math.prod(shape)
    dtype = np.dtype(np.int32 if n < 2**31 else np.int64)
    if workspace.nbytes < n * dtype.itemsize:
        workspace = np.empty(n * dtype.itemsize // 8 + 1, np.int64)
    table = workspace.view(dtype)[:n].reshape(shape)
    # Inner box in table indices: rows c0+1 .. c1 hold computed sums.
    c0 = [max(s.start, a) - a for s, a in zip(object_box, low)]
    c1 = [min(s.stop, b) - a for s, a, b in zip(object_box, low, high)]
    z0, y0, x0 = c0
    z1, y1, x1 = c1
    inner = table[z0 + 1 : z1 + 1, y0 + 1 : y1 + 1, x0 + 1 : x1 + 1]
    region = compact[low[0] + z0 : low[0] + z1, low[1] + y0 : low[1] + y1, low[2] + x0 : low[2] + x1]
    np.equal(region, label, out=inner, casting="unsafe")
    # Prefix sums: whole planes along z and y (numpy's cumsum is slow on outer axes), then
    # contiguous rows along x.
    for i in range(1, inner.shape[0]):
        np.add(inner[i], inner[i - 1], out=inner[i])
    for j in range(1, inner.shape[1]):
        np.add(inner[:, j], inner[:, j - 1], out=inner[:, j])
    np.cumsum(inner, axis=2, out=inner)
    # Extend outwards axis by axis: zeros before the label's box, the last value after it.
    rows = table[z0 + 1 : z1 + 1, y0 + 1 : y1 + 1]
    rows[:, :, : x0 + 1] = 0
    rows[:, :, x1 + 1 :] = rows[:, :, x1 : x1 + 1]
    planes = table[z0 + 1 : z1 + 1]
    planes[:, : y0 + 1] = 0
    planes[:, y1 + 1 :] = planes[:, y1 : y1 + 1]
    table[: z0 + 1] = 0
    table[z1 + 1 :] = table[z1 : z1 + 1]
    return table, workspace


def _box_sums(table: np.ndarray, base: np.ndarray, oz: int, oy: int, ox: int) -> np.ndarray:
    """Window sums from a flat summed-volume table: ``base`` is each window's low corner and
    ``oz, oy, ox`` the flat offsets of the window's extent along z, y, x (8 corners)."""
    total = table.take(base + (oz + oy + ox))
    index = np.empty_like(base)
    value = np.empty_like(total)
    for offset, sign in ((oy + ox, -1), (oz + ox, -1), (oz + oy, -1), (ox, 1), (oy, 1), (oz, 1), (0, -1)):
        np.add(base, offset, out=index)
        table.take(index, out=value)
        if sign > 0:
            total += value
        else:
            total -= value
    return total


def box_any(mask: np.ndarray, roi: BoundingBox, radius: Triple) -> np.ndarray:
    """For every voxel of ``roi``: is any voxel of ``mask`` within ``radius`` (box)?

    Every window around a voxel of ``roi`` must lie inside ``mask`` (as in the reference's
    summed-volume query ``>= 1``).
    """
    m = mask.astype(bool, copy=False)
    for axis, r in enumerate(radius):
        if r == 0:
            continue
        # Running window sum along one axis through a cumulative sum: count > 0 ⇔ any.
        c = np.cumsum(m, axis=axis, dtype=np.int32)
        c = np.concatenate([np.zeros_like(c.take([0], axis=axis)), c], axis=axis)
        n = m.shape[axis]
        upper = c.take(range(min(2 * r + 1, n + 1), n + 1), axis=axis)
        lower = c.take(range(0, n + 1 - min(2 * r + 1, n + 1)), axis=axis)
        win = upper - lower
        pad = [(0, 0)] * 3
        pad[axis] = (r, n - win.shape[axis] - r)
        m = np.pad(win > 0, pad)
    return m[roi.to_slices()]


def partition_block(
    labels: np.ndarray,
    roi: BoundingBox,
    kept: np.ndarray,
    params: PartitionParams,
    lut: np.ndarray,
    mask: np.ndarray | None = None,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Partition classes (uint8) of the voxels of ``roi`` inside a labels block with halo.

    ``labels`` must include every window around ``roi``; ``kept`` are the label ids that are
    neither dust nor outside the whitelist (decided on the whole volume).
    """
    compact = compact_labels(labels, kept, present)
    counts = own_label_counts(compact, roi, params.lom_radius)
    classes = lut[counts]
    if mask is not None:
        classes[box_any(mask, roi, params.lom_radius)] = IGNORE
    return classes


def exclude_spheres(out: np.ndarray, origin: Sequence[int], regions: Iterable[Sequence[int]]) -> None:
    """Set voxels within each sphere ``(z, y, x, radius)`` to 255; ``out`` starts at ``origin``."""
    for z, y, x, r in regions:
        box = BoundingBox((z - r, y - r, x - r), (2 * r + 1,) * 3).relative_to(origin).clip(out.shape)
        if box is None:
            continue
        gz, gy, gx = np.ogrid[box.to_slices()]
        inside = (gz + origin[0] - z) ** 2 + (gy + origin[1] - y) ** 2 + (gx + origin[2] - x) ** 2 <= r * r
        out[box.to_slices()][inside] = IGNORE


# ----------------------------------------------------------------------------------------
# Public API: in memory and blockwise
# ----------------------------------------------------------------------------------------


def compute_partitions(
    labels: np.ndarray,
    lom_radius: Sequence[int] | int = (24, 24, 24),
    thresholds: Sequence[float] = README_THRESHOLDS,
    min_size: int = 10000,
    margin: Sequence[int] | int = (0, 0, 0),
    mask: np.ndarray | None = None,
    *,
    id_whitelist: Iterable[int] | None = None,
    exclusion_regions: Iterable[Sequence[int]] | None = None,
) -> np.ndarray:
    """Partition classes of an in-memory label volume (google/ffn ``compute_partitions``).

    Parameters
    ----------
    labels : (Z, Y, X) integer ndarray
        Object ids, 0 = background. Not modified.
    lom_radius : 3 ints (z, y, x) or int
        Radius of the box in which the same-label fraction is measured (README: 24).
    thresholds : sequence of float
        Strictly increasing fractions; K thresholds give classes 1..K+1.
    min_size : int
        Objects (whole label ids) with fewer voxels are background (class 0).
    margin : 3 ints (z, y, x) or int
        Voxels closer than ``margin`` to a face are set to 255 as well, so that the result
        marks exactly the voxels that training with that margin can sample; the 255 border
        is ``max(lom_radius, margin)`` per axis. The reference has no such parameter; the
        default 0 reproduces it (border = ``lom_radius``).
    mask : (Z, Y, X) array, optional
        Non-zero = excluded. Voxels with any masked voxel in their box are 255.
    id_whitelist : iterable of int, optional
        Only these ids get classes 1..K+1; others are class 0 (as in the reference).
    exclusion_regions : iterable of (z, y, x, radius), optional
        Spheres set to 255.

    Returns
    -------
    partitions : (Z, Y, X) uint8 ndarray
        Classes 0..K+1, and 255 for the border, masked voxels and exclusion spheres.

    Raises
    ------
    DataError
        Non-integer, negative or empty labels; no object left after dust removal; a radius
        or margin that leaves no voxel; a mask of another shape.
    ConfigError
        Invalid parameters (e.g. unsorted thresholds).

    Examples
    --------
    >>> labels = np.zeros((9, 9, 9), np.uint64)
    >>> labels[:, :, 4:] = 7  # a slab: fraction >= 0.5, class 2
    >>> labels[:, 2, 1] = 3  # a thin line: fraction 3/27 < 0.5, class 1
    >>> p = compute_partitions(labels, lom_radius=1, thresholds=[0.5], min_size=0)
    >>> sorted(np.unique(p).tolist())
    [0, 1, 2, 255]
    """
    labels = np.asarray(labels)
    params = PartitionParams.make(lom_radius, thresholds, min_size, margin, id_whitelist, exclusion_regions)
    check_labels_dtype(labels.dtype, labels.shape)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise DataError(f"mask shape {mask.shape} differs from labels shape {labels.shape}; give a mask of the same size")
    core = params.core_box(labels.shape)
    ids, counts = label_sizes(labels)
    kept = kept_ids(ids, counts, params)
    require_objects(kept, ids, params)
    # Only the core's windows are needed; cut the labels down to them before relabelling.
    halo = core.grow(params.lom_radius)
    block = labels[halo.to_slices()]
    roi = core.relative_to(halo.start)
    out = np.full(labels.shape, IGNORE, np.uint8)
    out[core.to_slices()] = partition_block(
        block,
        roi,
        kept,
        params,
        class_lut(params.thresholds, params.window_volume),
        None if mask is None else mask[halo.to_slices()],
        present=ids,
    )
    exclude_spheres(out, (0, 0, 0), params.exclusion_regions)
    return out


def iter_blocks(region: BoundingBox, block_shape: Sequence[int]) -> Iterator[BoundingBox]:
    """Blocks of ``block_shape`` aligned to multiples of it (so writes align with chunks), cut to ``region``."""
    ranges = [range((a // b) * b, a + s, b) for a, s, b in zip(region.start, region.size, block_shape)]
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                box = BoundingBox((z, y, x), tuple(block_shape)).intersection(region)
                if box is not None:
                    yield box


def partition_volume(
    labels: Any,
    out: Any,
    params: PartitionParams,
    mask: Any = None,
    block_shape: Sequence[int] = (256, 256, 256),
    progress: bool = True,
    name: str = "labels",
) -> np.ndarray:
    """Partition a (lazy) label volume blockwise into ``out``; return counts per value (256).

    ``labels``, ``mask`` and ``out`` are :class:`~neuroflood.volume.Volume` objects (or
    arrays) of the same shape; ``out`` must already hold 255 (its fill value) everywhere.
    Two passes: label sizes over the whole volume (dust removal needs global sizes), then
    classes block by block, each read with a halo of ``lom_radius``. Memory stays near a few
    times one block with its halo.
    """
    from tqdm import tqdm

    check_labels_dtype(labels.dtype, labels.shape, name)
    shape = tuple(labels.shape)
    if mask is not None and tuple(mask.shape) != shape:
        raise DataError(f"mask shape {tuple(mask.shape)} differs from {name} shape {shape}; give a mask of the same size")
    core = params.core_box(shape)
    whole = BoundingBox.from_shape(shape)
    if whole.volume <= math.prod(b + 2 * r for b, r in zip(block_shape, params.lom_radius)):
        # Small enough for one block with its halo: read once instead of once per pass.
        labels = np.asarray(labels[whole.to_slices()])
        mask = None if mask is None else np.asarray(mask[whole.to_slices()])
    size_blocks = list(iter_blocks(whole, block_shape))
    sizes = []
    for box in tqdm(size_blocks, desc=f"{name}: label sizes", unit="block", disable=not progress):
        sizes.append(label_sizes(np.asarray(labels[box.to_slices()])))
        if len(sizes) > 64:  # keep the running list short on huge volumes
            sizes = [merge_label_sizes(sizes)]
    ids, counts = merge_label_sizes(sizes)
    kept = kept_ids(ids, counts, params)
    require_objects(kept, ids, params, name)

    lut = class_lut(params.thresholds, params.window_volume)
    totals = np.zeros(256, np.int64)
    blocks = list(iter_blocks(core, block_shape))
    for box in tqdm(blocks, desc=f"{name}: partitions", unit="block", disable=not progress):
        halo = box.grow(params.lom_radius)
        block = np.asarray(labels[halo.to_slices()])
        mblock = None if mask is None else np.asarray(mask[halo.to_slices()])
        classes = partition_block(block, box.relative_to(halo.start), kept, params, lut, mblock)
        exclude_spheres(classes, box.start, params.exclusion_regions)
        out[box.to_slices()] = classes
        totals += np.bincount(classes.ravel(), minlength=256)
    totals[IGNORE] += whole.volume - core.volume
    return totals
