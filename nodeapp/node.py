"""A node's model: its ``TaskStore`` and its ``WorkerPool``, and the operations that span both.

Lock order: no method here holds a lock; each step takes the pool's or the store's lock alone
and releases it before the next, so the two locks are never held together. A concurrent reader
may see a worker already forgotten whose tasks are not yet requeued; nothing depends on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.tasks import TaskStore
from nodeapp.store.records import LeasedTask, TaskCounts
from nodeapp.fleet.pool import PoolCounts, Report, WorkerPool


@dataclass(frozen=True)
class ScalingFigures:
    """What the scaler decides from."""

    queued: int
    queued_iterations: int
    oldest_wait: float
    live: int
    pending: int
    max_workers: int
    running: int
    room: int | None = None  # workers the launcher can start now (None: no limit it knows of)
    capacity: int | None = None  # workers this node can run at once: its quota, or less (the launcher's limit)
    capacity_why: str = ""


@dataclass(frozen=True)
class WorkerGone:
    """What ``worker_down`` did: whether the worker was known, tasks put back, slot to return."""

    removed: bool
    requeued: int
    failed: int
    borrowed: bool


@dataclass(frozen=True)
class NodeStats:
    tasks: TaskCounts
    workers: PoolCounts


class Node:
    """The tasks and the workers of one node."""

    def __init__(self, tasks: TaskStore, workers: WorkerPool) -> None:
        self.tasks = tasks
        self.workers = workers

    @classmethod
    def build(
        cls,
        *,
        max_workers: int = 5,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        loan_ttl: float = 6.0,
        recovering: bool = False,
        **task_settings,
    ) -> Node:
        """A node with its own store and pool; ``task_settings`` go to ``TaskStore``."""
        return cls(TaskStore(monotonic=monotonic, wall=wall, **task_settings),
                   WorkerPool(max_workers=max_workers, monotonic=monotonic, loan_ttl=loan_ttl,
                              recovering=recovering))

    def claim(self, worker_id: str, max_tasks: int = 1, max_iterations: int | None = None,
              report: Report | None = None) -> list[LeasedTask]:
        """``TaskStore.claim``, and a registered worker becomes live (with its ``report``)."""
        self.workers.seen(worker_id, report)
        return self.tasks.claim(worker_id, max_tasks, max_iterations)

    def complete(self, worker_id: str, results: Iterable[tuple[str, str]]) -> int:
        self.workers.seen(worker_id)
        return self.tasks.complete(worker_id, results)

    def heartbeat(self, worker_id: str, task_ids: Iterable[str],
                  checkpoints: Mapping[str, Checkpoint] | None = None) -> int:
        self.workers.seen(worker_id)
        return self.tasks.heartbeat(worker_id, task_ids, checkpoints)

    def worker_down(self, worker_id: str, returned: Iterable[str] = (), *, terminate: bool = True,
                    checkpoints: Mapping[str, Checkpoint] | None = None) -> WorkerGone:
        """Forget a worker and put every task it still holds back at the head of the queue.

        Tasks in ``returned`` were handed back (unstarted, or with their ``checkpoints``) and
        cost no attempt. With ``terminate`` the launcher is asked to stop it too, in case it is
        still running. Idempotent.
        """
        worker = self.workers.remove(worker_id, terminate=terminate)
        requeued, failed = self.tasks.release(worker_id, returned, checkpoints)
        return WorkerGone(worker is not None, requeued, failed, bool(worker and worker.borrowed))

    def scaling_figures(self) -> ScalingFigures:
        tasks, workers = self.tasks.counts(), self.workers.counts()
        return ScalingFigures(
            queued=tasks.queued,
            queued_iterations=tasks.queued_iterations,
            oldest_wait=tasks.oldest_wait,
            live=workers.live,
            pending=workers.pending,
            max_workers=workers.max,
            running=tasks.running,
        )

    def stats(self) -> NodeStats:
        return NodeStats(self.tasks.counts(), self.workers.counts())
