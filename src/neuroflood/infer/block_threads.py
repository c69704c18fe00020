"""Several blocks at once in one worker, so that a batched executor gets full batches.

A worker of a blockwise job runs its blocks one after the other (:func:`run_phase`). With a
batch size K, :func:`run_phase_threads` runs K of them at once, each in its own thread with
its own Canvas; the threads share the segmenter's :class:`BatchedExecutor`, which gathers
their FOV requests into one network call of up to K FOVs. Blocks are claimed from the same
counter as before (a thread claims under a lock), so a job of several workers each running
K threads still runs every block exactly once. The Canvas work of the threads is Python and
takes turns (the GIL); the network call, most of the time for a large network and much of
it for a small one, serves all of them at once.

Each block is segmented exactly as alone: its Canvas sees the same logits (on CPU oneDNN
computes every FOV of a batch bit-identically to the FOV alone), and blocks of a phase do
not depend on one another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..distributed import DistInfo
from .jobfiles import record_failure
from .scheduler import Phase, PhaseResult, claimer, run_phase


def run_phase_threads(phase: Phase, info: DistInfo, key: str, tick: Callable[[], None] = lambda: None, threads: int = 1) -> PhaseResult:
    """:func:`~neuroflood.infer.scheduler.run_phase` with ``threads`` blocks in flight at once.

    ``threads`` <= 1 is ``run_phase`` itself. Otherwise each thread claims (store counter
    ``key``) and runs blocks until none is left; a block that raises is recorded and the
    others go on, as in ``run_phase``. Every rank of the job calls this.
    """
    if threads <= 1:
        return run_phase(phase, info, key, tick)
    claim = claimer(len(phase.blocks), info, key)
    lock = threading.Lock()
    result = PhaseResult()
    crashed: list[BaseException] = []

    def work() -> None:
        try:
            while True:
                with lock:
                    j = claim() if not crashed else None
                if j is None:
                    return
                block = phase.blocks[j]
                if phase.done(block).exists():
                    with lock:
                        result.skipped += 1
                else:
                    try:
                        counters = phase.run(block)
                        with lock:
                            result.fov_evaluations += int(counters.get("fov_evaluations", 0))
                            result.run.append(block.index)
                    except Exception as e:  # one bad block must not stop the others
                        failure = record_failure(phase.failed(block), block, e, info, phase.describe(block), **phase.failure_fields)
                        with lock:
                            result.failed.append(failure)
                with lock:
                    tick()
        except BaseException as e:  # the claim or the bookkeeping itself failed: stop all threads
            with lock:
                crashed.append(e)

    # daemon: an interrupted worker exits without waiting for blocks in flight (a rerun redoes them)
    pool = [threading.Thread(target=work, name=f"neuroflood-block-{k}", daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if crashed:
        raise crashed[0]
    return result


__all__ = ["run_phase_threads"]
