"""Loans between nodes: they expire unless renewed, the borrower lets go first, a restarted node
recovers what it had lent. Pools and scalers on one fake clock; the peer hop is a direct call."""

from __future__ import annotations

import pytest

from tmcommon.settings import ConfigError

from nodeapp.fleet.loans import KEEP, Grant, Renewal
from nodeapp.node import Node
from nodeapp.fleet.scaling import Scaler
from nodeapp.fleet.pool import WorkerPool
from tests.conftest import TOKEN
from tests.helpers import Clock, FakeLauncher
from tests.test_api import assert_error, make_client
from tests.test_scaling import RATE, StatePeer

TTL = 6.0


@pytest.fixture
def clock() -> Clock:
    return Clock(100.0)


def pool(clock: Clock, max_workers: int, recovering: bool = False) -> WorkerPool:
    return WorkerPool(max_workers=max_workers, monotonic=clock, loan_ttl=TTL, recovering=recovering)


def borrow(borrower: WorkerPool, lender: WorkerPool, clock: Clock, worker_id: str) -> Grant:
    """The borrower gets a slot from the lender and launches ``worker_id`` on it."""
    grant = lender.lend()
    assert grant is not None
    with borrower.reserve_loan(grant, clock.now) as slot:
        slot.bind([worker_id])
    return grant


def renew(borrower: WorkerPool, lender: WorkerPool, clock: Clock) -> int:
    loans = borrower.held_loans()
    return borrower.renewed(loans, lender.renewal(loans), clock.now)


def figures(p: WorkerPool) -> tuple[int, int, int]:
    c = p.counts()
    return c.max, c.lent, c.borrowed


def taken(p: WorkerPool) -> int:
    c = p.counts()
    return c.live + c.pending + c.reserved


def test_a_loan_not_renewed_expires_at_the_lender_after_the_ttl(clock):
    lender = pool(clock, 3)
    grant = lender.lend()
    assert grant.ttl == TTL and figures(lender) == (2, 1, 0)
    clock.now += TTL - 0.01
    assert figures(lender) == (2, 1, 0)
    clock.now += 0.01
    assert figures(lender) == (3, 0, 0)
    assert lender.loan_returned(grant.loan) == 3  # a late return of an expired loan changes nothing


def test_renewals_keep_a_loan_and_the_borrower_lets_go_before_the_lender(clock):
    lender, borrower = pool(clock, 1), pool(clock, 0)
    borrow(borrower, lender, clock, "w1")
    for _ in range(5):  # renewed on each run: the loan lasts
        clock.now += TTL / 2
        assert renew(borrower, lender, clock) == 0
    assert figures(lender) == (0, 1, 0) and figures(borrower) == (1, 0, 1)
    renewed_at = clock.now
    # The link breaks: no renewal arrives any more. Check the two sides at small steps.
    while clock.now < renewed_at + TTL + 1:
        clock.now += 0.05
        assert taken(lender) + taken(borrower) <= 1
        assert borrower.counts().borrowed <= lender.counts().lent
    assert figures(lender) == (1, 0, 0) and figures(borrower) == (0, 0, 0)
    with borrower.terminating() as stopped:  # the borrower had no own room: its worker is stopped
        assert stopped == ["w1"]
    assert borrower.workers() == []


def test_the_borrower_lets_go_at_keep_times_the_ttl_after_its_last_answered_renewal(clock):
    lender, borrower = pool(clock, 1), pool(clock, 0)
    borrow(borrower, lender, clock, "w1")
    sent_at = clock.now
    clock.now += 1.0  # the renewal was slow: it counts from when it was sent
    loans = borrower.held_loans()
    borrower.renewed(loans, lender.renewal(loans), sent_at)
    clock.now = sent_at + KEEP * TTL - 0.01
    assert figures(borrower) == (1, 0, 1)
    clock.now = sent_at + KEEP * TTL
    assert figures(borrower) == (0, 0, 0) and figures(lender) == (0, 1, 0)  # the lender waits longer


def test_a_lost_loan_moves_its_worker_to_our_own_quota_when_there_is_room(clock):
    lender, borrower = pool(clock, 2), pool(clock, 1)
    borrower.add(["own"])
    borrow(borrower, lender, clock, "borrowed")
    borrower.remove("own", terminate=False)  # our own slot is free now
    clock.now += TTL
    assert figures(borrower) == (1, 0, 0)
    [worker] = borrower.workers()
    assert (worker.id, worker.borrowed) == ("borrowed", False)  # kept, on our own quota
    assert borrower.remove("borrowed").borrowed is False and borrower.counts().owed == 0


def test_a_loan_the_lender_no_longer_has_is_let_go_at_the_next_renewal(clock):
    lender, borrower = pool(clock, 2), pool(clock, 0)
    borrow(borrower, lender, clock, "a")
    borrow(borrower, lender, clock, "b")
    restarted = pool(clock, 2)  # the lender restarted long ago: it knows no loan
    assert renew(borrower, restarted, clock) == 2
    assert figures(borrower) == (0, 0, 0)
    with borrower.terminating() as stopped:
        assert sorted(stopped) == ["a", "b"]


def test_a_launch_in_flight_that_loses_its_loan_stops_the_worker_it_launched(clock):
    lender, borrower = pool(clock, 1), pool(clock, 0)
    with borrower.reserve_loan(lender.lend(), clock.now) as slot:
        clock.now += TTL  # the launch took longer than the loan lasts
        assert figures(borrower) == (0, 0, 0) and borrower.counts().reserved == 0
        slot.bind(["late"])
    assert borrower.workers() == []
    with borrower.terminating() as stopped:
        assert stopped == ["late"]


def test_returned_loans_are_named_and_owed_ones_that_expired_are_dropped(clock):
    lender, borrower = pool(clock, 2), pool(clock, 0)
    first = borrow(borrower, lender, clock, "a")
    borrow(borrower, lender, clock, "b")
    borrower.remove("a")
    borrower.remove("b")
    with borrower.repaying() as debt:
        assert len(debt.loans) == 2
        lender.loan_returned(debt.loans[0])
        debt.repaid()
    assert figures(lender)[1] == 1 and borrower.counts().owed == 1
    clock.now += TTL  # the other could not be returned in time: both sides drop it
    assert figures(lender) == (2, 0, 0) and borrower.counts().owed == 0
    assert first.loan not in lender.renewal([first.loan]).held


def test_a_recovering_node_neither_lends_nor_launches_until_it_hears_from_its_peer(clock):
    restarted = pool(clock, 3, recovering=True)
    assert restarted.lend() is None
    with restarted.reserve(2) as slots:
        assert slots.count == 0
    assert restarted.counts().recovering is True
    # The peer renews two loans of our previous run, and one that cannot fit any more.
    held = restarted.renewal(["a1", "b2"]).held
    assert held == ["a1", "b2"] and figures(restarted) == (1, 2, 0)
    assert restarted.counts().recovering is False
    assert restarted.renewal(["c3"]).held == []  # no longer recovering: unknown loans are not adopted
    with restarted.reserve(2) as slots:
        assert slots.count == 1


def test_recovery_adopts_only_what_fits_and_ends_without_news_when_the_peer_has_let_go(clock):
    restarted = pool(clock, 1, recovering=True)
    assert restarted.renewal(["a1", "b2"]).held == ["a1"]
    quiet = pool(clock, 1, recovering=True)
    clock.now += KEEP * TTL - 0.01
    assert quiet.counts().recovering is True and quiet.lend() is None
    clock.now += 0.01  # any loan of our earlier run has lapsed at the peer by now
    assert quiet.counts().recovering is False and quiet.lend() is not None


# --------------------------------------------------------------- two scalers
def scaler_for(node: Node, peer: StatePeer, clock: Clock, launcher: FakeLauncher) -> Scaler:
    return Scaler(node, launcher, peer, node_url="http://127.0.0.1:1", scale_wait=0.0, hash_rate=RATE,
                  boot_timeout=300, monotonic=clock, wall=clock)


def test_a_dead_borrowers_loans_come_back_and_a_restarted_one_converges(clock):
    """B (MAX 3) lends all 3 to A (MAX 0); A dies; B's max is 3 again within the TTL; A restarts."""
    a = Node.build(max_workers=0, monotonic=clock, wall=clock, loan_ttl=TTL, recovering=True)
    b = Node.build(max_workers=3, monotonic=clock, wall=clock, loan_ttl=TTL, recovering=True)
    launcher_a, launcher_b = FakeLauncher(), FakeLauncher()
    scaler_a = scaler_for(a, StatePeer(b), clock, launcher_a)
    scaler_b = scaler_for(b, StatePeer(a), clock, launcher_b)
    for _ in range(3):
        a.tasks.submit(b"x", 10 * RATE)
    scaler_b.tick()  # B hears from A (it renews nothing) and A, asked, says it holds nothing: both recovered
    scaler_a.tick()
    assert len(launcher_a.launched) == 3
    assert figures(b.workers) == (0, 3, 0) and figures(a.workers) == (3, 0, 3)
    for _ in range(10):  # A keeps renewing on each run
        clock.now += 1
        scaler_a.tick()
        scaler_b.tick()
    assert figures(b.workers) == (0, 3, 0)
    died_at = clock.now  # kill -9 of A: no more runs, no return_quota
    while figures(b.workers)[0] < 3:
        clock.now += 0.5
        scaler_b.tick()
        assert clock.now <= died_at + TTL
    a = Node.build(max_workers=0, monotonic=clock, wall=clock, loan_ttl=TTL, recovering=True)
    scaler_a = scaler_for(a, StatePeer(b), clock, launcher_a)
    scaler_b.peer = StatePeer(a)
    clock.now += 1
    scaler_a.tick()
    scaler_b.tick()
    assert figures(a.workers) == (0, 0, 0) and figures(b.workers) == (3, 0, 0)
    assert not a.workers.counts().recovering and not b.workers.counts().recovering


def test_a_restarted_lender_adopts_the_loans_still_in_use(clock):
    a = Node.build(max_workers=0, monotonic=clock, wall=clock, loan_ttl=TTL)
    b = Node.build(max_workers=3, monotonic=clock, wall=clock, loan_ttl=TTL)
    scaler_a = scaler_for(a, StatePeer(b), clock, FakeLauncher())
    for _ in range(2):
        a.tasks.submit(b"x", 10 * RATE)
    scaler_a.tick()
    assert figures(a.workers) == (2, 0, 2) and figures(b.workers) == (1, 2, 0)
    b = Node.build(max_workers=3, monotonic=clock, wall=clock, loan_ttl=TTL, recovering=True)  # restarted
    scaler_a.peer = StatePeer(b)
    clock.now += 1
    scaler_a.tick()
    assert figures(b.workers) == (1, 2, 0) and figures(a.workers) == (2, 0, 2)  # nothing was stopped
    assert not b.workers.counts().recovering


# ------------------------------------------------------------------------ HTTP
def test_renew_and_return_quota_endpoints():
    auth = {"X-Cluster-Token": TOKEN}
    client = make_client(max_workers=2)
    loan = client.get("/try_get_node_quota", headers=auth).get_json()["loan"]
    response = client.post("/renew_quota", json={"loans": [loan, "abc"]}, headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"held": [loan], "ttl": 6.0, "borrowed": []}
    assert Renewal.from_json(response.get_json()) == Renewal([loan], 6.0, [])
    stats = client.get("/stats").get_json()
    assert (stats["quota"]["lent"], stats["workers"]["max"], stats["quota"]["recovering"]) == (1, 1, False)
    assert client.post("/return_quota", json={"loan": "abc"}, headers=auth).get_json() == {"max": 1}
    assert client.post("/return_quota", json={"loan": loan}, headers=auth).get_json() == {"max": 2}


@pytest.mark.parametrize("path, body", [
    ("/renew_quota", {}),
    ("/renew_quota", {"loans": "ab"}),
    ("/renew_quota", {"loans": ["AB"]}),
    ("/renew_quota", {"loans": [1]}),
    ("/renew_quota", {"loans": ["a" * 65]}),
    ("/renew_quota", {"loans": ["a"] * 10_001}),
    ("/return_quota", {"loan": ""}),
    ("/return_quota", {"loan": 5}),
])
def test_malformed_quota_calls_are_refused_and_change_nothing(path, body):
    auth = {"X-Cluster-Token": TOKEN}
    client = make_client(max_workers=2)
    client.get("/try_get_node_quota", headers=auth)
    before = client.get("/stats").get_json()["quota"]
    assert_error(client.post(path, json=body, headers=auth), 400, "bad_request")
    assert client.get("/stats").get_json()["quota"] == before


def test_the_ttl_is_at_least_three_scaler_intervals():
    with pytest.raises(ConfigError, match="LOAN_TTL_SECONDS=2 is below 3 × SCALE_INTERVAL"):
        make_client(loan_ttl=2, scale_interval=1.5)  # given too low: refused, not raised in silence
    app = make_client(scale_interval=3).application  # not given: the default (6) follows the interval
    assert app.extensions["nodeapp"].node.workers.loan_ttl == 9.0


@pytest.mark.parametrize("data", [{"granted": True}, {"granted": True, "loan": "ab", "ttl": 0},
                                  {"granted": True, "loan": "x y", "ttl": 5}, {"granted": False, "loan": "ab", "ttl": 5}])
def test_a_grant_without_a_usable_loan_is_not_used(data):
    assert Grant.from_json(data) is None
