"""The task queue, its leases and the results kept, behind the store's own lock.

Lease deadlines and the age of the oldest queued task are on a monotonic clock; the wall clock
gives only the times users see (``enqueued_at``, ``completed_at``). What leaves the store is
immutable: a lease is a ``LeasedTask``, a status or a kept result a ``TaskRecord``. Nothing here
does I/O, so the lock is only ever held for short, bounded work.

With a journal (DATA_DIR, ``nodeapp.store.journal``), each change a client or worker is told about (a
task accepted, completed, failed or cancelled, a kept record dropped past retention) is handed to
the journal under the lock, so that its records keep the order of the changes, and waited for
after the lock is released, before the method returns: enqueues stay concurrent and share
commits. A worker may claim (even complete) a task whose acceptance is not durable yet: its
completion record is queued behind the acceptance record, and the answers to both wait for their
commits. An accepted checkpoint is handed to the journal without waiting for it (losing the
newest on a crash costs only recomputation). Leases, idempotency keys and the reuse index are
not journaled.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.journal import (
    Accepted, Checkpointed, Commit, Completed, Counters, Failed, Journal, JournalError, Recovered, Record, Trimmed,
)
from nodeapp.store.results import KeptResults
from nodeapp.store.idempotency import IdempotencyKeys, KeyEntry
from nodeapp.store.ids import TaskIds
from nodeapp.store.records import (
    CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Draining, KeyMismatch, LeasedTask, QueueFull, Submission,
    Submitted, TaskCounts, TaskRecord, WrongState,
)
from nodeapp.store.reuse import ReuseIndex, Work
from tmcommon.settings import default
from nodeapp.store.queue import HEAD, PRIORITY_DEFAULT, READY, TaskQueue
from nodeapp.store.spotchecks import SpotChecks
from nodeapp.store.verification import Check

log = logging.getLogger(__name__)

# How submit_many admits an item (see TaskStore._match).
_REPLAY, _QUEUE, _FOLLOW, _DONE, _DONE_PEER, _WAIT_PEER = "replay", "queue", "follow", "done", "done-peer", "wait-peer"
#: The reason of a queued task failed at its deadline, and of tasks purged by the operator.
EXPIRED, PURGED = "expired", "purged by the operator"


@dataclass(slots=True, eq=False)
class _Task:
    """A queued or running task; lives only inside the store. A task that shares the run of
    another (its ``leader``) is in neither the queue nor the leases: it ends with its leader."""

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
    claimed_tick: float = 0.0  # monotonic, when the current lease began (0: never claimed)
    claimed_point: Checkpoint | None = None  # the checkpoint the current lease began from
    digest: bytes = b""  # sha512(data)
    leader: _Task | None = None
    # the tasks that share its run; a list only once it has one (an empty tuple is one object for all,
    # which the garbage collector never scans: a full collection scans every queued task's fields)
    followers: list[_Task] | tuple = ()
    peer_run: str | None = None  # waits for the run of this identical task of the peer's (not in the queue)
    priority: int = PRIORITY_DEFAULT
    not_before: float | None = None  # wall clock
    deadline: float | None = None  # wall clock
    owner: str | None = None
    ready_tick: float = 0.0  # monotonic: when it may be claimed (the queue's order, nodeapp/store/queue.py)
    deadline_tick: float = math.inf  # monotonic
    place: tuple | None = None  # the queue's bookkeeping

    def record(self, **finished) -> TaskRecord:
        return TaskRecord(self.id, finished.pop("state", self.state), self.iterations, self.enqueued_at,
                          self.attempts, seq=self.seq, priority=self.priority, not_before=self.not_before,
                          deadline=self.deadline, owner=self.owner, **finished)

    def schedule(self, wall: float, tick: float) -> _Task:
        """Set the monotonic times of its ``not_before`` and ``deadline`` (``wall`` and ``tick`` are now)."""
        self.ready_tick = self.enqueued_tick if self.not_before is None else \
            max(self.enqueued_tick, tick + self.not_before - wall)
        self.deadline_tick = math.inf if self.deadline is None else tick + self.deadline - wall
        return self


#: Counters of /stats kept in the journal: name there -> TaskStore attribute.
_JOURNALED_COUNTERS = {
    "enqueued": "_enqueued", "completed": "_completed_total", "failed": "_failed_total",
    "rejected_full": "_rejected_full", "leases_expired": "_leases_expired", "reused": "_reused",
    "cancelled": "_cancelled", "retried": "_retried", "replayed": "_replayed", "expired": "_expired",
}


class TaskStore:
    """Queue, leases and kept results. Thread-safe: each public method holds the store's lock.

    Why one class of this size: each verb moves a task between the queue, the leases, the tasks
    that share its run and the kept results, and the invariants that span them (a task is in
    exactly one place; MAX_QUEUED counts every waiting task and MAX_QUEUED_BYTES every body
    held; a change reaches the journal in the order it was made) hold because one lock covers
    the whole move. The parts that keep state of their own are objects the store owns and calls
    under that lock, with no lock of their own: ``results`` (``KeptResults``), ``checks``
    (``SpotChecks``: results held for a spot-check, unchecked ones kept for ``rerun``), the
    queue's order (``TaskQueue``), the index of identical work (``ReuseIndex``) and the
    idempotency keys. Waiting for the peer's runs (``runs``, ``peer_runs``, ``peer_run_ended``)
    stays here: its state is a task's ``peer_run`` and their index by the peer's task id, and
    each of its steps reads or moves tasks of ``_active``, the queue and the reuse index, or
    completes them as a shared run does.

    Args:
        lease_seconds: how long a claimed task stays leased without a heartbeat.
        max_attempts: lost leases after which a task is failed instead of requeued.
        max_queued: queued tasks at which ``submit`` raises ``QueueFull``.
        max_queued_bytes: bytes of bodies held (queued and running tasks) that ``submit``
            refuses to exceed (``QueueFull``).
        results_retention: completed (and, separately, failed) tasks kept.
        results_ttl: seconds a completed or failed task is kept (0: no age limit), see ``upkeep``.
        priority_aging: seconds of waiting worth one priority step (``nodeapp.store.queue``).
        idempotency_seconds: how long an idempotency key is remembered.
        idempotency_keys_bytes: memory the remembered keys may take (the oldest go first).
        kept_bodies_bytes: bodies of failed and cancelled tasks kept for ``retry``.
        epoch: the id of this run of the store in ``completed_after`` cursors (random by default).
        monotonic: the clock of lease deadlines and queue age.
        wall: seconds since the epoch, for ``enqueued_at`` and ``completed_at``.
        journal: makes each change durable before the method that made it returns (DATA_DIR).
    """

    def __init__(
        self,
        *,
        lease_seconds: float = default("lease_seconds"),
        max_attempts: int = default("max_attempts"),
        max_queued: int = default("max_queued"),
        max_queued_bytes: int = default("max_queued_bytes"),
        results_retention: int = default("results_retention"),
        results_ttl: float = default("results_ttl"),
        priority_aging: float = default("priority_aging"),
        idempotency_seconds: float = default("idempotency_seconds"),
        idempotency_keys_bytes: int = default("idempotency_keys_bytes"),
        kept_bodies_bytes: int = default("kept_bodies_bytes"),
        epoch: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        journal: Journal | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._ids = TaskIds()
        #: Observes wait, run and end-to-end seconds (``nodeapp.metrics.TaskTimings``); set by the app.
        self.timings = None
        self.journal = journal
        self._monotonic = monotonic
        self._wall = wall
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.results_retention = results_retention
        self.epoch = epoch or uuid.uuid4().hex[:16]
        self.idempotency_keys_bytes, self.kept_bodies_bytes = idempotency_keys_bytes, kept_bodies_bytes
        self._keys = IdempotencyKeys(idempotency_seconds, monotonic, idempotency_keys_bytes)
        self.results_ttl = results_ttl
        self._priority_aging = priority_aging
        #: Results held for a spot-check and unchecked ones kept for ``rerun``; ``checks.enable``
        #: starts the checks. Created once: it outlives ``_resync`` (its held results with it).
        self.checks = SpotChecks()
        self._empty()

    def _empty(self) -> None:
        """The state of an empty store (at start, and before ``_resync`` reads the journal back)."""
        self._unwritten: list[Record] = []  # for the journal, gathered under the lock
        self._written_counts: dict[str, int] = {}  # counters as last handed to the journal
        self._body_bytes = 0  # bodies of queued and running tasks
        self._queue = TaskQueue(self._priority_aging)
        self._running: dict[str, _Task] = {}
        self._active: dict[str, _Task] = {}  # queued or running, by id
        #: Completed, failed and cancelled tasks, and the bodies kept for retry; read them here.
        self.results = KeptResults(self._lock, self.results_retention, self.kept_bodies_bytes, self._dropped)
        self._draining = False
        self._seq = 0
        self._enqueued = self._completed_total = self._failed_total = 0
        self._rejected_full = self._leases_expired = 0
        self._checkpoints_accepted = self._checkpoints_refused = 0
        self._reuse = ReuseIndex()
        self._reused = self._cancelled = self._retried = self._replayed = self._expired = 0
        #: The tasks waiting for a run of the peer's, by the peer's task id, and how many in all.
        self._peer_waits: dict[str, dict[str, _Task]] = {}
        self._waiting_on_peer = 0

    def submit(self, data: bytes, iterations: int, *, reuse: bool = False) -> str:
        """Queue one task at the tail and return its id (``submit_many`` of one, by default
        without reuse)."""
        return self.submit_many([Submission(data, iterations, hashlib.sha512(data).digest())], reuse=reuse)[0].id

    def submit_many(self, items: Sequence[Submission], *, reuse: bool = True,
                    peer_keys: Mapping[str, KeyEntry] | None = None,
                    peer_results: Mapping[Work, tuple[str, str]] | None = None,
                    peer_runs: Mapping[Work, str] | None = None) -> list[Submitted]:
        """Queue every item, in order, or none; returns what became of each.

        An item whose idempotency key this store knows (or ``peer_keys``, the peer's answer, or
        an earlier item) is *replayed*: it gets the id its key first got and queues nothing.
        With ``reuse``, an item whose (digest, iterations) matches a kept result (here, or the
        peer's ``(id, result)`` in ``peer_results``) completes at once from it, and one that
        matches a queued or running task (or an earlier item) shares that task's run; one that
        matches the peer's queued or running task in ``peer_runs`` waits for that run
        (``peer_runs``, ``peer_run_ended``).

        Raises:
            KeyMismatch: a known key with another body or iterations (nothing queued).
            QueueFull: the tasks that would enter the queue do not fit (nothing queued).
            Draining: the node is shutting down.
        """
        peer_keys, peer_results = peer_keys or {}, peer_results or {}
        ids = [self._ids.take() for _ in items]  # before the lock: a batch drawn from the OS lets the GIL go
        with self._lock:
            if self._draining:
                raise Draining()
            steps: list[tuple[str, str, object]] = []  # (how, task id, source)
            new_keys: dict[str, KeyEntry] = {}
            leaders: dict[Work, str] = {}  # pairs first queued by this call
            queued = queued_bytes = 0
            for index, item in enumerate(items):
                if item.key is not None:
                    known = new_keys.get(item.key) or self._keys.get(item.key) or peer_keys.get(item.key)
                    if known is not None:
                        if not known.matches(item.iterations, item.digest):
                            raise KeyMismatch(index, item.key, known.task_id)
                        steps.append((_REPLAY, known.task_id, None))
                        continue
                task_id = ids[index]
                if item.key is not None:
                    new_keys[item.key] = KeyEntry(task_id, item.iterations, item.digest)
                how, source = self._match((item.digest, item.iterations), reuse, leaders, peer_results)
                if how == _FOLLOW and not self._may_follow(item, source):
                    how, source = _QUEUE, None
                if how == _QUEUE and reuse and peer_runs and (item.digest, item.iterations) in peer_runs \
                        and item.not_before is None and item.deadline is None:
                    how, source = _WAIT_PEER, peer_runs[(item.digest, item.iterations)]
                if how in (_QUEUE, _WAIT_PEER):
                    leaders.setdefault((item.digest, item.iterations), task_id)
                    queued_bytes += len(item.data)
                queued += how in (_QUEUE, _FOLLOW, _WAIT_PEER)  # a task that shares a run waits too: MAX_QUEUED counts it
                steps.append((how, task_id, source))
            self._check_room(queued, queued_bytes)
            wall, tick = self._wall(), self._monotonic()
            out = []
            for item, (how, task_id, source) in zip(items, steps, strict=True):
                if how == _REPLAY:
                    self._replayed += 1
                    out.append(Submitted(task_id, replayed=True))
                    continue
                self._seq += 1
                task = _Task(task_id, item.iterations, wall, tick, item.data, self._seq, digest=item.digest,
                             priority=item.priority, not_before=item.not_before, deadline=item.deadline,
                             owner=item.owner).schedule(wall, tick)
                out.append(Submitted(task_id, reused_from=self._admit(task, how, source)))
                self._enqueued += 1
            for key, entry in new_keys.items():
                self._keys.put(key, entry)
            commit = self._flush()
        self._durable(commit)
        return out

    # --------------------------------------------------- the peer's runs (submit_many's peer_runs)
    def runs(self, works: Iterable[Work]) -> dict[Work, str]:
        """The queued or running task (not itself waiting for the peer) that runs each of
        ``works`` here, for the peer's ``submit_many`` (``peer_runs``)."""
        with self._lock:
            found = {}
            for work in works:
                leader = self._reuse.leader(work)
                if leader is not None and leader in self._active and self._active[leader].peer_run is None:
                    found[work] = leader
            return found

    def peer_runs(self) -> dict[str, list[str]]:
        """The tasks that wait for a run of the peer's, by the peer's task id."""
        with self._lock:
            return {peer_id: list(tasks) for peer_id, tasks in self._peer_waits.items()}

    def peer_run_ended(self, peer_id: str, result: str | None) -> int:
        """The peer's task ``peer_id`` completed with ``result``: the tasks waiting for it complete
        with it (``reused_from`` it). ``result`` None (it failed, was cancelled, is unknown or the
        peer cannot be asked): they are queued here, so that they run anyway. Returns how many."""
        with self._lock:
            waiting = list(self._peer_waits.get(peer_id, {}).values())
            now = self._monotonic()
            for task in waiting:
                self._stop_waiting(task)
                if result is None:
                    self._queue.push(task, now)
                    continue
                del self._active[task.id]
                self._body_bytes -= len(task.data)
                self._reused += 1
                self._completed_now(task.record(state=COMPLETED, result=result, completed_at=self._wall(),
                                                reused_from=peer_id), task)
            commit = self._flush()
        self._durable(commit)
        return len(waiting)

    # --------------------------------------------------- the other verbs
    def lookup(self, keys: Iterable[str], works: Iterable[Work]) -> tuple[dict[str, KeyEntry], dict[Work, tuple[str, str]]]:
        """What this store knows of ``keys`` (idempotency) and of ``works`` (kept results as
        ``(id, result)``), for the peer's ``submit_many``."""
        with self._lock:
            known = {key: entry for key in keys if (entry := self._keys.get(key)) is not None}
            results = {}
            for work in works:
                done = self._reuse.done(work)
                if done is not None and work not in results:
                    record = self.results.completed(done)
                    results[work] = (record.reused_from or done, record.result)
            return known, results

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Cancel a queued or running task; returns its ``cancelled`` record, or None if this
        store does not know the id. A running task's worker is told by ``stopped`` (its next
        heartbeat) and its result is ignored; a task that shared its run is not cancelled with it.

        Raises:
            WrongState: the task completed or failed (cancelling a cancelled task is no error).
        """
        with self._lock:
            task = self._active.get(task_id)
            if task is None:
                record = self.results.get(task_id)
                if record is not None and record.state != CANCELLED:
                    raise WrongState(record, f"task {task_id} is {record.state}: only a queued or running task "
                                             "can be cancelled")
                return record
            if task.leader is not None:
                task.leader.followers.remove(task)
            else:
                if task.peer_run is not None:
                    self._stop_waiting(task)  # waited for the peer: in no queue
                elif task.state == QUEUED:
                    self._queue.remove(task)
                else:
                    del self._running[task_id]
                    self.checks.drop(task_id)
                self._body_bytes -= len(task.data)
                self._hand_over(task)
            del self._active[task_id]
            record = task.record(state=CANCELLED, completed_at=self._wall(), reason="cancelled by a client")
            self._end(record, task)
            self._cancelled += 1
            commit = self._flush()
        self._durable(commit)
        return record

    def retry(self, task_id: str, *, reuse: bool = True) -> TaskRecord | None:
        """Queue a failed or cancelled task again under its id, with its attempts from 0; returns
        its record now (with ``reuse`` it may share a run or complete at once). None if unknown.

        Raises:
            WrongState: the task is queued, running or completed, or its body was no longer kept.
            QueueFull, Draining: as ``submit_many``.
        """
        with self._lock:
            if self._draining:
                raise Draining()
            record = self.results.failed(task_id)
            if record is None:
                current = self._status(task_id)
                if current is None:
                    return None
                raise WrongState(current, f"task {task_id} is {current.state}: only a failed or cancelled task "
                                          "can be retried")
            kept = self.results.body(task_id)
            if kept is None:
                raise WrongState(record, f"the body of task {task_id} is no longer kept (past "
                                         f"KEPT_BODIES_BYTES={self.kept_bodies_bytes} of failed and cancelled "
                                         "bodies)")
            data, digest = kept
            how, source = self._match((digest, record.iterations), reuse)
            if how in (_QUEUE, _FOLLOW):
                self._check_room(1, len(data) if how == _QUEUE else 0)
            self.results.forget_failed(task_id)
            self._note(Trimmed(record.seq))  # its row goes; the task comes back under a new seq
            self._seq += 1
            wall, tick = self._wall(), self._monotonic()
            self._admit(_Task(task_id, record.iterations, wall, tick, data, self._seq, digest=digest,
                              priority=record.priority, owner=record.owner).schedule(wall, tick), how, source)
            self._retried += 1
            record = self._status(task_id)
            commit = self._flush()
        self._durable(commit)
        return record

    def stopped(self, worker_id: str, task_ids: Iterable[str]) -> list[str]:
        """Those of ``task_ids`` no longer leased to ``worker_id`` (cancelled, or requeued after a
        lost lease): its result for them would be ignored, so it should stop computing them."""
        with self._lock:
            return [i for i in task_ids if (t := self._running.get(i)) is None or t.worker_id != worker_id]

    def claim(self, worker_id: str, max_tasks: int = 1, max_iterations: int | None = None) -> list[LeasedTask]:
        """Lease up to ``max_tasks`` tasks from the head of the queue to ``worker_id``.

        Stops before the declared iterations would exceed ``max_iterations`` (the first task is
        always given), so that waiting work stays visible to the scaler.
        """
        with self._lock:
            now = self._monotonic()
            self._expire(now)  # a task past its deadline is failed, never handed out
            deadline = now + self.lease_seconds
            leased: list[LeasedTask] = []
            budget = max_iterations
            while len(leased) < max_tasks and (task := self._queue.peek(now)) is not None:
                if leased and budget is not None and task.iterations > budget:
                    break
                self._queue.take(task)
                task.state, task.worker_id, task.lease_deadline = RUNNING, worker_id, deadline
                task.claimed_from = task.checkpoint.done if task.checkpoint else 0
                task.claimed_point = task.checkpoint
                if self.timings is not None and not task.claimed_tick:
                    self.timings.waited(now - task.enqueued_tick)
                task.claimed_tick = now
                self._running[task.id] = task
                leased.append(LeasedTask(task.id, task.iterations, task.data, task.checkpoint))
                if budget is not None:
                    budget -= task.iterations
            commit = self._flush()
        self._durable(commit)
        return leased

    def complete(self, worker_id: str, results: Iterable[tuple[str, str]],
                 marks: Mapping[str, list[str]] | None = None) -> int:
        """Record results; returns how many were accepted.

        A result counts only for a task currently leased to ``worker_id``: a result for an
        unknown, requeued, re-leased or already completed task is ignored. With checks enabled,
        a result the sampler picks (with the digests at its ``marks``) is held, its task still
        running, until ``settle``; the others complete at once. Held results go to the checker
        even when the journal refuses the write (``_resync`` keeps them held).
        """
        accepted = 0
        held: list[Check] = []
        try:
            with self._lock:
                checker = self.checks.checker  # captured: the hand-over below reads nothing of the store's
                now, tick = self._wall(), self._monotonic()
                for task_id, result in results:
                    task = self._running.get(task_id)
                    if task is None or task.worker_id != worker_id:
                        continue
                    if self.timings is not None:
                        self.timings.ran(tick - task.claimed_tick)
                        self.timings.finished(tick - task.enqueued_tick)
                    accepted += 1
                    check = self.checks.hold(worker_id, task, result, (marks or {}).get(task_id, []))
                    if check is not None:
                        task.worker_id, task.lease_deadline = None, math.inf
                        held.append(check)
                        continue
                    self.checks.keep_unchecked(tick, worker_id, task)
                    self._finish(task, result, now, spot_checked=False if self.checks.enabled else None)
                commit = self._flush()
        finally:
            if held:  # also when the flush failed: ``_resync`` kept them held, so they must be settled
                checker.submit(held)
        self._durable(commit)
        return accepted

    def settle(self, outcomes: Sequence[tuple[Check, bool | None]]) -> list[bool]:
        """The end of held results' checks, in one step and one journal commit: each result is
        accepted if its check passed, else its task goes back to the head of the queue (no attempt
        counted), from the checkpoint it was claimed with. Returns, for each, False if the task
        was no longer held (cancelled meanwhile)."""
        held = []
        with self._lock:
            last = -math.inf
            for check, passed in outcomes:
                held.append(self.checks.settle(check))
                if not held[-1]:
                    continue
                task = self._running[check.task_id]
                if passed:  # completed in the order checked, each at a time of its own
                    last = max(self._wall(), math.nextafter(last, math.inf))
                    self._finish(task, check.result, last, spot_checked=True)
                else:
                    del self._running[task.id]
                    task.state, task.checkpoint = QUEUED, task.claimed_point
                    self._queue.push_head(task)
            commit = self._flush()
        self._durable(commit)
        return held

    def rerun(self, worker_id: str) -> list[str]:
        """Take back the unchecked results ``worker_id`` posted in the last VERIFY_RERUN_SECONDS
        (those still kept), and the results copied from them: queued again under their ids, to
        be computed by another worker. Returns their ids."""
        with self._lock:
            wall, tick = self._wall(), self._monotonic()
            items, copies = self.checks.to_rerun(worker_id, tick, self.results)
            ids = {i.task_id for i in items}
            for item in items:
                record = self.results.take_back(item.task_id)
                self._seq += 1
                self._admit(_Task(item.task_id, item.iterations, item.enqueued_at, tick, item.data, self._seq,
                                  digest=item.digest, priority=record.priority, owner=record.owner
                                  ).schedule(wall, tick), _QUEUE, None)
            for record in copies:
                self.results.take_back(record.id)
                leader = self._active[record.reused_from]
                self._seq += 1
                self._admit(_Task(record.id, record.iterations, record.enqueued_at, tick, leader.data, self._seq,
                                  digest=leader.digest, priority=record.priority, owner=record.owner
                                  ).schedule(wall, tick), _FOLLOW, leader.id)
            taken = ids | {r.id for r in copies}
            self.results.log.discard(lambda record: record.id in taken)
            commit = self._flush()
        self._durable(commit)
        return sorted(taken)

    def heartbeat(self, worker_id: str, task_ids: Iterable[str],
                  checkpoints: Mapping[str, Checkpoint] | None = None) -> int:
        """Renew the leases ``worker_id`` holds among ``task_ids``; returns how many. Keeps the
        ``checkpoints`` that fit (see ``nodeapp.store.checkpoints``), ignores the others."""
        with self._lock:
            self._take_checkpoints(worker_id, checkpoints)
            try:
                self._flush(waited=False)  # a checkpoint lost in a crash costs recomputation only
            except JournalError as exc:  # closed: the lease is still renewed
                log.warning("checkpoints not journaled: %s", exc)
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
            outcome = self._lose_leases(expired, "lease expired")
            commit = self._flush()
        self._durable(commit)
        return outcome

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
            outcome = self._lose_leases(held, "worker went down", free=set(returned))
            commit = self._flush()
        self._durable(commit)
        return outcome

    def status(self, task_id: str) -> TaskRecord | None:
        """The task as it is now, or None if unknown (or dropped past retention)."""
        with self._lock:
            return self._status(task_id)

    def in_progress(self, top: int) -> list[TaskRecord]:
        """Up to ``top`` running tasks that have a checkpoint, furthest along first."""
        with self._lock:
            started = [t for t in self._running.values() if t.checkpoint]
            started.sort(key=lambda t: t.checkpoint.done / t.iterations, reverse=True)
            return [t.record(done=t.checkpoint.done) for t in started[:top]]

    def held(self) -> list[tuple[str, TaskRecord, float]]:
        """Every leased task as (worker id, record with ``done``, wall time of its claim), for
        ``GET /active``; not those whose result is in, held for a spot-check."""
        with self._lock:
            wall, tick = self._wall(), self._monotonic()
            return [(t.worker_id, t.record(done=t.checkpoint.done if t.checkpoint else 0), wall - (tick - t.claimed_tick))
                    for t in self._running.values() if t.id not in self.checks]

    def purge(self) -> int:
        """Cancel every queued task (scheduled ones and those sharing their runs too); running
        ones run on. Returns how many were cancelled."""
        with self._lock:
            wall = self._wall()
            purged = 0
            for task in self._queue.drain():
                del self._active[task.id]
                self._body_bytes -= len(task.data)
                self._reuse.drop_leader((task.digest, task.iterations), task.id)
                followers, task.followers = task.followers, ()
                for ended in (task, *followers):
                    if ended is not task:
                        del self._active[ended.id]
                    self._end(ended.record(state=CANCELLED, completed_at=wall, reason=PURGED), ended)
                    purged += 1
            self._cancelled += purged
            commit = self._flush()
        self._durable(commit)
        return purged

    def upkeep(self) -> tuple[int, int]:
        """Fail the queued tasks past their deadline and drop kept records older than
        ``results_ttl`` (a scheduler job, every second); returns (expired, dropped)."""
        with self._lock:
            expired = self._expire(self._monotonic())
            dropped = self._trim_aged()
            commit = self._flush()
        self._durable(commit)
        return expired, dropped

    def start_draining(self) -> None:
        """From now on ``submit`` raises ``Draining``."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        with self._lock:
            return self._draining

    def restore(self, recovered: Recovered) -> None:
        """Take back what the journal kept (before any request): the queue in submission order,
        kept results, failures and cancellations (trimmed again if RESULTS_RETENTION is now
        lower), counters. Leases were not kept: a task that was running is queued again, with the
        newest checkpoint the journal had for it."""
        with self._lock:
            self._restore(recovered)

    def _restore(self, recovered: Recovered) -> None:
        """``restore`` with the lock held."""
        now, tick = self._wall(), self._monotonic()
        for stored in recovered.queued:
            data = stored.body or b""
            waited = max(0.0, now - stored.enqueued_at)
            task = _Task(stored.id, stored.iterations, stored.enqueued_at, tick - waited, data, stored.seq,
                         checkpoint=stored.checkpoint, digest=hashlib.sha512(data).digest(), priority=stored.priority,
                         not_before=stored.not_before, deadline=stored.deadline, owner=stored.owner)
            self._admit(task.schedule(now, tick), *self._restored_as(task))
        self._unwritten.clear()  # _admit noted them as accepted: they are in the journal already
        # Completions are numbered 1, 2, ... per epoch: the kept ones are the newest of them all.
        self.epoch = recovered.epoch or self.epoch
        self.results.log.last_seq = max(0, recovered.counters.get("completed", 0) - len(recovered.completed))
        for stored in recovered.completed:
            record = TaskRecord(stored.id, COMPLETED, stored.iterations, stored.enqueued_at,
                                result=stored.result, completed_at=stored.done_at, seq=stored.seq,
                                priority=stored.priority, owner=stored.owner, spot_checked=stored.checked)
            self.results.add_completed(record)
        for stored in recovered.failed:
            self.results.add_failed(TaskRecord(stored.id, CANCELLED if stored.cancelled else FAILED,
                                               stored.iterations, stored.enqueued_at, reason=stored.reason,
                                               completed_at=stored.done_at, seq=stored.seq,
                                               priority=stored.priority, owner=stored.owner))
        for name, attribute in _JOURNALED_COUNTERS.items():
            setattr(self, attribute, recovered.counters.get(name, 0))
        self._enqueued += recovered.accepted_since_counters  # see journal.Counters
        self._written_counts = dict(recovered.counters)
        self._seq = max(self._seq, recovered.last_seq)
        self._trim_aged()
        # Trims of a lowered RESULTS_RETENTION wait in _unwritten for the next change, so that
        # building a node starts no thread.

    def counts(self) -> TaskCounts:
        with self._lock:
            now = self._monotonic()
            queue = self._queue
            queue.peek(now)  # scheduled tasks now due count as waiting work
            return TaskCounts(
                queued=queue.ready,
                queued_iterations=queue.ready_iterations,
                body_bytes=self._body_bytes,
                oldest_wait=queue.oldest_wait(now),
                running=len(self._running),
                results_kept=self.results.completed_count(),
                enqueued=self._enqueued,
                completed=self._completed_total,
                failed=self._failed_total,
                rejected_full=self._rejected_full,
                leases_expired=self._leases_expired,
                draining=self._draining,
                checkpoints_accepted=self._checkpoints_accepted,
                checkpoints_refused=self._checkpoints_refused,
                reused=self._reused,
                cancelled=self._cancelled,
                retried=self._retried,
                replayed=self._replayed,
                scheduled=queue.scheduled,
                expired=self._expired,
                queued_by_priority=queue.by_priority(),
                waiting_on_peer=self._waiting_on_peer,
                idempotency_keys=self._keys.usage(),
            )

    # --------------------------------------------------- private, lock held
    def _finish(self, task: _Task, result: str, now: float, spot_checked: bool | None) -> None:
        """A running task completes with ``result``."""
        del self._running[task.id]
        del self._active[task.id]
        self._body_bytes -= len(task.data)
        self._completed_now(task.record(state=COMPLETED, result=result, completed_at=now,
                                        resumed_from=task.claimed_from or None, spot_checked=spot_checked), task)

    def _take_checkpoints(self, worker_id: str, checkpoints: Mapping[str, Checkpoint] | None) -> None:
        """Keep each checkpoint from the task's lease holder that moves it forward, short of the end.
        The holder's repeat of the one kept is no refusal: a heartbeat carries the newest checkpoint
        of each task held, and a chain starved of CPU may not have moved since the last one."""
        for task_id, checkpoint in (checkpoints or {}).items():
            task = self._running.get(task_id)
            current = task.checkpoint.done if task is not None and task.checkpoint else 0
            if task is not None and task.worker_id == worker_id and checkpoint.done == current:
                continue
            if task is None or task.worker_id != worker_id or not current < checkpoint.done < task.iterations:
                self._checkpoints_refused += 1
                log.info("checkpoint refused: task %s at %d from %s (holder %s, at %d of %s)", task_id,
                            checkpoint.done, worker_id, task and task.worker_id, current, task and task.iterations)
                continue
            task.checkpoint = checkpoint
            self._checkpoints_accepted += 1
            self._note(Checkpointed(task.seq, checkpoint.done, checkpoint.digest))

    def _dropped(self, record: TaskRecord) -> None:
        """A kept record leaves (past RESULTS_RETENTION or RESULTS_TTL_SECONDS, or taken back):
        ``KeptResults``' callback."""
        self._note(Trimmed(record.seq))
        self._reuse.forget_done(record.id)

    def _status(self, task_id: str) -> TaskRecord | None:
        task = self._active.get(task_id)
        if task is None:
            return self.results.get(task_id)
        runner = task.leader or task
        return task.record(state=runner.state, done=runner.checkpoint.done if runner.checkpoint else 0,
                           reused_from=task.leader and task.leader.id, checking=runner.id in self.checks)

    def _check_room(self, count: int, size: int) -> None:
        """Raise ``QueueFull`` unless ``count`` more waiting tasks (queued, or sharing the run of
        another) of ``size`` bytes in all fit."""
        waiting = len(self._active) - len(self._running)  # the queue and every task that shares a run
        if waiting + count > self.max_queued:
            self._rejected_full += 1
            raise QueueFull(f"the queue holds MAX_QUEUED={self.max_queued} tasks" if count == 1 else
                            f"the queue holds {waiting} tasks; {count} more would exceed "
                            f"MAX_QUEUED={self.max_queued}")
        if self._body_bytes + size > self.max_queued_bytes:
            self._rejected_full += 1
            raise QueueFull(f"the bodies held ({self._body_bytes} bytes) and {'this one' if count == 1 else 'these'} "
                            f"({size}) would exceed MAX_QUEUED_BYTES={self.max_queued_bytes}")

    def _match(self, work: Work, reuse: bool, batch_leaders: Mapping[Work, str] | None = None,
               peer_results: Mapping[Work, tuple[str, str]] | None = None) -> tuple[str, object]:
        """How a new task of ``work`` is admitted: (_DONE, (id, result)) of a kept result,
        (_DONE_PEER, (peer's id, result)), (_FOLLOW, leader id) or (_QUEUE, None). The kept result
        is read now: admitting the tasks before this one may trim it (RESULTS_RETENTION)."""
        if reuse:
            done = self._reuse.done(work)
            if done is not None:
                kept = self.results.completed(done)  # named after the task that ran, not after a copy of its result
                return _DONE, (kept.reused_from or done, kept.result)
            if peer_results and work in peer_results:
                return _DONE_PEER, peer_results[work]
            leader = (batch_leaders or {}).get(work) or self._reuse.leader(work)
            if leader is not None:
                return _FOLLOW, leader
        return _QUEUE, None

    def _restored_as(self, task: _Task) -> tuple[str, str | None]:
        """How a queued task read back from the journal is admitted: sharing the run of an older
        identical one read back before it (as it did before the restart, when it was sent with
        reuse), unless it has a checkpoint of its own to resume from."""
        leader = self._reuse.leader((task.digest, task.iterations))
        if leader is not None and task.checkpoint is None and self._may_follow(
                Submission(task.data, task.iterations, task.digest, priority=task.priority,
                           not_before=task.not_before, deadline=task.deadline), leader):
            return _FOLLOW, leader
        return _QUEUE, None

    def _may_follow(self, item: Submission, leader_id: str) -> bool:
        """Whether a new task may share the run of a queued or running task: not when it has a
        time of its own, nor when the leader waits for its not_before or would be served later
        than the new task (a lower priority)."""
        if item.not_before is not None or item.deadline is not None:
            return False
        leader = self._active.get(leader_id)
        if leader is None or leader.state != QUEUED:  # an earlier task of the same request, or running
            return True
        return leader.place is not None and leader.place[0] in (HEAD, READY) and leader.priority >= item.priority

    def _expire(self, now: float) -> int:
        """Fail every queued task past its deadline (``EXPIRED``); a task that shared its run
        takes it over, as after a cancel."""
        expired = self._queue.expired(now)
        if not expired:
            return 0
        wall = self._wall()
        for task in expired:
            del self._active[task.id]
            self._body_bytes -= len(task.data)
            self._hand_over(task)
            self._end(task.record(state=FAILED, completed_at=wall, reason=EXPIRED), task)
            self._failed_total += 1
            log.info("task expired: %s (deadline %s)", task.id, task.deadline)
        self._expired += len(expired)
        return len(expired)

    def _trim_aged(self) -> int:
        """Drop kept completed and failed records older than ``results_ttl`` (oldest first)."""
        if not self.results_ttl:
            return 0
        limit = self._wall() - self.results_ttl
        dropped = 0
        dropped = self.results.drop_older_than(limit)
        return dropped

    def _admit(self, task: _Task, how: str, source) -> str | None:
        """Admit a new task as ``_match`` said; returns the task it reuses, if any."""
        self._note(Accepted(task.seq, task.id, task.iterations, b"" if how in (_DONE, _DONE_PEER) else task.data,
                            task.enqueued_at, task.priority, task.not_before, task.deadline, task.owner))
        if how in (_DONE, _DONE_PEER):
            source_id, result = source
            self._reused += 1
            self._completed_now(task.record(state=COMPLETED, result=result, completed_at=self._wall(),
                                            reused_from=source_id), task)
            return source_id
        self._active[task.id] = task
        if how == _FOLLOW:
            leader = self._active[source]
            task.leader, task.data = leader, leader.data
            if not leader.followers:
                leader.followers = []
            leader.followers.append(task)
            return leader.id
        if how == _WAIT_PEER:
            task.peer_run = source
            self._peer_waits.setdefault(source, {})[task.id] = task
            self._waiting_on_peer += 1
        else:
            self._queue.push(task, self._monotonic())
        self._body_bytes += len(task.data)
        if self._reuse.leader((task.digest, task.iterations)) is None:
            self._reuse.set_leader((task.digest, task.iterations), task.id)
        return None

    def _stop_waiting(self, task: _Task) -> None:
        """``task`` no longer waits for the peer's run (it ended, or the task was cancelled)."""
        waits = self._peer_waits[task.peer_run]
        del waits[task.id]
        if not waits:
            del self._peer_waits[task.peer_run]
        task.peer_run = None
        self._waiting_on_peer -= 1

    def _completed_now(self, record: TaskRecord, task: _Task) -> None:
        """Keep a completed record, numbered in the completion log; the tasks that shared its run
        complete with it."""
        self._note(Completed(task.seq, record.result, record.completed_at, record.spot_checked))
        self.results.add_completed(record)
        self._completed_total += 1
        work = (task.digest, task.iterations)
        self._reuse.drop_leader(work, task.id)
        self._reuse.add_done(work, task.id)
        followers, task.followers = task.followers, ()
        for follower in followers:
            del self._active[follower.id]
            self._reused += 1
            self._completed_now(follower.record(state=COMPLETED, result=record.result, completed_at=record.completed_at,
                                                reused_from=task.id), follower)

    def _fail(self, task: _Task, reason: str) -> None:
        """Keep a failed record; the tasks that shared its run fail with it."""
        self._end(task.record(state=FAILED, completed_at=self._wall(), reason=reason), task)
        self._failed_total += 1
        self._reuse.drop_leader((task.digest, task.iterations), task.id)
        followers, task.followers = task.followers, ()
        for follower in followers:
            del self._active[follower.id]
            self._fail(follower, f"it shared the run of task {task.id}, which failed: {reason}")

    def _hand_over(self, task: _Task) -> None:
        """A task whose run others share leaves without a result: the first of them is queued at
        the head in its place, the rest share that one's run."""
        work = (task.digest, task.iterations)
        self._reuse.drop_leader(work, task.id)
        followers, task.followers = task.followers, ()
        if not followers:
            return
        first, *rest = followers
        first.leader, first.followers, first.state = None, rest or (), QUEUED
        for follower in rest:
            follower.leader = first
        self._queue.push_head(first)
        self._body_bytes += len(first.data)
        self._reuse.set_leader(work, first.id)

    def _end(self, record: TaskRecord, task: _Task) -> None:
        """Keep a failed or cancelled record, and its body for ``retry`` (within ``kept_bodies_bytes``)."""
        self._note(Failed(task.seq, record.reason or "", record.completed_at, record.state == CANCELLED))
        self.results.add_failed(record, (task.data, task.digest))

    def _note(self, *records: Record) -> None:
        if self.journal is not None:
            self._unwritten.extend(records)

    def _flush(self, waited: bool = True) -> Commit | None:
        """Hand the records noted so far, and the counters now, to the journal (lock held);
        ``waited``: the caller will ``_durable`` the commit. Tasks accepted and nothing else (an
        enqueue) go without the counters: their rows count as enqueued (``journal.Counters``)."""
        if not self._unwritten:
            return None
        counters = {name: value for name, attribute in _JOURNALED_COUNTERS.items()
                    if self._written_counts.get(name) != (value := getattr(self, attribute))}
        if counters and not (counters.keys() == {"enqueued"} and all(type(r) is Accepted for r in self._unwritten)):
            self._unwritten.append(Counters(counters, self._seq))
            self._written_counts.update(counters)
        records, self._unwritten = self._unwritten, []
        try:
            return self.journal.write(records, waited=waited)
        except JournalError:
            self._resync()  # the change just made in memory goes too
            raise

    def _durable(self, commit: Commit | None) -> None:
        """Wait, without the lock, until ``commit`` is durable (at most JOURNAL_WAIT_SECONDS).

        Raises:
            JournalError: it failed (the memory is put back to what the journal holds first) or
                is late.
        """
        if commit is None:
            return
        try:
            self.journal.wait(commit)
        except JournalError:
            with self._lock:
                self._resync()
            raise

    def _resync(self) -> None:
        """After a failed journal write: the memory goes back to what the journal holds, as if
        the node had restarted at that moment, except that a task still in the journal stays
        leased to the worker holding it, and one whose result is held for a spot-check stays
        held (``checks``, kept as it is, settles it). No-op unless the journal failed.

        Raises:
            JournalError: the journal cannot be read back (writes stay refused).
        """
        recovered = self.journal.reload()
        if recovered is None:
            return
        leases = list(self._running.values())
        draining, last_number = self._draining, self.results.log.last_seq
        checkpoints = self._checkpoints_accepted, self._checkpoints_refused
        self._empty()
        self._restore(recovered)
        self._draining = draining
        self._checkpoints_accepted, self._checkpoints_refused = checkpoints
        # Completions are numbered on from the highest number a client may have seen: none is missed.
        self.results.log.last_seq = max(self.results.log.last_seq, last_number)
        held = {old.id: old for old in leases if (task := self._active.get(old.id)) is not None and task.leader is None}
        if held:
            for old in held.values():
                task = self._active[old.id]
                self._queue.remove(task)
                task.state, task.worker_id, task.lease_deadline = RUNNING, old.worker_id, old.lease_deadline
                task.attempts, task.claimed_from, task.claimed_tick = old.attempts, old.claimed_from, old.claimed_tick
                task.claimed_point = old.claimed_point  # where its result's check starts
                if old.checkpoint and (not task.checkpoint or task.checkpoint.done < old.checkpoint.done):
                    task.checkpoint = old.checkpoint
                self._running[task.id] = task
        self.checks.forget_gone(self._running)  # the journal never had the task, or it shares a run now
        self._keys.forget(lambda entry: entry.task_id not in self._active and self.results.get(entry.task_id) is None)

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
                self._body_bytes -= len(task.data)
                reason = f"{why} {task.attempts} times (MAX_ATTEMPTS={self.max_attempts})"
                self._fail(task, reason)
                log.warning("task failed: %s, %s", task.id, reason)
                failed += 1
            else:
                task.state = QUEUED
                self._queue.push_head(task)
                requeued += 1
        return requeued, failed
