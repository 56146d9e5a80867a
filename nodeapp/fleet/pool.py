"""The workers this node launched and its worker quota, behind the pool's own lock.

The quota: ``max = base_max - lent + borrowed``. A slot is *taken* by a registered worker
(pending or live) or by a reservation that a launch will fill; taken never exceeds max, except
by workers a launcher started beyond what was asked. Slots lent to the peer lower our max until
the peer gives them back or stops renewing them; slots borrowed from the peer raise it until the
worker on them goes down, and are then *owed* back until the scaler returns them. A borrowed
slot whose loan is lost (not renewed in time, or the lender no longer has it) moves its worker
to our own quota if there is room, else that worker is stopped (``nodeapp/fleet/loans.py``).

Boot deadlines are on a monotonic clock. Nothing here does I/O: what needs a call to the peer or
the launcher is handed out (``terminating``, ``repaying``) and put back if the call fails.
"""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from nodeapp.fleet.loans import Grant, LoanBook, Renewal
from tmcommon.settings import default

log = logging.getLogger(__name__)

PENDING, LIVE = "pending", "live"
#: Bounds of what a worker may report in a claim (``Report``).
MAX_REPORTED_RATE = 1e12
MAX_LANES = 4096
_ENGINE = re.compile(r"[a-z0-9_.-]{1,32}")
_CPU = re.compile(r"[ -~]{1,80}")


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker says of itself when it claims: iterations/s of all its lanes, engine, lanes,
    CPU model, whether it runs on a spot instance, and the engine's kernel ("" for none)."""

    rate: float
    engine: str
    lanes: int
    cpu: str = "unknown"
    spot: bool = False
    kernel: str = ""

    @classmethod
    def from_claim(cls, body: dict) -> Report | None:
        """The optional ``rate`` (with ``engine``, ``kernel``, ``lanes``, ``cpu``, ``spot``) of a
        claim's body; None without ``rate``.

        Raises:
            ValueError: with a message for the caller, if one of them is malformed.
        """
        if "rate" not in body:
            return None
        rate, engine, lanes = body["rate"], body.get("engine", "unknown"), body.get("lanes", 1)
        cpu, spot, kernel = body.get("cpu", "unknown"), body.get("spot", False), body.get("kernel")
        if type(rate) not in (int, float) or not 0 < rate <= MAX_REPORTED_RATE:
            raise ValueError(f"'rate' must be a number of iterations/s above 0 and at most {MAX_REPORTED_RATE:g}")
        if not isinstance(engine, str) or not _ENGINE.fullmatch(engine):
            raise ValueError("'engine' must be 1 to 32 characters of a-z, 0-9, '_', '.', '-'")
        if kernel is not None and not (isinstance(kernel, str) and _ENGINE.fullmatch(kernel)):
            raise ValueError("'kernel' must be 1 to 32 characters of a-z, 0-9, '_', '.', '-'")
        if type(lanes) is not int or not 1 <= lanes <= MAX_LANES:
            raise ValueError(f"'lanes' must be an integer from 1 to {MAX_LANES}")
        if not isinstance(cpu, str) or not _CPU.fullmatch(cpu):
            raise ValueError("'cpu' must be 1 to 80 printable ASCII characters")
        if not isinstance(spot, bool):
            raise ValueError("'spot' must be true or false")
        return cls(float(rate), engine, lanes, cpu, spot, kernel or "")


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker as the registry holds it at one moment."""

    id: str
    state: str
    borrowed: bool
    launched_at: float  # monotonic
    last_seen: float | None = None  # monotonic
    report: Report | None = None


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
    recovering: bool = False


class Reservation:
    """Slots held for a launch in flight (``WorkerPool.reserve``): ``count`` may be fewer than
    asked (0 when nothing is free). ``bind`` the launched ids; leaving the ``with`` block (or
    ``release``) frees what was not bound."""

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
    """Loans to give back to the peer, first one first; ``repaid`` once per loan returned."""

    loans: list[str]

    @property
    def remaining(self) -> int:
        return len(self.loans)

    def repaid(self) -> None:
        self.loans.pop(0)


class WorkerPool:
    """Registry of launched workers and the quota. Thread-safe: each public method holds the lock.

    Why registry and quota are one class: the invariant the quota tests check (live + pending +
    reserved workers never above base max - lent + borrowed, and a borrowed slot returned when its
    worker goes) spans both, and is kept by taking one lock. The loan bookkeeping itself is its
    own object (``loans.LoanBook``); the verbs here are the registry's (add, seen, remove,
    adopt, overdue, silent, ...) and the quota's (reserve, lend, renewal, renewed, repaying, ...).

    Args:
        max_workers: this node's own worker quota (MAX_NUM_OF_WORKERS).
        monotonic: the clock of launch times, boot deadlines and loans.
        loan_ttl: seconds a loan to the peer lasts without a renewal (LOAN_TTL_SECONDS).
        recovering: start recovering (``nodeapp/fleet/loans.py``): the node has a peer.
    """

    def __init__(self, *, max_workers: int = default("max_workers"),
                 monotonic: Callable[[], float] = time.monotonic, rates_kept: int = 32,
                 loan_ttl: float = default("loan_ttl"), recovering: bool = False) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._workers: dict[str, Worker] = {}
        self._rates: OrderedDict[str, Report] = OrderedDict()  # newest report of each recent worker
        self._rates_kept = rates_kept
        self._base_max = max_workers
        self._loans = LoanBook(loan_ttl, monotonic(), recovering)
        self._open: set[Reservation] = set()
        self._departed: list[str] = []  # workers gone down, for the launcher to terminate
        self._launched_total = 0
        self._down_total = 0

    # -------------------------------------------------------------- registry
    def add(self, worker_ids: Iterable[str]) -> None:
        """Register workers launched on our own quota, pending until first seen."""
        with self._lock:
            self._register(worker_ids, borrowed=False)

    def seen(self, worker_id: str, report: Report | None = None) -> None:
        """The worker called us (claim, complete, heartbeat): a registered one is live. A
        ``report`` (from a claim, also by the peer's workers) is kept for ``worker_rate``."""
        with self._lock:
            if report is not None:
                self._rates[worker_id] = report
                self._rates.move_to_end(worker_id)
                while len(self._rates) > self._rates_kept:
                    self._rates.popitem(last=False)
            worker = self._workers.get(worker_id)
            if worker is None:
                return
            now = self._monotonic()
            if worker.state == PENDING:
                log.info("worker seen: %s, %.1fs after launch%s", worker_id, now - worker.launched_at,
                         f", {' '.join(filter(None, (report.engine, report.kernel)))} engine, {report.lanes} lane(s), "
                         f"{report.rate:.0f} iterations/s" if report else "")
            self._workers[worker_id] = replace(worker, state=LIVE, last_seen=now, report=report or worker.report)

    def worker_rate(self, default: float) -> float:
        """Iterations/s of one worker, for the scaler: the median of the rates the most recent
        workers reported, or ``default`` (HASH_RATE) before any has."""
        with self._lock:
            return statistics.median(r.rate for r in self._rates.values()) if self._rates else default

    def report_of(self, worker_id: str) -> Report | None:
        """What a recent worker (ours or the peer's) said of itself in its last claim."""
        with self._lock:
            return self._rates.get(worker_id)

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
                    self._loans.owe()
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

    def silent(self, seconds: float) -> list[str]:
        """Live workers that have not called this node for more than ``seconds`` (hung, wedged)."""
        with self._lock:
            now = self._monotonic()
            return [w.id for w in self._workers.values()
                    if w.state == LIVE and w.last_seen is not None and now - w.last_seen > seconds]

    def older_than(self, seconds: float) -> list[str]:
        """Workers launched (or adopted) more than ``seconds`` ago."""
        with self._lock:
            now = self._monotonic()
            return [w.id for w in self._workers.values() if now - w.launched_at > seconds]

    def adopt(self, worker_ids: Iterable[str]) -> list[str]:
        """Workers the launcher says run for this node but the registry does not know (launched
        before this node restarted, or whose launch answer was lost): registered on our own quota,
        pending until they call, while there is room; the others are handed out to be stopped
        (``terminating``). Returns the adopted ones."""
        adopted = []
        with self._lock:
            now = self._monotonic()
            for worker_id in worker_ids:
                if worker_id in self._workers or worker_id in self._departed:
                    continue
                if self._taken() < self._max():
                    self._workers[worker_id] = Worker(worker_id, PENDING, False, now)
                    adopted.append(worker_id)
                else:
                    self._departed.append(worker_id)
                    log.warning("worker %s runs for this node beyond its quota; it is stopped", worker_id)
        return adopted

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
    @property
    def loan_ttl(self) -> float:
        return self._loans.ttl

    def reserve(self, count: int = 1) -> Reservation:
        """Hold up to ``count`` free slots of our quota for a launch (none while recovering).
        Use as a context manager; see ``Reservation``."""
        with self._lock:
            now = self._settle()
            free = 0 if self._loans.recovering(now) else self._max() - self._taken()
            return self._open_reservation(max(0, min(count, free)), borrowed=False)

    def reserve_loan(self, grant: Grant, asked_at: float) -> Reservation:
        """The peer granted a slot (asked at monotonic ``asked_at``): our max rises by one and the
        slot is held for its launch. Use as a context manager; see ``Reservation``."""
        with self._lock:
            self._loans.take(grant, asked_at)
            return self._open_reservation(1, borrowed=True)

    def lend(self) -> Grant | None:
        """The peer asks for a slot: lend it if one is free (taken < max) and we are not recovering."""
        with self._lock:
            now = self._settle()
            if self._loans.recovering(now) or self._taken() >= self._max():
                return None
            return self._loans.lend(now)

    def renewal(self, loans: Iterable[str]) -> Renewal:
        """The peer renews the ``loans`` it holds from us: those still lent, and what we hold from it."""
        with self._lock:
            now = self._settle()
            held = self._loans.peer_holds(loans, now, room=self._max() - self._taken())
            return Renewal(held, self._loans.ttl, list(self._loans.held))

    def held_loans(self) -> list[str]:
        """The loans we hold from the peer, to renew."""
        with self._lock:
            self._settle()
            return list(self._loans.held)

    @property
    def recovering(self) -> bool:
        with self._lock:
            return self._loans.recovering(self._monotonic())

    def renewed(self, asked: list[str], renewal: Renewal, sent_at: float) -> int:
        """The peer answered our renewal of ``asked``, sent at monotonic ``sent_at``. Loans it no
        longer holds are let go; its ``borrowed`` list renews (or, recovering, adopts) our loans to
        it. Returns how many loans were lost."""
        with self._lock:
            now = self._settle()
            lost = self._loans.renewed(asked, renewal, sent_at)
            for loan in lost:
                self._let_go(loan, "the peer no longer has it")
            self._loans.peer_holds(renewal.borrowed, now, room=self._max() - self._taken())
            return len(lost)

    def loan_returned(self, loan: str | None = None) -> int:
        """A lent slot comes back (``loan`` by id, or the one nearest its end); returns the new
        max. Ignored if unknown."""
        with self._lock:
            self._settle()
            self._loans.returned(loan)
            return self._max()

    @contextmanager
    def repaying(self) -> Iterator[Debt]:
        """The loans owed to the peer, to return in the block; whatever is not ``repaid`` by its
        end (or when it raises) stays owed."""
        with self._lock:
            self._settle()
            owed, self._loans.owed = self._loans.owed, {}
            debt = Debt(list(owed))
        try:
            yield debt
        finally:
            with self._lock:
                self._loans.owed.update((loan, owed[loan]) for loan in debt.loans)

    def set_base_max(self, max_workers: int) -> int:
        """Change our own quota; returns the new max."""
        with self._lock:
            self._base_max = max_workers
            return self._max()

    def counts(self) -> PoolCounts:
        with self._lock:
            self._settle()
            live = sum(1 for w in self._workers.values() if w.state == LIVE)
            return PoolCounts(
                live=live,
                pending=len(self._workers) - live,
                reserved=self._reserved(),
                max=self._max(),
                base_max=self._base_max,
                lent=len(self._loans.lent),
                borrowed=len(self._loans.held),
                owed=len(self._loans.owed),
                launched_total=self._launched_total,
                down_total=self._down_total,
                recovering=self._loans.recovering(self._monotonic()),
            )

    # --------------------------------------------------- private, lock held
    def _max(self) -> int:
        return self._base_max - len(self._loans.lent) + len(self._loans.held)

    def _reserved(self) -> int:
        return sum(r.count for r in self._open)

    def _taken(self) -> int:
        return len(self._workers) + self._reserved()

    def _settle(self) -> float:
        """Let go of the loans that lapsed and drop expired ones; returns now."""
        now = self._monotonic()
        for loan in self._loans.expire(now):
            self._let_go(loan, "not renewed in time")
        return now

    def _let_go(self, loan: str, why: str) -> None:
        """A held loan is gone: one borrowed slot's user moves to our own quota if there is room,
        else it is stopped (a worker is forgotten and terminated; a launch in flight loses a slot)."""
        users = [w for w in self._workers.values() if w.borrowed]
        users.sort(key=lambda w: w.state != PENDING)  # pending ones first: they do no work yet
        slots = [r for r in self._open if r.borrowed and r.count]
        if self._taken() <= self._max():
            if users:
                self._workers[users[0].id] = replace(users[0], borrowed=False)
            elif slots:
                slots[0].borrowed = False
            log.warning("quota: loan %s lost (%s); its worker stays, on our own quota", loan, why)
        elif users:
            del self._workers[users[0].id]
            self._departed.append(users[0].id)
            self._down_total += 1
            log.warning("quota: loan %s lost (%s); worker %s is stopped", loan, why, users[0].id)
        elif slots:
            slots[0].count -= 1
            log.warning("quota: loan %s lost (%s) while its worker was launching", loan, why)

    def _register(self, worker_ids: Iterable[str], borrowed: bool) -> None:
        now = self._monotonic()
        for worker_id in worker_ids:
            self._workers[worker_id] = Worker(worker_id, PENDING, borrowed, now)
            self._launched_total += 1

    def _open_reservation(self, count: int, borrowed: bool) -> Reservation:
        reservation = Reservation(self, count, borrowed)
        self._open.add(reservation)
        return reservation

    def _bind(self, reservation: Reservation, worker_ids: list[str]) -> int:
        with self._lock:
            bound = min(len(worker_ids), reservation.count)
            reservation.count -= bound
            self._register(worker_ids[:bound], reservation.borrowed)
            for worker_id in worker_ids[bound:]:  # more than reserved: kept only if there is room
                if self._taken() < self._max():
                    self._register([worker_id], borrowed=False)
                else:
                    self._launched_total += 1
                    self._down_total += 1
                    self._departed.append(worker_id)
                    log.warning("worker %s launched beyond the quota; it is stopped", worker_id)
            return reservation.count

    def _release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation.borrowed:
                for _ in range(reservation.count):
                    self._loans.owe()
            reservation.count = 0
            self._open.discard(reservation)
