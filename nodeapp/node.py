"""A node's model: its ``TaskStore`` and its ``WorkerPool``, and the operations that span both.

Lock order: no method here holds a lock; each step takes the pool's or the store's lock alone
and releases it before the next, so the two locks are never held together. A concurrent reader
may see a worker already forgotten whose tasks are not yet requeued; nothing depends on it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.tasks import TaskStore
from nodeapp.store.records import LeasedTask, TaskCounts
from nodeapp.fleet.pool import PoolCounts, Report, WorkerPool
from nodeapp.fleet.scaling import ScalingFigures
from tmcommon.settings import default
from nodeapp.store.checker import Checker
from nodeapp.store.journal import JournalError
from nodeapp.store.verification import Caught, Check, Quarantine, Sampler

log = logging.getLogger(__name__)


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
        self.quarantine = Quarantine()
        self.checker: Checker | None = None
        self.launcher_kind = "local"  # for the record of a quarantined worker
        #: Called (the checker's thread) after this node caught a worker: the peer is told.
        self.on_caught: Callable[[Caught], None] | None = None

    def enable_checks(self, *, budget: int, probation: int, max_pending: int, rerun_seconds: float,
                      rng: random.Random | None = None) -> None:
        """Spot-check results (docs/verification.md): VERIFY_ITERATIONS, VERIFY_PROBATION,
        VERIFY_MAX_PENDING and VERIFY_RERUN_SECONDS; ``rng`` seeds the choices (tests)."""
        if budget <= 0:
            return
        self.checker = Checker(self.settle, max_pending)
        self.tasks.checks.enable(Sampler(budget, probation, rng), self.checker, rerun_seconds)

    def settle(self, outcomes: list[tuple[Check, bool | None]]) -> None:
        """Checks have run (the checker's thread): their results are accepted or taken back (one
        journal commit), and a worker caught with a wrong result is quarantined."""
        try:
            settled, failure = self.tasks.settle(outcomes), None
        except JournalError as exc:  # the memory is back to the file; a wrong result is still its worker's
            settled, failure = [True] * len(outcomes), exc
        for (check, passed), held in zip(outcomes, settled, strict=True):
            if held and passed is False:
                self.quarantine_worker(check.worker_id, check.task_id, "a spot-checked segment did not match"
                                       if check.segments else "its marks did not fit the chain")
        if failure is not None:
            raise failure

    def quarantine_worker(self, worker_id: str, task_id: str, reason: str) -> Caught | None:
        """No more claims from ``worker_id``; ours is stopped (the scaler's next run terminates it),
        its leases are requeued, and its unchecked results of the last VERIFY_RERUN_SECONDS are
        taken back and computed again; then the peer is told (``on_caught``). None if it was
        quarantined already."""
        report = self.workers.report_of(worker_id)
        launcher = self.launcher_kind + (" spot" if report and report.spot else "")
        caught = self._quarantine(Caught(worker_id, time.time(), task_id, reason, report and report.engine,
                                         report and report.cpu, report and report.lanes, launcher))
        if caught is not None and self.on_caught is not None:
            self.on_caught(caught)
        return caught

    def quarantine_from_peer(self, caught: Caught, peer: str) -> Caught | None:
        """A worker the peer caught (an entry of its list): the same here as if this node had
        caught it. None if it was quarantined already (or too old to keep)."""
        return self._quarantine(replace(caught, rerun=0, by=peer))

    def _quarantine(self, caught: Caught) -> Caught | None:
        worker_id, reason, launcher = caught.worker_id, caught.reason, caught.launcher
        if not self.quarantine.add(caught):
            return None
        ours = self.workers.remove(worker_id, terminate=True)
        requeued, failed = self.tasks.release(worker_id)
        rerun = self.tasks.rerun(worker_id)
        caught = replace(caught, rerun=len(rerun))
        self.quarantine.update(caught)
        log.error("worker %s quarantined%s: %s (task %s); engine %s, %s lane(s), CPU %s, launched by %s%s; "
                  "%d lease(s) requeued, %d failed, %d unchecked result(s) taken back to compute again",
                  worker_id, f" by the peer {caught.by}" if caught.by else "", reason, caught.task_id, caught.engine,
                  caught.lanes, caught.cpu, launcher, "" if ours else " (not this node's worker)", requeued, failed,
                  len(rerun))
        return caught

    @classmethod
    def build(
        cls,
        *,
        max_workers: int = default("max_workers"),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        loan_ttl: float = default("loan_ttl"),
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

    def complete(self, worker_id: str, results: Iterable[tuple[str, str]],
                 marks: Mapping[str, list[str]] | None = None) -> int:
        self.workers.seen(worker_id)
        return self.tasks.complete(worker_id, results, marks)

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
