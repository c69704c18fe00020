"""CLI commands that belong to no single stage: ``synth``, ``export`` and ``demo``."""

from __future__ import annotations

import argparse
import time

from .errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    from .cli import add_command

    p = add_command(
        sub,
        "synth",
        "write an EM-like synthetic volume with dense ground truth",
        "Generate a deterministic EM-like volume (neurites, membranes, organelles, blur, "
        "noise) and write datasets 'image' (uint8) and 'labels' (uint64) to an HDF5 file.",
    )
    p.add_argument("--shape", default="128,128,128", help="volume size z,y,x")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", required=True, help="output HDF5 file (datasets image, labels); must not exist")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier `neuroflood synth` wrote it")
    p.add_argument("--density", type=float, default=None, help="processes per 32^2 voxels of cross-section")
    p.add_argument("--noise", type=float, default=None, help="Gaussian noise std, grey levels")
    p.add_argument("--membrane-contrast", type=float, default=None, help="0 invisible .. 1 FIB-25-like")
    p.set_defaults(func=_synth)
    register_export(sub)
    register_demo(sub)


def _synth(args: argparse.Namespace) -> int:
    from .config import parse_ints
    from .outputs import exclusive
    from .synthetic import make_em_volume, write_synthetic

    if not args.out.lower().endswith((".h5", ".hdf5", ".hdf")):
        raise ConfigError(f"--out {args.out!r} must be an HDF5 file name ending in .h5")
    shape = parse_ints(args.shape, 3, "--shape")
    overrides = {
        k: v for k, v in (("density", args.density), ("noise", args.noise), ("membrane_contrast", args.membrane_contrast)) if v is not None
    }
    with exclusive(args.out, f"--out {args.out}"):
        check_synth_output(args.out, args.overwrite)
        t0 = time.time()
        image, labels = make_em_volume(shape, seed=args.seed, **overrides)
        write_synthetic(args.out, image, labels)
    print(f"wrote {args.out}: image {image.shape} uint8, {int(labels.max())} objects, {time.time() - t0:.1f} s")
    return 0


def check_synth_output(out: str, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and an earlier synth wrote it."""
    import os

    from .synthetic import made_by_synth

    if not os.path.lexists(out):
        return
    if not overwrite:
        raise ConfigError(f"{out} exists; choose another --out or pass --overwrite to replace an earlier synth output")
    if not made_by_synth(out):
        raise ConfigError(f"{out} was not written by neuroflood synth, so --overwrite will not replace it; choose another --out")


def register_export(sub: argparse._SubParsersAction) -> None:
    from .cli import add_command

    p = add_command(
        sub,
        "export",
        "copy a volume (e.g. a segmentation) into another format",
        "Copy SRC into DST block by block (memory stays at one block), e.g. a zarr "
        "segmentation into neuroglancer precomputed (precomputed://DIR) or HDF5 (FILE.h5:NAME). "
        "HDF5 and zarr targets are written under a temporary name and renamed when complete.",
    )
    p.add_argument("src", help="volume spec to read")
    p.add_argument("dst", help="volume spec to write")
    p.add_argument("--block", default="128,128,128", help="copy block size z,y,x (also the output chunk size)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from .config import parse_ints
    from .outputs import container_path, exclusive
    from .volume import copy_volume

    block = parse_ints(args.block, 3, "--block")
    with exclusive(container_path(args.dst), f"the destination {args.dst}"):
        out = copy_volume(args.src, args.dst, block, overwrite=args.overwrite)
    print(f"wrote {args.dst}: shape {out.shape}, {out.dtype}")
    return 0


def register_demo(sub: argparse._SubParsersAction) -> None:
    from .cli import add_command

    p = add_command(
        sub,
        "demo",
        "run the whole pipeline on synthetic data (or the published model on FIB-25)",
        "Generate a synthetic EM training volume and a separate test volume, prepare "
        "coordinates, train a small FFN on --workers processes (DDP on CPU), segment the test "
        "volume, agglomerate the segmentation, evaluate both, draw the largest neurons in 3-D "
        "and mesh them: OUT/report.html, OUT/metrics.json (with seconds per stage), "
        "OUT/views_3d.png and OUT/mesh.precomputed (for neuroflood view). Each stage prints the neuroflood command it runs. With --fib25 SHARED, segment "
        "a crop of the FIB-25 sample with the published google/ffn model and evaluate it instead.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (must be empty or absent)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier `neuroflood demo` wrote it")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic volumes and of training")
    p.add_argument("--size", choices=["full", "tiny"], default="full", help="tiny: a seconds-long smoke run")
    p.add_argument("--workers", type=int, default=2, help="training processes (synchronous data parallel)")
    p.add_argument("--fib25", default=None, metavar="SHARED", help="the shared folder holding data/fib25 and models/fib25")
    p.add_argument("--bbox", default="0,0,0:100,100,100", help="with --fib25: the crop to segment, z0,y0,x0:z1,y1,x1")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, run_fib25_demo, summary_text

    if args.fib25:
        metrics = run_fib25_demo(args.out, args.fib25, args.bbox, overwrite=args.overwrite)
    else:
        metrics = run_demo(args.out, args.size, args.seed, args.workers, overwrite=args.overwrite)
    print(summary_text(metrics, args.out))
    return 0
