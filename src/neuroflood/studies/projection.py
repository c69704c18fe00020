"""A model of synchronous data-parallel scaling: from one measured run to thousands of ranks.

A synchronous step ends when the slowest rank has finished its work and the gradients have
been averaged. With per-rank work times ``w`` (example generation + forward + backward) drawn
from the distribution measured on a real run, and an all-reduce of ``M`` bytes over ``N``
ranks, the step time at ``N`` ranks is modelled as::

    step(N) = E[max(w_1, …, w_N)] + allreduce(N, M)        (step(1) = E[w])

``E[max]`` comes from Monte-Carlo draws of the measured distribution (bootstrap), so heavy
tails count as they were measured. The all-reduce follows the α–β (latency–bandwidth) model:

=====  ==========================================================  =====================
ring   ``2 (N-1) α + 2 (N-1)/N · M/β``                             bandwidth-optimal
tree   ``2 ⌈log2 N⌉ α + 2 (N-1)/N · M/β`` (recursive halving and  latency-optimal
       doubling, Rabenseifner; NCCL's double binary trees reach
       the same order)
best   the smaller of the two at each N
=====  ==========================================================  =====================

Efficiency is throughput per rank against one rank: ``E[w] / step(N)``. The split tells
where efficiency goes: ``straggler_s = E[max] - E[w]`` (waiting for the slowest rank) and
``allreduce_s`` (communication). The model assumes no overlap of communication with the
backward pass (DDP overlaps part of it), so it is a lower bound of efficiency where
communication matters, and exact where stragglers dominate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class Interconnect:
    """Latency (s) and bandwidth (bytes/s) of one rank's link, from public specifications."""

    name: str
    latency_s: float
    bandwidth_bps: float
    source: str = ""

    def allreduce_s(self, workers: int, message_bytes: float, algorithm: str = "best") -> float:
        """α–β time of one all-reduce of ``message_bytes`` over ``workers`` ranks."""
        n = int(workers)
        if n <= 1:
            return 0.0
        bandwidth_term = 2.0 * (n - 1) / n * message_bytes / self.bandwidth_bps
        ring = 2.0 * (n - 1) * self.latency_s + bandwidth_term
        tree = 2.0 * math.ceil(math.log2(n)) * self.latency_s + bandwidth_term
        if algorithm == "ring":
            return ring
        if algorithm == "tree":
            return tree
        if algorithm == "best":
            return min(ring, tree)
        raise ConfigError(f"all-reduce algorithm {algorithm!r} is not ring, tree or best")


# Nominal figures of one node's network link (MPI point-to-point latency, unidirectional
# injection bandwidth). Real all-reduces reach a fraction of the bandwidth; pass measured
# values with --latency-us / --bandwidth-gbps when you have them.
INTERCONNECTS = {
    "aries": Interconnect("aries", 1.3e-6, 10e9, "Cray XC40 Aries (ALCF Theta): ~1.3 us MPI latency, ~10 GB/s per node"),
    "slingshot11": Interconnect("slingshot11", 2.0e-6, 25e9, "HPE Slingshot-11 (Polaris, Frontier): 200 Gb/s NIC, ~2 us"),
    "ib-hdr": Interconnect("ib-hdr", 1.0e-6, 25e9, "InfiniBand HDR: 200 Gb/s per port, ~1 us MPI latency"),
    "ib-ndr": Interconnect("ib-ndr", 1.0e-6, 50e9, "InfiniBand NDR: 400 Gb/s per port, ~1 us MPI latency"),
    "ethernet-10g": Interconnect("ethernet-10g", 20e-6, 1.25e9, "10 Gb Ethernet with TCP: ~20 us, 1.25 GB/s"),
}


def interconnect(name: str = "aries", latency_us: float | None = None, bandwidth_gbps: float | None = None) -> Interconnect:
    """A preset by name, with latency (microseconds) or bandwidth (GB/s) overridden."""
    if name not in INTERCONNECTS:
        raise ConfigError(f"unknown interconnect {name!r}; use one of {', '.join(INTERCONNECTS)}")
    base = INTERCONNECTS[name]
    lat = base.latency_s if latency_us is None else float(latency_us) * 1e-6
    bw = base.bandwidth_bps if bandwidth_gbps is None else float(bandwidth_gbps) * 1e9
    if not (math.isfinite(lat) and lat >= 0):
        raise ConfigError(f"--latency-us {latency_us} must be a finite number >= 0")
    if not (math.isfinite(bw) and bw > 0):
        raise ConfigError(f"--bandwidth-gbps {bandwidth_gbps} must be a finite number > 0")
    custom = latency_us is not None or bandwidth_gbps is not None
    return Interconnect(f"{name}+custom" if custom else name, lat, bw, base.source)


def expected_max(samples: np.ndarray, n: int, trials: int = 2000, seed: int = 0) -> float:
    """E[max of ``n`` draws] from the empirical distribution ``samples``, by Monte-Carlo."""
    samples = np.asarray(samples, np.float64).ravel()
    if samples.size == 0:
        raise ConfigError("no step times to project from; the run recorded no per-rank timing")
    if n <= 1:
        return float(samples.mean())
    rng = np.random.default_rng(seed)
    # Draw in chunks so that 4096 ranks x 2000 trials stays small in memory.
    total, done = 0.0, 0
    chunk = max(1, 2_000_000 // n)
    while done < trials:
        k = min(chunk, trials - done)
        total += rng.choice(samples, size=(k, n), replace=True).max(axis=1).sum()
        done += k
    return total / trials


@dataclass
class ProjectionPoint:
    workers: int
    efficiency: float
    fovs_per_s: float
    step_s: float
    straggler_s: float
    allreduce_s: float
    overhead_s: float = 0.0


def project(
    work_s: np.ndarray,
    fovs_per_step: int,
    workers: Iterable[int],
    net: Interconnect,
    message_bytes: float,
    algorithm: str = "best",
    trials: int = 2000,
    seed: int = 0,
    overhead_s: float = 0.0,
) -> list[ProjectionPoint]:
    """Throughput and efficiency at each worker count from per-rank work times ``work_s``.

    ``fovs_per_step`` is each rank's batch; ``message_bytes`` the gradients' size;
    ``overhead_s`` a fixed cost per synchronous step beyond stragglers and the all-reduce
    (other collectives, process contention; see :func:`measured_overhead`), paid from two
    ranks on.
    """
    if not (math.isfinite(overhead_s) and overhead_s >= 0):
        raise ConfigError(f"the per-step overhead {overhead_s} s must be finite and >= 0")
    work_s = np.asarray(work_s, np.float64).ravel()
    if work_s.size == 0 or not np.all(np.isfinite(work_s)) or work_s.min() < 0:
        raise ConfigError("per-rank work times must be finite, non-negative and at least one")
    mean = float(work_s.mean())
    points = []
    for n in workers:
        n = int(n)
        if n < 1:
            raise ConfigError(f"worker count {n} must be at least 1")
        emax = expected_max(work_s, n, trials, seed)
        comm = net.allreduce_s(n, message_bytes, algorithm)
        extra = overhead_s if n > 1 else 0.0
        step = emax + comm + extra
        points.append(
            ProjectionPoint(
                workers=n,
                efficiency=mean / step if step > 0 else 1.0,
                fovs_per_s=n * fovs_per_step / step if step > 0 else math.inf,
                step_s=step,
                straggler_s=emax - mean,
                allreduce_s=comm,
                overhead_s=extra,
            )
        )
    return points


def measured_overhead(wait_s: np.ndarray, modelled: ProjectionPoint) -> float:
    """What a run's ranks waited per step beyond the model's stragglers and all-reduce (>= 0).

    ``wait_s`` are the run's per-rank waits, ``modelled`` the model (without overhead) at the
    run's own rank count. A one-rank run has no synchronous step: 0.
    """
    if modelled.workers <= 1:
        return 0.0
    return max(0.0, float(np.mean(wait_s)) - modelled.straggler_s - modelled.allreduce_s)


def normal_max_factor(n: int, trials: int = 4000, seed: int = 0) -> float:
    """E[max of n standard normal draws] (Monte-Carlo), e.g. ~3.24 for n = 1024."""
    if n <= 1:
        return 0.0
    rng = np.random.default_rng(seed)
    total, done, chunk = 0.0, 0, max(1, 2_000_000 // n)
    while done < trials:
        k = min(chunk, trials - done)
        total += rng.standard_normal((k, n)).max(axis=1).sum()
        done += k
    return total / trials


def cv_for_efficiency(target: float, n: int, mean_s: float, comm_s: float, trials: int = 4000) -> float:
    """The per-rank coefficient of variation (normal work times) that keeps ``target`` at ``n``.

    With work ~ Normal(mean, (cv·mean)²), E[max] = mean (1 + cv·z_n), z_n the expected maximum
    of n standard normals; solve mean / (mean (1 + cv·z_n) + comm) = target for cv.
    Returns 0 where communication alone already costs more than the target allows.
    """
    if not 0 < target <= 1:
        raise ConfigError(f"target efficiency {target} must lie in (0, 1]")
    z = normal_max_factor(n, trials)
    slack = mean_s / target - mean_s - comm_s  # time left for stragglers
    if slack <= 0 or z <= 0:
        return 0.0
    return slack / (mean_s * z)


def projection_json(points: Sequence[ProjectionPoint], net: Interconnect, meta: dict) -> dict:
    return {"interconnect": asdict(net), **meta, "points": [asdict(p) for p in points]}
