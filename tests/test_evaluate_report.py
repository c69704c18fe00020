"""`neuroflood evaluate`: metrics.json contract, self-contained report, figures, crops, error cases."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from neuroflood.cli import main
from neuroflood.volume import write_volume

CONTRACT = ("vi_split", "vi_merge", "vi", "adapted_rand_error", "rand_precision", "rand_recall", "n_segments", "n_gt_objects")


def _perturb(gt: np.ndarray) -> np.ndarray:
    """gt with one merge, one split and an unsegmented slab: errors whose place we know."""
    seg = gt.copy()
    ids, sizes = np.unique(gt[gt != 0], return_counts=True)
    a, b, c = ids[np.argsort(-sizes)[:3]]
    seg[seg == b] = a  # merge the 2nd largest object into the largest
    zz = np.arange(gt.shape[0])[:, None, None]
    seg[(gt == c) & (zz >= gt.shape[0] // 2)] = 10**9  # split the 3rd largest along z
    seg[:2] = 0
    return seg


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_evaluate_writes_contract_report_and_figures(tmp_path, synth_small, capsys):
    image, gt = synth_small
    seg = _perturb(gt)
    data = tmp_path / "data.h5"
    write_volume(f"{data}:image", image)
    write_volume(f"{data}:gt", gt)
    write_volume(f"{data}:seg", seg.astype(np.uint32))
    out = tmp_path / "eval"
    rc = main(["evaluate", f"{data}:seg", f"{data}:gt", "--image", f"{data}:image", "--out", str(out), "--min-error-voxels", "20"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in CONTRACT:
        assert isinstance(metrics[key], (int, float)), key
    assert metrics["vi"] == pytest.approx(metrics["vi_split"] + metrics["vi_merge"])
    assert metrics["vi_merge"] > 0 and metrics["vi_split"] > 0
    assert metrics["n_gt_objects"] == len(np.unique(gt[gt != 0]))
    assert metrics["n_segments"] == metrics["n_gt_objects"]  # one merge (-1), one split (+1)
    assert metrics["worst_merges"][0]["n_gt_objects"] == 2
    z, y, x = metrics["worst_splits"][0]["coordinate_zyx"]
    assert gt[z, y, x] == metrics["worst_splits"][0]["gt_object"]
    assert "excluded" in metrics["conventions"]["gt_label_0"]

    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)  # self-contained
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == 3
    for b64 in embedded:
        assert _pixels(base64.b64decode(b64)).std() > 10
    md = (out / "report.md").read_text()
    for name in re.findall(r"\]\((\w+\.png)\)", md):
        assert (out / name).is_file()
    assert "unlabelled" in md and "VI merge" in md
    # the error map marks merges in vermillion and splits in blue somewhere
    ortho = _pixels((out / "ortho_slices.png").read_bytes()).reshape(-1, 3).astype(int)
    for colour in ((213, 94, 0), (0, 114, 178)):
        assert (np.abs(ortho - colour).sum(1) < 40).any(), colour
    assert "adapted Rand error" in capsys.readouterr().out
    assert not list(out.glob(".report-*"))  # no temporary directory left behind


def test_evaluate_a_crop_of_fib25(tmp_path, fib25_h5):
    """A segmentation of a 64^3 region against the full ground truth, with --bbox."""
    from neuroflood.volume import open_volume

    box = (slice(100, 164), slice(60, 124), slice(30, 94))
    gt = open_volume(f"{fib25_h5}:labels")[box]
    seg_path = tmp_path / "seg.npy"
    np.save(seg_path, _perturb(gt))
    out = tmp_path / "eval"
    args = [
        "evaluate",
        str(seg_path),
        f"{fib25_h5}:labels",
        "--image",
        f"{fib25_h5}:image",
        "--out",
        str(out),
        "--bbox",
        "100,60,30:164,124,94",
        "--at",
        "32,32,32",
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["shape"] == [64, 64, 64] and metrics["offset_zyx"] == [100, 60, 30]
    assert metrics["voxel_size_zyx"] == [10.0, 10.0, 10.0]
    split = metrics["worst_splits"][0]
    z, y, x = split["coordinate_zyx"]  # in full-volume coordinates
    assert open_volume(f"{fib25_h5}:labels")[z, y, x] == split["gt_object"]
    assert 0 < metrics["adapted_rand_error"] < 1


@pytest.mark.parametrize(
    "seg, gt, message",
    [
        (
            np.ones((8, 8, 8), np.uint32),
            np.ones((8, 8, 9), np.uint32),
            "segmentation shape (8, 8, 8) differs from ground truth shape (8, 8, 9)",
        ),
        (np.ones((8, 8, 8), np.uint32), np.zeros((8, 8, 8), np.uint32), "has no labelled voxel (all 0)"),
        (np.ones((8, 8, 8), np.float32), np.ones((8, 8, 8), np.uint32), "has dtype float32, not integer labels"),
    ],
)
def test_evaluate_errors_are_one_line_and_write_nothing(tmp_path, capsys, seg, gt, message):
    np.save(tmp_path / "seg.npy", seg)
    np.save(tmp_path / "gt.npy", gt)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "seg.npy"), str(tmp_path / "gt.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroflood: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_evaluate_rejects_bad_regions(tmp_path, capsys):
    np.save(tmp_path / "gt.npy", np.ones((8, 8, 8), np.uint32))
    np.save(tmp_path / "seg.npy", np.ones((5, 5, 5), np.uint32))
    base = ["evaluate", str(tmp_path / "seg.npy"), str(tmp_path / "gt.npy"), "--out", str(tmp_path / "o")]
    assert main(base + ["--bbox", "0,0,0:4,4,4"]) == 2
    assert "neither the ground truth's" in capsys.readouterr().err
    assert main(base + ["--bbox", "0,0,0:9,9,9"]) == 2
    assert "reaches outside ground truth" in capsys.readouterr().err
    assert main(base + ["--bbox", "0,0,0:5,5,5", "--at", "7,7,7"]) == 2
    assert "--at 7,7,7 lies outside" in capsys.readouterr().err


def test_cropped_volume_indexes_like_an_array():
    from neuroflood.bbox import BoundingBox
    from neuroflood.evaluate.inputs import CroppedVolume

    data = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    view = CroppedVolume(data, BoundingBox((1, 2, 3), (4, 4, 5)))
    crop = data[1:5, 2:6, 3:8]
    assert view.shape == (4, 4, 5)
    for key in (..., (slice(None), 2), (1, slice(1, 3), ...), (slice(1, None), ..., 4), 3):
        np.testing.assert_array_equal(view[key], crop[key])
