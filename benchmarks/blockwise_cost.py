"""Where blockwise segmentation's cost goes, against one subvolume, on a synthetic volume.

    .venv/bin/python benchmarks/blockwise_cost.py --model DIR [--shape 256,256,256]
        [--blocks 64,96,128] [--overlaps default,8,4] [--two-workers 128:default] [--seeds 0]

``--model``: a native checkpoint directory (e.g. the demo's ``train/checkpoints/step-N/model``),
or ``oracle``: the seam test's oracle network (tests/test_blockwise_seam.py) on its coded
image, fast enough to sweep the overlap over many volumes. The volume is ``make_em_volume``
with the demo's settings (density 2, noise 5; for the oracle, the seam test's coded image of
it), segmented with the demo's request (PolicyPeaks, min_segment_size 300; for the oracle the
seam test's). For each volume seed it runs one subvolume over the whole volume, then every
(block size, overlap) on one worker, and ``--two-workers`` configurations again on 2 workers;
every run is its own process(es) at one thread each, so the wall times compare.

Per run, JSON with: FOV evaluations, and where they went (blocks: centred in the core, in the
margins its neighbours repeat, outside the box; FOVs of objects the Canvas rejected, of objects
with no voxel in the block's core; hand-over rounds), image voxels read, wall seconds and the job's seconds per step (blocks, hand-over,
reconciliation, output), and the seam error as benchmarks/blockwise_seams.py measures it
(adapted Rand and VI against the one-subvolume result, objects split at block faces, those the
face itself separates, and of those the ones whose two pieces each hold ≥ 1 % of the object),
the face-made splits of ground-truth objects beside one subvolume's on the same planes (the
chance level), each against the one-subvolume run (ratios). FOVs and voxels read do
not depend on the machine's load; seconds do. Writes benchmarks/results/blockwise_cost.json.
Cost: about 15 one-subvolume runs with the defaults; run it on a quiet machine.

``--keep DIR`` saves each seed's volume and one-subvolume run (segmentation and summary with its
wall seconds) in ``DIR/seed-S/``; ``--reuse DIR`` takes them from there instead of running the
one subvolume again (same shape and model; the wall seconds are those of the earlier run, so
reuse only a run of the same quiet session). The one-subvolume run of a 256³ volume takes
20+ minutes here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DEMO_REQUEST = {"options": {"min_segment_size": 300}}  # `neuroflood demo`'s segment step
DEMO_SYNTH = {"density": 2.0, "noise": 5.0}  # `neuroflood demo`'s synth arguments
SUBSTANTIAL = 0.01  # a face-made split counts as substantial when both pieces hold >= 1 % of the object


def load(model: str):
    if model == "oracle":
        import test_blockwise_seam as seam

        return seam.OracleFFN()
    from neuroflood.model import load_model

    return load_model(model)


def make_volume(path: str, shape: tuple[int, ...], seed: int, oracle: bool) -> None:
    """The image and labels at ``path`` (HDF5): the demo's synthetic data, or the seam test's coded image."""
    from neuroflood.synthetic import make_em_volume
    from neuroflood.volume import write_volume

    if oracle:
        import test_blockwise_seam as seam

        image, labels = seam.coded_image(seed, shape)
    else:
        image, labels = make_em_volume(shape, seed=seed, **DEMO_SYNTH)
    write_volume(f"{path}:image", image)
    write_volume(f"{path}:labels", labels)


def child(spec: dict) -> None:
    """One run, in this process (one rank of a blockwise job, or the one-subvolume run)."""
    import torch

    torch.set_num_threads(1)
    model = load(spec["model"])
    if spec["kind"] == "single":
        from neuroflood.infer.block_segmenter import counters_of, fov_recorder
        from neuroflood.infer.segment import segment_subvolume
        from neuroflood.volume import open_volume, write_volume

        image = open_volume(spec["image"])[...]
        centres: list = []
        result = segment_subvolume(model, image, spec["request"], callback=fov_recorder(centres))
        write_volume(spec["out"], result.segmentation)
        counters = counters_of(result)
        summary = {
            "fov_evaluations": counters["fov_evaluations"],
            "fov_rejected": counters["fov_rejected"],
            "voxels_read": int(image.size),
            "segments": int(counters.get("segments_created", 0)),
        }
        Path(spec["summary"]).write_text(json.dumps(summary))
        return
    from neuroflood.infer import segment_blockwise

    segment_blockwise(
        model,
        spec["image"],
        spec["out"],
        request=spec["request"],
        block_size=spec["block"],
        overlap=spec["overlap"],
        progress=False,
        summary_path=spec["summary"],
    )


def launch(spec: dict, workers: int) -> dict:
    """Run ``spec`` on ``workers`` processes of one thread each; its summary and wall seconds."""
    from neuroflood.distributed import free_port, local_rank_env

    port = free_port()
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    t0 = time.time()
    procs = [subprocess.Popen(cmd, env=local_rank_env(rank, workers, port, threads=1)) for rank in range(workers)]
    codes = [p.wait() for p in procs]
    seconds = time.time() - t0
    if any(codes):
        raise SystemExit(f"run {spec['kind']} {spec.get('block')} exited with {codes}")
    return {**json.loads(Path(spec["summary"]).read_text()), "wall_seconds": round(seconds, 1), "workers": workers}


def seam_error(one: np.ndarray, stitched: np.ndarray, labels: np.ndarray, stride: tuple[int, ...]) -> dict:
    """benchmarks/blockwise_seams.py's measures of a stitched result against one subvolume, and
    the face-made splits against the ground truth beside those of one subvolume on the same
    planes (its faces are no faces: what chance gives there)."""
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
    from neuroflood.infer.reconcile import face_splits

    vs_one = segmentation_metrics(contingency_table(stitched, one))
    vs_gt = segmentation_metrics(contingency_table(stitched, labels))

    def seams(reference: np.ndarray, seg: np.ndarray, min_fraction: float = 0.0) -> int:
        return len(face_splits(reference, seg, stride, seams_only=True, min_fraction=min_fraction))

    return {
        "adapted_rand_vs_one": round(vs_one["adapted_rand_error"], 4),
        "vi_vs_one": round(vs_one["vi"], 4),
        "face_splits": len(face_splits(one, stitched, stride)),
        "seams": seams(one, stitched),
        # both pieces hold at least 1 % of the object: not a boundary voxel or two
        "seams_1pct": seams(one, stitched, SUBSTANTIAL),
        "adapted_rand_vs_ground_truth": round(vs_gt["adapted_rand_error"], 4),
        "false_merges_vi": round(vs_gt["vi_merge_segmented"], 4),
        "gt_seams": seams(labels, stitched),
        "gt_seams_1pct": seams(labels, stitched, SUBSTANTIAL),
        "one_subvolume_gt_seams": seams(labels, one),
        "one_subvolume_gt_seams_1pct": seams(labels, one, SUBSTANTIAL),
    }


def size(text: str) -> tuple[int, int, int]:
    """'64' -> (64, 64, 64); '36x44x44' -> (36, 44, 44)."""
    v = [int(x) for x in text.split("x")]
    return (v[0],) * 3 if len(v) == 1 else tuple(v)


def ratios(run: dict, single: dict) -> dict:
    return {
        "fovs": round(run["fov_evaluations"] / single["fov_evaluations"], 3),
        "voxels_read": round(run["voxels_read"] / single["voxels_read"], 3),
        "wall_seconds": round(run["wall_seconds"] / single["wall_seconds"], 3),
    }


def blockwise_row(summary: dict, single: dict, seams: dict, block: tuple, overlap: int, blocks: int) -> dict:
    cost = summary["cost"]
    handover = cost["handover_fov_evaluations"]
    row = {
        "block": list(block),
        "overlap": overlap,
        "blocks": blocks,
        "workers": summary["workers"],
        "fov_evaluations": summary["fov_evaluations"],
        "fovs": {
            "core": cost["blocks_fov_core"],
            "margin": cost["blocks_fov_margin"],
            "outside_box": cost["blocks_fov_context"],
            "rejected_objects": cost["blocks_fov_rejected"],
            "objects_outside_core": cost["blocks_fov_outside_core"],
            "handover": handover,
            "handover_rejected_objects": cost["handover_fov_rejected"],
        },
        "voxels_read": cost["blocks_voxels_read"] + cost["handover_voxels_read"],
        "voxels_read_handover": cost["handover_voxels_read"],
        "handover_seeds": summary["handover_seeds"],
        "wall_seconds": summary["wall_seconds"],
        "phase_seconds": summary["phase_seconds"],
        "seed_policy_seconds": cost["blocks_seed_policy_seconds"],
        "read_seconds": cost["read_seconds"],
        "segment_seconds_all_blocks": round(summary["segment_seconds_all_blocks"], 1),
        "segments": summary["segments"],
        "seam_error": seams,
    }
    return {**row, "vs_single": ratios(row, single)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a native checkpoint directory (the demo network), or 'oracle'")
    p.add_argument("--shape", default="256,256,256", help="synthetic volume z,y,x")
    p.add_argument("--seeds", default="0", help="volume seeds, comma-separated")
    p.add_argument("--blocks", default="64,96,128", help="block sizes, comma-separated: N (a cube) or ZxYxX")
    p.add_argument("--cores", default="", help="core sizes (N or ZxYxX), each run as blocks of core + overlap")
    p.add_argument("--overlaps", default="default,8,4", help="overlaps (cubes; 'default': fov//2 + delta, the blockwise default)")
    p.add_argument("--two-workers", default="128:default", help="BLOCK:OVERLAP runs repeated on 2 workers ('' : none)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "blockwise_cost.json"))
    p.add_argument("--keep", metavar="DIR", help="save each seed's volume and one-subvolume run in DIR/seed-S/")
    p.add_argument("--reuse", metavar="DIR", help="take them from DIR/seed-S/ (written by --keep) instead of running them")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if args.keep and args.reuse:
        p.error("--keep and --reuse exclude each other: --reuse already takes the kept runs")
    if args.keep and any((Path(args.keep) / f"seed-{s}").exists() for s in args.seeds.split(",")):
        p.error(f"{args.keep} already holds a seed-S folder; --keep writes only new ones (choose another DIR)")
    if not args.model:
        p.error("--model is required: a native checkpoint directory (e.g. a demo's train/checkpoints/step-N/model) or 'oracle'")

    from neuroflood.bbox import BoundingBox
    from neuroflood.infer.blocks import BlockGrid, default_overlap
    from neuroflood.volume import open_volume

    oracle = args.model == "oracle"
    if oracle:
        import test_blockwise_seam as seam

        request = seam.REQUEST
    else:
        request = DEMO_REQUEST
    cfg = load(args.model).config
    default = default_overlap(cfg.fov_size, cfg.deltas)[0]
    shape = tuple(int(v) for v in args.shape.split(","))
    overlaps = [default if o == "default" else int(o) for o in args.overlaps.split(",")]
    # (block box z,y,x, overlap, workers); a core size C gives blocks of C + overlap
    configs = [(size(b), o, 1) for b in filter(None, args.blocks.split(",")) for o in overlaps]
    configs += [(tuple(c + o for c in size(c3)), o, 1) for c3 in filter(None, args.cores.split(",")) for o in overlaps]
    for pair in filter(None, args.two_workers.split(",")):
        b, o = pair.split(":")
        configs.append((size(b), default if o == "default" else int(o), 2))
    model = str(Path(args.model).resolve()) if not oracle else "oracle"
    volumes = []
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="nf-bwcost-") as tmp:
            saved = Path(args.reuse) / f"seed-{seed}" if args.reuse else Path(tmp)
            h5 = f"{saved}/volume.h5"
            base = {"model": model, "image": f"{h5}:image", "request": request}
            if args.reuse:
                if not (saved / "single_run.json").is_file():
                    raise SystemExit(f"{saved} holds no run of --keep; run once with --keep {args.reuse}")
                single = json.loads((saved / "single_run.json").read_text())
                if open_volume(f"{h5}:image").shape != shape or single.pop("model", model) != model:
                    raise SystemExit(f"{saved} holds another shape or model's run; run without --reuse")
            else:
                make_volume(h5, shape, seed, oracle)
                single = launch({**base, "kind": "single", "out": f"{tmp}/single.h5:seg", "summary": f"{tmp}/single.json"}, 1)
                if args.keep:
                    keep = Path(args.keep) / f"seed-{seed}"
                    keep.mkdir(parents=True, exist_ok=True)
                    (keep / "single_run.json").write_text(json.dumps({**single, "model": model}))
                    for name in ("volume.h5", "single.h5"):
                        shutil.copy2(Path(tmp) / name, keep / name)
            labels = open_volume(f"{h5}:labels")[...]
            one = open_volume(f"{saved}/single.h5:seg")[...].astype(np.uint64)
            print(json.dumps({"seed": seed, "single": single}), flush=True)
            rows = []
            for k, (block, overlap, workers) in enumerate(configs):
                out = f"{tmp}/b{k}.zarr/seg"
                spec = {**base, "kind": "blocks", "out": out, "block": list(block), "overlap": [overlap] * 3}
                summary = launch({**spec, "summary": f"{tmp}/b{k}.json"}, workers)
                grid = BlockGrid(BoundingBox.from_shape(shape), block, [overlap] * 3)
                seams = seam_error(one, open_volume(out)[...].astype(np.uint64), labels, grid.stride)
                rows.append(blockwise_row(summary, single, seams, block, overlap, len(grid)))
                print(json.dumps(rows[-1]), flush=True)
            volumes.append({"seed": seed, "single": single, "blockwise": rows})
    result = {
        "benchmark": "blockwise_cost",
        "model": args.model,
        "fov_size": list(cfg.fov_size),
        "deltas": list(cfg.deltas),
        "default_overlap": default,
        "shape": list(shape),
        "request": request,
        "threads_per_worker": 1,
        "volumes": volumes,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
