"""The end-to-end workloads, generated from a seed, and their expected results (cached on disk).

Every system gets exactly the same tasks (same bodies, same iterations, same order), and every
result it returns is checked against ``workerapp.compute.compute`` of the same input.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass

from bench.common import RESULTS_DIR, loadavg, submit_all, wait_until
from workerapp.compute import compute


@dataclass(frozen=True)
class Workload:
    name: str
    count: int
    min_iterations: int
    max_iterations: int
    body_bytes: int = 64
    seed: int = 5

    def tasks(self) -> list[tuple[bytes, int]]:
        """``(body, iterations)`` for each task, the same on every call."""
        rng = random.Random(f"{self.name}-{self.seed}")
        return [(rng.randbytes(self.body_bytes), rng.randint(self.min_iterations, self.max_iterations))
                for _ in range(self.count)]

    @property
    def total_iterations(self) -> int:
        return sum(it for _, it in self.tasks())

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def expected(self) -> list[str]:
        """The correct result of each task, computed once and then read from bench/results/."""
        path = RESULTS_DIR / f"expected-{self.name}-{self.key()}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        results = [compute(body, iterations) for body, iterations in self.tasks()]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results))
        return results


def standard(scale: float = 1.0) -> list[Workload]:
    """The three workloads of the issue; ``scale`` < 1 shrinks counts and iterations (smoke runs)."""
    def n(value: int) -> int:
        return max(2, round(value * scale))
    return [
        Workload("small", n(2000), 1, 1),
        Workload("compute", n(32), n(1_000_000), n(1_000_000)),
        Workload("mixed", n(500), 1, n(200_000)),
    ]


def by_name(scale: float = 1.0) -> dict[str, Workload]:
    return {w.name: w for w in standard(scale)}


def check(workload: Workload, results: list[str | None]) -> dict:
    """Compare results (by task index) with the expected ones: counts of ok, wrong, missing."""
    expected = workload.expected()
    ok = sum(1 for got, want in zip(results, expected) if got == want)
    missing = sum(1 for got in results if got is None) + max(0, len(expected) - len(results))
    return {"ok": ok, "wrong": len(expected) - ok - missing, "missing": missing, "verified": ok == len(expected)}


def run_workload(system, workload: Workload, clients: int, timeout: float) -> dict:
    """Enqueue every task of ``workload`` into ``system``, wait for all results, check them.

    Wall time runs from just before the first enqueue to the last completion time the system
    itself recorded, so the polling for completion (every 0.25 s, to keep its cost off the
    nodes) does not blur it. ``system.cpu()`` gives CPU seconds by role; their growth over the
    run shows where the machine's time went.
    """
    tasks = workload.tasks()
    base = system.done_count()
    load = loadavg()
    cpu_before, client_before, wait_before = system.cpu(), time.process_time(), system.runqueue_wait()
    start = time.time()
    ids, enqueue_seconds = submit_all(tasks, clients, system.make_submit)
    wait_until(lambda: system.done_count() >= base + len(tasks) or system.failed_count(), timeout,
               interval=0.25, what=f"{workload.name}: {len(tasks)} results")
    observed = time.time()
    cpu_after, client_after, wait_after = system.cpu(), time.process_time(), system.runqueue_wait()
    results, last = system.results(ids)
    wall = last - start
    return {"workload": workload.name, "tasks": len(tasks), "wall_s": wall, "tasks_per_s": len(tasks) / wall,
            "enqueue_s": enqueue_seconds, "observed_wall_s": observed - start, "loadavg": load,
            "cpu_s": {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 2) for k in cpu_after},
            "client_cpu_s": round(client_after - client_before, 2),
            "runqueue_wait_s": {k: round(wait_after[k] - wait_before.get(k, 0.0), 2) for k in wait_after},
            "check": check(workload, results)}
