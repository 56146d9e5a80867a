"""tmclient and tm with real workers: batches, identical tasks done once, cancelling a running task
(the worker stops at its next heartbeat), retry, and every result once by cursor."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.digests import sha512_chain
from tests.helpers import QUICK_ENV, running_cluster, wait_for
from tmclient.cli import EXIT_FAILED, main
from tmclient.client import Client

pytestmark = pytest.mark.integration

#: Short leases: a worker heartbeats every LEASE_SECONDS / 3.
ENV = {**QUICK_ENV, "LEASE_SECONDS": "3", "MAX_ITERATIONS": str(10**10)}
FOREVER = 10**10  # iterations no worker finishes during a test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(ENV, tmp_path_factory.mktemp("client-tasks")) as running:
        yield running


@pytest.fixture
def client(cluster) -> Client:
    return Client(cluster.urls, timeout=10)


@pytest.fixture
def nodes(cluster, monkeypatch) -> str:
    monkeypatch.setenv("TM_NODES", ",".join(cluster.urls))
    return ",".join(cluster.urls)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enqueue_many_queues_a_batch_and_identical_tasks_run_once(client):
    tag = uuid.uuid4().bytes
    tasks = [(tag + b"%d" % (i % 10), 1 + i % 3) for i in range(40)]  # 30 distinct (body, iterations)
    before = sum(node["reused"] for node in client.stats()["nodes"])
    ids = client.enqueue_many(tasks)
    assert len(ids) == len(set(ids)) == 40
    done = client.wait(ids, timeout=120)
    statuses = {task_id: client.status(task_id) for task_id in ids}
    for task_id, (body, iterations) in zip(ids, tasks):
        assert done[task_id]["result"] == sha512_chain(body, iterations)
    reused = [s for s in statuses.values() if s.get("reused_from")]
    assert len(reused) == 10 and sum(node["reused"] for node in client.stats()["nodes"]) - before == 10
    duplicate = client.enqueue(tasks[0][0], tasks[0][1])  # of a kept result: completed at once
    status = client.status(duplicate)
    assert status["state"] == "completed" and status["result"] == done[ids[0]]["result"]


def test_tm_enqueue_of_several_files_is_one_batch_and_tm_results_lists_each_once(capsys, nodes, tmp_path, client):
    start = client.results_page(limit=1000)
    while start["results"]:
        start = client.results_page(start["next"], 1000)
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(os.urandom(32))
    code, out, _ = run(capsys, "enqueue", *map(str, files), "-n", "5", "--wait")
    ids = [line.split()[0] for line in out.splitlines() if len(line.split()[0]) == 32][:3]
    assert code == 0 and len(set(ids)) == 3
    kept = tmp_path / "cursor"
    code, out, err = run(capsys, "--json", "results", "--after", start["next"], "--cursor-file", str(kept))
    listed = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sorted(r["id"] for r in listed) == sorted(ids)
    assert {r["id"]: r["result"] for r in listed} == {i: sha512_chain(f.read_bytes(), 5) for i, f in zip(ids, files)}
    assert f"next: {kept.read_text().strip()}" in err
    code, out, _ = run(capsys, "--json", "results", "--cursor-file", str(kept))
    assert code == 0 and out == ""  # nothing new: nothing twice


def test_a_running_task_is_cancelled_its_worker_stops_and_retry_queues_it_again(capsys, nodes, cluster, client):
    task_id = client.enqueue(os.urandom(16), FOREVER)
    wait_for(lambda: client.status(task_id)["state"] == "running", timeout=60, what="a worker runs it")
    code, out, _ = run(capsys, "cancel", task_id)
    assert code == 0 and "cancelled" in out
    logs = [node.log_path for node in cluster.nodes]  # the workers log to their node's log
    wait_for(lambda: any(f"task {task_id} stopped at" in log.read_text(errors="replace") for log in logs),
             timeout=30, what="the worker stops at its heartbeat")
    follow_up = client.enqueue(os.urandom(16), 1)  # the worker is free again
    client.wait([follow_up], timeout=60)
    code, _, err = run(capsys, "status", task_id)
    assert code == EXIT_FAILED and "cancelled" in err
    code, out, _ = run(capsys, "retry", task_id)
    assert code == 0 and ("queued" in out or "running" in out)
    assert client.cancel(task_id)["state"] == "cancelled"  # leave nothing running
    code, _, err = run(capsys, "cancel", task_id, "0" * 32)
    assert code == 1 and "unknown_task" in err  # cancelling twice is fine, an unknown id is not
