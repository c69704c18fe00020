"""``neuroflood segment`` / ``consensus`` end to end with a hand-wired network (fast): outputs,
summary, skipping a finished request, clear errors for bad input, and a SIGKILLed run that
resumes from its checkpoint to the same result."""

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

from infer_helpers import bright_image, bright_model
from neuroflood.cli import main
from neuroflood.infer.storage import default_checkpoint_path, read_output
from neuroflood.model import save_model
from neuroflood.volume import write_volume

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model_dir = tmp / "bright-model"
    save_model(bright_model(delta=3), model_dir)  # bigger steps: fewer FOVs
    image = str(tmp / "img.h5") + ":image"
    write_volume(image, bright_image())
    config = tmp / "infer.toml"
    config.write_text("checkpoint_interval = 0\n\n[options]\nmin_segment_size = 50\n")
    return tmp, str(model_dir), image, str(config)


def _segment(setup, out, *extra):
    tmp, model, image, config = setup
    return main(["segment", "--model", model, "--image", image, "--out", out, "--config", config, "--no-progress", *extra])


def test_segment_writes_output_and_summary_then_skips_the_same_request(setup, capsys):
    tmp = setup[0]
    out = f"{tmp}/seg.h5:segmentation"
    summary = tmp / "summary.json"
    assert _segment(setup, out, "--summary", str(summary)) == 0
    s = json.loads(summary.read_text())
    assert s["segments"] == 2 and s["fov_evaluations"] > 0 and 0 < s["unsegmented_fraction"] < 1
    assert s["seconds"] > 0 and s["seconds_per_fov"] > 0
    res = read_output(out)
    assert res["segmentation"].dtype == np.uint8 and set(np.unique(res["segmentation"])) == {0, 1, 2}
    assert res["qprob"] is not None and sorted(res["origins"]) == [1, 2]
    assert res["meta"]["request"]["bbox"] == "0,0,0:40,40,40"
    capsys.readouterr()
    assert _segment(setup, out) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_output_of_another_request_is_an_error_unless_overwrite(setup, capsys):
    tmp = setup[0]
    out = f"{tmp}/other.zarr/segmentation"
    assert _segment(setup, out) == 0
    capsys.readouterr()
    assert _segment(setup, out, "--set", "options.min_segment_size=60") == 2
    err = capsys.readouterr().err
    assert "already holds a segmentation of another request" in err and "options.min_segment_size" in err
    assert _segment(setup, out, "--set", "options.min_segment_size=60", "--overwrite") == 0
    assert read_output(out)["meta"]["request"]["request"]["options"]["min_segment_size"] == 60


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bbox", "0,0,0:50,40,40"], "outside the image"),
        (["--bbox", "0,0,0:8,40,40"], "smaller than the network's field of view"),
        (["--set", "options.move_threshold=1.5"], "move_threshold"),
        (["--set", "seed_policy=PolicyNope"], "unknown seed policy"),
        (["--set", "movement_policy_args.deltas=[6,6,6]"], "do not fit the model's FOV"),
        (["--set", "device=cuda:7"], "cuda"),
        (["--set", "options"], "KEY=VALUE"),
        (["--block-size", "20,20,20", "--handover-rounds", "-1"], "--handover-rounds -1 must be 0"),
    ],
)
def test_bad_input_is_a_one_line_error_and_nothing_is_written(setup, capsys, args, message):
    tmp = setup[0]
    out = f"{tmp}/bad.h5:segmentation"
    assert _segment(setup, out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroflood: error:") and message in err and err.count("\n") == 1
    assert not os.path.exists(f"{tmp}/bad.h5")


def test_consensus_of_a_run_with_itself_keeps_its_segments(setup, capsys):
    tmp = setup[0]
    a = f"{tmp}/cons_a.npz"
    assert _segment(setup, a) == 0
    out = f"{tmp}/cons.h5:consensus"
    assert main(["consensus", a, a, "--out", out, "--split-min-size", "10"]) == 0
    seg_a, seg_c = read_output(a)["segmentation"], read_output(out)["segmentation"]
    assert np.array_equal(seg_c > 0, seg_a > 0)
    assert len(np.unique(seg_c)) == len(np.unique(seg_a))


def test_sigkilled_run_resumes_from_its_checkpoint(setup, tmp_path):
    _, model, image, _ = setup
    cmd = [
        sys.executable,
        "-m",
        "neuroflood",
        "segment",
        "--model",
        model,
        "--image",
        image,
        "--threads",
        "1",
        "--set",
        "options.min_segment_size=50",
        "--set",
        "checkpoint_interval=1e-9",
        "--no-progress",
    ]
    killed_out, ref_out = f"{tmp_path}/killed.h5:segmentation", f"{tmp_path}/ref.h5:segmentation"
    ckpt = Path(default_checkpoint_path(killed_out))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([*cmd, "--out", killed_out], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_mid_object = False
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                with np.load(ckpt) as state:
                    killed_mid_object = len(state["origin_ids"]) >= 1 and int(state["partial_segment_iters"]) > 0
            except (OSError, ValueError, KeyError, EOFError):
                pass
            if killed_mid_object:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_mid_object and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not os.path.exists(f"{tmp_path}/killed.h5"), "no output from a killed run"
    done = subprocess.run([*cmd, "--out", killed_out], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not ckpt.exists()
    assert _segment(setup, ref_out, "--set", "options.min_segment_size=50") == 0  # uninterrupted, in process
    a, b = read_output(killed_out), read_output(ref_out)
    assert np.array_equal(a["segmentation"], b["segmentation"]) and np.array_equal(a["qprob"], b["qprob"])
    assert {k: (o.start_zyx, o.iterations) for k, o in a["origins"].items()} == {
        k: (o.start_zyx, o.iterations) for k, o in b["origins"].items()
    }
    assert a["meta"]["counters"] == b["meta"]["counters"]


SIGTERM_DURING_SAVE = """
import os, signal, sys
import numpy as np
from neuroflood.cli import sigterm_unwinds
from neuroflood.atomic import atomic_savez

real = np.savez_compressed
def savez_then_terminated(f, **arrays):
    real(f, **arrays)
    os.kill(os.getpid(), signal.SIGTERM)  # as if `kill` arrived while the checkpoint is written

np.savez_compressed = savez_then_terminated
target = os.path.join(sys.argv[1], "checkpoint.npz")
if sys.argv[2] == "unwinds":
    with sigterm_unwinds():
        atomic_savez(target, {"a": np.zeros(1000)})
else:
    atomic_savez(target, {"a": np.zeros(1000)})
"""


@pytest.mark.parametrize("mode", ["unwinds", "default"])
def test_sigterm_while_saving_leaves_no_temporary_file(tmp_path, mode):
    """Under the CLI's SIGTERM handling a terminated save removes its temporary file."""
    proc = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SAVE, str(tmp_path), mode], capture_output=True, text=True, timeout=120)
    left = sorted(p.name for p in tmp_path.iterdir())
    if mode == "unwinds":
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        assert left == []  # neither the temporary file nor a checkpoint that was never completed
    else:  # Python's default: the process dies on the spot and the temporary file stays behind
        assert proc.returncode == -signal.SIGTERM
        assert len(left) == 1 and left[0].startswith(".checkpoint.npz.") and left[0].endswith(".tmp")


def test_blockwise_options_come_from_the_config_file_and_the_command_line_overrides_them(setup, capsys):
    tmp, model, image, config = setup
    blockwise = tmp / "blockwise.toml"
    blockwise.write_text(Path(config).read_text() + "\n[blockwise]\nblock_size = [40, 40, 28]\nhandover_rounds = 1\n")
    out = f"{tmp}/fromfile.zarr/seg"
    args = ["segment", "--model", model, "--image", image, "--out", out, "--config", str(blockwise), "--no-progress"]
    assert main([*args, "--handover-rounds", "0"]) == 0
    job = json.loads((tmp / "fromfile.zarr" / ".seg.work" / "request.json").read_text())
    assert job["block_size"] == [40, 40, 28] and job["handover_rounds"] == 0 and job["overlap"] == [7, 7, 7]  # the default: fov//2 + delta
    assert "in 2 blocks" in capsys.readouterr().out
    blockwise.write_text("[blockwise]\nmin_overlap_fraction = 2\n")
    assert main([*args[:-3], "--config", str(blockwise), "--block-size", "40,40,28"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuroflood: error:") and "min_overlap_fraction" in err and err.count("\n") == 1
