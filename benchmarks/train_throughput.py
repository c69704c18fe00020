"""Training throughput of the full loop (example generation included), in FOVs/s.

Runs ``neuroflood.train.loop.train`` on a synthetic EM volume for two configurations and
reads FOVs/s from the summaries it writes (``metrics.jsonl``: steps between summaries over
their wall time; batch generation, forward, backward, clip, optimizer step and canvas
write-back included; the first interval is warm-up and dropped):

* ``fib25``: depth 12, 32 features, FOV 33³, deltas 8, batch 4 (google/ffn TF on a 2-core
  machine: 0.31 FOVs/s; target >= 0.8)
* ``small``: depth 4, 32 features, FOV 17³, deltas 4, batch 4 (TF: 10.7; target >= 20)

Each configuration runs ``--repeats`` times; the result is the median over all intervals
(and the best interval, which shows what a quiet machine gives). Threads are set once, at
start. Writes ``benchmarks/results/train_throughput.json``.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                        # both, float32
    .venv/bin/python benchmarks/train_throughput.py --config small --precision float32,bfloat16
    .venv/bin/python benchmarks/train_throughput.py --device cuda --precision float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "fib25": {"model": "depth=12,features=32,fov=33,33,33,deltas=8,8,8", "steps": 4, "intervals": 3, "tf": 0.31, "target": 0.8},
    "small": {"model": "depth=4,features=32,fov=17,17,17,deltas=4,4,4", "steps": 25, "intervals": 4, "tf": 10.7, "target": 20.0},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["fib25", "small", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="float32", help="comma list of float32, bfloat16")
    ap.add_argument("--no-channels-last", action="store_true", help="measure the contiguous layout instead")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply steps per interval (longer, steadier runs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)  # once, before any work
    from neuroflood.config import ModelConfig
    from neuroflood.prepare.coordfile import write_coordinates
    from neuroflood.synthetic import make_em_volume
    from neuroflood.train.config import TrainConfig
    from neuroflood.train.device import pick_device
    from neuroflood.train.loop import train
    from neuroflood.volume import write_volume

    device = pick_device(args.device)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    out: dict = {
        "machine": f"{os.cpu_count()}-core CPU" + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ", no GPU"),
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "channels_last": not args.no_channels_last,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="nf-throughput-") as tmp:
        image, labels = make_em_volume((112, 112, 112), seed=0)
        write_volume(f"{tmp}/v.h5:image", image)
        write_volume(f"{tmp}/v.h5:labels", labels)
        rng = np.random.default_rng(0)
        write_coordinates(f"{tmp}/c.nfc", rng.integers(32, 80, (2000, 3)), None, ["v"])
        for name in names:
            spec = CONFIGS[name]
            steps = max(1, int(spec["steps"] * args.scale))
            for precision in args.precision.split(","):
                rates, load = [], []
                for rep in range(args.repeats):
                    run = Path(tmp) / f"run-{name}-{precision}-{rep}"
                    load.append(os.getloadavg()[0])
                    config = TrainConfig.build(
                        {
                            "images": {"v": f"{tmp}/v.h5:image"},
                            "labels": {"v": f"{tmp}/v.h5:labels"},
                            "coords": f"{tmp}/c.nfc",
                            "run_dir": str(run),
                            "model": ModelConfig.parse_spec(spec["model"]),
                            "batch_size": 4,
                            "seed": rep,
                            "max_steps": steps * (spec["intervals"] + 1),
                            "summary_every_steps": steps,
                            "summary_every_secs": 1e9,
                            "checkpoint_every_secs": None,
                            "tensorboard": False,
                            "progress": False,
                            "device": str(device),
                            "precision": precision,
                            "channels_last": not args.no_channels_last,
                        }
                    )
                    train(config)
                    recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
                    rates += [r["fovs_per_s"] for r in recs if r["split"] == "train"][1:]  # drop warm-up
                row = {
                    "config": name,
                    "model": spec["model"],
                    "batch_size": 4,
                    "precision": precision,
                    "fovs_per_s_median": statistics.median(rates),
                    "fovs_per_s_best": max(rates),
                    "intervals": len(rates),
                    "steps_per_interval": steps,
                    "load_average_1min": load,
                    "reference_tf_fovs_per_s": spec["tf"],
                    "target_fovs_per_s": spec["target"],
                }
                out["results"].append(row)
                print(
                    f"{name:6s} {precision:9s} median {row['fovs_per_s_median']:.2f} FOVs/s, best {row['fovs_per_s_best']:.2f} "
                    f"(TF {spec['tf']}, target {spec['target']}; load {', '.join(f'{v:.1f}' for v in load)})",
                    flush=True,
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
