"""TaskStore beyond SPEC's core: idempotency keys, identical tasks done once, cancel, retry, and
completions numbered for ``GET /results``; driven directly with a fake clock."""

from __future__ import annotations

import hashlib

import pytest

from nodeapp.store.results import CompletionLog
from nodeapp.store.idempotency import KeyEntry
from nodeapp.store.tasks import TaskStore
from nodeapp.store.records import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, KeyMismatch, QueueFull, Submission, WrongState
from tests.helpers import Clock

RESULT = "ab" * 64


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def store(clock) -> TaskStore:
    return TaskStore(lease_seconds=10.0, max_attempts=2, idempotency_seconds=60.0, monotonic=clock, wall=clock)


def item(body: bytes, iterations: int = 1, key: str | None = None) -> Submission:
    return Submission(body, iterations, hashlib.sha512(body).digest(), key)


def submit(store: TaskStore, body: bytes, iterations: int = 1, key: str | None = None, reuse: bool = True):
    [done] = store.submit_many([item(body, iterations, key)], reuse=reuse)
    return done


def run(store: TaskStore, worker: str = "w1", result: str = RESULT) -> list[str]:
    """A worker claims everything queued and completes it."""
    ids = [t.id for t in store.claim(worker, 1000)]
    assert store.complete(worker, [(i, result) for i in ids]) == len(ids)
    return ids


# ------------------------------------------------------------------ idempotency keys
def test_a_known_key_returns_the_first_id_and_queues_nothing(store, clock):
    first = submit(store, b"body", key="k-1")
    again = submit(store, b"body", key="k-1")
    assert (again.id, again.replayed, first.replayed) == (first.id, True, False)
    assert store.counts().queued == 1 and store.counts().replayed == 1
    clock.now += 61  # past IDEMPOTENCY_SECONDS: the key is forgotten
    assert submit(store, b"body", key="k-1", reuse=False).id != first.id


def test_a_known_key_with_another_body_or_iterations_is_refused_and_queues_nothing(store):
    submit(store, b"body", 5, key="k")
    before = store.counts()
    for body, iterations in ((b"other", 5), (b"body", 6)):
        with pytest.raises(KeyMismatch) as refused:
            store.submit_many([item(b"new", 1), item(body, iterations, "k")])
        assert refused.value.index == 1
    assert store.counts() == before


def test_the_peers_keys_count_as_known(store):
    entry = KeyEntry("f" * 32, 1, hashlib.sha512(b"x").digest())
    done = store.submit_many([item(b"x", 1, "k")], peer_keys={"k": entry})
    assert done[0].id == "f" * 32 and done[0].replayed and store.counts().queued == 0


def test_a_key_repeated_inside_one_batch_is_one_task(store):
    done = store.submit_many([item(b"a", 1, "k"), item(b"a", 1, "k")], reuse=False)
    assert done[0].id == done[1].id and done[1].replayed and store.counts().queued == 1


# ------------------------------------------------------------------ identical tasks done once
def test_a_duplicate_of_a_kept_result_completes_at_once_without_a_worker(store):
    original = submit(store, b"same", 7).id
    run(store)
    dup = submit(store, b"same", 7)
    record = store.status(dup.id)
    assert (dup.reused_from, record.state, record.result, record.reused_from) == (original, COMPLETED, RESULT, original)
    assert store.counts().queued == 0 and store.counts().reused == 1
    assert submit(store, b"same", 8).reused_from is None  # other iterations: other work
    assert submit(store, b"same", 7, reuse=False).reused_from is None  # opt-out


def test_a_duplicate_of_a_queued_task_shares_its_run(store):
    leader = submit(store, b"same", 3).id
    follower = submit(store, b"same", 3)
    assert follower.reused_from == leader and store.counts().queued == 1
    assert store.status(follower.id).state == QUEUED
    [claimed] = store.claim("w1", 10)
    assert claimed.id == leader and store.status(follower.id).state == RUNNING
    store.complete("w1", [(leader, RESULT)])
    record = store.status(follower.id)
    assert (record.state, record.result, record.reused_from) == (COMPLETED, RESULT, leader)
    assert [r.id for r in store.results.newest_completed(5)] == [follower.id, leader]


def test_duplicates_inside_one_batch_share_one_run(store):
    done = store.submit_many([item(b"d"), item(b"d"), item(b"e"), item(b"d")])
    assert [d.reused_from for d in done] == [None, done[0].id, None, done[0].id]
    assert store.counts().queued == 2


def test_the_peers_kept_result_is_reused(store):
    digest = hashlib.sha512(b"p").digest()
    [done] = store.submit_many([item(b"p", 4)], peer_results={(digest, 4): ("e" * 32, RESULT)})
    assert done.reused_from == "e" * 32 and store.status(done.id).result == RESULT


def test_shared_runs_count_against_max_queued_but_hold_no_second_body(clock):
    store = TaskStore(max_queued=2, max_queued_bytes=3, monotonic=clock, wall=clock)
    submit(store, b"one")
    assert submit(store, b"one").reused_from is not None  # within MAX_QUEUED_BYTES: no second copy
    assert store.counts().body_bytes == 3
    with pytest.raises(QueueFull):
        submit(store, b"one")  # a third waiting task: past MAX_QUEUED
    run(store)
    assert store.counts().reused == 1 and store.counts().queued == 0


def test_cancelling_a_leader_hands_its_run_to_the_first_follower(store):
    leader, f1, f2 = (submit(store, b"s").id for _ in range(3))
    store.cancel(leader)
    assert store.status(f1).state == QUEUED and store.status(f1).reused_from is None
    assert store.status(f2).reused_from == f1
    assert [t.id for t in store.claim("w1", 10)] == [f1]
    store.complete("w1", [(f1, RESULT)])
    assert store.status(f2).state == COMPLETED and store.status(leader).state == CANCELLED


def test_followers_fail_with_their_leader(store, clock):
    leader, follower = (submit(store, b"s").id for _ in range(2))
    for _ in range(2):  # MAX_ATTEMPTS=2 lost leases
        store.claim("w1", 1)
        clock.now += 11
        store.requeue_expired()
    record = store.status(follower)
    assert store.status(leader).state == FAILED and record.state == FAILED and leader in record.reason
    assert submit(store, b"s").reused_from is None  # a failed run is not reused


# ------------------------------------------------------------------ cancel and retry
def test_cancel_a_queued_task(store):
    a, b = submit(store, b"a").id, submit(store, b"b").id
    record = store.cancel(a)
    assert (record.state, record.reason) == (CANCELLED, "cancelled by a client")
    assert store.cancel(a).state == CANCELLED  # again: no error, no change
    assert [t.id for t in store.claim("w1", 10)] == [b]
    counts = store.counts()
    assert (counts.queued, counts.cancelled, counts.body_bytes) == (0, 1, 1)


def test_cancel_a_running_task_stops_its_worker_and_ignores_its_result(store):
    task_id = submit(store, b"long", 10**6).id
    store.claim("w1", 1)
    assert store.stopped("w1", [task_id]) == []
    store.cancel(task_id)
    assert store.stopped("w1", [task_id]) == [task_id]
    assert store.complete("w1", [(task_id, RESULT)]) == 0
    assert store.status(task_id).state == CANCELLED and store.results.newest_completed(5) == []
    assert store.counts().running == 0 and store.counts().body_bytes == 0


def test_cancel_refuses_an_ended_task_and_ignores_an_unknown_one(store):
    task_id = submit(store, b"x").id
    run(store)
    with pytest.raises(WrongState) as refused:
        store.cancel(task_id)
    assert refused.value.record.state == COMPLETED
    assert store.cancel("0" * 32) is None


def test_retry_queues_a_cancelled_or_failed_task_again_under_its_id(store, clock):
    cancelled, failing = submit(store, b"c", 2).id, submit(store, b"f", 3).id
    store.cancel(cancelled)
    for _ in range(2):
        store.claim("w1", 1)
        clock.now += 11
        store.requeue_expired()
    assert store.status(failing).state == FAILED
    for task_id in (cancelled, failing):
        record = store.retry(task_id)
        assert (record.id, record.state, record.attempts) == (task_id, QUEUED, 0)
    claimed = {t.id: (t.data, t.iterations) for t in store.claim("w1", 10)}
    assert claimed == {cancelled: (b"c", 2), failing: (b"f", 3)}
    assert store.counts().retried == 2


def test_retry_refuses_a_live_or_completed_task(store):
    queued = submit(store, b"q").id
    with pytest.raises(WrongState):
        store.retry(queued)
    done = submit(store, b"d").id
    store.cancel(queued)
    run(store)
    with pytest.raises(WrongState):
        store.retry(done)
    assert store.retry("0" * 32) is None


def test_retry_reuses_an_identical_result(store):
    a = submit(store, b"same").id
    store.cancel(a)
    twin = submit(store, b"same").id
    run(store)
    record = store.retry(a)
    assert (record.state, record.reused_from) == (COMPLETED, twin)


# ------------------------------------------------------------------ completions by number
def test_completions_are_numbered_in_order_and_read_after_a_number(store):
    ids = [submit(store, b"%d" % i).id for i in range(5)]
    run(store)
    first, missed = store.results.completed_after(0, 2)
    assert [(n, r.id) for n, r in first] == [(1, ids[0]), (2, ids[1])] and missed == 0
    rest, _ = store.results.completed_after(2, 10)
    assert [r.id for _, r in rest] == ids[2:]
    assert store.results.completed_after(5, 10) == ([], 0)


def test_completions_dropped_past_retention_are_counted_as_missed(clock):
    store = TaskStore(results_retention=3, monotonic=clock, wall=clock)
    ids = [store.submit(b"%d" % i, 1) for i in range(5)]
    run(store)
    kept, missed = store.results.completed_after(0, 10)
    assert [r.id for _, r in kept] == ids[2:] and missed == 2


def test_completion_log_compacts_and_keeps_answering():
    log: CompletionLog[int] = CompletionLog()
    for value in range(5000):
        log.append(value)
        log.keep_newest(100)
    assert len(log) == 100
    page, missed = log.after(4950, 10)
    assert page == [(4951 + i, 4950 + i) for i in range(10)] and missed == 0
    assert log.after(0, 1) == ([(4901, 4900)], 4900)


def test_a_cursor_goes_on_across_a_restart_on_the_same_journal(tmp_path, clock):
    from nodeapp.store.journal import Journal

    def reopen() -> tuple[TaskStore, Journal]:
        journal = Journal(tmp_path, sync="off")
        store = TaskStore(results_retention=3, journal=journal, monotonic=clock, wall=clock)
        store.restore(journal.load())
        return store, journal

    store, journal = reopen()
    for i in range(5):
        store.submit(b"%d" % i, 1)
    run(store)
    page, missed = store.results.completed_after(0, 10)
    assert [n for n, _ in page] == [3, 4, 5] and missed == 2  # RESULTS_RETENTION=3 kept the newest
    epoch = store.epoch
    journal.close()

    store, journal = reopen()
    assert store.epoch == epoch
    assert store.results.completed_after(5, 10) == ([], 0)  # nothing twice
    assert [r.id for _, r in store.results.completed_after(4, 10)[0]] == [page[-1][1].id]
    new = [store.submit(b"new %d" % i, 1) for i in range(2)]
    run(store)
    after, missed = store.results.completed_after(5, 10)
    assert [r.id for _, r in after] == new and missed == 0  # nothing missed
    journal.close()


def test_what_the_peer_knows_is_read_back_and_malformed_parts_are_left_out():
    from nodeapp.web.enqueueing import _peer_answer, lookup_answer

    digest = hashlib.sha512(b"x").digest()
    entry = KeyEntry("a" * 32, 3, digest)
    answer = lookup_answer({"k": entry}, {(digest, 3): ("b" * 32, RESULT)})
    assert _peer_answer(answer, ["k"]) == ({"k": entry}, {(digest, 3): ("b" * 32, RESULT)})
    for broken in ({"keys": ["k"], "results": {"x": 1}}, {"keys": {"k": {"id": 1}}, "results": [["zz", 1, "c", RESULT]]},
                   {"results": [[digest.hex(), 3, "c", "not a digest"]]}, {}):
        assert _peer_answer(broken, ["k"]) == ({}, {})
