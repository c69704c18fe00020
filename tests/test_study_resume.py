"""A learning study run again on the same OUT resumes: finished runs are reused, not retrained."""

from __future__ import annotations

import json

from neuroflood.cli import main
from neuroflood.studies.common import DONE_FILE

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"
ARGS = ["--model", TINY, "--data-size", "40", "--threads", "1", "--jobs", "1", "--fovs", "32", "--evaluations", "2", "--eval-examples", "4"]


def _study(out, *extra):
    return main(["study", "lr-scaling", "--out", str(out), "--workers", "1,2", "--rules", "none", "--lr-factors", "none", *ARGS, *extra])


def test_a_rerun_reuses_finished_runs_and_retrains_interrupted_ones(tmp_path):
    out = tmp_path / "lr"
    assert _study(out) == 0
    first = json.loads((out / "lr_scaling.json").read_text())
    runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir() and p.name != "_warmup")
    assert len(runs) == 4 and all((r / DONE_FILE).exists() for r in runs)
    kept, interrupted = runs[0], runs[1]
    before = (kept / "metrics.jsonl").stat().st_mtime_ns
    (interrupted / DONE_FILE).unlink()  # as if the study was killed during this run
    (interrupted / "metrics.jsonl").write_text("")  # ... with its metrics half-written
    assert _study(out) == 0
    assert (kept / "metrics.jsonl").stat().st_mtime_ns == before  # reused, not trained again
    assert (interrupted / DONE_FILE).exists() and (interrupted / "metrics.jsonl").stat().st_size > 0
    second = json.loads((out / "lr_scaling.json").read_text())
    # training is deterministic: the retrained run gives the same numbers as before
    assert [p["accuracy"] for p in second["points"]] == [p["accuracy"] for p in first["points"]]


def test_more_seeds_add_runs_and_keep_the_old_ones(tmp_path):
    out = tmp_path / "lr"
    assert _study(out) == 0
    run = next(p for p in (out / "runs").iterdir() if p.name.endswith("seed0"))
    before = (run / "metrics.jsonl").stat().st_mtime_ns
    assert _study(out, "--seeds", "2") == 0
    assert (run / "metrics.jsonl").stat().st_mtime_ns == before
    report = json.loads((out / "lr_scaling.json").read_text())
    assert {p["seeds"] for p in report["points"]} == {2}


def test_a_foreign_directory_among_the_runs_is_refused(tmp_path, capsys):
    out = tmp_path / "lr"
    assert _study(out) == 0
    run = next(p for p in (out / "runs").iterdir() if p.name.endswith("seed0"))
    (run / DONE_FILE).unlink()
    (run / ".neuroflood-output.json").unlink()  # no longer recognisably a training run
    assert _study(out) == 2
    assert "is not a training run of this study" in capsys.readouterr().err
    assert (run / "metrics.jsonl").exists()  # nothing removed
