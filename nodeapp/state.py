"""The node's state: queue, leases, results and worker registry, behind one lock.

Everything a request thread or the scaler thread reads or changes lives in ``NodeState``;
every public method takes ``self._lock``. Nothing here does I/O, so the lock is only ever held
for short, bounded work.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
PENDING, LIVE = "pending", "live"


class QueueFull(Exception):
    """The queue holds MAX_QUEUED tasks; the client should retry later."""


class Draining(Exception):
    """The node is shutting down and accepts no new task."""


@dataclass(slots=True)
class Task:
    id: str
    iterations: int
    enqueued_at: float
    data: bytes | None
    state: str = QUEUED
    attempts: int = 0
    worker_id: str | None = None
    lease_deadline: float = 0.0
    result: str | None = None
    completed_at: float | None = None
    reason: str | None = None
    seq: int = 0  # submission order: requeued tasks keep it even when timestamps tie
    encoded: bytes | None = None  # summary() as JSON, made once when first listed


    def public(self) -> dict:
        """The task as ``GET /status`` shows it."""
        out = {"id": self.id, "state": self.state, "iterations": self.iterations, "enqueued_at": self.enqueued_at}
        if self.state == RUNNING:
            out["attempts"] = self.attempts
        if self.result is not None:
            out["result"] = self.result
        if self.completed_at is not None:
            out["completed_at"] = self.completed_at
        if self.reason is not None:
            out["reason"] = self.reason
        return out

    def summary(self) -> dict:
        """The task as ``pullCompleted`` lists it."""
        return {"id": self.id, "result": self.result, "iterations": self.iterations, "completed_at": self.completed_at}

    def encoded_summary(self) -> bytes:
        """``summary()`` as compact JSON. A completed task never changes, so it is encoded once;
        a race between two threads only encodes the same bytes twice."""
        if self.encoded is None:
            self.encoded = encode_json(self.summary())
        return self.encoded


def encode_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(slots=True)
class WorkerInfo:
    id: str
    launched_at: float
    state: str = PENDING
    last_seen: float | None = None
    borrowed: bool = False


@dataclass(frozen=True)
class ScalingFigures:
    """What the scaler decides from, read in one consistent snapshot."""

    queued: int
    queued_iterations: int
    oldest_wait: float
    live: int
    pending: int
    max_workers: int
    running: int


@dataclass(frozen=True)
class WorkerGone:
    """What ``worker_down`` did: whether the worker was known, tasks put back, slot to return."""

    removed: bool
    requeued: int
    failed: int
    borrowed: bool


@dataclass
class Counters:
    enqueued: int = 0
    completed: int = 0
    failed: int = 0
    rejected_full: int = 0
    leases_expired: int = 0
    workers_launched: int = 0
    workers_down: int = 0


class NodeState:
    """All mutable state of a node. Thread-safe: each public method holds the one lock.

    Args:
        max_workers: this node's own worker quota (MAX_NUM_OF_WORKERS).
        lease_seconds: how long a claimed task stays leased without a heartbeat.
        max_attempts: lost leases after which a task is failed instead of requeued.
        max_queued: queued tasks at which ``submit`` raises ``QueueFull``.
        results_retention: completed (and, separately, failed) tasks kept.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        *,
        max_workers: int = 5,
        lease_seconds: float = 30.0,
        max_attempts: int = 5,
        max_queued: int = 100_000,
        results_retention: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.results_retention = results_retention
        self._queue: deque[Task] = deque()
        self._queued_iterations = 0
        self._running: dict[str, Task] = {}
        self._active: dict[str, Task] = {}  # queued or running, by id
        self._completed: OrderedDict[str, Task] = OrderedDict()  # oldest first
        self._failed: OrderedDict[str, Task] = OrderedDict()
        self._workers: dict[str, WorkerInfo] = {}
        self._base_max = max_workers
        self._lent = 0
        self._borrowed = 0
        self._draining = False
        self._departed: list[str] = []  # workers gone down, for the launcher to terminate
        self._quota_owed = 0  # borrowed slots freed but not yet given back to the peer
        self.counters = Counters()
        self._seq = 0

    # ----------------------------------------------------------------- tasks
    def submit(self, data: bytes, iterations: int) -> str:
        """Queue a task at the tail and return its id.

        Raises:
            QueueFull: MAX_QUEUED tasks are already waiting.
            Draining: the node is shutting down.
        """
        with self._lock:
            if self._draining:
                raise Draining()
            if len(self._queue) >= self.max_queued:
                self.counters.rejected_full += 1
                raise QueueFull()
            self._seq += 1
            task = Task(uuid.uuid4().hex, iterations, self._clock(), data, seq=self._seq)
            self._queue.append(task)
            self._active[task.id] = task
            self._queued_iterations += iterations
            self.counters.enqueued += 1
            return task.id

    def claim(self, worker_id: str, max_tasks: int = 1, max_iterations: int | None = None) -> list[Task]:
        """Lease up to ``max_tasks`` tasks from the head of the queue to ``worker_id``.

        Stops before the declared iterations would exceed ``max_iterations`` (the first task is
        always given), so that waiting work stays visible to the scaler. Marks a registered
        worker as live.
        """
        with self._lock:
            now = self._clock()
            self._seen(worker_id, now)
            leased: list[Task] = []
            budget = max_iterations
            while self._queue and len(leased) < max_tasks:
                task = self._queue[0]
                if leased and budget is not None and task.iterations > budget:
                    break
                self._queue.popleft()
                self._queued_iterations -= task.iterations
                task.state, task.worker_id = RUNNING, worker_id
                task.lease_deadline = now + self.lease_seconds
                self._running[task.id] = task
                leased.append(task)
                if budget is not None:
                    budget -= task.iterations
            return leased

    def complete(self, worker_id: str, results: Iterable[tuple[str, str]]) -> int:
        """Record results; returns how many were accepted.

        A result counts only for a task currently leased to ``worker_id``: a result for an
        unknown, requeued, re-leased or already completed task is ignored.
        """
        accepted = 0
        with self._lock:
            now = self._clock()
            self._seen(worker_id, now)
            for task_id, result in results:
                task = self._running.get(task_id)
                if task is None or task.worker_id != worker_id:
                    continue
                del self._running[task_id]
                del self._active[task_id]
                task.state, task.result, task.completed_at = COMPLETED, result, now
                task.data, task.worker_id = None, None
                self._remember(self._completed, task)
                self.counters.completed += 1
                accepted += 1
        return accepted

    def heartbeat(self, worker_id: str, task_ids: Iterable[str]) -> int:
        """Renew the leases ``worker_id`` holds among ``task_ids``; returns how many."""
        with self._lock:
            now = self._clock()
            self._seen(worker_id, now)
            renewed = 0
            for task_id in task_ids:
                task = self._running.get(task_id)
                if task is not None and task.worker_id == worker_id:
                    task.lease_deadline = now + self.lease_seconds
                    renewed += 1
            return renewed

    def requeue_expired(self) -> tuple[int, int]:
        """Put tasks whose lease ran out back at the head; returns (requeued, failed)."""
        with self._lock:
            now = self._clock()
            expired = [t for t in self._running.values() if t.lease_deadline <= now]
            self.counters.leases_expired += len(expired)
            return self._lose_leases(expired, "lease expired")

    def status(self, task_id: str) -> dict | None:
        with self._lock:
            task = self._active.get(task_id) or self._completed.get(task_id) or self._failed.get(task_id)
            return task.public() if task else None

    def newest_completed(self, top: int) -> list[Task]:
        """The ``top`` newest completed tasks, newest first. O(top). Completed tasks are
        never changed again, so the caller may read them without the lock."""
        with self._lock:
            return list(itertools.islice(reversed(self._completed.values()), top))

    def newest_results(self, top: int) -> list[dict]:
        """``newest_completed`` as ``pullCompleted`` lists it."""
        return [task.summary() for task in self.newest_completed(top)]

    # --------------------------------------------------------------- workers
    def add_workers(self, worker_ids: Iterable[str], borrowed: bool = False) -> None:
        """Register launched workers as pending until their first claim or heartbeat."""
        with self._lock:
            now = self._clock()
            for worker_id in worker_ids:
                self._workers[worker_id] = WorkerInfo(worker_id, now, borrowed=borrowed)
                self.counters.workers_launched += 1

    def worker_down(self, worker_id: str, returned: Iterable[str] = (), *, terminate: bool = True) -> WorkerGone:
        """Forget a worker and put every task it still holds back at the head of the queue.

        Tasks listed in ``returned`` were handed back unstarted and cost no attempt; any other
        lease it held counts as a lost attempt. With ``terminate`` the worker is also queued for
        the launcher to stop (``take_departed``), in case it is still running. Idempotent.
        """
        with self._lock:
            info = self._workers.pop(worker_id, None)
            held = [t for t in self._running.values() if t.worker_id == worker_id]
            requeued, failed = self._lose_leases(held, "worker went down", free=set(returned))
            borrowed = bool(info and info.borrowed)
            if info:
                self.counters.workers_down += 1
                if terminate:
                    self._departed.append(worker_id)
                if borrowed:
                    self._borrowed -= 1
                    self._quota_owed += 1
            return WorkerGone(info is not None, requeued, failed, borrowed)

    def workers(self) -> list[WorkerInfo]:
        """A snapshot of the registry (copies)."""
        with self._lock:
            return [WorkerInfo(w.id, w.launched_at, w.state, w.last_seen, w.borrowed) for w in self._workers.values()]

    # ----------------------------------------------------------------- quota
    def try_lend(self) -> bool:
        """The peer asks for a slot: grant it if a slot is free (live + pending < max)."""
        with self._lock:
            if len(self._workers) < self._max():
                self._lent += 1
                return True
            return False

    def take_back(self) -> int:
        """A lent slot comes back; returns the new max. Ignored if nothing was lent."""
        with self._lock:
            if self._lent > 0:
                self._lent -= 1
            return self._max()

    def add_borrowed_slot(self) -> None:
        """The peer granted a slot: our max rises by one until that worker goes down."""
        with self._lock:
            self._borrowed += 1

    def release_borrowed_slot(self) -> None:
        """A borrowed slot went unused (the launch failed): owe it back to the peer."""
        with self._lock:
            if self._borrowed > 0:
                self._borrowed -= 1
                self._quota_owed += 1

    def take_departed(self) -> list[str]:
        """Workers that went down since the last call (the scaler terminates them)."""
        with self._lock:
            departed, self._departed = self._departed, []
            return departed

    def take_quota_owed(self) -> int:
        """Borrowed slots to give back to the peer; call ``owe_quota`` for any not returned."""
        with self._lock:
            owed, self._quota_owed = self._quota_owed, 0
            return owed

    def owe_quota(self, count: int = 1) -> None:
        with self._lock:
            self._quota_owed += count

    def set_max_workers(self, max_workers: int) -> int:
        with self._lock:
            self._base_max = max_workers
            return self._max()

    # ------------------------------------------------------------ node-level
    def start_draining(self) -> None:
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        with self._lock:
            return self._draining

    def scaling_figures(self) -> ScalingFigures:
        with self._lock:
            now = self._clock()
            oldest = now - self._queue[0].enqueued_at if self._queue else 0.0
            live = sum(1 for w in self._workers.values() if w.state == LIVE)
            return ScalingFigures(
                queued=len(self._queue),
                queued_iterations=self._queued_iterations,
                oldest_wait=oldest,
                live=live,
                pending=len(self._workers) - live,
                max_workers=self._max(),
                running=len(self._running),
            )

    def stats(self) -> dict:
        """The figures of ``GET /stats`` that this node owns (peer and scaler are added by the API)."""
        with self._lock:
            live = sum(1 for w in self._workers.values() if w.state == LIVE)
            return {
                "queued": len(self._queue),
                "queued_iterations": self._queued_iterations,
                "running": len(self._running),
                "completed": self.counters.completed,
                "failed": self.counters.failed,
                "results_kept": len(self._completed),
                "enqueued": self.counters.enqueued,
                "rejected_queue_full": self.counters.rejected_full,
                "leases_expired": self.counters.leases_expired,
                "workers": {
                    "live": live,
                    "pending": len(self._workers) - live,
                    "max": self._max(),
                    "base_max": self._base_max,
                    "launched_total": self.counters.workers_launched,
                    "down_total": self.counters.workers_down,
                },
                "quota": {"lent": self._lent, "borrowed": self._borrowed, "owed": self._quota_owed},
                "draining": self._draining,
            }

    # --------------------------------------------------- private, lock held
    def _max(self) -> int:
        return self._base_max - self._lent + self._borrowed

    def _seen(self, worker_id: str, now: float) -> None:
        info = self._workers.get(worker_id)
        if info is not None:
            if info.state == PENDING:
                log.info("worker seen: %s, %.1fs after launch", worker_id, now - info.launched_at)
            info.state, info.last_seen = LIVE, now

    def _remember(self, kept: OrderedDict[str, Task], task: Task) -> None:
        kept[task.id] = task
        while len(kept) > self.results_retention:
            kept.popitem(last=False)

    def _lose_leases(self, tasks: list[Task], why: str, free: set[str] = frozenset()) -> tuple[int, int]:
        """Requeue leased tasks at the head (oldest first) or fail them after max_attempts.

        A task in ``free`` was handed back unstarted: it costs no attempt.
        """
        requeued = failed = 0
        for task in sorted(tasks, key=lambda t: t.seq, reverse=True):
            del self._running[task.id]
            if task.id not in free:
                task.attempts += 1
            task.worker_id = None
            if task.attempts >= self.max_attempts:
                del self._active[task.id]
                task.state, task.data = FAILED, None
                task.completed_at = self._clock()
                task.reason = f"{why} {task.attempts} times (MAX_ATTEMPTS={self.max_attempts})"
                self._remember(self._failed, task)
                self.counters.failed += 1
                log.warning("task failed: %s, %s", task.id, task.reason)
                failed += 1
            else:
                task.state = QUEUED
                self._queue.appendleft(task)
                self._queued_iterations += task.iterations
                requeued += 1
        return requeued, failed
