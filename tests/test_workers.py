"""WorkerPool: the worker registry and the quota, driven directly with a fake monotonic clock."""

from __future__ import annotations

import pytest

from nodeapp.fleet.loans import Grant
from nodeapp.fleet.pool import LIVE, PENDING, WorkerPool
from tests.helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(50.0)


def quota(pool: WorkerPool) -> tuple[int, int, int, int]:
    c = pool.counts()
    return c.max, c.lent, c.borrowed, c.base_max


def borrow(pool: WorkerPool, clock: Clock):
    """A slot the peer granted, reserved for its launch."""
    borrow.loans += 1
    return pool.reserve_loan(Grant(f"{borrow.loans:x}", 60.0), clock.now)


borrow.loans = 0


def test_quota_lend_return_borrow_arithmetic(clock):
    pool = WorkerPool(max_workers=3, monotonic=clock)
    pool.add(["a"])  # pending
    pool.add(["b"])
    pool.seen("b")  # live
    assert (pool.counts().live, pool.counts().pending) == (1, 1)
    first = pool.lend()  # live + pending = 2 < 3: max 3 -> 2
    assert first and first.ttl == pool.loan_ttl
    assert quota(pool) == (2, 1, 0, 3)
    assert pool.lend() is None  # 2 < 2 is false: refused, nothing changes
    assert quota(pool) == (2, 1, 0, 3)
    assert pool.remove("a") is not None
    assert pool.lend()  # 1 < 2
    assert quota(pool) == (1, 2, 0, 3)
    assert pool.lend() is None  # 1 < 1 is false
    assert pool.loan_returned(first.loan) == 2
    assert pool.loan_returned(first.loan) == 2  # the same loan twice: counted once
    assert pool.loan_returned() == 3  # SPEC's bare return: the loan nearest its end
    assert pool.loan_returned() == 3  # nothing lent any more: a stray return changes nothing
    assert quota(pool) == (3, 0, 0, 3)
    borrowed = [borrow(pool, clock), borrow(pool, clock)]  # the peer granted two slots, launches in flight
    assert quota(pool) == (5, 0, 2, 3)  # max = base - lent + borrowed
    assert pool.lend()  # 1 worker + 2 reserved < 5: a node may lend while it borrows
    assert quota(pool) == (4, 1, 2, 3)
    borrowed[0].bind(["c"])
    borrowed[1].bind(["d"])
    assert pool.counts().reserved == 0 and pool.counts().pending == 2
    assert pool.set_base_max(6) == 7


def test_zero_quota_never_lends(clock):
    pool = WorkerPool(max_workers=0, monotonic=clock)
    assert pool.lend() is None
    assert quota(pool) == (0, 0, 0, 0)


def test_reserved_slots_are_taken_until_bound_or_released(clock):
    pool = WorkerPool(max_workers=2, monotonic=clock)
    with pool.reserve(2) as slots:
        assert pool.counts().reserved == 2
        assert pool.lend() is None  # both slots are held for the launch in flight
        with pool.reserve(1) as more:
            assert more.count == 0  # nothing is left to reserve either
        slots.bind(["w1"])  # the launcher started one of the two
        assert (pool.counts().reserved, pool.counts().pending) == (1, 1)
    assert pool.counts().reserved == 0  # the unused one is free again
    assert pool.lend()
    assert quota(pool) == (1, 1, 0, 2)


def test_an_unused_borrowed_slot_is_owed_back(clock):
    pool = WorkerPool(max_workers=1, monotonic=clock)
    with borrow(pool, clock):
        assert quota(pool) == (2, 0, 1, 1)  # the launch failed: nothing bound
    assert quota(pool) == (1, 0, 0, 1)
    assert pool.counts().owed == 1
    with pool.repaying() as debt:
        assert debt.remaining == 1
        debt.repaid()
    assert pool.counts().owed == 0


def test_a_borrowed_worker_going_down_owes_its_slot_once(clock):
    pool = WorkerPool(max_workers=1, monotonic=clock)
    pool.add(["own"])
    with borrow(pool, clock) as slot:
        slot.bind(["lent-to-us"])
    assert quota(pool) == (2, 0, 1, 1)
    assert pool.remove("lent-to-us").borrowed is True
    assert quota(pool) == (1, 0, 0, 1) and pool.counts().owed == 1
    assert pool.remove("lent-to-us") is None  # twice: owed once
    assert pool.remove("own").borrowed is False
    assert pool.counts().owed == 1


def test_what_is_not_repaid_stays_owed_also_when_the_block_fails(clock):
    pool = WorkerPool(max_workers=0, monotonic=clock)
    for worker in ("a", "b", "c"):
        with borrow(pool, clock) as slot:
            slot.bind([worker])
        pool.remove(worker)
    assert pool.counts().owed == 3
    with pool.repaying() as debt:
        debt.repaid()  # the peer took one, then stopped answering
    assert pool.counts().owed == 2
    with pytest.raises(RuntimeError), pool.repaying() as debt:
        debt.repaid()
        raise RuntimeError("peer call blew up")
    assert pool.counts().owed == 1
    with pool.repaying() as debt:
        assert debt.remaining == 1
    assert pool.counts().owed == 1  # nothing repaid: still owed


def test_departed_workers_are_handed_out_once_and_put_back_if_terminate_fails(clock):
    pool = WorkerPool(monotonic=clock)
    pool.add(["w1", "w2", "w3"])
    pool.remove("w1")
    pool.remove("w2", terminate=False)  # already gone: nothing to stop
    with pytest.raises(RuntimeError), pool.terminating() as departed:
        assert departed == ["w1"]
        raise RuntimeError("throttled")
    pool.remove("w3")
    with pool.terminating() as departed:
        assert departed == ["w1", "w3"]  # the failed one first, then the new one
    with pool.terminating() as departed:
        assert departed == []
    assert pool.counts().down_total == 3


def test_boot_deadline_and_liveness_on_the_monotonic_clock(clock):
    pool = WorkerPool(monotonic=clock)
    pool.add(["slow", "quick"])
    clock.now += 5
    pool.seen("quick")
    pool.seen("stranger")  # not ours: ignored
    assert {w.id: w.state for w in pool.workers()} == {"slow": PENDING, "quick": LIVE}
    assert pool.overdue(10) == []
    clock.now += 5.01
    assert pool.overdue(10) == ["slow"]  # a live worker is never overdue
    assert pool.counts().launched_total == 2
