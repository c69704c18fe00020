"""CLI: ``neuroflood train``.

Every :class:`~neuroflood.train.config.TrainConfig` field is an option ``--field-name`` with
the field's type, description and default; volumes (``--image``, ``--labels``,
``--loss-weights``, ``--image-offset-scale``) and the network (``--model``) are parsed by
hand. Options resolve in this order (later wins): TrainConfig defaults, the run directory's
``config.json`` when it is resumed, ``--config FILE``, then the command line. The resolved
config is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from ..config import ModelConfig, load_config_file, parse_ints
from ..errors import ConfigError
from .config import TrainConfig

_NAMED = re.compile(r"^([A-Za-z0-9_.\-]+)=(.+)$")

# Every TrainConfig field is the option --field-name, its type, help and default taken from
# the field; these are the exceptions.
_BY_HAND = {"images", "labels", "loss_weights", "image_offset_scale", "model"}  # --image, ..., --model
_NOT_ON_CLI = {"adagrad_initial_accumulator"}  # set in --config FILE
_CHOICES = {"lr_scaling", "precision"}  # refused by argparse, not by the config's validation


def _help(key: str) -> str:
    f = TrainConfig.model_fields[key]
    default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
    choices = getattr(f.annotation, "__args__", None)
    extra = f"; one of {', '.join(map(str, choices))}" if choices and all(isinstance(c, str) for c in choices) else ""
    return f"{f.description}{extra} ({'required' if default == '' else f'default: {default}'})"


def _kind(key: str) -> Any:
    """The option kind of a field: bool, int, float or str; "axes" (tuple of ints) or "range" (two floats)."""
    annotation = TrainConfig.model_fields[key].annotation
    if isinstance(annotation, types.UnionType):  # X | None
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return str
    if get_origin(annotation) is tuple:
        return "axes" if Ellipsis in get_args(annotation) else "range"
    return annotation


def _derived_options() -> list[tuple[str, str, Any]]:
    """(flag, config key, kind) of the options derived from TrainConfig's fields, in field order."""
    keys = [k for k in TrainConfig.model_fields if k not in _BY_HAND | _NOT_ON_CLI]
    return [("--" + k.replace("_", "-"), k, _kind(k)) for k in keys]


def _add_option(p: argparse.ArgumentParser, flag: str, key: str, kind: Any) -> None:
    if kind is bool:
        p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, help=_help(key))
    elif kind == "axes":
        p.add_argument(flag, dest=key, metavar="AXES", help=_help(key) + "; '' for none")
    elif kind == "range":
        p.add_argument(flag, dest=key, metavar="LO,HI", help=_help(key))
    elif key in _CHOICES:
        p.add_argument(flag, dest=key, choices=list(get_args(TrainConfig.model_fields[key].annotation)), help=_help(key))
    else:
        p.add_argument(flag, type=kind, dest=key, help=_help(key))


def _parse_option(flag: str, kind: Any, value: Any) -> Any:
    """The config value of an option whose text argparse does not convert."""
    if kind == "axes":
        return parse_ints(value, len([v for v in value.split(",") if v.strip()]), flag) if value.strip() else ()
    if kind == "range":
        return tuple(_floats(value, flag))
    return value


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
    p.add_argument(
        "--image",
        action="append",
        metavar="[NAME=]SPEC",
        help="image volume (repeat as NAME=SPEC for several volumes, NAME as in the coordinate file)",
    )
    p.add_argument("--labels", action="append", metavar="[NAME=]SPEC", help="label volume, as --image")
    p.add_argument("--loss-weights", action="append", metavar="[NAME=]SPEC", help="optional per-voxel loss-weight volume, as --image")
    p.add_argument(
        "--model",
        metavar="SPEC",
        help="network, e.g. depth=12,features=32,fov=33,33,33,deltas=8,8,8,mean=128,stddev=33 (default: the FIB-25 geometry)",
    )
    p.add_argument("--image-offset-scale", action="append", metavar="NAME:MEAN:STDDEV", help=_help("image_offset_scale"))
    for flag, key, kind in _derived_options():
        _add_option(p, flag, key, kind)
    p.add_argument(
        "--nproc-per-node",
        dest="nproc_per_node",
        type=int,
        metavar="N",
        help="start N local data-parallel workers (torchrun's agent; one GPU each on a GPU machine); see docs/distributed.md for torchrun and srun",
    )
    p.add_argument(
        "--max-restarts",
        dest="max_restarts",
        type=int,
        metavar="K",
        help="with --nproc-per-node: restart all workers up to K times after a failure, resuming from the latest checkpoint (default: 0)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        help="continue from the run directory's latest checkpoint (default: when it has one; --no-resume refuses a run directory that has checkpoints)",
    )
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
    if run_dir:
        from .checkpoint import resume_from

        latest = resume_from(run_dir, a.get("resume"))
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
    for flag, key, kind in _derived_options():
        if key in a:
            cli[key] = _parse_option(flag, kind, a[key])
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
    if config.precision != "float32":  # before any worker starts: bf16 on a CPU without it is refused
        from ..precision import check_precision
        from .device import pick_device

        check_precision(config.precision, pick_device(config.device).type)
    from .distributed import launch_training, run_training
    from .inputs import resolve_config
    from .metrics import summary_line
    from .rundir import hold_run_dir

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
