"""The thread that runs a node's spot-checks, off the request threads, within a bounded backlog.

The store admits a check (``admit``) under its lock only while the iterations waiting stay
within ``max_pending`` (VERIFY_MAX_PENDING); a result past it is accepted unchecked and counted
as skipped. ``submit`` hands admitted checks over; the thread, started on the first one,
recomputes each (``nodeapp.store.verification.run``) and calls ``settle`` with each check and
whether it passed, which accepts the held result or takes it back. Checks queued together are
settled together (a batch of at most BATCH_ITERATIONS, so one journal commit for many small
results). The counters are what ``/stats`` and ``/metrics`` show.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nodeapp.store.verification import Check, run

log = logging.getLogger(__name__)

#: Checks queued at once are run and then settled together, up to this many iterations of them
#: (~50 ms of the hashlib loop: a held result waits at most that long for the others of its batch).
BATCH_ITERATIONS = 100_000
BATCH_MAX = 512


@dataclass(frozen=True)
class CheckCounts:
    checks: int  # results recomputed
    passed: int
    mismatches: int
    iterations: int  # spent checking
    skipped: int  # picked, but accepted unchecked: the backlog was full
    pending: int  # checks waiting or running
    pending_iterations: int


class Checker:
    """Runs checks one after the other in one thread. Thread-safe.

    Args:
        settle: called with a batch of (check, whether it passed) pairs (None: it could not be
            run), in the checker's thread.
        max_pending: iterations of checks that may wait (VERIFY_MAX_PENDING).
        run_check: recomputes a check (tests pass a slow or failing one).
    """

    def __init__(self, settle: Callable[[list[tuple[Check, bool | None]]], None], max_pending: int,
                 run_check: Callable[[Check], bool] = run) -> None:
        self._settle, self._run = settle, run_check
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._queue: deque[Check] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending = self._pending_iterations = 0
        self._checks = self._passed = self._mismatches = self._iterations = self._skipped = 0

    def admit(self, check: Check) -> bool:
        """Reserve room for ``check`` in the backlog; False (counted as skipped) if it does not fit."""
        with self._cond:
            if self._closed or self._pending_iterations + check.cost > self.max_pending:
                self._skipped += 1
                return False
            self._pending += 1
            self._pending_iterations += check.cost
            return True

    def submit(self, checks: Iterable[Check]) -> None:
        """Queue admitted checks; the thread starts with the first."""
        checks = list(checks)
        if not checks:
            return
        with self._cond:
            self._queue.extend(checks)
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="spot-checks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def counts(self) -> CheckCounts:
        with self._cond:
            return CheckCounts(self._checks, self._passed, self._mismatches, self._iterations, self._skipped,
                               self._pending, self._pending_iterations)

    def idle(self) -> bool:
        """Nothing waits nor runs (tests wait on it)."""
        with self._cond:
            return self._pending == 0

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread after the check in hand (the node is stopping): checks still queued are
        dropped, their tasks held until the node exits (a journal requeues them on restart)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = [self._queue.popleft()]
                cost = batch[0].cost
                while (self._queue and len(batch) < BATCH_MAX
                       and cost + self._queue[0].cost <= BATCH_ITERATIONS):
                    batch.append(self._queue.popleft())
                    cost += batch[-1].cost
            outcomes = [(check, self._outcome(check)) for check in batch]
            try:
                self._settle(outcomes)
            except Exception:
                log.exception("settling the spot-checks of tasks %s failed", ", ".join(c.task_id for c in batch))
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._pending_iterations -= cost

    def _outcome(self, check: Check) -> bool | None:
        """Run ``check``: whether it passed, None if it could not be run."""
        passed: bool | None
        try:
            passed = self._run(check)
        except Exception:  # a bug must not stop the thread, nor blame the worker
            log.exception("spot-check of task %s failed to run: the task is computed again", check.task_id)
            passed = None
        with self._cond:
            if passed is not None:
                self._checks += 1
                self._iterations += check.cost
                self._passed += passed
                self._mismatches += not passed
        return passed
