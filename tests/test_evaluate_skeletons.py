"""Expected run length along ground-truth skeletons: exact answers on hand-made skeletons, kimimaro end to end."""

from __future__ import annotations

import numpy as np
import pytest

from neuroflood.evaluate.skeletons import expected_run_length


def _path(n: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.stack([np.zeros(n), np.full(n, y), np.arange(n)], 1).astype(float)  # z, y, x in nm
    edges = np.stack([np.arange(n - 1), np.arange(1, n)], 1)
    return vertices, edges


SKELETONS = {7: _path(11, 0), 9: _path(5, 5)}  # lengths 10 and 4


def _seg() -> np.ndarray:
    seg = np.zeros((1, 10, 12), np.uint32)
    seg[0, 0, :11] = 1
    seg[0, 5, :5] = 2
    return seg


def test_perfect_segmentation_scores_the_maximum():
    r = expected_run_length(SKELETONS, _seg())
    assert r["erl_nm"] == pytest.approx((10**2 + 4**2) / 14) == r["erl_max_nm"]
    assert r["erl_fraction"] == 1.0 and r["skeleton_length_nm"] == 14 and r["n_merger_segments"] == 0


def test_split_cuts_one_edge():
    seg = _seg()
    seg[0, 0, 6:] = 3
    r = expected_run_length(SKELETONS, seg)
    assert r["erl_nm"] == pytest.approx((5**2 + 4**2 + 4**2) / 14)
    assert r["split_length_nm"] == 1 and r["merge_length_nm"] == 0


def test_merge_loses_both_skeletons():
    seg = _seg()
    seg[0, 5] = np.where(seg[0, 5] == 2, 1, 0)
    r = expected_run_length(SKELETONS, seg)
    assert r["erl_nm"] == 0 and r["n_merger_segments"] == 1 and r["merge_length_nm"] == 14


def test_unsegmented_node_cuts_its_edges():
    seg = _seg()
    seg[0, 0, 0] = 0
    r = expected_run_length(SKELETONS, seg)
    assert r["erl_nm"] == pytest.approx((9**2 + 4**2) / 14) and r["unsegmented_length_nm"] == 1


def test_voxel_size_maps_nodes_to_voxels():
    vertices, edges = _path(11, 0)
    skeletons = {1: (vertices * [40, 8, 8], edges)}  # nm; voxel size 40,8,8
    seg = _seg()
    seg[0, 0, 6:] = 3
    r = expected_run_length(skeletons, seg, voxel_size=(40, 8, 8))
    assert r["erl_nm"] == pytest.approx((40**2 + 32**2) / 80)


def test_kimimaro_tubes_end_to_end():
    pytest.importorskip("kimimaro")
    from neuroflood.evaluate.skeletons import skeletonize_ground_truth

    gt = np.zeros((12, 24, 64), np.uint32)
    gt[3:9, 3:9, 2:62] = 1  # two parallel tubes along x
    gt[3:9, 15:21, 2:62] = 2
    skeletons = skeletonize_ground_truth(gt, voxel_size=(1, 1, 1), dust_threshold=10)
    assert sorted(skeletons) == [1, 2]
    perfect = expected_run_length(skeletons, gt)
    assert perfect["erl_fraction"] == 1.0 and perfect["skeleton_length_nm"] > 100
    split = gt.copy()
    split[:, :, 32:][split[:, :, 32:] == 1] = 3
    assert 0.6 < expected_run_length(skeletons, split)["erl_fraction"] < 0.85  # tube 1 in halves
    merged = np.where(gt > 0, 1, 0).astype(np.uint32)
    assert expected_run_length(skeletons, merged)["erl_nm"] == 0


def test_evaluate_cli_with_erl(tmp_path, synth_small):
    pytest.importorskip("kimimaro")
    import json

    from neuroflood.cli import main

    _, gt = synth_small
    seg = gt.copy()
    seg[:, :, 24:] += 1000  # splits every object crossing x = 24
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "seg.npy", seg)
    out = tmp_path / "eval"
    args = ["evaluate", str(tmp_path / "seg.npy"), str(tmp_path / "gt.npy"), "--out", str(out), "--erl", "--erl-dust-threshold", "500"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["erl_nm"] < metrics["erl_max_nm"] and metrics["split_length_nm"] > 0
    assert metrics["merge_length_nm"] == 0 and metrics["conventions"]["erl_dust_threshold"] == 500
    assert "Expected run length" in (out / "report.md").read_text()
