"""Speed of segmentation metrics on the FIB-25 sample (250³): neuroflood vs scikit-image.

    .venv/bin/python benchmarks/evaluate.py [--repeats 3]

The segmentation is the ground truth with one large merge, one large split and an
unsegmented slab (10 z-planes). Times, median of --repeats runs, for

- neuroflood's streamed contingency table + every metric (VI, adapted Rand, voxel metrics),
- neuroflood's worst-error list with coordinates,
- the whole ``neuroflood evaluate`` report (metrics, errors, figures, HTML), in-process,
- scikit-image 0.26 ``variation_of_information`` + ``adapted_rand_error`` on the same arrays
  (seg 0 as its own label, GT 0 ignored: the closest it offers; the reference google/ffn has
  no evaluation code).

Writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIB25 = ROOT.parent / "shared" / "data" / "fib25" / "training_sample2.h5"


def perturbed(gt: np.ndarray) -> np.ndarray:
    seg = gt.copy()
    ids, sizes = np.unique(gt, return_counts=True)
    big = ids[np.argsort(-sizes)][:3]
    seg[seg == big[1]] = big[2]
    # a new id just above the largest: scikit-image indexes a sparse table by raw id values
    seg[(gt == big[0]) & (np.arange(gt.shape[2])[None, None, :] > gt.shape[2] // 2)] = gt.max() + 1
    seg[200:210] = 0
    return seg


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate.json"))
    args = p.parse_args()

    from skimage.metrics import adapted_rand_error, variation_of_information

    from neuroflood.evaluate.inputs import open_evaluation_inputs
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics, worst_errors
    from neuroflood.evaluate.report import write_evaluation_report
    from neuroflood.volume import open_volume, write_volume

    gt = open_volume(f"{FIB25}:labels")[...]
    seg = perturbed(gt)
    results: dict[str, dict] = {}

    def metrics():
        return segmentation_metrics(contingency_table(seg, gt))

    results["neuroflood_metrics"] = dict(zip(("median_s", "runs_s"), timed(metrics, args.repeats)))
    table = contingency_table(seg, gt)
    results["neuroflood_worst_errors"] = dict(zip(("median_s", "runs_s"), timed(lambda: worst_errors(table, seg, gt), args.repeats)))

    def skimage():
        variation_of_information(gt, seg, ignore_labels=(0,))
        adapted_rand_error(gt, seg)

    results["skimage_vi_and_arand"] = dict(zip(("median_s", "runs_s"), timed(skimage, args.repeats)))

    with tempfile.TemporaryDirectory() as tmp:
        write_volume(f"{tmp}/seg.h5:seg", seg)
        inputs = open_evaluation_inputs(f"{tmp}/seg.h5:seg", f"{FIB25}:labels", f"{FIB25}:image")

        def report():
            write_evaluation_report(f"{tmp}/out", inputs, {"seg": "seg", "gt": "gt", "image": "image"})

        results["neuroflood_evaluate_report"] = dict(zip(("median_s", "runs_s"), timed(report, args.repeats)))

    values = metrics()
    summary = {
        "volume": "FIB-25 training_sample2 (250^3), GT vs GT with a merge, a split and 10 unsegmented planes",
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "results": results,
        "metrics": {k: values[k] for k in ("vi_split", "vi_merge", "adapted_rand_error")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    for name, r in results.items():
        print(f"{name:30s} {r['median_s']:7.2f} s  (runs {', '.join(f'{t:.2f}' for t in r['runs_s'])})")
    print(f"load average {summary['load_average']}; wrote {args.out}")


if __name__ == "__main__":
    main()
