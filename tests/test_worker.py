"""The worker loop, in-process, against real gunicorn nodes that launch no workers of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import requests

from provisioning.local_cluster import free_port
from tests.helpers import running_cluster, wait_for
from workerapp import exitcodes
from workerapp.client import NodeClient, NodeRejected
from workerapp.compute import compute
from workerapp.worker import Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "1", "SCALE_INTERVAL": "0.2"}
    with running_cluster(env, tmp_path_factory.mktemp("worker-cluster")) as cluster:
        yield cluster


def clients(cluster, worker_id, urls=None):
    return [NodeClient(url, cluster.token, worker_id) for url in (urls or cluster.urls)]


def enqueue(url, data, iterations):
    response = requests.put(f"{url}/enqueue", params={"iterations": iterations}, data=data, timeout=5)
    assert response.status_code == 201
    return response.json()["id"]


def status(url, task_id):
    return requests.get(f"{url}/status/{task_id}", timeout=5).json()


def test_drains_both_nodes_own_first_in_batches_then_exits_when_idle(cluster):
    a, b = cluster.urls
    ids = {enqueue(a, b"a%d" % i, 3): b"a%d" % i for i in range(40)}
    ids.update({enqueue(b, b"b%d" % i, 3): b"b%d" % i for i in range(40)})
    claims = []
    nodes = clients(cluster, "w-batch")
    for node in nodes:
        real_claim = node.claim
        node.claim = lambda k, n, real=real_claim, url=node.url: claims.append(url) or real(k, n)
    worker = Worker(nodes, idle_seconds=0.5, hash_rate=500_000)
    assert worker.run() == 0
    assert worker.completed == 80
    for task_id, data in ids.items():
        assert status(a, task_id)["result"] == compute(data, 3)
    # 80 small tasks took a handful of claims, not 80 round trips; the own node came first.
    assert claims[0] == a and len(claims) < 20


def test_claims_at_most_about_a_second_of_work(cluster):
    a = cluster.urls[0]
    ids = [enqueue(a, b"big", 400_000) for _ in range(3)]
    node = NodeClient(a, cluster.token, "w-budget")
    tasks, _ = node.claim(100, 500_000)
    assert [t.id for t in tasks] == ids[:1]  # a second task would go over the budget
    node.worker_down(returned=[t.id for t in tasks])
    worker = Worker(clients(cluster, "w-budget2"), idle_seconds=0.5, hash_rate=500_000)
    worker.run()
    assert all(status(a, i)["state"] == "completed" for i in ids)


def test_heartbeat_keeps_the_lease_of_a_long_task(cluster):
    a = cluster.urls[0]
    task_id = enqueue(a, b"long", 1_500_000)  # ~2-3 s here, with LEASE_SECONDS=1
    worker = Worker(clients(cluster, "w-long"), idle_seconds=0.5, hash_rate=500_000)
    worker.run()
    assert worker.completed == 1
    assert status(a, task_id)["result"] == compute(b"long", 1_500_000)
    assert requests.get(f"{a}/stats", timeout=5).json()["failed"] == 0


def test_stop_request_gives_back_unstarted_tasks_without_costing_an_attempt(cluster):
    a = cluster.urls[0]
    bodies = [b"s%d" % i for i in range(4)]
    ids = [enqueue(a, body, 200_000) for body in bodies]
    done = []

    def compute_then_stop(data, iterations):
        if data in bodies:  # a task's first segment (the next ones start from its marks)
            done.append(data)
        worker.request_stop()  # SIGTERM arrives while the first task runs
        return compute(data, iterations)

    worker = Worker(clients(cluster, "w-stop"), idle_seconds=5, hash_rate=2_000_000, compute_fn=compute_then_stop)
    assert worker.run() == 0
    assert len(done) == 1
    states = [status(a, i) for i in ids]
    assert states[0]["state"] == "completed"
    assert [s["state"] for s in states[1:]] == ["queued"] * 3
    # the returned tasks are back at the head, in order, and cost no attempt
    finisher = Worker(clients(cluster, "w-finish"), idle_seconds=0.5, hash_rate=500_000)
    finisher.run()
    assert all(status(a, i)["state"] == "completed" for i in ids)


def test_survives_an_unreachable_node_and_exits_idle(cluster):
    dead = f"http://127.0.0.1:{free_port()}"
    a = cluster.urls[0]
    worker = Worker(clients(cluster, "w-dead", urls=[dead, a]), idle_seconds=1.0, hash_rate=500_000,
                    max_backoff=0.3)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", worker.run()))
    thread.start()
    task_id = enqueue(a, b"via-peer", 10)
    wait_for(lambda: status(a, task_id)["state"] == "completed", 20, what="the peer's task to be done")
    thread.join(timeout=20)
    assert not thread.is_alive() and result["code"] == 0
    assert worker.sources[0].failures >= 1


def test_a_refusal_carries_the_nodes_status_code_and_reason(cluster):
    a = cluster.urls[0]
    with pytest.raises(NodeRejected) as refused:
        NodeClient(a, "wrong-token", "w-wrong").claim(1, 10)
    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert "X-Cluster-Token" in refused.value.message
    with pytest.raises(NodeRejected) as refused:
        NodeClient(a, cluster.token, "w-bad").claim(0, 10)  # max_tasks must be >= 1
    assert (refused.value.status, refused.value.code) == (400, "bad_request")


def test_a_worker_with_a_wrong_token_exits_with_its_code_and_one_clear_line(cluster):
    env = {**os.environ, "CLUSTER_TOKEN": "wrong-token"}
    done = subprocess.run([sys.executable, "-m", "workerapp", "--worker-id", "w-wrong", "--idle-seconds", "60",
                           *cluster.urls], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == exitcodes.REJECTED
    assert "Traceback" not in done.stderr
    assert done.stderr.count("401 unauthorized") == 1, done.stderr
