"""A worker one node caught with a wrong result is quarantined on the other too: refused there,
its leases requeued and its unchecked results taken back (``POST /quarantine/sync``). The real
path between two gunicorn nodes is in tests/test_verification_cluster.py."""

from __future__ import annotations

import time

import pytest

from nodeapp import create_app
from tests.digests import sha512_chain
from tests.helpers import FakeLauncher, wait_for
from tmcommon.marks import positions

TOKEN = "quarantine-token"
PEER = "http://127.0.0.1:2"
AUTH = {"X-Cluster-Token": TOKEN}
N = 200_000  # with VERIFY_ITERATIONS=1, a result of N iterations is checked with probability 1 / N


@pytest.fixture
def node():
    app = create_app({"cluster_token": TOKEN, "node_name": "b", "node_url": "http://127.0.0.1:1", "peer_url": PEER,
                      "verify_iterations": 1, "verify_probation": 0}, launcher=FakeLauncher())
    yield app, app.test_client()
    app.extensions["nodeapp"].close()


def entry(worker: str, **fields) -> dict:
    return {"worker": worker, "at": time.time(), "task": "f" * 32, "reason": "a spot-checked segment did not match",
            "engine": "native", "cpu": "Test CPU", "lanes": 8, "launcher": "local", **fields}


def test_a_worker_the_peer_caught_is_refused_here_and_its_unchecked_results_are_taken_back(node):
    app, client = node
    ids = [client.put(f"/enqueue?iterations={N}&reuse=0", data=b"long %d" % i).get_json()["id"] for i in range(3)]
    good = client.put("/enqueue?iterations=5&reuse=0", data=b"good").get_json()["id"]
    assert len(client.post("/claim", json={"worker_id": "bad", "max_tasks": 3, "rate": 1e9}, headers=AUTH).get_json()["tasks"]) == 3
    made_up = [{"id": i, "result": "11" * 64, "marks": ["22" * 64] * len(positions(N))} for i in ids]
    assert client.post("/complete", json={"worker_id": "bad", "results": made_up}, headers=AUTH).get_json() == \
        {"accepted": 3}
    assert [client.get(f"/status/{i}").get_json()["spot_checked"] for i in ids] == [False] * 3  # unchecked here
    [leased] = client.post("/claim", json={"worker_id": "bad"}, headers=AUTH).get_json()["tasks"]
    assert leased["id"] == good

    answer = client.post("/quarantine/sync", json={"quarantine": [entry("bad"), entry("other")]}, headers=AUTH)
    assert answer.status_code == 200
    listed = {c["worker"]: c for c in answer.get_json()["quarantine"]}
    assert set(listed) == {"bad", "other"} and listed["bad"]["by"] == PEER and listed["bad"]["rerun"] == 3
    for task_id in [*ids, good]:  # its results taken back, its lease requeued
        assert client.get(f"/status/{task_id}").get_json()["state"] == "queued", task_id
    refused = client.post("/claim", json={"worker_id": "bad"}, headers=AUTH)
    assert refused.status_code == 403 and refused.get_json()["error"] == "quarantined"
    checks = client.get("/stats").get_json()["checks"]
    assert checks["quarantined"] == 0 and checks["rerun"] == 3  # the peer's catch, counted there
    assert {c["worker"]: c["by"] for c in checks["quarantine"]} == {"bad": PEER, "other": PEER}
    # the next exchange changes nothing: each worker is quarantined once
    again = client.post("/quarantine/sync", json={"quarantine": [entry("bad")]}, headers=AUTH).get_json()
    assert len(again["quarantine"]) == 2 and client.get("/stats").get_json()["checks"]["rerun"] == 3
    # another worker computes them again
    tasks = client.post("/claim", json={"worker_id": "good", "max_tasks": 10, "rate": 1e9}, headers=AUTH).get_json()["tasks"]
    assert {t["id"] for t in tasks} == {*ids, good}


@pytest.mark.parametrize("body, why", [
    ({"quarantine": [entry("w")] * 257}, "at most 256"),
    ({"quarantine": [entry("")]}, "each entry"),
    ({"quarantine": [entry("w", at="yesterday")]}, "each entry"),
    ({"quarantine": [entry("w", lanes=1.5)]}, "each entry"),
    ({"quarantine": [entry("w", reason=None)]}, "each entry"),
    ({"quarantine": [entry("w"), "w2"]}, "each entry"),
    ({"quarantine": [entry("w" * 257)]}, "each entry"),
    ({"quarantine": "w"}, "quarantine"),
    ({}, "quarantine"),
])
def test_a_malformed_list_is_a_400_and_quarantines_nobody(node, body, why):
    app, client = node
    answer = client.post("/quarantine/sync", json=body, headers=AUTH)
    assert answer.status_code == 400 and answer.get_json()["error"] == "bad_request"
    assert why in answer.get_json()["message"]
    assert client.get("/stats").get_json()["checks"]["quarantine"] == []


def test_the_exchange_needs_the_peer_token(node):
    app, client = node
    assert client.post("/quarantine/sync", json={"quarantine": [entry("w")]}).status_code == 401
    assert client.post("/quarantine/sync", json={"quarantine": [entry("w")]},
                       headers={"X-Cluster-Token": "wrong"}).status_code == 401
    assert client.get("/stats").get_json()["checks"]["quarantine"] == []


def test_a_node_answers_with_what_it_caught_itself_so_a_restarted_peer_learns_it_back():
    app = create_app({"cluster_token": TOKEN, "node_name": "a", "node_url": "http://127.0.0.1:1"},
                     launcher=FakeLauncher())  # no peer: nothing is sent, the answer is what matters
    client = app.test_client()
    task = client.put("/enqueue?iterations=20", data=b"x").get_json()["id"]
    client.post("/claim", json={"worker_id": "caught-here"}, headers=AUTH)
    # a result of 20 iterations is always checked: a wrong one quarantines the worker here
    client.post("/complete", json={"worker_id": "caught-here", "results": [{"id": task, "result": "00" * 64}]},
                headers=AUTH)
    ctx = app.extensions["nodeapp"]
    wait_for(lambda: "caught-here" in ctx.node.quarantine, 10, what="the check")
    [mine] = client.post("/quarantine/sync", json={"quarantine": []}, headers=AUTH).get_json()["quarantine"]
    assert (mine["worker"], mine["by"], mine["task"]) == ("caught-here", None, task)
    assert sha512_chain(b"x", 20) != "00" * 64
    app.extensions["nodeapp"].close()


def test_the_dashboard_lists_a_worker_both_nodes_quarantined_once_as_the_catching_node_saw_it():
    from nodeapp.web.dashboard import caught_once

    rows = [{"node": "b", "worker": "w1", "by": "http://a"}, {"node": "a", "worker": "w1", "by": None},
            {"node": "b", "worker": "w2", "by": "http://a"}]  # a did not answer for w2's row
    assert sorted((r["worker"], r["node"]) for r in caught_once(rows)) == [("w1", "a"), ("w2", "b")]
