"""The scaling decision as a table, and the scaler run against a recording launcher.

The peer is a PeerClient subclass backed by a real Node, so quota arithmetic is the real
one on both sides; only the HTTP hop is left out (the end-to-end tests cover it).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import replace

import pytest

from nodeapp.fleet.loans import Grant, Renewal
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler, decide
from nodeapp.fleet.scaling import ScalingFigures
from nodeapp.node import Node
from nodeapp.web.views import stats_json
from provisioning.launchers import Limit
from tests.helpers import Clock, FakeLauncher

RATE = 1_000_000  # iterations per second per worker, for round numbers


def figures(queued=0, iters=0, oldest=0.0, live=0, pending=0, max_workers=5, running=0):
    return ScalingFigures(queued, iters, oldest, live, pending, max_workers, running)


@pytest.mark.parametrize(
    "f,launch,borrow",
    [
        (figures(), 0, 0),  # nothing waits
        (figures(queued=1, iters=1), 1, 0),  # first task: one worker, at once
        (figures(queued=1, iters=1, pending=1), 0, 0),  # one is already on its way
        (figures(queued=2000, iters=2000), 1, 0),  # many tiny tasks: one worker drains them
        (figures(queued=2000, iters=2000, live=1), 0, 0),  # and a live one keeps up
        (figures(queued=3, iters=3, oldest=5.0, live=2), 1, 0),  # small backlog, but it waited too long
        (figures(queued=4, iters=4 * 10 * RATE), 4, 0),  # never more workers than tasks
        (figures(queued=50, iters=50 * RATE), 5, 20),  # 50 s of work: up to max, borrow the rest
        (figures(queued=50, iters=50 * RATE, live=5), 0, 25),  # at max: only borrow
        (figures(queued=50, iters=50 * RATE, live=3, pending=2), 0, 23),  # pending count as coming
        (figures(queued=10, iters=10 * RATE, live=0, max_workers=0), 0, 5),  # no own quota at all
    ],
)
def test_decide_table(f, launch, borrow):
    d = decide(f, scale_wait=2.0, hash_rate=RATE)
    assert (d.launch, d.borrow) == (launch, borrow), d
    assert d.launch + d.borrow <= f.queued


def test_decide_never_launches_past_max_nor_more_than_queued():
    for queued, live, pending, max_workers, oldest in itertools.product(
            (0, 1, 3, 100), (0, 2, 4, 7), (0, 1, 4), (0, 1, 5), (0.0, 10.0)):
        f = figures(queued, queued * RATE, oldest, live, pending, max_workers)
        d = decide(f, scale_wait=1.0, hash_rate=RATE)
        assert 0 <= d.launch <= max(0, max_workers - live - pending), (f, d)
        assert d.borrow >= 0 and d.launch + d.borrow + pending <= max(queued, pending), (f, d)


def stats(node: Node) -> dict:
    return stats_json(node.stats())


def drain(state: Node, worker_id: str) -> None:
    """Play a worker that completes everything queued."""
    while tasks := state.claim(worker_id, 100):
        assert state.complete(worker_id, [(t.id, "r") for t in tasks]) == len(tasks)


class StatePeer(PeerClient):
    """A peer whose quota calls go straight to another Node."""

    def __init__(self, state: Node, reachable: bool = True) -> None:
        super().__init__("http://127.0.0.1:9", "token")
        self.peer_state = state
        self.up = reachable

    def try_get_quota(self) -> Grant | None:
        return self.peer_state.workers.lend() if self.up else None

    def renew_quota(self, loans: list[str]) -> Renewal | None:
        return self.peer_state.workers.renewal(loans) if self.up else None

    def return_quota(self, loan: str) -> bool:
        if self.up:
            self.peer_state.workers.loan_returned(loan)
        return self.up

    def ping(self) -> bool:
        return self.up


@pytest.fixture
def cluster():
    clock = Clock()
    ours = Node.build(max_workers=2, lease_seconds=10, monotonic=clock, wall=clock)
    theirs = Node.build(max_workers=2, monotonic=clock, wall=clock)
    launcher = FakeLauncher()
    peer = StatePeer(theirs)
    return clock, ours, theirs, launcher, peer, make_scaler(ours, launcher, peer, clock)


def make_scaler(node: Node, launcher, peer, clock: Clock) -> Scaler:
    return Scaler(node, launcher, peer, node_url="http://127.0.0.1:1", scale_wait=1.0,
                  hash_rate=RATE, boot_timeout=30, monotonic=clock, wall=clock)


def test_backlog_launches_once_and_counts_pending(cluster):
    clock, ours, _, launcher, peer, scaler = cluster
    ours.tasks.submit(b"x", 10)
    scaler.tick()
    scaler.tick()
    clock.now += 0.5
    scaler.tick()
    assert [w for w, _ in launcher.launched] == ["fake-1"]
    assert launcher.launched[0][1] == ["http://127.0.0.1:1", peer.url]
    assert stats(ours)["workers"] == {**stats(ours)["workers"], "pending": 1, "live": 0}
    decision = scaler.decisions()[0]
    assert decision["launched"] == 1 and decision["figures"]["queued"] == 1


def test_workers_get_the_peer_url_they_reach_it_by(cluster):
    clock, ours, _, launcher, peer, scaler = cluster
    scaler.worker_peer_url = "http://127.0.0.1:7"  # WORKER_PEER_URL: the nodes talk through another address
    ours.tasks.submit(b"x", 10)
    scaler.tick()
    assert launcher.launched[0][1] == ["http://127.0.0.1:1", "http://127.0.0.1:7"]


def test_claim_makes_a_worker_live(cluster):
    _, ours, _, launcher, _, scaler = cluster
    ours.tasks.submit(b"x", 1)
    scaler.tick()
    assert ours.claim("fake-1")
    assert stats(ours)["workers"]["live"] == 1 and stats(ours)["workers"]["pending"] == 0


def test_at_max_borrows_from_peer_and_returns_the_slot(cluster):
    _, ours, theirs, launcher, _, scaler = cluster
    for _ in range(6):
        ours.tasks.submit(b"x", 5 * RATE)
    scaler.tick()
    # 2 on our own quota, then the peer lends both of its free slots.
    assert len(launcher.launched) == 4
    assert stats(ours)["quota"]["borrowed"] == 2 and stats(ours)["workers"]["max"] == 4
    assert stats(theirs)["quota"]["lent"] == 2 and stats(theirs)["workers"]["max"] == 0
    assert not theirs.workers.lend()  # nothing left to lend
    drain(ours, "fake-1")
    for worker_id, _ in launcher.launched:
        ours.worker_down(worker_id)
    scaler.tick()  # returns the owed slots
    assert stats(ours)["quota"] == {"lent": 0, "borrowed": 0, "owed": 0, "recovering": False}
    assert stats(theirs)["quota"]["lent"] == 0
    assert stats(ours)["workers"]["max"] + stats(theirs)["workers"]["max"] == 4


class CappedLauncher(FakeLauncher):
    """A launcher with room for ``cap`` running workers, like the local one at the CPU count."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def room(self) -> int:
        return max(0, self.cap - len(self.alive))

    def launch(self, count: int, node_urls: list[str]) -> list[str]:
        return super().launch(min(count, self.room()), node_urls)


def test_no_slot_is_borrowed_that_the_launcher_has_no_room_for(cluster):
    clock, ours, theirs, _, peer, _ = cluster
    launcher = CappedLauncher(cap=3)
    scaler = make_scaler(ours, launcher, peer, clock)
    for _ in range(6):
        ours.tasks.submit(b"x", 5 * RATE)
    for _ in range(3):
        scaler.tick()
    # 2 on our own quota, 1 borrowed slot for the room left; the peer's second slot is not asked for.
    assert len(launcher.launched) == 3
    assert stats(ours)["quota"] == {"lent": 0, "borrowed": 1, "owed": 0, "recovering": False}
    assert stats(theirs)["quota"]["lent"] == 1


def test_quota_return_retried_while_peer_is_down(cluster):
    _, ours, theirs, launcher, peer, scaler = cluster
    for _ in range(3):
        ours.tasks.submit(b"x", 5 * RATE)
    scaler.tick()
    borrowed = [w for w, _ in launcher.launched][2:]
    assert borrowed and stats(ours)["quota"]["borrowed"] == 1
    drain(ours, "fake-1")
    peer.up = False
    ours.worker_down(borrowed[0])
    scaler.tick()
    assert stats(ours)["quota"]["owed"] == 1 and stats(theirs)["quota"]["lent"] == 1
    peer.up = True
    scaler.tick()
    assert stats(ours)["quota"]["owed"] == 0 and stats(theirs)["quota"]["lent"] == 0


def test_worker_that_vanished_is_reconciled_and_its_tasks_requeued(cluster):
    _, ours, _, launcher, _, scaler = cluster
    task_id = ours.tasks.submit(b"x", 1)
    scaler.tick()
    assert [t.id for t in ours.claim("fake-1")] == [task_id]
    launcher.vanish("fake-1")
    scaler.tick()
    assert ours.tasks.status(task_id).state == "queued"
    # fake-1 left the registry; the same run launched a replacement for the requeued task
    assert [w.id for w in ours.workers.workers()] == ["fake-2"]


def test_pending_worker_past_boot_timeout_is_terminated(cluster):
    clock, ours, _, launcher, _, scaler = cluster
    ours.tasks.submit(b"x", 1)
    scaler.tick()
    clock.now += 31
    scaler.tick()
    assert "fake-1" in launcher.terminated
    assert all(w.id != "fake-1" for w in ours.workers.workers())


def test_worker_down_is_passed_on_to_the_launcher(cluster):
    _, ours, _, launcher, _, scaler = cluster
    ours.tasks.submit(b"x", 1)
    scaler.tick()
    ours.claim("fake-1")
    assert ours.worker_down("fake-1").removed
    scaler.tick()
    assert launcher.terminated == ["fake-1"]


def test_expired_leases_are_requeued_by_the_tick(cluster):
    clock, ours, _, _, _, scaler = cluster
    task_id = ours.tasks.submit(b"x", 1)
    ours.claim("someone")
    clock.now += 11
    scaler.tick()
    assert ours.tasks.status(task_id).state == "queued"
    assert stats(ours)["leases_expired"] == 1


def test_a_failing_launcher_does_not_stop_the_scaler(cluster, caplog):
    _, ours, _, launcher, _, scaler = cluster

    def broken(count, urls):
        raise RuntimeError("capacity")

    launcher.launch = broken
    ours.tasks.submit(b"x", 1)
    scaler.tick()
    scaler.tick()
    assert "launching 1 worker(s) failed" in caplog.text
    assert stats(ours)["workers"]["pending"] == 0


def test_summary_line_every_interval(cluster, caplog):
    clock, ours, _, _, _, scaler = cluster
    caplog.set_level("INFO", logger="nodeapp.fleet.scaling")
    for _ in range(3):
        ours.tasks.submit(b"secret-body", 1)
    drain(ours, "w")
    scaler.tick()
    assert "summary:" not in caplog.text
    clock.now += 61
    scaler.tick()
    assert "summary: 3 accepted, 3 completed in 61s" in caplog.text
    assert "secret-body" not in caplog.text


# ------------------------------------------------------------------ a failed step
def owe_one_slot(ours: Node, theirs: Node, clock: Clock) -> None:
    """The peer lent us a slot whose launch failed: we owe it back."""
    with ours.workers.reserve_loan(theirs.workers.lend(), clock.now):
        pass


def test_a_failed_terminate_keeps_the_ids_and_later_steps_still_run(cluster, caplog):
    clock, ours, theirs, launcher, _, scaler = cluster
    ours.workers.add(["gone"])
    ours.worker_down("gone")  # due for termination
    owe_one_slot(ours, theirs, clock)  # due to be given back
    ours.tasks.submit(b"x", 1)  # due to launch a worker
    terminate = launcher.terminate

    def throttled(worker_ids):
        raise RuntimeError("RequestLimitExceeded")

    launcher.terminate = throttled
    scaler.tick()
    assert "scaler step failed: terminate departed workers" in caplog.text
    assert [w for w, _ in launcher.launched] == ["fake-1"]  # the launch step still ran
    assert stats(ours)["quota"]["owed"] == 0 and stats(theirs)["quota"]["lent"] == 0  # and the quota step
    launcher.terminate = terminate
    scaler.tick()
    assert launcher.terminated == ["gone"]  # the id was put back and stopped on the next run


def test_quota_not_returned_when_the_peer_call_raises_stays_owed(cluster, caplog):
    clock, ours, theirs, launcher, peer, scaler = cluster
    owe_one_slot(ours, theirs, clock)
    owe_one_slot(ours, theirs, clock)
    calls = []

    def flaky(loan: str) -> bool:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("peer reset the connection")
        theirs.workers.loan_returned(loan)
        return True

    peer.return_quota = flaky
    ours.tasks.submit(b"x", 1)
    scaler.tick()
    assert "scaler step failed: give back quota" in caplog.text
    assert stats(ours)["quota"]["owed"] == 1 and stats(theirs)["quota"]["lent"] == 1
    assert len(launcher.launched) == 1  # the launch step still ran
    del peer.return_quota  # the peer answers again
    scaler.tick()
    assert stats(ours)["quota"]["owed"] == 0 and stats(theirs)["quota"]["lent"] == 0


def test_an_overdue_worker_whose_terminate_fails_is_forgotten_and_stopped_later(cluster):
    clock, ours, _, launcher, _, scaler = cluster
    task_id = ours.tasks.submit(b"x", 1)
    scaler.tick()
    clock.now += 31
    terminate = launcher.terminate

    def throttled(worker_ids):
        raise RuntimeError("RequestLimitExceeded")

    launcher.terminate = throttled
    scaler.tick()
    assert all(w.id != "fake-1" for w in ours.workers.workers())
    assert ours.tasks.status(task_id).state == "queued"
    assert "fake-1" not in launcher.terminated
    launcher.terminate = terminate
    scaler.tick()
    assert "fake-1" in launcher.terminated


# ------------------------------------------------------------ the effective capacity
def capped(room: int, capacity: int, **kw) -> ScalingFigures:
    return replace(figures(**kw), room=room, capacity=capacity, capacity_why="TM_LOCAL_MAX_WORKERS=4")


@pytest.mark.parametrize("f,launch,borrow,says", [
    # the run: 4 live at the CPU cap, quota 10: nothing to launch, nothing to borrow, and it says why
    (capped(0, 4, queued=250, iters=250 * RATE, live=4, max_workers=10), 0, 0, "at capacity 4 (TM_LOCAL_MAX_WORKERS=4)"),
    (capped(2, 4, queued=50, iters=50 * RATE, live=2, max_workers=10), 2, 0, "at capacity 4"),
    (capped(4, 4, queued=50, iters=50 * RATE, max_workers=2), 2, 2, "at max 2, at capacity 4"),  # borrow 2, not 23
    (capped(9, 9, queued=5, iters=5 * RATE, max_workers=10), 3, 0, "backlog"),  # room enough: no mention
])
def test_decide_launches_and_borrows_only_what_the_launcher_can_run(f, launch, borrow, says):
    d = decide(f, scale_wait=2.0, hash_rate=RATE)
    assert (d.launch, d.borrow) == (launch, borrow), d
    assert says in d.reason and (("capacity" in d.reason) == ("capacity" in says)), d


def test_every_decision_carries_the_capacity_and_a_blocked_one_says_why(cluster):
    clock, _, theirs, _, peer, _ = cluster
    ours = Node.build(max_workers=5, lease_seconds=10, monotonic=clock, wall=clock)

    class LimitedLauncher(CappedLauncher):
        def limit(self) -> Limit:
            return Limit(self.cap, f"TM_LOCAL_MAX_WORKERS={self.cap}")

    launcher = LimitedLauncher(cap=3)
    scaler = make_scaler(ours, launcher, peer, clock)
    for _ in range(10):
        ours.tasks.submit(b"x", 5 * RATE)
    scaler.tick()
    for worker_id in list(launcher.alive):
        ours.claim(worker_id, 1)  # live now
    clock.now += 5
    scaler.tick()
    assert len(launcher.launched) == 3 and stats(theirs)["quota"]["lent"] == 0  # nothing borrowed to no use
    newest, first = scaler.decisions()[0], scaler.decisions()[-1]
    assert first["figures"]["capacity"] == 3 and first["launched"] == 3
    assert newest["launched"] == 0 and newest["borrowed"] == 0
    assert "at capacity 3 (TM_LOCAL_MAX_WORKERS=3)" in newest["reason"]
    assert scaler.capacity(5) == (3, "TM_LOCAL_MAX_WORKERS=3") and scaler.capacity(2)[0] == 2


def test_stats_show_the_capacity_and_why(tmp_path):
    from nodeapp import create_app

    settings = {"cluster_token": "t", "node_url": "http://127.0.0.1:1", "max_workers": 5}
    capped_app = create_app({**settings, "local_max_workers": 3})
    workers = capped_app.test_client().get("/stats").get_json()["workers"]
    assert (workers["max"], workers["capacity"], workers["capacity_why"]) == (5, 3, "TM_LOCAL_MAX_WORKERS=3")
    roomy = create_app({**settings, "local_max_workers": 50}).test_client().get("/stats").get_json()["workers"]
    assert roomy["capacity"] == 5 and "MAX_NUM_OF_WORKERS" in roomy["capacity_why"]
    cpus = create_app(settings | {"max_workers": 1000}).test_client().get("/stats").get_json()["workers"]
    assert cpus["capacity"] == len(os.sched_getaffinity(0)) and "per CPU" in cpus["capacity_why"]
