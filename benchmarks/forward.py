"""Forward throughput of the FIB-25 network (FOV 33³): FOVs/s and GFLOP/s.

    .venv/bin/python benchmarks/forward.py [--threads 2] [--batches 1,4,16] [--repeats 5]

Runs on CPU, and on CUDA when available (float32 with TF32 off, TF32 on, bf16 autocast),
reporting the max |logits - golden| of the original TensorFlow network for each CUDA mode.
Writes benchmarks/results/forward.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (set once at start)")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per setting; the median is reported")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "forward.json"))
    return p.parse_args()


def time_forward(model, batch: int, device: str, repeats: int, autocast: torch.dtype | None) -> list[float]:
    fov = model.config.fov_size
    x = torch.randn(batch, 1, *fov, device=device)
    s = torch.full((batch, 1, *fov), -2.944439, device=device)
    times = []
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.split(":")[0], dtype=autocast or torch.float32, enabled=autocast is not None),
    ):
        model(x, s)  # warm-up (oneDNN / cuDNN algorithm selection)
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x, s)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return times


def golden_error(model, device: str, autocast: torch.dtype | None) -> float:
    g = np.load(SHARED / "golden" / "fib25_forward_golden.npz")
    img = torch.from_numpy(g["image_normalized"])[:, None].to(device)
    seed = torch.from_numpy(g["seed_logits"])[:, None].to(device)
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.split(":")[0], dtype=autocast or torch.float32, enabled=autocast is not None),
    ):
        out = model(img, seed).float()
    return float(np.abs(out[:, 0].cpu().numpy() - g["logits"]).max())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import neuroflood

    model = neuroflood.load_model(SHARED / "models" / "fib25" / "model.ckpt-27465036")
    flop_per_fov = model.flops_per_voxel() * int(np.prod(model.config.fov_size))
    batches = [int(b) for b in args.batches.split(",")]
    settings = [("cpu", "float32", None)]
    if torch.cuda.is_available():
        settings += [("cuda", "float32 (TF32 off)", None), ("cuda", "TF32", None), ("cuda", "bf16 autocast", torch.bfloat16)]
    results = []
    for device, mode, autocast in settings:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "TF32"
        m = model.to(device)
        err = golden_error(m, device, autocast)
        for b in batches:
            t = statistics.median(time_forward(m, b, device, args.repeats, autocast))
            row = {
                "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                "mode": mode,
                "batch": b,
                "seconds_per_batch": t,
                "seconds_per_fov": t / b,
                "fovs_per_s": b / t,
                "gflop_per_s": flop_per_fov * b / t / 1e9,
                "max_abs_error_vs_tf_golden": err,
            }
            results.append(row)
            print(
                f"{device:4s} {mode:18s} batch {b:3d}: {row['seconds_per_fov']:.3f} s/FOV  "
                f"{row['fovs_per_s']:.2f} FOVs/s  {row['gflop_per_s']:.0f} GFLOP/s  golden err {err:.2e}"
            )
    out = {
        "benchmark": "forward",
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_count": torch.get_num_threads(),
        "gflop_per_fov": flop_per_fov / 1e9,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
