"""``neuroflood study project``: a measured run's step times projected to many workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroflood.cli import main
from neuroflood.config import ModelConfig
from neuroflood.model import build_model
from neuroflood.train.config import TrainConfig
from neuroflood.train.timing import write_step_times

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"


def _run_dir(path: Path, work: np.ndarray, batch_size: int = 2) -> Path:
    """A run directory as `neuroflood train` leaves it: config.json and step_times.jsonl.

    ``work`` is ``[ranks, steps]``; written as two summary intervals.
    """
    path.mkdir(parents=True)
    config = TrainConfig(model=ModelConfig.parse_spec(TINY), batch_size=batch_size, run_dir=str(path))
    (path / "config.json").write_text(config.to_json())
    half = work.shape[1] // 2
    for first, part in ((0, work[:, :half]), (half, work[:, half:])):
        rows = np.zeros(part.shape + (4,))
        rows[..., 3] = part
        rows[..., 2] = 0.001
        write_step_times(path, first + part.shape[1], rows)
    return path


def _project(run: Path, out: Path, *extra: str) -> dict:
    assert main(["study", "project", "--timings", str(run), "--out", str(out), *extra]) == 0
    assert (out / "projection.png").stat().st_size > 1000
    return json.loads((out / "projection.json").read_text())


def test_no_jitter_and_no_latency_scale_perfectly(tmp_path, capsys):
    run = _run_dir(tmp_path / "run", np.full((2, 20), 0.05))
    result = _project(run, tmp_path / "out", "--workers", "1,2,1024,4096", "--latency-us", "0", "--bandwidth-gbps", "1e9")
    assert [p["workers"] for p in result["points"]] == [1, 2, 1024, 4096]
    for p in result["points"]:
        assert p["efficiency"] == pytest.approx(1.0, abs=1e-6)
        assert p["fovs_per_s"] == pytest.approx(p["workers"] * 2 / 0.05, rel=1e-5)
    assert result["interconnect"]["latency_s"] == 0.0 and result["algorithm"] == "best"
    assert result["fovs_per_step_per_rank"] == 2
    params = build_model(ModelConfig.parse_spec(TINY)).num_parameters()
    assert result["parameters"] == params and result["message_bytes"] == 4 * params  # float32 gradients
    assert result["measured"]["ranks"] == 2 and result["measured"]["steps"] == 19  # the first step is skipped
    assert result["measured"]["work_cv"] == pytest.approx(0.0, abs=1e-9)
    assert {p["workers"] for p in result["paper"]} >= {1, 1024, 2048}
    out = capsys.readouterr().out
    assert "workers 1024: efficiency 100.0%" in out and "per-rank work CV must be" in out


def test_jitter_costs_the_expected_maximum(tmp_path):
    """Uniform(0, 1) work: E[max of 2] = 2/3 against a mean of 1/2, efficiency 3/4 (no communication)."""
    work = np.random.default_rng(0).uniform(0, 1, (2, 20000))
    run = _run_dir(tmp_path / "run", work)
    result = _project(run, tmp_path / "out", "--workers", "2,8", "--latency-us", "0", "--bandwidth-gbps", "1e9", "--skip-steps", "0")
    two, eight = result["points"]
    assert two["efficiency"] == pytest.approx(0.75, rel=0.02)
    assert eight["efficiency"] == pytest.approx(0.5 / (8 / 9), rel=0.02)
    assert two["straggler_s"] == pytest.approx(2 / 3 - 0.5, rel=0.05)
    # On a real network the all-reduce of the gradients costs more than nothing.
    slow = _project(run, tmp_path / "slow", "--workers", "2", "--interconnect", "ethernet-10g", "--skip-steps", "0")
    assert slow["points"][0]["allreduce_s"] > 0 and slow["points"][0]["efficiency"] < two["efficiency"]


def test_bad_run_directory_is_one_line(tmp_path, capsys):
    def error(*args: str) -> str:
        assert main(["study", "project", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err
        return err

    out = str(tmp_path / "out")
    assert "is not a directory" in error("--timings", str(tmp_path / "missing"), "--out", out)
    (tmp_path / "empty").mkdir()
    assert "step_times.jsonl does not exist" in error("--timings", str(tmp_path / "empty"), "--out", out)
    run = _run_dir(tmp_path / "run", np.full((2, 4), 0.1))
    with open(run / "step_times.jsonl", "a") as f:
        f.write('{"steps": [5, 6], "ranks": 2, "work_s": [[1]]}\n')
    assert "line 3 is not a step-times record" in error("--timings", str(run), "--out", out)
    run = _run_dir(tmp_path / "short", np.full((2, 2), 0.1))
    assert "no steps after the first 5" in error("--timings", str(run), "--out", out, "--skip-steps", "5")
    assert "unknown interconnect" in error("--timings", str(run), "--out", out, "--interconnect", "pigeon")
    assert "--latency-us" in error("--timings", str(run), "--out", out, "--latency-us", "-1")
    (run / "config.json").write_text("{")
    assert "cannot read" in error("--timings", str(run), "--out", out)
    assert not Path(out).exists()  # nothing written on bad input


def test_a_fixed_per_step_overhead_is_measured_and_carried(tmp_path, capsys):
    """Constant work and 1 ms of wait per step, no communication: the run waited 1 ms beyond
    stragglers (none) and the all-reduce (free); 'measured' carries it to every N >= 2."""
    run = _run_dir(tmp_path / "run", np.full((2, 20), 0.05))
    free = ("--latency-us", "0", "--bandwidth-gbps", "1e9")
    plain = _project(run, tmp_path / "plain", "--workers", "1,2,64", *free)
    assert plain["overhead_s"] == 0.0 and plain["measured"]["overhead_s"] == pytest.approx(0.001)
    measured = _project(run, tmp_path / "measured", "--workers", "1,2,64", *free, "--overhead-ms", "measured")
    one, two, many = measured["points"]
    assert one["efficiency"] == pytest.approx(1.0) and one["overhead_s"] == 0.0  # one rank: no synchronous step
    for p in (two, many):
        assert p["overhead_s"] == pytest.approx(0.001) and p["efficiency"] == pytest.approx(0.05 / 0.051, rel=1e-6)
    given = _project(run, tmp_path / "given", "--workers", "2", *free, "--overhead-ms", "4")
    assert given["points"][0]["efficiency"] == pytest.approx(0.05 / 0.054, rel=1e-6)
    assert given["overhead_source"] == "--overhead-ms"
    capsys.readouterr()
    assert main(["study", "project", "--timings", str(run), "--out", str(tmp_path / "bad"), "--overhead-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--overhead-ms" in err and not (tmp_path / "bad").exists()
