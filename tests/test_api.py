"""Every endpoint and error case of SPEC.md through the Flask test client."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time

import pytest

from nodeapp import create_app
from nodeapp.web import bodies
from provisioning.local_cluster import free_port
from tests.conftest import TOKEN
from tests.helpers import FakeLauncher

INTERNAL = [  # (method, path, a body that would change something if it were accepted)
    ("POST", "/worker_down/w1", {"instance_id": "w1"}),
    ("GET", "/try_get_node_quota", None),
    ("POST", "/return_quota", None),
    ("POST", "/renew_quota", {"loans": ["ab12"]}),
    ("POST", "/claim", {"worker_id": "w1", "max_tasks": 5}),
    ("POST", "/complete", {"worker_id": "w1", "results": []}),  # filled with real ids in the test
    ("POST", "/heartbeat", {"worker_id": "w1", "task_ids": []}),
    ("POST", "/configure", {"max_workers": 9, "peer_url": "http://127.0.0.1:9"}),
]


#: A well-formed result (128 lowercase hex characters) where its value does not matter.
RESULT = "ab" * 64


def make_client(**settings):
    settings = {"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1",
                "verify_iterations": 0, **settings}  # made-up digests (RESULT): no spot-checks
    return create_app(settings, launcher=FakeLauncher()).test_client()


def sha512_result(body: bytes, iterations: int) -> str:
    digest = hashlib.sha512(body).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest).digest()
    return digest.hex()


def enqueue(client, body: bytes | None = None, iterations: int = 1) -> str:
    """Queue one task; without ``body`` a new random one, so no two tasks are identical (reuse)."""
    body = os.urandom(16) if body is None else body
    response = client.put(f"/enqueue?iterations={iterations}", data=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def claim(client, auth, worker: str = "w1", max_tasks: int = 10) -> list[dict]:
    response = client.post("/claim", json={"worker_id": worker, "max_tasks": max_tasks}, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["tasks"]


def complete(client, auth, worker: str, results: list[tuple[str, str]]) -> int:
    response = client.post("/complete", headers=auth,
                           json={"worker_id": worker, "results": [{"id": i, "result": r} for i, r in results]})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["accepted"]


def snapshot(client, ids: list[str] = ()) -> tuple:
    """What a client can see of the node's state: /stats and the status of some tasks."""
    stats = client.get("/stats").get_json()
    return stats, [client.get(f"/status/{i}").get_json() for i in ids]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"].strip()
    assert "<" not in body["message"] and "Traceback" not in body["message"]
    return body


@pytest.fixture
def populated(client, auth):
    """A node with 2 completed, 1 running and 2 queued tasks."""
    ids = [enqueue(client, f"b{i}".encode()) for i in range(5)]
    tasks = claim(client, auth, "w1", 3)
    assert complete(client, auth, "w1", [(t["id"], RESULT) for t in tasks[:2]]) == 2
    return ids


class CountingStream:
    """A request body source that counts what the handler reads (``size`` None = endless)."""

    def __init__(self, size: int | None) -> None:
        self.size, self.read_bytes = size, 0

    def read(self, n: int = -1) -> bytes:
        left = (1 << 62) if self.size is None else self.size - self.read_bytes
        n = left if n is None or n < 0 else min(n, left)
        self.read_bytes += n
        return b"a" * n

    def readline(self, *args) -> bytes:
        return self.read(*args)

    def close(self) -> None:
        pass


# ================================================================== enqueue
def test_enqueue_returns_an_id_and_queues_the_raw_body(client, auth):
    bodies = [b"", b"\x00\xff\x10binary", b"a=b&c=d"]
    ids = [enqueue(client, body, 3) for body in bodies[:2]]
    form = client.put("/enqueue?iterations=3", data=bodies[2], content_type="application/x-www-form-urlencoded")
    assert form.status_code == 201
    ids.append(form.get_json()["id"])
    assert len(set(ids)) == 3 and all(isinstance(i, str) and i for i in ids)
    status = client.get(f"/status/{ids[0]}").get_json()
    assert status["state"] == "queued" and status["iterations"] == 3 and status["id"] == ids[0]
    assert abs(status["enqueued_at"] - time.time()) < 60
    tasks = claim(client, auth)
    assert [t["id"] for t in tasks] == ids
    assert [base64.b64decode(t["data"]) for t in tasks] == bodies
    assert [t["iterations"] for t in tasks] == [3, 3, 3]


@pytest.mark.parametrize("query", [
    "", "?iterations=", "?iterations=0", "?iterations=-1", "?iterations=abc", "?iterations=1.5",
    "?iterations=+3", "?iterations=%203", "?iterations=1e3", "?iterations=0x10", "?iterations=10000001",
    "?iterations=" + "9" * 30, "?iterations=%D9%A3", "?top=3",
])
def test_enqueue_bad_iterations(client, query):
    before = snapshot(client)
    assert_error(client.put("/enqueue" + query, data=b"x"), 400, "bad_iterations")
    assert snapshot(client) == before


def test_enqueue_iterations_range_edges():
    client = make_client(max_iterations=50)
    assert client.put("/enqueue?iterations=1").status_code == 201
    assert client.put("/enqueue?iterations=50").status_code == 201
    body = assert_error(client.put("/enqueue?iterations=51"), 400, "bad_iterations")
    assert "50" in body["message"]


def test_body_at_the_limit_is_accepted_one_more_byte_is_not():
    client = make_client(max_body_bytes=100)
    assert client.put("/enqueue?iterations=1", data=b"a" * 100).status_code == 201
    before = snapshot(client)
    body = assert_error(client.put("/enqueue?iterations=1", data=b"a" * 101), 413, "body_too_large")
    assert "100" in body["message"]
    assert snapshot(client) == before


def test_oversized_content_length_is_refused_before_reading_the_body():
    client = make_client(max_body_bytes=1000)
    stream = CountingStream(10_000_000)
    before = snapshot(client)
    response = client.put("/enqueue?iterations=1",
                          environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": "10000000"})
    assert_error(response, 413, "body_too_large")
    assert stream.read_bytes == 0
    assert snapshot(client) == before


@pytest.mark.parametrize("limit", [0, 1000, 200_000])
def test_oversized_chunked_body_is_refused_after_limit_plus_one_chunk(limit):
    client = make_client(max_body_bytes=limit)
    stream = CountingStream(None)  # endless: reading it all would never finish
    before = snapshot(client)
    response = client.put("/enqueue?iterations=1", headers={"Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True})
    assert_error(response, 413, "body_too_large")
    assert limit < stream.read_bytes <= limit + bodies.READ_CHUNK
    assert snapshot(client) == before


def test_chunked_body_within_the_limit_is_queued_exactly(auth):
    client = make_client(max_body_bytes=150_000)
    stream = CountingStream(150_000)
    response = client.put("/enqueue?iterations=2", headers={"Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True})
    assert response.status_code == 201
    [task] = claim(client, auth)
    assert base64.b64decode(task["data"]) == b"a" * 150_000


def test_queue_full_answers_503_with_retry_after_and_changes_nothing(auth):
    client = make_client(max_queued=2)
    ids = [enqueue(client), enqueue(client)]
    before_stats, before_status = snapshot(client, ids)
    response = client.put("/enqueue?iterations=1", data=b"x")
    body = assert_error(response, 503, "queue_full")
    assert "MAX_QUEUED" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1
    after_stats, after_status = snapshot(client, ids)
    assert after_status == before_status
    assert after_stats["rejected_queue_full"] == before_stats["rejected_queue_full"] + 1  # a metric only
    after_stats["rejected_queue_full"] = before_stats["rejected_queue_full"]
    assert after_stats == before_stats
    claim(client, auth, "w1", 1)  # a claimed task frees a queue place
    assert client.put("/enqueue?iterations=1").status_code == 201


def test_enqueue_while_draining_answers_503(app, client):
    app.extensions["nodeapp"].node.tasks.start_draining()
    response = client.put("/enqueue?iterations=1", data=b"x")
    assert_error(response, 503, "shutting_down")
    assert int(response.headers["Retry-After"]) >= 1
    assert client.get("/stats").get_json()["queued"] == 0
    assert client.get("/health").get_json()["draining"] is True


# ================================================================== pullCompleted
@pytest.mark.parametrize("query", ["", "?top=", "?top=0", "?top=-2", "?top=x", "?top=2.0", "?iterations=2"])
def test_pull_completed_bad_top(client, populated, query):
    before = snapshot(client, populated)
    assert_error(client.post("/pullCompleted" + query), 400, "bad_top")
    assert snapshot(client, populated) == before


def test_pull_completed_newest_first_at_most_top_and_not_consuming(client, auth):
    assert client.post("/pullCompleted?top=5").get_json() == []
    bodies = [f"task {i}".encode() for i in range(4)]
    ids = [enqueue(client, body, 2) for body in bodies]
    for task in claim(client, auth):  # one completion per call, so completed_at grows
        index = ids.index(task["id"])
        assert complete(client, auth, "w1", [(task["id"], sha512_result(bodies[index], 2))]) == 1
    response = client.post("/pullCompleted?top=10")
    assert response.status_code == 200 and "X-Peer-Unavailable" not in response.headers
    results = response.get_json()
    assert [r["id"] for r in results] == ids[::-1]
    assert all(set(r) == {"id", "result", "iterations", "completed_at"} for r in results)
    assert results[0]["result"] == sha512_result(bodies[3], 2) and results[0]["iterations"] == 2
    assert [r["completed_at"] for r in results] == sorted((r["completed_at"] for r in results), reverse=True)
    assert client.post("/pullCompleted?top=2").get_json() == results[:2]
    assert client.post("/pullCompleted?top=10").get_json() == results  # not consumed
    assert client.get(f"/status/{ids[0]}").get_json()["result"] == sha512_result(bodies[0], 2)


def test_pull_completed_keeps_only_results_retention(auth):
    client = make_client(results_retention=2)
    ids = [enqueue(client) for _ in range(3)]
    claim(client, auth)
    for task_id in ids:
        complete(client, auth, "w1", [(task_id, RESULT)])
    assert [r["id"] for r in client.post("/pullCompleted?top=10").get_json()] == ids[:0:-1]
    assert_error(client.get(f"/status/{ids[0]}"), 404, "unknown_task")


# ================================================================== status
def test_status_in_every_state(auth):
    client = make_client(max_attempts=1)
    lost, running, completed, queued = (enqueue(client, iterations=i) for i in (1, 2, 3, 4))
    assert [t["id"] for t in claim(client, auth, "w1", 1)] == [lost]
    client.post("/worker_down/w1", headers=auth)  # its one attempt is gone: failed
    assert [t["id"] for t in claim(client, auth, "w2", 2)] == [running, completed]
    complete(client, auth, "w2", [(completed, RESULT)])
    c = client.get(f"/status/{completed}").get_json()
    assert c["state"] == "completed" and c["result"] == RESULT and c["iterations"] == 3 and c["id"] == completed
    assert {"id", "state", "iterations", "enqueued_at", "result", "completed_at"} <= set(c)
    r = client.get(f"/status/{running}").get_json()
    assert r["state"] == "running" and "result" not in r and r["iterations"] == 2
    f = client.get(f"/status/{lost}").get_json()
    assert f["state"] == "failed" and "MAX_ATTEMPTS" in f["reason"] and "result" not in f
    q = client.get(f"/status/{queued}").get_json()
    assert q["state"] == "queued" and "result" not in q and "completed_at" not in q
    stats = client.get("/stats").get_json()
    assert (stats["queued"], stats["running"], stats["completed"], stats["failed"]) == (1, 1, 1, 1)


@pytest.mark.parametrize("task_id", ["nope", "0" * 32, "a%3Fb", "%E2%9C%93"])
def test_status_unknown_task(client, populated, task_id):
    before = snapshot(client, populated)
    response = client.get(f"/status/{task_id}")
    assert_error(response, 404, "unknown_task")
    assert "X-Peer-Unavailable" not in response.headers
    assert snapshot(client, populated) == before


def test_create_app_starts_no_thread():
    before = set(threading.enumerate())
    client = make_client()
    enqueue(client)
    client.post("/pullCompleted?top=1")
    assert set(threading.enumerate()) == before
    assert client.get("/stats").get_json()["scaler"]["running"] is False


# ================================================================== health, stats, metrics
def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["node"] == "test-node"
    major, minor, patch = body["version"].split(".")
    assert all(part.isdigit() for part in (major, minor, patch))


def test_stats_has_the_figures_of_spec(client, populated, auth):
    client.get("/try_get_node_quota", headers=auth)
    stats = client.get("/stats").get_json()
    assert (stats["queued"], stats["running"], stats["completed"]) == (2, 1, 2)
    assert stats["workers"]["live"] == 0 and stats["workers"]["pending"] == 0
    assert stats["workers"]["max"] == 4  # MAX_NUM_OF_WORKERS=5, one lent
    assert (stats["quota"]["lent"], stats["quota"]["borrowed"]) == (1, 0)
    assert stats["peer"]["url"] is None and "reachable" in stats["peer"]


def test_metrics_show_the_same_figures(client, populated):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    node = '{node="test-node"}'
    assert values["taskmanager_queued_tasks" + node] == 2
    assert values["taskmanager_running_tasks" + node] == 1
    assert values["taskmanager_tasks_completed_total" + node] == 2
    assert values["taskmanager_workers_max" + node] == 5
    assert values["taskmanager_quota_lent" + node] == 0


def test_unexpected_error_is_json_not_a_stack_trace(app, client, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["nodeapp"].node, "stats", broken)
    body = assert_error(client.get("/stats"), 500, "internal_error")
    assert "boom" not in body["message"]


# ================================================================== unknown paths, wrong methods
@pytest.mark.parametrize("method, path", [
    ("GET", "/nope"), ("DELETE", "/nope/x"), ("PUT", "/enqueue/"), ("GET", "/status/"), ("GET", "/status/a/b"),
    ("POST", "/worker_down"), ("POST", "/worker_down/"), ("GET", "/pullcompleted"), ("POST", "/Claim"),
])
def test_unknown_paths_are_json_404(client, populated, method, path):
    before = snapshot(client, populated)
    assert_error(client.open(path, method=method, data=b"x"), 404, "not_found")
    assert snapshot(client, populated) == before


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/enqueue?iterations=1", "PUT"), ("POST", "/enqueue?iterations=1", "PUT"),
    ("DELETE", "/enqueue", "PUT"), ("GET", "/pullCompleted?top=1", "POST"),
    ("PUT", "/pullCompleted?top=1", "POST"), ("POST", "/status/x", "GET"), ("DELETE", "/status/x", "GET"),
    ("POST", "/health", "GET"), ("PUT", "/stats", "GET"), ("POST", "/metrics", "GET"),
    ("GET", "/worker_down/w1", "POST"), ("POST", "/try_get_node_quota", "GET"), ("GET", "/return_quota", "POST"),
    ("GET", "/claim", "POST"), ("PUT", "/complete", "POST"), ("GET", "/heartbeat", "POST"),
    ("GET", "/configure", "POST"),
])
def test_wrong_methods_are_json_405_with_allow(client, populated, auth, method, path, allowed):
    before = snapshot(client, populated)
    response = client.open(path, method=method, data=b"{}", headers=auth)
    assert_error(response, 405, "method_not_allowed")
    assert allowed in [m.strip() for m in response.headers["Allow"].split(",")]
    assert snapshot(client, populated) == before


# ================================================================== the cluster token
@pytest.mark.parametrize("method, path, body", INTERNAL, ids=[p for _, p, _ in INTERNAL])
@pytest.mark.parametrize("headers", [
    {}, {"X-Cluster-Token": ""}, {"X-Cluster-Token": "wrong"}, {"X-Cluster-Token": TOKEN[:-1] + "X"},
    {"X-Cluster-Token": TOKEN + " "}, {"X-Cluster-Token": TOKEN.upper()}, {"Authorization": f"Bearer {TOKEN}"},
], ids=["missing", "empty", "wrong", "same-length", "trailing-space", "upper", "other-header"])
def test_internal_endpoints_need_the_token(client, populated, method, path, body, headers):
    if path == "/complete":
        body = {"worker_id": "w1", "results": [{"id": i, "result": "f" * 128} for i in populated]}
    before = snapshot(client, populated)
    assert_error(client.open(path, method=method, json=body, headers=headers), 401, "unauthorized")
    assert snapshot(client, populated) == before


@pytest.mark.parametrize("method, path, body", INTERNAL, ids=[p for _, p, _ in INTERNAL])
def test_node_without_a_token_refuses_every_internal_call(method, path, body):
    client = make_client(cluster_token="")
    enqueue(client)
    before = snapshot(client)
    for headers in ({}, {"X-Cluster-Token": ""}, {"X-Cluster-Token": TOKEN}):
        assert_error(client.open(path, method=method, json=body, headers=headers), 401, "unauthorized")
    assert snapshot(client) == before


# ================================================================== internal endpoints
def test_claim_and_complete(client, auth):
    assert client.post("/claim", json={"worker_id": "w1"}, headers=auth).get_json() == {
        "tasks": [], "lease_seconds": 30.0}
    ids = [enqueue(client, b"data-%d" % i, 1) for i in range(3)]
    response = client.post("/claim", json={"worker_id": "w1", "max_tasks": 2}, headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["lease_seconds"] == 30.0
    assert [set(t) for t in body["tasks"]] == [{"id", "iterations", "data"}] * 2
    assert [t["id"] for t in body["tasks"]] == ids[:2]
    results = [(t["id"], sha512_result(base64.b64decode(t["data"]), 1)) for t in body["tasks"]]
    payload = {"worker_id": "w1", "results": [{"id": i, "result": r} for i, r in results]
               + [{"id": "unknown", "result": RESULT}, {"id": ids[2], "result": RESULT}]}
    response = client.post("/complete", json=payload, headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"accepted": 2})
    assert client.post("/complete", json=payload, headers=auth).get_json() == {"accepted": 0}
    pulled = client.post("/pullCompleted?top=10").get_json()
    assert sorted(r["id"] for r in pulled) == sorted(ids[:2])  # once each, despite the repeat
    assert client.get(f"/status/{ids[2]}").get_json()["state"] == "queued"


def test_claim_respects_the_work_budget(auth):
    client = make_client(hash_rate=1000, claim_seconds=1)  # about 1000 iterations per claim
    ids = [enqueue(client, iterations=n) for n in (400, 400, 400, 5000)]
    assert [t["id"] for t in claim(client, auth, "w1", 10)] == ids[:2]
    assert [t["id"] for t in claim(client, auth, "w1", 10)] == ids[2:3]
    assert [t["id"] for t in claim(client, auth, "w1", 10)] == ids[3:]  # one is always given


def test_heartbeat_renews_leases(auth):
    client = make_client(lease_seconds=30)
    ids = [enqueue(client) for _ in range(2)]
    claim(client, auth, "w1")
    response = client.post("/heartbeat", json={"worker_id": "w1", "task_ids": ids + ["x"]}, headers=auth)
    assert response.status_code == 200
    assert response.get_json()["renewed"] == 2
    other = client.post("/heartbeat", json={"worker_id": "w2", "task_ids": ids}, headers=auth)
    assert other.get_json()["renewed"] == 0


def test_worker_down_requeues_at_the_head_and_is_idempotent(app, client, auth):
    app.extensions["nodeapp"].node.workers.add(["w1"])
    ids = [enqueue(client) for _ in range(3)]
    claim(client, auth, "w1", 2)
    response = client.post("/worker_down/w1", json={"instance_id": "w1"}, headers=auth)
    assert response.status_code == 200 and response.get_json()["removed"] is True
    again = client.post("/worker_down/w1", headers=auth)
    assert again.status_code == 200 and again.get_json()["removed"] is False
    assert [t["id"] for t in claim(client, auth, "w2")] == ids
    stats = client.get("/stats").get_json()
    assert stats["workers"]["live"] + stats["workers"]["pending"] == 0


def test_quota_endpoints(app, client, auth):
    def client_max() -> int:
        return client.get("/stats").get_json()["workers"]["max"]

    app.extensions["nodeapp"].node.workers.set_base_max(2)
    app.extensions["nodeapp"].node.workers.add(["w1"])
    granted = client.get("/try_get_node_quota", headers=auth).get_json()
    assert granted == {"granted": True, "loan": granted["loan"], "ttl": 6.0}
    assert client_max() == 1
    assert client.get("/try_get_node_quota", headers=auth).get_json() == {"granted": False}
    assert client_max() == 1
    response = client.post("/return_quota", headers=auth)
    assert (response.status_code, response.get_json()) == (200, {"max": 2})
    stats = client.get("/stats").get_json()
    assert (stats["quota"]["lent"], stats["workers"]["max"]) == (0, 2)


def test_configure(client, auth):
    response = client.post("/configure", json={"peer_url": "http://127.0.0.1:9/", "max_workers": 3}, headers=auth)
    assert response.status_code == 200
    assert response.get_json() == {"peer_url": "http://127.0.0.1:9", "max_workers": 3}
    stats = client.get("/stats").get_json()
    assert stats["peer"]["url"] == "http://127.0.0.1:9" and stats["workers"]["max"] == 3
    assert client.post("/configure", json={}, headers=auth).get_json()["max_workers"] == 3
    assert client.post("/configure", json={"peer_url": ""}, headers=auth).get_json()["peer_url"] is None


@pytest.mark.parametrize("method, path, data", [
    ("POST", "/claim", b"{not json"),
    ("POST", "/claim", b"[1, 2]"),
    ("POST", "/claim", b"\xff\xfe"),
    ("POST", "/complete", b'"text"'),
    ("POST", "/heartbeat", b"{"),
    ("POST", "/worker_down/w1", b"nul"),
    ("POST", "/configure", b"[]"),
])
def test_bad_json_bodies(client, populated, auth, method, path, data):
    before = snapshot(client, populated)
    assert_error(client.open(path, method=method, data=data, headers=auth,
                             content_type="application/json"), 400, "bad_json")
    assert snapshot(client, populated) == before


@pytest.mark.parametrize("path, body", [
    ("/claim", {}),
    ("/claim", {"worker_id": ""}),
    ("/claim", {"worker_id": 5}),
    ("/claim", {"worker_id": "w1", "max_tasks": 0}),
    ("/claim", {"worker_id": "w1", "max_tasks": "3"}),
    ("/claim", {"worker_id": "w1", "max_tasks": True}),
    ("/claim", {"worker_id": "w1", "max_tasks": 1.5}),
    ("/claim", {"worker_id": "w1", "max_iterations": 0}),
    ("/complete", {"worker_id": "w1"}),
    ("/complete", {"results": []}),
    ("/complete", {"worker_id": "w1", "results": {"id": "x"}}),
    ("/complete", {"worker_id": "w1", "results": ["x"]}),
    ("/complete", {"worker_id": "w1", "results": "FILL_VALID_THEN_BAD"}),
    ("/heartbeat", {"task_ids": []}),
    ("/heartbeat", {"worker_id": "w1", "task_ids": "abc"}),
    ("/worker_down/w1", {"instance_id": "w2"}),
    ("/worker_down/w1", {"instance_id": 1}),
    ("/worker_down/w1", {"returned": "abc"}),
    ("/configure", {"max_workers": -1}),
    ("/configure", {"max_workers": 1001}),
    ("/configure", {"max_workers": "3"}),
    ("/configure", {"max_workers": 3, "peer_url": "ftp://x"}),
    ("/configure", {"max_workers": 3, "other": 1}),
])
def test_bad_internal_requests_change_nothing(client, populated, auth, path, body):
    if body.get("results") == "FILL_VALID_THEN_BAD":  # the valid first item must not be applied
        running = [i for i in populated if client.get(f"/status/{i}").get_json()["state"] == "running"]
        body = {"worker_id": "w1", "results": [{"id": running[0], "result": RESULT}, {"id": 1, "result": RESULT}]}
    before = snapshot(client, populated)
    assert_error(client.post(path, json=body, headers=auth), 400, "bad_request")
    assert snapshot(client, populated) == before


def test_internal_body_size_is_bounded(client, populated, auth):
    before = snapshot(client, populated)
    stream = CountingStream(None)
    response = client.post("/claim", headers={**auth, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True})
    assert_error(response, 413, "body_too_large")
    assert stream.read_bytes <= bodies.MAX_JSON_BYTES + bodies.READ_CHUNK
    assert snapshot(client, populated) == before


# ================================================================== an unreachable peer
def test_a_non_ascii_node_name_does_not_break_peer_calls():
    client = make_client(node_name="nœud-東", peer_url=f"http://127.0.0.1:{free_port()}")
    pulled = client.post("/pullCompleted?top=1")
    assert pulled.status_code == 200 and pulled.headers["X-Peer-Unavailable"] == "1"
    assert_error(client.get("/status/x"), 404, "unknown_task")
    assert client.get("/health").get_json()["node"] == "nœud-東"


def test_unreachable_peer_sets_the_header_and_answers_locally(client, auth):
    dead_peer = f"http://127.0.0.1:{free_port()}"
    client.post("/configure", json={"peer_url": dead_peer}, headers=auth)
    task_id = enqueue(client)
    claim(client, auth)
    complete(client, auth, "w1", [(task_id, RESULT)])
    pulled, missing, local = (client.post("/pullCompleted?top=5"), client.get("/status/" + "0" * 32),
                              client.get(f"/status/{task_id}"))
    assert pulled.status_code == 200 and pulled.headers["X-Peer-Unavailable"] == "1"
    assert [r["id"] for r in pulled.get_json()] == [task_id]
    assert_error(missing, 503, "peer_unavailable")  # it may be the peer's: not "unknown"
    assert missing.headers["X-Peer-Unavailable"] == "1" and missing.headers["Retry-After"]
    assert local.status_code == 200 and local.get_json()["state"] == "completed"
    assert client.get("/stats").get_json()["peer"]["reachable"] is False
