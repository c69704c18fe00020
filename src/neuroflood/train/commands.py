"""CLI: ``neuroflood train``.

Options resolve in this order (later wins): TrainConfig defaults, the run directory's
``config.json`` when it is resumed, ``--config FILE``, then the command line. The resolved
config is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import ModelConfig, load_config_file, parse_ints
from ..errors import ConfigError
from .config import TrainConfig

_NAMED = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")

# (flag, config key, argparse type); help and default come from TrainConfig's fields.
_SCALARS: list[tuple[str, str, Callable[[str], Any]]] = [
    ("--coords", "coords", str),
    ("--eval-coords", "eval_coords", str),
    ("--run-dir", "run_dir", str),
    ("--init-from", "init_from", str),
    ("--seed", "seed", int),
    ("--batch-size", "batch_size", int),
    ("--max-steps", "max_steps", int),
    ("--max-train-seconds", "max_train_seconds", float),
    ("--optimizer", "optimizer", str),
    ("--learning-rate", "learning_rate", float),
    ("--momentum", "momentum", float),
    ("--adam-beta1", "adam_beta1", float),
    ("--adam-beta2", "adam_beta2", float),
    ("--epsilon", "epsilon", float),
    ("--rmsprop-decay", "rmsprop_decay", float),
    ("--lr-decay-factor", "lr_decay_factor", float),
    ("--decay-steps", "decay_steps", int),
    ("--grad-clip", "grad_clip", float),
    ("--emulate-workers", "emulate_workers", int),
    ("--fov-policy", "fov_policy", str),
    ("--fov-moves", "fov_moves", int),
    ("--threshold", "threshold", float),
    ("--seed-pad", "seed_pad", float),
    ("--fixed-window-radius", "fixed_window_radius", int),
    ("--apply-adjustment-to", "apply_adjustment_to", str),
    ("--device", "device", str),
    ("--precision", "precision", str),
    ("--threads", "threads", int),
    ("--summary-every-secs", "summary_every_secs", float),
    ("--summary-every-steps", "summary_every_steps", int),
    ("--eval-every-steps", "eval_every_steps", int),
    ("--eval-every-secs", "eval_every_secs", float),
    ("--eval-examples", "eval_examples", int),
    ("--checkpoint-every-secs", "checkpoint_every_secs", float),
    ("--checkpoint-every-steps", "checkpoint_every_steps", int),
    ("--keep-last", "keep_last", int),
    ("--keep-every-hours", "keep_every_hours", float),
]
_SWITCHES = ["shuffle_moves", "shuffle_coordinates", "legacy_max_pred", "channels_last", "tensorboard", "progress"]
_AXES = [("--permutable-axes", "permutable_axes"), ("--reflectable-axes", "reflectable_axes")]
_RANGES = [("--contrast-factor-range", "contrast_factor_range"), ("--brightness-factor-range", "brightness_factor_range")]


def _help(key: str) -> str:
    f = TrainConfig.model_fields[key]
    default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
    choices = getattr(f.annotation, "__args__", None)
    extra = f"; one of {', '.join(map(str, choices))}" if choices and all(isinstance(c, str) for c in choices) else ""
    return f"{f.description}{extra} ({'required' if default == '' else f'default: {default}'})"


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "train",
        "train an FFN on labelled volumes (google/ffn training, step by FOV move)",
        "Train a flood-filling network exactly as google/ffn does: each example is a sequence "
        "of FOV moves inside a patch around a training coordinate, decided by the network's own "
        "prediction, with one optimizer step per move. Writes RUN_DIR/config.json, "
        "RUN_DIR/metrics.jsonl (one JSON object per summary), TensorBoard events in RUN_DIR/tb "
        "and checkpoints in RUN_DIR/checkpoints (each with a model/ directory usable for "
        "segmentation). A run directory with a checkpoint is resumed. Options resolve as: "
        "defaults < RUN_DIR/config.json (resume) < --config FILE < command line. SIGINT/SIGTERM "
        "write a checkpoint and stop.",
    )
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--config", help="TOML or JSON file of TrainConfig options ([model] table for the network)")
    p.add_argument("--image", action="append", metavar="[NAME=]SPEC", help="image volume (repeat as NAME=SPEC for several volumes, NAME as in the coordinate file)")
    p.add_argument("--labels", action="append", metavar="[NAME=]SPEC", help="label volume, as --image")
    p.add_argument("--loss-weights", action="append", metavar="[NAME=]SPEC", help="optional per-voxel loss-weight volume, as --image")
    p.add_argument("--model", metavar="SPEC", help="network, e.g. depth=12,features=32,fov=33,33,33,deltas=8,8,8,mean=128,stddev=33 (default: the FIB-25 geometry)")
    p.add_argument("--image-offset-scale", action="append", metavar="NAME:MEAN:STDDEV", help=_help("image_offset_scale"))
    for flag, key, typ in _SCALARS:
        p.add_argument(flag, type=typ, dest=key, help=_help(key))
    for key in _SWITCHES:
        flag = key.replace("_", "-")
        p.add_argument(f"--{flag}", dest=key, action=argparse.BooleanOptionalAction, help=_help(key))
    for flag, key in _AXES:
        p.add_argument(flag, dest=key, metavar="AXES", help=_help(key) + "; '' for none")
    for flag, key in _RANGES:
        p.add_argument(flag, dest=key, metavar="LO,HI", help=_help(key))
    p.add_argument("--lr-scaling", dest="lr_scaling", choices=["none", "linear", "sqrt"], help=_help("lr_scaling"))
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int, help=_help("warmup_steps"))
    p.add_argument("--fixed-sample-budget", dest="fixed_sample_budget", action=argparse.BooleanOptionalAction, help=_help("fixed_sample_budget"))
    p.add_argument("--nproc-per-node", dest="nproc_per_node", type=int, metavar="N", help="start N local data-parallel workers (torchrun's agent; one GPU each on a GPU machine); see docs/distributed.md for torchrun and srun")
    p.add_argument("--max-restarts", dest="max_restarts", type=int, metavar="K", help="with --nproc-per-node: restart all workers up to K times after a failure, resuming from the latest checkpoint (default: 0)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, help="continue from the run directory's latest checkpoint (default: when it has one; --no-resume refuses a run directory that has checkpoints)")
    p.set_defaults(func=_train)


def _volumes(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        m = _NAMED.match(v)
        name, spec = (m.group(1), m.group(2)) if m else ("", v)
        if name in out:
            raise ConfigError(f"{flag} given twice for volume {name or '(unnamed)'}; give one spec per volume name")
        out[name] = spec
    if "" in out and len(out) > 1:
        raise ConfigError(f"mix of named and unnamed {flag} options; name every volume as NAME=SPEC")
    return out


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, a resumed run's config.json, --config FILE and the command line."""
    a = vars(args)
    layers: list[dict[str, Any]] = []
    sources: list[str] = []  # the file of each layer, for messages
    run_dir = a.get("run_dir")
    resume = a.get("resume")
    if run_dir:
        from .checkpoint import latest_checkpoint

        latest = latest_checkpoint(run_dir)
        if latest is not None and resume is False:
            raise ConfigError(f"{run_dir} already holds checkpoints (latest {latest.name}); resume it (--resume) or choose a new --run-dir")
        if latest is not None and (Path(run_dir) / "config.json").exists():
            layers.append(load_config_file(Path(run_dir) / "config.json"))
            sources.append(str(Path(run_dir) / "config.json"))
    if "config" in a:
        layers.append(load_config_file(a["config"]))
        sources.append(a["config"])
    cli: dict[str, Any] = {}
    for flag, key in (("--image", "images"), ("--labels", "labels"), ("--loss-weights", "loss_weights")):
        name = flag[2:].replace("-", "_")
        if name in a:
            cli[key] = _volumes(a[name], flag)
    if "image_offset_scale" in a:
        table = {}
        for item in a["image_offset_scale"]:
            parts = item.split(":")
            if len(parts) != 3:
                raise ConfigError(f"--image-offset-scale {item!r} must be NAME:MEAN:STDDEV")
            try:
                table[parts[0]] = (float(parts[1]), float(parts[2]))
            except ValueError:
                raise ConfigError(f"--image-offset-scale {item!r}: MEAN and STDDEV must be numbers") from None
        cli["image_offset_scale"] = table
    for _, key, _ in _SCALARS:
        if key in a:
            cli[key] = a[key]
    for key in ("lr_scaling", "warmup_steps", "fixed_sample_budget"):
        if key in a:
            cli[key] = a[key]
    for key in _SWITCHES:
        if key in a:
            cli[key] = a[key]
    for flag, key in _AXES:
        if key in a:
            cli[key] = parse_ints(a[key], len([v for v in a[key].split(",") if v.strip()]), flag) if a[key].strip() else ()
    for flag, key in _RANGES:
        if key in a:
            cli[key] = tuple(_floats(a[key], flag))
    # The network: each layer's [model] table refines the one below; --model last.
    model = ModelConfig()
    for layer, source in zip(layers, sources):
        if "model" in layer:
            if not isinstance(layer["model"], dict):
                raise ConfigError(
                    f"model in {source} must be a [model] table of ModelConfig options (depth = 2, features = 16, ...), "
                    f"not {layer['model']!r}; the depth=...,features=... form is for --model"
                )
            try:
                model = ModelConfig.build(model.model_dump(), layer["model"])
            except ConfigError as e:
                raise ConfigError(f"{source}: [model] {e}") from None
    if "model" in a:
        model = ModelConfig.parse_spec(a["model"], base=model)
    merged = [{k: v for k, v in layer.items() if k != "model"} for layer in layers]
    return TrainConfig.build(*merged, cli, {"model": model})


def _floats(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be two comma-separated numbers") from None
    if len(vals) != 2 or vals[0] > vals[1]:
        raise ConfigError(f"{flag} {text!r} must be LO,HI with LO <= HI")
    return vals


def _train(args: argparse.Namespace) -> int:
    config = build_config(args)
    # More workers or threads than CPUs is legitimate (oversubscription, e.g. 2 workers on
    # a 1-CPU CI machine); 4x as many is a typo that would start thousands of processes.
    limit = 4 * (os.cpu_count() or 1)
    if config.threads and config.threads > limit:
        raise ConfigError(f"--threads {config.threads} is more than 4x the {limit // 4} CPUs of this machine; give at most {limit}")
    nproc = getattr(args, "nproc_per_node", None)
    if nproc is not None and nproc > limit:
        raise ConfigError(f"--nproc-per-node {nproc} is more than 4x the {limit // 4} CPUs of this machine; give at most {limit}")
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)  # once, before any work: resetting later slows CPU steps
    from .distributed import launch_training, run_training
    from .loop import hold_run_dir, resolve_config, summary_line

    if nproc is not None:
        from ..distributed import in_launched_job

        if in_launched_job(os.environ):  # every rank would start workers: refused, see there
            return launch_training(config, nproc, getattr(args, "max_restarts", 0), getattr(args, "resume", None))
        # The launcher holds the run directory for its workers (they see it held and skip the
        # lock), and removes it if the job fails before it has written anything.
        config = resolve_config(config)
        with hold_run_dir(config.run_dir) as guard:
            code = launch_training(config, nproc, getattr(args, "max_restarts", 0), getattr(args, "resume", None))
            guard.failed = code != 0
        return code
    if "max_restarts" in args:
        raise ConfigError("--max-restarts needs --nproc-per-node (with torchrun, give torchrun --max-restarts)")
    result = run_training(config, resume=getattr(args, "resume", None))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for the job
    for rec in (result.last_train, result.last_eval):
        if rec:
            print(summary_line(rec))
    where = f"; checkpoint {result.checkpoint}" if result.checkpoint else ""
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}{where}; rerun the same command to resume", file=sys.stderr)
        return 130 if result.stopped_by == "SIGINT" else 0
    print(f"trained to step {result.step} in {config.run_dir}{where}")
    return 0
