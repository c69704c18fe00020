"""``neuroflood demo``: the whole pipeline on data it makes itself, on two CPU cores.

Stages (each one of neuroflood's own commands, run as a user would run it):

1. ``synth``       an EM-like training volume and a separate test volume with ground truth;
2. ``prepare``     partitions and class-balanced training coordinates;
3. ``train``       a small FFN on 2 workers (synchronous data parallel, DDP on CPU);
4. ``segment``     the test volume, with a margin of image context, with the trained network;
5. ``evaluate``    the segmentation against the test volume's ground truth
   (``OUT/segment/eval/``);
6. ``agglomerate`` the segmentation with the same network and image (``OUT/agglomerate/``);
7. ``evaluate``    the agglomerated result, with a 3-D picture of its largest segments, worst
   merge and worst split: ``OUT/metrics.json``, ``OUT/report.html``, ``OUT/views_3d.png``;
8. ``mesh``        the agglomerated result as neuroglancer precomputed with meshes
   (``OUT/mesh.precomputed``, for ``neuroflood view``).

``OUT/metrics.json`` holds the final (agglomerated) result's metrics, the segmentation's under
``segmentation``, the agglomeration's counts under ``agglomeration`` and the seconds of each
stage under ``seconds``. ``--fib25 PATH`` instead segments a crop of the FIB-25 sample with the
published google/ffn model and evaluates it. Every command is printed before it runs, so that
the demo doubles as a recipe for your own data.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# what the demo reports for the segmentation and for the agglomerated result, side by side
HEADLINE = (
    "adapted_rand_error",
    "vi",
    "vi_split",
    "vi_merge",
    "vi_split_segmented",
    "vi_merge_segmented",
    "rand_precision",
    "rand_recall",
    "segmented_fraction",
    "n_segments",
    "n_gt_objects",
)
VIEWS_3D_SEGMENTS = 6  # evaluate --render-3d: the largest segments drawn in views_3d.png


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: ``full`` for ``make demo``, ``tiny`` for the CI test."""

    train_shape: tuple[int, int, int]
    test_shape: tuple[int, int, int]
    model: str
    train_seconds: float
    max_steps: int
    batch_size: int
    min_segment_size: int
    synth_args: tuple[str, ...] = ()  # e.g. easier data for the seconds-long CI run
    lr_decay: tuple[float, int] | None = None  # staircase decay: (factor, steps per stage)
    warmup_steps: int = 0  # linear learning-rate ramp from 0
    test_context: int = 0  # voxels of image around the evaluated test volume, on every side


SIZES = {
    # Chosen so that a fresh clone's `make demo` (install included) takes well under 10
    # minutes on 2 CPU cores and segments the test volume well (docs/benchmarks.md, "The
    # demo"): a FOV-11 network (many more FOVs per second than FOV-17 on CPU), data a little
    # easier than `synth`'s default (fewer, larger neurites, less noise), a 1,000-step warm-up
    # and the learning rate halved every 3,000 steps so that training does not end leaky. The
    # test volume is segmented with 8 voxels of image context on every side and evaluated
    # inside it, as CREMI pads its test volumes: PolicyPeaks seeds no cell whose widest part
    # lies outside the image, so without context the cells cut by the faces stay unsegmented.
    # Training had 390 s until the demo also agglomerated, evaluated the result in 3-D and
    # meshed it. Those stages cost 25-40 s on 2 cores (seeds 0-2: 170-286 pairs, 8,900-16,200
    # FOV evaluations), so training has 320 s. 370 s did not help: seed 1 scored adapted Rand
    # 0.160 with either, and the wall time rose to 570-600 s (docs/benchmarks.md, "The demo").
    "full": DemoSize(
        (96, 128, 128),
        (64, 96, 96),
        "depth=4,features=16,fov=11,11,11,deltas=3,3,3",
        320.0,
        100000,
        4,
        300,
        ("--density", "2", "--noise", "5"),
        lr_decay=(0.5, 3000),
        warmup_steps=1000,
        test_context=8,
    ),
    # Steps, not seconds, bound the tiny run, so that its result does not depend on the load.
    "tiny": DemoSize(
        (48, 64, 64),
        (40, 64, 64),
        "depth=3,features=16,fov=11,11,11,deltas=3,3,3",
        600.0,
        2000,
        4,
        100,
        ("--density", "2", "--noise", "5"),
        test_context=4,
    ),
}


def _run(stage: str, argv: list[str], log: Callable[[str], None]) -> float:
    """Run one neuroflood command in this process; return its wall time."""
    from .cli import main

    log(f"\n== {stage}: neuroflood {' '.join(shlex.quote(a) for a in argv)}")
    t0 = time.time()
    code = main(argv)
    if code != 0:
        raise ConfigError(f"demo stage {stage!r} failed (exit {code}); see the messages above")
    return time.time() - t0


@contextmanager
def demo_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Claim the demo's output directory while inside; a failed demo leaves nothing there.

    ``out`` must be absent or empty, or — with ``overwrite`` — an earlier demo's output
    (marked so). On any failure or interruption, what the demo made is removed, so that the
    same command can simply be run again.
    """
    from .outputs import exclusive, made_by, write_marker

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory (absent or empty)")
    with exclusive(out, f"--out {out}"):
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise ConfigError(f"{out} exists and is not empty; choose another --out, or pass --overwrite to replace an earlier demo")
            if made_by(out) != "demo":
                raise ConfigError(f"{out} was not written by neuroflood demo, so --overwrite will not replace it; choose another --out")
            shutil.rmtree(out)
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            write_marker(out, "demo")
            yield out
        except BaseException:
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:  # it was empty: everything in it is the demo's
                for child in out.iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            raise


def run_demo(
    out: str | os.PathLike,
    size: str = "full",
    seed: int = 0,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Run the synthetic demo into ``out``; return the metrics (with ``seconds`` per stage)."""
    if size not in SIZES:
        raise ConfigError(f"unknown demo size {size!r}; use one of {', '.join(SIZES)}")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    with demo_directory(out, overwrite) as out:
        return _run_demo(out, SIZES[size], size, seed, workers, log or (lambda s: print(s, file=sys.stderr, flush=True)))


def _run_demo(out: Path, s: DemoSize, size: str, seed: int, workers: int, log: Callable[[str], None]) -> dict:
    data, prep, run, seg_dir = out / "data", out / "prepare", out / "train", out / "segment"
    data.mkdir()
    seg_dir.mkdir()
    train_h5, test_h5 = data / "train.h5", data / "test.h5"
    from .config import ModelConfig

    model = ModelConfig.parse_spec(s.model)
    margin = ",".join(str(f // 2 + d) for f, d in zip(model.fov_size, model.deltas))
    seconds: dict[str, float] = {}
    t_start = time.time()
    seconds["synth"] = _run(
        "synth", ["synth", "--shape", ",".join(map(str, s.train_shape)), "--seed", str(seed), "--out", str(train_h5), *s.synth_args], log
    )
    c = s.test_context
    test_with_context = [n + 2 * c for n in s.test_shape]
    evaluated = f"{c},{c},{c}:" + ",".join(str(c + n) for n in s.test_shape)
    seconds["synth"] += _run(
        "synth",
        ["synth", "--shape", ",".join(map(str, test_with_context)), "--seed", str(seed + 1000), "--out", str(test_h5), *s.synth_args],
        log,
    )
    seconds["prepare"] = _run(
        "prepare",
        [
            "prepare",
            "--labels",
            f"train={train_h5}:labels",
            "--image",
            f"train={train_h5}:image",
            "--out",
            str(prep),
            "--lom-radius",
            margin,
            "--margin",
            margin,
            "--min-size",
            "100",
            "--seed",
            str(seed),
            "--allow-missing-classes",
        ],
        log,
    )
    seconds["train"] = _run(
        "train",
        [
            "train",
            "--nproc-per-node",
            str(workers),
            "--image",
            f"train={train_h5}:image",
            "--labels",
            f"train={train_h5}:labels",
            "--coords",
            str(prep / "coordinates.nfc"),
            "--run-dir",
            str(run),
            "--model",
            s.model,
            "--optimizer",
            "adam",
            "--learning-rate",
            "0.001",
            "--batch-size",
            str(s.batch_size),
            "--max-steps",
            str(s.max_steps),
            "--max-train-seconds",
            str(s.train_seconds),
            "--seed",
            str(seed),
            "--summary-every-secs",
            "15",
            "--checkpoint-every-secs",
            "120",
            *(["--lr-decay-factor", str(s.lr_decay[0]), "--decay-steps", str(s.lr_decay[1])] if s.lr_decay else []),
            *(["--warmup-steps", str(s.warmup_steps)] if s.warmup_steps else []),
        ],
        log,
    )
    from .train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run)
    if latest is None:
        raise ConfigError(f"training wrote no checkpoint into {run}; see the messages above")
    seg = f"{seg_dir}/seg.h5:segmentation"
    request = ["--set", f"options.min_segment_size={s.min_segment_size}"]  # segment's and agglomerate's
    seconds["segment"] = _run(
        "segment",
        [
            "segment",
            "--model",
            str(latest / "model"),
            "--image",
            f"{test_h5}:image",
            "--out",
            seg,
            "--summary",
            str(seg_dir / "summary.json"),
            *request,
        ],
        log,
    )
    seconds["evaluate"] = _run(
        "evaluate",
        ["evaluate", seg, f"{test_h5}:labels", "--image", f"{test_h5}:image", "--bbox", evaluated, "--out", str(seg_dir / "eval")],
        log,
    )
    agglomeration = _agglomerate_and_mesh(out, seg, str(latest / "model"), test_h5, evaluated, request, s, seconds, log)
    seconds["total"] = time.time() - t_start
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["segmentation"] = _headline(json.loads((seg_dir / "eval" / "metrics.json").read_text()))
    metrics["agglomeration"] = agglomeration
    metrics["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    metrics["demo"] = {"size": size, "seed": seed, "workers": workers, "model": s.model, "test_context": c, "result": "agglomerated"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _agglomerate_and_mesh(
    out: Path,
    seg: str,
    model: str,
    test_h5: Path,
    evaluated: str,
    request: list[str],
    s: DemoSize,
    seconds: dict[str, float],
    log: Callable[[str], None],
) -> dict:
    """Stages 6–8: agglomerate ``seg``, evaluate the result with its 3-D picture, mesh it.

    The agglomeration uses the segmentation's inference settings (``request``) and its minimum
    segment size, so that every segment ``segment`` kept is a candidate; the other options
    are the defaults, which follow the demo network's FOV (radius 11: 23³ subvolumes). Returns
    the agglomeration's counts for metrics.json.
    """
    agg_dir = out / "agglomerate"
    agg_dir.mkdir()
    agg = f"{agg_dir}/agg.zarr/seg"
    seconds["agglomerate"] = _run(
        "agglomerate",
        [
            "agglomerate",
            seg,
            "--model",
            model,
            "--image",
            f"{test_h5}:image",
            "--out",
            agg,
            "--summary",
            str(agg_dir / "summary.json"),
            "--min-segment-size",
            str(s.min_segment_size),
            *request,
        ],
        log,
    )
    seconds["evaluate_agglomerated"] = _run(
        "evaluate",
        [
            "evaluate",
            agg,
            f"{test_h5}:labels",
            "--image",
            f"{test_h5}:image",
            "--bbox",
            evaluated,
            "--out",
            str(out),
            "--render-3d",
            str(VIEWS_3D_SEGMENTS),
        ],
        log,
    )
    seconds["mesh"] = _run("mesh", ["mesh", agg, "--out", str(out / "mesh.precomputed")], log)
    summary = json.loads((agg_dir / "summary.json").read_text())
    keep = ("pairs", "merges", "fov_evaluations", "fov_evaluations_per_pair", "segments", "neurons", "statuses")
    return {k: summary[k] for k in keep if k in summary} | {"out": agg}


def _headline(metrics: dict) -> dict:
    """The numbers of an evaluation that the demo reports side by side."""
    return {k: metrics[k] for k in HEADLINE if k in metrics}


def run_fib25_demo(
    out: str | os.PathLike,
    shared: str | os.PathLike,
    bbox: str = "0,0,0:100,100,100",
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Segment a FIB-25 crop with the published model and evaluate it against ground truth."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    shared = Path(shared)
    h5 = shared / "data" / "fib25" / "training_sample2.h5"
    ckpt = shared / "models" / "fib25" / "model.ckpt-27465036"
    if not h5.exists() or not Path(f"{ckpt}.index").exists():
        raise ConfigError(f"{shared} does not hold data/fib25/training_sample2.h5 and models/fib25/; give the shared folder")
    with demo_directory(out, overwrite) as out:
        return _run_fib25_demo(out, h5, ckpt, bbox, log)


def _run_fib25_demo(out: Path, h5: Path, ckpt: Path, bbox: str, log: Callable[[str], None]) -> dict:
    seconds: dict[str, float] = {}
    t_start = time.time()
    seg = f"{out}/segment/seg.h5:segmentation"
    (out / "segment").mkdir()
    seconds["segment"] = _run(
        "segment",
        [
            "segment",
            "--model",
            str(ckpt),
            "--image",
            f"{h5}:image",
            "--bbox",
            bbox,
            "--out",
            seg,
            "--summary",
            str(out / "segment" / "summary.json"),
        ],
        log,
    )
    seconds["evaluate"] = _run(
        "evaluate", ["evaluate", seg, f"{h5}:labels", "--image", f"{h5}:image", "--bbox", bbox, "--out", str(out)], log
    )
    seconds["total"] = time.time() - t_start
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    metrics["demo"] = {"fib25": str(h5), "bbox": bbox, "model": str(ckpt)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary_text(metrics: dict, out: str | os.PathLike) -> str:
    """What the demo prints at the end: the metrics (before and after agglomeration), the
    agglomeration's counts, the seconds per stage and where to look."""
    out = Path(out)
    lines = ["", "neuroflood demo finished", ""]
    before = metrics.get("segmentation")
    if before is not None:
        lines.append(f"  {'':20s} {'segmentation':>13s} {'agglomerated':>13s}")
    for key in HEADLINE:
        if key in metrics:
            cells = (metrics[key],) if before is None else (before.get(key, ""), metrics[key])
            lines.append(f"  {key:20s} " + " ".join(f"{v:13.4f}" if isinstance(v, float) else f"{v:>13}" for v in cells))
    agg = metrics.get("agglomeration")
    if agg:
        lines.append(
            f"  agglomeration:       {agg['pairs']} pairs, {agg['merges']} merges, "
            f"{agg['segments']} segments -> {agg['neurons']} neurons, {agg['fov_evaluations']:,} FOV evaluations"
        )
    lines.append("  seconds per stage:   " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["seconds"].items()))
    lines.append(f"  report:              {out / 'report.html'}")
    if agg:
        lines.append(f"  segmentation report: {out / 'segment' / 'eval' / 'report.html'}")
        lines.append(f"  3-D picture:         {out / 'views_3d.png'}")
        image = f"{out / 'data' / 'test.h5'}:image"
        lines.append(f"  look in 3-D:         neuroflood view {shlex.quote(image)} {shlex.quote(str(out / 'mesh.precomputed'))}")
    return "\n".join(lines)
