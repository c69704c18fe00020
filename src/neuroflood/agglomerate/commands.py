"""CLI: ``neuroflood agglomerate SEG --model M --image I --out OUT``.

Parses and checks the options before anything heavy is loaded, builds the inference request
(``--config``, then ``--set``, then ``--device``) and calls
:func:`neuroflood.agglomerate.pipeline.agglomerate`. ``--nproc-per-node N`` reruns the
command line on N local workers, as ``neuroflood segment`` does. Nothing heavy (torch) is
imported at module level.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import CheckpointError, ConfigError

_TRIPLES = ("radius", "analysis_radius", "exclusion_radius", "block_size")


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "agglomerate",
        "merge the segments of a segmentation that the FFN says belong together",
        "For every pair of touching segments, find a decision point at their contact, run the "
        "FFN there from inside each segment, and merge the pair when both fills recover both "
        "segments (google/ffn resegmentation and its manual merge rule: iou > 0.8, "
        "consistencies > 0.6, deleted fraction < 0.02). Writes the agglomerated segmentation "
        "to --out (DIR.zarr/NAME) and the mapping segment -> neuron beside it "
        "(DIR.zarr/NAME.agglomeration/mapping.npz). Pairs are shared by --nproc-per-node "
        "workers; rerunning the same command resumes. See docs/agglomeration.md.",
    )
    p.add_argument("seg", metavar="SEG", help="the segmentation to agglomerate (volume spec, same shape as --image)")
    p.add_argument("--model", required=True, help="native checkpoint directory or google/ffn TF checkpoint prefix")
    p.add_argument("--image", required=True, help="image volume spec (z,y,x), e.g. data.h5:image")
    p.add_argument("--out", required=True, help="output zarr array DIR.zarr/NAME")
    p.add_argument("--bbox", default=None, help="z0,y0,x0:z1,y1,x1 (stop exclusive); default: the whole volume")
    p.add_argument("--summary", default=None, help="write a JSON summary (pairs, merges, fov_evaluations, seconds, ...)")
    p.add_argument("--config", default=None, help="inference request file (TOML or JSON), as for neuroflood segment")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a request field (repeatable)"
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's choice)")
    p.add_argument("--nproc-per-node", type=int, default=None, help="start this many local workers (torchrun)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out that an earlier agglomerate run made with other options")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    g = p.add_argument_group("decision points")
    g.add_argument("--max-distance", type=float, default=8.0, help="segments expand this far into empty space (voxel-size units)")
    g.add_argument("--min-segment-size", type=int, default=1000, help="ignore segments of fewer voxels")
    g.add_argument("--min-contact", type=int, default=10, help="a pair needs this many voxel faces of contact")
    g.add_argument("--block-size", default="128,128,128", metavar="Z,Y,X", help="blocks for decision points and output")

    g = p.add_argument_group("resegmentation")
    g.add_argument("--radius", default=None, metavar="Z,Y,X", help="subvolume radius around the point (default: fov//2 + 2*delta)")
    g.add_argument("--analysis-radius", default=None, metavar="Z,Y,X", help="scoring box radius (default: radius - fov//2)")
    g.add_argument("--max-retry-iters", type=int, default=1, help="seeds tried per segment")
    g.add_argument("--exclusion-radius", default=None, metavar="Z,Y,X", help="box around a failed seed not to seed again (default: delta)")
    g.add_argument(
        "--segment-recovery-fraction",
        type=float,
        default=0.0,
        help="fraction of a segment a fill must recover (0: min_segment_size voxels)",
    )
    g.add_argument("--terminate-early", action="store_true", help="skip B when A's fill failed")
    g.add_argument("--pairs-per-job", type=int, default=16, help="pairs a worker claims at once")

    g = p.add_argument_group("merge rule")
    g.add_argument("--threshold", type=float, default=0.5, help="probability at which fills are scored")
    g.add_argument("--min-iou", type=float, default=0.8, help="merge when iou > this ...")
    g.add_argument("--min-consistency", type=float, default=0.6, help="... and a fill recovers > this of both segments ...")
    g.add_argument("--max-deleted-fraction", type=float, default=0.02, help="... and deleted/num_voxels < this")
    g.add_argument("--one-sided", action="store_true", help="merge when one fill supports it (default: both)")

    g = p.add_argument_group("before and after")
    g.add_argument(
        "--consensus", default=None, metavar="SEG2", help="first split SEG by a second segmentation (oversegmentation consensus)"
    )
    g.add_argument("--consensus-min-size", type=int, default=1000, help="smallest consensus piece kept")
    g.add_argument("--fill-holes", type=int, default=0, metavar="MAX_VOXELS", help="fill enclosed unsegmented components up to this size")
    p.set_defaults(func=_agglomerate)


def options_from_args(args: argparse.Namespace) -> Any:
    """The :class:`AgglomerationOptions` of the command line (checked)."""
    from ..config import parse_ints
    from .options import AgglomerationOptions

    triples = {k: None if getattr(args, k) is None else parse_ints(getattr(args, k), 3, "--" + k.replace("_", "-")) for k in _TRIPLES}
    opts = AgglomerationOptions(
        max_distance=args.max_distance,
        min_segment_size=args.min_segment_size,
        min_contact=args.min_contact,
        max_retry_iters=args.max_retry_iters,
        segment_recovery_fraction=args.segment_recovery_fraction,
        terminate_early=args.terminate_early,
        pairs_per_job=args.pairs_per_job,
        threshold=args.threshold,
        min_iou=args.min_iou,
        min_consistency=args.min_consistency,
        max_deleted_fraction=args.max_deleted_fraction,
        one_sided=args.one_sided,
        consensus_min_size=args.consensus_min_size,
        fill_holes=args.fill_holes,
        **triples,
    )
    opts.check()
    return opts


def _request(args: argparse.Namespace) -> Any:
    from ..infer.commands import request_table
    from ..infer.config import InferenceRequest

    raw = request_table(args.config, args.overrides)
    if args.device:
        raw["device"] = args.device
    raw.pop("blockwise", None)
    return InferenceRequest.build(raw)


def _check_paths(args: argparse.Namespace) -> None:
    from ..evaluate.report import check_output_file
    from ..model.checkpoint import is_tf_prefix
    from ..outputs import check_writable_location
    from .files import AggPaths

    if not (os.path.isdir(args.model) or is_tf_prefix(args.model)):
        raise CheckpointError(
            f"no checkpoint at {args.model}: give a neuroflood checkpoint directory (model.safetensors + config.json) "
            "or a TensorFlow prefix such as model.ckpt-27465036"
        )
    paths = AggPaths.from_spec(args.out)
    check_writable_location(paths.out, "--out")
    if args.summary:
        check_output_file(args.summary, "--summary")
        if os.path.exists(args.summary):
            try:
                with open(args.summary) as f:
                    ours = {"pairs", "merges"} <= set(json.load(f))
            except (OSError, ValueError, TypeError):
                ours = False
            if not ours:
                raise ConfigError(
                    f"--summary {args.summary} exists and is not an agglomerate summary, which never replaces it; choose another path"
                )


def _agglomerate(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1 (or leave it out for torch's choice)")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node {args.nproc_per_node} must be >= 1 (local workers)")
    options = options_from_args(args)
    _check_paths(args)
    request = _request(args)

    import torch

    from ..infer.segment import launch_holding
    from .files import AggPaths
    from .pipeline import agglomerate

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nproc_per_node and "LOCAL_RANK" not in os.environ:
        target = os.path.abspath(AggPaths.from_spec(args.out).out)
        return launch_holding(args.out, target, args.nproc_per_node, args.argv, args.threads)
    summary = agglomerate(
        args.model,
        args.image,
        args.seg,
        args.out,
        bbox=args.bbox,
        request=request,
        options=options,
        consensus=args.consensus,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        summary_path=args.summary,
    )
    if summary is not None:
        if summary.get("skipped"):
            print(f"{args.out} already holds this agglomeration; nothing to do")
        else:
            print(
                f"{summary['pairs']} pairs, {summary['merges']} merges: {summary['segments']} segments -> "
                f"{summary['neurons']} neurons, {summary['fov_evaluations']} FOV evaluations, {summary['seconds']:.1f} s -> {args.out}"
            )
    return 0
