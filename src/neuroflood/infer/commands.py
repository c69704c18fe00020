"""CLI: ``neuroflood segment`` (one subvolume, or blockwise with ``--block-size``) and
``neuroflood consensus``.

The commands parse, check their options before anything heavy is loaded, build the configs
(``--config`` file, then ``--set``, then the command-line options) and call the library:
:func:`neuroflood.infer.segment.segment_volume` or
:func:`neuroflood.infer.blockwise.segment_blockwise`. Starting local workers
(``--nproc-per-node``) reruns the command line on each, so it stays here. Nothing heavy
(torch) is imported at module level: ``neuroflood --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "segment",
        "flood-fill segmentation of one subvolume with a trained FFN",
        "Segment the box --bbox of --image with the network --model, one object at a time "
        "(google/ffn Canvas semantics), and write the segmentation, its quantized "
        "probabilities, seed origins, counters and the request to --out. Defaults are the "
        "FIB-25 reference settings; --config (TOML/JSON, see docs/inference.md) and --set "
        "change them. A killed run resumes from its inference checkpoint; an --out that "
        "already holds this request's result is left as is.",
    )
    p.add_argument("--model", required=True, help="native checkpoint directory or google/ffn TF checkpoint prefix")
    p.add_argument("--image", required=True, help="image volume spec (z,y,x), e.g. data.h5:image")
    p.add_argument("--bbox", default=None, help="z0,y0,x0:z1,y1,x1 (stop exclusive); default: the whole image")
    p.add_argument("--out", required=True, help="output spec: seg.h5:segmentation, seg.zarr/segmentation or seg.npz")
    p.add_argument("--config", default=None, help="inference request file (TOML or JSON)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a request field, e.g. options.move_threshold=0.8 or seed_policy=PolicyGrid3d (repeatable)",
    )
    p.add_argument("--summary", default=None, help="write a JSON summary (fov_evaluations, segments, seconds, ...)")
    p.add_argument("--checkpoint", default=None, help="inference checkpoint file; default: beside --out (*.cpoint.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that holds another request's result")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config)")
    p.add_argument(
        "--precision",
        type=_precision_arg,
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="network arithmetic (overrides the config; default float32, the reference's): bfloat16 runs the network "
        "under autocast, the canvas and thresholds staying float32; on CPU only where the CPU has bf16 instructions "
        "(AVX-512 BF16, AMX); float16 on CUDA only",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        metavar="K",
        help="FOVs per network call (overrides the config's batch_size; default 1): with --block-size each worker runs "
        "K blocks at once and batches their FOVs, giving the same segmentation; helps small networks and GPUs",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_blockwise_arguments(p)
    p.set_defaults(func=_segment)

    p = add_command(
        sub,
        "consensus",
        "split consensus of two segmentations of one subvolume",
        "Split segmentation A wherever segmentation B disagrees (google/ffn CONSENSUS_SPLIT): "
        "every overlap of an A and a B segment becomes its own segment, the largest overlap "
        "of each A segment keeps its id, overlaps smaller than --split-min-size are dropped. "
        "Typical: A a forward PolicyPeaks run, B the reverse run with PolicyInvertOrigins.",
    )
    p.add_argument("a", help="first segmentation (an output of neuroflood segment or any volume spec)")
    p.add_argument("b", help="second segmentation of the same box")
    p.add_argument("--out", required=True, help="output spec (seg.h5:NAME, seg.zarr/NAME or seg.npz)")
    p.add_argument("--split-min-size", type=int, default=1000, help="smallest overlap kept")
    p.add_argument("--min-size", type=int, default=0, help="remove connected components smaller than this from A and B first")
    p.add_argument("--no-split-cc", action="store_true", help="do not split A and B into connected components first")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_consensus)


def _precision_arg(text: str) -> str:
    """``--precision`` in the training config's names; fp32, bf16 and fp16 are accepted too."""
    from ..precision import ALIASES, LONG

    name = ALIASES.get(text.strip().lower())
    return LONG[name] if name else text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["options.move_threshold=0.8", "seed_policy=PolicyMax"]`` → nested dict (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE, e.g. --set options.move_threshold=0.8")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"--set {item!r} has an empty key; write KEY=VALUE, e.g. --set options.move_threshold=0.8")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a table")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def request_table(config: str | None, overrides: list[str]) -> dict[str, Any]:
    """The request as a table: the ``--config`` file (if any) with the ``--set`` overrides merged in."""
    from ..config import load_config_file

    raw = load_config_file(config) if config else {}
    return _merge(raw, parse_overrides(overrides))


def _segment(args: argparse.Namespace) -> int:
    import torch

    from ..evaluate.report import check_output_file
    from ..outputs import check_writable_location
    from .config import BlockwiseConfig, InferenceRequest
    from .segment import output_lock_target, segment_volume

    # Options first: a bad one is refused before a model is loaded or anything written.
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1 (or leave it out for torch's choice)")
    if args.batch is not None and args.batch < 1:
        raise ConfigError(f"--batch {args.batch} must be >= 1 (FOVs per network call)")
    check_blockwise_arguments(args)
    check_writable_location(output_lock_target(args.out), "--out")
    if args.summary:
        check_output_file(args.summary, "--summary")
        check_summary_is_ours(args.summary)
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = request_table(args.config, args.overrides)
    if args.device:
        raw["device"] = args.device
    if args.precision:
        raw["precision"] = args.precision
    if args.batch is not None:
        raw["batch_size"] = args.batch
    blockwise_table = raw.pop("blockwise", None)
    request = InferenceRequest.build(raw)
    if request.precision != "fp32":  # refused here, before a model is loaded or a worker started
        from ..precision import check_precision
        from .executor import resolve_device

        check_precision(request.precision, resolve_device(request.device).type)
    blockwise = BlockwiseConfig.build(blockwise_table, blockwise_options(args))

    if blockwise.block_size or args.nproc_per_node:
        return _segment_blockwise(args, request, blockwise)
    summary = segment_volume(
        args.model,
        args.image,
        args.out,
        args.bbox,
        request,
        overwrite=args.overwrite,
        checkpoint_path=args.checkpoint,
        summary_path=args.summary,
        progress=not args.no_progress,
    )
    if summary.get("skipped"):
        print(f"{args.out} already holds this request's segmentation; nothing to do")
        return 0
    print(
        f"{summary['segments']} segments, {summary['fov_evaluations']} FOV evaluations, "
        f"{100 * summary['unsegmented_fraction']:.1f}% unsegmented, {summary['seconds']:.1f} s "
        f"({summary['seconds_per_fov'] or 0:.3f} s/FOV) -> {args.out}"
    )
    return 0


# -- blockwise: `neuroflood segment ... --block-size Z,Y,X [--overlap] [--nproc-per-node N]` ----


def add_blockwise_arguments(parser: argparse.ArgumentParser) -> None:
    """The blockwise options of ``neuroflood segment`` (defaults: :class:`BlockwiseConfig`'s)."""
    g = parser.add_argument_group(
        "large volumes",
        "With --block-size the box is split into overlapping blocks, segmented on 1..N workers "
        "and reconciled into one segmentation with sequential ids; --out must be DIR.zarr/NAME. "
        "Rerunning the same command resumes: finished blocks are kept. These options override "
        "the [blockwise] table of --config.",
    )
    g.add_argument("--block-size", default=None, metavar="Z,Y,X", help="block size (default: the whole box is one block)")
    g.add_argument(
        "--overlap",
        default=None,
        metavar="Z,Y,X",
        help="overlap of neighbouring blocks (default: fov//2 + delta, e.g. 24 for FIB-25)",
    )
    g.add_argument("--nproc-per-node", type=int, default=None, help="start this many local workers (torchrun)")
    g.add_argument(
        "--min-overlap-voxels",
        type=int,
        default=None,
        help="join objects of neighbouring blocks that share at least this many voxels (default 50) ...",
    )
    g.add_argument(
        "--min-overlap-fraction",
        type=float,
        default=None,
        help="... and at least this fraction of the smaller one's voxels in the overlap (default 0.5)",
    )
    g.add_argument(
        "--handover-rounds",
        type=int,
        default=None,
        metavar="N",
        help="rounds in which each block floods the objects its neighbours carry into its core (default 2; 0: none)",
    )
    g.add_argument(
        "--one-sided-joins",
        action="store_true",
        default=None,
        help="join objects on one block's word (default: the other block must see them touch in its margin, so that one leaky fill cannot merge two neurons)",
    )


def blockwise_options(args: argparse.Namespace) -> dict[str, Any]:
    """The blockwise options given on the command line (None: not given), by config key."""
    return {
        "block_size": args.block_size,
        "overlap": args.overlap,
        "min_overlap_voxels": args.min_overlap_voxels,
        "min_overlap_fraction": args.min_overlap_fraction,
        "handover_rounds": args.handover_rounds,
        "one_sided_joins": args.one_sided_joins,
    }


def check_blockwise_arguments(args: argparse.Namespace) -> None:
    """Refuse bad blockwise options before a model is loaded or a worker started."""
    from ..config import parse_ints
    from .jobfiles import JobPaths

    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node} must be >= 1 (local workers)")
    if args.block_size:
        block = parse_ints(args.block_size, 3, "--block-size")
        if min(block) < 1:
            raise ConfigError(f"--block-size {args.block_size} must be positive on every axis (z,y,x), e.g. 128,128,128")
    if args.overlap and min(parse_ints(args.overlap, 3, "--overlap")) < 0:
        raise ConfigError(f"--overlap {args.overlap} must be >= 0 on every axis (z,y,x)")
    if args.min_overlap_fraction is not None and not 0 < args.min_overlap_fraction <= 1:  # NaN fails too
        raise ConfigError(f"--min-overlap-fraction {args.min_overlap_fraction} must be a fraction in (0, 1], e.g. 0.5")
    if args.min_overlap_voxels is not None and args.min_overlap_voxels < 1:
        raise ConfigError(f"--min-overlap-voxels {args.min_overlap_voxels} must be >= 1")
    if args.handover_rounds is not None and args.handover_rounds < 0:
        raise ConfigError(f"--handover-rounds {args.handover_rounds} must be 0 (none) or more")
    if args.block_size or args.nproc_per_node:
        JobPaths.from_spec(args.out)


def _segment_blockwise(args: argparse.Namespace, request: Any, options: Any) -> int:
    """``neuroflood segment`` with a block size and/or --nproc-per-node."""
    import os

    from .blockwise import segment_blockwise
    from .jobfiles import JobPaths
    from .segment import launch_holding

    paths = JobPaths.from_spec(args.out)
    # One writer per output: the launcher holds it for its workers; a rank 0 started by
    # another launcher (torchrun, srun) takes it itself.
    if args.nproc_per_node and "LOCAL_RANK" not in os.environ:
        target = os.path.abspath(paths.root / paths.name)
        return launch_holding(args.out, target, args.nproc_per_node, args.argv, args.threads)
    # (torch threads were set once by the command before this)
    summary = segment_blockwise(
        args.model,
        args.image,
        args.out,
        bbox=args.bbox,
        request=request,
        **options.model_dump(),
        progress=not args.no_progress,
        summary_path=args.summary,
    )
    if summary is not None:
        print(
            f"{summary['segments']} segments, {summary['fov_evaluations']} FOV evaluations in "
            f"{summary['blocks']} blocks ({summary['blocks_run']} run, {summary['blocks_skipped']} kept), "
            f"{100 * summary['unsegmented_fraction']:.1f}% unsegmented, {summary['seconds']:.1f} s -> {args.out}"
        )
    return 0


def _consensus(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import DataError, VolumeError
    from ..volume import open_volume
    from .consensus import compute_consensus
    from .storage import check_output, read_output, write_segmentation

    def load(spec: str):
        try:
            out = read_output(spec)
            return out["segmentation"], out["meta"]
        except VolumeError:
            vol = open_volume(spec)
            try:
                return vol[...], {}
            finally:
                vol.close()

    from ..outputs import check_writable_location
    from .segment import output_lock_target

    for name, value in (("--split-min-size", args.split_min_size), ("--min-size", args.min_size)):
        if value < 0:
            raise ConfigError(f"{name} {value} must be >= 0 (voxels)")
    check_writable_location(output_lock_target(args.out), "--out")
    clean = {} if args.no_split_cc and not args.min_size else {"split_cc": not args.no_split_cc, "min_size": args.min_size}
    key = {"consensus": [args.a, args.b], "split_min_size": args.split_min_size, "clean": clean}
    if check_output(args.out, key, overwrite=args.overwrite):  # before the work, not after it
        print(f"{args.out} already holds this consensus; nothing to do")
        return 0
    a, meta_a = load(args.a)
    b, _ = load(args.b)
    if a.shape != b.shape:
        raise DataError(f"{args.a} has shape {a.shape} and {args.b} {b.shape}; give two segmentations of one box")
    seg = compute_consensus(a, b, args.split_min_size, **clean)
    write_segmentation(args.out, seg, origins={}, meta={"request": key, "corner_zyx": meta_a.get("corner_zyx", [0, 0, 0])})
    n = int(np.count_nonzero(np.unique(seg)))
    print(f"consensus: {n} segments -> {args.out}")
    return 0


def check_summary_is_ours(path: str) -> None:
    """Refuse a --summary path that holds a file an earlier segment run did not write."""
    import json
    import os

    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            ours = "fov_evaluations" in json.load(f)
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise ConfigError(
            f"--summary {path} exists and is not a summary of neuroflood segment, which never replaces it; choose another path"
        )
