"""Split consensus of two segmentations and clean-up into connected components."""

from __future__ import annotations

import numpy as np

from neuroflood.infer.consensus import clean_up, split_segmentation_by_intersection


def test_split_segmentation_by_intersection_reference_semantics():
    a = np.array([1, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3], np.uint64)
    b = np.array([5, 5, 5, 6, 7, 7, 0, 7, 7, 8, 9], np.uint64)
    out = split_segmentation_by_intersection(a, b, min_size=1)
    # (1,5) largest keeps 1; (1,6) new; (2,7) keeps 2; (2,0) new; (0,*) -> 0;
    # (3,8) and (3,9) tie: the smaller b id keeps 3. New ids above max(a)=3 in (b, a) order.
    assert out.tolist() == [1, 1, 1, 5, 2, 2, 4, 0, 0, 3, 6]
    out = split_segmentation_by_intersection(a, b, min_size=2)
    assert out.tolist() == [1, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0]
    big = a.copy()
    big[big == 2] = 2**40  # ids beyond 32 bits are remapped and restored
    out = split_segmentation_by_intersection(big, b, min_size=1)
    assert out[4] == 2**40 and out[6] == 2**40 + 1


def test_clean_up_splits_components_and_removes_dust():
    seg = np.zeros((1, 1, 9), np.uint64)
    seg[0, 0, [0, 1, 2, 4, 6, 7]] = [3, 3, 3, 3, 5, 5]
    m = clean_up(seg, split_cc=True, min_size=2)
    kept = sorted(set(seg.ravel().tolist()) - {0})
    assert len(kept) == 2 and seg[0, 0, 4] == 0
    assert {m[k] for k in kept} == {3, 5}
