"""Workers claim blocks one at a time and run them; one loop serves every phase of a job.

A phase (segmenting the blocks, one hand-over round) is a list of blocks and what to do with
one: run it (segment, save, mark done), where its done and failed markers are. Workers claim
indices from an atomic counter in the process group's store, so a slow block never holds the
others back; a block with a done marker is skipped (a rerun resumes), and a block that raises
gets a failed marker and is reported while the others go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..distributed import DistInfo
from .blocks import Block
from .jobfiles import record_failure


def default_store() -> Any:
    """The store of the default process group.

    torch has no public accessor for it; the process group is joined from the environment
    (torchrun, srun, mpiexec), so the store its rendezvous made is the one all ranks share,
    and its atomic ``add`` is what the claims need.
    """
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()


def claimer(n: int, info: DistInfo, key: str) -> Callable[[], int | None]:
    """A function returning the next unclaimed index below ``n`` (None when all are claimed)."""
    if not info.distributed:
        it = iter(range(n))
        return lambda: next(it, None)
    store = default_store()

    def claim() -> int | None:
        i = int(store.add(key, 1)) - 1
        return i if i < n else None

    return claim


@dataclass
class Phase:
    """One pass over ``blocks``: ``run(block)`` segments it, saves it and writes ``done(block)``,
    returning its counters; a raise writes ``failed(block)`` (with ``failure_fields``)."""

    blocks: Sequence[Block]
    run: Callable[[Block], dict]
    done: Callable[[Block], Path]
    failed: Callable[[Block], Path]
    describe: Callable[[Block], str]  # "block 3", for the failure message
    failure_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseResult:
    """What this worker did in a phase."""

    run: list[int] = field(default_factory=list)  # block indices
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    fov_evaluations: int = 0


def run_phase(phase: Phase, info: DistInfo, key: str, tick: Callable[[], None] = lambda: None) -> PhaseResult:
    """Claim (store counter ``key``) and run blocks of ``phase`` until none is left; ``tick()``
    after each (progress). Every rank of the job calls this."""
    claim = claimer(len(phase.blocks), info, key)
    result = PhaseResult()
    while (j := claim()) is not None:
        block = phase.blocks[j]
        if phase.done(block).exists():
            result.skipped += 1
        else:
            try:
                counters = phase.run(block)
                result.fov_evaluations += int(counters.get("fov_evaluations", 0))
                result.run.append(block.index)
            except Exception as e:  # one bad block must not stop the others; report it at the end
                what = phase.describe(block)
                result.failed.append(record_failure(phase.failed(block), block, e, info, what, **phase.failure_fields))
        tick()
    return result


__all__ = ["Phase", "PhaseResult", "claimer", "default_store", "run_phase"]
