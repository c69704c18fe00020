"""CPU bf16 against float32: the published FIB-25 model on a crop of training_sample2.

    .venv/bin/python benchmarks/precision_cpu.py [--size 100] [--threads 2] [--precisions fp32,bf16]
        [--noise-runs K --noise-std 4e-6]

Segments the ``size``³ crop at the origin with the reference settings once per precision and
reports, per precision, seconds per FOV end to end, FOVs and segments; for bf16 also the
adapted Rand error against the float32 segmentation (both ways round) and, for both, against
the ground truth of the crop. Issue #20's target: bf16 ≤ 0.16 s per FOV on the 100³ crop
(float32: 0.24) with adapted Rand ≤ 0.02 against float32 and no worse against ground truth.

``--noise-runs K`` adds K float32 runs whose logits get Gaussian noise of ``--noise-std``
(default 4e-6, how far the TensorFlow golden outputs and neuroflood's float32 ones differ),
each with its own noise seed: a control for how far *any* other correct float32
implementation lands from this one on the crop, i.e. the floor under bf16's difference.
Writes benchmarks/results/precision_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from neuroflood.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


class NoisyLogits:
    """An executor whose logits get seeded Gaussian noise: another float32 implementation's
    rounding, in effect (the noise is far below what bf16 changes)."""

    def __init__(self, executor, std: float, seed: int):
        self.executor, self.std = executor, std
        self.rng = np.random.default_rng(seed)

    def predict(self, image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        logits = self.executor.predict(image, seed)
        return logits + self.rng.normal(0.0, self.std, logits.shape).astype(np.float32)

    def stats(self) -> dict:
        return self.executor.stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100, help="edge of the cubic crop at the origin")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--precisions", default="fp32,bf16", help="precisions to run, comma-separated")
    p.add_argument("--noise-runs", type=int, default=0, help="float32 runs with noise on the logits (a control)")
    p.add_argument("--noise-std", type=float, default=4e-6, help="standard deviation of that noise, in logits")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision_cpu.json"))
    args = p.parse_args()
    import h5py
    import torch

    torch.set_num_threads(args.threads)
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
    from neuroflood.infer import LocalExecutor, segment_subvolume
    from neuroflood.model import load_model
    from neuroflood.precision import cpu_bf16_support

    model = load_model(SHARED / "models" / "fib25" / "model.ckpt-27465036")
    crop = (slice(0, args.size),) * 3
    with h5py.File(SHARED / "data" / "fib25" / "training_sample2.h5", "r") as f:
        image, labels = f["image"][crop], f["labels"][crop]

    def rand(seg, truth) -> float:
        return round(float(segmentation_metrics(contingency_table(seg, truth))["adapted_rand_error"]), 4)

    runs, segs = {}, {}
    # (name, precision, noise seed or None)
    todo = [(s.strip(), s.strip(), None) for s in args.precisions.split(",") if s.strip()]
    todo += [(f"fp32+noise{k}", "fp32", k) for k in range(args.noise_runs)]
    for name, precision, noise_seed in todo:
        executor = LocalExecutor(model, "cpu", precision=precision)
        if noise_seed is not None:
            executor = NoisyLogits(executor, args.noise_std, seed=noise_seed)
        load = os.getloadavg()
        t0 = time.perf_counter()
        result = segment_subvolume(model, image, {"precision": precision}, executor=executor)
        wall = time.perf_counter() - t0
        segs[name] = result.segmentation
        runs[name] = {
            "seconds": round(wall, 2),
            "fov_evaluations": result.fov_evaluations,
            "seconds_per_fov": round(wall / result.fov_evaluations, 4),
            "network_seconds_per_fov": round(executor.stats()["network_seconds"] / result.fov_evaluations, 4),
            "segments": result.segments,
            "adapted_rand_vs_ground_truth": rand(result.segmentation, labels),
            "loadavg_before": [round(v, 2) for v in load],
        }
        if noise_seed is not None:
            runs[name]["noise_std"] = args.noise_std
        print(name, json.dumps(runs[name]), flush=True)
    if "fp32" in segs:
        for precision, seg in segs.items():
            if precision != "fp32":
                # against float32 as the truth, and the other way round (the measure is not symmetric)
                runs[precision]["adapted_rand_vs_fp32"] = rand(seg, segs["fp32"])
                runs[precision]["adapted_rand_fp32_vs_it"] = rand(segs["fp32"], seg)
    record = {
        "benchmark": "precision_cpu",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "cpu_bf16": cpu_bf16_support()[0],
        "threads": args.threads,
        "noise_std": args.noise_std if args.noise_runs else None,
        "crop": [args.size] * 3,
        "runs": runs,
    }
    print(json.dumps(record, indent=2))
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
