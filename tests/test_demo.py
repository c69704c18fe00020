"""The demo pipeline end to end at a tiny size (synth, prepare, train on 2 workers, segment,
evaluate, agglomerate, evaluate with a 3-D picture, mesh)."""

from __future__ import annotations

import json
import math

import numpy as np

from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
from neuroflood.volume import open_volume


def test_tiny_demo_runs_end_to_end(tmp_path):
    """The whole pipeline at a size CI affords (2,000 training steps on 2 workers).

    Its network is far from converged, so the check on quality is only that it beats the
    trivial segmentations (every voxel its own object; all one object) in adapted Rand error;
    the full demo's quality target is measured by `make demo` (docs/benchmarks.md), not here.
    """
    from neuroflood.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--size", "tiny", "--out", str(out), "--seed", "1"]) == 0
    for f in (
        "report.html",
        "metrics.json",
        "views_3d.png",
        "data/train.h5",
        "data/test.h5",
        "prepare/coordinates.nfc",
        "segment/summary.json",
        "segment/eval/report.html",
        "agglomerate/summary.json",
        "agglomerate/agg.zarr/seg.agglomeration/mapping.npz",
        "mesh.precomputed/info",
        "mesh.precomputed/mesh/info",
        "mesh.precomputed/neuroflood-segments.json",
    ):
        assert (out / f).exists(), f
    metrics = json.loads((out / "metrics.json").read_text())
    for m in (metrics, metrics["segmentation"]):  # after and before agglomeration
        for key in ("adapted_rand_error", "vi", "vi_split", "vi_merge"):
            assert math.isfinite(m[key])
    assert set(metrics["seconds"]) >= {
        "synth",
        "prepare",
        "train",
        "segment",
        "evaluate",
        "agglomerate",
        "evaluate_agglomerated",
        "mesh",
        "total",
    }
    assert metrics["views_3d"]["largest_segments"]
    # the test volume is evaluated inside its image context
    assert metrics["demo"]["test_context"] > 0
    z, y, x = metrics["offset_zyx"]
    d, h, w = metrics["shape"]
    gt = open_volume(f"{out}/data/test.h5:labels")[z : z + d, y : y + h, x : x + w]
    assert gt.shape == (40, 64, 64) and (z, y, x) == (4, 4, 4)
    every_voxel = segmentation_metrics(contingency_table(np.arange(1, gt.size + 1, dtype=np.uint64).reshape(gt.shape), gt))
    all_one = segmentation_metrics(contingency_table(np.ones(gt.shape, np.uint64), gt))
    for trivial in (every_voxel, all_one):
        assert metrics["adapted_rand_error"] < trivial["adapted_rand_error"]
    assert metrics["vi"] < every_voxel["vi"]
    assert metrics["n_segments"] >= 1

    # the agglomerated volume is the segmentation with the written mapping applied
    agg = metrics["agglomeration"]
    assert 0 <= agg["merges"] <= agg["pairs"] and agg["neurons"] >= agg["segments"] - agg["merges"]
    mapping = np.load(out / "agglomerate/agg.zarr/seg.agglomeration/mapping.npz")
    seg = open_volume(f"{out}/segment/seg.h5:segmentation")[:]
    lut = dict(zip(mapping["segment_ids"].tolist(), mapping["neuron_ids"].tolist()))
    expected = np.vectorize(lambda v: lut.get(v, v), otypes=[np.uint64])(seg)
    np.testing.assert_array_equal(open_volume(agg["out"])[:], expected)
    assert metrics["n_segments"] <= metrics["segmentation"]["n_segments"]
    # one mesh manifest per segment of the agglomerated volume
    meshed = [int(i) for i, _ in json.loads((out / "mesh.precomputed/neuroflood-segments.json").read_text())["segments"]]
    assert set(meshed) == set(np.unique(expected).tolist()) - {0}
    assert all((out / f"mesh.precomputed/mesh/{i}:0").exists() for i in meshed)
    assert 'alt="views_3d"' in (out / "report.html").read_text()  # the 3-D picture is in the report
