"""The studies end to end at tiny sizes: JSON contracts, figures, and the numbers they derive."""

from __future__ import annotations

import json
import os
import time

import pytest

from neuroflood.cli import main
from neuroflood.studies.commands import _factors
from neuroflood.studies.figures import efficiency
from neuroflood.studies.lr_scaling import _grid, auto_factors, best_per_workers, normalise

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"
SMALL = ["--model", TINY, "--data-size", "40", "--threads", "1"]


def test_scaling_contract(tmp_path):
    """`neuroflood study scaling --out DIR` writes DIR/scaling.json: workers, fovs_per_s, efficiency, config."""
    out = tmp_path / "s"
    assert main(["study", "scaling", "--out", str(out), "--workers", "1,2", "--steps", "3", "--batch-size", "2", *SMALL]) == 0
    rows = json.loads((out / "scaling.json").read_text())
    assert [r["workers"] for r in rows] == [1, 2]
    for r in rows:
        assert r["fovs_per_s"] > 0 and r["config"]["batch_size_per_worker"] == 2 and r["config"]["model"] == TINY
        assert r["measured_steps"] == 2 and len(r["load_average_before"]) == 3
    assert rows[0]["efficiency"] == pytest.approx(1.0)
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["fovs_per_s"] / (2 * rows[0]["fovs_per_s"]))
    assert rows[1]["config"]["global_batch"] == 4
    assert (out / "scaling.png").stat().st_size > 10_000


def test_lr_scaling_grid(tmp_path):
    """The paper's form alone (--rules off): base × factors at every N, normalised by the best at N."""
    out = tmp_path / "lr"
    args = ["study", "lr-scaling", "--out", str(out), "--workers", "1,2", "--lr-factors", "1,4", "--rules", "off"]
    assert main([*args, "--fovs", "48", "--evaluations", "3", "--eval-examples", "4", "--jobs", "1", *SMALL]) == 0
    report = json.loads((out / "lr_scaling.json").read_text())
    points = report["points"]
    assert len(points) == 2 * 2 * 2 and {p["rule"] for p in points} == {"grid"}  # N × LR × (no warm-up, warm-up)
    n2 = [p for p in points if p["workers"] == 2]
    assert {p["steps"] for p in n2} == {48 // (2 * 4)} and {p["fovs"] for p in points} == {48}  # fixed sample budget
    assert {p["learning_rate"] for p in points} == {1e-3, 4e-3}
    assert {p["warmup_steps"] for p in n2} == {0, 1}
    for p in points:
        (run,) = p["runs"]  # one seed: a mean without an interval
        assert p["seeds"] == 1 and p["f1"] == {"mean": run["final"]["f1"], "ci95": None, "sd": None, "n": 1}
        assert 0 <= p["accuracy"]["mean"] <= 1 and len(run["curve"]) == 3
    assert report["config"]["eval_examples"] == 4 and report["config"]["seeds"] == [0]
    assert len(report["best"]) == 4 and report["best"][1]["sqrt_rule"] == pytest.approx(1e-3)
    for m in ("f1", "accuracy"):
        assert (out / f"lr_scaling_{m}.png").stat().st_size > 10_000
    assert not (out / "lr_scaling_loss.png").exists()  # the loss figure shows the rules; there are none


def test_a_rerun_reports_only_the_files_it_wrote(tmp_path, capsys):
    """A --rules off run on an OUT where a rules run left lr_scaling_loss.png does not claim that figure."""
    out = tmp_path / "lr"
    base = ["study", "lr-scaling", "--out", str(out), "--workers", "1", "--fovs", "16", "--evaluations", "2", "--eval-examples", "4"]
    assert main([*base, "--rules", "none", "--lr-factors", "none", "--jobs", "1", *SMALL]) == 0
    assert "lr_scaling_loss.png" in capsys.readouterr().err
    old = time.time() - 60  # as if the first run had finished a minute ago
    os.utime(out / "lr_scaling_loss.png", (old, old))
    assert main([*base, "--rules", "off", "--lr-factors", "1", "--jobs", "1", *SMALL]) == 0
    wrote = [line for line in capsys.readouterr().err.splitlines() if line.startswith("wrote ")]
    assert wrote and "lr_scaling.json" in wrote[-1] and "lr_scaling_loss.png" not in wrote[-1]
    assert (out / "lr_scaling_loss.png").exists()  # left as it was: an earlier study's file


def test_lr_factors_auto_brackets_the_rules_at_every_n():
    """--lr-factors auto: powers of 2 from 0.5 to 2N, so none, linear (and sqrt where N is a power of 4) are on it."""
    assert _factors("auto") == "auto" and _factors("none") == [] and _factors("1,2") == [1.0, 2.0]
    assert auto_factors(1) == [0.5, 1, 2] and auto_factors(64) == [2.0**k for k in range(-1, 8)]
    assert auto_factors(8)[-1] == 16 and auto_factors(5)[-1] == 16  # not a power of 2: up to the next one, doubled
    points = _grid([1, 16], ["none", "linear", "sqrt"], "auto", 1e-3)
    for n in (1, 16):
        grid = sorted(lr for w, rule, lr in points if w == n and rule == "grid")
        rules = {lr for w, rule, lr in points if w == n and rule != "grid"}
        assert grid[0] == pytest.approx(0.5e-3) and grid[-1] == pytest.approx(2e-3 * n)
        assert all(any(r == pytest.approx(g) for g in grid) for r in rules)


def test_batch_size_study(tmp_path):
    # The optimizer study has its own tests: tests/test_study_optimizers.py.
    out = tmp_path / "bs"
    args = ["study", "batch-size", "--out", str(out), "--global-batches", "4,8", "--fovs", "64", "--evaluations", "2"]
    assert main([*args, "--eval-examples", "4", "--seeds", "2", *SMALL]) == 0
    report = json.loads((out / "batch_size.json").read_text())
    curves = report["curves"]
    assert [c["global_batch"] for c in curves] == [4, 8] and [c["workers"] for c in curves] == [1, 2]
    for c in curves:
        assert c["points"][-1]["fovs"] == 64 and c["points"][-1]["step"] == 64 // c["global_batch"]
        p = c["points"][-1]
        assert p["modelled_time_s"] == pytest.approx(p["time_s"] / c["workers"])
        assert c["seeds"] == 2 and [r["seed"] for r in c["runs"]] == [0, 1]
        assert p["f1"] == pytest.approx(sum(r["curve"][-1]["f1"] for r in c["runs"]) / 2)  # the mean curve
        assert c["loss"]["mean"] == pytest.approx(sum(r["final"]["loss"] for r in c["runs"]) / 2) and c["loss"]["ci95"] > 0
    assert report["config"]["seeds"] == [0, 1]
    assert (out / "batch_size.png").stat().st_size > 10_000


def test_derived_numbers():
    rows = efficiency([{"workers": 2, "fovs_per_s": 3.0}, {"workers": 1, "fovs_per_s": 2.0}, {"workers": 4, "fovs_per_s": 6.0}])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.75, 0.75])
    points = [
        {"workers": 1, "warmup": False, "rule": rule, "learning_rate": lr, "f1": {"mean": f, "ci95": 0.1}, "accuracy": {"mean": 0.9}}
        for rule, lr, f in (("none", 1e-3, 0.4), ("grid", 2e-3, 0.8))
    ]
    normalise(points, ("f1",))
    assert [p["normalized_f1"] for p in points] == pytest.approx([0.5, 1.0])
    (best,) = best_per_workers(points, 1e-3)
    assert best["best_learning_rate"] == 2e-3 and best["f1_ci95"] == 0.1 and best["rules"] == {"none": {"mean": 0.4, "ci95": 0.1}}


def test_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: usage error
        main(["study", "scaling", "--out", str(tmp_path), "--workers", "0,2"])
    assert e.value.code == 2 and "positive integers" in capsys.readouterr().err
    assert main(["study", "batch-size", "--out", str(tmp_path), "--global-batches", "6", *SMALL]) == 2
    assert "multiples" in capsys.readouterr().err
    assert main(["study", "optimizers", "--out", str(tmp_path), "--optimizers", "lamb", *SMALL]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
    assert main(["study", "lr-scaling", "--out", str(tmp_path), "--seeds", "0", *SMALL]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    assert main(["study", "lr-scaling", "--out", str(tmp_path), "--rules", "off", "--lr-factors", "none", *SMALL]) == 2
    assert "nothing to run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["study", "lr-scaling", "--out", str(tmp_path), "--rules", "cubic"])
    assert e.value.code == 2 and "LR rules" in capsys.readouterr().err
