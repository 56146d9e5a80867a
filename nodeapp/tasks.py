"""The task queue, its leases and the results kept, behind the store's own lock.

Lease deadlines and the age of the oldest queued task are on a monotonic clock; the wall clock
gives only the times users see (``enqueued_at``, ``completed_at``). What leaves the store is
immutable: a lease is a ``LeasedTask``, a status or a kept result a ``TaskRecord``. Nothing here
does I/O, so the lock is only ever held for short, bounded work.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from collections.abc import Mapping
from dataclasses import dataclass

from nodeapp.checkpoints import Checkpoint

log = logging.getLogger(__name__)

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"


_TASK_ID = re.compile(r"[0-9a-f]{32}")


def is_task_id(text: str) -> bool:
    """Whether ``text`` has the form of the ids ``submit`` makes (``uuid4().hex``)."""
    return _TASK_ID.fullmatch(text) is not None


class QueueFull(Exception):
    """The queue holds MAX_QUEUED tasks; the client should retry later."""


class Draining(Exception):
    """The node is shutting down and accepts no new task."""


@dataclass(frozen=True, slots=True)
class LeasedTask:
    """A task as handed to a worker by ``claim``."""

    id: str
    iterations: int
    data: bytes
    checkpoint: Checkpoint | None = None  # where an earlier lease holder got to


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task as ``status`` sees it at one moment; completed and failed tasks are kept as these."""

    id: str
    state: str
    iterations: int
    enqueued_at: float
    attempts: int = 0
    result: str | None = None
    completed_at: float | None = None
    reason: str | None = None
    done: int | None = None  # queued or running: iterations done by its newest checkpoint
    resumed_from: int | None = None  # completed: the checkpoint its last worker started from


@dataclass(frozen=True)
class TaskCounts:
    """The store's figures, read in one consistent snapshot."""

    queued: int
    queued_iterations: int
    oldest_wait: float  # seconds the head of the queue has waited (monotonic)
    running: int
    results_kept: int
    enqueued: int
    completed: int
    failed: int
    rejected_full: int
    leases_expired: int
    draining: bool
    checkpoints_accepted: int = 0
    checkpoints_refused: int = 0


@dataclass(slots=True)
class _Task:
    """A queued or running task; lives only inside the store."""

    id: str
    iterations: int
    enqueued_at: float  # wall clock, shown to users
    enqueued_tick: float  # monotonic, for the age of the queue's head
    data: bytes
    seq: int  # submission order: requeued tasks keep it even when timestamps tie
    state: str = QUEUED
    attempts: int = 0
    worker_id: str | None = None
    lease_deadline: float = 0.0  # monotonic
    checkpoint: Checkpoint | None = None  # kept when the task is requeued
    claimed_from: int = 0  # the checkpoint's ``done`` when the current lease began

    def record(self, **finished) -> TaskRecord:
        return TaskRecord(self.id, finished.pop("state", self.state), self.iterations, self.enqueued_at,
                          self.attempts, **finished)


class TaskStore:
    """Queue, leases and kept results. Thread-safe: each public method holds the store's lock.

    Args:
        lease_seconds: how long a claimed task stays leased without a heartbeat.
        max_attempts: lost leases after which a task is failed instead of requeued.
        max_queued: queued tasks at which ``submit`` raises ``QueueFull``.
        results_retention: completed (and, separately, failed) tasks kept.
        monotonic: the clock of lease deadlines and queue age.
        wall: seconds since the epoch, for ``enqueued_at`` and ``completed_at``.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = 30.0,
        max_attempts: int = 5,
        max_queued: int = 100_000,
        results_retention: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._wall = wall
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.results_retention = results_retention
        self._queue: deque[_Task] = deque()
        self._queued_iterations = 0
        self._running: dict[str, _Task] = {}
        self._active: dict[str, _Task] = {}  # queued or running, by id
        self._completed: OrderedDict[str, TaskRecord] = OrderedDict()  # oldest first
        self._failed: OrderedDict[str, TaskRecord] = OrderedDict()
        self._draining = False
        self._seq = 0
        self._enqueued = self._completed_total = self._failed_total = 0
        self._rejected_full = self._leases_expired = 0
        self._checkpoints_accepted = self._checkpoints_refused = 0

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
                self._rejected_full += 1
                raise QueueFull()
            self._seq += 1
            task = _Task(uuid.uuid4().hex, iterations, self._wall(), self._monotonic(), data, self._seq)
            self._queue.append(task)
            self._active[task.id] = task
            self._queued_iterations += iterations
            self._enqueued += 1
            return task.id

    def claim(self, worker_id: str, max_tasks: int = 1, max_iterations: int | None = None) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` tasks from the head of the queue to ``worker_id``.

        Stops before the declared iterations would exceed ``max_iterations`` (the first task is
        always given), so that waiting work stays visible to the scaler.
        """
        with self._lock:
            deadline = self._monotonic() + self.lease_seconds
            leased: list[LeasedTask] = []
            budget = max_iterations
            while self._queue and len(leased) < max_tasks:
                task = self._queue[0]
                if leased and budget is not None and task.iterations > budget:
                    break
                self._queue.popleft()
                self._queued_iterations -= task.iterations
                task.state, task.worker_id, task.lease_deadline = RUNNING, worker_id, deadline
                task.claimed_from = task.checkpoint.done if task.checkpoint else 0
                self._running[task.id] = task
                leased.append(LeasedTask(task.id, task.iterations, task.data, task.checkpoint))
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
            now = self._wall()
            for task_id, result in results:
                task = self._running.get(task_id)
                if task is None or task.worker_id != worker_id:
                    continue
                del self._running[task_id]
                del self._active[task_id]
                self._keep(self._completed, task.record(state=COMPLETED, result=result, completed_at=now,
                                                        resumed_from=task.claimed_from or None))
                self._completed_total += 1
                accepted += 1
        return accepted

    def heartbeat(self, worker_id: str, task_ids: Iterable[str],
                  checkpoints: Mapping[str, Checkpoint] | None = None) -> int:
        """Renew the leases ``worker_id`` holds among ``task_ids``; returns how many. Keeps the
        ``checkpoints`` that fit (see ``nodeapp.checkpoints``), ignores the others."""
        with self._lock:
            self._take_checkpoints(worker_id, checkpoints)
            deadline = self._monotonic() + self.lease_seconds
            renewed = 0
            for task_id in task_ids:
                task = self._running.get(task_id)
                if task is not None and task.worker_id == worker_id:
                    task.lease_deadline = deadline
                    renewed += 1
            return renewed

    def requeue_expired(self) -> tuple[int, int]:
        """Put tasks whose lease ran out back at the head; returns (requeued, failed)."""
        with self._lock:
            now = self._monotonic()
            expired = [t for t in self._running.values() if t.lease_deadline <= now]
            self._leases_expired += len(expired)
            return self._lose_leases(expired, "lease expired")

    def release(self, worker_id: str, returned: Iterable[str] = (),
                checkpoints: Mapping[str, Checkpoint] | None = None) -> tuple[int, int]:
        """Put every task ``worker_id`` holds back at the head; returns (requeued, failed).

        Tasks in ``returned`` were handed back (unstarted, or with their ``checkpoints``) and
        cost no attempt; any other lease counts as a lost attempt. Idempotent: a second call
        finds nothing held.
        """
        with self._lock:
            self._take_checkpoints(worker_id, checkpoints)
            held = [t for t in self._running.values() if t.worker_id == worker_id]
            return self._lose_leases(held, "worker went down", free=set(returned))

    def status(self, task_id: str) -> TaskRecord | None:
        """The task as it is now, or None if unknown (or dropped past retention)."""
        with self._lock:
            task = self._active.get(task_id)
            if task is not None:
                return task.record(done=task.checkpoint.done if task.checkpoint else 0)
            return self._completed.get(task_id) or self._failed.get(task_id)

    def in_progress(self, top: int) -> list[TaskRecord]:
        """Up to ``top`` running tasks that have a checkpoint, furthest along first."""
        with self._lock:
            started = [t for t in self._running.values() if t.checkpoint]
            started.sort(key=lambda t: t.checkpoint.done / t.iterations, reverse=True)
            return [t.record(done=t.checkpoint.done) for t in started[:top]]

    def newest_completed(self, top: int) -> list[TaskRecord]:
        """The ``top`` newest completed tasks, newest first. O(top)."""
        with self._lock:
            return list(itertools.islice(reversed(self._completed.values()), top))

    def start_draining(self) -> None:
        """From now on ``submit`` raises ``Draining``."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        with self._lock:
            return self._draining

    def counts(self) -> TaskCounts:
        with self._lock:
            oldest = self._monotonic() - self._queue[0].enqueued_tick if self._queue else 0.0
            return TaskCounts(
                queued=len(self._queue),
                queued_iterations=self._queued_iterations,
                oldest_wait=oldest,
                running=len(self._running),
                results_kept=len(self._completed),
                enqueued=self._enqueued,
                completed=self._completed_total,
                failed=self._failed_total,
                rejected_full=self._rejected_full,
                leases_expired=self._leases_expired,
                draining=self._draining,
                checkpoints_accepted=self._checkpoints_accepted,
                checkpoints_refused=self._checkpoints_refused,
            )

    # --------------------------------------------------- private, lock held
    def _take_checkpoints(self, worker_id: str, checkpoints: Mapping[str, Checkpoint] | None) -> None:
        """Keep each checkpoint from the task's lease holder that moves it forward, short of the end."""
        for task_id, checkpoint in (checkpoints or {}).items():
            task = self._running.get(task_id)
            current = task.checkpoint.done if task is not None and task.checkpoint else 0
            if task is None or task.worker_id != worker_id or not current < checkpoint.done < task.iterations:
                self._checkpoints_refused += 1
                log.info("checkpoint refused: task %s at %d from %s (holder %s, at %d of %s)", task_id,
                            checkpoint.done, worker_id, task and task.worker_id, current, task and task.iterations)
                continue
            task.checkpoint = checkpoint
            self._checkpoints_accepted += 1

    def _keep(self, kept: OrderedDict[str, TaskRecord], record: TaskRecord) -> None:
        kept[record.id] = record
        while len(kept) > self.results_retention:
            kept.popitem(last=False)

    def _lose_leases(self, tasks: list[_Task], why: str, free: set[str] = frozenset()) -> tuple[int, int]:
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
                reason = f"{why} {task.attempts} times (MAX_ATTEMPTS={self.max_attempts})"
                self._keep(self._failed, task.record(state=FAILED, completed_at=self._wall(), reason=reason))
                self._failed_total += 1
                log.warning("task failed: %s, %s", task.id, reason)
                failed += 1
            else:
                task.state = QUEUED
                self._queue.appendleft(task)
                self._queued_iterations += task.iterations
                requeued += 1
        return requeued, failed
