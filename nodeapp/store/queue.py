"""The order in which a node hands out its queued tasks: priorities with aging, ``not_before``
and deadlines (docs/api.md, "Priorities and times").

A task of priority ``p`` (0 to ``PRIORITY_MAX``, higher first) is served as if it had become
ready ``p × aging`` seconds earlier: workers get the task with the smallest
``ready_tick − p × aging`` first, ties in submission order. That is the same as saying that a
task's effective priority rises by one for every ``aging`` seconds it waits, and it bounds
starvation: a task is never overtaken by a task that became ready more than
``(PRIORITY_MAX − p) × aging`` seconds after it. The rank of a task never changes while it
waits, so one heap keeps the order.

A task with a ``not_before`` in the future waits apart (it is *scheduled*: not counted as ready
work, never handed out) until its time; it becomes ready then, and its aging counts from then.
A task requeued after a lost lease goes to the *head*, before every other, as it always did: it
was already served once. Deadlines are kept in their own heap, so that ``expired`` finds the
tasks past theirs in O(log n) each.

Nothing here locks: the store calls it under its own lock. Removal is lazy (each heap entry
carries the task's ``place`` at the time it was pushed; a stale entry is skipped), and the
heaps are rebuilt when stale entries outnumber live ones.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator
from typing import Protocol

PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 0
HEAD, READY, LATER = "head", "ready", "later"
#: Heaps are rebuilt once the removals since the last rebuild exceed twice the live tasks plus this.
_SLACK = 64


class Queueable(Protocol):
    """What a queued task must have (``nodeapp.store.tasks._Task``)."""

    seq: int
    iterations: int
    priority: int
    ready_tick: float  # monotonic: when it was enqueued, or its not_before if later
    deadline_tick: float  # monotonic; math.inf for none
    place: tuple[str, int] | None  # where it waits now (this queue's bookkeeping), None when out


class TaskQueue:
    """Queued tasks in the order workers get them. ``len()`` counts every task (scheduled ones
    too: MAX_QUEUED bounds them all); ``ready`` those a claim can take now."""

    def __init__(self, aging_seconds: float = 60.0) -> None:
        if not aging_seconds > 0:
            raise ValueError("aging_seconds must be > 0")
        self.aging = aging_seconds
        self._head: deque = deque()
        self._ready: list[tuple[float, int, int, Queueable]] = []  # (rank, seq, push, task)
        self._later: list[tuple[float, int, int, Queueable]] = []  # (ready_tick, seq, push, task)
        self._deadlines: list[tuple[float, int, int, Queueable]] = []
        self._ages: list[tuple[float, int, int, Queueable]] = []  # ready or head, by ready_tick
        self._pushes = itertools.count(1)
        self._count = {HEAD: 0, READY: 0, LATER: 0}
        self._iterations = {HEAD: 0, READY: 0, LATER: 0}
        self._by_priority = [0] * (PRIORITY_MAX + 1)  # ready or head
        self._stale = 0  # removals since the heaps were last rebuilt (each leaves stale entries)

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self._count[HEAD] + self._count[READY] + self._count[LATER]

    @property
    def ready(self) -> int:
        """Tasks a claim may take now (without promoting scheduled ones that came due)."""
        return self._count[HEAD] + self._count[READY]

    @property
    def scheduled(self) -> int:
        """Tasks waiting for their ``not_before``."""
        return self._count[LATER]

    @property
    def ready_iterations(self) -> int:
        return self._iterations[HEAD] + self._iterations[READY]

    @property
    def scheduled_iterations(self) -> int:
        return self._iterations[LATER]

    def by_priority(self) -> dict[int, int]:
        """Ready tasks per priority, highest first, only the priorities that have some."""
        return {p: n for p in range(PRIORITY_MAX, PRIORITY_MIN - 1, -1) if (n := self._by_priority[p])}

    def oldest_wait(self, now: float) -> float:
        """Seconds the longest-waiting ready task has waited (0 when none)."""
        entry = self._top(self._ages)
        return max(0.0, now - entry[0]) if entry else 0.0

    def rank(self, task: Queueable) -> float:
        """Smaller is served first (head tasks aside)."""
        return task.ready_tick - task.priority * self.aging

    # ---------------------------------------------------------------- changes
    def push(self, task: Queueable, now: float) -> None:
        """Queue a task by its rank; one whose ``ready_tick`` is after ``now`` waits as scheduled."""
        self._place(task, LATER if task.ready_tick > now else READY)

    def push_head(self, task: Queueable) -> None:
        """Queue a task before every other (a lease lost: it was served once already)."""
        self._place(task, HEAD)

    def remove(self, task: Queueable) -> None:
        """Take a queued task out (cancelled, expired, purged)."""
        if task.place[0] == HEAD:
            self._head.remove(task)
        self._forget(task)

    def take(self, task: Queueable) -> None:
        """Take out the task ``peek`` has just returned (a claim): cheaper than ``remove``."""
        if task.place[0] == HEAD:
            self._head.popleft()
        else:
            heapq.heappop(self._ready)  # peek left its live entry on top
        self._forget(task)

    def pop(self, now: float) -> Queueable | None:
        """The next task, out of the queue; None when nothing is ready."""
        task = self.peek(now)
        if task is not None:
            self.take(task)
        return task

    def peek(self, now: float) -> Queueable | None:
        """The task ``pop`` would give, left in the queue; promotes scheduled tasks now due."""
        self._promote(now)
        if self._head:
            return self._head[0]
        entry = self._top(self._ready)
        return entry[3] if entry else None

    def expired(self, now: float) -> list[Queueable]:
        """Take out and return every task whose deadline is at or before ``now``, oldest deadline first."""
        out = []
        while (entry := self._top(self._deadlines)) is not None and entry[0] <= now:
            out.append(entry[3])
            self.remove(entry[3])
        return out

    def drain(self) -> list[Queueable]:
        """Take out every queued task (purge), in the order they would have been served, then scheduled ones."""
        out = list(self._head)
        out += [e[3] for e in sorted(self._ready) if self._live(e)]
        out += [e[3] for e in sorted(self._later) if self._live(e)]
        for task in out:
            task.place = None
        self.__init__(self.aging)  # empty, counts and heaps
        return out

    def __iter__(self) -> Iterator[Queueable]:
        """Every queued task, in no particular order."""
        yield from self._head
        for heap in (self._ready, self._later):
            yield from (e[3] for e in heap if self._live(e))

    # ---------------------------------------------------------------- private
    def _place(self, task: Queueable, where: str) -> None:
        if getattr(task, "place", None) is not None:
            raise ValueError(f"task {task.seq} is queued already")
        if not PRIORITY_MIN <= task.priority <= PRIORITY_MAX:
            raise ValueError(f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}, got {task.priority}")
        push = next(self._pushes)
        task.place = (where, push)
        self._count[where] += 1
        self._iterations[where] += task.iterations
        if where == HEAD:
            self._head.appendleft(task)
        elif where == READY:
            heapq.heappush(self._ready, (self.rank(task), task.seq, push, task))
        else:
            heapq.heappush(self._later, (task.ready_tick, task.seq, push, task))
        if where != LATER:
            self._by_priority[task.priority] += 1
            heapq.heappush(self._ages, (task.ready_tick, task.seq, push, task))
        if task.deadline_tick != math.inf:
            heapq.heappush(self._deadlines, (task.deadline_tick, task.seq, push, task))

    def _forget(self, task: Queueable) -> None:
        """The counts of a task leaving the queue; its heap entries left behind go stale."""
        where = task.place[0]
        self._count[where] -= 1
        self._iterations[where] -= task.iterations
        if where != LATER:
            self._by_priority[task.priority] -= 1
        task.place = None
        self._stale += 1
        if self._stale > 2 * len(self) + _SLACK:
            self._compact()

    def _promote(self, now: float) -> None:
        while (entry := self._top(self._later)) is not None and entry[0] <= now:
            task = entry[3]
            heapq.heappop(self._later)
            self._forget(task)
            self._place(task, READY)

    def _top(self, heap: list) -> tuple | None:
        """The first live entry of ``heap`` (stale ones on top are dropped)."""
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    @staticmethod
    def _live(entry: tuple) -> bool:
        place = entry[3].place
        return place is not None and place[1] == entry[2]

    def _compact(self) -> None:
        """Rebuild the heaps without their stale entries: O(n), after more than n removals."""
        self._ready, self._later, self._deadlines, self._ages = (
            self._rebuilt(heap) for heap in (self._ready, self._later, self._deadlines, self._ages))
        self._stale = 0

    def _rebuilt(self, heap: list) -> list:
        kept = [e for e in heap if self._live(e)]
        heapq.heapify(kept)
        return kept
