"""Segmentation metrics: hand-made volumes with known answers, and agreement with independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from neuroflood.errors import DataError
from neuroflood.evaluate import metrics as M
from neuroflood.evaluate.metrics import contingency_table, error_classes, evaluate_segmentation, segmentation_metrics


def _metrics(seg, gt):
    return segmentation_metrics(contingency_table(np.asarray(seg), np.asarray(gt)))


def _two_objects(shape=(4, 6, 8)):
    gt = np.ones(shape, np.uint64)
    gt[:, :, shape[2] // 2 :] = 2
    return gt


def _h2(p: float) -> float:
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _explicit_singletons(seg: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """seg with every unsegmented labelled voxel given its own fresh id (the SNEMI3D convention)."""
    out = seg.astype(np.int64).copy()
    holes = (seg == 0) & (gt != 0)
    out[holes] = out.max() + 1 + np.arange(holes.sum())
    return out


def _brute_force(seg: np.ndarray, gt: np.ndarray) -> dict:
    """VI and Rand from a dense contingency matrix, written independently of the library."""
    seg = _explicit_singletons(seg, gt)
    keep = gt.ravel() != 0
    g = np.unique(gt.ravel()[keep], return_inverse=True)[1]
    s = np.unique(seg.ravel()[keep], return_inverse=True)[1]
    table = np.zeros((g.max() + 1, s.max() + 1))
    np.add.at(table, (g, s), 1)
    n = table.sum()
    p = table / n
    pg, ps = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    h_seg_given_gt = -np.sum(p[nz] * np.log2((p / pg)[nz]))
    h_gt_given_seg = -np.sum(p[nz] * np.log2((p / ps)[nz]))

    def pairs(x):
        return float(np.sum(x * (x - 1)))

    together = pairs(table)
    precision = together / pairs(table.sum(0))
    recall = together / pairs(table.sum(1))
    return {
        "vi_split": h_seg_given_gt,
        "vi_merge": h_gt_given_seg,
        "rand_precision": precision,
        "rand_recall": recall,
        "adapted_rand_error": 1 - 2 * precision * recall / (precision + recall),
    }


def test_identical_and_permuted_ids_are_perfect(synth_small):
    _, gt = synth_small
    rng = np.random.default_rng(0)
    ids = np.unique(gt)
    perm = dict(zip(ids.tolist(), (rng.permutation(len(ids)) * 7 + 1000).tolist()))
    permuted = np.vectorize(perm.get, otypes=[np.uint64])(gt)
    for seg in (gt, permuted):
        m = _metrics(seg, gt)
        assert m["vi_split"] == pytest.approx(0, abs=1e-12)
        assert m["vi_merge"] == pytest.approx(0, abs=1e-12)
        assert m["adapted_rand_error"] == pytest.approx(0, abs=1e-12)
        assert m["rand_precision"] == m["rand_recall"] == 1.0
        assert m["voxel_accuracy"] == m["voxel_precision"] == m["voxel_recall"] == m["voxel_f1"] == 1.0
        assert m["n_segments"] == m["n_gt_objects"] == len(ids)


def test_one_merge_is_a_merge_not_a_split():
    gt = _two_objects()  # two objects of 96 voxels
    seg = np.full(gt.shape, 5, np.uint32)
    m = _metrics(seg, gt)
    assert m["vi_split"] == pytest.approx(0, abs=1e-12)
    assert m["vi_merge"] == pytest.approx(_h2(0.5))  # one bit
    assert m["rand_recall"] == 1.0
    assert m["rand_precision"] == pytest.approx(2 * 96 * 95 / (192 * 191))
    assert m["voxel_recall"] == 1.0 and m["voxel_precision"] == pytest.approx(0.5)
    errors = M.worst_errors(contingency_table(seg, gt), seg, gt, min_voxels=1)
    assert errors["splits"] == []
    (merge,) = errors["merges"]
    assert merge["segment"] == 5 and merge["n_gt_objects"] == 2 and merge["error_voxels"] == 96
    z, y, x = merge["coordinate_zyx"]
    assert gt[z, y, x] == merge["gt_objects"][1]["id"] and seg[z, y, x] == 5


def test_one_split_is_a_split_not_a_merge():
    gt = np.full((4, 6, 8), 3, np.uint64)
    seg = np.ones(gt.shape, np.uint64)
    seg[:, :2] = 2  # a third of the object split off
    m = _metrics(seg, gt)
    assert m["vi_merge"] == pytest.approx(0, abs=1e-12)
    assert m["vi_split"] == pytest.approx(_h2(1 / 3))
    assert m["rand_precision"] == 1.0 and m["rand_recall"] < 1.0
    errors = M.worst_errors(contingency_table(seg, gt), seg, gt, min_voxels=1)
    assert errors["merges"] == []
    (split,) = errors["splits"]
    assert split["gt_object"] == 3 and split["n_segments"] == 2 and split["error_voxels"] == 64
    assert seg[tuple(split["coordinate_zyx"])] == 2


def test_skimage_conventions_are_what_we_document():
    gt = _two_objects().ravel()
    merged = np.ones_like(gt)
    split_vi, merge_vi = variation_of_information(image0=gt, image1=merged)
    assert split_vi == pytest.approx(0, abs=1e-12) and merge_vi == pytest.approx(1.0)
    # skimage returns (error, "precision", "recall") with the two swapped (scikit-image#6485).
    _, sk_precision, sk_recall = adapted_rand_error(gt, merged)
    m = _metrics(merged.reshape(4, 6, 8), gt.reshape(4, 6, 8))
    assert sk_precision == pytest.approx(m["rand_recall"]) and sk_recall == pytest.approx(m["rand_precision"])


def test_unlabelled_ground_truth_is_excluded():
    gt = _two_objects((6, 6, 10))
    gt[:, :, 4:6] = 0  # an unlabelled band between the objects
    seg = gt.copy()
    m_clean = _metrics(seg, gt)
    seg_leaky = seg.copy()
    seg_leaky[:, :, 4:6] = 1  # the segmentation merges across the unlabelled band: not counted
    seg_leaky[:3, :, 5] = 77  # and has a segment that lives only there
    m_leaky = _metrics(seg_leaky, gt)
    for key in ("vi_split", "vi_merge", "adapted_rand_error", "voxel_accuracy"):
        assert m_leaky[key] == m_clean[key]
    assert m_leaky["n_unlabelled_segmented_voxels"] == 72 and m_leaky["n_segments"] == 3
    assert m_leaky["n_labelled_voxels"] == 6 * 6 * 8


def test_unsegmented_voxels_are_singletons():
    gt = np.full((4, 4, 4), 9, np.uint64)
    seg = np.ones(gt.shape, np.uint64)
    seg[0] = 0  # 16 of 64 voxels unsegmented
    m = _metrics(seg, gt)
    assert m["vi_merge"] == pytest.approx(0, abs=1e-12)
    # the 48-voxel piece: (48/64) log2(64/48); each singleton: (1/64) log2(64)
    assert m["vi_split"] == pytest.approx(0.75 * np.log2(64 / 48) + 16 / 64 * 6)
    assert m["segmented_fraction"] == 0.75 and m["n_unsegmented_voxels"] == 16
    assert m["rand_recall"] == pytest.approx(48 * 47 / (64 * 63)) and m["rand_precision"] == 1.0
    # without the coverage term the segmentation is perfect
    assert m["vi_split_segmented"] == m["vi_merge_segmented"] == m["adapted_rand_error_segmented"] == 0
    assert _metrics(np.zeros_like(seg), gt)["vi_split_segmented"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_volumes_agree_with_independent_computation(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, (9, 10, 11)).astype(np.uint64) * 1000  # includes unlabelled 0
    seg = rng.integers(0, 5, gt.shape).astype(np.int32)  # includes unsegmented 0
    gt[0, 0, 0] = 1  # make sure there is a labelled voxel with a distinctive id
    m = _metrics(seg, gt)
    ref = _brute_force(seg, gt)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
    only = _brute_force(seg, np.where(seg == 0, 0, gt))  # unsegmented voxels dropped
    assert m["vi_split_segmented"] == pytest.approx(only["vi_split"])
    assert m["vi_merge_segmented"] == pytest.approx(only["vi_merge"])
    assert m["adapted_rand_error_segmented"] == pytest.approx(only["adapted_rand_error"])
    # scikit-image on the explicit-singleton labelling agrees too
    explicit = _explicit_singletons(seg, gt)
    split, merge = variation_of_information(gt, explicit, ignore_labels=(0,))
    assert (m["vi_split"], m["vi_merge"]) == pytest.approx((split, merge))
    assert m["adapted_rand_error"] == pytest.approx(adapted_rand_error(gt, explicit)[0])


def test_slabs_give_the_same_table(monkeypatch, synth_small):
    _, gt = synth_small
    seg = gt // 2  # merges pairs of objects
    whole = contingency_table(seg, gt)
    monkeypatch.setattr(M, "_SLAB_VOXELS", 48 * 48 * 5)  # 10 slabs, the last one short
    sliced = contingency_table(seg, gt)
    for a, b in ((whole.gt, sliced.gt), (whole.seg, sliced.seg), (whole.count, sliced.count)):
        np.testing.assert_array_equal(a, b)


def test_error_classes_mark_merges_splits_and_holes():
    gt = _two_objects((2, 4, 8))  # object 1: x < 4, object 2: x >= 4
    gt[:, 3, 0] = 0
    seg = np.ones(gt.shape, np.uint64)  # segment 1 merges both; object 2 is its main (24 vs 20 voxels)
    seg[:, 0, :] = 7  # row y=0 split off from both objects (a tie: its main object is the smaller id, 1)
    seg[:, 1, 0] = 0
    classes = error_classes(contingency_table(seg, gt), seg, gt)
    expected = np.array(
        [
            [2, 2, 2, 2, 3, 3, 3, 3],  # segment 7: object 1 split off; object 2 split off and merged into 7
            [4, 1, 1, 1, 0, 0, 0, 0],  # object 1 inside segment 1 (main object 2): merge
            [1, 1, 1, 1, 0, 0, 0, 0],
            [5, 1, 1, 1, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(classes[0], expected)
    np.testing.assert_array_equal(classes[1], expected)
    assert set(M.ERROR_CLASSES) == set(range(6))


def test_evaluate_segmentation_lists_are_sorted_and_capped(synth_small):
    _, gt = synth_small
    seg = gt.copy()
    seg[seg % 3 == 0] = 1  # many objects merged into segment 1
    seg[:, :, :10] += 10_000  # a cut through everything: splits
    metrics, errors, _ = evaluate_segmentation(seg, gt, n_errors=4, min_error_voxels=20)
    assert 0 < len(errors["splits"]) <= 4 and len(errors["merges"]) >= 1
    sizes = [e["error_voxels"] for e in errors["splits"]]
    assert sizes == sorted(sizes, reverse=True)
    for e in errors["splits"]:
        assert gt[tuple(e["coordinate_zyx"])] == e["gt_object"]
    assert metrics["vi_merge"] > 0 and metrics["vi_split"] > 0


@pytest.mark.parametrize(
    "seg, gt, message",
    [
        (np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 5), np.uint8), "differs from ground truth shape"),
        (np.ones((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), "no labelled voxel"),
        (np.ones((4, 4, 4), np.float32), np.ones((4, 4, 4), np.uint8), "not integer labels"),
        (np.ones((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.float64), "not integer labels"),
        (np.full((4, 4, 4), -1, np.int16), np.ones((4, 4, 4), np.uint8), "negative labels"),
        (np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8), "3-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(seg, gt, message):
    with pytest.raises(DataError, match=message):
        contingency_table(seg, gt)


def test_huge_uint64_ids(synth_small):
    """Ids up to 2**64 - 1 (hashes, precomputed ids) work; metrics depend on the partition only."""
    _, gt = synth_small
    big = gt.astype(np.uint64) * np.uint64(2**40) + np.uint64(2**63)
    big[gt == 0] = 0
    seg = gt // 2
    reference = _metrics(seg, gt)
    huge_seg = np.where(seg == 0, 0, seg.astype(np.uint64) + np.uint64(2**64 - 2**20))  # 0 stays unsegmented
    huge = _metrics(huge_seg, big)
    for key in ("vi_split", "vi_merge", "adapted_rand_error", "voxel_accuracy", "n_segments", "n_gt_objects"):
        assert huge[key] == pytest.approx(reference[key]), key
