"""The workers this node launched and its worker quota, behind the pool's own lock.

The quota: ``max = base_max - lent + borrowed``. A slot is *taken* by a registered worker
(pending or live) or by a reservation that a launch will fill. Slots lent to the peer lower our
max until the peer gives them back; slots borrowed from the peer raise it until the worker on
them goes down, and are then *owed* back until the scaler returns them.

Boot deadlines are on a monotonic clock. Nothing here does I/O: what needs a call to the peer or
the launcher is handed out (``terminating``, ``repaying``) and put back if the call fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)

PENDING, LIVE = "pending", "live"


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker as the registry holds it at one moment."""

    id: str
    state: str
    borrowed: bool
    launched_at: float  # monotonic
    last_seen: float | None = None  # monotonic


@dataclass(frozen=True)
class PoolCounts:
    """The pool's figures, read in one consistent snapshot."""

    live: int
    pending: int
    reserved: int
    max: int
    base_max: int
    lent: int
    borrowed: int
    owed: int
    launched_total: int
    down_total: int


class Reservation:
    """Slots held for a launch in flight (``WorkerPool.reserve``): ``bind`` the launched ids,
    and leaving the ``with`` block (or ``release``) frees what was not bound."""

    def __init__(self, pool: WorkerPool, count: int, borrowed: bool) -> None:
        self._pool = pool
        self.count = count
        self.borrowed = borrowed

    def bind(self, worker_ids: Iterable[str]) -> None:
        """Register launched workers on the reserved slots."""
        self.count = self._pool._bind(self, list(worker_ids))

    def release(self) -> None:
        """Free the slots not bound. A borrowed slot left unused is owed back to the peer."""
        self._pool._release(self)
        self.count = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class Debt:
    """Borrowed slots to give back to the peer; ``repaid`` once per slot returned."""

    remaining: int

    def repaid(self) -> None:
        self.remaining -= 1


class WorkerPool:
    """Registry of launched workers and the quota. Thread-safe: each public method holds the lock.

    Args:
        max_workers: this node's own worker quota (MAX_NUM_OF_WORKERS).
        monotonic: the clock of launch times and boot deadlines.
    """

    def __init__(self, *, max_workers: int = 5, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._workers: dict[str, Worker] = {}
        self._base_max = max_workers
        self._lent = 0
        self._borrowed = 0
        self._reserved = 0
        self._owed = 0  # borrowed slots freed but not yet given back to the peer
        self._departed: list[str] = []  # workers gone down, for the launcher to terminate
        self._launched_total = 0
        self._down_total = 0

    # -------------------------------------------------------------- registry
    def add(self, worker_ids: Iterable[str]) -> None:
        """Register workers launched on our own quota, pending until first seen."""
        with self._lock:
            self._register(worker_ids, borrowed=False)

    def seen(self, worker_id: str) -> None:
        """The worker called us (claim, complete, heartbeat): a registered one is live."""
        with self._lock:
            worker = self._workers.get(worker_id)
            if worker is None:
                return
            now = self._monotonic()
            if worker.state == PENDING:
                log.info("worker seen: %s, %.1fs after launch", worker_id, now - worker.launched_at)
            self._workers[worker_id] = Worker(worker_id, LIVE, worker.borrowed, worker.launched_at, now)

    def remove(self, worker_id: str, *, terminate: bool = True) -> Worker | None:
        """Forget a worker; returns it, or None if unknown (idempotent).

        Its borrowed slot, if any, becomes owed to the peer. With ``terminate`` it is also
        handed to the launcher to stop (``terminating``), in case it is still running.
        """
        with self._lock:
            worker = self._workers.pop(worker_id, None)
            if worker is not None:
                self._down_total += 1
                if terminate:
                    self._departed.append(worker_id)
                if worker.borrowed:
                    self._borrowed -= 1
                    self._owed += 1
            return worker

    def workers(self) -> list[Worker]:
        """The registry now (immutable records)."""
        with self._lock:
            return list(self._workers.values())

    def overdue(self, boot_timeout: float) -> list[str]:
        """Pending workers launched more than ``boot_timeout`` seconds ago."""
        with self._lock:
            now = self._monotonic()
            return [w.id for w in self._workers.values() if w.state == PENDING and now - w.launched_at > boot_timeout]

    @contextmanager
    def terminating(self) -> Iterator[list[str]]:
        """Workers gone down since the last call, for the launcher to stop; if the block raises,
        they are put back for the next call."""
        with self._lock:
            departed, self._departed = self._departed, []
        try:
            yield departed
        except BaseException:
            with self._lock:
                self._departed[:0] = departed
            raise

    # ----------------------------------------------------------------- quota
    def reserve(self, count: int = 1, *, borrowed: bool = False) -> Reservation:
        """Hold ``count`` slots for a launch. ``borrowed``: the peer just granted them, so our
        max rises by ``count``. Use as a context manager; see ``Reservation``."""
        with self._lock:
            self._reserved += count
            if borrowed:
                self._borrowed += count
        return Reservation(self, count, borrowed)

    def lend(self) -> bool:
        """The peer asks for a slot: grant it if one is free (taken < max)."""
        with self._lock:
            if len(self._workers) + self._reserved < self._max():
                self._lent += 1
                return True
            return False

    def loan_returned(self) -> int:
        """A lent slot comes back; returns the new max. Ignored if nothing was lent."""
        with self._lock:
            if self._lent > 0:
                self._lent -= 1
            return self._max()

    @contextmanager
    def repaying(self) -> Iterator[Debt]:
        """The borrowed slots owed to the peer, to return in the block; whatever is not
        ``repaid`` by its end (or when it raises) stays owed."""
        with self._lock:
            debt, self._owed = Debt(self._owed), 0
        try:
            yield debt
        finally:
            with self._lock:
                self._owed += debt.remaining

    def set_base_max(self, max_workers: int) -> int:
        """Change our own quota; returns the new max."""
        with self._lock:
            self._base_max = max_workers
            return self._max()

    def counts(self) -> PoolCounts:
        with self._lock:
            live = sum(1 for w in self._workers.values() if w.state == LIVE)
            return PoolCounts(
                live=live,
                pending=len(self._workers) - live,
                reserved=self._reserved,
                max=self._max(),
                base_max=self._base_max,
                lent=self._lent,
                borrowed=self._borrowed,
                owed=self._owed,
                launched_total=self._launched_total,
                down_total=self._down_total,
            )

    # --------------------------------------------------- private, lock held
    def _max(self) -> int:
        return self._base_max - self._lent + self._borrowed

    def _register(self, worker_ids: Iterable[str], borrowed: bool) -> None:
        now = self._monotonic()
        for worker_id in worker_ids:
            self._workers[worker_id] = Worker(worker_id, PENDING, borrowed, now)
            self._launched_total += 1

    def _bind(self, reservation: Reservation, worker_ids: list[str]) -> int:
        with self._lock:
            bound = min(len(worker_ids), reservation.count)
            self._reserved -= bound
            self._register(worker_ids[:bound], reservation.borrowed)
            self._register(worker_ids[bound:], borrowed=False)  # more than reserved: still tracked
            return reservation.count - bound

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            self._reserved -= reservation.count
            if reservation.borrowed:
                self._borrowed -= reservation.count
                self._owed += reservation.count
