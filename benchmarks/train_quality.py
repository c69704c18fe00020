"""Learning benchmark: held-out F1 against training time for a small FFN.

Trains a small network (default depth 4, 16 features, FOV 11³, deltas 3; ``--model``; batch 4)
with ``neuroflood train`` for a
fixed training time and evaluates on held-out coordinates every ``--eval-every-secs`` of
training time (evaluation time is not counted):

* ``synthetic``: train on ``make_em_volume((128,)*3, seed=0)``, evaluate on a separately
  generated volume (seed 1).
* ``fib25``: the FIB-25 sample (../shared/data/fib25/training_sample2.h5, 250³); train on
  z < 170, evaluate on z >= 190.

Coordinates come from ``neuroflood prepare`` (partitions with lom_radius 12 = fov//2 + delta,
class-balanced), subsampled to ``--max-coords`` per set. Writes
``benchmarks/results/train_quality.json`` (curves: time_s, step, F1, accuracy, ...) and
prints the time to F1 >= 0.8.

Usage::

    .venv/bin/python benchmarks/train_quality.py                 # both datasets, 10 min each
    .venv/bin/python benchmarks/train_quality.py --dataset synthetic --minutes 10
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

ROOT = Path(__file__).resolve().parents[1]
FIB25 = ROOT.parent / "shared" / "data" / "fib25" / "training_sample2.h5"
SMALL = "depth=4,features=16,fov=11,11,11,deltas=3,3,3"  # ~10x the FOVs/s of FOV 17 on CPU


def _prepare(labels_spec: str, name: str, out: Path, max_coords: int, seed: int) -> Path:
    """Balanced coordinates via `neuroflood prepare`, subsampled to ``max_coords``."""
    import numpy as np

    from neuroflood.prepare.coordfile import open_coordinates, write_coordinates

    cmd = [
        sys.executable,
        "-m",
        "neuroflood",
        "prepare",
        "--labels",
        f"{name}={labels_spec}",
        "--out",
        str(out),
        "--lom-radius",
        "12,12,12",
        "--margin",
        "12,12,12",
        "--min-size",
        "1000",
        "--seed",
        str(seed),
        "--allow-missing-classes",
        "--no-progress",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    coords = open_coordinates(out / "coordinates.nfc")
    shard = coords.shard(0, 1)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(shard), size=min(max_coords, len(shard)), replace=False)
    path = out / "subset.nfc"
    write_coordinates(path, shard.centers[pick], shard.volume_index[pick], coords.volume_names)
    return path


def _datasets(which: list[str], work: Path, max_coords: int) -> dict[str, dict]:
    import h5py
    import numpy as np

    from neuroflood.synthetic import make_em_volume
    from neuroflood.volume import write_volume

    out = {}
    if "synthetic" in which:
        for tag, shape, seed in (("train", (128, 128, 128), 0), ("heldout", (96, 96, 96), 1)):
            image, labels = make_em_volume(shape, seed=seed)
            write_volume(f"{work}/synth_{tag}.h5:image", image)
            write_volume(f"{work}/synth_{tag}.h5:labels", labels)
        out["synthetic"] = {
            "images": {t: f"{work}/synth_{t}.h5:image" for t in ("train", "heldout")},
            "labels": {t: f"{work}/synth_{t}.h5:labels" for t in ("train", "heldout")},
            "coords": _prepare(f"{work}/synth_train.h5:labels", "train", work / "synth_train_prep", max_coords, 0),
            "eval_coords": _prepare(f"{work}/synth_heldout.h5:labels", "heldout", work / "synth_heldout_prep", max_coords, 1),
        }
    if "fib25" in which:
        with h5py.File(FIB25, "r") as f:
            image, labels = f["image"][:], f["labels"][:]
        for tag, sl in (("train", np.s_[:170]), ("heldout", np.s_[190:])):
            write_volume(f"{work}/fib25_{tag}.h5:image", image[sl])
            write_volume(f"{work}/fib25_{tag}.h5:labels", labels[sl])
        out["fib25"] = {
            "images": {t: f"{work}/fib25_{t}.h5:image" for t in ("train", "heldout")},
            "labels": {t: f"{work}/fib25_{t}.h5:labels" for t in ("train", "heldout")},
            "coords": _prepare(f"{work}/fib25_train.h5:labels", "train", work / "fib25_train_prep", max_coords, 0),
            "eval_coords": _prepare(f"{work}/fib25_heldout.h5:labels", "heldout", work / "fib25_heldout_prep", max_coords, 1),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=["synthetic", "fib25", "both"], default="both")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time per dataset")
    ap.add_argument("--steps", type=int, default=None, help="train for this many steps instead of --minutes")
    ap.add_argument("--eval-every-secs", type=float, default=60.0, help="training seconds between evaluations")
    ap.add_argument("--eval-every-steps", type=int, default=None, help="evaluate every N steps instead")
    ap.add_argument("--eval-examples", type=int, default=64)
    ap.add_argument("--model", default=SMALL, help=f"network spec (default: {SMALL})")
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-coords", type=int, default=200_000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_quality.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)  # once, at start
    from neuroflood.config import ModelConfig
    from neuroflood.prepare.coordfile import open_coordinates
    from neuroflood.train.config import TrainConfig
    from neuroflood.train.loop import train

    which = ["synthetic", "fib25"] if args.dataset == "both" else [args.dataset]
    results: dict = {
        "machine": f"{os.cpu_count()}-core CPU, threads {args.threads}",
        "load_average_before": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model": args.model,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "budget": f"{args.steps} steps" if args.steps else f"{args.minutes} min of training time",
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="nf-quality-") as tmp:
        work = Path(tmp)
        data = _datasets(which, work, args.max_coords)
        for name, d in data.items():
            run = work / f"run_{name}"
            config = TrainConfig.build(
                {
                    "images": d["images"],
                    "labels": d["labels"],
                    "coords": str(d["coords"]),
                    "eval_coords": str(d["eval_coords"]),
                    "run_dir": str(run),
                    "model": ModelConfig.parse_spec(args.model),
                    "optimizer": args.optimizer,
                    "learning_rate": args.learning_rate,
                    "max_steps": args.steps or 10**9,
                    "max_train_seconds": None if args.steps else args.minutes * 60,
                    "eval_every_secs": None if args.eval_every_steps else args.eval_every_secs,
                    "eval_every_steps": args.eval_every_steps,
                    "eval_examples": args.eval_examples,
                    "summary_every_secs": 30.0,
                    "checkpoint_every_secs": None,
                    "tensorboard": False,
                }
            )
            t0 = time.time()
            train(config)
            wall = time.time() - t0
            records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
            evals = [r for r in records if r["split"] == "eval"]
            keys = ("time_s", "step", "f1", "accuracy", "precision", "recall", "patch_loss", "loss")
            curve = [{k: r.get(k) for k in keys} for r in evals]
            hit = next((r["time_s"] for r in evals if (r["f1"] or 0) >= 0.8), None)
            trains = [r for r in records if r["split"] == "train"]
            results["runs"][name] = {
                "eval_curve": curve,
                "train_curve": [{k: r.get(k) for k in ("time_s", "step", "f1", "loss", "fovs_per_s")} for r in trains],
                "time_to_f1_0.8_s": hit,
                "final_eval_f1": curve[-1]["f1"] if curve else None,
                "best_eval_f1": max((c["f1"] or 0) for c in curve) if curve else None,
                "steps": records[-1]["step"] if records else 0,
                "wall_s_including_eval": wall,
                "coords": len(open_coordinates(d["coords"])),
            }
            print(
                f"{name}: final held-out F1 {results['runs'][name]['final_eval_f1']}, best "
                f"{results['runs'][name]['best_eval_f1']}, F1>=0.8 at {hit} s of training, "
                f"{results['runs'][name]['steps']} steps"
            )
            for c in curve:
                print(f"  t={c['time_s']:7.1f}s step={c['step']:6d} f1={c['f1']:.3f} acc={c['accuracy']:.3f}")
    results["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
