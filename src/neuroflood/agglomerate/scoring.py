"""Scoring a pair's resegmentation, and the rule that turns scores into a merge.

google/ffn ``resegmentation_analysis.evaluate_pair_resegmentation`` (ffn-algorithms.md §4.6).
Inside the **analysis box** (the decision point ± ``analysis_radius``), with the two fills
thresholded at ``threshold`` (0.5):

``iou``
    voxels both fills hold / voxels either fill holds.
``from_a`` / ``from_b``
    the fill seeded in segment A / in segment B, each with
    ``segment_a_consistency`` (the fraction of the original segment A that this fill holds),
    ``segment_b_consistency`` (the same for B), ``num_voxels`` (the fill's voxels),
    ``deleted_voxels`` (voxels the FFN removed from the mask — p fell from ≥ 0.8 to < 0.5 —
    summed over the FOV steps centred inside the box) and ``max_edt`` (the fill's thickness).
    So the fraction of B that A's fill recovered is ``from_a.segment_b_consistency``, and the
    fraction of A that B's fill recovered is ``from_b.segment_a_consistency``.
``max_edt_a``, ``max_edt_b``, ``num_voxels_a``, ``num_voxels_b``
    thickness and size of the original segments in the box.

The manual rule (google/ffn): a fill **supports** the merge when ``iou > 0.8``, both of its
consistencies are ``> 0.6`` and ``deleted_voxels / num_voxels < 0.02``. By default both fills
must support it; ``one_sided`` merges on one fill's word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class FillScore:
    """The scores of one fill (seeded in A or in B); see the module docstring."""

    num_voxels: int = 0
    deleted_voxels: int = 0
    segment_a_consistency: float = 0.0
    segment_b_consistency: float = 0.0
    max_edt: float = 0.0
    origin: tuple[int, int, int] | None = None  # global z, y, x of the last seed


@dataclass
class PairScore:
    """The scores of one pair; ``status`` is ``"ok"`` or why there are none (no merge)."""

    iou: float = 0.0
    from_a: FillScore = field(default_factory=FillScore)
    from_b: FillScore = field(default_factory=FillScore)
    max_edt_a: float = 0.0
    max_edt_b: float = 0.0
    num_voxels_a: int = 0
    num_voxels_b: int = 0
    status: str = "ok"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PairScore:
        d = dict(d)
        d["from_a"] = FillScore(**d["from_a"])
        d["from_b"] = FillScore(**d["from_b"])
        return cls(**d)


@dataclass(frozen=True)
class MergeRule:
    """google/ffn's manual merge rule (see the module docstring)."""

    min_iou: float = 0.8
    min_consistency: float = 0.6
    max_deleted_fraction: float = 0.02
    one_sided: bool = False

    def supports(self, score: PairScore, fill: FillScore) -> bool:
        """Whether ``fill`` (``score.from_a`` or ``score.from_b``) supports merging the pair."""
        if score.status != "ok" or fill.num_voxels <= 0:
            return False
        return (
            score.iou > self.min_iou
            and fill.segment_a_consistency > self.min_consistency
            and fill.segment_b_consistency > self.min_consistency
            and fill.deleted_voxels / fill.num_voxels < self.max_deleted_fraction
        )

    def merge(self, score: PairScore) -> bool:
        """Both fills support it (or one, with ``one_sided``)."""
        a, b = self.supports(score, score.from_a), self.supports(score, score.from_b)
        return (a or b) if self.one_sided else (a and b)


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Jaccard index of two boolean masks (0 when both are empty)."""
    union = int(np.count_nonzero(mask_a | mask_b))
    return int(np.count_nonzero(mask_a & mask_b)) / union if union else 0.0


def score_fill(
    mask: np.ndarray,
    seg_a: np.ndarray,
    seg_b: np.ndarray,
    moves: np.ndarray,
    deleted: np.ndarray,
    box: tuple[slice, ...],
    voxel_size: Sequence[float],
) -> FillScore:
    """Scores of one thresholded fill ``mask`` (analysis box already cropped).

    ``moves`` (n, 3) are the FOV centres of the fill in subvolume coordinates, ``deleted``
    (n,) the voxels each step deleted, ``box`` the analysis box in subvolume coordinates:
    only the steps centred inside it count (inclusive bounds, as google/ffn).
    """
    moves = np.asarray(moves, np.int64).reshape(-1, 3)
    deleted = np.asarray(deleted, np.int64).reshape(-1)
    lo = np.array([s.start for s in box])
    hi = np.array([s.stop - 1 for s in box])
    inside = np.all((moves >= lo) & (moves <= hi), axis=1) if len(moves) else np.zeros(0, bool)
    n_a, n_b = int(np.count_nonzero(seg_a)), int(np.count_nonzero(seg_b))
    return FillScore(
        num_voxels=int(np.count_nonzero(mask)),
        deleted_voxels=int(deleted[inside].sum()) if len(deleted) == len(moves) else int(deleted.sum()),
        segment_a_consistency=int(np.count_nonzero(mask & seg_a)) / n_a if n_a else 0.0,
        segment_b_consistency=int(np.count_nonzero(mask & seg_b)) / n_b if n_b else 0.0,
        max_edt=_max_edt(mask, voxel_size),
    )


def _max_edt(mask: np.ndarray, voxel_size: Sequence[float]) -> float:
    if not mask.any():
        return 0.0
    return float(ndimage.distance_transform_edt(mask, sampling=tuple(float(v) for v in voxel_size)).max())


def score_pair(
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    seg: np.ndarray,
    id_a: int,
    id_b: int,
    box: tuple[slice, ...],
    fills: Sequence[tuple[np.ndarray, np.ndarray]],
    voxel_size: Sequence[float] = (1, 1, 1),
    threshold: float = 0.5,
) -> PairScore:
    """Score the fills ``prob_a`` and ``prob_b`` (probabilities of the subvolume; NaN = never
    predicted) against the original segmentation ``seg`` of the subvolume, in ``box``.

    ``fills``: (moves, deleted) of the fill from A and of the fill from B.
    """
    seg_a, seg_b = seg[box] == id_a, seg[box] == id_b
    score = PairScore(num_voxels_a=int(np.count_nonzero(seg_a)), num_voxels_b=int(np.count_nonzero(seg_b)))
    if not score.num_voxels_a or not score.num_voxels_b:
        score.status = "outside_analysis_box"
        return score
    score.max_edt_a = _max_edt(seg_a, voxel_size)
    score.max_edt_b = _max_edt(seg_b, voxel_size)
    mask_a = np.nan_to_num(prob_a[box]) >= threshold  # NaN: never predicted
    mask_b = np.nan_to_num(prob_b[box]) >= threshold
    score.iou = iou(mask_a, mask_b)
    score.from_a = score_fill(mask_a, seg_a, seg_b, *fills[0], box, voxel_size)
    score.from_b = score_fill(mask_b, seg_a, seg_b, *fills[1], box, voxel_size)
    return score


__all__ = ["FillScore", "MergeRule", "PairScore", "iou", "score_fill", "score_pair"]
