"""What this machine gives two one-thread workers at once: the ceiling of any 2-worker speed-up.

    .venv/bin/python benchmarks/parallel_ceiling.py --model DIR [--seconds 30] [--rounds 2]

Runs the network's forward pass on one FOV at a time (batch 1, the model's FOV, one torch
thread) for ``--seconds`` in one process, then in two processes at the same time, ``--rounds``
times alternately, and reports FOVs/s of each and the ratio (two processes together ÷ one
alone). Blockwise inference on N one-thread workers cannot scale better than this ratio: on a
VM whose virtual cores share a physical core, or share its cache and memory bandwidth, it is
below 2 however well the work is divided. ``--model``: a native checkpoint directory (e.g. the
demo's network) or a TF checkpoint prefix. Writes benchmarks/results/parallel_ceiling.json
(or --out). Run it on a quiet machine, next to the blockwise run it is meant to explain.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

from neuroflood.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def worker(model_path: str, seconds: float, start: float, queue) -> None:
    """Forward passes of batch 1 from ``start`` (a shared clock time) for ``seconds``; puts FOVs/s."""
    import torch

    torch.set_num_threads(1)
    from neuroflood.model import load_model

    model = load_model(model_path).eval()
    fov = model.config.fov_size
    image, seed = torch.randn(1, 1, *fov), torch.zeros(1, 1, *fov)
    with torch.inference_mode():
        for _ in range(20):  # warm-up: oneDNN primitives, caches
            model(image, seed)
        while time.time() < start:
            time.sleep(0.001)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(image, seed)
            n += 1
    queue.put(n / (time.perf_counter() - t0))


def run(model: str, seconds: float, processes: int) -> list[float]:
    """FOVs/s of each of ``processes`` concurrent workers."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.time() + 15  # every worker loaded and warm before the clock starts
    procs = [ctx.Process(target=worker, args=(model, seconds, start, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="native checkpoint directory or TF checkpoint prefix")
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of one process, then two")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parallel_ceiling.json"))
    args = p.parse_args()
    if args.seconds <= 0 or args.rounds < 1:
        p.error("--seconds must be positive and --rounds at least 1")
    one, two = [], []
    for k in range(args.rounds):
        one.append(run(args.model, args.seconds, 1)[0])
        pair = run(args.model, args.seconds, 2)
        two.append(sum(pair))
        print(f"round {k}: one process {one[-1]:.1f} FOVs/s; two at once {pair[0]:.1f} + {pair[1]:.1f} = {two[-1]:.1f} FOVs/s", flush=True)
    ratios = [b / a for a, b in zip(one, two)]
    record = {
        "benchmark": "parallel_ceiling",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "model": args.model,
        "seconds": args.seconds,
        "one_process_fovs_per_second": [round(v, 1) for v in one],
        "two_processes_fovs_per_second": [round(v, 1) for v in two],
        "ratio": [round(v, 3) for v in ratios],
        "ratio_median": round(statistics.median(ratios), 3),
    }
    print(json.dumps(record, indent=2))
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
