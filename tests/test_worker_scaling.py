"""benchmarks/worker_scaling.py: it never writes into a folder it did not make, and its ratios are right."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "worker_scaling.py"


def load():
    spec = importlib.util.spec_from_file_location("worker_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refuses_a_work_folder_it_did_not_make(tmp_path):
    (tmp_path / "theirs.txt").write_text("a user's file")
    cmd = [sys.executable, str(SCRIPT), "--model", "m", "--image", "v.h5:image", "--work", str(tmp_path)]
    cmd += ["--out", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "holds files this script did not make" in proc.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.txt"]


def test_ratios_per_round_and_pooled(tmp_path):
    ws = load()

    def run(name, workers, seconds, digest="a"):
        return {"run": name, "workers": workers, "job_seconds": seconds, "digest": digest}

    runs = [run("r0-0-w2", 2, 50.0), run("r0-1-w1", 1, 100.0), run("r0-2-w1", 1, 120.0), run("r0-3-w2", 2, 60.0)]
    runs += [run("r1-0-w2", 2, 40.0), run("r1-1-w1", 1, 60.0, digest="b")]
    out = tmp_path / "r.json"
    ws.write(out, {"k": 1}, runs)
    result = json.loads(out.read_text())
    assert result["rounds"] == [{"round": "r0", "speedup": 2.0}, {"round": "r1", "speedup": 1.5}]
    assert result["speedup_pooled"] == round((280 / 3) / (150 / 3), 3)
    assert result["same_segmentation"] is False
    assert not out.with_suffix(".json.tmp").exists()


def test_refuses_to_replace_a_file_it_did_not_write(tmp_path):
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": 1}')
    cmd = [sys.executable, str(SCRIPT), "--model", "m", "--image", "v.h5:image", "--work", str(tmp_path / "w")]
    cmd += ["--out", str(theirs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "is not this script's result" in proc.stderr.strip().splitlines()[-1]
    assert theirs.read_text() == '{"mine": 1}'
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--block-size", "0"], "--block-size must be at least 1"),
        (["--overlap", "-1"], "--overlap at least 0"),
    ],
)
def test_refuses_counts_out_of_range(tmp_path, flags, message):
    cmd = [sys.executable, str(SCRIPT), "--model", "m", "--image", "v.h5:image", "--work", str(tmp_path / "w")]
    proc = subprocess.run(cmd + ["--out", str(tmp_path / "r.json"), *flags], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_says_why_in_one_line(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--model", str(tmp_path / "no-model"), "--image", str(tmp_path / "v.h5:image")]
    proc = subprocess.run(cmd + ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("run r0-0-w2 failed (exit ") and "no checkpoint at" in last
    assert not (tmp_path / "r.json").exists()
