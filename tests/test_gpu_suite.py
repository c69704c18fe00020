"""benchmarks/gpu_suite.py: on a machine without CUDA it stops at once with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def test_without_cuda_the_suite_says_so_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--out", str(tmp_path / "out.json")], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_suite: error: no CUDA device"), proc.stderr
    assert not (tmp_path / "out.json").exists()
