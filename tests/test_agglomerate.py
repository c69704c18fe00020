"""Agglomeration with an oracle network (tests/agglomerate_helpers.py): a pair split by
construction is merged, pairs of different objects are not, a killed run resumes without
redoing finished pairs, 2 workers give the mapping of 1; scoring, mapping, holes, consensus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agglomerate_helpers import REQUEST, SMALL_OPTIONS, oracle_model, scene
from neuroflood.agglomerate import AgglomerationFailures, AgglomerationOptions, agglomerate
from neuroflood.agglomerate.merge import build_mapping, fill_holes, fill_holes_in_block
from neuroflood.agglomerate.scoring import FillScore, MergeRule, PairScore, score_pair
from neuroflood.bbox import BoundingBox
from neuroflood.volume import open_volume, write_volume

OPTS = AgglomerationOptions(**SMALL_OPTIONS, block_size=(12, 12, 12), pairs_per_job=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("agg")
    image, gt, seg = scene()
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:seg", seg)
    write_volume(f"{d}/v.h5:gt", gt)
    return d


def _run(d: Path, out: str, **kw):
    kw.setdefault("options", OPTS)
    return agglomerate(oracle_model(), f"{d}/v.h5:image", f"{d}/v.h5:seg", f"{d}/{out}", request=REQUEST, progress=False, **kw)


def _mapping(d: Path, out: str) -> dict[int, int]:
    m = np.load(d / f"{out}.agglomeration" / "mapping.npz")
    return dict(zip(m["segment_ids"].tolist(), m["neuron_ids"].tolist()))


def test_split_pair_is_merged_and_different_objects_are_not(data):
    s = _run(data, "a.zarr/seg", summary_path=data / "a.json")
    assert {"pairs", "merges", "fov_evaluations", "seconds"} <= set(s)
    assert s["pairs"] == 6 and s["merges"] == 2 and s["fov_evaluations"] > 0
    assert _mapping(data, "a.zarr/seg") == {1: 1, 2: 1, 3: 3, 4: 3}
    _, gt, seg = scene()
    out = open_volume(f"{data}/a.zarr/seg")[...]
    assert np.array_equal(out, np.where(seg == 2, 1, np.where(seg == 4, 3, seg)))
    pairs = np.load(data / "a.zarr" / "seg.agglomeration" / "pairs.npz")
    merged = {(int(a), int(b)) for a, b, m in zip(pairs["id_a"], pairs["id_b"], pairs["merged"]) if m}
    assert merged == {(1, 2), (3, 4)}
    # the fill from one side recovers all of the other segment only for the split pairs
    for a, b, iou, fab in zip(pairs["id_a"], pairs["id_b"], pairs["iou"], pairs["from_a_segment_b_consistency"]):
        assert (iou > 0.8 and fab > 0.6) == ((a, b) in {(1, 2), (3, 4)})
    assert json.loads((data / "a.json").read_text())["merges"] == 2
    # the same call again finds the finished output and does nothing
    assert _run(data, "a.zarr/seg")["skipped"] is True


def test_an_interrupted_run_resumes_without_redoing_finished_pairs(data):
    seen = []

    def stop_after_three(rec):
        seen.append(rec["pair"])
        if len(seen) == 3:
            raise KeyboardInterrupt  # like a kill: not caught by the scheduler

    with pytest.raises(KeyboardInterrupt):
        _run(data, "k.zarr/seg", on_pair=stop_after_three)
    jobs = data / "k.zarr" / ".seg.agglomerate" / "jobs"
    assert len(list(jobs.glob("*.done"))) == 1 and len(list(jobs.glob("*.partial.json"))) == 1
    before = {r["pair"]: r for p in jobs.glob("*.json") for r in json.loads(p.read_text())["pairs"]}
    assert len(before) == 3
    s = _run(data, "k.zarr/seg")
    assert s["pairs_run"] == 3 and s["pairs_kept"] == 3
    after = {r["pair"]: r for p in jobs.glob("*.json") for r in json.loads(p.read_text())["pairs"]}
    for k, rec in before.items():  # kept as they were, not recomputed
        assert after[k] == rec
    assert _mapping(data, "k.zarr/seg") == {1: 1, 2: 1, 3: 3, 4: 3}


def test_a_failing_job_is_reported_and_the_rerun_redoes_only_it(data):
    def fail_on_pair_four(rec):
        if rec["pair"] == 4:
            raise RuntimeError("boom")

    with pytest.raises(AgglomerationFailures, match=r"1 of 3 pair jobs failed .*boom"):
        _run(data, "f.zarr/seg", on_pair=fail_on_pair_four)
    jobs = data / "f.zarr" / ".seg.agglomerate" / "jobs"
    assert sorted(p.name for p in jobs.glob("*.done")) == ["0.done", "1.done"] and (jobs / "2.failed").exists()
    assert not (data / "f.zarr" / "seg").exists()
    s = _run(data, "f.zarr/seg")
    assert s["pairs_run"] == 1 and s["merges"] == 2 and not (jobs / "2.failed").exists()


def test_two_workers_give_the_mapping_of_one(data, tmp_path):
    from neuroflood.model import save_model

    save_model(oracle_model(), tmp_path / "oracle")
    _run(data, "one.zarr/seg", options=AgglomerationOptions(**SMALL_OPTIONS, block_size=(12, 12, 12), pairs_per_job=1))
    cmd = [sys.executable, "-m", "neuroflood", "agglomerate", f"{data}/v.h5:seg", "--model", str(tmp_path / "oracle")]
    cmd += ["--image", f"{data}/v.h5:image", "--out", f"{tmp_path}/two.zarr/seg", "--nproc-per-node", "2", "--threads", "1"]
    cmd += ["--no-progress", "--set", "options.min_segment_size=10", "--set", "checkpoint_interval=0", "--pairs-per-job", "1"]
    cmd += ["--radius", "8", "--analysis-radius", "4", "--min-segment-size", "0", "--min-contact", "1", "--max-distance", "4"]
    cmd += ["--block-size", "12,12,12", "--summary", f"{tmp_path}/two.json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = np.load(tmp_path / "two.zarr" / "seg.agglomeration" / "mapping.npz")
    assert dict(zip(m["segment_ids"].tolist(), m["neuron_ids"].tolist())) == _mapping(data, "one.zarr/seg")
    done = [json.loads(p.read_text()) for p in (tmp_path / "two.zarr" / ".seg.agglomerate" / "jobs").glob("*.done")]
    assert len(done) == 6 and {d["rank"] for d in done} == {0, 1}  # both workers claimed pairs
    assert np.array_equal(open_volume(f"{tmp_path}/two.zarr/seg")[...], open_volume(f"{data}/one.zarr/seg")[...])


def test_consensus_splits_first_and_agglomeration_joins_back(data):
    _, _, seg = scene()
    other = seg.copy()
    other[:, 8:, 17:] += 10  # a second run that cut object 2 elsewhere as well
    write_volume(f"{data}/v.h5:other", other)
    opts = AgglomerationOptions(**SMALL_OPTIONS, block_size=(12, 12, 12), consensus_min_size=10)
    s = _run(data, "c.zarr/seg", consensus=f"{data}/v.h5:other", options=opts)
    base = open_volume(f"{data}/c.zarr/.seg.agglomerate/consensus.zarr/seg")[...]
    assert len(np.unique(base)) == 7  # 0, 1, 2 and object 2 in four pieces
    assert s["segments"] == 6 and s["neurons"] == 2
    out = open_volume(f"{data}/c.zarr/seg")[...]
    assert len(np.unique(out[:, :, :16])) == 1 and len(np.unique(out[:, :, 17:])) == 1


def test_scores_say_which_segment_each_fill_recovered():
    seg = np.zeros((1, 1, 10), np.uint8)
    seg[..., :4] = 1
    seg[..., 4:] = 2
    prob_a = np.zeros(seg.shape)
    prob_a[..., :6] = 1  # A's fill: all of A, half of B
    prob_b = np.zeros(seg.shape)
    prob_b[..., 4:] = 1  # B's fill: all of B, none of A
    none = (np.zeros((0, 3)), np.zeros(0))
    s = score_pair(prob_a, prob_b, seg, 1, 2, (slice(0, 1), slice(0, 1), slice(0, 10)), [none, none])
    assert s.from_a.segment_a_consistency == 1 and s.from_a.segment_b_consistency == pytest.approx(2 / 6)
    assert s.from_b.segment_a_consistency == 0 and s.from_b.segment_b_consistency == 1
    assert s.iou == pytest.approx(2 / 10)


def test_merge_rule_needs_both_fills_unless_one_sided():
    good = FillScore(num_voxels=100, deleted_voxels=1, segment_a_consistency=0.9, segment_b_consistency=0.9)
    bad = FillScore(num_voxels=100, deleted_voxels=1, segment_a_consistency=0.9, segment_b_consistency=0.3)
    leaky = FillScore(num_voxels=100, deleted_voxels=5, segment_a_consistency=0.9, segment_b_consistency=0.9)
    assert MergeRule().merge(PairScore(iou=0.9, from_a=good, from_b=good))
    assert not MergeRule().merge(PairScore(iou=0.9, from_a=good, from_b=bad))
    assert MergeRule(one_sided=True).merge(PairScore(iou=0.9, from_a=good, from_b=bad))
    assert not MergeRule().merge(PairScore(iou=0.8, from_a=good, from_b=good))  # strictly above 0.8
    assert not MergeRule().merge(PairScore(iou=0.9, from_a=good, from_b=leaky))
    assert not MergeRule().merge(PairScore(iou=0.9, from_a=good, from_b=good, status="segment_absent"))


def test_mapping_is_the_smallest_id_of_each_merged_set():
    ids, neurons = build_mapping(np.array([0, 3, 5, 7, 9, 11], np.uint64), np.array([[9, 5], [7, 11], [5, 3]], np.uint64))
    assert dict(zip(ids.tolist(), neurons.tolist())) == {3: 3, 5: 3, 7: 7, 9: 3, 11: 7}


def test_fill_holes_fills_only_small_holes_inside_one_segment():
    seg = np.ones((12, 12, 12), np.uint16)
    seg[:, 6:, :] = 2
    seg[3, 3, 3] = 0  # enclosed by 1
    seg[3, 5:7, 3] = 0  # between 1 and 2
    seg[8:11, 8:11, 8:11] = 0  # 27 voxels inside 2
    seg[0, 2, 2] = 0  # on the volume's edge
    filled = seg.copy()
    assert fill_holes(filled, 8) == 1 and filled[3, 3, 3] == 1
    assert (filled[3, 5:7, 3] == 0).all() and (filled[8:11, 8:11, 8:11] == 0).all() and filled[0, 2, 2] == 0
    assert fill_holes(filled, 27) == 27 and (filled[8:11, 8:11, 8:11] == 2).all()
    # block by block (core grown by max_voxels + 1) fills what the whole volume does
    whole = seg.copy()
    fill_holes(whole, 27)
    world = BoundingBox.from_shape(seg.shape)
    for z in range(0, 12, 5):
        core = BoundingBox.from_start_stop((z, 0, 0), (min(z + 5, 12), 12, 12))
        read = core.grow(28).intersection(world)
        got, _ = fill_holes_in_block(seg[read.to_slices()].copy(), read, core, 27)
        assert np.array_equal(got, whole[core.to_slices()])
