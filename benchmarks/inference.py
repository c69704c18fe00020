"""End-to-end inference speed: the published FIB-25 model on a crop of training_sample2.

    .venv/bin/python benchmarks/inference.py [--threads 2] [--size 100] [--precision fp32]

Segments the ``size``³ crop at the origin with the reference settings (PolicyPeaks, FIB-25
options) and reports seconds per FOV end to end (seed policy, canvas work, network), the
network's share, and process CPU seconds per FOV (less disturbed by other load than wall
time). Reference: google/ffn needs 0.396 s per FOV on a 2-core CPU of this kind; the target
is <= 0.28 s. Writes benchmarks/results/inference.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

from neuroflood.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE_S_PER_FOV = 0.396
TARGET_S_PER_FOV = 0.28


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (set once at start)")
    p.add_argument("--size", type=int, default=100, help="edge of the cubic crop at the origin")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="network arithmetic")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import h5py

    from neuroflood.infer import LocalExecutor, segment_subvolume
    from neuroflood.model import load_model

    model = load_model(SHARED / "models" / "fib25" / "model.ckpt-27465036")
    with h5py.File(SHARED / "data" / "fib25" / "training_sample2.h5", "r") as f:
        image = f["image"][: args.size, : args.size, : args.size]
    executor = LocalExecutor(model, args.device, precision=args.precision)
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    result = segment_subvolume(model, image, {"precision": args.precision}, executor=executor)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    load_after = os.getloadavg()
    fovs = result.fov_evaluations
    net = executor.stats()["network_seconds"]
    record = {
        "benchmark": "inference",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "device": str(executor.runner.device),
        "threads": args.threads,
        "precision": args.precision,
        "crop": [args.size] * 3,
        "fov_evaluations": fovs,
        "segments": result.segments,
        "unsegmented_fraction": round(result.unsegmented_fraction, 4),
        "seconds": round(wall, 2),
        "seconds_per_fov": round(wall / fovs, 4),
        "network_seconds_per_fov": round(net / fovs, 4),
        "other_seconds_per_fov": round((wall - net) / fovs, 4),
        "cpu_seconds_per_fov": round(cpu / fovs, 4),
        "cpu_seconds_per_fov_per_thread": round(cpu / fovs / args.threads, 4),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "reference_seconds_per_fov": REFERENCE_S_PER_FOV,
        "target_seconds_per_fov": TARGET_S_PER_FOV,
        "counters": result.counters,
    }
    print(json.dumps(record, indent=2))
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
