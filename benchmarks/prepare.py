"""Training-data preparation on the FIB-25 sample: partitions and balanced coordinates.

    .venv/bin/python benchmarks/prepare.py [--repeats 3]

Reference parameters (google/ffn README): lom_radius 24,24,24, the 12 README thresholds,
min_size 10000, margin 24,24,24. Each stage runs in a fresh child process so that its peak
RSS is its own: partitions (``compute_partitions`` on the in-memory labels; loading the
gzip HDF5 labels is timed separately), coordinates (``build_coordinates`` from the in-memory
partitions to a file), the whole ``neuroflood prepare`` command, and reading google/ffn
TFRecords. The partition counts are checked against the reference's. Writes
benchmarks/results/prepare.json. The original code on a 2-core machine: partitions 47 s and
1.4 GB, coordinates 306 s and 2.1 GB (16.4 million coordinates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIB25 = SHARED / "data" / "fib25" / "training_sample2.h5"
THRESHOLDS = [0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
REFERENCE_COUNTS = [113468, 10433, 101709, 180884, 291180, 969320, 605822, 751844, 926390, 943965, 796382, 714182, 665511, 1171318]
REFERENCE = {"partitions_s": 47.0, "partitions_rss_gb": 1.4, "coordinates_s": 306.0, "coordinates_rss_gb": 2.1, "coordinates": 16.4e6}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def stage_partitions(work: Path) -> dict:
    import h5py

    from neuroflood.prepare import compute_partitions

    t = time.perf_counter()
    with h5py.File(FIB25, "r") as f:
        labels = f["labels"][...]
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    p = compute_partitions(labels, (24, 24, 24), THRESHOLDS, 10000)
    seconds = time.perf_counter() - t
    counts = np.bincount(p.ravel(), minlength=256)
    np.save(work / "partitions.npy", p)
    return {
        "load_labels_s": load_s,
        "seconds": seconds,
        "peak_rss_gb": peak_rss_gb(),
        "counts_match_reference": counts[:14].tolist() == REFERENCE_COUNTS,
    }


def stage_coordinates(work: Path) -> dict:
    from neuroflood.prepare.coordinates import build_coordinates

    p = np.load(work / "partitions.npy")
    t = time.perf_counter()
    s = build_coordinates([p], ["fib25"], work / "coordinates.nfc", margin=24, seed=0, classes=range(14), progress=False)
    seconds = time.perf_counter() - t
    return {
        "seconds": seconds,
        "peak_rss_gb": peak_rss_gb(),
        "count": s["count"],
        "file_mb": (work / "coordinates.nfc").stat().st_size / 2**20,
    }


def stage_tfrecord(work: Path, n: int = 200_000) -> dict:
    from neuroflood.prepare.tfrecord import read_tfrecord_arrays, write_tfrecord_coordinates

    rng = np.random.default_rng(0)
    write_tfrecord_coordinates(work / "c.tfrecord", rng.integers(24, 226, (n, 3)), ["training_sample2"] * n)
    t = time.perf_counter()
    centers, _, _ = read_tfrecord_arrays(work / "c.tfrecord")
    seconds = time.perf_counter() - t
    return {"records": n, "seconds": seconds, "records_per_s": n / seconds, "peak_rss_gb": peak_rss_gb()}


def child(stage: str, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--work", str(work)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_cli(work: Path) -> dict:
    out = work / "cli-out"
    t = time.perf_counter()
    subprocess.run(
        [
            str(Path(sys.executable).parent / "neuroflood"),
            "prepare",
            "--labels",
            f"fib25={FIB25}:labels",
            "--out",
            str(out),
            "--no-progress",
            "--overwrite",
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    return {
        "seconds": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "stages_s": summary["seconds"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per stage; the median time and max RSS are reported")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prepare.json"))
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        fn = {"partitions": stage_partitions, "coordinates": stage_coordinates, "tfrecord": stage_tfrecord}[args.stage]
        print(json.dumps(fn(Path(args.work))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict = {}
        for stage in ("partitions", "coordinates", "tfrecord"):
            runs = [child(stage, work) for _ in range(args.repeats)]
            summary = dict(runs[-1])
            summary["seconds"] = statistics.median(r["seconds"] for r in runs)
            summary["seconds_all"] = [round(r["seconds"], 3) for r in runs]
            summary["peak_rss_gb"] = max(r["peak_rss_gb"] for r in runs)
            results[stage] = summary
            print(
                f"{stage}: {summary['seconds']:.2f} s (runs {summary['seconds_all']}), peak RSS {summary['peak_rss_gb']:.2f} GB", flush=True
            )
        results["cli"] = run_cli(work)
        print(f"neuroflood prepare (whole command): {results['cli']['seconds']:.2f} s, peak RSS {results['cli']['peak_rss_gb']:.2f} GB")
    part, coord = results["partitions"], results["coordinates"]
    results.update(
        {
            "reference": REFERENCE,
            "speedup_partitions": REFERENCE["partitions_s"] / part["seconds"],
            "speedup_coordinates": REFERENCE["coordinates_s"] / coord["seconds"],
            "targets_met": {
                "partitions_le_2.5s": part["seconds"] <= 2.5,
                "coordinates_le_15s": coord["seconds"] <= 15,
                "peak_rss_le_1gb": max(part["peak_rss_gb"], coord["peak_rss_gb"]) <= 1.0,
                "counts_match_reference": part["counts_match_reference"],
            },
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    print(f"speed-up vs reference: partitions {results['speedup_partitions']:.0f}x, coordinates {results['speedup_coordinates']:.0f}x")
    print(json.dumps(results["targets_met"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
