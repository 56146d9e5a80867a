"""``tm bench``: send N tasks, wait for them, report throughput and latency percentiles."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from tmclient.client import Client


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def run_bench(
    client: Client,
    count: int,
    iterations: int,
    size: int = 64,
    concurrency: int = 4,
    timeout: float | None = None,
    on_sent: Callable[[int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Enqueue ``count`` random bodies of ``size`` bytes, wait for all, and measure.

    Latency is each task's ``completed_at - enqueued_at`` as its node recorded them (one clock,
    so no client/server skew). Throughput is tasks per second of wall time, from the first
    enqueue until the client saw the last completion.

    Raises:
        WaitTimeout, ApiError, NodesUnreachable: as ``Client.wait`` / ``Client.enqueue``.
    """
    started = time.monotonic()

    def send(_: int) -> str:
        task_id = client.enqueue(os.urandom(size), iterations)
        if on_sent is not None:
            on_sent(1)
        return task_id

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        ids = list(pool.map(send, range(count)))
        sent = time.monotonic() - started
        finished_at: list[float] = []

        def progress(done_count: int, total: int) -> None:
            if done_count == total and not finished_at:
                finished_at.append(time.monotonic())  # before ``wait`` asks the full statuses
            if on_progress is not None:
                on_progress(done_count, total)

        done = client.wait(ids, timeout=timeout, on_progress=progress)
        wall = (finished_at[0] if finished_at else time.monotonic()) - started
    statuses = list(done.values())  # each task's full status, as ``status`` gives it
    latencies = [s["completed_at"] - s["enqueued_at"] for s in statuses
                 if s.get("state") == "completed" and s.get("completed_at")]
    failed = sum(1 for s in statuses if s.get("state") == "failed")
    return {
        "tasks": count,
        "iterations": iterations,
        "body_bytes": size,
        "concurrency": concurrency,
        "completed": len(latencies),
        "failed": failed,
        "enqueue_seconds": round(sent, 4),
        "enqueued_per_second": round(count / sent, 2) if sent > 0 else None,
        "wall_seconds": round(wall, 4),
        "tasks_per_second": round(len(latencies) / wall, 2) if wall > 0 else None,
        "latency_seconds": {
            name: round(percentile(latencies, p), 4)
            for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        },
    }
