"""/metrics histograms: task wait, run and end-to-end times, and request latency by route; figures
of /stats added to it."""

from __future__ import annotations

import hashlib

from prometheus_client.parser import text_string_to_metric_families

from nodeapp import create_app
from nodeapp.store.idempotency import KEY_OVERHEAD
from nodeapp.store.records import Submission
from nodeapp.store.tasks import TaskStore
from tests.conftest import TOKEN
from tests.helpers import Clock, FakeLauncher


class Recorded:
    """A ``TaskTimings`` stand-in that keeps what the store reports."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self.waited = lambda s: self.seen.append(("wait", s))
        self.ran = lambda s: self.seen.append(("run", s))
        self.finished = lambda s: self.seen.append(("latency", s))


def test_the_store_reports_wait_run_and_end_to_end_times():
    clock = Clock()
    store = TaskStore(monotonic=clock, wall=clock, lease_seconds=10)
    store.timings = timings = Recorded()
    task_id = store.submit(b"x", 5)
    clock.now += 3
    store.claim("w1")
    clock.now += 11  # the lease runs out: requeued, claimed again (no second "wait")
    store.requeue_expired()
    clock.now += 1
    store.claim("w2")
    clock.now += 2
    assert store.complete("w2", [(task_id, "ab" * 64)]) == 1
    assert store.complete("w2", [(task_id, "ab" * 64)]) == 0  # a repeated result is not timed again
    assert timings.seen == [("wait", 3), ("run", 2), ("latency", 17)]


def samples(client) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset({"node": "test-node", **labels}.items())), 0.0)


def test_task_histograms_move_when_a_task_is_claimed_and_completed(client, auth):
    before = samples(client)
    task_id = client.put("/enqueue?iterations=1", data=b"body").get_json()["id"]
    client.post("/claim", json={"worker_id": "w1", "max_tasks": 1}, headers=auth)
    middle = samples(client)
    client.post("/complete", json={"worker_id": "w1", "results": [{"id": task_id, "result": "ab" * 64}]},
                headers=auth)
    after = samples(client)
    for name in ("taskmanager_task_wait_seconds", "taskmanager_task_run_seconds", "taskmanager_task_latency_seconds"):
        assert value(before, name + "_count") == 0
        assert value(after, name + "_count") == 1
        assert value(after, name + "_bucket", le="+Inf") == 1
        assert value(after, name + "_bucket", le="7200.0") == 1  # inside the largest finite bucket
        assert value(after, name + "_sum") >= 0
    assert value(middle, "taskmanager_task_wait_seconds_count") == 1
    assert value(middle, "taskmanager_task_run_seconds_count") == 0  # not completed yet


def test_request_latency_by_route_method_and_status(client):
    before = samples(client)
    client.put("/enqueue?iterations=1", data=b"a")
    client.put("/enqueue?iterations=0", data=b"a")  # refused: 400
    client.get("/status/" + "0" * 32)  # the route, not the id, is the label
    client.get("/no/such/page")
    after = samples(client)
    name = "taskmanager_http_request_duration_seconds_count"
    assert value(after, name, endpoint="/enqueue", method="PUT", status="201") == \
        value(before, name, endpoint="/enqueue", method="PUT", status="201") + 1
    assert value(after, name, endpoint="/enqueue", method="PUT", status="400") == 1
    assert value(after, name, endpoint="/status/<task_id>", method="GET", status="404") == 1
    assert value(after, name, endpoint="(no route)", method="GET", status="404") == 1
    assert value(after, "taskmanager_http_request_duration_seconds_bucket", endpoint="/enqueue", method="PUT",
                 status="201", le="+Inf") >= 1
    assert not any("0" * 32 in str(labels) for _, labels in after)  # no label per task id


def test_request_labels_come_from_a_closed_set(client):
    """Made-up methods and paths add no series: an unknown method is counted as ``other``."""
    for n in range(300):
        client.open(f"/nothing/{n}", method=f"M{n}X")
        client.open("/enqueue", method=f"BREW{n}")
    after = samples(client)
    methods = {dict(labels)["method"] for name, labels in after
               if name == "taskmanager_http_request_duration_seconds_count"}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}
    name = "taskmanager_http_request_duration_seconds_count"
    assert sum(v for (n, labels), v in after.items() if n == name and dict(labels)["method"] == "other") == 600
    series = [key for key in after if key[0].startswith("taskmanager_http_request_duration_seconds")]
    assert len(series) < 100  # 600 odd requests: a handful of series, not one set per method


def test_queue_by_priority_scheduled_expired_and_a_paused_intake_are_exported(client, auth):
    for priority in (9, 9, 3):
        client.put(f"/enqueue?iterations=1&priority={priority}&reuse=0", data=b"x")
    client.put("/enqueue?iterations=1&countdown=600", data=b"later")
    client.post("/pause", headers=auth)
    samples = {(s.name, s.labels.get("priority")): s.value
               for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in family.samples}
    assert samples[("taskmanager_queued_tasks_by_priority", "9")] == 2
    assert samples[("taskmanager_queued_tasks_by_priority", "3")] == 1
    assert samples[("taskmanager_scheduled_tasks", None)] == 1
    assert samples[("taskmanager_tasks_expired_total", None)] == 0
    assert samples[("taskmanager_intake_paused", None)] == 1


def test_tasks_waiting_on_the_peer_and_the_idempotency_keys_are_exported():
    """The /stats figures ``waiting_on_peer`` and ``idempotency_keys`` after a known state: two
    tasks wait for the peer's runs, and two keys more than ``IDEMPOTENCY_KEYS_BYTES`` holds."""
    limit = 1024 * 1024
    app = create_app({"cluster_token": TOKEN, "node_name": "test-node", "idempotency_keys_bytes": limit},
                     launcher=FakeLauncher())
    tasks, client = app.extensions["nodeapp"].node.tasks, app.test_client()
    cost = 255 + KEY_OVERHEAD
    fit = limit // cost
    bodies = [b"%d" % n for n in range(fit + 2)]
    tasks.submit_many([Submission(body, 1, hashlib.sha512(body).digest(), key=f"{n:0255d}")
                       for n, body in enumerate(bodies)])
    for body, peer_id in ((b"peer 1", "p1"), (b"peer 2", "p2")):
        digest = hashlib.sha512(body).digest()
        tasks.submit_many([Submission(body, 5, digest)], peer_runs={(digest, 5): peer_id})
    found = samples(client)
    assert value(found, "taskmanager_tasks_waiting_on_peer") == 2
    assert value(found, "taskmanager_idempotency_keys_kept") == fit
    assert value(found, "taskmanager_idempotency_keys_bytes") == fit * cost
    assert value(found, "taskmanager_idempotency_keys_max_bytes") == limit
    assert value(found, "taskmanager_idempotency_keys_dropped_total") == 2
    assert client.get("/stats").get_json()["waiting_on_peer"] == 2  # the figures /stats shows
