"""TaskStore: the queue, leases and kept results, driven directly with fake clocks."""

from __future__ import annotations

import dataclasses
import sys
import tracemalloc

import pytest

from nodeapp.store.results import summary
from nodeapp.store.tasks import TaskStore
from nodeapp.store.records import COMPLETED, FAILED, QUEUED, RUNNING, Draining, QueueFull
from tests.helpers import Clock


@pytest.fixture
def clock() -> Clock:
    """One clock for both the monotonic and the wall time; it starts constant, so equal
    timestamps happen on purpose."""
    return Clock(1_000_000.0)


@pytest.fixture
def make_store(clock):
    def make(**kwargs) -> TaskStore:
        kwargs.setdefault("lease_seconds", 10.0)
        return TaskStore(monotonic=clock, wall=clock, **kwargs)

    return make


def submit_all(store: TaskStore, count: int, iterations: int = 1) -> list[str]:
    return [store.submit(f"body-{i}".encode(), iterations) for i in range(count)]


def claim_ids(store: TaskStore, worker: str, count: int) -> list[str]:
    return [t.id for t in store.claim(worker, count)]


def newest(store: TaskStore, top: int) -> list[dict]:
    return [summary(r) for r in store.results.newest_completed(top)]


# ------------------------------------------------------------------ queue order
def test_claims_follow_submission_order(make_store):
    store = make_store()
    ids = submit_all(store, 5)
    assert claim_ids(store, "w1", 2) == ids[:2]
    assert claim_ids(store, "w2", 10) == ids[2:]
    assert claim_ids(store, "w3", 1) == []


def test_claim_hands_out_the_body_and_marks_the_task_running(make_store):
    store = make_store()
    task_id = store.submit(b"\x00\xffraw", 7)
    [task] = store.claim("w1", 1)
    assert (task.id, task.data, task.iterations) == (task_id, b"\x00\xffraw", 7)
    assert store.status(task_id).state == RUNNING
    assert store.counts().queued == 0 and store.counts().running == 1


def test_claim_keeps_iterations_within_the_budget_but_always_gives_one(make_store):
    store = make_store()
    ids = [store.submit(b"", n) for n in (300, 300, 300, 5000)]
    assert claim_ids(store, "w1", 10) == ids  # no budget: everything
    store = make_store()
    ids = [store.submit(b"", n) for n in (300, 300, 300, 5000)]
    assert [t.id for t in store.claim("w1", 10, max_iterations=700)] == ids[:2]
    assert [t.id for t in store.claim("w1", 10, max_iterations=100)] == ids[2:3]  # first one always
    assert store.counts().queued_iterations == 5000


def test_submit_refuses_at_max_queued_and_while_draining(make_store):
    store = make_store(max_queued=2)
    submit_all(store, 2)
    with pytest.raises(QueueFull):
        store.submit(b"x", 1)
    assert store.counts().queued == 2 and store.counts().rejected_full == 1
    claim_ids(store, "w1", 1)  # a claimed task no longer counts as queued
    store.submit(b"x", 1)
    store.start_draining()
    assert store.draining is True
    with pytest.raises(Draining):
        store.submit(b"y", 1)
    assert store.counts().queued == 2 and store.counts().enqueued == 3


# ------------------------------------------------------------------ snapshots
def test_what_leaves_the_store_is_an_immutable_snapshot(make_store, clock):
    store = make_store()
    task_id = store.submit(b"x", 3)
    [leased] = store.claim("w1", 1)
    running = store.status(task_id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        leased.data = b"changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        running.state = COMPLETED
    clock.now += 1
    store.complete("w1", [(task_id, "r")])
    assert (running.state, running.result) == (RUNNING, None)  # the earlier snapshot did not move
    [record] = store.results.newest_completed(1)
    assert (record.state, record.result, record.completed_at) == (COMPLETED, "r", clock.now)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.result = "forged"
    assert store.status(task_id).result == "r"


# ------------------------------------------------------------------ clocks
def test_leases_and_queue_age_follow_the_monotonic_clock_and_users_see_the_wall_clock():
    tick, wall = Clock(50.0), Clock(1_700_000_000.0)
    store = TaskStore(lease_seconds=10.0, monotonic=tick, wall=wall)
    task_id = store.submit(b"x", 1)
    assert store.status(task_id).enqueued_at == wall.now
    store.claim("w1", 1)
    wall.now -= 3600  # the wall clock is set back an hour: no lease is extended
    wall.now += 7200  # and forward two: none expires
    assert store.requeue_expired() == (0, 0)
    tick.now += 10
    assert store.requeue_expired() == (1, 0)
    assert store.counts().oldest_wait == 10.0  # since submit, on the monotonic clock
    store.claim("w2", 1)
    store.complete("w2", [(task_id, "r")])
    assert store.status(task_id).completed_at == wall.now


# ------------------------------------------------------------------ leases
def test_expired_lease_goes_back_to_the_head_in_order(make_store, clock):
    store = make_store()
    ids = submit_all(store, 5)  # all with the same timestamp: order must not depend on it
    assert claim_ids(store, "w1", 3) == ids[:3]
    clock.now += 10.0
    assert store.requeue_expired() == (3, 0)
    assert store.status(ids[0]).state == QUEUED
    assert claim_ids(store, "w2", 5) == ids  # requeued ones first, in their original order
    assert store.counts().leases_expired == 3


def test_requeued_tasks_go_before_newer_ones(make_store, clock):
    store = make_store()
    first = submit_all(store, 2)
    claim_ids(store, "w1", 2)
    clock.now += 1
    later = submit_all(store, 2)
    clock.now += 10
    store.requeue_expired()
    assert claim_ids(store, "w2", 4) == first + later


def test_heartbeat_renews_only_the_workers_own_leases(make_store, clock):
    store = make_store()
    a, b = submit_all(store, 2)
    claim_ids(store, "w1", 1)
    claim_ids(store, "w2", 1)
    clock.now += 9
    assert store.heartbeat("w1", [a, b, "unknown"]) == 1
    clock.now += 2  # w2's lease ran out, w1's was renewed at t+9
    assert store.requeue_expired() == (1, 0)
    assert store.status(a).state == RUNNING
    assert store.status(b).state == QUEUED


def test_lease_not_yet_expired_stays(make_store, clock):
    store = make_store()
    submit_all(store, 1)
    claim_ids(store, "w1", 1)
    clock.now += 9.99
    assert store.requeue_expired() == (0, 0)
    assert store.counts().running == 1


def test_max_attempts_lost_leases_fail_the_task_with_a_reason(make_store, clock):
    store = make_store(max_attempts=3)
    task_id = store.submit(b"x", 1)
    other = store.submit(b"y", 1)
    for attempt in range(1, 4):
        assert claim_ids(store, f"w{attempt}", 1) == [task_id]
        clock.now += 10
        requeued, failed = store.requeue_expired()
        assert (requeued, failed) == ((1, 0) if attempt < 3 else (0, 1))
    status = store.status(task_id)
    assert status.state == FAILED
    assert "3" in status.reason and "MAX_ATTEMPTS" in status.reason
    counts = store.counts()
    assert counts.failed == 1 and counts.completed == 0
    assert counts.queued == 1 and counts.running == 0
    assert claim_ids(store, "w9", 5) == [other]  # the failed task is not handed out again
    assert store.complete("w3", [(task_id, "late")]) == 0  # nor completed late
    assert store.status(task_id).state == FAILED
    assert newest(store, 10) == []


def test_release_requeues_a_workers_tasks_and_returned_ones_cost_no_attempt(make_store):
    store = make_store(max_attempts=1)
    ids = submit_all(store, 4)
    claim_ids(store, "w1", 3)
    claim_ids(store, "w2", 1)
    assert store.release("w1", returned=[ids[0], ids[2], "not-its-task"]) == (2, 1)
    assert [store.status(i).state for i in ids] == [QUEUED, FAILED, QUEUED, RUNNING]
    assert store.release("w1") == (0, 0)  # nothing held any more
    assert claim_ids(store, "w3", 3) == [ids[0], ids[2]]


# ------------------------------------------------------------------ completion
def test_complete_records_the_result_once(make_store, clock):
    store = make_store()
    task_id = store.submit(b"x", 4)
    claim_ids(store, "w1", 1)
    clock.now += 3
    assert store.complete("w1", [(task_id, "r1"), (task_id, "r2")]) == 1
    assert store.complete("w1", [(task_id, "r3")]) == 0
    status = store.status(task_id)
    assert status.state == COMPLETED and status.result == "r1"
    assert status.completed_at == clock.now
    assert newest(store, 10) == [{"id": task_id, "result": "r1", "iterations": 4, "completed_at": clock.now}]
    assert store.counts().completed == 1 and store.counts().running == 0


@pytest.mark.parametrize("case", ["unknown", "queued", "requeued", "re-leased", "other worker"])
def test_results_that_must_change_nothing(make_store, clock, case):
    store = make_store()
    task_id = store.submit(b"x", 1)
    worker, target = "w1", task_id
    if case == "unknown":
        claim_ids(store, "w1", 1)
        target = "no-such-task"
    elif case == "requeued":
        claim_ids(store, "w1", 1)
        clock.now += 10
        store.requeue_expired()
    elif case == "re-leased":
        claim_ids(store, "w1", 1)
        clock.now += 10
        store.requeue_expired()
        claim_ids(store, "w2", 1)
    elif case == "other worker":
        claim_ids(store, "w2", 1)
    before = (store.counts(), store.status(task_id))
    assert store.complete(worker, [(target, "stale")]) == 0
    assert (store.counts(), store.status(task_id)) == before
    assert newest(store, 5) == []


def test_results_are_kept_newest_first_within_retention(make_store, clock):
    store = make_store(results_retention=3)
    ids = submit_all(store, 5)
    claim_ids(store, "w1", 5)
    for task_id in ids:
        clock.now += 1
        store.complete("w1", [(task_id, "r-" + task_id)])
    kept = newest(store, 10)
    assert [r["id"] for r in kept] == ids[:1:-1]  # 3 newest, newest first
    assert [r["completed_at"] for r in kept] == sorted((r["completed_at"] for r in kept), reverse=True)
    assert [r["id"] for r in newest(store, 2)] == ids[:2:-1]
    assert store.status(ids[0]) is None  # dropped past retention
    assert store.status(ids[4]).result == "r-" + ids[4]
    counts = store.counts()
    assert counts.completed == 5 and counts.results_kept == 3


def _filled(make_store, clock, count: int) -> TaskStore:
    store = make_store(results_retention=count)
    ids = submit_all(store, count)
    claim_ids(store, "w1", count)
    for task_id in ids:
        clock.now += 0.001
    store.complete("w1", [(task_id, "r") for task_id in ids])
    return store


def _work_of(call) -> tuple[int, int]:
    """(Python line events, peak bytes allocated) while ``call`` runs: work, not time."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    tracemalloc.start()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return lines, peak


def test_newest_completed_costs_o_top_not_o_all(make_store, clock):
    small = _filled(make_store, clock, 50)
    big = _filled(make_store, clock, 20_000)
    small_lines, _ = _work_of(lambda: small.results.newest_completed(5))
    big_lines, big_peak = _work_of(lambda: big.results.newest_completed(5))
    assert big_lines == small_lines  # the same Python steps whether 50 or 20,000 results are kept
    assert big_peak < 20_000  # bytes: no copy of the 20,000 results (a list of them is 160 kB)
    assert len(big.results.newest_completed(5)) == 5


def test_tasks_waiting_on_the_peers_runs_are_counted_and_leave_the_count_each_way():
    """The waits are indexed by the peer's task id: the count and ``peer_runs`` follow a wait
    that ends with the peer's result, one that ends without it (queued here), and a cancel."""
    import hashlib

    from nodeapp.store.records import Submission

    store = TaskStore()

    def waiting(body: bytes, peer_id: str) -> str:
        digest = hashlib.sha512(body).digest()
        [done] = store.submit_many([Submission(body, 5, digest)], peer_runs={(digest, 5): peer_id})
        return done.id

    a, b, c = waiting(b"a", "p1"), waiting(b"b", "p2"), waiting(b"c", "p2")
    assert store.counts().waiting_on_peer == 3 and store.peer_runs() == {"p1": [a], "p2": [b, c]}
    assert store.counts().queued == 0  # they wait in no queue
    assert store.peer_run_ended("p1", "ab" * 64) == 1 and store.status(a).state == COMPLETED
    assert store.counts().waiting_on_peer == 2 and store.peer_runs() == {"p2": [b, c]}
    assert store.cancel(b).state == "cancelled"
    assert store.counts().waiting_on_peer == 1 and store.peer_runs() == {"p2": [c]}
    assert store.peer_run_ended("p2", None) == 1 and store.status(c).state == QUEUED
    assert store.counts().waiting_on_peer == 0 and store.peer_runs() == {} and store.counts().queued == 1
