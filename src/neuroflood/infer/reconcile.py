"""Making block-local ids global: overlap agreement, union-find, sequential relabelling.

Every block ``b`` stores its own segmentation of its whole box; its core is also written to
a shared volume of *block ids* ``(b + 1) << 32 | local id``. For each block, the voxels of its
margins (box minus core) carry two ids: the block's own and the neighbour's (whose core holds
them). An object ``a`` of block A and an object ``b`` of block B **agree in A's margin** when

* ``n_ab >= min_overlap_voxels`` voxels carry both ids, and
* ``n_ab / min(n_a, n_b) >= min_overlap_fraction``, where ``n_a`` and ``n_b`` count each
  object's voxels inside that same margin region.

That is, the smaller of the two pieces lies mostly inside the other. The margins of A and B
face each other (each block sees half the overlap beyond its core face), so the owner of the
other side can check A's word: with ``both_sides`` (the default) the pair is joined only if
B's own ``b`` also **touches** ``a`` (at least one voxel carries both ids) in B's margin,
which lies in A's core. A flood fill that leaked from one neuron into another inside A's
margin makes A's piece agree with the other neuron's piece there, while in B's margin that
neuron's piece never meets A's object; on one side's word alone, that one leak would merge
two whole neurons across a face.
A piece of which A owns no voxel (it lies wholly in A's margins) cannot be checked from the
other side and joins on A's word: it is how A tells two neighbours that their pieces meet
inside A's box.

An object that a block flooded from a **hand-over seed** (:mod:`neuroflood.infer.handover`)
was seeded inside a neighbour's object ``a``, in the neighbour's margin. It joins ``a`` when
it also overlaps ``a`` by at least ``min_overlap_voxels`` in its own block's margin, which
lies in ``a``'s block's core: the seed says the two are one object on ``a``'s side of the face,
the overlap says so on the other. The overlap fraction is not asked: a piece flooded late
meets its neighbour's object only where the earlier objects left room. For the same reason an
older object of the block whose voxels the new fill ran over (at least ``min_overlap_voxels``)
may do the touching in its place.

Such an object is often the rest of an object the block already has, whose fill stopped
(at a thin neck, say) before the block's face: the new fill then runs over the old object's
voxels before the Canvas cuts it to free ones, as one fill over the whole object would have.
The two **join inside the block** when that covered part passes the overlap rule: at least
``min_overlap_voxels`` voxels, and at least ``min_overlap_fraction`` of the smaller object.

Joins are transitive (union-find over all blocks); every other object keeps an id of its own.
The result is a mapping from block ids to sequential ids 1..N in block order. Memory is
bounded by one block plus the number of objects; the whole volume is never loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

BLOCK_SHIFT = 32


def encode(block_index: int, local: np.ndarray) -> np.ndarray:
    """Block ids: ``(block_index + 1) << 32 | local``; 0 stays 0."""
    local = local.astype(np.uint64)
    out = local | np.uint64((block_index + 1) << BLOCK_SHIFT)
    out[local == 0] = 0
    return out


@dataclass(frozen=True)
class OverlapRule:
    min_overlap_voxels: int = 50
    min_overlap_fraction: float = 0.5
    both_sides: bool = True  # the other block must see the two pieces touch in its margin


def confirmed_pairs(agreeing: np.ndarray, touching: np.ndarray, core_ids: np.ndarray) -> np.ndarray:
    """The pairs ``(a, b)`` of ``agreeing`` that the other side confirms, each once as ``a < b``.

    ``(a, b)`` is confirmed when ``(b, a)`` is in ``touching`` (b meets a in b's block's
    margin) or ``a`` is not in ``core_ids`` (its block owns none of it).
    """
    touch = {(int(a), int(b)) for a, b in np.asarray(touching, np.uint64).reshape(-1, 2)}
    owned = set(np.asarray(core_ids, np.uint64).tolist())
    kept = {
        (min(a, b), max(a, b))
        for a, b in (tuple(map(int, p)) for p in np.asarray(agreeing, np.uint64).reshape(-1, 2))
        if (b, a) in touch or a not in owned
    }
    return np.array(sorted(kept), np.uint64).reshape(-1, 2)


def _overlaps(own: np.ndarray, neighbour: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every (own id, neighbour id) pair that shares a voxel of ``region``, as ``[k, 2]``, with
    ``n_ab`` (shared voxels) and ``n_a``, ``n_b`` (each object's voxels in ``region``)."""
    a = own[region]
    b = neighbour[region]
    if a.size == 0:
        empty = np.zeros(0, np.int64)
        return np.zeros((0, 2), np.uint64), empty, empty, empty
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    n_a = np.bincount(ia)
    n_b = np.bincount(ib)
    both = (a != 0) & (b != 0)
    pair = ia[both].astype(np.int64) * len(ub) + ib[both]
    keys, n_ab = np.unique(pair, return_counts=True)
    pa, pb = keys // len(ub), keys % len(ub)
    return np.stack([ua[pa], ub[pb]], axis=1).astype(np.uint64), n_ab, n_a[pa], n_b[pb]


def margin_pairs(
    own: np.ndarray, neighbour: np.ndarray, region: np.ndarray, rule: OverlapRule
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pairs that agree in ``region`` by ``rule``, pairs that share any voxel of it, the
    voxels each of those shares).

    ``own`` and ``neighbour`` hold block ids of the same voxels; pairs are (own id, neighbour id).
    """
    pairs, n_ab, n_a, n_b = _overlaps(own, neighbour, region)
    agree = (n_ab >= rule.min_overlap_voxels) & (n_ab >= rule.min_overlap_fraction * np.minimum(n_a, n_b))
    return pairs[agree], pairs, n_ab


def handover_pairs(
    handed: np.ndarray, touching: np.ndarray, shared: np.ndarray, rule: OverlapRule, ran_over: np.ndarray | None = None
) -> np.ndarray:
    """The pairs ``(b, a)`` of ``handed`` (object ``b`` flooded from a seed in neighbour object
    ``a``) that overlap by at least ``rule.min_overlap_voxels`` in ``b``'s block's margin.

    ``touching`` and ``shared``: the (own id, neighbour id) pairs of every block's margin and
    their shared voxels, as :func:`margin_pairs` returns them. ``ran_over``: pairs (``b``, an
    older object of ``b``'s block whose voxels ``b``'s fill covered, at least
    ``min_overlap_voxels`` of them); such an object may stand in for ``b`` in the margin, where
    it sits in ``b``'s way.
    """
    strong = {
        (int(b), int(a))
        for (b, a), n in zip(np.asarray(touching, np.uint64).reshape(-1, 2), np.asarray(shared).ravel())
        if n >= rule.min_overlap_voxels
    }
    stand_ins: dict[int, set[int]] = {}
    for b, other in np.asarray(ran_over if ran_over is not None else [], np.uint64).reshape(-1, 2):
        stand_ins.setdefault(int(b), set()).add(int(other))
    kept = [
        p
        for p in np.asarray(handed, np.uint64).reshape(-1, 2)
        if any((f, int(p[1])) in strong for f in {int(p[0])} | stand_ins.get(int(p[0]), set()))
    ]
    return np.array(kept, np.uint64).reshape(-1, 2)


def overlap_pairs(own: np.ndarray, neighbour: np.ndarray, region: np.ndarray, rule: OverlapRule) -> np.ndarray:
    """Pairs ``[k, 2]`` of (own id, neighbour id) that agree in ``region`` (a bool mask)."""
    return margin_pairs(own, neighbour, region, rule)[0]


def inblock_pairs(block_index: int, overlaps: np.ndarray, rule: OverlapRule) -> np.ndarray:
    """Pairs of block ids of one block: a hand-over object and an older object its fill covered.

    ``overlaps`` rows: (new id, other id, voxels covered, voxels of new, voxels of other), as
    :class:`~neuroflood.infer.blockwise.Extension` records them.
    """
    rows = np.asarray(overlaps, np.int64).reshape(-1, 5)
    keep = (
        (rows[:, 2] >= rule.min_overlap_voxels)
        & (rows[:, 2] >= rule.min_overlap_fraction * np.minimum(rows[:, 3], rows[:, 4]))
        & (rows[:, 1] > 0)
    )
    return np.stack([encode(block_index, rows[keep, 0]), encode(block_index, rows[keep, 1])], axis=1).reshape(-1, 2)


def build_mapping(ids: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over ``pairs``; return (sorted block ids, new sequential id for each).

    New ids are numbered 1..N in order of each component's smallest block id, so they are
    reproducible whatever order the blocks finished in.
    """
    ids = np.unique(np.asarray(ids, np.uint64))
    ids = ids[ids != 0]
    if len(ids) == 0:
        return ids, np.zeros(0, np.uint64)
    pairs = np.asarray(pairs, np.uint64).reshape(-1, 2)
    pairs = pairs[np.isin(pairs[:, 0], ids) & np.isin(pairs[:, 1], ids)]
    i = np.searchsorted(ids, pairs[:, 0])
    j = np.searchsorted(ids, pairs[:, 1])
    graph = sparse.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(len(ids), len(ids)))
    _, comp = connected_components(graph, directed=False)
    # renumber components by their first (smallest) member
    first = np.full(comp.max() + 1, len(ids), np.int64)
    np.minimum.at(first, comp, np.arange(len(ids)))
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return ids, (rank[comp] + 1).astype(np.uint64)


def apply_mapping(block_ids: np.ndarray, ids: np.ndarray, new: np.ndarray, dtype=np.uint64) -> np.ndarray:
    """Relabel a block-id array through the mapping; ids not in it (and 0) become 0."""
    out = np.zeros(block_ids.shape, dtype)
    nz = block_ids != 0
    if not nz.any() or len(ids) == 0:
        return out
    v = block_ids[nz]
    pos = np.clip(np.searchsorted(ids, v), 0, len(ids) - 1)
    hit = ids[pos] == v
    vals = np.zeros(v.shape, dtype)
    vals[hit] = new[pos[hit]]
    out[nz] = vals
    return out


def face_splits(
    reference: np.ndarray,
    stitched: np.ndarray,
    stride: tuple[int, ...],
    *,
    seams_only: bool = False,
    min_fraction: float = 0.0,
) -> dict[int, int]:
    """Objects of ``reference`` cut apart at block faces in ``stitched``.

    Both arrays cover the whole box; block cores start every ``stride`` voxels along each axis
    (:class:`~neuroflood.infer.blocks.BlockGrid`). A face splits an object when two voxels
    facing each other across it share a non-zero id in ``reference`` but carry two different
    non-zero ids in ``stitched``. Returns ``{reference id: number of such voxel pairs}``; an
    empty dict means no seams.

    With ``seams_only``, a pair counts only if one of its two segments never crosses that
    face (it has no voxel in the layer on the other side): then the face itself separates
    them, as when reconciliation failed to join two blocks' pieces. Otherwise both segments
    cross the face, and the boundary between them runs through the blocks (each block split
    the object the same way) and merely meets the face.

    With ``min_fraction`` > 0, a pair counts only if each of its two segments holds at least
    that fraction of the reference object's voxels. A voxel or two of the object's boundary
    given to a neighbouring segment that ends at the face is a split by the letter; it is not
    one a user would see (on 256³ volumes most face-made splits were such, docs/benchmarks.md).
    """
    if reference.shape != stitched.shape:
        raise ValueError(f"reference {reference.shape} and stitched {stitched.shape} differ in shape")
    cuts: dict[tuple[int, int, int], int] = {}  # (reference id, segment below, segment above) -> pairs
    for axis, step in enumerate(stride):
        for face in range(step, reference.shape[axis], step):
            a0, a1 = np.take(reference, face - 1, axis), np.take(reference, face, axis)
            s0, s1 = np.take(stitched, face - 1, axis), np.take(stitched, face, axis)
            cut = (a0 == a1) & (a0 != 0) & (s0 != s1) & (s0 != 0) & (s1 != 0)
            if seams_only:
                cut &= ~(np.isin(s0, s1) & np.isin(s1, s0))  # both segments on both sides: not the face's doing
            triples, n = np.unique(np.stack([a0[cut], s0[cut], s1[cut]], axis=1).astype(np.uint64), axis=0, return_counts=True)
            for (obj, p, q), k in zip(triples.tolist(), n.tolist()):
                cuts[(obj, p, q)] = cuts.get((obj, p, q), 0) + k
    if min_fraction > 0 and cuts:
        share = _shares(reference, stitched, {k[0] for k in cuts})
        cuts = {k: n for k, n in cuts.items() if min(share.get((k[0], k[1]), 0.0), share.get((k[0], k[2]), 0.0)) >= min_fraction}
    counts: dict[int, int] = {}
    for (obj, _, _), n in cuts.items():
        counts[obj] = counts.get(obj, 0) + n
    return counts


def _shares(reference: np.ndarray, stitched: np.ndarray, objects: set[int]) -> dict[tuple[int, int], float]:
    """{(reference id, segment): the fraction of that object's voxels the segment holds}, for ``objects``."""
    ref = reference.ravel()
    inside = np.isin(ref, np.fromiter(objects, np.uint64, len(objects)).astype(ref.dtype))
    r, s = ref[inside].astype(np.uint64), stitched.ravel()[inside].astype(np.uint64)
    objs, sizes = np.unique(r, return_counts=True)
    size = dict(zip(objs.tolist(), sizes.tolist()))
    pairs, n = np.unique(np.stack([r, s], axis=1), axis=0, return_counts=True)
    return {(a, b): k / size[a] for (a, b), k in zip(pairs.tolist(), n.tolist())}
