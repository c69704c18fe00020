"""The training loop: resume exactness, CLI contract, checkpoints, optimizers, bad input."""

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
import torch

from neuroflood.cli import main
from neuroflood.errors import CheckpointError, ConfigError, DataError
from neuroflood.model import build_model, load_model, save_model
from neuroflood.prepare.coordfile import write_coordinates
from neuroflood.train.checkpoint import checkpoint_dirs, prune_checkpoints, save_checkpoint
from neuroflood.train.config import TrainConfig
from neuroflood.train.examples import Batch
from neuroflood.train.loop import TrainingDiverged, train
from neuroflood.train.optim import TFRMSprop, build_optimizer, clip_gradients, learning_rate
from neuroflood.train.step import train_step
from neuroflood.volume import write_volume

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"  # patch 13³


@pytest.fixture(scope="module")
def data(tmp_path_factory, synth_small):
    """The 48³ synthetic volume, 40 training and 8 held-out coordinates."""
    d = tmp_path_factory.mktemp("train")
    image, labels = synth_small
    write_volume(f"{d}/v.h5:image", image)
    write_volume(f"{d}/v.h5:labels", labels)
    rng = np.random.default_rng(0)
    write_coordinates(d / "train.bin", rng.integers(9, 39, (40, 3)), None, ["synth"])
    write_coordinates(d / "eval.bin", rng.integers(9, 39, (8, 3)), None, ["synth"])
    return d


def _config(data: Path, run_dir: Path, **kw) -> TrainConfig:
    from neuroflood.config import ModelConfig

    base = {
        "images": {"synth": f"{data}/v.h5:image"},
        "labels": {"synth": f"{data}/v.h5:labels"},
        "coords": str(data / "train.bin"),
        "run_dir": str(run_dir),
        "model": ModelConfig.parse_spec(TINY),
        "tensorboard": False,
        "progress": False,
        "checkpoint_every_secs": None,
        "optimizer": "adam",
        "learning_rate": 0.01,
    }
    return TrainConfig.build(base, kw)


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_model(run_dir / "checkpoints" / f"step-{step:08d}" / "model").state_dict()


def test_resume_is_exact(data, tmp_path):
    """N steps straight == k steps, stop, resume to N (weights, bit for bit)."""
    train(_config(data, tmp_path / "a", max_steps=30))
    train(_config(data, tmp_path / "b", max_steps=11))
    r = train(_config(data, tmp_path / "b", max_steps=30))
    assert r.step == 30
    a, b = _weights(tmp_path / "a", 30), _weights(tmp_path / "b", 30)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = build_model(_config(data, tmp_path).model, seed=0).state_dict()
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # it did train
    # A different seed gives a different run.
    train(_config(data, tmp_path / "c", max_steps=30, seed=1))
    c = _weights(tmp_path / "c", 30)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_exact_with_momentum_and_max_pred_moves(data, tmp_path):
    kw = dict(optimizer="momentum", fov_policy="max_pred_moves", batch_size=2, learning_rate=0.05)
    train(_config(data, tmp_path / "a", max_steps=16, **kw))
    train(_config(data, tmp_path / "b", max_steps=7, **kw))
    train(_config(data, tmp_path / "b", max_steps=16, **kw))
    a, b = _weights(tmp_path / "a", 16), _weights(tmp_path / "b", 16)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_contract_config_file_and_overrides(data, tmp_path, capsys):
    toml = tmp_path / "train.toml"
    toml.write_text(
        f'coords = "{data}/train.bin"\neval_coords = "{data}/eval.bin"\neval_examples = 3\nbatch_size = 3\n'
        f"max_steps = 100\nsummary_every_steps = 4\neval_every_steps = 6\n[model]\ndepth = 2\nfeatures = 4\n"
        f"fov_size = [9, 9, 9]\ndeltas = [2, 2, 2]\n"
    )
    run = tmp_path / "run"
    argv = [
        "train",
        "--config",
        str(toml),
        "--image",
        f"{data}/v.h5:image",
        "--labels",
        f"{data}/v.h5:labels",
        "--run-dir",
        str(run),
        "--max-steps",
        "12",
        "--no-progress",
        "--optimizer",
        "adam",
    ]
    assert main(argv) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["max_steps"] == 12 and cfg["batch_size"] == 3 and cfg["optimizer"] == "adam"  # CLI beats file
    assert cfg["images"] == {"synth": f"{data}/v.h5:image"} and cfg["model"]["depth"] == 2
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    need = {"step", "time_s", "split", "fovs_per_s", "loss", "accuracy", "precision", "recall", "f1"}
    assert all(need <= set(rec) for rec in lines)
    train_lines = [r for r in lines if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [4, 8, 12]
    assert all(r["fovs_per_s"] > 0 and r["loss"] > 0 for r in train_lines)
    assert [r["step"] for r in lines if r["split"] == "eval"] == [6, 12]  # none repeated at the end
    assert [d.name for d in checkpoint_dirs(run)] == ["step-00000012"]
    # Resuming with only --run-dir continues from config.json.
    assert main(["train", "--run-dir", str(run), "--max-steps", "14", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["batch_size"] == 3
    assert checkpoint_dirs(run)[-1].name == "step-00000014"
    assert main(["train", "--run-dir", str(run), "--no-resume"]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_cli_names_volumes(data, tmp_path, capsys):
    write_coordinates(tmp_path / "two.bin", np.array([[20, 20, 20], [24, 24, 24]]), [0, 1], ["a", "b"])
    base = ["train", "--coords", str(tmp_path / "two.bin"), "--model", TINY, "--max-steps", "2", "--no-progress", "--no-tensorboard"]
    assert main(base + ["--image", f"{data}/v.h5:image", "--labels", f"{data}/v.h5:labels", "--run-dir", str(tmp_path / "r1")]) == 2
    assert "name each volume" in capsys.readouterr().err
    named = [
        "--image",
        f"a={data}/v.h5:image",
        "--labels",
        f"a={data}/v.h5:labels",
        "--image",
        f"b={data}/v.h5:image",
        "--labels",
        f"b={data}/v.h5:labels",
    ]
    assert main(base + named + ["--run-dir", str(tmp_path / "r2")]) == 0
    assert main(base + named[:4] + ["--run-dir", str(tmp_path / "r3")]) == 2
    assert "volume 'b'" in capsys.readouterr().err


def test_bad_input_errors(data, tmp_path):
    write_coordinates(tmp_path / "edge.bin", np.array([[2, 20, 20]]), None, ["synth"])
    with pytest.raises(DataError, match="too close to its edge"):
        train(_config(data, tmp_path / "r", coords=str(tmp_path / "edge.bin"), max_steps=1))
    write_coordinates(tmp_path / "out.bin", np.array([[20, 20, 60]]), None, ["synth"])
    with pytest.raises(DataError, match="outside it"):
        train(_config(data, tmp_path / "r", coords=str(tmp_path / "out.bin"), max_steps=1))
    write_coordinates(tmp_path / "other.bin", np.array([[20, 20, 20]]), None, ["other"])
    with pytest.raises(DataError, match="volume 'other'"):
        train(_config(data, tmp_path / "r", coords=str(tmp_path / "other.bin"), max_steps=1))
    write_volume(f"{tmp_path}/small.h5:labels", np.ones((48, 48, 40), np.uint64))
    with pytest.raises(DataError, match="shape"):
        train(_config(data, tmp_path / "r", labels={"synth": f"{tmp_path}/small.h5:labels"}, max_steps=1))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to run directory"):
        train(_config(data, blocker / "run", max_steps=1))
    with pytest.raises(ConfigError, match="lr_decay_factor and decay_steps"):
        TrainConfig.build({"lr_decay_factor": 0.5})
    with pytest.raises(ConfigError, match="unknown option"):
        TrainConfig.build({"learning_rat": 1.0})


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    train(_config(data, run, max_steps=3, checkpoint_every_steps=3))
    good = _weights(run, 3)
    with pytest.raises(TrainingDiverged, match=r"step-00000003"):
        train(_config(data, run, max_steps=50, learning_rate=1e30, grad_clip=None))
    assert [d.name for d in checkpoint_dirs(run)] == ["step-00000003"]
    assert all(torch.equal(good[k], v) for k, v in _weights(run, 3).items())
    with pytest.raises(ConfigError, match="--optimizer adam"):
        train(_config(data, run, max_steps=5, optimizer="sgd"))


def test_init_from_checkpoint(data, tmp_path, fib25_ckpt):
    cfg = _config(data, tmp_path / "r", max_steps=0)
    src = build_model(cfg.model, seed=123)
    save_model(src, tmp_path / "init")
    train(_config(data, tmp_path / "r", max_steps=0, init_from=str(tmp_path / "init")))
    got = _weights(tmp_path / "r", 0)
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items())
    with pytest.raises(CheckpointError, match="depth 12"):
        train(_config(data, tmp_path / "r2", max_steps=0, init_from=str(fib25_ckpt)))


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(data, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "neuroflood",
        "train",
        "--image",
        f"{data}/v.h5:image",
        "--labels",
        f"{data}/v.h5:labels",
        "--coords",
        str(data / "train.bin"),
        "--run-dir",
        str(run),
        "--model",
        TINY,
        "--max-steps",
        "100000",
        "--summary-every-steps",
        "5",
        "--no-tensorboard",
        "--no-progress",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err
    (ckpt,) = checkpoint_dirs(run)
    step = int(ckpt.name.split("-")[1])
    assert 5 <= step < 100000
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == step


def test_emulated_workers_average_their_gradients(data, tmp_path):
    """Two emulated workers with batch B each give the same step as one batch of 2B (mean loss)."""
    cfg = _config(data, tmp_path, batch_size=2)
    torch.manual_seed(0)
    f = (1, 1, 9, 9, 9)
    batches = [Batch(*(torch.randn((2,) + f[1:]) for _ in range(2)), torch.rand((2,) + f[1:]), torch.ones((2,) + f[1:])) for _ in range(2)]
    joined = Batch(*(torch.cat([getattr(b, k) for b in batches]) for k in ("seed", "image", "labels", "weights")))
    m1, m2 = build_model(cfg.model, seed=0), build_model(cfg.model, seed=0)
    o1, o2 = torch.optim.SGD(m1.parameters(), lr=0.1), torch.optim.SGD(m2.parameters(), lr=0.1)
    l1, _ = train_step(m1, o1, batches, 0.1, 0.7, torch.device("cpu"))
    l2, _ = train_step(m2, o2, [joined], 0.1, 0.7, torch.device("cpu"))
    assert l1 == pytest.approx(l2, rel=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    r = train(_config(data, tmp_path / "emu", max_steps=4, emulate_workers=2))
    assert r.step == 4 and r.last_train["fovs"] == 4 * 2 * 4


def test_optimizers_and_schedule():
    params = [torch.nn.Parameter(torch.zeros(3))]
    names = {
        "sgd": torch.optim.SGD,
        "momentum": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": TFRMSprop,
    }
    for name, cls in names.items():
        assert isinstance(build_optimizer(params, TrainConfig(optimizer=name)), cls)
    # TF RMSProp: ms starts at 1, eps inside the root, momentum 0.9 (google/ffn defaults).
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = build_optimizer([p], TrainConfig(optimizer="rmsprop", learning_rate=0.1))
    p.grad = torch.tensor([2.0])
    opt.step()
    ms = 0.9 * 1 + 0.1 * 4
    assert p.item() == pytest.approx(1 - 0.1 * 2 / np.sqrt(ms + 1e-8))
    cfg = TrainConfig(learning_rate=0.1, lr_decay_factor=0.5, decay_steps=10)
    assert [learning_rate(s, cfg) for s in (0, 9, 10, 25)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    g = torch.nn.Parameter(torch.zeros(4))
    g.grad = torch.tensor([-2.0, -0.5, 0.3, 9.0])
    clip_gradients([g], 0.7)
    assert g.grad.tolist() == pytest.approx([-0.7, -0.5, 0.3, 0.7])


def test_checkpoint_retention(tmp_path):
    model = build_model(TrainConfig().model.model_copy(update={"depth": 1, "features": 2}), seed=0)
    start = time.time() - 3600
    for step, age_h in [(1, 0.9), (2, 0.8), (3, 0.6), (4, 0.3), (5, 0.2), (6, 0.1)]:
        path = save_checkpoint(tmp_path, model, {"step": step})
        t = time.time() - age_h * 3600
        os.utime(path / "state.pt", (t, t))
    prune_checkpoints(tmp_path, keep_last=2, keep_every_hours=0.25, run_start=start)
    # Newest 2 kept; of the older ones, each first one >= 15 min after the previous kept one
    # (the run start, then step 3) is kept for good: steps 3 (0.4 h after the start) and 4.
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000003", "step-00000004", "step-00000005", "step-00000006"]
    assert (tmp_path / "checkpoints" / "step-00000003" / "KEEP").exists()
    prune_checkpoints(tmp_path, keep_last=1, keep_every_hours=None, run_start=start)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-00000003", "step-00000004", "step-00000006"]
