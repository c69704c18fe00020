"""Blockwise throughput on 1 worker against 2, in alternating runs, with what the machine gave each.

    .venv/bin/python benchmarks/worker_scaling.py --model DIR --image VOL.h5:image \
        [--block-size 128] [--rounds 2] [--work DIR] [--out JSON]

On a VM whose core speed drifts from minute to minute (docs/benchmarks.md), one 1-worker run
and one 2-worker run made half an hour apart compare two different machines. This runs
``neuroflood segment --block-size`` (the demo's request: ``min_segment_size=300``; one thread
per worker; the default overlap unless ``--overlap``) in the order 2, 1, 1, 2 per round (ABBA:
a drift that is linear in time cancels from each round's two-worker ÷ one-worker ratio), and
for every run records the job's seconds, FOVs and segments, a digest of the segmentation (all
runs must agree), and the machine's own account over the run from ``/proc/stat``: CPU seconds
busy, idle and *stolen* by the hypervisor. The steal column shows when a 2-worker run lost
time to other tenants of the host rather than to the division of work.

Each finished run is written to ``--out`` at once (default
benchmarks/results/worker_scaling.json); rerunning the same command skips the runs already
there, so a killed campaign resumes (the run that was killed starts again from nothing); a
result of other settings is replaced, and a file this script did not write is refused. ``--work`` (default: a new folder in the system's temp
directory) holds the runs' outputs; it must be empty or one this script made earlier.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from neuroflood.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
MARK = ".worker_scaling"  # a --work folder this script made holds this file
DEMO_REQUEST = ["--set", "options.min_segment_size=300"]  # `neuroflood demo`'s segment step


def cpu_ticks() -> dict:
    """The machine's CPU time so far, in seconds: busy (user+nice+system+irq), idle (+iowait), steal."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / hz,
        "idle": (idle + iowait) / hz,
        "steal": steal / hz,
    }


def digest(spec: str) -> str:
    """A short hash of a segmentation's voxels (sequential ids make equal results hash equal)."""
    from neuroflood.volume import open_volume

    seg = np.ascontiguousarray(open_volume(spec)[...])
    return hashlib.sha256(seg.tobytes()).hexdigest()[:16]


def one_run(args: argparse.Namespace, work: Path, name: str, workers: int) -> dict:
    out = work / f"{name}.zarr"
    summary = work / f"{name}.json"
    cmd = [sys.executable, "-m", "neuroflood", "segment", "--model", args.model, "--image", args.image]
    cmd += ["--out", f"{out}/seg", "--block-size", ",".join([str(args.block_size)] * 3)]
    if args.overlap is not None:
        cmd += ["--overlap", ",".join([str(args.overlap)] * 3)]
    cmd += ["--nproc-per-node", str(workers), "--threads", "1", "--no-progress", "--summary", str(summary)]
    cmd += DEMO_REQUEST
    # A run killed part-way left its blocks behind, and `segment` would resume them: a short,
    # wrong time. The folder is this script's own (main() checked the mark), so start afresh.
    shutil.rmtree(out, ignore_errors=True)
    summary.unlink(missing_ok=True)
    before, t0 = cpu_ticks(), time.time()
    # Its own session, so that a kill of this script (Ctrl-C, or SIGTERM as `timeout` sends)
    # stops the whole job, its workers included, instead of leaving them running beside the next.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    wall, after = time.time() - t0, cpu_ticks()
    if proc.returncode:
        # the workers' own error comes first; the launcher's last line only says that one failed
        lines = stderr.strip().splitlines() or ["no message"]
        why = next((line for line in lines if line.startswith("neuroflood: error:")), lines[-1])
        raise SystemExit(f"run {name} failed (exit {proc.returncode}): {why}")
    job = json.loads(summary.read_text())
    return {
        "run": name,
        "workers": workers,
        "started": time.strftime("%H:%M:%S", time.gmtime(t0)),
        "wall_seconds": round(wall, 1),
        "job_seconds": round(job["seconds"], 1),
        "fov_evaluations": job.get("fov_evaluations"),
        "segments": job.get("segments"),
        "digest": digest(f"{out}/seg"),
        "machine_seconds": {k: round(after[k] - before[k], 1) for k in after},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a native checkpoint directory (e.g. the demo's network)")
    p.add_argument("--image", required=True, help="the volume, e.g. volume.h5:image")
    p.add_argument("--block-size", type=int, default=128, help="cube block size (default 128)")
    p.add_argument("--overlap", type=int, help="cube overlap (default: the blockwise default, fov//2 + delta)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of 2, 1, 1, 2 workers (default 2)")
    p.add_argument("--work", help="folder for the runs' outputs (empty, or made by this script)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "worker_scaling.json"))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds one_run, which stops the job
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.block_size < 1 or (args.overlap is not None and args.overlap < 0):
        p.error("--block-size must be at least 1 and --overlap at least 0")
    out = Path(args.out)
    key = {"model": args.model, "image": args.image, "block_size": args.block_size, "overlap": args.overlap}
    runs: list[dict] = []
    if out.exists():
        try:
            earlier = json.loads(out.read_text())
        except (OSError, ValueError):
            earlier = {}
        if not isinstance(earlier, dict) or earlier.get("benchmark") != "worker_scaling":
            p.error(f"--out {out} exists and is not this script's result; give a new file")
        if earlier.get("key") == key:  # resume: keep the runs already made
            runs = earlier["runs"]
    if args.work:
        work = Path(args.work)
        if work.exists() and not work.is_dir():
            p.error(f"--work {work} is a file; give an empty or new folder")
        if work.exists() and any(work.iterdir()) and not (work / MARK).exists():
            p.error(f"--work {work} holds files this script did not make; give an empty or new folder")
    else:
        work = Path(tempfile.mkdtemp(prefix="nf-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / MARK).touch()

    done = {r["run"] for r in runs}
    for rnd in range(args.rounds):
        for slot, workers in enumerate((2, 1, 1, 2)):
            name = f"r{rnd}-{slot}-w{workers}"
            if name in done:
                continue
            runs.append(one_run(args, work, name, workers))
            print(json.dumps(runs[-1]), flush=True)
            write(out, key, runs)


def write(out: Path, key: dict, runs: list[dict]) -> None:
    """The result so far: every run, and per round the two-worker ÷ one-worker throughput."""
    rounds = []
    for rnd in sorted({r["run"].split("-")[0] for r in runs}):
        mine = [r for r in runs if r["run"].startswith(rnd + "-")]
        one = [r["job_seconds"] for r in mine if r["workers"] == 1]
        two = [r["job_seconds"] for r in mine if r["workers"] == 2]
        if one and two:
            rounds.append({"round": rnd, "speedup": round(sum(one) / len(one) / (sum(two) / len(two)), 3)})
    one_all = [r["job_seconds"] for r in runs if r["workers"] == 1]
    two_all = [r["job_seconds"] for r in runs if r["workers"] == 2]
    result = {
        "benchmark": "worker_scaling",
        "key": key,
        "runs": runs,
        "rounds": rounds,
        "speedup_pooled": round(sum(one_all) / len(one_all) / (sum(two_all) / len(two_all)), 3) if one_all and two_all else None,
        "same_segmentation": len({r["digest"] for r in runs}) == 1,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
