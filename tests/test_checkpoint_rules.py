"""Which checkpoints a node keeps (``nodeapp/store/checkpoints.py``), in the store and through the API."""

from __future__ import annotations

import pytest

from nodeapp.store.checkpoints import Checkpoint
from nodeapp.store.tasks import TaskStore
from tests.digests import sha512_chain as compute
from tests.helpers import Clock

DIGEST = "ab" * 64


@pytest.fixture
def clock():
    return Clock(100.0)


@pytest.fixture
def store(clock):
    return TaskStore(lease_seconds=10, max_attempts=3, monotonic=clock, wall=clock)


def leased(store, worker="w1", iterations=1000):
    task_id = store.submit(b"data", iterations)
    (task,) = store.claim(worker)
    return task_id, task


def test_the_holders_checkpoints_move_forward_only_and_never_reach_the_end(store):
    task_id, task = leased(store)
    assert task.checkpoint is None and store.status(task_id).done == 0
    for done, kept in [(300, 300), (200, 300), (300, 300), (999, 999), (1000, 999), (0, 999), (999, 999)]:
        store.heartbeat("w1", [task_id], {task_id: Checkpoint(done, f"{done:0128x}")})
        assert store.status(task_id).done == kept
    counts = store.counts()
    # refused: backwards (200, 0) and at the end (1000); the holder's repeats of the kept one
    # (300, 999: a heartbeat carries it again while the chain has not moved) are no refusal
    assert (counts.checkpoints_accepted, counts.checkpoints_refused) == (2, 3)


def test_a_checkpoint_from_anyone_but_the_lease_holder_is_ignored(store, clock):
    task_id, _ = leased(store, "w1")
    store.heartbeat("w2", [task_id], {task_id: Checkpoint(500, DIGEST)})
    assert store.status(task_id).done == 0
    clock.now += 11  # w1's lease runs out; w2 gets the task; w1's late heartbeat changes nothing
    store.requeue_expired()
    (again,) = store.claim("w2")
    store.heartbeat("w1", [task_id], {task_id: Checkpoint(600, DIGEST)})
    assert store.status(task_id).done == 0 and store.counts().checkpoints_refused == 2


def test_a_lost_lease_requeues_with_the_checkpoint_and_the_result_is_marked(store, clock):
    task_id, _ = leased(store, "w1")
    store.heartbeat("w1", [task_id], {task_id: Checkpoint(400, DIGEST)})
    clock.now += 11
    assert store.requeue_expired() == (1, 0)
    queued = store.status(task_id)
    assert (queued.state, queued.done, queued.attempts) == ("queued", 400, 1)
    (task,) = store.claim("w2")
    assert task.checkpoint == Checkpoint(400, DIGEST)
    store.heartbeat("w2", [task_id], {task_id: Checkpoint(700, DIGEST)})  # w2 goes on from there
    assert store.complete("w2", [(task_id, "cd" * 64)]) == 1
    record = store.status(task_id)
    assert (record.state, record.resumed_from, record.done) == ("completed", 400, None)


def test_a_handed_back_task_keeps_its_checkpoint_and_costs_no_attempt(store):
    task_id, _ = leased(store, "w1")
    assert store.release("w1", [task_id], {task_id: Checkpoint(250, DIGEST)}) == (1, 0)
    record = store.status(task_id)
    assert (record.state, record.done, record.attempts) == ("queued", 250, 0)


def test_an_uninterrupted_result_is_not_marked(store):
    task_id, _ = leased(store, "w1")
    store.heartbeat("w1", [task_id], {task_id: Checkpoint(500, DIGEST)})
    store.complete("w1", [(task_id, "cd" * 64)])
    assert store.status(task_id).resumed_from is None


# ------------------------------------------------------------------- API
def test_api_carries_checkpoints_and_progress(client, auth):
    task_id = client.put("/enqueue?iterations=1000", data=b"body").get_json()["id"]
    (task,) = client.post("/claim", json={"worker_id": "w1"}, headers=auth).get_json()["tasks"]
    assert "checkpoint" not in task
    digest = compute(b"body", 600)
    reply = client.post("/heartbeat", headers=auth, json={
        "worker_id": "w1", "task_ids": [task_id], "checkpoints": [{"id": task_id, "done": 600, "digest": digest}]})
    assert reply.status_code == 200 and reply.get_json()["renewed"] == 1
    shown = client.get(f"/status/{task_id}").get_json()
    assert (shown["state"], shown["done"], shown["iterations"]) == ("running", 600, 1000)
    client.post("/worker_down/w1", headers=auth, json={"returned": [task_id]})
    (task,) = client.post("/claim", json={"worker_id": "w2"}, headers=auth).get_json()["tasks"]
    assert task["checkpoint"] == {"done": 600, "digest": digest}
    client.post("/complete", headers=auth, json={"worker_id": "w2", "results": [
        {"id": task_id, "result": compute(b"body", 1000)}]})
    shown = client.get(f"/status/{task_id}").get_json()
    assert shown["resumed_from"] == 600 and "done" not in shown
    assert client.get("/stats").get_json()["checkpoints"] == {"accepted": 1, "refused": 0}


@pytest.mark.parametrize("checkpoints", [
    {"not": "a list"},
    [{"id": "x", "done": "600", "digest": DIGEST}],
    [{"id": "x", "done": 600, "digest": "AB" * 64}],
    [{"id": "x", "done": 600, "digest": "ab" * 63}],
    [{"id": "x", "done": True, "digest": DIGEST}],
])
def test_a_malformed_checkpoint_is_a_400_that_changes_nothing(client, auth, checkpoints):
    task_id = client.put("/enqueue?iterations=1000", data=b"body").get_json()["id"]
    client.post("/claim", json={"worker_id": "w1"}, headers=auth)
    for path, body in (("/heartbeat", {"worker_id": "w1", "task_ids": [task_id]}),
                       ("/worker_down/w1", {"returned": [task_id]})):
        reply = client.post(path, headers=auth, json={**body, "checkpoints": checkpoints})
        assert reply.status_code == 400 and reply.get_json()["error"] == "bad_request"
        assert client.get(f"/status/{task_id}").get_json()["state"] == "running"  # not released either


def test_stats_and_dashboard_list_long_tasks_in_progress(client, auth):
    task_id = client.put("/enqueue?iterations=1000", data=b"body").get_json()["id"]
    client.put("/enqueue?iterations=500", data=b"short")
    client.post("/claim", json={"worker_id": "w1", "max_tasks": 2}, headers=auth)
    client.post("/heartbeat", headers=auth, json={"worker_id": "w1", "task_ids": [task_id], "checkpoints": [
        {"id": task_id, "done": 250, "digest": DIGEST}]})
    # without the id, which is what it takes to cancel the task (tests/test_capabilities.py)
    assert client.get("/stats").get_json()["in_progress"] == [{"done": 250, "iterations": 1000}]
    (shown,) = client.get("/dashboard/data").get_json()["in_progress"]
    assert shown == {"node": "test-node", "done": 250, "iterations": 1000, "percent": 25.0}
    page = client.get("/").get_data(as_text=True)
    assert 'id="progress"' in page
