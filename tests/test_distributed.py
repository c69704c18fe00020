"""Synchronous data-parallel training on 2 CPU ranks (gloo, 1 thread each, tiny model).

Three launchers are exercised: ``neuroflood train --nproc-per-node 2`` (torchrun's agent),
and two plain processes with SLURM's variables, as ``srun --ntasks 2`` starts them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroflood.config import ModelConfig
from neuroflood.distributed import free_port
from neuroflood.model import load_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.train.checkpoint import checkpoint_dirs
from neuroflood.train.config import TrainConfig
from neuroflood.train.loop import train
from neuroflood.train.optim import learning_rate, lr_scale
from neuroflood.volume import write_volume

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"  # patch 13³
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="multi-process tests use Linux process control")


@pytest.fixture(scope="module")
def data(tmp_path_factory, synth_small):
    d = tmp_path_factory.mktemp("dist")
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
        "summary_every_secs": 1e9,
        "optimizer": "adam",
        "learning_rate": 0.01,
        "batch_size": 2,
        "threads": 1,
    }
    return {**base, **kw}


def _config_file(path: Path, options: dict) -> Path:
    path.write_text(json.dumps({**options, "model": ModelConfig.parse_spec(TINY).model_dump(mode="json")}))
    return path


def _in_process(options: dict) -> None:
    train(TrainConfig.build(options, {"model": ModelConfig.parse_spec(TINY)}))


def _env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _nproc(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neuroflood", "train", "--nproc-per-node", "2", "--config", str(config), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _srun(config: Path, port: int) -> list[subprocess.Popen]:
    """Two ranks as ``srun --ntasks 2 neuroflood train`` starts them (SLURM variables only)."""
    procs = []
    for rank in range(2):
        env = _env(
            SLURM_PROCID=str(rank),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NODELIST="localhost",
            SLURM_JOB_ID="1",
            MASTER_PORT=str(port),
        )
        cmd = [sys.executable, "-m", "neuroflood", "train", "--config", str(config)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model(checkpoint_dirs(run_dir)[-1] / "model").state_dict()


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _wait_for(predicate, timeout: float, procs=()) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end or any(p.poll() is not None for p in procs):
            raise AssertionError("the run did not get there in time (or exited early)")
        time.sleep(0.02)


def test_two_ranks_equal_two_emulated_workers(data, tmp_path):
    """2 real ranks == 2 emulated workers in one process, same seed (fixed policy, augmentation).

    Both runs have workers 0 and 1 with the same coordinate shards and random streams; the
    only difference is where the gradient mean is taken (DDP all-reduce vs accumulation).
    Linear LR scaling and a warm-up are on, so both must also agree on N = 2 workers.
    """
    opts = _options(data, tmp_path / "real", max_steps=8, lr_scaling="linear", warmup_steps=3)
    r = _nproc(_config_file(tmp_path / "real.json", opts))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained to step 8" in r.stdout and r.stdout.count("trained to step") == 1  # rank 0 reports
    _in_process({**opts, "run_dir": str(tmp_path / "emu"), "emulate_workers": 2})
    _in_process({**opts, "run_dir": str(tmp_path / "one")})  # 1 worker: must differ
    real, emu, one = (_final_weights(tmp_path / n) for n in ("real", "emu", "one"))
    for k in real:
        torch.testing.assert_close(real[k], emu[k], rtol=1e-4, atol=1e-5)
    assert max(float((real[k] - one[k]).abs().max()) for k in real) > 1e-3

    (launch,) = [json.loads(s) for s in (tmp_path / "real" / "launches.jsonl").read_text().splitlines()]
    assert launch["backend"] == "gloo" and launch["world_size"] == 2 and launch["global_batch"] == 4
    assert launch["random_streams"]["workers_of_rank"] == {"0": [0], "1": [1]}
    assert launch["learning_rate_target"] == pytest.approx(0.02) and launch["resumed_from"] is None
    rec = _metrics(tmp_path / "real")[-1]
    assert rec["step"] == 8 and rec["fovs"] == 8 * 4  # global FOVs: 2 ranks × batch 2 per step
    assert len(checkpoint_dirs(tmp_path / "real")) == 1


def test_n_ranks_batch_b_equal_one_worker_batch_nb(data, tmp_path):
    """2 ranks × batch 2 == 1 worker × batch 4, where the generators produce the same examples.

    Generators agree when nothing random is left: the ``no_step`` policy (one FOV per
    example, at its centre), coordinates in file order, no augmentation. Each step the
    single worker then takes the next 4 coordinates of its file, and rank r the next 2 of
    its contiguous half. The ranks' file is written so that step t of rank r holds
    coordinates ``4t + 2r, 4t + 2r + 1`` of the single worker's list: the same 4 examples
    per step, so the averaged gradients, and the weights, must agree. Started as ``srun``.
    """
    steps, n, b = 6, 2, 2
    centres = np.random.default_rng(1).integers(9, 39, (steps * n * b, 3))
    write_coordinates(tmp_path / "one.bin", centres, None, ["synth"])
    per_rank = [np.concatenate([centres[t * n * b + r * b : t * n * b + (r + 1) * b] for t in range(steps)]) for r in range(n)]
    write_coordinates(tmp_path / "ranks.bin", np.concatenate(per_rank), None, ["synth"])
    fixed = dict(max_steps=steps, fov_policy="no_step", shuffle_coordinates=False, permutable_axes=(), reflectable_axes=())
    opts = _options(data, tmp_path / "ranks", coords=str(tmp_path / "ranks.bin"), **fixed)
    procs = _srun(_config_file(tmp_path / "ranks.json", opts), free_port())
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    _in_process({**opts, "run_dir": str(tmp_path / "one"), "coords": str(tmp_path / "one.bin"), "batch_size": n * b})
    ranks, one = _final_weights(tmp_path / "ranks"), _final_weights(tmp_path / "one")
    for k in ranks:
        torch.testing.assert_close(ranks[k], one[k], rtol=1e-4, atol=1e-5)


def test_killed_rank_restarts_from_last_checkpoint(data, tmp_path):
    """SIGKILL of rank 1 under --max-restarts 1: all workers restart from the last checkpoint."""
    every, total = 10, 160
    opts = _options(data, tmp_path / "run", max_steps=total, checkpoint_every_steps=every, summary_every_steps=1, keep_last=100)
    cmd = [
        sys.executable,
        "-m",
        "neuroflood",
        "train",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "--config",
        str(_config_file(tmp_path / "run.json", opts)),
    ]
    launcher = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    _wait_for(lambda: len(checkpoint_dirs(run)) >= 2, 90, [launcher])
    first = json.loads((run / "launches.jsonl").read_text().splitlines()[0])
    os.kill(first["ranks"][1]["pid"], signal.SIGKILL)
    out, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 0, err[-3000:]

    launches = [json.loads(s) for s in (run / "launches.jsonl").read_text().splitlines()]
    assert [x["restart"] for x in launches] == [0, 1]
    resumed = int(launches[1]["resumed_from"].split("-")[1])
    assert resumed >= 2 * every and resumed % every == 0  # not from scratch
    steps = [r["step"] for r in _metrics(run) if r["split"] == "train"]
    # The restart's first summary is step resumed + 1 (the first run may have logged it too,
    # if it was killed after that step: then the restart's is the later one).
    cut = max(i for i, s in enumerate(steps) if s == resumed + 1)
    assert steps[-1] == total
    assert 0 <= steps[cut - 1] - resumed <= every  # lost at most the steps since that checkpoint
    assert steps[:cut] == list(range(1, steps[cut - 1] + 1)) and steps[cut:] == list(range(resumed + 1, total + 1))


def test_sigterm_checkpoints_and_all_ranks_exit_cleanly(data, tmp_path):
    """SIGTERM (SLURM pre-emption) to one rank: both stop at the same step, rank 0 checkpoints, exit 0.

    Only rank 1 gets the signal (the harder case: SLURM signals every task, but not at the
    same instant); the ranks agree on stopping every step, so rank 0 stops with it.
    """
    run = tmp_path / "run"
    opts = _options(data, run, max_steps=100000, checkpoint_every_steps=10, summary_every_steps=1)
    procs = _srun(_config_file(tmp_path / "run.json", opts), free_port())
    _wait_for(lambda: len(checkpoint_dirs(run)) >= 1, 90, procs)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    last = _metrics(run)[-1]["step"]
    assert 10 <= last < 100000
    assert checkpoint_dirs(run)[-1].name == f"step-{last:08d}"  # written at the stop, not before
    assert "stopped" in outs[0][1] or "trained to step" in outs[0][0]


def test_lr_rules():
    """Dong et al. 2019: target base·{1, N, √N}; warm-up target·s/W, exactly 0 at step 0."""
    assert [lr_scale(r, 16) for r in ("none", "linear", "sqrt")] == [1.0, 16.0, 4.0]
    cfg = TrainConfig(learning_rate=1e-3)
    ramp = [learning_rate(s, cfg, scale=4, warmup_steps=4) for s in range(6)]
    assert ramp == pytest.approx([0, 1e-3, 2e-3, 3e-3, 4e-3, 4e-3])
    assert math.isclose(learning_rate(7, cfg, lr_scale("sqrt", 2)), 1e-3 * math.sqrt(2))


def test_fixed_sample_budget_and_launcher_errors(data, tmp_path, capsys, monkeypatch):
    """max_steps // N steps with N workers (emulated count as workers); bad launcher options."""
    opts = _options(data, tmp_path / "emu", max_steps=9, emulate_workers=4, fixed_sample_budget=True)
    _in_process(opts)
    assert _metrics(tmp_path / "emu")[-1]["step"] == 2
    from neuroflood.cli import main

    cfg = str(_config_file(tmp_path / "c.json", _options(data, tmp_path / "x")))
    assert main(["train", "--config", cfg, "--max-restarts", "1"]) == 2
    assert "--max-restarts needs --nproc-per-node" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")  # already a rank of a torchrun job
    assert main(["train", "--config", cfg, "--nproc-per-node", "2"]) == 2
    assert "drop --nproc-per-node" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
