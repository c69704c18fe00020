"""SIGINT and SIGTERM end a running study and every process it started, promptly.

A study (lr-scaling with --jobs 2) runs its training runs in spawned pool workers; each test
starts one in a subprocess with runs far too long to finish, waits until the workers are
training, sends the signal, and checks that the study and all its descendants (pool
workers, the resource tracker) are gone within seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = "depth=1,features=4,fov=5,5,5,deltas=1,1,1"
SIZE = 24
ROOT = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The study's synthetic volumes and coordinates, made once and copied into each study."""
    from neuroflood.config import ModelConfig
    from neuroflood.studies.common import prepare_synthetic

    work = tmp_path_factory.mktemp("study-data") / "data"
    prepare_synthetic(work, ModelConfig.parse_spec(TINY), size=SIZE, seed=0)
    return work


@pytest.mark.parametrize(
    "jobs, sig, code",
    [(2, signal.SIGINT, 130), (2, signal.SIGTERM, 143), (1, signal.SIGINT, 130)],
    ids=["pool-sigint", "pool-sigterm", "in-process-sigint"],
)
def test_signal_ends_the_study_and_its_workers(data, tmp_path, jobs, sig, code):
    out = tmp_path / "study"
    shutil.copytree(data, out / "data")
    cmd = [
        sys.executable,
        "-m",
        "neuroflood",
        "study",
        "lr-scaling",
        "--out",
        str(out),
        "--workers",
        "1,2",
        "--lr-factors",
        "1,2",
        "--fovs",
        "1000000",
        "--eval-examples",
        "4",
        "--jobs",
        str(jobs),
        "--model",
        TINY,
        "--data-size",
        str(SIZE),
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # wait until `jobs` training runs are under way (in the workers, or in the study itself)
        runs = out / "runs"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            started = [p for p in runs.glob("n*") if (p / "metrics.jsonl").exists() or any(p.iterdir())] if runs.is_dir() else []
            if len(started) >= jobs:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the study ended before the signal: {proc.stderr.read()[-2000:]}"
        assert len(started) >= jobs, "no training run started within 120 s"
        family = _descendants(proc.pid)
        if jobs > 1:
            assert len(family) >= jobs, f"expected {jobs} pool workers, found {family}"
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the study still runs 20 s after {sig.name}")
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in family):
            time.sleep(0.1)
        assert not [p for p in family if _alive(p)], f"processes outlived the study after {sig.name}"
        assert proc.returncode == code, proc.stderr.read()[-2000:]
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
