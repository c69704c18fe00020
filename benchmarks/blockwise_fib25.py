"""Blockwise against single-subvolume segmentation of a FIB-25 crop with the published model.

    .venv/bin/python benchmarks/blockwise_fib25.py [--bbox 0,0,0:100,100,100] [--block 74,74,74] [--overlap 24,24,24] [--keep DIR]

Runs ``neuroflood segment`` twice on the same crop of ../shared/data/fib25/training_sample2.h5
with the published google/ffn FIB-25 checkpoint and the reference inference settings: once as
one subvolume (2 threads), once in blocks on 2 workers (1 thread each), reconciled into one
segmentation. Reports adapted Rand error and VI of the blockwise result against the single
one, the objects split at block faces, both against the ground truth, and an audit of the
joins (objects joined across blocks whose pieces belong to different ground-truth objects, and
the merge VI before any join, i.e. the blocks' own merges). Writes
benchmarks/results/blockwise_fib25.json. The defaults (2x2x2 blocks over the 100^3 crop,
overlap 24, half the default 48) take about 15 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
H5 = SHARED / "data" / "fib25" / "training_sample2.h5"
CKPT = SHARED / "models" / "fib25" / "model.ckpt-27465036"


def _segment(argv: list[str]) -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "neuroflood", "segment", "--no-progress", *argv], check=True)
    return time.time() - t0


def join_audit(cores: np.ndarray, mapping, gt: np.ndarray) -> dict:
    """Tell merges made inside blocks from merges made by joining pieces across blocks.

    ``cores`` holds the block ids before reconciliation (every piece its own object). A joined
    object is *false* when its pieces' majority ground-truth objects differ.
    """
    from neuroflood.evaluate.metrics import contingency_table, majority_maps, segmentation_metrics

    table = contingency_table(cores, gt)
    (piece_ids, main_gt), _ = majority_maps(table)  # each piece's main ground-truth object
    majority = dict(zip(piece_ids.tolist(), main_gt.tolist()))
    groups: dict[int, set] = {}
    pieces: dict[int, int] = {}
    for block_id, global_id in zip(mapping["block_ids"].tolist(), mapping["global_ids"].tolist()):
        pieces[global_id] = pieces.get(global_id, 0) + 1
        if block_id in majority:
            groups.setdefault(global_id, set()).add(majority[block_id])
    joined = [g for g, n in pieces.items() if n > 1]
    return {
        "joined_objects": len(joined),
        "false_joined_objects": sum(len(groups.get(g, ())) > 1 for g in joined),
        "vi_merge_before_joins": segmentation_metrics(table)["vi_merge"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bbox", default="0,0,0:100,100,100")
    p.add_argument("--block", default="74,74,74")
    p.add_argument("--overlap", default="24,24,24")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "blockwise_fib25.json"))
    p.add_argument("--keep", metavar="DIR", help="write both segmentations (and the blocks' work files) here and keep them")
    args = p.parse_args()

    from neuroflood.bbox import BoundingBox
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
    from neuroflood.infer.blocks import BlockGrid
    from neuroflood.infer.reconcile import face_splits
    from neuroflood.volume import open_volume

    box = BoundingBox.parse(args.bbox)
    grid = BlockGrid(BoundingBox.from_shape(box.size), [int(v) for v in args.block.split(",")], [int(v) for v in args.overlap.split(",")])
    common = ["--model", str(CKPT), "--image", f"{H5}:image", "--bbox", args.bbox]
    with tempfile.TemporaryDirectory(prefix="nf-bwfib-") as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        t_single = _segment([*common, "--out", f"{tmp}/single.zarr/seg", "--threads", "2", "--summary", f"{tmp}/single.json"])
        t_blocks = _segment(
            [
                *common,
                "--out",
                f"{tmp}/blocks.zarr/seg",
                "--block-size",
                args.block,
                "--overlap",
                args.overlap,
                "--nproc-per-node",
                "2",
                "--threads",
                "1",
                "--summary",
                f"{tmp}/blocks.json",
            ]
        )
        single = open_volume(f"{tmp}/single.zarr/seg")[...].astype(np.uint64)
        blocks = open_volume(f"{tmp}/blocks.zarr/seg")[...].astype(np.uint64)
        s_single = json.loads(Path(f"{tmp}/single.json").read_text())
        s_blocks = json.loads(Path(f"{tmp}/blocks.json").read_text())
        gt = open_volume(f"{H5}:labels")[box.to_slices()]
        work = Path(tmp) / "blocks.zarr" / ".seg.work"
        joins = join_audit(open_volume(f"{work}/cores.zarr")[...].astype(np.uint64), np.load(work / "mapping.npz"), gt)
    vs_single = segmentation_metrics(contingency_table(blocks, single))
    pick = ("adapted_rand_error", "vi", "vi_split", "vi_merge", "n_segments", "segmented_fraction")
    result = {
        "benchmark": "blockwise_fib25",
        "bbox": args.bbox,
        "block": args.block,
        "overlap": args.overlap,
        "blocks": len(grid),
        "single": {"seconds": round(t_single, 1), **{k: s_single[k] for k in ("fov_evaluations", "segments", "unsegmented_fraction")}},
        "blockwise": {
            "seconds": round(t_blocks, 1),
            **{
                k: s_blocks[k]
                for k in (
                    "fov_evaluations",
                    "segments",
                    "unsegmented_fraction",
                    "joins",
                    "handover_rounds",
                    "handover_seeds",
                    "handover_segments",
                )
            },
        },
        "blockwise_vs_single": {k: vs_single[k] for k in pick},
        "objects_split_at_faces": len(face_splits(single, blocks, grid.stride)),
        "objects_split_by_the_face_itself": len(face_splits(single, blocks, grid.stride, seams_only=True)),
        "single_vs_ground_truth": {k: v for k, v in segmentation_metrics(contingency_table(single, gt)).items() if k in pick},
        "blockwise_vs_ground_truth": {k: v for k, v in segmentation_metrics(contingency_table(blocks, gt)).items() if k in pick},
        "join_audit": joins,
        "machine": f"{os.cpu_count()}-core CPU",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
