"""Peak memory per worker of blockwise segmentation: does it stay flat as the volume grows?

    .venv/bin/python benchmarks/blockwise_memory.py [--sizes 256,512] [--block 128,128,128] [--workers 2]

For each size N it writes a synthetic EM image of N^3 voxels (zarr, tile by tile, so making
it never holds the volume), then runs the whole blockwise job of ``neuroflood segment
--block-size`` (:func:`neuroflood.infer.blockwise.run_blockwise_job`: claim blocks, segment,
write cores, reconcile, relabel into one zarr) on ``--workers`` fresh processes joined by
torch.distributed (gloo), and records each worker's peak RSS. Target (issue #7): peak RSS per
worker at 512^3 <= 1.5x that at 256^3 with the same block size.

The blocks are segmented by thresholded connected components of the smoothed image, not by
the FFN: the machinery around the segmenter is what could grow with the volume (the FFN's
own memory depends only on the block size), and an FFN pass over 512^3 voxels takes hours on
two cores. Writes benchmarks/results/blockwise_memory.json. Takes a few minutes.
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


class ThresholdSegmenter:
    """Bright cell interiors, 6-connected, as block-local ids: a cheap stand-in for the FFN.

    It also takes hand-over seeds (``extend``), so the job runs its hand-over rounds (seeds
    from the neighbours' blocks, per-round block files) as it does with the FFN.
    """

    context = (8, 8, 8)  # read image context around each block, like the FFN's half FOV

    @staticmethod
    def _components(image: np.ndarray) -> np.ndarray:
        import cc3d
        from scipy import ndimage

        smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
        return cc3d.connected_components(smooth > 140, connectivity=6)

    def __call__(self, image: np.ndarray, block, corner) -> tuple[np.ndarray, dict]:
        return self._components(image)[block.to_slices()], {"fov_evaluations": 0}

    def extend(self, image: np.ndarray, block, corner, segmentation: np.ndarray, seeds: np.ndarray):
        """Give each seed's bright component among the block's unsegmented voxels a new id."""
        from neuroflood.infer.block_segmenter import Extension

        seg = segmentation.astype(np.int64)
        free = np.where(seg == 0, self._components(image)[block.to_slices()], 0)
        seeded_from = {}
        for k, seed in enumerate(np.asarray(seeds) - np.asarray(corner) - np.asarray(block.start)):
            inside = all(0 <= v < n for v, n in zip(seed, seg.shape))
            if inside and free[tuple(seed)] and seg[tuple(seed)] == 0:
                new = int(seg.max()) + 1
                seg[free == free[tuple(seed)]] = new
                seeded_from[new] = k
        return Extension(seg, {"fov_evaluations": 0}, seeded_from)


def make_image(spec: str, size: int, tile: int = 128, seed: int = 0) -> None:
    """A synthetic EM image of size^3, written tile by tile (tiles are independent volumes)."""
    from tqdm import tqdm

    from neuroflood.bbox import BoundingBox
    from neuroflood.prepare.partitions import iter_blocks
    from neuroflood.synthetic import make_em_volume
    from neuroflood.volume import create_volume

    vol = create_volume(spec, (size,) * 3, "uint8", chunks=(tile,) * 3)
    boxes = list(iter_blocks(BoundingBox.from_shape((size,) * 3), (tile,) * 3))
    for k, box in enumerate(tqdm(boxes, desc=f"image {size}^3", unit="tile")):
        image, _ = make_em_volume(tuple(box.size), seed=seed + k)
        vol.write(box, image)


def worker(args: argparse.Namespace) -> None:
    """One rank of the job; writes its peak RSS to ``args.report``."""
    import torch

    from neuroflood.bbox import BoundingBox
    from neuroflood.distributed import cleanup, init_distributed
    from neuroflood.infer.blockwise import run_blockwise_job as segment_blockwise
    from neuroflood.volume import open_volume

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    t0 = time.time()
    image = open_volume(args.image)
    block = tuple(int(v) for v in args.block.split(","))
    result = segment_blockwise(
        args.out,
        image,
        BoundingBox.from_shape(image.shape),
        block,
        (16, 16, 16),
        ThresholdSegmenter(),
        {"benchmark": "blockwise_memory"},
        info,
        progress=False,
    )
    handover = [json.loads(p.read_text()) for p in Path(args.out).parent.glob(".*.work/handover/*/*.done")]
    report = {
        "rank": info.rank,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "seconds": time.time() - t0,
        "blocks_run": len(result.blocks_run),
        "segments": result.segments,
        "handover_seeds": sum(result.handover_seeds),
        "handover_new_objects": sum(d["new_segments"] for d in handover),
    }
    Path(f"{args.report}.{info.rank}").write_text(json.dumps(report))
    cleanup()


def run_job(image: str, out: str, block: str, workers: int, report: str) -> list[dict]:
    """Start ``workers`` fresh processes of this script (gloo over localhost); return their reports."""
    from neuroflood.distributed import free_port, local_rank_env

    port = free_port()
    cmd = [sys.executable, __file__, "--worker", "--image", image, "--out", out, "--block", block, "--report", report]
    procs = [subprocess.Popen(cmd, env=local_rank_env(rank, workers, port)) for rank in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes})")
    return [json.loads(Path(f"{report}.{r}").read_text()) for r in range(workers)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,512", help="volume edge lengths to compare (default: 256,512)")
    p.add_argument("--block", default="128,128,128", help="block size z,y,x (default: 128,128,128)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--scratch", default=None, help="where the volumes go (default: a temporary directory)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "blockwise_memory.json"))
    # internal: one worker of a job
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="nf-bwmem-"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            image = f"{scratch}/image{size}.zarr/image"
            if not Path(image).exists():
                make_image(image, size)
            out = f"{scratch}/seg{size}.zarr/seg"
            shutil.rmtree(f"{scratch}/seg{size}.zarr", ignore_errors=True)
            t0 = time.time()
            reports = run_job(image, out, args.block, args.workers, f"{scratch}/report{size}")
            row = {
                "size": size,
                "voxels": size**3,
                "seconds": round(time.time() - t0, 1),
                "peak_rss_gb_per_worker": [round(r["peak_rss_gb"], 3) for r in sorted(reports, key=lambda r: r["rank"])],
                "blocks_run_per_worker": [r["blocks_run"] for r in sorted(reports, key=lambda r: r["rank"])],
                "segments": max(r["segments"] for r in reports),
                "handover_seeds": max(r["handover_seeds"] for r in reports),
                "handover_new_objects": max(r["handover_new_objects"] for r in reports),
            }
            rows.append(row)
            print(json.dumps(row))
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    peak = [max(r["peak_rss_gb_per_worker"]) for r in rows]
    result = {
        "benchmark": "blockwise_memory",
        "block": args.block,
        "workers": args.workers,
        "rows": rows,
        "ratio_largest_to_smallest": round(peak[-1] / peak[0], 3) if len(peak) > 1 else None,
        "target_ratio": 1.5,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    sizes = ", ".join(f"{r['size']}^3 {gb:.3f} GB" for r, gb in zip(rows, peak))
    print(f"peak RSS per worker: {sizes}; ratio {result['ratio_largest_to_smallest']} (target <= 1.5) -> {args.out}")


if __name__ == "__main__":
    main()
