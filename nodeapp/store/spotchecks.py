"""The store's side of spot-checks (docs/verification.md): the results held until their check
settles, and the unchecked results kept a while so that a caught worker's can be computed again.

``verification.py`` says which results are checked and how; ``checker.py`` runs the checks in
their own thread. ``SpotChecks`` has no lock: ``TaskStore`` owns it and calls it with the
store's lock held, because each step that uses it also moves a task between the queue, the
leases and the kept results.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from nodeapp.store.records import TaskRecord
from nodeapp.store.results import KeptResults
from nodeapp.store.verification import Check, RecentResults, Sampler, Unchecked, plan

if TYPE_CHECKING:
    from nodeapp.store.tasks import _Task


class SpotChecks:
    """Held results by task id, and recent unchecked ones; checks nothing until ``enable``."""

    def __init__(self) -> None:
        self.sampler: Sampler | None = None
        self.checker = None  # nodeapp.store.checker.Checker
        self._checking: dict[str, Check] = {}  # held results, by task id
        self._recent = RecentResults(0)

    def enable(self, sampler: Sampler, checker, rerun_seconds: float) -> None:
        """Spot-check results from now on: ``sampler`` picks them, ``checker`` (its ``admit``, and
        its ``submit``, which ``TaskStore.complete`` calls after the lock) runs them and calls
        ``TaskStore.settle``; unchecked ones are kept ``rerun_seconds``. Called once, before the
        store serves; a ``_resync`` of the store keeps it."""
        self.sampler, self.checker, self._recent = sampler, checker, RecentResults(rerun_seconds)

    @property
    def enabled(self) -> bool:
        return self.sampler is not None

    def __contains__(self, task_id: str) -> bool:
        """Whether the result of ``task_id`` is held for a check."""
        return task_id in self._checking

    def hold(self, worker_id: str, task: _Task, result: str, marks: list[str]) -> Check | None:
        """The check of this result, now held, if the sampler picks it and the checker has room;
        else None."""
        if self.sampler is None or not self.sampler.wanted(worker_id, task.iterations - task.claimed_from):
            return None
        start = task.claimed_point
        check = plan(task.id, worker_id, task.data, task.iterations, start and (start.done, start.digest), result,
                     marks, self.sampler.rng)
        if not self.checker.admit(check):
            return None
        self._checking[task.id] = check
        return check

    def forget_gone(self, running: Container[str]) -> None:
        """After the store's ``_resync``: the results held for tasks no longer ``running`` are held
        no more (their checks, when they end, settle nothing)."""
        for task_id in [i for i in self._checking if i not in running]:
            del self._checking[task_id]

    def settle(self, check: Check) -> bool:
        """``check`` has run: its result is no longer held. False if it was not (cancelled meanwhile)."""
        if self._checking.get(check.task_id) is not check:
            return False
        del self._checking[check.task_id]
        return True

    def drop(self, task_id: str) -> None:
        """The task is cancelled: its result, if held, is no longer."""
        self._checking.pop(task_id, None)

    def keep_unchecked(self, tick: float, worker_id: str, task: _Task) -> None:
        """Remember a result accepted unchecked, for ``to_rerun`` (only while checks are enabled)."""
        if self.sampler is not None:
            self._recent.add(Unchecked(tick, worker_id, task.id, task.data, task.digest, task.iterations,
                                       task.enqueued_at))

    def to_rerun(self, worker_id: str, tick: float,
                 results: KeptResults) -> tuple[list[Unchecked], list[TaskRecord]]:
        """The unchecked results ``worker_id`` posted in the last VERIFY_RERUN_SECONDS that are
        still kept (no longer remembered after this), and the kept results copied from them. A
        result read back by ``_resync`` is taken back too (``spot_checked`` is journaled with it,
        and a result of unknown state, None, counts as unchecked), unless it is a copy (it
        shares a run since)."""
        items = [i for i in self._recent.take(worker_id, tick)
                 if (r := results.completed(i.task_id)) is not None and r.spot_checked is not True
                 and r.reused_from is None]
        ids = {i.task_id for i in items}
        copies = [r for r in results.completed_records() if r.reused_from in ids]
        return items, copies
