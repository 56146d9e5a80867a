"""The quota invariant under concurrency, on two WorkerPools wired to each other in-process.

Threads play each node's scaler (reserve, launch, bind, release, borrow, renew, repay), its
workers (seen, going down) and the link between the nodes (cut and healed at random), on the
real clock with a short LOAN_TTL so that loans lapse and expire while everything else goes on.
A checker freezes both pools (both locks) again and again and asserts:

- live + pending + reserved workers of both nodes <= the sum of their own maxima;
- on each node, taken <= max;
- every loan a node holds is one the other still counts as lent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter

from nodeapp.fleet.pool import WorkerPool

TTL = 0.15  # the borrower keeps a loan 0.1 s after an answered renewal
RUN_SECONDS = 4.0
#: A machine short of CPU gets through fewer operations in RUN_SECONDS: the run goes on until it
#: has exercised what it is about (``exercised``), up to this long.
MOST_SECONDS = 60.0
BASE = {"a": 3, "b": 2}


class Link:
    """The network between the two pools: up or cut."""

    def __init__(self) -> None:
        self.up = True


class Side:
    """One node: its pool, the other's pool, and what its threads did."""

    def __init__(self, name: str, link: Link, done: threading.Event, ops: Counter) -> None:
        self.name = name
        self.pool = WorkerPool(max_workers=BASE[name], loan_ttl=TTL, recovering=True)
        self.other: Side | None = None
        self.link, self.done, self.ops = link, done, ops
        self.rng = random.Random(hash(name))
        self._ids = iter(range(10**9))

    def new_ids(self, count: int) -> list[str]:
        return [f"{self.name}-{next(self._ids)}" for _ in range(count)]

    def count(self, op: str) -> None:
        self.ops[op] += 1  # Counter updates race a little; the figures are for the report only

    # ----------------------------------------------------------- scaler
    def launch(self) -> None:
        with self.pool.reserve(self.rng.randint(1, 3)) as slots:
            self.count("reserve")
            if self.rng.random() < 0.8:  # else the launch "failed"
                launched = self.new_ids(max(0, slots.count + self.rng.choice((-1, 0, 0, 0, 0, 0, 0, 1))))
                slots.bind(launched)  # one more than reserved now and then: kept only if it fits
                self.count("bind")
        self.count("release")

    def borrow(self) -> None:
        if not self.link.up:
            return
        asked_at = time.monotonic()
        grant = self.other.pool.lend()
        self.count("lend" if grant else "lend refused")
        if grant is None:
            return
        if not self.link.up:
            return  # the answer was lost: the lender's loan expires unused
        with self.pool.reserve_loan(grant, asked_at) as slot:
            if self.rng.random() < 0.9:
                slot.bind(self.new_ids(1))
                self.count("bind")

    def renew(self) -> None:
        loans = self.pool.held_loans()
        if not self.link.up:
            return
        sent_at = time.monotonic()
        renewal = self.other.pool.renewal(loans)
        self.count("renew")
        if self.link.up:  # else the answer was lost
            self.pool.renewed(loans, renewal, sent_at)

    def repay(self) -> None:
        with self.pool.repaying() as debt:
            while debt.remaining and self.link.up:
                self.other.pool.loan_returned(debt.loans[0])
                debt.repaid()
                self.count("return")
        with self.pool.terminating():
            pass

    def run_scaler(self) -> None:
        steps = (self.launch, self.borrow, self.borrow, self.borrow, self.renew, self.renew, self.repay)
        while not self.done.is_set():
            self.rng.choice(steps)()

    # ---------------------------------------------------------- workers
    def run_workers(self) -> None:
        rng = random.Random(hash(self.name) + 1)
        while not self.done.is_set():
            workers = self.pool.workers()
            if not workers:
                time.sleep(0.0005)
                continue
            time.sleep(rng.uniform(0, 0.006))  # a worker lives a few ms to a few hundred
            worker = rng.choice(workers)
            if rng.random() < 0.7:
                self.pool.seen(worker.id)
                self.count("seen")
            else:
                self.pool.remove(worker.id)
                self.count("remove")


def cut_and_heal(link: Link, done: threading.Event, ops: Counter) -> None:
    rng = random.Random(7)
    while not done.is_set():
        time.sleep(rng.uniform(0.05, 0.3) if link.up else rng.uniform(0.1, 0.5))  # cuts often outlast TTL
        link.up = not link.up
        ops["cut" if not link.up else "heal"] += 1


def check(a: Side, b: Side) -> None:
    """Both pools frozen at one moment (their locks, in a fixed order), loans settled."""
    with a.pool._lock, b.pool._lock:
        for side in (a, b):
            side.pool._settle()
        taken = {s.name: s.pool._taken() for s in (a, b)}
        assert sum(taken.values()) <= sum(BASE.values()), taken
        for side in (a, b):
            assert side.pool._taken() <= side.pool._max(), (side.name, taken)
        assert set(a.pool._loans.held) <= set(b.pool._loans.lent)
        assert set(b.pool._loans.held) <= set(a.pool._loans.lent)


def exercised(ops: Counter, log: str) -> bool:
    """Loans granted, renewed, returned and lost (at the borrower and at the lender)."""
    return (ops["lend"] > 10 and ops["renew"] > 100 and ops["return"] > 3 and ops["cut"] > 2
            and "lost (not renewed in time)" in log and "to the peer expired" in log)


def test_no_slot_is_ever_used_twice_under_concurrency(caplog):
    caplog.set_level(logging.WARNING, logger="nodeapp")
    link, done, ops = Link(), threading.Event(), Counter()
    a, b = Side("a", link, done, ops), Side("b", link, done, ops)
    a.other, b.other = b, a
    threads = [threading.Thread(target=f, daemon=True) for f in
               (a.run_scaler, b.run_scaler, a.run_workers, b.run_workers, lambda: cut_and_heal(link, done, ops))]
    failures: list[BaseException] = []
    for thread in threads:
        thread.start()
    checks = 0
    started = time.monotonic()
    try:
        while time.monotonic() < started + MOST_SECONDS:
            check(a, b)
            checks += 1
            if checks % 500 == 0 and time.monotonic() > started + RUN_SECONDS and exercised(ops, caplog.text):
                break
    except AssertionError as exc:
        failures.append(exc)
    finally:
        done.set()
        for thread in threads:
            thread.join(10)
    assert not failures, failures[0]
    lapsed, expired = caplog.text.count("lost (not renewed in time)"), caplog.text.count("to the peer expired")
    print(f"\n{checks} invariant checks in {time.monotonic() - started:.1f}s; operations: {dict(ops)}; "
          f"loans lapsed at the borrower: {lapsed}, expired at the lender: {expired}")
    assert checks > 1000
    # The run must have exercised what it is about: loans granted, renewed, returned and lost.
    assert exercised(ops, caplog.text), (dict(ops), lapsed, expired)
