"""MAX_QUEUED_BYTES: the bodies a node holds are bounded; a body that would exceed it gets 503."""

from __future__ import annotations

import pytest

from nodeapp.store.tasks import TaskStore
from nodeapp.store.records import QueueFull
from tests.conftest import TOKEN
from tests.helpers import Clock
from tests.test_api import assert_error, claim, complete, enqueue, make_client, snapshot, RESULT


@pytest.fixture
def store() -> TaskStore:
    clock = Clock()
    return TaskStore(max_queued_bytes=100, lease_seconds=10, max_attempts=1, monotonic=clock, wall=clock)


def test_bodies_of_queued_and_running_tasks_count_until_they_finish(store):
    first = store.submit(b"a" * 60, 1)
    store.submit(b"b" * 40, 1)  # exactly at the limit: accepted
    assert store.counts().body_bytes == 100
    with pytest.raises(QueueFull, match="MAX_QUEUED_BYTES=100"):
        store.submit(b"c", 1)
    store.submit(b"", 1)  # an empty body never exceeds it
    [leased] = store.claim("w1", 1)
    assert leased.id == first
    with pytest.raises(QueueFull):  # a running task still holds its body
        store.submit(b"c", 1)
    assert store.complete("w1", [(first, "r")]) == 1
    assert store.counts().body_bytes == 40
    store.submit(b"d" * 60, 1)
    counts = store.counts()
    assert (counts.body_bytes, counts.rejected_full, counts.enqueued) == (100, 2, 4)


def test_a_failed_task_gives_its_bytes_back(store):
    store.submit(b"a" * 100, 1)
    store.claim("w1", 1)
    assert store.release("w1") == (0, 1)  # max_attempts=1: failed
    assert store.counts().body_bytes == 0
    store.submit(b"b" * 100, 1)


def test_a_requeued_task_keeps_its_bytes(store):
    task_id = store.submit(b"a" * 100, 1)
    store.claim("w1", 1)
    assert store.release("w1", returned=[task_id]) == (1, 0)  # handed back unstarted: requeued
    assert store.counts().body_bytes == 100
    with pytest.raises(QueueFull):
        store.submit(b"b", 1)


def test_enqueue_past_max_queued_bytes_answers_503_and_changes_nothing():
    auth = {"X-Cluster-Token": TOKEN}
    client = make_client(max_queued_bytes=1000)
    ids = [enqueue(client, b"x" * 600)]
    before = snapshot(client, ids)
    assert before[0]["body_bytes"] == 600
    response = client.put("/enqueue?iterations=1", data=b"y" * 401)
    body = assert_error(response, 503, "queue_full")
    assert "MAX_QUEUED_BYTES=1000" in body["message"] and "601" not in body["message"]
    assert int(response.headers["Retry-After"]) >= 1
    stats, statuses = snapshot(client, ids)
    assert stats["rejected_queue_full"] == before[0]["rejected_queue_full"] + 1
    assert (stats["enqueued"], stats["queued"], stats["body_bytes"], statuses) == (1, 1, 600, before[1])
    assert client.put("/enqueue?iterations=1", data=b"y" * 400).status_code == 201  # fits exactly
    [task, _] = claim(client, auth, "w1", 2)
    assert complete(client, auth, "w1", [(task["id"], RESULT)]) == 1
    assert client.get("/stats").get_json()["body_bytes"] == 400
    assert client.put("/enqueue?iterations=1", data=b"y" * 600).status_code == 201


def test_the_default_fits_a_one_gib_node():
    from nodeapp.config import NodeConfig

    config = NodeConfig.load({})
    assert config.max_queued_bytes == 256 * 1024**2
    assert "taskmanager_body_bytes" in make_client().get("/metrics").get_data(as_text=True)
