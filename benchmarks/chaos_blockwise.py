"""Chaos run of blockwise segmentation: kill workers at random moments, rerun, compare.

    nice -n 10 .venv/bin/python benchmarks/chaos_blockwise.py [--kills 12] [--seed 0]

A tiny network (depth 2, 8 features, FOV 9³, deltas 3) is trained for 3000 steps on a 64³
``neuroflood synth`` volume; then the same ``neuroflood segment --block-size 20,32,32
--overlap 8,8,8 --nproc-per-node 2`` job (64 blocks over a 48x96x96 synthetic test volume,
2 hand-over rounds, 1 thread per worker) runs twice:

* undisturbed, to the end;
* disturbed: killed ``--kills`` times at random moments (a random delay while the workers
  start up, or a random number of finished blocks plus a random fraction of a second, so
  kills land inside blocks, hand-over rounds, the reconciliation and the output write),
  alternating SIGKILL of one worker (chosen at random; the job then fails) and SIGTERM of
  the whole job (the launcher and both workers, as SLURM signals a job step), and rerun with
  the same command after each kill until it finishes.

The final segmentation must equal the undisturbed one (``np.array_equal``). Reports kills,
reruns, blocks redone (block segmentations started more often than in the undisturbed run;
counted by a logging hook loaded into the workers through ``PYTHONPATH``: it only appends a
line per block start to a file) and anything left behind (temporary files in the job's
directories). The kill schedule comes from ``--seed`` and is recorded. Writes
``benchmarks/results/chaos_blockwise.json``. About 10 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
NEUROFLOOD = [sys.executable, "-m", "neuroflood"]
MODEL = "depth=2,features=8,fov=9,9,9,deltas=3,3,3"
SHAPE = "48,96,96"
BLOCK, OVERLAP = "20,32,32", "8,8,8"

# Loaded into every Python process of the job (PYTHONPATH); logs each block segmentation
# started: phase 1 and hand-over runs by the block's context corner.
HOOK = """
import os
LOG = os.environ.get("CHAOS_BLOCK_LOG")
if LOG:
    from neuroflood.infer.block_segmenter import FFNBlockSegmenter

    def _log(line):
        with open(LOG, "a") as f:
            f.write(line + "\\n")

    _call = FFNBlockSegmenter.__call__

    def call(self, image, block, corner, *args, **kwargs):
        _log("block " + ",".join(map(str, corner)))
        return _call(self, image, block, corner, *args, **kwargs)

    FFNBlockSegmenter.__call__ = call
    _extend = FFNBlockSegmenter.extend

    def extend(self, image, block, corner, *args, **kwargs):
        _log("handover " + ",".join(map(str, corner)))
        return _extend(self, image, block, corner, *args, **kwargs)

    FFNBlockSegmenter.extend = extend
"""


def sh(argv: list[str], cwd: Path) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}")


def segment_cmd(out: str) -> list[str]:
    return [
        *NEUROFLOOD,
        "segment",
        "--model",
        "model",
        "--image",
        "test.h5:image",
        "--out",
        out,
        "--block-size",
        BLOCK,
        "--overlap",
        OVERLAP,
        "--nproc-per-node",
        "2",
        "--threads",
        "1",
        "--no-progress",
        "--set",
        "options.min_segment_size=50",
    ]


def env_with_hook(work: Path, log: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{work / 'hook'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "CHAOS_BLOCK_LOG": str(log),
        "PYTHONUNBUFFERED": "1",
    }


def progress(workdir: Path) -> int:
    """Finished units of work: phase-1 blocks and hand-over blocks with a done marker."""
    if not workdir.exists():
        return 0
    return sum(1 for _ in workdir.glob("blocks/*.done")) + sum(1 for _ in workdir.glob("handover/*/*.done"))


def workers(launcher: psutil.Process) -> dict[int, psutil.Process]:
    out = {}
    for p in launcher.children():
        try:
            env = p.environ()
            if "RANK" in env:
                out[int(env["RANK"])] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def wait(pred, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not pred():
        if time.time() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def starts(log: Path) -> collections.Counter:
    return collections.Counter(log.read_text().splitlines()) if log.exists() else collections.Counter()


def leftovers(root: Path) -> list[str]:
    """Temporary files and directories under the output (names with tmp / writing / old)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if any(t in p.name for t in (".tmp", "tmp-", ".writing", ".old-")))


# A peer killed mid-collective makes the survivor fail in gloo ("Connection closed by peer",
# "Connection reset by peer"): expected. Any other error a worker raised is not.
EXPECTED = ("Connection closed by peer", "Connection reset by peer")


def unexpected_errors(log: Path) -> dict[str, int]:
    """Errors the workers raised (the last line of each traceback), other than EXPECTED."""
    import collections
    import re

    found = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^(?:\[rank\d+\]: )?([A-Za-z_.]*(?:Error|Exception)): (.*)", line)
        if m and not any(e in m.group(2) for e in EXPECTED):
            found[f"{m.group(1)}: {m.group(2)[:160]}"] += 1
    return dict(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "chaos_blockwise.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="chaos_blockwise_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "hook").mkdir(exist_ok=True)
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    rng = random.Random(args.seed)
    t_start = time.time()

    # A tiny trained network (an untrained one segments nothing here) and a test volume.
    sh([*NEUROFLOOD, "synth", "--shape", "64,64,64", "--seed", "0", "--out", "train.h5"], work)
    sh([*NEUROFLOOD, "synth", "--shape", SHAPE, "--seed", "4", "--out", "test.h5"], work)
    sh(
        [
            *NEUROFLOOD,
            "prepare",
            "--labels",
            "vol=train.h5:labels",
            "--out",
            "prep",
            "--lom-radius",
            "8,8,8",
            "--margin",
            "10,10,10",
            "--min-size",
            "100",
            "--allow-missing-classes",
            "--no-progress",
        ],
        work,
    )
    sh(
        [
            *NEUROFLOOD,
            "train",
            "--image",
            "vol=train.h5:image",
            "--labels",
            "vol=train.h5:labels",
            "--coords",
            "prep/coordinates.nfc",
            "--run-dir",
            "run",
            "--model",
            MODEL,
            "--optimizer",
            "adam",
            "--learning-rate",
            "0.001",
            "--batch-size",
            "4",
            "--max-steps",
            "3000",
            "--no-tensorboard",
            "--no-progress",
            "--threads",
            "1",
        ],
        work,
    )
    if not (work / "model").exists():
        os.symlink(work / "run" / "checkpoints" / "step-00003000" / "model", work / "model")

    # 1. Undisturbed.
    ref_log = work / "undisturbed.starts"
    t0 = time.time()
    r = subprocess.run(
        segment_cmd("ref.zarr/seg") + ["--summary", "ref.json"], cwd=work, capture_output=True, text=True, env=env_with_hook(work, ref_log)
    )
    if r.returncode != 0:
        raise RuntimeError(f"undisturbed run failed:\n{r.stderr[-3000:]}")
    undisturbed_s = time.time() - t0
    ref_summary = json.loads((work / "ref.json").read_text())
    units = progress(work / "ref.zarr" / ".seg.work")
    print(
        f"undisturbed: {ref_summary['blocks']} blocks, {units} units of work, {ref_summary['segments']} segments, {undisturbed_s:.0f} s",
        flush=True,
    )

    # 2. Disturbed.
    out, workdir, dis_log = "dis.zarr/seg", work / "dis.zarr" / ".seg.work", work / "disturbed.starts"
    log = open(work / "disturbed.log", "w")
    env = env_with_hook(work, dis_log)
    launcher: subprocess.Popen | None = None
    runs, exit_codes, kills = 0, [], []
    t0 = time.time()

    def start() -> subprocess.Popen:
        nonlocal runs
        runs += 1
        log.write(f"=== run {runs} at {progress(workdir)} units\n")
        log.flush()
        return subprocess.Popen(segment_cmd(out) + ["--summary", "dis.json"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)

    for k in range(args.kills):
        if launcher is None or launcher.poll() is not None:
            launcher = start()
        proc = psutil.Process(launcher.pid)
        mode = "SIGKILL worker" if k % 2 == 0 else "SIGTERM job"
        wait(lambda: len(workers(proc)) == 2 or launcher.poll() is not None, 120, "two workers")
        if rng.random() < 0.2:
            moment = {"when": "startup", "delay_s": round(rng.uniform(0.0, 4.0), 3)}
            time.sleep(moment["delay_s"])
        else:
            cur, left = progress(workdir), args.kills - k
            span = max(1, (units - cur) // left)
            target = max(cur, min(units - (left - 1), cur + rng.randint(1, 2 * span)))
            moment = {"when": "working", "after_units": target, "delay_s": round(rng.uniform(0.0, 0.5), 3)}
            wait(lambda: progress(workdir) >= target or launcher.poll() is not None, 600, f"{target} units")
            time.sleep(moment["delay_s"])
        if launcher.poll() is not None:
            raise RuntimeError(f"the job ended ({launcher.returncode}) before kill {k}; see {work}/disturbed.log")
        ws = workers(proc)
        record = {"kill": k, "mode": mode, **moment, "units_done": progress(workdir)}
        if mode == "SIGKILL worker":
            rank = rng.randrange(2)
            if rank in ws:
                os.kill(ws[rank].pid, signal.SIGKILL)
            record.update(rank=rank, pid=ws[rank].pid if rank in ws else None)
        else:
            for p in [proc, *ws.values()]:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
        launcher.wait(timeout=300)
        record["exit_code"] = launcher.returncode
        exit_codes.append(launcher.returncode)
        record["t_s"] = round(time.time() - t0, 1)
        kills.append(record)
        print(json.dumps(record), flush=True)

    launcher = start()
    launcher.wait(timeout=1800)
    exit_codes.append(launcher.returncode)
    disturbed_s = time.time() - t0
    log.close()

    # 3. Compare.
    from neuroflood.volume import open_volume

    ref = open_volume(str(work / "ref.zarr" / "seg"))[...]
    got = open_volume(str(work / out))[...]
    identical = bool(ref.dtype == got.dtype and np.array_equal(ref, got))
    s_ref, s_dis = starts(ref_log), starts(dis_log)
    redone = {kind: sum(max(0, s_dis[key] - s_ref[key]) for key in s_dis if key.startswith(kind)) for kind in ("block", "handover")}
    dis_summary = json.loads((work / "dis.json").read_text())
    result = {
        "benchmark": "chaos_blockwise",
        "command": "nice -n 10 .venv/bin/python benchmarks/chaos_blockwise.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()}-core CPU VM ({platform.machine()}), no GPU; shared with other agents' tests",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "kill_schedule_seed": args.seed,
        "setup": {
            "volume": f"neuroflood synth --shape {SHAPE} --seed 4",
            "model": MODEL + " (3000 steps on synth 64^3 seed 0)",
            "block_size": BLOCK,
            "overlap": OVERLAP,
            "workers": 2,
            "threads_per_worker": 1,
            "blocks": ref_summary["blocks"],
            "handover_rounds": ref_summary["handover_rounds"],
            "units_of_work": units,
        },
        "undisturbed_seconds": round(undisturbed_s, 1),
        "disturbed_seconds": round(disturbed_s, 1),
        "segments": ref_summary["segments"],
        "segments_disturbed": dis_summary["segments"],
        "kills": len(kills),
        "kills_sigkill_worker": sum(k["mode"] == "SIGKILL worker" for k in kills),
        "kills_sigterm_job": sum(k["mode"] == "SIGTERM job" for k in kills),
        "reruns": runs - 1,
        "exit_codes_after_kills": exit_codes[:-1],
        "final_exit_code": exit_codes[-1],
        "blocks_redone": redone["block"],
        "handover_blocks_redone": redone["handover"],
        "block_starts": {"undisturbed": sum(s_ref.values()), "disturbed": sum(s_dis.values())},
        "leftover_temporaries": leftovers(work / "dis.zarr"),
        "unexpected_worker_errors": unexpected_errors(work / "disturbed.log"),
        "identical": identical,
        "kill_log": kills,
        "wall_seconds": round(time.time() - t_start, 1),
        "work_dir": str(work),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "kill_log"}, indent=2))
    return 0 if identical and exit_codes[-1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
