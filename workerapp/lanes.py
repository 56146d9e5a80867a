"""Compute lanes: one worker hashing on several CPUs at once.

A worker with ``lanes`` > 1 runs its claim-compute-post loop in that many threads (see
``Worker``). With the native engine the threads hash in parallel, since its chain runs without
the GIL; with the hashlib loop, which holds the GIL, each lane hands its chains to a pool of as
many processes (``ProcessCompute``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from tmcommon.cpus import available_cpus
from workerapp.compute import measure_hash_rate
from workerapp.engine import ComputeMany, Engine

ComputeFn = Callable[[bytes, int], str]


def parse_lanes(text: str) -> int:
    """``--lanes``: a number >= 1, or ``auto`` for one lane per available CPU."""
    if text.strip().lower() == "auto":
        return available_cpus()
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'auto', got {text!r}")
    return int(text)


class ProcessCompute:
    """``compute`` run in a pool of processes; a lane thread waits for its call without the GIL."""

    def __init__(self, compute: ComputeFn, processes: int) -> None:
        self._compute = compute
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
        # start the processes now, so that measuring the rate does not time their start-up
        list(self._pool.map(compute, [b""] * processes, [1] * processes))

    def __call__(self, data: bytes, iterations: int) -> str:
        return self._pool.submit(self._compute, data, iterations).result()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the calls not started, give those in progress ``timeout`` seconds, then kill
        the processes still busy; return once every process and the pool's thread have ended
        (not waiting, the worker exited while they and the pool's thread still used the pipes
        between them: an occasional "Bad file descriptor" at exit)."""
        processes = list((self._pool._processes or {}).values())  # the executor has no public handle
        killer = threading.Timer(timeout, lambda: [p.kill() for p in processes if p.is_alive()])
        killer.daemon = True
        killer.start()
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)  # a killed process breaks the pool: it ends
        finally:
            killer.cancel()


def lane_compute(engine: Engine, lanes: int) -> ComputeFn:
    """The task function for ``lanes`` threads: the engine's own when one lane suffices or it
    releases the GIL, else a ``ProcessCompute`` (close it when done)."""
    if lanes == 1 or engine.parallel:
        return engine.compute
    return ProcessCompute(engine.compute, lanes)


def measure_lanes(compute: ComputeFn, lanes: int, seconds: float = 0.05, *,
                  compute_many: ComputeMany | None = None, width: int = 1) -> tuple[float, float]:
    """(iterations/s of the slowest lane, of all lanes together), all lanes hashing at once: CPUs
    that share a core (hyper-threads) show here as less than ``lanes`` times one lane. With
    ``compute_many`` and ``width`` > 1, each lane runs ``width`` chains at once (vector lanes).

    Per second of the lane thread's own CPU time (what the lane does while it runs, whatever
    else the machine runs: on a busy machine a wall-clock rate was several times too low, and so
    were the claims and slices sized from it), or of wall time for a ``ProcessCompute``, whose
    thread only waits."""
    clock = time.perf_counter if isinstance(compute, ProcessCompute) else time.thread_time
    if compute_many is not None and width > 1:
        compute = widened(compute_many, width)
    if lanes == 1:
        rate = measure_hash_rate(seconds, clock=clock, compute_fn=compute)
        return rate * width, rate * width
    rates = [0.0] * lanes

    def measure(lane: int) -> None:
        compute(b"", 1)  # warm: a first call may start a process
        rates[lane] = measure_hash_rate(seconds, clock=clock, compute_fn=compute) * width

    threads = [threading.Thread(target=measure, args=(lane,), name=f"measure-{lane}") for lane in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return min(rates), sum(rates)


def widened(compute_many: ComputeMany, width: int) -> ComputeFn:
    """A task function that computes ``width`` distinct chains of the same length at once (and
    returns the first digest): its rate times ``width`` is the rate of all vector lanes."""
    def compute(data: bytes, iterations: int) -> str:
        return compute_many([(data + bytes([i]), iterations) for i in range(width)])[0]
    return compute
