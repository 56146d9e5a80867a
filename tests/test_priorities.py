"""Priorities, not_before, deadlines, purge, results by age: the store with fake clocks, the
journal across a restart, and the query parameters of the enqueue endpoints."""

from __future__ import annotations

import hashlib

import pytest

from nodeapp import create_app
from nodeapp.store.journal import Journal
from nodeapp.store.records import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Submission
from nodeapp.store.tasks import EXPIRED, PURGED, TaskStore
from tests.helpers import Clock, FakeLauncher

AGING = 10.0


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


def make(clock: Clock, **kwargs) -> TaskStore:
    kwargs.setdefault("priority_aging", AGING)
    return TaskStore(monotonic=clock, wall=clock, lease_seconds=30.0, **kwargs)


def item(body: bytes, iterations: int = 1, **options) -> Submission:
    return Submission(body, iterations, hashlib.sha512(body).digest(), **options)


def submit(store: TaskStore, body: bytes, **options) -> str:
    return store.submit_many([item(body, **options)], reuse=False)[0].id


def claimed(store: TaskStore, count: int = 100) -> list[str]:
    return [t.id for t in store.claim("w", count)]


# ------------------------------------------------------------------ priorities
def test_claims_serve_higher_priority_first_then_submission_order(clock):
    store = make(clock)
    ids = {name: submit(store, name.encode(), priority=p) for name, p in
           [("low-1", 0), ("mid", 5), ("high", 9), ("low-2", 0), ("high-2", 9)]}
    assert store.counts().queued_by_priority == {9: 2, 5: 1, 0: 2}
    assert claimed(store) == [ids[n] for n in ("high", "high-2", "mid", "low-1", "low-2")]
    assert store.status(ids["mid"]).priority == 5 and store.status(ids["mid"]).state == RUNNING


def test_aging_bounds_starvation_through_the_store(clock):
    """A priority-0 task is served before any priority-9 task enqueued more than 9 x aging after it."""
    store = make(clock)
    old = submit(store, b"old")
    early, late = [], []
    for step in range(200):
        clock.now += 1.0
        (early if step + 1 < 9 * AGING else late).append(submit(store, f"hi-{step}".encode(), priority=9))
    order = claimed(store, 1000)
    assert order.index(old) == len(early), "served after exactly the tasks enqueued within the bound"
    assert set(order[:len(early)]) == set(early)
    assert store.counts().oldest_wait == 0.0


def test_requeued_after_a_lost_lease_goes_first_whatever_its_priority(clock):
    store = make(clock)
    low = submit(store, b"low")
    assert claimed(store, 1) == [low]
    high = submit(store, b"high", priority=9)
    clock.now += 31  # the lease runs out
    assert store.requeue_expired() == (1, 0)
    assert claimed(store) == [low, high]


def test_a_task_does_not_share_the_run_of_a_lower_priority_or_scheduled_one(clock):
    store = make(clock)
    leader = store.submit_many([item(b"same")])[0].id
    higher = store.submit_many([item(b"same", priority=9)])[0]
    lower = store.submit_many([item(b"same", priority=0)])[0]
    assert higher.reused_from is None and lower.reused_from == leader
    later = store.submit_many([item(b"later", not_before=clock.now + 100)])[0].id
    now = store.submit_many([item(b"later")])[0]
    assert now.reused_from is None, "it would wait for the other's not_before"
    assert set(claimed(store)) == {leader, higher.id, now.id}
    assert store.status(later).state == QUEUED


# ------------------------------------------------------------------ time
def test_not_before_holds_a_task_back_until_its_time(clock):
    store = make(clock)
    later = submit(store, b"later", priority=9, not_before=clock.now + 60)
    now = submit(store, b"now")
    counts = store.counts()
    assert (counts.queued, counts.scheduled) == (1, 1), "a scheduled task is not waiting work for the scaler"
    assert claimed(store) == [now]
    clock.now += 59.9
    assert claimed(store) == []
    clock.now += 0.1
    assert store.counts().queued == 1
    assert claimed(store) == [later]
    assert store.status(later).not_before == 1_000_060.0


def test_a_queued_task_past_its_deadline_is_failed_expired_never_run(clock):
    store = make(clock)
    doomed = submit(store, b"doomed", deadline=clock.now + 5)
    runs = submit(store, b"runs", deadline=clock.now + 5)
    assert claimed(store, 1) == [doomed]  # handed out in time: it runs to the end
    clock.now += 5
    assert claimed(store) == [], "a task at its deadline is never handed out"
    record = store.status(runs)
    assert (record.state, record.reason) == (FAILED, EXPIRED)
    assert store.complete("w", [(doomed, "a" * 128)]) == 1
    counts = store.counts()
    assert (counts.expired, counts.failed, counts.queued) == (1, 1, 0)


def test_upkeep_expires_without_a_claim_and_the_task_sharing_the_run_takes_over(clock):
    store = make(clock)
    leader = store.submit_many([item(b"x", deadline=clock.now + 1)])[0].id
    follower = store.submit_many([item(b"x")])[0]
    assert follower.reused_from == leader
    clock.now += 2
    assert store.upkeep() == (1, 0)
    assert store.status(leader).reason == EXPIRED
    assert store.status(follower.id).state == QUEUED and store.status(follower.id).reused_from is None
    assert claimed(store) == [follower.id]


def test_results_are_dropped_by_age_as_well_as_by_count(clock):
    store = make(clock, results_ttl=100.0, results_retention=1000)
    first = submit(store, b"a")
    claimed(store)
    store.complete("w", [(first, "a" * 128)])
    clock.now += 60
    second = submit(store, b"b")
    cancelled = submit(store, b"c")
    store.cancel(cancelled)
    claimed(store)
    store.complete("w", [(second, "b" * 128)])
    clock.now += 40
    assert store.upkeep() == (0, 1)
    assert store.status(first) is None and store.status(second).state == COMPLETED
    clock.now += 60
    assert store.upkeep() == (0, 2)
    assert store.status(second) is None and store.status(cancelled) is None
    assert store.counts().results_kept == 0 and store.results.completed_after(0, 10) == ([], 2)


# ------------------------------------------------------------------ operator
def test_purge_cancels_every_queued_task_and_leaves_running_ones(clock):
    store = make(clock)
    running = submit(store, b"run")
    assert claimed(store) == [running]
    queued = [submit(store, f"q{i}".encode(), priority=i % 10) for i in range(5)]
    scheduled = submit(store, b"s", not_before=clock.now + 100)
    sharing = store.submit_many([item(b"q1")])[0]
    assert store.purge() == 7
    for task_id in (*queued, scheduled, sharing.id):
        record = store.status(task_id)
        assert (record.state, record.reason) == (CANCELLED, PURGED)
    assert store.status(running).state == RUNNING
    counts = store.counts()
    assert (counts.queued, counts.scheduled, counts.running, counts.cancelled) == (0, 0, 1, 7)
    assert counts.body_bytes == len(b"run")
    assert store.purge() == 0


def test_held_lists_each_workers_leases_with_progress(clock):
    store = make(clock)
    ids = [submit(store, f"t{i}".encode()) for i in range(3)]
    store.claim("w1", 2)
    clock.now += 4
    store.claim("w2", 1)
    held = sorted((w, r.id, since) for w, r, since in store.held())
    assert held == sorted([("w1", ids[0], 1_000_000.0), ("w1", ids[1], 1_000_000.0), ("w2", ids[2], 1_000_004.0)])


# ------------------------------------------------------------------ journal
def test_priority_times_and_owner_survive_a_restart(tmp_path, clock):
    journal = Journal(tmp_path)
    store = make(clock, journal=journal)
    store.restore(journal.load())
    low = store.submit_many([item(b"low", owner="abc")])[0].id
    high = store.submit_many([item(b"high", priority=7, deadline=clock.now + 500)])[0].id
    later = store.submit_many([item(b"later", priority=9, not_before=clock.now + 50)])[0].id
    gone = store.submit_many([item(b"gone", deadline=clock.now + 20)])[0].id
    journal.close()
    clock.now += 30  # down for 30 s: "gone" passed its deadline meanwhile
    journal = Journal(tmp_path)
    store = make(clock, journal=journal)
    store.restore(journal.load())
    assert store.status(low).owner == "abc"
    assert (store.status(high).priority, store.status(high).deadline) == (7, 1_000_500.0)
    assert claimed(store) == [high, low], "the scheduled task still waits; the expired one never runs"
    assert store.status(gone).reason == EXPIRED
    clock.now += 20
    assert claimed(store) == [later]
    journal.close()


# ------------------------------------------------------------------ HTTP
@pytest.fixture
def web():
    app = create_app({"cluster_token": "t", "node_name": "n", "node_url": "http://127.0.0.1:1"},
                     launcher=FakeLauncher())
    return app.test_client()


@pytest.mark.parametrize("query, code", [
    ("priority=10", "bad_priority"), ("priority=-1", "bad_priority"), ("priority=x", "bad_priority"),
    ("not_before=nan", "bad_not_before"), ("countdown=1e3", "bad_not_before"),
    ("countdown=99999999", "bad_not_before"), ("not_before=1&countdown=1", "bad_not_before"),
    ("deadline=1", "bad_deadline"), ("expires_in=0", "bad_deadline"), ("expires_in=9999999999", "bad_deadline"),
    ("countdown=60&expires_in=30", "bad_deadline"), ("deadline=1&expires_in=5", "bad_deadline"),
])
def test_bad_options_are_refused_and_queue_nothing(web, query, code):
    answer = web.put(f"/enqueue?iterations=1&{query}", data=b"x")
    assert answer.status_code == 400 and answer.get_json()["error"] == code, answer.get_json()
    assert web.get("/stats").get_json()["enqueued"] == 0


def test_options_show_in_status_and_stats(web):
    import time

    answer = web.put("/enqueue?iterations=1&priority=7&countdown=60&expires_in=120", data=b"x")
    assert answer.status_code == 201
    task = web.get(f"/status/{answer.get_json()['id']}").get_json()
    assert task["priority"] == 7 and task["state"] == "queued"
    assert time.time() + 55 < task["not_before"] < task["deadline"] < time.time() + 125
    plain = web.put("/enqueue?iterations=1&priority=3", data=b"y").get_json()["id"]
    assert "not_before" not in web.get(f"/status/{plain}").get_json()
    stats = web.get("/stats").get_json()
    assert (stats["queued"], stats["scheduled"], stats["queued_by_priority"]) == (1, 1, {"3": 1})


def test_a_batch_takes_its_priority_from_the_query(web):
    from tmcommon import batchwire

    body = batchwire.encode([(b"a", 1, None), (b"b", 1, None)])
    answer = web.put("/enqueue_batch?priority=9", data=body, headers={"Content-Type": batchwire.CONTENT_TYPE})
    assert answer.status_code == 201
    single = web.put("/enqueue?iterations=1", data=b"c").get_json()["id"]
    tasks = web.post("/claim", json={"worker_id": "w", "max_tasks": 3}, headers={"X-Cluster-Token": "t"}).get_json()
    assert [t["id"] for t in tasks["tasks"]] == [*answer.get_json()["ids"], single]


def test_a_restart_drops_what_aged_past_results_ttl_meanwhile(tmp_path, clock):
    journal = Journal(tmp_path)
    store = make(clock, journal=journal, results_ttl=100.0)
    store.restore(journal.load())
    old, young = submit(store, b"old"), submit(store, b"young")
    assert claimed(store, 1) == [old]
    store.complete("w", [(old, "a" * 128)])
    clock.now += 60
    assert claimed(store, 1) == [young]
    store.complete("w", [(young, "b" * 128)])
    journal.close()
    clock.now += 50  # down meanwhile: "old" is 110 s old, "young" 50 s
    journal = Journal(tmp_path)
    store = make(clock, journal=journal, results_ttl=100.0)
    store.restore(journal.load())
    assert store.status(old) is None and store.status(young).result == "b" * 128
    store.submit(b"next", 1)  # the trim is journaled with the next change
    journal.close()
    journal = Journal(tmp_path)
    assert [t.id for t in journal.load().completed] == [young]
    journal.close()
