"""CLI: ``neuroflood evaluate``, ``neuroflood report`` and ``neuroflood view``."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..volume import FORMATS_HELP


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_command

    p = add_command(
        sub,
        "evaluate",
        "score a segmentation against ground truth and write a report with pictures",
        "Compute VI split/merge, adapted Rand error, Rand precision/recall, voxel metrics and "
        "the largest false merges and splits of segmentation SEG against ground truth GT, and "
        "write DIR/metrics.json, a self-contained DIR/report.html, DIR/report.md and PNG "
        "figures (ortho-slice overlays, error map, close-ups of the worst errors). Ground-truth "
        "label 0 is unlabelled and not scored; segmentation label 0 is unsegmented. "
        f"Volume specs: {FORMATS_HELP}.",
    )
    p.add_argument("seg", metavar="SEG", help="segmentation volume spec (integer labels)")
    p.add_argument("gt", metavar="GT", help="ground-truth volume spec (integer labels, 0 = unlabelled)")
    p.add_argument("--image", metavar="IMG", help="EM image volume spec, shown under the overlays")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (created; files replaced)")
    p.add_argument(
        "--bbox",
        metavar="Z0,Y0,X0:Z1,Y1,X1",
        help="evaluate this region of GT (and IMG); SEG is cropped too if it has GT's shape, else it must have the region's size",
    )
    p.add_argument("--at", metavar="Z,Y,X", help="centre of the ortho-slices, in the region (default: its centre)")
    p.add_argument("--errors", type=int, default=10, help="how many of the largest merges and splits to list")
    p.add_argument(
        "--min-error-voxels",
        type=int,
        default=100,
        help="an overlap counts towards a merge or split from this many voxels (ignores boundary jitter)",
    )
    p.add_argument(
        "--erl",
        action="store_true",
        help="also compute expected run length along ground-truth skeletons (needs the 'skeletons' extra: kimimaro)",
    )
    p.add_argument("--erl-dust-threshold", type=int, default=1000, help="skeletonize objects of at least this many voxels")
    p.add_argument(
        "--render-3d",
        type=int,
        default=0,
        metavar="N",
        help="add a 3-D picture of the N largest segments, the worst merge and the worst split (0: none)",
    )
    p.set_defaults(func=_evaluate)

    p = add_command(
        sub,
        "report",
        "turn a training run into a report: curves, LR schedule, predictions vs labels",
        "Read RUN_DIR/metrics.jsonl (one JSON object per line: step, time_s, split, fovs_per_s, "
        "loss, accuracy, precision, recall, f1, optionally lr), RUN_DIR/config.json and, if "
        "present, RUN_DIR/samples/*.npz, and write a self-contained report.html, report.md, "
        "PNG figures and summary.json. Works on a run that is still training.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (the --out of neuroflood train)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/report)")
    p.set_defaults(func=_report)

    p = add_command(
        sub,
        "view",
        "show an image and segmentations in neuroglancer, served on this machine",
        "Serve a neuroglancer viewer of IMG with each SEG as a segmentation layer, print its "
        "URL and serve until Ctrl-C. A SEG written by neuroflood mesh (its directory) is shown with its "
        "3-D meshes, the largest segments selected. Binds to 127.0.0.1 by default (use ssh -L "
        "PORT:127.0.0.1:PORT to look from another machine; a mesh output is served on a second port). "
        "Needs the optional extra: pip install 'neuroflood[viewer]'. "
        f"Volume specs: {FORMATS_HELP}.",
    )
    p.add_argument("image", metavar="IMG", help="image volume spec")
    p.add_argument("segs", metavar="SEG", nargs="*", help="segmentation volume specs (integer labels) or neuroflood mesh outputs")
    p.add_argument("--bind", default="127.0.0.1", help="address to serve on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--voxel-size", metavar="Z,Y,X", help="voxel size in nm (default: from the volume, else 1,1,1)")
    p.add_argument("--max-memory-mb", type=float, default=2048, help="load volumes up to this size; read larger ones lazily")
    p.add_argument("--mesh-segments", type=int, default=10, metavar="N", help="select the N largest segments of a mesh output")
    p.set_defaults(func=_view)


def _evaluate(args: argparse.Namespace) -> int:
    from ..bbox import BoundingBox
    from .inputs import open_evaluation_inputs, parse_point
    from .report import check_output_dir, write_evaluation_report

    _at_least(args.errors, 0, "--errors", "how many merges and splits to list")
    _at_least(args.min_error_voxels, 1, "--min-error-voxels", "voxels an overlap needs to count")
    _at_least(args.erl_dust_threshold, 0, "--erl-dust-threshold", "voxels an object needs to be skeletonized")
    _at_least(args.render_3d, 0, "--render-3d", "how many of the largest segments to draw in 3-D")
    check_output_dir(args.out)  # before the work, not after it
    bbox = BoundingBox.parse(args.bbox) if args.bbox else None
    inputs = open_evaluation_inputs(args.seg, args.gt, args.image, bbox)
    center = parse_point(args.at, inputs.shape) if args.at else None
    result = write_evaluation_report(
        args.out,
        inputs,
        {"seg": args.seg, "gt": args.gt, "image": args.image, "bbox": args.bbox},
        center=center,
        n_errors=args.errors,
        min_error_voxels=args.min_error_voxels,
        erl_dust_threshold=args.erl_dust_threshold if args.erl else None,
        progress=True,
        render_3d=args.render_3d,
    )
    print(
        f"VI {result['vi']:.4f} (split {result['vi_split']:.4f}, merge {result['vi_merge']:.4f}), "
        f"adapted Rand error {result['adapted_rand_error']:.4f} "
        f"(precision {result['rand_precision']:.4f}, recall {result['rand_recall']:.4f}), "
        f"{result['n_segments']} segments, {result['n_gt_objects']} objects"
    )
    if args.erl:
        print(f"ERL {result['erl_nm']:.0f} nm of {result['erl_max_nm']:.0f} nm possible ({result['erl_fraction']:.3f})")
    print(f"wrote {args.out}/metrics.json, report.html, report.md")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import check_output_dir
    from .training_report import check_run_dir, write_training_report

    check_run_dir(args.run_dir)
    out = args.out or str(Path(args.run_dir) / "report")
    check_output_dir(out)
    summary = write_training_report(args.run_dir, out)
    last = summary["last"].get("eval") or summary["last"].get("train") or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("step", "loss", "f1") and isinstance(v, (int, float)))
    print(f"{summary['n_records']} records ({shown}); wrote {out}/report.html, report.md")
    return 0


def _view(args: argparse.Namespace) -> int:
    from .viewer import check_address, serve

    check_address(args.bind, args.port)
    if not args.max_memory_mb >= 0:
        raise ConfigError(f"--max-memory-mb {args.max_memory_mb} must be >= 0 (0: read every volume lazily)")
    _at_least(args.mesh_segments, 0, "--mesh-segments", "how many segments of a mesh output to select")
    voxel_size = _positive_floats(args.voxel_size, "--voxel-size") if args.voxel_size else None
    serve(
        args.image,
        args.segs,
        bind=args.bind,
        port=args.port,
        voxel_size=voxel_size,
        max_memory_mb=args.max_memory_mb,
        mesh_segments=args.mesh_segments,
    )
    return 0


def _at_least(value: int, low: int, name: str, meaning: str) -> None:
    if value < low:
        raise ConfigError(f"{name} {value} must be >= {low} ({meaning})")


def _positive_floats(text: str, name: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < float("inf") for v in values):
        raise ConfigError(f"{name} {text!r} is not three positive numbers z,y,x (e.g. 40,8,8)")
    return values
