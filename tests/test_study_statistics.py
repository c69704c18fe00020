"""Statistics of the learning studies: CI arithmetic, the final window, and lr-scaling's --seeds contract."""

from __future__ import annotations

import json
import math

import pytest

from neuroflood.cli import main
from neuroflood.studies.statistics import final_window, mean_ci95, mean_curve, seed_list, summarise, t_critical, window_size

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"


def test_mean_and_ci95_known_values():
    assert t_critical(2) == pytest.approx(4.3027, abs=1e-4)  # t(0.975, 2), from any t table
    s = mean_ci95([1, 2, 3])
    assert s["mean"] == 2 and s["sd"] == pytest.approx(1.0) and s["n"] == 3
    assert s["ci95"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)  # ≈ 2.484
    s = mean_ci95([2, 4, 4, 4, 5, 5, 7, 9])  # sd = √(32/7); t(0.975, 7) = 2.3646
    assert s["mean"] == 5 and s["ci95"] == pytest.approx(2.3646 * math.sqrt(32 / 7) / math.sqrt(8), abs=1e-3)
    assert mean_ci95([0.5, None, 0.7])["mean"] == pytest.approx(0.6) and mean_ci95([0.5, None, 0.7])["n"] == 2
    assert mean_ci95([0.4]) == {"mean": 0.4, "ci95": None, "sd": None, "n": 1}  # one seed: no interval
    assert mean_ci95([None]) == {"mean": None, "ci95": None, "sd": None, "n": 0}
    assert mean_ci95([3, 3, 3])["ci95"] == 0.0
    assert seed_list(5, 3) == [5, 6, 7]


def test_final_window_averages_the_last_fifth():
    assert [window_size(n) for n in (0, 1, 4, 5, 6, 8, 10, 11, 20)] == [0, 1, 1, 1, 2, 2, 2, 3, 4]
    evals = [{"step": 10 * i, "accuracy": i / 10, "f1": float(i), "loss": 10.0 - i} for i in range(1, 11)]
    w = final_window(evals)
    assert w["evaluations"] == 2 and w["from_step"] == 90
    assert w["accuracy"] == pytest.approx(0.95) and w["f1"] == pytest.approx(9.5) and w["loss"] == pytest.approx(0.5)
    evals[-1]["f1"] = None  # an evaluation without a value does not count as 0
    assert final_window(evals)["f1"] == pytest.approx(9.0)
    assert final_window([])["accuracy"] is None and final_window([])["evaluations"] == 0
    runs = [
        {
            "final": {"accuracy": a, "f1": f, "loss": 1.0},
            "curve": [{"step": 1, "fovs": 4, "time_s": t, "accuracy": a, "f1": f, "loss": 1.0}],
        }
        for a, f, t in ((0.5, 1.0, 2.0), (0.7, 2.0, 4.0), (0.9, 3.0, 6.0))
    ]
    s = summarise(runs)
    assert s["seeds"] == 3 and s["f1"]["mean"] == pytest.approx(2.0) and s["f1"]["ci95"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    (c,) = mean_curve(runs)
    assert c["step"] == 1 and c["fovs"] == 4 and c["time_s"] == pytest.approx(4.0) and c["accuracy"] == pytest.approx(0.7)
    assert c["f1_ci95"] == pytest.approx(s["f1"]["ci95"]) and c["loss_ci95"] == 0.0 and "time_s_ci95" not in c


def test_lr_scaling_seeds_contract(tmp_path):
    """`neuroflood study lr-scaling … --seeds 2 --out DIR`: DIR/lr_scaling.json follows the contract."""
    out = tmp_path / "lr"
    args = ["study", "lr-scaling", "--out", str(out), "--workers", "1,2", "--rules", "none,linear,sqrt", "--lr-factors", "2"]
    args += ["--fovs", "32", "--evaluations", "2", "--eval-examples", "6", "--seeds", "2", "--jobs", "1"]
    assert main([*args, "--model", TINY, "--data-size", "40", "--threads", "1"]) == 0
    report = json.loads((out / "lr_scaling.json").read_text())
    assert report["config"]["seeds"] == [0, 1] and report["config"]["eval_examples"] == 6
    points = report["points"]
    # N × (3 rules + 1 grid LR) × (no warm-up, warm-up)
    assert len(points) == 2 * 4 * 2
    assert {(p["workers"], p["rule"]) for p in points} == {(n, r) for n in (1, 2) for r in ("none", "linear", "sqrt", "grid")}
    lr = {(p["workers"], p["rule"]): p["learning_rate"] for p in points}
    assert (
        lr[2, "none"] == 1e-3 and lr[2, "linear"] == 2e-3 and lr[2, "sqrt"] == pytest.approx(1e-3 * math.sqrt(2)) and lr[2, "grid"] == 2e-3
    )
    assert {p["warmup"] for p in points} == {False, True}
    for p in points:
        assert p["seeds"] == 2 and [r["seed"] for r in p["runs"]] == [0, 1]
        assert p["steps"] == 32 // (p["workers"] * 4) and p["fovs"] == 32  # fixed sample budget
        for m in ("accuracy", "f1", "loss"):
            finals = [r["final"][m] for r in p["runs"]]
            assert p[m]["mean"] == pytest.approx(sum(finals) / 2)
            assert p[m]["ci95"] == pytest.approx(12.7062 * abs(finals[0] - finals[1]) / 2, rel=1e-5, abs=1e-12)  # t(0.975, 1)·s/√2
        for r in p["runs"]:
            assert len(r["curve"]) == 2 and r["final"]["evaluations"] == 1  # 20 % of 2 evaluations: the last
            assert r["final"]["loss"] == r["curve"][-1]["loss"] and r["curve"][-1]["fovs"] == 32
            assert json.loads((tmp_path / r["run_dir"] / "config.json").read_text())["seed"] == r["seed"]
    # the seed changes the training: the two seeds' held-out losses differ in every point
    assert all(p["runs"][0]["final"]["loss"] != p["runs"][1]["final"]["loss"] for p in points)
    # the linear rule's LR at N = 2 is on the grid too: trained once, reported under both
    same = [p for p in points if p["workers"] == 2 and p["rule"] in ("linear", "grid") and not p["warmup"]]
    assert same[0]["runs"] == same[1]["runs"]
    assert max(p["normalized_f1"] for p in points if p["workers"] == 1 and p["warmup"]) == pytest.approx(1.0)
    for m in ("f1", "accuracy", "loss"):
        assert (out / f"lr_scaling_{m}.png").stat().st_size > 10_000


def _rule_point(n: int, rule: str, warm: bool, losses: list[float]) -> dict:
    runs = [{"final": {"loss": v, "accuracy": 1 - v, "f1": 1 - v}} for v in losses]
    return {"workers": n, "rule": rule, "warmup": warm, "runs": runs}


def test_compare_rules_picks_the_best_and_tests_it():
    """Lowest loss (highest accuracy) wins; Welch's t-test decides whether the others are separable."""
    from neuroflood.studies.lr_scaling import compare_rules

    points = [
        _rule_point(1, "none", False, [0.5, 0.5, 0.5]),  # N = 1: all rules alike, left out
        _rule_point(4, "none", False, [0.40, 0.41, 0.42]),
        _rule_point(4, "linear", False, [0.30, 0.31, 0.32]),  # clearly best
        _rule_point(4, "sqrt", False, [0.35, 0.36, 0.37]),
        _rule_point(16, "none", True, [0.30, 0.40, 0.35]),
        _rule_point(16, "sqrt", True, [0.31, 0.41, 0.36]),  # overlapping: not separable
    ]
    rows = {(r["workers"], r["warmup"], r["metric"]): r for r in compare_rules(points)}
    assert {k[0] for k in rows} == {4, 16}
    a = rows[4, False, "loss"]
    assert a["best_rule"] == "linear" and a["separable"]
    assert a["others"]["none"]["difference"] == pytest.approx(-0.10) and a["others"]["none"]["p_value"] < 0.01
    assert rows[4, False, "accuracy"]["best_rule"] == "linear"  # higher is better for accuracy
    b = rows[16, True, "loss"]
    assert b["best_rule"] == "none" and not b["separable"] and b["others"]["sqrt"]["p_value"] > 0.5
