"""FFN agglomeration of the published FIB-25 segmentation with the published model.

    .venv/bin/python benchmarks/agglomerate_fib25.py [--work DIR] [--nproc-per-node N] [--device cuda]
                                                     [--batch-size B] [--precision bfloat16] [--fill-holes 8] [--consensus SPEC]

1. Runs ``neuroflood agglomerate`` on the whole 250³ published segmentation
   (../shared/data/fib25/ffn_published_segmentation.h5) with the published google/ffn
   checkpoint (converted once with ``neuroflood import-tf``) and the default options. The
   run is resumable: rerun the same command after a kill and finished pairs are kept.
2. Tunes the merge thresholds on z < 125 only: every pair whose decision point lies there is
   scored against the ground truth (a merge is *right* when both segments' majority
   ground-truth objects agree), and the (min_iou, min_consistency) grid point with the most
   right merges and at most ``--max-wrong`` wrong ones is chosen (both fills must agree).
   The resegmentation is not rerun: the scores are in ``OUT.agglomeration/pairs.npz``.
3. Applies the default rule and the tuned rule to the whole volume and reports on z ≥ 125:
   adapted Rand error and VI split/merge over all labelled voxels and over segmented voxels
   only, before and after, with and without filling holes of ≤ ``--fill-holes`` voxels; the
   merges made and how many are wrong (by majority ground-truth object); FOV evaluations and
   seconds of the agglomeration.
4. The oracle: every candidate pair whose two segments have the same majority ground-truth
   object merged, i.e. the best that merging these pairs could do, and how many pairs one
   side's fill alone would merge (consistency > 0.6 on both segments).

Writes benchmarks/results/agglomerate_fib25.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGE = f"{SHARED}/data/fib25/training_sample2.h5:image"
LABELS = f"{SHARED}/data/fib25/training_sample2.h5:labels"
SEG = f"{SHARED}/data/fib25/ffn_published_segmentation.h5:segmentation"
CKPT = SHARED / "models" / "fib25" / "model.ckpt-27465036"
SPLIT_Z = 125


def run_agglomeration(args: argparse.Namespace, work: Path) -> dict:
    model = work / "fib25_model"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "neuroflood", "import-tf", str(CKPT), str(model)], check=True)
    cmd = [sys.executable, "-m", "neuroflood", "agglomerate", SEG, "--model", str(model), "--image", IMAGE]
    cmd += ["--out", f"{work}/agg.zarr/seg", "--summary", f"{work}/summary.json", "--no-progress"]
    cmd += ["--set", f"batch_size={args.batch_size}", "--set", f"precision={args.precision}"]
    if args.device:
        cmd += ["--device", args.device]
    if args.nproc_per_node:
        cmd += ["--nproc-per-node", str(args.nproc_per_node)]
    if args.consensus:
        cmd += ["--consensus", args.consensus]
    subprocess.run(cmd, check=True)
    return json.loads((work / "summary.json").read_text())


def majority(seg: np.ndarray, gt: np.ndarray) -> dict[int, int]:
    """Each segment's ground-truth object of most voxels (over labelled voxels)."""
    from neuroflood.evaluate.metrics import contingency_table, majority_maps

    (seg_ids, gt_ids), _ = majority_maps(contingency_table(seg, gt))
    return dict(zip(seg_ids.tolist(), gt_ids.tolist()))


def metrics(seg: np.ndarray, gt: np.ndarray) -> dict:
    from neuroflood.evaluate.metrics import contingency_table, segmentation_metrics

    m = segmentation_metrics(contingency_table(seg[SPLIT_Z:], gt[SPLIT_Z:]))
    keys = ("adapted_rand_error", "vi_split", "vi_merge", "adapted_rand_error_segmented", "vi_split_segmented", "vi_merge_segmented")
    return {k: m[k] for k in keys} | {"segments": m["n_segments"], "segmented_fraction": m["segmented_fraction"]}


def merged_of(pairs: dict, iou: float, consistency: float, deleted: float = 0.02) -> np.ndarray:
    ok = pairs["status"] == "ok"
    out = ok & (pairs["iou"] > iou)
    for side in ("from_a", "from_b"):
        n = np.maximum(pairs[f"{side}_num_voxels"], 1)
        out &= (pairs[f"{side}_segment_a_consistency"] > consistency) & (pairs[f"{side}_segment_b_consistency"] > consistency)
        out &= (pairs[f"{side}_deleted_voxels"] / n < deleted) & (pairs[f"{side}_num_voxels"] > 0)
    return out


def apply(seg: np.ndarray, pairs: dict, merged: np.ndarray, fill: int) -> np.ndarray:
    from neuroflood.agglomerate.merge import build_mapping, fill_holes, relabel

    ids, neurons = build_mapping(np.unique(seg), np.stack([pairs["id_a"], pairs["id_b"]], axis=1)[merged])
    out = np.array(relabel(seg.copy(), ids, neurons))
    if fill:
        fill_holes(out, fill)
    return out


def audit(pairs: dict, merged: np.ndarray, owner: dict[int, int], select: np.ndarray) -> dict:
    sel = merged & select
    wrong = [owner.get(int(a)) != owner.get(int(b)) for a, b in zip(pairs["id_a"][sel], pairs["id_b"][sel])]
    return {"merges": int(sel.sum()), "wrong": int(sum(wrong))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work" / "agglomerate_fib25"), help="work directory (resumable)")
    p.add_argument("--nproc-per-node", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--precision", default="float32", help="network precision (bfloat16: on CPUs with native bf16, or GPUs)")
    p.add_argument("--consensus", default=None, help="a second segmentation for --consensus (optional)")
    p.add_argument("--fill-holes", type=int, default=8, help="also report with holes of up to this many voxels filled")
    p.add_argument("--max-wrong", type=int, default=0, help="wrong merges allowed on z < 125 when tuning")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "agglomerate_fib25.json"))
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    summary = run_agglomeration(args, work)

    import h5py

    with h5py.File(str(SHARED / "data" / "fib25" / "ffn_published_segmentation.h5"), "r") as f:
        seg = f["segmentation"][...]
    with h5py.File(str(SHARED / "data" / "fib25" / "training_sample2.h5"), "r") as f:
        gt = f["labels"][...]
    pairs = dict(np.load(work / "agg.zarr" / "seg.agglomeration" / "pairs.npz"))
    owner = majority(seg, gt)
    tune = pairs["point"][:, 0] < SPLIT_Z
    report = pairs["point"][:, 0] >= SPLIT_Z
    right = np.array([owner.get(int(a)) == owner.get(int(b)) for a, b in zip(pairs["id_a"], pairs["id_b"])])

    grid = []
    for iou, cons in itertools.product(
        [0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    ):
        m = merged_of(pairs, iou, cons) & tune
        grid.append({"min_iou": iou, "min_consistency": cons, "right": int((m & right).sum()), "wrong": int((m & ~right).sum())})
    allowed = [g for g in grid if g["wrong"] <= args.max_wrong] or grid
    best = max(allowed, key=lambda g: (g["right"], -g["wrong"], g["min_iou"], g["min_consistency"]))

    result = {
        "agglomeration": summary,
        "pairs_on_z_lt_125": int(tune.sum()),
        "pairs_right_by_majority": int(right.sum()),
        "tuning_grid_z_lt_125": grid,
        "tuned": best,
        "before": {"metrics_z_ge_125": metrics(seg, gt)},
    }
    if args.fill_holes:
        result["before"]["metrics_z_ge_125_filled"] = metrics(apply(seg, pairs, np.zeros(len(right), bool), args.fill_holes), gt)
    for name, (iou, cons) in {"default_rule": (0.8, 0.6), "tuned_rule": (best["min_iou"], best["min_consistency"])}.items():
        merged = merged_of(pairs, iou, cons)
        entry = {
            "min_iou": iou,
            "min_consistency": cons,
            "merges_all": audit(pairs, merged, owner, np.ones(len(right), bool)),
            "merges_with_point_on_z_ge_125": audit(pairs, merged, owner, report),
            "metrics_z_ge_125": metrics(apply(seg, pairs, merged, 0), gt),
        }
        if args.fill_holes:
            entry["metrics_z_ge_125_filled"] = metrics(apply(seg, pairs, merged, args.fill_holes), gt)
        result[name] = entry
    # What pair merging could reach at best: merge every candidate pair of one majority object.
    same = right & np.array([owner.get(int(a)) not in (None, 0) for a in pairs["id_a"]])
    ok = pairs["status"] == "ok"
    one_sided = np.zeros(len(right), bool)
    for side in ("from_a", "from_b"):
        one_sided |= (pairs[f"{side}_segment_a_consistency"] > 0.6) & (pairs[f"{side}_segment_b_consistency"] > 0.6)
    result["oracle_same_object_pairs"] = {
        "merges": int(same.sum()),
        "metrics_z_ge_125": metrics(apply(seg, pairs, same, 0), gt),
        "one_sided_consistency_0.6": {"same_object": int((one_sided & same & ok).sum()), "different": int((one_sided & ~same & ok).sum())},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("agglomeration", "tuned")}, indent=2))


if __name__ == "__main__":
    main()
