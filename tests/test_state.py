"""NodeState: the queue, leases, results and worker quota, driven directly with a fake clock."""

from __future__ import annotations

import sys
import threading
import tracemalloc

import pytest

from nodeapp.state import COMPLETED, FAILED, QUEUED, RUNNING, Draining, NodeState, QueueFull


class FakeClock:
    """A clock the test moves by hand. It starts constant, so equal timestamps happen on purpose."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_state(clock):
    def make(**kwargs) -> NodeState:
        kwargs.setdefault("lease_seconds", 10.0)
        return NodeState(clock=clock, **kwargs)

    return make


def submit_all(state: NodeState, count: int, iterations: int = 1) -> list[str]:
    return [state.submit(f"body-{i}".encode(), iterations) for i in range(count)]


def claim_ids(state: NodeState, worker: str, count: int) -> list[str]:
    return [t.id for t in state.claim(worker, count)]


# ------------------------------------------------------------------ queue order
def test_claims_follow_submission_order(make_state):
    state = make_state()
    ids = submit_all(state, 5)
    assert claim_ids(state, "w1", 2) == ids[:2]
    assert claim_ids(state, "w2", 10) == ids[2:]
    assert claim_ids(state, "w3", 1) == []


def test_claim_hands_out_the_body_and_marks_the_task_running(make_state):
    state = make_state()
    task_id = state.submit(b"\x00\xffraw", 7)
    [task] = state.claim("w1", 1)
    assert (task.id, task.data, task.iterations) == (task_id, b"\x00\xffraw", 7)
    assert state.status(task_id)["state"] == RUNNING
    assert state.stats()["queued"] == 0 and state.stats()["running"] == 1


def test_claim_keeps_iterations_within_the_budget_but_always_gives_one(make_state):
    state = make_state()
    ids = [state.submit(b"", n) for n in (300, 300, 300, 5000)]
    assert claim_ids(state, "w1", 10) == ids  # no budget: everything
    state = make_state()
    ids = [state.submit(b"", n) for n in (300, 300, 300, 5000)]
    assert [t.id for t in state.claim("w1", 10, max_iterations=700)] == ids[:2]
    assert [t.id for t in state.claim("w1", 10, max_iterations=100)] == ids[2:3]  # first one always
    assert state.stats()["queued_iterations"] == 5000


def test_submit_refuses_at_max_queued_and_while_draining(make_state):
    state = make_state(max_queued=2)
    submit_all(state, 2)
    with pytest.raises(QueueFull):
        state.submit(b"x", 1)
    assert state.stats()["queued"] == 2
    claim_ids(state, "w1", 1)  # a claimed task no longer counts as queued
    state.submit(b"x", 1)
    state.start_draining()
    with pytest.raises(Draining):
        state.submit(b"y", 1)
    assert state.stats()["queued"] == 2 and state.stats()["enqueued"] == 3


# ------------------------------------------------------------------ leases
def test_expired_lease_goes_back_to_the_head_in_order(make_state, clock):
    state = make_state()
    ids = submit_all(state, 5)  # all with the same timestamp: order must not depend on it
    assert claim_ids(state, "w1", 3) == ids[:3]
    clock.advance(10.0)
    assert state.requeue_expired() == (3, 0)
    assert state.status(ids[0])["state"] == QUEUED
    assert claim_ids(state, "w2", 5) == ids  # requeued ones first, in their original order
    assert state.stats()["leases_expired"] == 3


def test_requeued_tasks_go_before_newer_ones(make_state, clock):
    state = make_state()
    first = submit_all(state, 2)
    claim_ids(state, "w1", 2)
    clock.advance(1)
    later = submit_all(state, 2)
    clock.advance(10)
    state.requeue_expired()
    assert claim_ids(state, "w2", 4) == first + later


def test_heartbeat_renews_only_the_workers_own_leases(make_state, clock):
    state = make_state()
    a, b = submit_all(state, 2)
    claim_ids(state, "w1", 1)
    claim_ids(state, "w2", 1)
    clock.advance(9)
    assert state.heartbeat("w1", [a, b, "unknown"]) == 1
    clock.advance(2)  # w2's lease ran out, w1's was renewed at t+9
    assert state.requeue_expired() == (1, 0)
    assert state.status(a)["state"] == RUNNING
    assert state.status(b)["state"] == QUEUED


def test_lease_not_yet_expired_stays(make_state, clock):
    state = make_state()
    submit_all(state, 1)
    claim_ids(state, "w1", 1)
    clock.advance(9.99)
    assert state.requeue_expired() == (0, 0)
    assert state.stats()["running"] == 1


def test_max_attempts_lost_leases_fail_the_task_with_a_reason(make_state, clock):
    state = make_state(max_attempts=3)
    task_id = state.submit(b"x", 1)
    other = state.submit(b"y", 1)
    for attempt in range(1, 4):
        assert claim_ids(state, f"w{attempt}", 1) == [task_id]
        clock.advance(10)
        requeued, failed = state.requeue_expired()
        assert (requeued, failed) == ((1, 0) if attempt < 3 else (0, 1))
    status = state.status(task_id)
    assert status["state"] == FAILED
    assert "3" in status["reason"] and "MAX_ATTEMPTS" in status["reason"]
    stats = state.stats()
    assert stats["failed"] == 1 and stats["completed"] == 0
    assert stats["queued"] == 1 and stats["running"] == 0
    assert claim_ids(state, "w9", 5) == [other]  # the failed task is not handed out again
    assert state.complete("w3", [(task_id, "late")]) == 0  # nor completed late
    assert state.status(task_id)["state"] == FAILED
    assert state.newest_results(10) == []


# ------------------------------------------------------------------ completion
def test_complete_records_the_result_once(make_state, clock):
    state = make_state()
    task_id = state.submit(b"x", 4)
    claim_ids(state, "w1", 1)
    clock.advance(3)
    assert state.complete("w1", [(task_id, "r1"), (task_id, "r2")]) == 1
    assert state.complete("w1", [(task_id, "r3")]) == 0
    status = state.status(task_id)
    assert status["state"] == COMPLETED and status["result"] == "r1"
    assert status["completed_at"] == clock.now
    assert state.newest_results(10) == [
        {"id": task_id, "result": "r1", "iterations": 4, "completed_at": clock.now}]
    assert state.stats()["completed"] == 1 and state.stats()["running"] == 0


@pytest.mark.parametrize("case", ["unknown", "queued", "requeued", "re-leased", "other worker"])
def test_results_that_must_change_nothing(make_state, clock, case):
    state = make_state()
    task_id = state.submit(b"x", 1)
    worker, target = "w1", task_id
    if case == "unknown":
        claim_ids(state, "w1", 1)
        target = "no-such-task"
    elif case == "requeued":
        claim_ids(state, "w1", 1)
        clock.advance(10)
        state.requeue_expired()
    elif case == "re-leased":
        claim_ids(state, "w1", 1)
        clock.advance(10)
        state.requeue_expired()
        claim_ids(state, "w2", 1)
    elif case == "other worker":
        claim_ids(state, "w2", 1)
    before = (state.stats(), state.status(task_id))
    assert state.complete(worker, [(target, "stale")]) == 0
    assert (state.stats(), state.status(task_id)) == before
    assert state.newest_results(5) == []


def test_results_are_kept_newest_first_within_retention(make_state, clock):
    state = make_state(results_retention=3)
    ids = submit_all(state, 5)
    claim_ids(state, "w1", 5)
    for task_id in ids:
        clock.advance(1)
        state.complete("w1", [(task_id, "r-" + task_id)])
    newest = state.newest_results(10)
    assert [r["id"] for r in newest] == ids[:1:-1]  # 3 newest, newest first
    assert [r["completed_at"] for r in newest] == sorted((r["completed_at"] for r in newest), reverse=True)
    assert [r["id"] for r in state.newest_results(2)] == ids[:2:-1]
    assert state.status(ids[0]) is None  # dropped past retention
    assert state.status(ids[4])["result"] == "r-" + ids[4]
    stats = state.stats()
    assert stats["completed"] == 5 and stats["results_kept"] == 3


def _filled(make_state, clock, count: int) -> NodeState:
    state = make_state(results_retention=count)
    ids = submit_all(state, count)
    claim_ids(state, "w1", count)
    for task_id in ids:
        clock.advance(0.001)
    state.complete("w1", [(task_id, "r") for task_id in ids])
    return state


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


def test_newest_results_costs_o_top_not_o_all(make_state, clock):
    small = _filled(make_state, clock, 50)
    big = _filled(make_state, clock, 20_000)
    small_lines, _ = _work_of(lambda: small.newest_results(5))
    big_lines, big_peak = _work_of(lambda: big.newest_results(5))
    assert big_lines == small_lines  # the same Python steps whether 50 or 20,000 results are kept
    assert big_peak < 20_000  # bytes: no copy of the 20,000 results (a list of them is 160 kB)
    assert len(big.newest_results(5)) == 5


# ------------------------------------------------------------------ workers and quota
def _quota(state: NodeState) -> tuple[int, int, int, int]:
    stats = state.stats()
    return stats["workers"]["max"], stats["quota"]["lent"], stats["quota"]["borrowed"], stats["workers"]["base_max"]


def test_quota_lend_return_borrow_arithmetic(make_state):
    state = make_state(max_workers=3)
    state.add_workers(["a"])  # pending
    state.add_workers(["b"])
    state.claim("b", 1)  # seen: live
    assert (state.stats()["workers"]["live"], state.stats()["workers"]["pending"]) == (1, 1)
    assert state.try_lend() is True  # live + pending = 2 < 3: max 3 -> 2
    assert _quota(state) == (2, 1, 0, 3)
    assert state.try_lend() is False  # 2 < 2 is false: refused, nothing changes
    assert _quota(state) == (2, 1, 0, 3)
    state.worker_down("a")
    assert state.try_lend() is True  # 1 < 2
    assert _quota(state) == (1, 2, 0, 3)
    assert state.try_lend() is False  # 1 < 1 is false
    assert state.take_back() == 2
    assert state.take_back() == 3
    assert state.take_back() == 3  # nothing lent any more: a stray return changes nothing
    assert _quota(state) == (3, 0, 0, 3)
    state.add_borrowed_slot()
    state.add_borrowed_slot()
    assert _quota(state) == (5, 0, 2, 3)  # max = base - lent + borrowed
    assert state.try_lend() is True  # 1 < 5: a node may lend while it borrows
    assert _quota(state) == (4, 1, 2, 3)
    assert state.set_max_workers(6) == 7
    assert state.scaling_figures().max_workers == 7


def test_zero_quota_never_lends(make_state):
    state = make_state(max_workers=0)
    assert state.try_lend() is False
    assert _quota(state) == (0, 0, 0, 0)


def test_worker_down_requeues_at_the_head_and_costs_an_attempt(make_state):
    state = make_state(max_attempts=2)
    state.add_workers(["w1"])
    ids = submit_all(state, 4)
    assert claim_ids(state, "w1", 2) == ids[:2]
    gone = state.worker_down("w1")
    assert (gone.removed, gone.requeued, gone.failed, gone.borrowed) == (True, 2, 0, False)
    assert state.stats()["workers"]["down_total"] == 1
    assert claim_ids(state, "w2", 4) == ids  # back at the head, in order
    # the second loss is the last attempt (MAX_ATTEMPTS=2)
    gone = state.worker_down("w2")
    assert (gone.removed, gone.requeued, gone.failed) == (False, 2, 2)
    assert [state.status(i)["state"] for i in ids] == [FAILED, FAILED, QUEUED, QUEUED]
    assert state.stats()["failed"] == 2


def test_worker_down_returned_tasks_cost_no_attempt(make_state):
    state = make_state(max_attempts=1)
    ids = submit_all(state, 3)
    claim_ids(state, "w1", 3)
    gone = state.worker_down("w1", returned=[ids[0], ids[2], "not-its-task"])
    assert (gone.requeued, gone.failed) == (2, 1)  # with MAX_ATTEMPTS=1 any lost lease fails
    assert [state.status(i)["state"] for i in ids] == [QUEUED, FAILED, QUEUED]
    assert claim_ids(state, "w2", 3) == [ids[0], ids[2]]


def test_worker_down_is_idempotent_and_leaves_other_workers_alone(make_state):
    state = make_state()
    state.add_workers(["w1", "w2"])
    _, b = submit_all(state, 2)
    claim_ids(state, "w1", 1)
    claim_ids(state, "w2", 1)
    assert state.worker_down("w1").removed is True
    again = state.worker_down("w1")
    assert (again.removed, again.requeued, again.failed) == (False, 0, 0)
    assert state.status(b)["state"] == RUNNING
    assert [w.id for w in state.workers()] == ["w2"]
    assert state.take_departed() == ["w1"]
    assert state.take_departed() == []


def test_worker_down_of_a_borrowed_worker_owes_the_slot_back(make_state):
    state = make_state(max_workers=1)
    state.add_workers(["own"])
    state.add_borrowed_slot()
    state.add_workers(["lent-to-us"], borrowed=True)
    assert _quota(state) == (2, 0, 1, 1)
    gone = state.worker_down("lent-to-us")
    assert gone.borrowed is True
    assert _quota(state) == (1, 0, 0, 1)
    assert state.stats()["quota"]["owed"] == 1
    assert state.worker_down("lent-to-us").borrowed is False  # twice: owed once
    assert state.take_quota_owed() == 1
    assert state.take_quota_owed() == 0
    state.owe_quota(1)  # the peer could not be reached: owed again
    assert state.take_quota_owed() == 1
    assert state.worker_down("own").borrowed is False
    assert state.stats()["quota"]["owed"] == 0


def test_release_borrowed_slot_after_a_failed_launch(make_state):
    state = make_state(max_workers=1)
    state.add_borrowed_slot()
    state.release_borrowed_slot()
    state.release_borrowed_slot()  # nothing borrowed: ignored
    assert _quota(state) == (1, 0, 0, 1)
    assert state.take_quota_owed() == 1


# ------------------------------------------------------------------ threads
def test_many_threads_lose_and_duplicate_nothing(make_state):
    """Producers enqueue while workers claim, complete, hand back and heartbeat, all at once."""
    state = make_state(max_attempts=1000, results_retention=100_000)
    producers, per_producer, consumers = 4, 500, 6
    total = producers * per_producer
    submitted: list[list[str]] = [[] for _ in range(producers)]
    completions: list[list[str]] = [[] for _ in range(consumers)]
    start = threading.Barrier(producers + consumers)
    producing = threading.Event()
    errors: list[BaseException] = []

    def produce(index: int) -> None:
        try:
            start.wait()
            for i in range(per_producer):
                submitted[index].append(state.submit(f"{index}-{i}".encode(), 1))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def consume(index: int) -> None:
        worker = f"w{index}"
        try:
            start.wait()
            rounds = 0
            while True:
                rounds += 1
                tasks = state.claim(worker, 1 + rounds % 4)
                if not tasks:
                    if not producing.is_set() and state.stats()["queued"] == 0:
                        return
                    continue
                state.heartbeat(worker, [t.id for t in tasks])
                if rounds % 7 == 0:  # hand some back unstarted
                    state.worker_down(worker, returned=[t.id for t in tasks])
                    continue
                accepted = state.complete(worker, [(t.id, t.data.decode()) for t in tasks])
                assert accepted == len(tasks)
                completions[index].extend(t.id for t in tasks)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    producing.set()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    threads += [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads[:producers]:
        thread.join(timeout=60)
    producing.clear()
    for thread in threads[producers:]:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)

    all_submitted = [task_id for ids in submitted for task_id in ids]
    all_completed = [task_id for ids in completions for task_id in ids]
    assert len(set(all_submitted)) == total
    assert len(all_completed) == total and set(all_completed) == set(all_submitted)
    stats = state.stats()
    assert (stats["queued"], stats["running"], stats["completed"], stats["failed"]) == (0, 0, total, 0)
    assert stats["queued_iterations"] == 0
    results = state.newest_results(total + 10)
    assert len(results) == total and {r["id"] for r in results} == set(all_submitted)
    for ids in submitted:  # each result is the body of its own task
        for i, task_id in enumerate(ids[:5]):
            assert state.status(task_id)["result"].endswith(f"-{i}")
