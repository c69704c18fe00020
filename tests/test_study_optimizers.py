"""The optimizer study: FOVs to a held-out accuracy level, the comparable level, modelled wall time, N workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from badinput import Case, check_refused
from neuroflood.cli import main
from neuroflood.studies.optimizers import comparable_level, compare_levels, fovs_to, load_projection
from neuroflood.studies.statistics import mean_curve, t_critical

TINY = "depth=2,features=4,fov=9,9,9,deltas=2,2,2"
SMALL = ["--model", TINY, "--data-size", "40", "--threads", "1"]


def _curve(accuracies, step_fovs=100):
    return [{"step": i + 1, "fovs": (i + 1) * step_fovs, "time_s": float(i + 1), "accuracy": a} for i, a in enumerate(accuracies)]


def _point(workers, *runs):
    records = [{"seed": s, "curve": _curve(acc)} for s, acc in enumerate(runs)]
    return {"workers": workers, "runs": records, "curve": mean_curve(records)}


def _projection(path: Path, points) -> Path:
    """A projection.json as `neuroflood study project` writes it: fovs_per_s = N × per-worker FOVs/s × efficiency."""
    rows = [
        {"workers": n, "efficiency": e, "fovs_per_s": n * per_worker * e, "step_s": 1.0, "straggler_s": 0.1, "allreduce_s": 0.01}
        for n, per_worker, e in points
    ]
    meta = {"interconnect": {"name": "aries"}, "algorithm": "best", "parameters": 123, "fovs_per_step_per_rank": 4}
    path.write_text(json.dumps({**meta, "points": rows}))
    return path


def test_fovs_to_and_the_comparable_level():
    curve = _curve([0.5, None, 0.8, 0.7, 0.95])
    assert fovs_to(curve, 0.8) == 300  # first evaluation at or above the level, not the best one
    assert fovs_to(curve, 0.95) == 500 and fovs_to(curve, 0.5) == 100 and fovs_to(curve, 0.96) is None
    # min over curves of each curve's max: the highest level every curve reaches
    assert comparable_level([_curve([0.5, 0.85, 0.8]), _curve([0.4, 0.6, 0.65]), _curve([0.7, 0.9])]) == 0.65
    assert comparable_level([_curve([0.5]), _curve([None])]) is None and comparable_level([]) is None


def test_time_to_target_comparable_level_and_modelled_wall_time(tmp_path):
    proj = load_projection(_projection(tmp_path / "projection.json", [(1, 10.0, 1.0), (4, 10.0, 0.75)]))
    assert sorted(proj["points"]) == [1, 4] and proj["points"][4]["fovs_per_s"] == 30.0 and proj["interconnect"] == "aries"

    def rows():  # N = 1: mean curve 0.55, 0.67, 0.85; N = 4: 0.45, 0.65, 0.65
        return [_point(1, [0.5, 0.7, 0.8], [0.6, 0.64, 0.9]), _point(4, [0.4, 0.6, 0.7], [0.5, 0.7, 0.6])]

    # The target is reached by N = 1's mean curve: FOVs to the target, no comparable level.
    pts = rows()
    levels = compare_levels(pts, 0.8, proj)
    assert levels == {"target_accuracy": 0.8, "target_reached_by_any": True, "comparable_accuracy": None, "compared_at": 0.8}
    assert [r["fovs_to_target"] for r in pts[0]["runs"]] == [300, 300]
    assert pts[0]["fovs_to_target"] == {"mean": 300.0, "ci95": 0.0, "sd": 0.0, "n": 2, "reached": 2}
    assert pts[1]["fovs_to_target"]["mean"] is None and pts[1]["fovs_to_target"]["reached"] == 0
    assert pts[0]["fovs_to_comparable"] is None
    assert pts[0]["modelled_wall_s"]["mean"] == pytest.approx(300 / 10.0) and pts[1]["modelled_wall_s"]["mean"] is None
    assert pts[1]["projection"] == {"fovs_per_s": 30.0, "efficiency": 0.75}

    # Not reached by any mean curve: the comparable level is min(0.85, 0.65) = 0.65.
    pts = rows()
    levels = compare_levels(pts, 0.95, proj)
    assert not levels["target_reached_by_any"] and levels["comparable_accuracy"] == pytest.approx(0.65)
    assert levels["compared_at"] == levels["comparable_accuracy"]
    assert [r["fovs_to_comparable"] for r in pts[0]["runs"]] == [200, 300]  # 0.64 < 0.65 at 200 FOVs for seed 1
    a = pts[0]["fovs_to_comparable"]
    assert a["mean"] == 250.0 and a["reached"] == 2
    assert a["ci95"] == pytest.approx(t_critical(1) * math.sqrt(2 * 50**2) / math.sqrt(2))  # t · s / √K
    assert [r["fovs_to_comparable"] for r in pts[1]["runs"]] == [300, 200]
    assert [r["modelled_wall_s"] for r in pts[1]["runs"]] == pytest.approx([300 / 30.0, 200 / 30.0])
    assert pts[0]["modelled_wall_s"]["mean"] == pytest.approx(25.0) and pts[0]["modelled_wall_s"]["ci95"] == pytest.approx(a["ci95"] / 10)
    assert pts[0]["fovs_to_target"]["reached"] == 0

    # Without a projection there is no modelled time.
    pts = rows()
    compare_levels(pts, 0.95)
    assert pts[0]["modelled_wall_s"] is None and "projection" not in pts[0]
    assert all(r["modelled_wall_s"] is None for r in pts[0]["runs"])


def test_load_projection_forms(tmp_path):
    (tmp_path / "p").mkdir()
    _projection(tmp_path / "p" / "projection.json", [(2, 5.0, 0.9)])
    assert load_projection(tmp_path / "p")["points"][2]["fovs_per_s"] == pytest.approx(9.0)  # the directory of project's --out
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"workers": 1, "efficiency": 1, "fovs_per_s": 3, "straggler_s": 0, "allreduce_s": 0}]))
    assert load_projection(bare)["points"][1]["fovs_per_s"] == 3 and load_projection(bare)["parameters"] is None


def test_optimizer_study_contract(tmp_path, capsys):
    """Two N, one optimizer, 2 seeds: points per N × warm-up, FOVs to the level, modelled wall time, the figure."""
    out = tmp_path / "opt"
    proj = _projection(tmp_path / "projection.json", [(1, 10.0, 1.0), (2, 10.0, 0.9), (64, 10.0, 0.7)])
    args = ["study", "optimizers", "--out", str(out), "--optimizers", "sgd", "--workers", "1,2", "--fovs", "32", "--evaluations", "2"]
    args += ["--eval-examples", "4", "--seeds", "2", "--learning-rates", "sgd=0.1", "--projection", str(proj), *SMALL]
    assert main([*args, "--target-accuracy", "1.0"]) == 0
    assert "comparable level" in capsys.readouterr().out
    report = json.loads((out / "optimizers.json").read_text())
    config, rows = report["config"], report["points"]
    assert [(r["workers"], r["warmup"]) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    assert [r["steps"] for r in rows] == [8, 8, 4, 4] and {r["global_batch"] for r in rows if r["workers"] == 2} == {8}
    assert config["workers"] == [1, 2] and config["target_accuracy"] == 1.0 and config["target_reached_by_any"] is False
    peaks = [max(p["accuracy"] for p in r["curve"]) for r in rows]
    assert config["comparable_accuracy"] == pytest.approx(min(peaks))
    assert config["projection"]["parameters"] == 123 and config["projection"]["same_network"] is False
    for r in rows:
        assert r["seeds"] == 2 and [run["seed"] for run in r["runs"]] == [0, 1]
        assert r["runs"][-1]["curve"][-1]["fovs"] == 32  # the same sample budget at every N
        assert r["fovs_to_target"]["reached"] == 0 and r["f1"]["n"] == 2
        fps = {1: 10.0, 2: 18.0}[r["workers"]]
        reached = [run["fovs_to_comparable"] for run in r["runs"] if run["fovs_to_comparable"] is not None]
        assert r["fovs_to_comparable"]["reached"] == len(reached) >= 1  # the mean curve reaches it, so a run does
        assert r["fovs_to_comparable"]["mean"] == pytest.approx(sum(reached) / len(reached))
        for run in r["runs"]:
            level = config["comparable_accuracy"]
            first = next((p["fovs"] for p in run["curve"] if p["accuracy"] >= level), None)
            assert run["fovs_to_comparable"] == first
            assert run["modelled_wall_s"] == (None if first is None else pytest.approx(first / fps))
        assert r["modelled_wall_s"]["mean"] == pytest.approx(r["fovs_to_comparable"]["mean"] / fps)
    assert (out / "optimizers.png").stat().st_size > 10_000

    # Again at a level the first evaluation reaches (the runs are reused): FOVs and time to the target.
    assert main([*args, "--target-accuracy", "0.01"]) == 0
    assert "FOVs to the target" in capsys.readouterr().out
    report = json.loads((out / "optimizers.json").read_text())
    assert report["config"]["target_reached_by_any"] is True and report["config"]["comparable_accuracy"] is None
    for r in report["points"]:
        first = r["runs"][0]["curve"][0]
        assert r["runs"][0]["fovs_to_target"] == first["fovs"] == r["steps"] // 2 * r["global_batch"]
        assert r["runs"][0]["time_to_0.01_accuracy_s"] == first["time_s"]  # the measured training time, kept
        assert r["fovs_to_target"]["reached"] == r["reached"] == 2 and r["fovs_to_comparable"] is None


OPT = ["study", "optimizers", "--out", "{d}/study", "--optimizers", "sgd", "--fovs", "16", *SMALL]
ROW = {"workers": 1, "efficiency": 1.0, "fovs_per_s": 5.0, "straggler_s": 0.0, "allreduce_s": 0.0}


def _write(name: str, text: str):
    return lambda d: (d / name).write_text(text)


CASES = [
    Case("workers-below-one-step", [*OPT, "--workers", "1,8"], r"--fovs 16 is less than one step of 8 × 4 FOVs at --workers 8"),
    Case("workers-zero", [*OPT, "--workers", "0,2"], r"positive integers", code=2),
    Case("projection-missing", [*OPT, "--projection", "{d}/nope.json"], r"--projection .*nope\.json does not exist"),
    Case(
        "projection-lacks-n",
        [*OPT, "--workers", "1,2", "--projection", "{d}/p.json"],
        r"has no point for 2 workers \(has \[1\]\)",
        setup=_write("p.json", json.dumps({"points": [ROW]})),
    ),
    Case(
        "projection-other-json",
        [*OPT, "--projection", "{d}/lr.json"],
        r"lr\.json is not a projection\.json",
        setup=_write("lr.json", json.dumps({"study": "lr-scaling", "points": [{"workers": 1, "rule": "none"}]})),
    ),
    Case(
        "projection-zero-throughput",
        [*OPT, "--projection", "{d}/p.json"],
        r"is not a projection\.json",
        setup=_write("p.json", json.dumps({"points": [{**ROW, "fovs_per_s": 0}]})),
    ),
    Case(
        "projection-not-json", [*OPT, "--projection", "{d}/p.json"], r"cannot read --projection", setup=_write("p.json", "workers,fovs\n")
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_refusals(case, tmp_path, capsys):
    check_refused(case, tmp_path, capsys)
