"""Which task computes, or has computed, a given (body digest, iterations).

The result of a task is a pure function of its body and iterations, so a task whose pair
matches a kept result completes at once from it, and one whose pair matches a task still queued
or running shares that task's run. ``ReuseIndex`` has no lock of its own: ``TaskStore`` uses it
under the store's lock.
"""

from __future__ import annotations

#: (sha512 of the body, iterations)
Work = tuple[bytes, int]


class ReuseIndex:
    """The task that runs each pair now (its *leader*) and the newest kept result of each pair."""

    def __init__(self) -> None:
        self._leaders: dict[Work, str] = {}
        self._done: dict[Work, str] = {}
        self._work_of_done: dict[str, Work] = {}

    def leader(self, work: Work) -> str | None:
        return self._leaders.get(work)

    def set_leader(self, work: Work, task_id: str) -> None:
        self._leaders[work] = task_id

    def drop_leader(self, work: Work, task_id: str) -> None:
        if self._leaders.get(work) == task_id:
            del self._leaders[work]

    def done(self, work: Work) -> str | None:
        """The newest kept completed task of this pair."""
        return self._done.get(work)

    def add_done(self, work: Work, task_id: str) -> None:
        old = self._done.get(work)
        if old is not None:
            self._work_of_done.pop(old, None)
        self._done[work] = task_id
        self._work_of_done[task_id] = work

    def forget_done(self, task_id: str) -> None:
        """A completed task dropped past retention (the newest of its pair is dropped last)."""
        work = self._work_of_done.pop(task_id, None)
        if work is not None and self._done.get(work) == task_id:
            del self._done[work]
