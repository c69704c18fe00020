"""The GPU suite: one command on one CUDA GPU, about 8 minutes, one JSON of numbers.

    .venv/bin/python benchmarks/gpu_suite.py [--out benchmarks/results/gpu_suite.json] [--quick]

Measures, each part on its own (a failing part is recorded and the rest goes on):

1. forward parity of the published FIB-25 network against the TensorFlow golden outputs:
   fp32 with TF32 off (target max |diff| <= 1e-3) and the bf16 autocast error;
2. FIB-25 network forward FOVs/s at batch 1, 8 and 32, fp32 and bf16;
3. training FOVs/s (``neuroflood train``, real example generation) of the FIB-25
   configuration and the small demo configuration, fp32 and bf16, on the FIB-25 sample;
4. the whole 250^3 FIB-25 sample segmented with the published model (``neuroflood
   segment``), fp32 and bf16, as one subvolume (one FOV per network call) and with the
   batched executor (2x2x2 blocks, 8 Canvases, batches of 8): seconds, FOVs/s, segments and
   FOVs beside google/ffn's 254 / 25,799, each against the one-subvolume fp32 result;
5. one data-parallel training step under NCCL on one GPU (a 1-rank process group).

On a machine without CUDA it stops at once with a one-line message and exit status 2.
Numbers go to docs/benchmarks.md ("GPU suite") with the date and the machine.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CKPT = SHARED / "models" / "fib25" / "model.ckpt-27465036"
FIB25 = SHARED / "data" / "fib25" / "training_sample2.h5"
GOLDEN = SHARED / "golden" / "fib25_forward_golden.npz"
SMALL_MODEL = "depth=4,features=16,fov=11,11,11,deltas=3,3,3"  # the demo's network
REFERENCE = {"segments": 254, "fov_evaluations": 25799, "p100_seconds": 394}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_suite.json"))
    p.add_argument("--train-seconds", type=float, default=40.0, help="seconds of each training run")
    p.add_argument("--quick", action="store_true", help="a 100^3 crop instead of the whole sample, 15 s training runs")
    return p.parse_args(argv)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_suite: error: no CUDA device is visible (torch.cuda.is_available() is False); "
            "run this on a machine with an NVIDIA GPU and a CUDA build of torch",
            file=sys.stderr,
        )
        raise SystemExit(2)


def neuroflood(*args: str, cwd: Path) -> float:
    """Run one neuroflood command; return its wall time (raise with its output on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "neuroflood", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"neuroflood {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


def parity(model: Any) -> dict:
    import numpy as np
    import torch

    g = np.load(GOLDEN)
    x = torch.from_numpy(g["image_normalized"][:, None]).cuda()  # [B, 1, Z, Y, X]
    s = torch.from_numpy(g["seed_logits"][:, None]).cuda()
    want = g["logits"][:, None]
    res: dict[str, Any] = {"fovs": int(x.shape[0])}
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        got = model(x, s).float().cpu().numpy()
        res["fp32_max_abs_diff"] = float(np.abs(got - want).max())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got16 = model(x, s).float().cpu().numpy()
        res["bf16_max_abs_diff"] = float(np.abs(got16 - want).max())
    res["fp32_within_1e-3"] = res["fp32_max_abs_diff"] <= 1e-3
    return res


def forward_throughput(model: Any) -> dict:
    import torch

    torch.backends.cudnn.benchmark = True
    fov = model.config.fov_size
    out: dict[str, Any] = {}
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for batch in (1, 8, 32):
            x = torch.randn(batch, 1, *fov, device="cuda")
            s = torch.full_like(x, -2.944439)
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                for _ in range(3):
                    model(x, s)
                torch.cuda.synchronize()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < 2.0:
                    model(x, s)
                    n += 1
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
            out[f"{dtype_name}_batch{batch}_fovs_per_s"] = round(n * batch / dt, 1)
    return out


def prepare_fib25(work: Path) -> Path:
    prep = work / "prep"
    if not prep.exists():
        neuroflood(
            "prepare",
            "--labels",
            f"fib25={FIB25}:labels",
            "--image",
            f"fib25={FIB25}:image",
            "--out",
            str(prep),
            "--lom-radius",
            "24,24,24",
            "--margin",
            "24,24,24",
            "--min-size",
            "10000",
            "--no-progress",
            cwd=work,
        )
    return prep / "coordinates.nfc"


def training_throughput(work: Path, seconds: float) -> dict:
    coords = prepare_fib25(work)
    out: dict[str, Any] = {}
    for name, model, batch in (("fib25", "depth=12,features=32,fov=33,33,33,deltas=8,8,8", 32), ("small", SMALL_MODEL, 64)):
        for precision in ("float32", "bfloat16"):
            run = work / f"train-{name}-{precision}"
            neuroflood(
                "train",
                "--image",
                f"fib25={FIB25}:image",
                "--labels",
                f"fib25={FIB25}:labels",
                "--coords",
                str(coords),
                "--run-dir",
                str(run),
                "--model",
                model,
                "--device",
                "cuda",
                "--precision",
                precision,
                "--batch-size",
                str(batch),
                "--optimizer",
                "adam",
                "--max-steps",
                "1000000",
                "--max-train-seconds",
                str(seconds),
                "--summary-every-secs",
                "5",
                cwd=work,
            )
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            rates = [r["fovs_per_s"] for r in rows if r.get("split") == "train" and "fovs_per_s" in r][1:]  # skip warm-up
            out[f"{name}_{precision}"] = {
                "batch_size": batch,
                "fovs_per_s": round(max(rates), 1) if rates else None,
                "fovs_per_s_median": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
            }
    return out


def whole_sample(work: Path, quick: bool) -> dict:
    """The sample segmented four ways: one subvolume (one Canvas, one FOV per call) and the
    batched executor (blockwise, 2x2x2 blocks, 8 Canvases feeding batches of 8), fp32 and bf16."""
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics
    from neuroflood.infer.blocks import default_overlap
    from neuroflood.volume import open_volume

    edge = 100 if quick else 250
    bbox = ["--bbox", "0,0,0:100,100,100"] if quick else []
    overlap = default_overlap((33, 33, 33), (8, 8, 8))[0]  # the FIB-25 network's: 24
    block = str((edge + overlap + 1) // 2)  # 2 blocks per axis with the default overlap
    batched = ["--block-size", ",".join([block] * 3), "--set", "batch_size=8"]
    out: dict[str, Any] = {"box": "0,0,0:100,100,100" if quick else "whole 250^3", "reference": REFERENCE, "batched_block": int(block)}
    segs = {}
    for precision in ("fp32", "bf16"):
        for path, extra in (("", []), ("_batched", batched)):
            name = f"{precision}{path}"
            seg, summary = f"{work}/seg-{name}.zarr/seg", work / f"seg-{name}.json"
            wall = neuroflood(
                "segment",
                "--model",
                str(CKPT),
                "--image",
                f"{FIB25}:image",
                *bbox,
                *extra,
                "--out",
                seg,
                "--summary",
                str(summary),
                "--set",
                "device=cuda",
                "--set",
                f"precision={precision}",
                "--no-progress",
                cwd=work,
            )
            s = json.loads(summary.read_text())
            out[name] = {
                "wall_s": round(wall, 1),
                "seconds": s.get("seconds"),
                "segments": s.get("segments"),
                "fov_evaluations": s.get("fov_evaluations"),
            }
            out[name]["fovs_per_s"] = round(out[name]["fov_evaluations"] / wall, 1) if out[name]["fov_evaluations"] else None
            segs[name] = open_volume(seg)[...]
    for name in ("bf16", "fp32_batched", "bf16_batched"):
        m = segmentation_metrics(contingency_table(segs[name], segs["fp32"]))
        out[f"{name}_vs_fp32"] = {k: m[k] for k in ("adapted_rand_error", "vi_split", "vi_merge") if k in m}
    return out


def nccl_step() -> dict:
    import torch
    import torch.distributed as dist

    from neuroflood.config import ModelConfig
    from neuroflood.distributed import free_port
    from neuroflood.model.checkpoint import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = build_model(ModelConfig(), seed=0).cuda().train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        opt = torch.optim.Adam(ddp.parameters(), 1e-4)
        x = torch.randn(8, 1, 33, 33, 33, device="cuda")
        s = torch.full_like(x, -2.944439)
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(ddp(x, s), torch.full_like(x, 0.95))
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return {
            "backend": dist.get_backend(),
            "steps": len(times),
            "step_s_median": round(sorted(times)[2], 4),
            "loss_finite": bool(torch.isfinite(loss)),
        }
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_cuda()
    import torch

    import neuroflood

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host": platform.node(),
        "quick": args.quick,
    }
    model = neuroflood.load_model(CKPT).cuda().eval()
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    seconds = 15.0 if args.quick else args.train_seconds
    parts: list[tuple[str, Callable[[], dict]]] = [
        ("parity", lambda: parity(model)),
        ("forward", lambda: forward_throughput(model)),
        ("nccl_ddp_step", nccl_step),
        ("whole_sample_inference", lambda: whole_sample(work, args.quick)),
        ("training", lambda: training_throughput(work, seconds)),
    ]
    t_start = time.perf_counter()
    try:
        for name, part in parts:
            t0 = time.perf_counter()
            try:
                results[name] = part()
            except Exception as e:  # record and go on: one broken part must not hide the others
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            results[name]["part_seconds"] = round(time.perf_counter() - t0, 1)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['total_seconds']} s)")
    return 1 if any("error" in v for v in results.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
