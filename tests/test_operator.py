"""Operator controls: pause and resume intake, purge the queue, the tasks each worker holds; in
process, and on two real nodes where a (hand-played) worker pulls from both by priority."""

from __future__ import annotations

import base64

import pytest
import requests

from nodeapp import create_app
from tests.digests import sha512_chain
from tests.helpers import FakeLauncher, running_cluster, wait_for

OPERATOR = "operator-secret"
WORKER = "worker-secret"


@pytest.fixture
def web():
    app = create_app({"cluster_token": WORKER, "operator_token": OPERATOR, "node_name": "n",
                      "node_url": "http://127.0.0.1:1"}, launcher=FakeLauncher())
    return app.test_client()


def op(web, path: str, method: str = "POST"):
    return web.open(path, method=method, headers={"X-Cluster-Token": OPERATOR})


def test_pause_refuses_enqueues_and_retries_with_503_until_resume(web):
    queued = web.put("/enqueue?iterations=1", data=b"a").get_json()["id"]
    web.post(f"/cancel/{queued}")
    assert web.post("/pause", headers={"X-Cluster-Token": WORKER}).status_code == 403
    paused = op(web, "/pause").get_json()
    assert paused["paused"] is True and paused["since"] > 0
    for answer in (web.put("/enqueue?iterations=1", data=b"b"),
                   web.put("/enqueue_batch", data=b"TMB1", headers={"Content-Type": "application/x-tm-batch"}),
                   web.post(f"/retry/{queued}")):
        assert answer.status_code == 503 and answer.get_json()["error"] == "paused"
        assert "tm resume" in answer.get_json()["message"] and answer.headers["Retry-After"]
    stats = web.get("/stats").get_json()
    assert stats["intake"]["paused"] is True and stats["enqueued"] == 1 and stats["retried"] == 0
    assert web.get("/health").get_json()["paused"] is True
    assert web.get(f"/status/{queued}").status_code == 200  # reads go on
    assert op(web, "/resume").get_json() == {"node": "n", "paused": False, "since": None}
    assert web.put("/enqueue?iterations=1", data=b"c").status_code == 201


def test_purge_counts_and_cancels_only_what_waits(web):
    ids = [web.put(f"/enqueue?iterations=1&priority={i}", data=f"{i}".encode()).get_json()["id"] for i in range(4)]
    claim = web.post("/claim", json={"worker_id": "w", "max_tasks": 1}, headers={"X-Cluster-Token": WORKER})
    running = claim.get_json()["tasks"][0]["id"]
    assert running == ids[3]
    assert web.post("/purge").status_code == 401
    assert op(web, "/purge").get_json() == {"node": "n", "purged": 3}
    states = {i: web.get(f"/status/{i}").get_json() for i in ids}
    assert states[running]["state"] == "running"
    assert all(s["state"] == "cancelled" and s["reason"] == "purged by the operator"
               for i, s in states.items() if i != running)
    assert web.get("/stats").get_json()["queued"] == 0
    assert op(web, "/purge").get_json()["purged"] == 0


def test_active_lists_the_tasks_each_worker_holds(web):
    ids = [web.put("/enqueue?iterations=1000", data=f"{i}".encode()).get_json()["id"] for i in range(3)]
    for worker, count in (("w1", 2), ("w2", 1)):
        web.post("/claim", json={"worker_id": worker, "max_tasks": count}, headers={"X-Cluster-Token": WORKER})
    assert web.get("/active").status_code == 401, "a running task's id is a capability: the operator's only"
    active = op(web, "/active", "GET").get_json()
    assert active["node"] == "n"
    assert [(w["id"], [t["id"] for t in w["tasks"]]) for w in active["workers"]] == [("w1", ids[:2]), ("w2", ids[2:])]
    assert all(t["iterations"] == 1000 and t["done"] == 0 and t["held_seconds"] >= 0
               for w in active["workers"] for t in w["tasks"])
    web.post("/complete", json={"worker_id": "w2", "results": [{"id": ids[2], "result": "a" * 128}]},
             headers={"X-Cluster-Token": WORKER})
    assert [w["id"] for w in op(web, "/active", "GET").get_json()["workers"]] == ["w1"]


@pytest.mark.integration
def test_two_nodes_priorities_pause_purge_and_active(tmp_path):
    """Enqueue on A with priorities; a worker pulling from both nodes gets each node's high-priority
    work first; pause on one node refuses there only; purge counts what waits; active lists holds."""
    env = {"MAX_NUM_OF_WORKERS": "0", "OPERATOR_TOKEN": OPERATOR}
    with running_cluster(env, tmp_path) as cluster:
        a, b = cluster.urls
        worker = {"X-Cluster-Token": cluster.token}
        operator = {"X-Cluster-Token": OPERATOR}

        def enqueue(url: str, body: bytes, priority: int) -> str:
            answer = requests.put(f"{url}/enqueue", params={"iterations": 50, "priority": priority}, data=body,
                                  timeout=5)
            assert answer.status_code == 201, answer.text
            return answer.json()["id"]

        low_a = [enqueue(a, f"low-a-{i}".encode(), 0) for i in range(3)]
        low_b = [enqueue(b, f"low-b-{i}".encode(), 1) for i in range(2)]
        high_a = [enqueue(a, f"high-a-{i}".encode(), 9) for i in range(2)]
        status = requests.get(f"{b}/status/{high_a[0]}", timeout=5).json()  # asked of the peer
        assert status["priority"] == 9 and status["state"] == "queued"
        order, results = [], {}
        for url in (a, b, a, b, a, a):  # a worker alternating between its node and the peer
            tasks = requests.post(f"{url}/claim", json={"worker_id": "hand", "max_tasks": 1}, headers=worker,
                                  timeout=5).json()["tasks"]
            for task in tasks:
                order.append(task["id"])
                results[task["id"]] = (url, sha512_chain(base64.b64decode(task["data"]), task["iterations"]))
        assert order == [high_a[0], low_b[0], high_a[1], low_b[1], low_a[0], low_a[1]]
        held = requests.get(f"{a}/active", headers=operator, timeout=5).json()
        assert [(w["id"], sorted(t["id"] for t in w["tasks"])) for w in held["workers"]] == \
            [("hand", sorted([*high_a, *low_a[:2]]))]
        for url in (a, b):
            mine = [{"id": i, "result": r} for i, (u, r) in results.items() if u == url]
            assert requests.post(f"{url}/complete", json={"worker_id": "hand", "results": mine}, headers=worker,
                                 timeout=5).json()["accepted"] == len(mine)
        for task_id, (_, result) in results.items():  # a short result is held until its spot-check ends
            assert wait_for(lambda: requests.get(f"{b}/status/{task_id}", timeout=5).json().get("result") == result,
                            timeout=30, what="the result checked")
        assert requests.post(f"{b}/pause", headers=operator, timeout=5).json()["paused"] is True
        refused = requests.put(f"{b}/enqueue", params={"iterations": 1}, data=b"x", timeout=5)
        assert refused.status_code == 503 and refused.json()["error"] == "paused"
        extra = enqueue(a, b"still open on a", 5)
        assert requests.post(f"{a}/purge", headers=operator, timeout=5).json()["purged"] == 2  # low_a[2], extra
        assert requests.get(f"{b}/status/{extra}", timeout=5).json()["state"] == "cancelled"
        assert requests.post(f"{b}/resume", headers=operator, timeout=5).json()["paused"] is False
        assert requests.put(f"{b}/enqueue", params={"iterations": 1}, data=b"x", timeout=5).status_code == 201
