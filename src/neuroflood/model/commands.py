"""CLI: ``neuroflood import-tf`` and ``neuroflood model-info``."""

from __future__ import annotations

import argparse
import json

from ..config import ModelConfig, parse_ints


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "import-tf",
        "convert a google/ffn TensorFlow checkpoint into a neuroflood checkpoint",
        "Read a google/ffn TensorFlow checkpoint (PREFIX.index + PREFIX.data-*) without "
        "TensorFlow, verify its checksums, and write a native checkpoint directory "
        "(model.safetensors + config.json). Depth and features are read off the checkpoint; "
        "FOV, deltas and image normalization are not stored there, so give them here "
        "(defaults: the published FIB-25 model).",
    )
    p.add_argument("prefix", help="checkpoint prefix, e.g. models/fib25/model.ckpt-27465036")
    p.add_argument("out_dir", help="directory to write; must not exist")
    p.add_argument("--fov-size", default="33,33,33", help="field of view z,y,x")
    p.add_argument("--deltas", default="8,8,8", help="FOV move step z,y,x")
    p.add_argument("--image-mean", type=float, default=128.0, help="image mean used in training")
    p.add_argument("--image-stddev", type=float, default=33.0, help="image stddev used in training")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if an earlier `neuroflood import-tf` wrote it")
    p.set_defaults(func=_import_tf)

    p = add_command(sub, "model-info", "print a checkpoint's architecture and parameter count as JSON")
    p.add_argument("checkpoint", help="native checkpoint directory or TF checkpoint prefix")
    p.set_defaults(func=_model_info)


def _import_tf(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..outputs import check_replaceable, exclusive
    from .checkpoint import import_tf, load_model

    if not args.out_dir.strip():
        raise ConfigError("the output directory is empty; give one, e.g. `neuroflood import-tf PREFIX fib25_model`")

    config = ModelConfig.build(
        {
            "fov_size": parse_ints(args.fov_size, 3, "--fov-size"),
            "deltas": parse_ints(args.deltas, 3, "--deltas"),
            "image_mean": args.image_mean,
            "image_stddev": args.image_stddev,
        }
    )
    with exclusive(args.out_dir, f"output directory {args.out_dir}"):
        check_replaceable(args.out_dir, "import-tf", args.overwrite, inputs=(f"{args.prefix}.index",))
        out = import_tf(args.prefix, args.out_dir, config)
    model = load_model(out)
    print(f"wrote {out} ({model.num_parameters():,} parameters, depth {model.config.depth})")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from .checkpoint import load_model

    model = load_model(args.checkpoint)
    info = {
        "model": json.loads(model.config.model_dump_json()),
        "parameters": model.num_parameters(),
        "flops_per_voxel": model.flops_per_voxel(),
        "provenance": model.provenance,
    }
    print(json.dumps(info, indent=2))
    return 0
