"""Per-rank step timing: metrics.jsonl keys, RUN_DIR/step_times.jsonl, injected jitter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroflood.config import ModelConfig
from neuroflood.model import load_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.train.checkpoint import checkpoint_dirs
from neuroflood.train.config import TrainConfig
from neuroflood.train.loop import train
from neuroflood.train.timing import StepTimer, timing_stats
from neuroflood.volume import write_volume

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"  # patch 13³
TIMING_KEYS = ("step_time_p50", "step_time_p90", "step_time_max", "step_time_cv", "allreduce_wait_s", "data_s", "compute_s")


@pytest.fixture(scope="module")
def data(tmp_path_factory, synth_small):
    d = tmp_path_factory.mktemp("timing")
    image, labels = synth_small
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    write_coordinates(d / "train.bin", np.random.default_rng(0).integers(9, 39, (40, 3)), None, ["synth"])
    return d


def _options(data: Path, run_dir: Path, **kw) -> dict:
    base = {
        "images": {"synth": f"{data}/v.h5:image"},
        "labels": {"synth": f"{data}/v.h5:labels"},
        "coords": str(data / "train.bin"),
        "run_dir": str(run_dir),
        "tensorboard": False,
        "progress": False,
        "checkpoint_every_secs": None,
        "summary_every_steps": 4,
        "summary_every_secs": 1e9,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "batch_size": 2,
        "threads": 1,
        "max_steps": 10,
    }
    return {**base, **kw}


def _records(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines()]


def _check_timing(run_dir: Path, ranks: int, steps: int) -> list[dict]:
    train_records = [r for r in _records(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [4, 8, steps]
    for r in train_records:
        assert all(isinstance(r[k], float) for k in TIMING_KEYS), r
        assert 0 < r["step_time_p50"] <= r["step_time_p90"] <= r["step_time_max"]
        assert r["step_time_cv"] >= 0 and r["allreduce_wait_s"] >= 0 and r["data_s"] > 0 and r["compute_s"] > 0
        assert r["data_s"] + r["compute_s"] <= r["step_time_max"] * (1 + 1e-9)
    lines = _records(run_dir / "step_times.jsonl")
    assert [line["steps"] for line in lines] == [[1, 4], [5, 8], [9, steps]]
    for line in lines:
        first, last = line["steps"]
        assert line["ranks"] == ranks and len(line["work_s"]) == len(line["wait_s"]) == ranks
        assert all(len(w) == last - first + 1 and min(w) > 0 for w in line["work_s"])
        assert all(len(w) == last - first + 1 and min(w) >= 0 for w in line["wait_s"])
    return lines


@pytest.mark.skipif(sys.platform != "linux", reason="multi-process tests use Linux process control")
def test_two_ranks_time_their_steps(data, tmp_path):
    """2 ranks (gloo, 1 thread each): timing keys per summary, both ranks' raw times in step_times.jsonl."""
    run = tmp_path / "run"
    options = _options(data, run, inject_jitter_s=0.01)
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**options, "model": ModelConfig.parse_spec(TINY).model_dump(mode="json")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "neuroflood", "train", "--nproc-per-node", "2", "--config", str(config)]
    r = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = _check_timing(run, ranks=2, steps=10)
    # The all-reduce makes ranks wait: some of the 2 x 10 steps spent time in it.
    assert max(max(w) for line in lines for w in line["wait_s"]) > 0


def test_one_rank_and_jitter_leaves_the_weights_alone(data, tmp_path):
    """A single worker records its times too; the injected jitter only adds time, never changes training."""
    model = {"model": ModelConfig.parse_spec(TINY)}
    train(TrainConfig.build(_options(data, tmp_path / "plain"), model))
    train(TrainConfig.build(_options(data, tmp_path / "jitter", inject_jitter_s=0.005), model))
    plain, jitter = _check_timing(tmp_path / "plain", 1, 10), _check_timing(tmp_path / "jitter", 1, 10)
    assert max(max(w) for line in plain for w in line["wait_s"]) < 1e-3  # nobody to wait for
    assert len(jitter) == len(plain)
    a, b = (load_model(checkpoint_dirs(tmp_path / n)[-1] / "model").state_dict() for n in ("plain", "jitter"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_jitter_is_seeded_per_rank(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("neuroflood.train.timing.time.sleep", slept.append)
    for rank in (0, 0, 1):
        timer = StepTimer(0.5, seed=3, rank=rank)
        for _ in range(2000):
            timer.jitter()
    r0, r0_again, r1 = (np.asarray(slept[i * 2000 : (i + 1) * 2000]) for i in range(3))
    assert np.array_equal(r0, r0_again) and not np.array_equal(r0, r1)
    assert r0.mean() == pytest.approx(0.5, rel=0.1) and r0.std() == pytest.approx(0.5, rel=0.1)  # Exp(0.5)
    StepTimer(0.0).jitter()  # no jitter asked: no sleep
    assert len(slept) == 3 * 2000


def test_timing_statistics():
    rows = np.zeros((2, 5, 4))
    rows[0, :, 3] = [1, 2, 3, 4, 5]
    rows[1, :, 3] = [6, 7, 8, 9, 10]
    rows[..., 2] = 0.5
    rows[..., 0] = 0.25
    stats = timing_stats(rows)
    assert stats["step_time_p50"] == 5.5 and stats["step_time_max"] == 10
    assert stats["step_time_p90"] == pytest.approx(np.percentile(np.arange(1, 11), 90))
    assert stats["step_time_cv"] == pytest.approx(np.arange(1, 11).std() / 5.5)
    assert stats["allreduce_wait_s"] == 0.5 and stats["data_s"] == 0.25 and stats["compute_s"] == 0.0
    assert all(v is None for v in timing_stats(np.zeros((2, 0, 4))).values())
