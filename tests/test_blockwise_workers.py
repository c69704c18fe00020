"""Blockwise segmentation on 2 worker processes: the CLI, a killed worker, and resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neuroflood.config import ModelConfig
from neuroflood.model import build_model, save_model
from neuroflood.synthetic import make_em_volume
from neuroflood.volume import open_volume, write_volume


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A synthetic image and a tiny (untrained, seeded) network."""
    root = tmp_path_factory.mktemp("bw")
    image, labels = make_em_volume((40, 48, 48), seed=4)
    write_volume(f"{root}/vol.h5:image", image)
    write_volume(f"{root}/vol.h5:labels", labels)
    model = build_model(ModelConfig(depth=2, features=4, fov_size=(9, 9, 9), deltas=(2, 2, 2)), seed=0)
    save_model(model, root / "model")
    return root


def _cmd(root: Path, out: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neuroflood",
        "segment",
        "--model",
        str(root / "model"),
        "--image",
        f"{root}/vol.h5:image",
        "--out",
        out,
        "--block-size",
        "20,20,20",
        "--overlap",
        "4,4,4",
        "--nproc-per-node",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--set",
        "options.min_segment_size=10",
        "--set",
        "options.move_threshold=0.5",
        "--set",
        "seed_policy=PolicyGrid3d",
        "--set",
        "seed_policy_args.step=4",
        *extra,
    ]


def _done(work: Path) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in (work / "blocks").glob("*.done")}


def test_two_workers_share_the_blocks(job):
    out = f"{job}/a.zarr/seg"
    summary = job / "a.json"
    r = subprocess.run(_cmd(job, out, "--summary", str(summary)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(summary.read_text())
    assert s["blocks"] == 27 and s["blocks_run"] == 27 and s["blocks_failed"] == 0
    for key in ("fov_evaluations", "segments", "unsegmented_fraction", "seconds", "seconds_per_fov"):
        assert key in s
    done = _done(job / "a.zarr" / ".seg.work")
    assert {d["rank"] for d in done.values()} == {0, 1}  # both workers claimed blocks
    seg = open_volume(out)
    assert seg.shape == (40, 48, 48)
    ids = np.unique(seg[...])
    assert ids[0] >= 0 and (len(ids) <= 1 or np.array_equal(ids[ids > 0], np.arange(1, len(ids[ids > 0]) + 1)))


def test_killed_worker_then_rerun_redoes_only_unfinished_blocks(job):
    out = f"{job}/k.zarr/seg"
    work = job / "k.zarr" / ".seg.work"
    proc = subprocess.Popen(_cmd(job, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = _done(work) if (work / "blocks").exists() else {}
        if len(done) >= 3:
            victim = next(d["pid"] for d in done.values() if d["rank"] == 1)
            os.kill(victim, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.communicate(timeout=120)
    if victim is None:
        pytest.fail("the job finished before a worker could be killed; make the blocks slower")
    assert proc.returncode != 0  # the job fails when a worker dies
    first = _done(work)
    assert 0 < len(first) < 27
    r = subprocess.run(_cmd(job, out), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    second = _done(work)
    assert len(second) == 27
    for i, d in first.items():  # finished blocks were kept, not recomputed
        assert second[i] == d
    rerun_pids = {d["pid"] for i, d in second.items() if i not in first}
    assert rerun_pids and not rerun_pids & {d["pid"] for d in first.values()}
    assert open_volume(out).shape == (40, 48, 48)
