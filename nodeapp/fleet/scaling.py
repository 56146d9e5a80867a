"""When to launch workers (a pure decision) and the scaler job that acts on it."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from nodeapp.fleet.backoff import BootBackoff
from nodeapp.fleet.loans import KEEP
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.pool import LIVE, PENDING, Reservation, WorkerPool
from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.tasks import TaskStore
from provisioning.launchers import Launcher
from tmcommon.settings import default

log = logging.getLogger(__name__)

#: The scaler sizes the fleet to drain the backlog in about this many seconds (or SCALE_WAIT if longer).
MIN_DRAIN_SECONDS = 1.0


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


class ScaledNode(Protocol):
    """What the scaler needs of the node (``nodeapp.node.Node``): its store, its pool, the
    figures it decides from, and forgetting a worker with its tasks."""

    tasks: TaskStore
    workers: WorkerPool

    def scaling_figures(self) -> ScalingFigures: ...

    def worker_down(self, worker_id: str, returned: Iterable[str] = (), *, terminate: bool = True,
                    checkpoints: Mapping[str, Checkpoint] | None = None) -> Any: ...


@dataclass(frozen=True)
class Decision:
    """How many workers to launch on our own quota, and how many more slots to borrow."""

    launch: int
    borrow: int
    needed: int
    reason: str
    held_back: int = 0  # workers needed that the launcher has no room for (the node is at capacity)


def decide(f: ScalingFigures, *, scale_wait: float, hash_rate: float) -> Decision:
    """Decide from a snapshot of the figures; no side effects.

    Work waits "too long" when the oldest task has waited more than ``scale_wait`` seconds or
    the queued iterations exceed what the live workers do in ``scale_wait``. Then the backlog
    *needs* enough workers to drain it in about ``max(scale_wait, 1 s)``, never more than one
    per queued task. Pending workers count as already on their way, and launches never go above
    ``max_workers``; what is still needed beyond it is asked of the peer as borrowed slots. Both
    stop at the launcher's ``room``: a slot it could not launch on is neither used nor borrowed,
    and the reason then names the node's capacity and why.
    """
    if f.queued == 0:
        return Decision(0, 0, 0, "no backlog")
    backlog_seconds = f.queued_iterations / hash_rate
    too_old = f.oldest_wait > scale_wait
    too_big = backlog_seconds > f.live * max(scale_wait, MIN_DRAIN_SECONDS)
    needed = min(f.queued, max(1, math.ceil(backlog_seconds / max(scale_wait, MIN_DRAIN_SECONDS))))
    if not (too_old or too_big):
        return Decision(0, 0, needed, "live workers keep up")
    wanted = max(0, needed - f.pending)
    if wanted == 0:
        return Decision(0, 0, needed, f"{f.pending} pending workers cover the backlog")
    room = wanted if f.room is None else max(0, f.room)
    free = max(0, f.max_workers - f.live - f.pending)
    launch = min(wanted, free, room)
    borrow = min(wanted - launch, room - launch) if launch == free else 0
    why = f"oldest task waited {f.oldest_wait:.1f}s" if too_old else f"backlog {backlog_seconds:.1f}s of work"
    if borrow:
        why += f", at max {f.max_workers}"
    held_back = wanted - launch - borrow if room < wanted else 0  # the launcher, not the quota, holds them
    if held_back:
        why += f", at capacity {f.capacity if f.capacity is not None else f.live + f.pending + room}"
        why += f" ({f.capacity_why})" if f.capacity_why else ""
    return Decision(launch, borrow, needed, why, held_back)


class Scaler:
    """One scaler run (``tick``): terminate departed workers, requeue expired leases, reconcile,
    launch on our own quota; then the peer's part: ping it, renew loans (and terminate the workers
    of lost ones), give back quota, borrow (none of these with a peer that did not answer its last
    call: the ping step finds out when it is back). The own part never waits on the peer.

    Runs in the APScheduler thread; every figure it reads or changes goes through the ``Node``.
    While a launch is in flight a helper thread renews the loans held (``_loans_kept``).
    Each step is guarded on its own: one that fails is logged and the later steps still run;
    what it took and did not finish (departed ids, owed quota) is put back for the next run.
    """

    def __init__(
        self,
        node: ScaledNode,
        launcher: Launcher,
        peer: PeerClient,
        *,
        node_url: str,
        worker_peer_url: str = "",
        scale_wait: float,
        hash_rate: float,
        boot_timeout: float,
        silence_seconds: float = 0.0,
        max_lifetime: float = 0.0,
        history: int = 50,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        summary_seconds: float = default("summary_seconds"),
    ) -> None:
        self.node = node
        self.launcher = launcher
        self.peer = peer
        self.node_url = node_url
        self.worker_peer_url = worker_peer_url  # the peer as workers reach it, if not peer.url
        self.scale_wait = scale_wait
        self.hash_rate = hash_rate
        self.boot_timeout = boot_timeout
        self.silence_seconds = silence_seconds  # 0: a live worker is never taken for hung
        self.max_lifetime = max_lifetime  # 0: workers live as long as they have work
        self._monotonic = monotonic
        self._wall = wall  # the times in decisions(), shown on the dashboard
        self.summary_seconds = summary_seconds
        self._summary_at = monotonic()
        self._summary_counts = (0, 0)
        self._history: deque[dict] = deque(maxlen=history)
        self._history_lock = threading.Lock()
        self._tick_lock = threading.Lock()
        self._launch_notes: list[str] = []  # what the launcher noted this run (e.g. spot refused)
        self._decision: tuple[ScalingFigures, Decision, int] | None = None  # this run's, for _borrow
        self.boot_backoff = BootBackoff(monotonic)  # boots that fail hold launches back (nodeapp/fleet/backoff.py)
        self._live: set[str] = set()  # live workers at the last run: a new one made its first claim

    def capacity(self, max_workers: int) -> tuple[int, str]:
        """The workers this node can run at once, and why: its quota ``max_workers``, or the
        launcher's limit where that is lower (local mode: TM_LOCAL_MAX_WORKERS, the CPUs)."""
        limit = self.launcher.limit()
        if limit is not None and limit.workers < max_workers:
            return limit.workers, limit.why
        return max_workers, "MAX_NUM_OF_WORKERS, less slots lent, plus slots borrowed"

    def figures(self) -> ScalingFigures:
        """The node's figures with the launcher's room and the node's capacity."""
        figures = self.node.scaling_figures()
        capacity, why = self.capacity(figures.max_workers)
        return replace(figures, room=self.launcher.room(), capacity=capacity, capacity_why=why)

    def decisions(self) -> list[dict]:
        """The last decisions that changed something, newest first."""
        with self._history_lock:
            return list(reversed(self._history))

    def tick(self) -> None:
        """One scaler run. Never raises: one failure must not stop scaling."""
        if not self._tick_lock.acquire(blocking=False):
            return  # a previous run is still going
        try:
            self._tick()
        except Exception:
            log.exception("scaler run failed")
        finally:
            self._tick_lock.release()

    def _tick(self) -> None:
        # The node's own work first: a peer that hangs (each call waits out PEER_TIMEOUT_SECONDS) must not
        # hold up launching on our own quota. Then the peer: one ping while it is not known to
        # answer, and the other calls only once it does, so a hung peer costs one timeout a run.
        self._decision = None
        for what, step in (
            ("terminate departed workers", self._terminate_departed),
            ("requeue expired leases", self._requeue_expired),
            ("reconcile workers", self._reconcile),
            ("launch", self._launch_own),
            ("ping peer", self._ping_peer),
            ("renew loans", self._when_peer_answers(self._renew_loans)),  # and the terminate step right
            ("terminate workers of lost loans", self._terminate_departed),  # after it: those workers stop now
            ("give back quota", self._when_peer_answers(self._give_back_quota)),
            ("borrow", self._borrow),
            ("summary", self._summarize),
        ):
            try:
                step()
            except Exception:
                log.exception("scaler step failed: %s", what)

    def _when_peer_answers(self, step: Callable[[], None]) -> Callable[[], None]:
        """``step``, skipped while the peer is known not to answer (the ping step finds out when it is back)."""
        def guarded() -> None:
            if self.peer.info()["reachable"] is not False:
                step()
        return guarded

    def _requeue_expired(self) -> None:
        requeued, failed = self.node.tasks.requeue_expired()
        if requeued or failed:
            log.warning("leases expired: %d tasks requeued, %d failed", requeued, failed)

    def _ping_peer(self) -> None:
        if self.peer.url and self.peer.info()["reachable"] is not True:
            self.peer.ping()

    def _launch_own(self) -> None:
        """Decide, and launch on our own quota; what is needed beyond it is left to ``_borrow``."""
        figures = self.figures()
        decision = decide(figures, scale_wait=self.scale_wait, hash_rate=self.node.workers.worker_rate(self.hash_rate))
        held = self.boot_backoff.held_for()
        held = held if decision.launch or decision.borrow else 0.0
        if held:
            backoff = self.boot_backoff
            decision = replace(decision, launch=0, borrow=0, reason=(
                f"{decision.reason}; launches held {held:.0f}s more after {backoff.failures} boot failure(s) in a "
                f"row (doubling up to {backoff.ceiling:g}s; a worker's first claim ends it)"))
        with self.node.workers.reserve(decision.launch) as slots:  # what is free by now
            launched = self._launch(slots)
        self._decision = (figures, decision, launched)
        if (decision.launch or decision.held_back or held) and not decision.borrow:  # held: said once, then counted
            self._record(figures, decision, launched, 0)

    def _borrow(self) -> None:
        """Ask the peer for the slots this run's decision needs beyond our quota, and launch on them."""
        if self._decision is None or not self._decision[1].borrow:
            return
        figures, decision, launched = self._decision
        borrowed = 0
        wanted = decision.borrow if self.peer.info()["reachable"] is not False else 0
        room = self.launcher.room()
        if room is not None and room < wanted:  # a slot we could not launch on would only be owed back
            log.debug("borrowing %d of %d slot(s): the launcher has room for %d", max(0, room), wanted, room)
            wanted = max(0, room)
        try:
            for _ in range(wanted):
                asked_at = self._monotonic()
                grant = self.peer.try_get_quota()
                if grant is None:
                    break
                log.info("quota borrowed from peer %s: loan %s", self.peer.url, grant.loan)
                with self.node.workers.reserve_loan(grant, asked_at) as slot:  # unused, it is owed back
                    borrowed += self._launch(slot)
        finally:
            self._record(figures, decision, launched, borrowed)

    def _summarize(self) -> None:
        """Every ``summary_seconds``, one line: tasks accepted and completed since the last one."""
        now = self._monotonic()
        if not self.summary_seconds or now - self._summary_at < self.summary_seconds:
            return
        figures = self.node.scaling_figures()
        tasks = self.node.tasks.counts()
        counts = (tasks.enqueued, tasks.completed)
        log.info("summary: %d accepted, %d completed in %.0fs; queued %d, running %d, workers %d live + %d pending / max %d",
                 counts[0] - self._summary_counts[0], counts[1] - self._summary_counts[1], now - self._summary_at,
                 figures.queued, figures.running, figures.live, figures.pending, figures.max_workers)
        self._summary_at, self._summary_counts = now, counts

    def _launch(self, slots: Reservation) -> int:
        """Launch workers on the reserved ``slots`` and bind them; returns how many."""
        count, borrowed = slots.count, slots.borrowed
        if count <= 0:
            return 0
        peer_url = self.worker_peer_url or self.peer.url
        urls = [self.node_url] + ([peer_url] if peer_url else [])
        try:
            with self._loans_kept():  # a slow launch (EC2) must not outlast a borrowed slot
                ids = self.launcher.launch(count, urls)
        except Exception:
            log.exception("launching %d worker(s) failed", count)
            return 0
        slots.bind(ids)
        if getattr(ids, "note", ""):
            self._launch_notes.append(ids.note)
        for worker_id in ids:
            log.info("worker launched: %s%s", worker_id, " (borrowed slot)" if borrowed else "")
        return len(ids)

    @contextmanager
    def _loans_kept(self) -> Iterator[None]:
        """While the block runs (a launch), renew the loans held from the peer every third of the
        time a renewal keeps them, in a thread: a borrowed slot is held for the whole launch,
        however slow, and the loans of running workers do not lapse behind it either."""
        if not (self.peer.url and self.node.workers.held_loans()):
            yield
            return
        done = threading.Event()
        interval = KEEP * self.node.workers.loan_ttl / 3

        def renew() -> None:
            while not done.wait(interval):
                try:
                    self._renew_loans()
                except Exception:
                    log.exception("renewing loans during a launch failed")

        renewer = threading.Thread(target=renew, name="renew-loans-while-launching", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()

    def _terminate_departed(self) -> None:
        """Stop the workers that went down; if the launcher fails, they are kept for the next run."""
        with self.node.workers.terminating() as departed:
            if departed:
                self.launcher.terminate(departed)

    def _reconcile(self) -> None:
        """Adopt running workers the registry does not know (when the launcher can list them, as
        EC2 can by tag); forget workers the launcher no longer has; terminate those that never
        showed up, went silent, or outlived the maximum lifetime."""
        alive = self.launcher.running()
        self._first_claims()
        if alive is not None and getattr(self.launcher, "adopts_workers", False):
            known = {worker.id for worker in self.node.workers.workers()}
            for worker_id in self.node.workers.adopt(sorted(alive - known)):
                log.warning("worker adopted: %s runs for this node but was not known (a restart of the node, or "
                            "a lost launch answer); it counts against the quota", worker_id)
        workers = self.node.workers
        stop = {worker_id: f"not seen within BOOT_TIMEOUT={self.boot_timeout:g}s"
                for worker_id in workers.overdue(self.boot_timeout)}
        if self.silence_seconds:
            stop.update({worker_id: f"silent for over {self.silence_seconds:g}s (hung?)"
                         for worker_id in workers.silent(self.silence_seconds)})
        if self.max_lifetime:
            stop.update({worker_id: f"older than WORKER_MAX_LIFETIME={self.max_lifetime:g}s"
                         for worker_id in workers.older_than(self.max_lifetime)})
        failed_boots = []
        for worker in workers.workers():
            terminate = False
            if alive is not None and worker.id not in alive:
                why = "exited without worker_down"
            elif worker.id in stop:
                why = stop[worker.id]
                try:
                    self.launcher.terminate([worker.id])
                except Exception:
                    log.exception("terminating %s failed; will retry", worker.id)
                    terminate = True  # the next run's terminate step tries again
            else:
                continue
            gone = self.node.worker_down(worker.id, terminate=terminate)
            log.warning("worker lost: %s %s; %d task(s) requeued", worker.id, why, gone.requeued)
            if worker.state == PENDING:  # never claimed: its boot failed
                failed_boots.append(worker.id)
        if failed_boots:
            hold = self.boot_backoff.failed(failed_boots, "never made a first claim")
            log.warning("%d worker(s) failed to boot (%d in a row): launches held for %.0fs",
                        len(failed_boots), self.boot_backoff.failures, hold)

    def _first_claims(self) -> None:
        """A worker that is live now and was not at the last run made its first claim (or its first
        since a restart): boots work, and a hold on launches ends."""
        live = {worker.id for worker in self.node.workers.workers() if worker.state == LIVE}
        if live - self._live and self.boot_backoff.claimed():
            log.info("a worker made its first claim: launches are no longer held back")
        self._live = live

    def _give_back_quota(self) -> None:
        """Return the loans we owe; what the peer does not take stays owed (until it expires)."""
        with self.node.workers.repaying() as debt:
            while debt.remaining:
                if not self.peer.return_quota(debt.loans[0]):
                    log.warning("could not return %d quota unit(s) to peer; will retry", debt.remaining)
                    return
                log.info("quota returned to peer %s: loan %s", self.peer.url, debt.loans[0])
                debt.repaid()

    def _renew_loans(self) -> None:
        """Renew the loans we hold from the peer; while recovering, learn what it holds from us.
        Loans the peer no longer has are let go; when it cannot be reached, they lapse in time."""
        workers = self.node.workers
        loans = workers.held_loans()
        if not self.peer.url or not (loans or workers.recovering):
            return
        sent_at = self._monotonic()
        renewal = self.peer.renew_quota(loans)
        if renewal is not None:
            lost = workers.renewed(loans, renewal, sent_at)
            if lost:
                log.warning("quota: peer %s no longer has %d of our %d loan(s)", self.peer.url, lost, len(loans))

    def _record(self, figures: ScalingFigures, decision: Decision, launched: int, borrowed: int) -> None:
        """Keep the decision in the bounded history. Runs that launch nothing in a row (say, at max
        and the peer has no free slot) share one entry with a ``repeats`` count."""
        notes, self._launch_notes = self._launch_notes, []
        with self._history_lock:
            last = self._history[-1] if self._history else None
            if not launched and not borrowed and last is not None and not last["launched"] and not last["borrowed"]:
                last.update(reason=decision.reason, figures=asdict(figures), last_at=self._wall())
                last["repeats"] += 1
                return
            self._history.append({"at": self._wall(), **asdict(decision), "launched": launched,
                                  "borrowed": borrowed, "figures": asdict(figures), "repeats": 0,
                                  "notes": notes})
        log.info("scale: %s -> launched %d, borrowed %d (queued %d, live %d, pending %d, max %d, capacity %s)%s",
                 decision.reason, launched, borrowed, figures.queued, figures.live, figures.pending,
                 figures.max_workers, figures.capacity, "".join(f"; {note}" for note in notes))
