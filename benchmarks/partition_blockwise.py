"""Blockwise partitioning of a label volume larger than one block: time and peak RSS.

    .venv/bin/python benchmarks/partition_blockwise.py [--shape 512,1024,1024] [--block 256,256,256]

Generates a synthetic label volume (z, y, x = 512 x 1024 x 1024 by default, uint32, chunked
zarr): elongated Voronoi cells (about 3000, neurite-sized), zero-valued "membranes" between
them and sprinkled dust objects below min_size. Then, in a fresh child process, partitions it
block by block (``partition_volume``, reference parameters: lom_radius 24, the 12 README
thresholds, min_size 10000) into a zarr volume, and reports time and the child's peak RSS
(target: under 3 GB). Writes benchmarks/results/partition_blockwise.json. Takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def make_labels(spec: str, shape: tuple[int, int, int], block: tuple[int, int, int], seed: int = 0) -> int:
    """Write the synthetic labels chunk by chunk; return the number of cells."""
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    from neuroflood.bbox import BoundingBox
    from neuroflood.prepare.partitions import iter_blocks
    from neuroflood.volume import create_volume

    rng = np.random.default_rng(seed)
    factor = 4  # Voronoi on a 4x coarser grid, upsampled: fast, and cells stay neurite-sized
    coarse = tuple(-(-s // factor) for s in shape)
    n_cells = int(np.prod(shape) / 180_000)
    seeds = rng.random((n_cells, 3)) * coarse
    stretch = np.array([0.35, 1.0, 1.0])  # distances shrink along z: cells elongate along z
    grid = np.stack(np.meshgrid(*[np.arange(c) + 0.5 for c in coarse], indexing="ij"), -1).reshape(-1, 3)
    _, nearest = cKDTree(seeds * stretch).query(grid * stretch, workers=2)
    cells = (nearest + 1).astype(np.uint32).reshape(coarse)
    cells = np.pad(cells, [(0, 1)] * 3, mode="edge")  # one more coarse voxel at the far faces
    del grid, nearest
    vol = create_volume(spec, shape, "uint32", chunks=(128, 128, 128))
    next_dust = n_cells + 1
    for box in tqdm(list(iter_blocks(BoundingBox.from_shape(shape), block)), desc="writing labels", unit="block"):
        lo = [a // factor for a in box.start]
        hi = [-(-b // factor) + 1 for b in box.stop]
        c = cells[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        up = c.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
        off = [a - low * factor for a, low in zip(box.start, lo)]
        up = up[off[0] : off[0] + box.size[0] + 1, off[1] : off[1] + box.size[1] + 1, off[2] : off[2] + box.size[2] + 1]
        labels = up[:-1, :-1, :-1].copy()
        # Membranes: 0 where the cell changes towards +z, +y or +x.
        edge = (up[:-1, :-1, :-1] != up[1:, :-1, :-1]) | (up[:-1, :-1, :-1] != up[:-1, 1:, :-1]) | (up[:-1, :-1, :-1] != up[:-1, :-1, 1:])
        labels[edge] = 0
        # Dust: small cubes with ids of their own (removed by min_size).
        for z, y, x in zip(*[rng.integers(0, s - 3, 40) for s in box.size]):
            labels[z : z + 3, y : y + 3, x : x + 3] = next_dust
            next_dust += 1
        vol[box.to_slices()] = labels
    return n_cells


def partition_child(labels_spec: str, out_spec: str, block: tuple[int, int, int]) -> dict:
    from neuroflood.prepare.partitions import IGNORE, PartitionParams, partition_volume
    from neuroflood.volume import create_volume, open_volume

    labels = open_volume(labels_spec)
    out = create_volume(out_spec, labels.shape, "uint8", chunks=(64, 64, 64), fill_value=IGNORE)
    params = PartitionParams.make((24, 24, 24), THRESHOLDS, 10000)
    t = time.perf_counter()
    totals = partition_volume(labels, out, params, block_shape=block, progress=True)
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "counts": {str(c): int(n) for c, n in enumerate(totals) if n},
        "voxels_per_s": int(np.prod(labels.shape) / seconds),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="512,1024,1024", help="z,y,x")
    p.add_argument("--block", default="256,256,256", help="partition block z,y,x")
    p.add_argument("--work", help="directory for the zarr volumes (default: a temporary one, removed after)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "partition_blockwise.json"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    block = tuple(int(v) for v in args.block.split(","))
    if args.child:
        print(json.dumps(partition_child(args.child[0], args.child[1], block)))
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.work or tempfile.mkdtemp(prefix="nf-blockwise-"))
    try:
        labels_spec, out_spec = f"{work}/labels.zarr", f"{work}/partitions.zarr"
        t = time.perf_counter()
        n_cells = make_labels(labels_spec, shape, block)
        gen_s = time.perf_counter() - t
        print(f"generated {shape} labels ({n_cells} cells) in {gen_s:.0f} s", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--block", args.block, "--child", labels_spec, out_spec],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result.update(
        {
            "shape_zyx": list(shape),
            "block": list(block),
            "cells": n_cells,
            "generate_s": gen_s,
            "target_rss_gb": 3.0,
            "rss_target_met": result["peak_rss_gb"] < 3.0,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    print(
        f"partitioned {'x'.join(map(str, shape))} blockwise in {result['seconds']:.0f} s "
        f"({result['voxels_per_s'] / 1e6:.1f} M voxels/s), peak RSS {result['peak_rss_gb']:.2f} GB"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
