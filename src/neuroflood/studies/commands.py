"""CLI: ``neuroflood study scaling|lr-scaling|batch-size|optimizers|project`` (Dong et al. 2019's studies).

Each study writes ``OUT/<study>.json`` and its figures (PNG) to ``--out``. The defaults run
on a 2-core machine on synthetic data; the options scale the same commands to a cluster
(more workers, real ranks through ``--mode real --launcher 'srun --ntasks {workers}'``,
bigger budgets). See docs/reproducing-the-paper.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from ..errors import ConfigError
from ..outputs import check_files, record_files


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers, e.g. 1,2,4") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers, e.g. 1,2,4")
    return vals


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated numbers, e.g. 0.5,1,2") from None
    if not vals or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive numbers, e.g. 0.5,1,2")
    return vals


def _factors(text: str) -> list[float] | str:
    """``--lr-factors``: positive numbers, ``auto`` (a grid around the rules at each N) or ``none`` (no grid)."""
    word = text.strip().lower()
    return [] if word == "none" else "auto" if word == "auto" else _floats(text)


def _rules(text: str) -> list[str]:
    """``--rules``: some of none, linear, sqrt, or ``off`` for none of them (the LR grid only)."""
    if text.strip().lower() == "off":
        return []
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in ("none", "linear", "sqrt")]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"{text!r} must list LR rules of none, linear, sqrt (or be off)")
    return vals


def _lrs(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"item {item!r} must be NAME=LR, e.g. adam=1e-3,sgd=0.05") from None
    return out


def _common(p: argparse.ArgumentParser, jobs: int, threads: int, real_only: bool = False) -> None:
    p.add_argument("--out", required=True, help="output directory (JSON, PNG, runs/, data/)")
    p.add_argument("--model", help="network spec, as neuroflood train --model")
    if not real_only:
        p.add_argument(
            "--mode",
            choices=["emulated", "real"],
            default="emulated",
            help="emulated: N workers in one process (gradient accumulation); real: N ranks via --launcher",
        )
        p.add_argument("--jobs", type=int, default=jobs, help="emulated runs at a time (separate processes)")
        p.add_argument(
            "--seeds",
            type=int,
            default=1,
            help="training seeds per configuration, --seed S to S+K-1 (initial weights and example order; data and "
            "held-out examples stay); each point reports the mean and 95%% CI over them. The default, 1, gives no CI; "
            "use >= 3 to compare points",
        )
    p.add_argument(
        "--launcher",
        help="command template starting {workers} ranks of `neuroflood train` (e.g. 'srun --ntasks {workers} "
        "--cpus-per-task {threads}'); default: neuroflood train --nproc-per-node N on this machine",
    )
    p.add_argument("--threads", type=int, default=threads, help="torch CPU threads per run (emulated) or per rank (real)")
    p.add_argument("--data-size", type=int, help="edge of the synthetic training and held-out volumes (voxels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (volumes, coordinates) and the first training seed")


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "study",
        "the distributed-training studies of Dong et al. 2019 (scaling, LR scaling, batch size, optimizers)",
        __doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY", required=True)

    s = add_command(
        studies,
        "scaling",
        "training throughput (FOVs/s) against real workers, with ideal line and efficiency",
        "Train the FIB-25 network (by default) with 1, 2, ... real workers for a few steps each and measure "
        "the global FOVs/s after warm-up steps. Writes OUT/scaling.json (a list of {workers, fovs_per_s, "
        "efficiency, config, ...}) and OUT/scaling.png (log-log, ideal line, the paper's curve).",
    )
    _common(s, 1, 1, real_only=True)
    s.add_argument("--workers", type=_ints, default="1,2", help="real worker counts, comma-separated")
    s.add_argument("--batch-size", type=int, default=4, help="FOVs per worker per step")
    s.add_argument("--steps", type=int, default=5, help="training steps per worker count")
    s.add_argument("--skip-steps", type=int, default=1, help="first steps not measured (warm-up)")
    s.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    s.add_argument("--precision", choices=["float32", "bfloat16"], default="float32", help="network precision")
    s.set_defaults(func=_scaling)

    s = add_command(
        studies,
        "lr-scaling",
        "best learning rate against workers at a fixed sample budget, vs linear and sqrt rules",
        "For each worker count N, with and without warm-up, train on the same number of FOVs at the learning rate "
        "of each rule (none = base, linear = base*N, sqrt = base*sqrt(N)) and of each LR of the grid (base x "
        "factors, the paper's form, normalised by the best at each N), --seeds times each. Each run is scored by "
        "its held-out accuracy, F1 and loss averaged over its last 20% of evaluations; each point by their mean "
        "and 95% CI over seeds. Writes OUT/lr_scaling.json (points with workers, rule, warmup, learning_rate, "
        "seeds, accuracy/f1/loss {mean, ci95} and every run) and OUT/lr_scaling_{f1,accuracy,loss}.png.",
    )
    _common(s, 2, 1)
    s.add_argument("--workers", type=_ints, default="1,2,4,8", help="worker counts N")
    s.add_argument(
        "--lr-factors",
        type=_factors,
        default="0.5,1,2,4,8",
        help="LR grid as multiples of --base-lr (auto: powers of 2 from 0.5 to 2N at each N, around the rules "
        "none = 1, sqrt = sqrt(N) and linear = N; none: no grid)",
    )
    s.add_argument("--rules", type=_rules, default="none,linear,sqrt", help="LR rules to compare (off: the grid only)")
    s.add_argument("--base-lr", type=float, default=1e-3, help="reference learning rate of one worker")
    s.add_argument("--warmup-fraction", type=float, default=0.1, help="warm-up length as a fraction of each run's steps")
    s.add_argument("--fovs", type=int, default=2400, help="FOVs per run (fixed sample budget)")
    s.add_argument("--batch-size", type=int, default=4, help="FOVs per worker per step")
    s.add_argument("--optimizer", default="adam", help="optimizer of every run")
    s.add_argument("--evaluations", type=int, default=10, help="held-out evaluations per run (the last 20%% are averaged)")
    s.add_argument("--eval-examples", type=int, help="held-out examples per evaluation (default 512)")
    s.set_defaults(func=_lr_scaling)

    s = add_command(
        studies,
        "batch-size",
        "held-out F1 against wall time and FOVs processed for several global batch sizes",
        "Train each global batch size (per-worker batch x workers) on the same number of FOVs, evaluating "
        "held-out F1 at regular intervals. Writes OUT/batch_size.json and OUT/batch_size.png.",
    )
    _common(s, 1, 1)
    s.add_argument("--global-batches", type=_ints, default="4,8,16,32", help="global batch sizes (multiples of --batch-size)")
    s.add_argument("--batch-size", type=int, default=4, help="FOVs per worker per step")
    s.add_argument("--fovs", type=int, default=4800, help="FOVs per run")
    s.add_argument("--evaluations", type=int, default=8, help="held-out evaluations per run (the last 20%% are averaged)")
    s.add_argument("--base-lr", type=float, default=1e-3, help="learning rate of one worker")
    s.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default="sqrt", help="learning-rate rule for N workers")
    s.add_argument("--warmup-fraction", type=float, default=0.1, help="warm-up length as a fraction of each run's steps (0: none)")
    s.add_argument("--optimizer", default="adam", help="optimizer of every run")
    s.add_argument("--eval-examples", type=int, help="held-out examples per evaluation (default 512)")
    s.set_defaults(func=_batch_size)

    s = add_command(
        studies,
        "optimizers",
        "SGD, momentum, Adam, Adagrad, RMSProp with and without warm-up at N workers: FOVs and modelled time to accuracy",
        "Train each optimizer (own base learning rate) with and without a linear warm-up at each worker count N "
        "on the same number of FOVs (--fovs; fovs // (N x batch) steps), --seeds times each, evaluating on "
        "held-out coordinates at regular intervals. Per run: the FOVs trained at its first evaluation with "
        "held-out voxel accuracy >= --target-accuracy; if no configuration's mean curve reaches the target, also "
        "at the comparable level (the highest accuracy every configuration's mean curve reaches). Per point: "
        "mean and 95% CI over the runs that reached it, how many did, and the final-window accuracy, F1 and "
        "loss. With --projection, modelled wall time = FOVs / fovs_per_s(N) of `neuroflood study project` "
        "(N x per-worker FOVs/s x projected efficiency). Writes OUT/optimizers.json and OUT/optimizers.png.",
    )
    _common(s, 1, 1)
    s.add_argument("--optimizers", default="sgd,momentum,adam,adagrad,rmsprop", help="optimizers, comma-separated")
    s.add_argument(
        "--learning-rates",
        type=_lrs,
        help="per-optimizer learning rates, e.g. adam=1e-3,sgd=0.05 "
        "(default: sgd=0.05, momentum=0.005, adam=0.001, adagrad=0.05, rmsprop=0.001)",
    )
    s.add_argument("--workers", type=_ints, default="1", help="worker counts N, comma-separated, e.g. 1,16,64 (each a point)")
    s.add_argument("--batch-size", type=int, default=4, help="FOVs per worker per step")
    s.add_argument("--fovs", type=int, default=3200, help="FOVs per run at every N (fixed sample budget)")
    s.add_argument("--evaluations", type=int, default=8, help="held-out evaluations per run (the last 20%% are averaged)")
    s.add_argument("--warmup-fraction", type=float, default=0.1, help="warm-up length as a fraction of the steps")
    s.add_argument("--lr-scaling", choices=["none", "linear", "sqrt"], default="sqrt", help="learning-rate rule for N workers")
    s.add_argument(
        "--target-accuracy",
        type=float,
        default=0.95,
        help="held-out voxel accuracy to count FOVs (and time) to; if no point's mean curve reaches it, the "
        "comparable level is reported too",
    )
    s.add_argument(
        "--projection",
        metavar="PATH",
        help="projection.json of `neuroflood study project` (or its directory), with a point for every N: "
        "adds modelled wall time to the target or comparable level (default: none)",
    )
    s.add_argument("--eval-examples", type=int, help="held-out examples per evaluation (default 512)")
    s.set_defaults(func=_optimizers)

    s = add_command(
        studies,
        "project",
        "project a measured run's efficiency to thousands of workers (stragglers + all-reduce model)",
        "Read the per-rank step times of a training run (RUN_DIR/step_times.jsonl) and its config.json (batch per "
        "rank, the network's gradient bytes); model a synchronous step at N ranks as the expected maximum of N "
        "measured work times (bootstrap) plus an alpha-beta all-reduce. Writes OUT/projection.json and "
        "OUT/projection.png (efficiency against workers, with the paper's measured efficiencies) and prints the "
        "per-rank work CV a cluster must hold to keep 85% at 1024 workers.",
    )
    s.add_argument("--timings", required=True, metavar="RUN_DIR", help="run directory of `neuroflood train` (step_times.jsonl)")
    s.add_argument("--workers", type=_ints, default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096", help="worker counts")
    s.add_argument("--out", required=True, help="output directory (projection.json, projection.png)")
    s.add_argument("--interconnect", default="aries", help="network preset: aries, slingshot11, ib-hdr, ib-ndr, ethernet-10g")
    s.add_argument("--latency-us", type=float, help="override the preset's latency (microseconds)")
    s.add_argument("--bandwidth-gbps", type=float, help="override the preset's bandwidth (GB/s per rank)")
    s.add_argument("--algorithm", choices=["ring", "tree", "best"], default="best", help="all-reduce algorithm of the model")
    s.add_argument("--skip-steps", type=int, default=1, help="first steps of the run left out (warm-up)")
    s.add_argument(
        "--overhead-ms",
        default="0",
        help="fixed cost per synchronous step beyond stragglers and the all-reduce (other collectives, contention), "
        "from 2 ranks on: milliseconds, or 'measured' (what the --timings run waited beyond them)",
    )
    s.set_defaults(func=_project)


def _kw(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The given options that were set (None = the study's default)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _training_kw(args: argparse.Namespace) -> dict[str, Any]:
    """The options every training study (lr-scaling, batch-size, optimizers) takes alike."""
    from .common import StudyRuns

    runs = StudyRuns(
        seeds=args.seeds,
        mode=args.mode,
        launcher=args.launcher,
        threads=args.threads,
        jobs=args.jobs,
        seed=args.seed,
        **_kw(args, "model", "data_size", "eval_examples"),
    )
    return {"runs": runs}


def _check(args: argparse.Namespace) -> None:
    """Refuse bad options before any data is made or run started (a study runs for hours)."""
    import math

    from ..evaluate.report import check_output_dir

    def at_least(name: str, low: int) -> None:
        value = getattr(args, name.lstrip("-").replace("-", "_"), None)
        if value is not None and value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")

    def fraction(name: str, value: float | None, low_open: bool, high_open: bool) -> None:
        if value is None:
            return
        ok = math.isfinite(value) and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
        if not ok:
            bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise ConfigError(f"{name} {value} must be a fraction in {bounds}")

    for name, low in (
        ("--threads", 1),
        ("--jobs", 1),
        ("--batch-size", 1),
        ("--evaluations", 1),
        ("--eval-examples", 1),
        ("--steps", 1),
        ("--skip-steps", 0),
        ("--data-size", 1),
        ("--seed", 0),
        ("--seeds", 1),
        ("--fovs", 1),
    ):
        at_least(name, low)
    fraction("--warmup-fraction", getattr(args, "warmup_fraction", None), low_open=False, high_open=True)
    fraction("--target-accuracy", getattr(args, "target_accuracy", None), low_open=True, high_open=False)
    base_lr = getattr(args, "base_lr", None)
    if base_lr is not None and not (math.isfinite(base_lr) and base_lr > 0):
        raise ConfigError(f"--base-lr {base_lr} must be a positive learning rate, e.g. 1e-3")
    from .optimizers import OPTIMIZERS

    if getattr(args, "optimizer", None) is not None and args.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown --optimizer {args.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    for name, lr in (getattr(args, "learning_rates", None) or {}).items():
        if name not in OPTIMIZERS:
            raise ConfigError(f"--learning-rates names unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"--learning-rates {name}={lr} must be a positive learning rate")
    check_output_dir(args.out)


def _start(args: argparse.Namespace) -> float:
    """Check the options and set the threads; returns the start time (for :func:`_done`)."""
    started = time.time()
    _check(args)
    import torch

    torch.set_num_threads(args.threads)  # once, at process start (emulated runs in this process)
    return started


def _done(paths: str, since: float) -> int:
    """Report the files of ``paths`` (comma-separated) that this study wrote (modified since
    ``since``) and record them as the study's own. A file an earlier study left on the same
    OUT and this one did not write (e.g. the loss figure after a ``--rules off`` run) is not."""
    from pathlib import Path

    def fresh(p: Path) -> bool:
        return p.exists() and p.stat().st_mtime >= since - 1.0  # coarse file-system clocks

    written = [Path(p.strip()) for p in paths.split(",") if p.strip() and fresh(Path(p.strip()))]
    for folder in {p.parent for p in written}:
        record_files(folder, [p.name for p in written if p.parent == folder], "study")
    print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def _scaling(args: argparse.Namespace) -> int:
    started = _start(args)
    check_files(args.out, ("scaling.json", "scaling.png"), "study")
    from .scaling import run_scaling

    rows = run_scaling(
        args.out,
        workers=args.workers,
        batch_size=args.batch_size,
        steps=args.steps,
        skip_steps=args.skip_steps,
        threads=args.threads,
        launcher=args.launcher,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        **_kw(args, "model", "data_size"),
    )
    for r in rows:
        print(
            f"workers {r['workers']}: {r['fovs_per_s']:.3f} FOVs/s, efficiency {100 * r['efficiency']:.0f}%, "
            f"{r['seconds_per_step']:.2f} s/step"
        )
    return _done(f"{args.out}/scaling.json, {args.out}/scaling.png", started)


# The training studies: their own options (read from the command line by name), the files they
# write, and the options every one of them takes alike (_training_kw).
TRAINING_STUDIES = {
    "lr_scaling": (
        ("workers", "lr_factors", "rules", "evaluations", "base_lr", "warmup_fraction", "fovs", "batch_size", "optimizer"),
        ("lr_scaling.json", "lr_scaling_f1.png", "lr_scaling_accuracy.png", "lr_scaling_loss.png"),
    ),
    "batch_size": (
        ("global_batches", "batch_size", "fovs", "evaluations", "base_lr", "lr_scaling", "warmup_fraction", "optimizer"),
        ("batch_size.json", "batch_size.png"),
    ),
    "optimizers": (
        (
            "learning_rates",
            "workers",
            "batch_size",
            "fovs",
            "evaluations",
            "warmup_fraction",
            "lr_scaling",
            "target_accuracy",
            "projection",
        ),
        ("optimizers.json", "optimizers.png"),
    ),
}


def _training_study(name: str, args: argparse.Namespace, **extra: Any) -> int:
    """Run the training study ``name`` (module ``studies/NAME.py``, function ``run_NAME``)."""
    import importlib

    options, files = TRAINING_STUDIES[name]
    started = _start(args)
    check_files(args.out, files, "study")
    run = getattr(importlib.import_module(f".{name}", __package__), f"run_{name}")
    run(args.out, **{k: getattr(args, k) for k in options}, **extra, **_training_kw(args))
    return _done(", ".join(f"{args.out}/{f}" for f in files), started)


def _lr_scaling(args: argparse.Namespace) -> int:
    return _training_study("lr_scaling", args)


def _batch_size(args: argparse.Namespace) -> int:
    return _training_study("batch_size", args)


def _optimizers(args: argparse.Namespace) -> int:
    options, files = TRAINING_STUDIES["optimizers"]
    started = _start(args)
    check_files(args.out, files, "study")
    from .optimizers import run_optimizers, summary_line

    names = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    report = run_optimizers(args.out, optimizers=names, **{k: getattr(args, k) for k in options}, **_training_kw(args))
    print(summary_line(report["config"]))  # which accuracy level the FOVs are counted to
    return _done(", ".join(f"{args.out}/{f}" for f in files), started)


def _project(args: argparse.Namespace) -> int:
    from ..evaluate.report import check_output_dir

    started = time.time()
    if args.skip_steps < 0:
        raise ConfigError(f"--skip-steps must be >= 0, got {args.skip_steps}")
    overhead = None  # measured in the run
    if args.overhead_ms != "measured":
        try:
            overhead = float(args.overhead_ms) / 1e3
        except ValueError:
            overhead = math.nan
        if not (math.isfinite(overhead) and overhead >= 0):
            raise ConfigError(f"--overhead-ms must be a time >= 0 in ms or 'measured', got {args.overhead_ms!r}")
    check_output_dir(args.out)
    from .project import load_run, run_projection, summary_lines
    from .projection import interconnect

    net = interconnect(args.interconnect, args.latency_us, args.bandwidth_gbps)
    run = load_run(args.timings, args.skip_steps)  # bad input is refused before OUT is touched
    check_files(args.out, ("projection.json", "projection.png"), "study")
    result = run_projection(run, args.workers, args.out, net, args.algorithm, overhead_s=overhead)
    print("\n".join(summary_lines(result)))
    return _done(f"{args.out}/projection.json, {args.out}/projection.png", started)
