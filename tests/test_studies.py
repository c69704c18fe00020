"""The studies end to end at tiny sizes: JSON contracts, figures, and the numbers they derive."""

from __future__ import annotations

import json

import pytest

from neuroflood.cli import main
from neuroflood.studies.figures import efficiency
from neuroflood.studies.lr_scaling import best_per_workers, normalise

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
    out = tmp_path / "lr"
    args = [
        "study",
        "lr-scaling",
        "--out",
        str(out),
        "--workers",
        "1,2",
        "--lr-factors",
        "1,4",
        "--fovs",
        "48",
        "--eval-examples",
        "4",
        "--jobs",
        "1",
        *SMALL,
    ]
    assert main(args) == 0
    report = json.loads((out / "lr_scaling.json").read_text())
    runs = report["runs"]
    assert len(runs) == 2 * 2 * 2  # N × LR × (no warm-up, warm-up)
    n2 = [r for r in runs if r["workers"] == 2]
    assert {r["steps"] for r in n2} == {48 // (2 * 4)} and {r["fovs"] for r in runs} == {48}  # fixed sample budget
    assert {r["learning_rate"] for r in runs} == {1e-3, 4e-3}
    assert {r["warmup_steps"] for r in n2} == {0, 1}
    assert all(r["f1"] is not None and 0 <= r["accuracy"] <= 1 for r in runs)
    assert len(report["best"]) == 4 and report["best"][1]["sqrt_rule"] == pytest.approx(1e-3)
    for m in ("f1", "accuracy"):
        assert (out / f"lr_scaling_{m}.png").stat().st_size > 10_000


def test_batch_size_and_optimizer_studies(tmp_path):
    out = tmp_path / "bs"
    assert (
        main(
            [
                "study",
                "batch-size",
                "--out",
                str(out),
                "--global-batches",
                "4,8",
                "--fovs",
                "64",
                "--evaluations",
                "2",
                "--eval-examples",
                "4",
                *SMALL,
            ]
        )
        == 0
    )
    curves = json.loads((out / "batch_size.json").read_text())["curves"]
    assert [c["global_batch"] for c in curves] == [4, 8] and [c["workers"] for c in curves] == [1, 2]
    for c in curves:
        assert c["points"][-1]["fovs"] == 64 and c["points"][-1]["step"] == 64 // c["global_batch"]
        p = c["points"][-1]
        assert p["modelled_time_s"] == pytest.approx(p["time_s"] / c["workers"])
    assert (out / "batch_size.png").stat().st_size > 10_000

    out = tmp_path / "opt"
    assert (
        main(
            [
                "study",
                "optimizers",
                "--out",
                str(out),
                "--optimizers",
                "sgd,rmsprop",
                "--fovs",
                "32",
                "--evaluations",
                "2",
                "--eval-examples",
                "4",
                "--target-accuracy",
                "0.01",
                "--learning-rates",
                "sgd=0.1",
                *SMALL,
            ]
        )
        == 0
    )
    rows = json.loads((out / "optimizers.json").read_text())["runs"]
    assert [(r["optimizer"], r["warmup"]) for r in rows] == [("sgd", False), ("sgd", True), ("rmsprop", False), ("rmsprop", True)]
    assert rows[0]["learning_rate"] == 0.1 and rows[2]["learning_rate"] == 1e-3
    assert all(r["time_to_0.01_accuracy_s"] == r["curve"][0]["time_s"] for r in rows)  # reached at the first evaluation
    assert (out / "optimizers.png").stat().st_size > 10_000


def test_derived_numbers():
    rows = efficiency([{"workers": 2, "fovs_per_s": 3.0}, {"workers": 1, "fovs_per_s": 2.0}, {"workers": 4, "fovs_per_s": 6.0}])
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 0.75, 0.75])
    runs = [{"workers": 1, "warmup": False, "learning_rate": lr, "f1": f, "accuracy": 0.9} for lr, f in ((1e-3, 0.4), (2e-3, 0.8))]
    normalise(runs, ("f1",))
    assert [r["normalized_f1"] for r in runs] == pytest.approx([0.5, 1.0])
    assert best_per_workers(runs, 1e-3)[0]["best_learning_rate"] == 2e-3


def test_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: usage error
        main(["study", "scaling", "--out", str(tmp_path), "--workers", "0,2"])
    assert e.value.code == 2 and "positive integers" in capsys.readouterr().err
    assert main(["study", "batch-size", "--out", str(tmp_path), "--global-batches", "6", *SMALL]) == 2
    assert "multiples" in capsys.readouterr().err
    assert main(["study", "optimizers", "--out", str(tmp_path), "--optimizers", "lamb", *SMALL]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
