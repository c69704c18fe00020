"""Batched inference on CPU: FOVs/s against the batch size, per network and precision.

    .venv/bin/python benchmarks/batched_inference.py [--threads 2] [--batches 1,2,4,8,16]
        [--networks demo,fib25] [--precisions float32,bfloat16] [--seconds 10]
        [--model DIR --image SPEC --block-size 32,32,32]

Two measurements, each printed and written to benchmarks/results/batched_inference.json:

- ``executor``: the network behind the batched executor, fed by K Canvas threads (K = the
  batch size) that each ask for FOVs one after the other, as blockwise segmentation with
  ``--batch K`` does. Random weights (speed does not depend on them), random FOVs. FOVs/s
  at batch 1 is today's one-FOV-at-a-time path (the local executor). ``demo`` is the demo's
  network (depth 4, 16 features, FOV 11³), ``fib25`` the published FIB-25 geometry (depth
  12, 32 features, FOV 33³).
- ``blockwise`` (with ``--model`` and ``--image``): blockwise segmentation of that image with
  that network at each batch size, and one subvolume (today's path): FOVs, seconds, FOVs/s,
  and adapted Rand of each against the batch-1 blockwise result (0: identical).

Each setting runs for about ``--seconds`` (after a warm-up). Run it on a quiet machine: the
numbers are wall-clock throughput.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "demo": "depth=4,features=16,fov=11,11,11,deltas=3,3,3",
    "fib25": "depth=12,features=32,fov=33,33,33,deltas=8,8,8",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (set once at start)")
    p.add_argument("--batches", default="1,2,4,8,16", help="batch sizes (= Canvases in flight)")
    p.add_argument("--networks", default="demo,fib25", help=f"network geometries: {', '.join(NETWORKS)} or depth=...,fov=... specs")
    p.add_argument("--precisions", default="float32", help="float32 and/or bfloat16 (bf16 only where the CPU has it)")
    p.add_argument("--seconds", type=float, default=10.0, help="time per setting (executor measurement)")
    p.add_argument("--model", default=None, help="a trained network for the blockwise measurement (e.g. the demo's)")
    p.add_argument("--image", default=None, help="image volume spec for the blockwise measurement")
    p.add_argument("--bbox", default=None, help="box of --image (default: all of it)")
    p.add_argument("--block-size", default="32,32,32", help="blocks of the blockwise measurement")
    p.add_argument("--min-segment-size", type=int, default=1000, help="options.min_segment_size (the demo uses 300)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batched_inference.json"))
    return p.parse_args()


def executor_throughput(model: torch.nn.Module, batch: int, precision: str, seconds: float) -> dict:
    """FOVs/s of ``batch`` threads asking the executor for one FOV after another."""
    from neuroflood.infer.executor import make_executor

    fov = tuple(model.config.fov_size)
    rng = np.random.default_rng(0)
    image = rng.normal(size=fov).astype(np.float32)
    seed = np.full(fov, -2.944439, np.float32)
    executor = make_executor(model, batch, "cpu", precision)
    stop = threading.Event()
    counts = [0] * batch
    clients = [executor.client() for _ in range(batch)]

    def ask(k: int) -> None:
        client = clients[k]
        try:
            while not stop.is_set():
                client.predict(image, seed)
                counts[k] += 1
        finally:
            if client is not executor:
                client.close()

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(batch)]
    for t in threads:
        t.start()
    time.sleep(min(1.0, seconds / 4))  # warm-up: oneDNN picks its kernels
    fovs0, stats0, t0 = sum(counts), executor.stats(), time.perf_counter()
    time.sleep(seconds)
    fovs, stats, wall = sum(counts) - fovs0, executor.stats(), time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    executor.close()
    return {
        "batch": batch,
        "fovs": fovs,
        "seconds": wall,
        "fovs_per_s": fovs / wall,
        "mean_batch": (stats["fovs"] - stats0["fovs"]) / max(stats["batches"] - stats0["batches"], 1),
        "network_seconds": stats["network_seconds"] - stats0["network_seconds"],
    }


def blockwise_sweep(args: argparse.Namespace, batches: list[int], precision: str) -> list[dict]:
    """Blockwise segmentation of --image at each batch size, and one subvolume, with --model."""
    import tempfile

    from neuroflood.bbox import BoundingBox
    from neuroflood.config import parse_ints
    from neuroflood.distributed import DistInfo
    from neuroflood.infer import blockwise
    from neuroflood.infer.block_segmenter import FFNBlockSegmenter
    from neuroflood.infer.block_threads import run_phase_threads
    from neuroflood.infer.config import InferenceRequest
    from neuroflood.infer.segment import segment_subvolume
    from neuroflood.model import load_model
    from neuroflood.volume import open_volume

    model = load_model(args.model)
    image = open_volume(args.image)
    box = BoundingBox.parse(args.bbox) if args.bbox else BoundingBox.from_shape(image.shape)
    block = parse_ints(args.block_size, 3, "--block-size")
    # the default overlap when docs/benchmarks.md's results were measured (now fov//2 + delta)
    overlap = tuple(2 * (f // 2 + d) for f, d in zip(model.config.fov_size, model.config.deltas))
    if "run_phase_threads" not in vars(blockwise):  # until blockwise.py runs blocks in threads itself
        threads = {"n": 1}
        blockwise.run_phase = lambda phase, info, key, tick=lambda: None: run_phase_threads(phase, info, key, tick, threads["n"])
    base = {"checkpoint_interval": 0, "precision": precision, "options": {"min_segment_size": args.min_segment_size}}
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for k in batches:
            if "run_phase_threads" not in vars(blockwise):
                threads["n"] = k
            request = InferenceRequest.model_validate({**base, "batch_size": k})
            segmenter = FFNBlockSegmenter(model, request, job_box=box)
            out = f"{tmp}/b{k}.zarr/seg"
            t0 = time.perf_counter()
            result = blockwise.run_blockwise_job(out, image, box, block, overlap, segmenter, {"k": k}, DistInfo(), progress=False)
            wall = time.perf_counter() - t0
            seg = open_volume(out)[...]
            first = seg if first is None else first
            rows.append(_row(f"blockwise batch {k}", result.fov_evaluations, wall, result.segments, _are(seg, first), segmenter.stats()))
        request = InferenceRequest.model_validate(base)
        t0 = time.perf_counter()
        one = segment_subvolume(model, image[box.to_slices()], request, corner=box.start)
        wall = time.perf_counter() - t0
        rows.append(_row("one subvolume", one.fov_evaluations, wall, one.segments, _are(one.segmentation, first), None))
    return rows


def _are(seg: np.ndarray, reference: np.ndarray) -> float | None:
    """Adapted Rand of ``seg`` against ``reference`` (None if the reference segmented nothing)."""
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics

    if not reference.any():
        return None
    return segmentation_metrics(contingency_table(seg, reference))["adapted_rand_error"]


def _row(what: str, fovs: int, wall: float, segments: int, are: float | None, stats: dict | None) -> dict:
    row = {"run": what, "fovs": int(fovs), "seconds": wall, "fovs_per_s": fovs / wall, "segments": int(segments)}
    row["adapted_rand_vs_blockwise_batch_1"] = are
    if stats and stats["batches"]:
        row["mean_batch"] = stats["fovs"] / stats["batches"]
    print(f"  {what:20s} {fovs:7d} FOVs {wall:8.1f} s {row['fovs_per_s']:8.1f} FOVs/s  {segments} segments  aRand vs batch 1 {are}")
    return row


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from neuroflood.config import ModelConfig
    from neuroflood.model import build_model
    from neuroflood.precision import check_precision

    batches = [int(b) for b in args.batches.split(",")]
    precisions = [check_precision(p, "cpu") for p in args.precisions.split(",")]
    results: dict = {"executor": [], "blockwise": []}
    for name in args.networks.split(","):
        model = build_model(ModelConfig.parse_spec(NETWORKS.get(name, name)), seed=0)
        for precision in precisions:
            base = None
            for b in batches:
                row = {"network": name, "precision": precision, **executor_throughput(model, b, precision, args.seconds)}
                base = base or row["fovs_per_s"]
                row["speedup_vs_batch_1"] = row["fovs_per_s"] / base
                results["executor"].append(row)
                print(
                    f"{name:6s} {precision} batch {b:3d}: {row['fovs_per_s']:9.1f} FOVs/s ({row['speedup_vs_batch_1']:.2f}x), "
                    f"mean batch {row['mean_batch']:.1f}"
                )
    if args.model and args.image:
        for precision in precisions:
            print(f"blockwise, {precision}:")
            results["blockwise"] += [{"precision": precision, **r} for r in blockwise_sweep(args, batches, precision)]
    out = {
        "benchmark": "batched_inference",
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "torch": torch.__version__,
        "networks": {n: NETWORKS.get(n, n) for n in args.networks.split(",")},
        **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
