"""What leaves the task store: the records, counts and errors its callers see.

Immutable values only: a lease is a ``LeasedTask``, a status or a kept result a ``TaskRecord``,
the figures a ``TaskCounts``. No logic beyond validation of a task id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from nodeapp.store.checkpoints import Checkpoint

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
CANCELLED = "cancelled"


_TASK_ID = re.compile(r"[0-9a-f]{32}")


def is_task_id(text: str) -> bool:
    """Whether ``text`` has the form of the ids ``submit`` makes (``uuid4().hex``)."""
    return _TASK_ID.fullmatch(text) is not None


class QueueFull(Exception):
    """The queue holds MAX_QUEUED tasks, or a new body would take the bodies held past
    MAX_QUEUED_BYTES; the client should retry later. The message says which."""


class Draining(Exception):
    """The node is shutting down and accepts no new task."""


class KeyMismatch(Exception):
    """Item ``index`` reuses an idempotency key of an earlier request with another body or
    iteration count; nothing was queued."""

    def __init__(self, index: int, key: str, task_id: str) -> None:
        super().__init__(f"idempotency key {key!r} was first used for task {task_id} with another body or "
                         "iteration count")
        self.index, self.key, self.task_id = index, key, task_id


class WrongState(Exception):
    """``cancel`` or ``retry`` of a task whose state does not allow it; ``record`` is the task now."""

    def __init__(self, record: TaskRecord, message: str) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True, slots=True)
class Submission:
    """One task for ``submit_many``; ``digest`` is sha512(data), computed outside the store's lock."""

    data: bytes
    iterations: int
    digest: bytes
    key: str | None = None  # idempotency key
    priority: int = 0  # 0 to 9, higher first (nodeapp/store/queue.py)
    not_before: float | None = None  # wall clock: not handed out before
    deadline: float | None = None  # wall clock: failed ``expired`` if still queued then
    owner: str | None = None  # the client key (id) that queued it


@dataclass(frozen=True, slots=True)
class Submitted:
    """What became of one submission."""

    id: str
    replayed: bool = False  # its idempotency key was known: the id it first got, nothing new queued
    reused_from: str | None = None  # completed at once from, or shares the run of, this task


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
    reused_from: str | None = None  # completed from (or, queued or running, shares the run of) this task
    seq: int = 0  # the task's row in the journal
    priority: int = 0
    not_before: float | None = None
    deadline: float | None = None
    owner: str | None = None
    spot_checked: bool | None = None  # completed: whether its result was recomputed before acceptance
    checking: bool = False  # running: its result is posted and being spot-checked


class KeysUsage(NamedTuple):
    """The idempotency keys kept: how many, the bytes they count for against ``max_bytes``
    (IDEMPOTENCY_KEYS_BYTES), and how many were dropped before their time to stay within it."""

    kept: int = 0
    bytes: int = 0
    max_bytes: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class TaskCounts:
    """The store's figures, read in one consistent snapshot."""

    queued: int
    queued_iterations: int
    body_bytes: int  # bodies held: queued and running tasks (MAX_QUEUED_BYTES)
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
    reused: int = 0  # completed from another task's result or run, without a run of their own
    cancelled: int = 0
    retried: int = 0
    replayed: int = 0  # submissions whose idempotency key was known: nothing queued
    scheduled: int = 0  # queued with a not_before still ahead
    expired: int = 0  # queued tasks failed at their deadline
    queued_by_priority: dict = field(default_factory=dict)  # ready tasks per priority
    waiting_on_peer: int = 0  # identical to a task the peer runs: wait for its result, in no queue
    idempotency_keys: KeysUsage = KeysUsage()
