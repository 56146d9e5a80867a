"""Identical tasks on two nodes share a run: a duplicate that reaches the other node while the
first is still queued or running waits for that run, and falls back to its own when that run
ends without a result."""

from __future__ import annotations

import pytest
import requests

from tests.digests import sha512_chain
from tests.helpers import running_cluster, wait_for
from workerapp.client import NodeClient
from workerapp.worker import Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "REUSE_PEER_MIN_ITERATIONS": "1", "SCALE_INTERVAL": "0.2"}
    with running_cluster(env, tmp_path_factory.mktemp("shared-runs")) as cluster:
        yield cluster


def put(url: str, body: bytes, iterations: int) -> str:
    answer = requests.put(f"{url}/enqueue", params={"iterations": iterations}, data=body, timeout=5)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def status(url: str, task_id: str) -> dict:
    return requests.get(f"{url}/status/{task_id}", timeout=5).json()


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=5).json()


def work(cluster, url: str, name: str) -> int:
    """A worker for the node at ``url`` alone, until idle; returns how many tasks it computed."""
    worker = Worker([NodeClient(url, cluster.token, name)], idle_seconds=0.5, hash_rate=1_000_000)
    assert worker.run() == 0
    return worker.completed


def test_a_duplicate_on_the_other_node_waits_for_the_first_run(cluster):
    a, b = cluster.urls
    first = put(a, b"shared across nodes", 2000)
    before = stats(b)
    duplicate = put(b, b"shared across nodes", 2000)
    assert status(b, duplicate)["state"] == "queued"
    assert stats(b)["queued"] == before["queued"]  # waiting for a's run, not for a worker of b's
    assert stats(b)["waiting_on_peer"] == before["waiting_on_peer"] + 1 and stats(a)["waiting_on_peer"] == 0
    assert work(cluster, b, "w-b") == 0  # nothing for b's workers to compute
    assert work(cluster, a, "w-a") == 1
    done = wait_for(lambda: (s := status(b, duplicate))["state"] == "completed" and s, timeout=20,
                    what="the duplicate to take the first run's result")
    assert done["result"] == sha512_chain(b"shared across nodes", 2000) and done["reused_from"] == first
    assert stats(b)["reused"] >= 1 and stats(b)["waiting_on_peer"] == before["waiting_on_peer"]


def test_a_duplicate_runs_itself_when_the_first_run_ends_without_a_result(cluster):
    a, b = cluster.urls
    first = put(a, b"cancelled over there", 3000)
    duplicate = put(b, b"cancelled over there", 3000)
    waiting = stats(b)["waiting_on_peer"]
    assert waiting >= 1
    assert requests.post(f"{a}/cancel/{first}", timeout=5).json()["state"] == "cancelled"
    wait_for(lambda: stats(b)["queued"] >= 1, timeout=20, what="the duplicate queued on its own node")
    assert stats(b)["waiting_on_peer"] == waiting - 1  # it waits for b's workers now, not for a's run
    assert work(cluster, b, "w-b2") == 1
    assert status(b, duplicate)["result"] == sha512_chain(b"cancelled over there", 3000)
    assert "reused_from" not in status(b, duplicate)
