"""`neuroflood report RUN_DIR`: a training run's metrics log, config and samples become a report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuroflood.cli import main
from neuroflood.errors import DataError
from neuroflood.evaluate.training_report import read_metrics_log, write_training_report


def make_run(run: Path, steps: int = 300, samples: bool = True, truncated_tail: bool = False, lr_key: str = "lr") -> Path:
    """A run directory like the trainer writes: metrics.jsonl, config.json, samples/*.npz."""
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for step in range(0, steps, 2):
        lr = 1e-3 * min(1.0, step / 50)  # linear warm-up
        loss = 0.7 * np.exp(-step / 120) + 0.1 + 0.03 * rng.random()
        f1 = 1 - loss
        rec = dict(
            step=step,
            time_s=0.5 * step,
            split="train",
            fovs_per_s=40 + rng.random(),
            loss=loss,
            accuracy=1 - loss / 3,
            precision=f1 + 0.02,
            recall=f1 - 0.02,
            f1=f1,
            **{lr_key: lr},
        )
        lines.append(json.dumps(rec))
        if step % 50 == 0:
            lines.append(json.dumps({**rec, "split": "eval", "loss": loss + 0.05, "f1": f1 - 0.05}))
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"step": 999, "time_s": 1'  # the trainer is writing this line
    (run / "metrics.jsonl").write_text(text)
    (run / "config.json").write_text(json.dumps({"model": {"depth": 4, "fov_size": [17, 17, 17]}, "lr": 1e-3}))
    if samples:
        (run / "samples").mkdir(exist_ok=True)
        zz, yy, xx = np.mgrid[:17, :17, :17]
        label = (((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 6) ** 2) < 30).astype(np.float32)
        image = (120 + 60 * label + rng.normal(0, 10, label.shape)).astype(np.uint8)
        for step in (100, 200):
            logits = 4 * (label - 0.5) + rng.normal(0, 1.5, label.shape)
            np.savez(
                run / "samples" / f"step{step:06d}.npz",
                image=image[None, ..., None],
                labels=label[None, ..., None],
                logits=logits[None, ..., None],
                step=step,
            )
    return run


def _png_not_blank(data: bytes) -> bool:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    return pixels.std() > 5


def test_report_of_a_run(tmp_path, capsys):
    run = make_run(tmp_path / "run", truncated_tail=True)
    assert main(["report", str(run)]) == 0
    out = run / "report"
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "report.md", "summary.json", "curves_steps.png", "curves_time.png", "lr_schedule.png", "samples.png"} <= names
    for png in out.glob("*.png"):
        assert _png_not_blank(png.read_bytes()), png.name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="http' not in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last"]["train"]["step"] == 298 and summary["last"]["eval"]["step"] == 250
    assert "model.depth" in html  # the config table
    assert "records" in capsys.readouterr().out


def test_run_without_samples_config_or_lr(tmp_path):
    run = make_run(tmp_path / "run", samples=False)
    (run / "config.json").unlink()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "lr"}) + "\n" for r in lines))
    write_training_report(run, tmp_path / "rep")
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    assert "samples.png" not in names and "lr_schedule.png" not in names and "curves_steps.png" in names
    assert "No samples in" in (tmp_path / "rep" / "report.md").read_text()


def test_a_bad_sample_is_skipped_not_fatal(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    np.savez(run / "samples" / "step999999.npz", something=np.zeros(3))
    write_training_report(run)
    assert "skipped sample step999999.npz" in capsys.readouterr().err
    assert (run / "report" / "samples.png").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "no records yet"),
        ('{"step": 1}\nnot json\n{"step": 2}\n', "line 2 is not JSON"),
        ('{"loss": 1}\n', "has no 'step'"),
    ],
)
def test_bad_metrics_logs(tmp_path, content, message):
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_metrics_log(path)


def test_cli_error_for_missing_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "neuroflood: error: run directory" in capsys.readouterr().err


def test_learning_rate_key_and_null_values(tmp_path):
    """`neuroflood train` writes ``learning_rate`` and ``null`` for undefined metrics."""
    run = make_run(tmp_path / "run", samples=False, lr_key="learning_rate")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "step": 300,
                    "time_s": 150.0,
                    "split": "train",
                    "fovs_per_s": 40.0,
                    "loss": 0.2,
                    "accuracy": None,
                    "precision": None,
                    "recall": None,
                    "f1": None,
                    "learning_rate": 1e-3,
                }
            )
            + "\n"
        )
    summary = write_training_report(run)
    assert (run / "report" / "lr_schedule.png").exists()
    assert summary["last"]["train"]["learning_rate"] == 1e-3 and summary["last"]["train"]["f1"] is None
