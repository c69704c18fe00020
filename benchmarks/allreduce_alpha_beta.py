"""Latency and bandwidth of a gloo all-reduce between 2 local ranks (for ``neuroflood study project``).

Times ``torch.distributed.all_reduce`` of a 4-byte and of a large float32 message on 2 CPU
processes and fits the α–β model of :mod:`neuroflood.studies.projection` for 2 ranks
(``t(M) = 2 α + M / β``, both algorithms agree at N = 2). Prints ``--latency-us`` and
``--bandwidth-gbps`` values for ``neuroflood study project``; these describe this host, not
a cluster network.

    .venv/bin/python benchmarks/allreduce_alpha_beta.py [--mbytes 2.6] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from neuroflood.distributed import free_port


def _rank(rank: int, port: int, mbytes: float, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    for name, n in (("small", 1), ("large", int(mbytes * 1e6 / 4))):
        t = torch.ones(n)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        result[name] = {"bytes": 4 * n, "median_s": sorted(times)[len(times) // 2]}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mbytes", type=float, default=2.6, help="size of the large message (MB), e.g. the gradients")
    p.add_argument("--repeats", type=int, default=200, help="timed all-reduces per size")
    args = p.parse_args()
    out = f"/tmp/allreduce_alpha_beta_{os.getpid()}.json"
    mp.spawn(_rank, (free_port(), args.mbytes, args.repeats, out), nprocs=2)
    with open(out) as f:
        r = json.load(f)
    os.unlink(out)
    small, large = r["small"], r["large"]
    alpha = small["median_s"] / 2  # 2 α for 2 ranks, the 4-byte transfer negligible
    # At N = 2 the model's bandwidth term is 2 · (1/2) · M / β = M / β.
    beta = large["bytes"] / max(large["median_s"] - 2 * alpha, 1e-12)
    print(json.dumps({**r, "latency_us": alpha * 1e6, "bandwidth_gbps": beta / 1e9}))
    print(f"--latency-us {alpha * 1e6:.1f} --bandwidth-gbps {beta / 1e9:.3f}")


if __name__ == "__main__":
    main()
