"""Chaos run of distributed training: kill it at random moments, resume, compare bit for bit.

    nice -n 10 .venv/bin/python benchmarks/chaos_train.py [--steps 400] [--kills 12] [--seed 0]

Two runs of the same command, ``neuroflood train --nproc-per-node 2 --max-restarts 100`` (gloo,
1 thread per rank, a tiny network on a 48³ synthetic volume made by ``neuroflood synth`` and
``neuroflood prepare``, a checkpoint every 5 steps, a summary every step):

* undisturbed: run to the step budget;
* disturbed: the same seeds, killed ``--kills`` times at random moments (a random delay while
  the workers start up, or a random step plus a random fraction of a second while they
  train, so kills also land in checkpoint writes). Kills alternate between SIGKILL of one
  rank (chosen at random; torchrun's agent then restarts every worker from the latest
  checkpoint) and SIGTERM of the whole job (the launcher and every worker, as SLURM signals a
  job step; the job checkpoints and exits, and is started again with ``--resume``) until it
  reaches the step budget.

The final weights (``model.safetensors`` of the last checkpoint) must be identical, tensor by
tensor and byte for byte, to the undisturbed run's, as must the loss of every step (the last
time it was logged); this is the guarantee of ``tests/test_train_loop.py::test_resume_is_exact``
and ``tests/test_distributed.py``, under real kills. Reports kills, agent restarts, reruns,
steps redone and anything lost or left behind (temporary checkpoint directories, steps never
logged). The kill schedule comes from ``--seed`` and is recorded. Writes
``benchmarks/results/chaos_train.json``. About 5 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
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

import psutil

ROOT = Path(__file__).resolve().parents[1]
NEUROFLOOD = [sys.executable, "-m", "neuroflood"]
MODEL = "depth=1,features=4,fov=9,9,9,deltas=2,2,2"
EVERY = 5  # checkpoint every EVERY steps


def sh(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)


def train_cmd(run: Path, steps: int, resume: bool) -> list[str]:
    return [
        *NEUROFLOOD,
        "train",
        "--image",
        "vol=vol.h5:image",
        "--labels",
        "vol=vol.h5:labels",
        "--coords",
        "prep/coordinates.nfc",
        "--run-dir",
        str(run),
        "--model",
        MODEL,
        "--optimizer",
        "adam",
        "--learning-rate",
        "0.01",
        "--batch-size",
        "2",
        "--max-steps",
        str(steps),
        "--checkpoint-every-steps",
        str(EVERY),
        "--summary-every-steps",
        "1",
        "--keep-last",
        "3",
        "--no-tensorboard",
        "--no-progress",
        "--threads",
        "1",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "100",
        *(["--resume"] if resume else []),
    ]


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"corrupt": line})
    return out


def last_step(run: Path) -> int:
    recs = [r for r in metrics(run) if "step" in r]
    return recs[-1]["step"] if recs else 0


def workers(launcher: psutil.Process) -> dict[int, psutil.Process]:
    """rank -> worker process of the launcher (torchrun's agent runs inside the launcher)."""
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
        time.sleep(0.01)


def safetensors_of(run: Path, steps: int) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "checkpoints" / f"step-{steps:08d}" / "model" / "model.safetensors"))


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
    ap.add_argument("--steps", type=int, default=400, help="step budget")
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "chaos_train.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="chaos_train_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    t_start = time.time()

    sh([*NEUROFLOOD, "synth", "--shape", "48,48,48", "--seed", "0", "--out", "vol.h5"], work)
    sh(
        [
            *NEUROFLOOD,
            "prepare",
            "--labels",
            "vol=vol.h5:labels",
            "--out",
            "prep",
            "--lom-radius",
            "6,6,6",
            "--margin",
            "8,8,8",
            "--min-size",
            "50",
            "--allow-missing-classes",
            "--no-progress",
        ],
        work,
    )

    # 1. Undisturbed.
    t0 = time.time()
    ref = work / "undisturbed"
    r = subprocess.run(train_cmd(ref, args.steps, False), cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"undisturbed run failed:\n{r.stderr[-3000:]}")
    undisturbed_s = time.time() - t0
    print(f"undisturbed: {args.steps} steps in {undisturbed_s:.0f} s", flush=True)

    # 2. Disturbed.
    run = work / "disturbed"
    log = open(work / "disturbed.log", "w")
    launcher: subprocess.Popen | None = None
    starts, exit_codes, kills = 0, [], []
    t0 = time.time()

    def start() -> subprocess.Popen:
        nonlocal starts
        starts += 1
        resume = (run / "checkpoints").is_dir() and any(p.name.startswith("step-") for p in (run / "checkpoints").iterdir())
        log.write(f"=== start {starts} (resume={resume}) at step {last_step(run)}\n")
        log.flush()
        return subprocess.Popen(train_cmd(run, args.steps, resume), cwd=work, stdout=log, stderr=subprocess.STDOUT)

    for k in range(args.kills):
        if launcher is None or launcher.poll() is not None:
            launcher = start()
        proc = psutil.Process(launcher.pid)
        mode = "SIGKILL rank" if k % 2 == 0 else "SIGTERM job"
        # Leave room for the remaining kills below the budget.
        room = args.steps - EVERY - 30 * (args.kills - k)
        wait(lambda: len(workers(proc)) == 2 or launcher.poll() is not None, 120, "two workers")
        if rng.random() < 0.25:
            moment = {"when": "startup", "delay_s": round(rng.uniform(0.0, 4.0), 3)}
            time.sleep(moment["delay_s"])
        else:
            now = last_step(run)
            target = min(now + rng.randint(1, 30), room)
            moment = {"when": "training", "after_step": target, "delay_s": round(rng.uniform(0.0, 0.3), 3)}
            # A resumed job first redoes steps up to `now`; wait for a line logged by this job.
            n_lines = len(metrics(run))
            wait(lambda: (len(metrics(run)) > n_lines and last_step(run) >= target) or launcher.poll() is not None, 300, f"step {target}")
            time.sleep(moment["delay_s"])
        if launcher.poll() is not None:
            raise RuntimeError(f"the job exited ({launcher.returncode}) before kill {k}; see {work}/disturbed.log")
        ws = workers(proc)
        at = last_step(run)
        record = {"kill": k, "mode": mode, **moment, "last_logged_step": at}
        if mode == "SIGKILL rank":
            rank = rng.randrange(2)
            old = {p.pid for p in ws.values()}
            if rank in ws:
                os.kill(ws[rank].pid, signal.SIGKILL)
            record.update(rank=rank, pid=ws[rank].pid if rank in ws else None)
            # torchrun's agent notices, stops the other worker and starts two new ones.
            wait(
                lambda: (len(w := workers(proc)) == 2 and not {p.pid for p in w.values()} & old) or launcher.poll() is not None,
                180,
                "the agent's restart",
            )
            record["agent_restarted"] = launcher.poll() is None
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

    # Run to the end (rerun with --resume if the last kill stopped the job).
    if launcher is None or launcher.poll() is not None:
        launcher = start()
    launcher.wait(timeout=1800)
    exit_codes.append(launcher.returncode)
    disturbed_s = time.time() - t0
    log.close()

    # 3. Compare.
    a, b = safetensors_of(ref, args.steps), safetensors_of(run, args.steps)
    same_keys = sorted(a) == sorted(b)
    differing = [k for k in a if k not in b or a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes()]
    ref_loss = {r["step"]: r["loss"] for r in metrics(ref) if r.get("split") == "train"}
    recs = metrics(run)
    got_loss: dict[int, float] = {}
    redone, prev = 0, 0
    for rec in recs:
        if rec.get("split") != "train":
            continue
        s = rec["step"]
        if s <= prev:  # a restart: the job went back to the checkpoint at s - 1
            redone += prev - (s - 1)
        prev = s
        got_loss[s] = rec["loss"]
    loss_differs = [s for s in ref_loss if got_loss.get(s) != ref_loss[s]]
    never_logged = [s for s in range(1, args.steps + 1) if s not in got_loss]
    launches = [json.loads(s) for s in (run / "launches.jsonl").read_text().splitlines()]
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))
    leftovers += sorted(p.name for p in run.iterdir() if p.name.startswith("."))
    identical = same_keys and not differing and not loss_differs
    result = {
        "benchmark": "chaos_train",
        "command": "nice -n 10 .venv/bin/python benchmarks/chaos_train.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()}-core CPU VM ({platform.machine()}), no GPU; shared with other agents' tests",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "kill_schedule_seed": args.seed,
        "setup": {
            "volume": "neuroflood synth --shape 48,48,48 --seed 0",
            "model": MODEL,
            "ranks": 2,
            "backend": "gloo",
            "threads_per_rank": 1,
            "batch_size_per_rank": 2,
            "optimizer": "adam",
            "steps": args.steps,
            "checkpoint_every_steps": EVERY,
            "max_restarts": 100,
        },
        "undisturbed_seconds": round(undisturbed_s, 1),
        "disturbed_seconds": round(disturbed_s, 1),
        "kills": len(kills),
        "kills_sigkill_rank": sum(k["mode"] == "SIGKILL rank" for k in kills),
        "kills_sigterm_job": sum(k["mode"] == "SIGTERM job" for k in kills),
        "job_starts": starts,
        "job_reruns": starts - 1,
        "sigterm_exit_codes": exit_codes[:-1],
        "final_exit_code": exit_codes[-1],
        "agent_restarts": sum(1 for x in launches if x["restart"] > 0),
        "launches_recorded": len(launches),
        "resumed_from": [x["resumed_from"] for x in launches],
        "steps_redone": redone,
        "steps_never_logged": never_logged,
        "corrupt_metric_lines": sum("corrupt" in r for r in recs),
        "leftover_temporaries": leftovers,
        "weights_identical": same_keys and not differing,
        "tensors_compared": len(a),
        "tensors_differing": differing,
        "losses_compared": len(ref_loss),
        "losses_differing_steps": loss_differs[:20],
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
