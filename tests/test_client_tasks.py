"""tmclient and tm with real workers: batches, identical tasks done once, cancelling a running task
(the worker stops at its next heartbeat), retry, and every result once by cursor."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
import time
import uuid

import pytest

from tests.digests import sha512_chain
from tests.helpers import QUICK_ENV, running_cluster, wait_for
from tmclient.cli import EXIT_FAILED, main
from tmclient.client import Client

pytestmark = pytest.mark.integration

#: Short leases: a worker heartbeats every LEASE_SECONDS / 3.
ENV = {**QUICK_ENV, "LEASE_SECONDS": "3", "MAX_ITERATIONS": str(10**10), "REUSE_PEER_MIN_ITERATIONS": "1"}
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


class SlowAnswers:
    """A TCP relay to ``upstream`` that passes each request on at once but holds the first
    connection's answer for ``hold`` seconds: the node has queued the task, the client times out."""

    def __init__(self, upstream_port: int, hold: float) -> None:
        self.upstream_port, self.hold = upstream_port, hold
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.connections = 0
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                relay.connections += 1
                delay = relay.hold if relay.connections == 1 else 0.0
                upstream = socket.create_connection(("127.0.0.1", relay.upstream_port))
                threading.Thread(target=pump, args=(self.request, upstream, 0.0), daemon=True).start()
                pump(upstream, self.request, delay)

        def pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
            try:
                while data := source.recv(65536):
                    time.sleep(delay)
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    sock.close()

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_enqueue_that_timed_out_is_sent_again_with_its_key_and_queued_once(cluster):
    first, second = cluster.urls
    relay = SlowAnswers(int(first.rsplit(":", 1)[1]), hold=3.0)
    try:
        client = Client([relay.url, second], timeout=1.0, retries=2)
        direct = Client(cluster.urls)

        def figures() -> list[int]:
            return [sum(n[key] for n in direct.stats()["nodes"]) for key in ("enqueued", "idempotent_replays")]

        enqueued, replays = figures()
        task_id = client.enqueue(os.urandom(32), 1)  # times out at the relay, then goes to the other node
        # queued once, by the first try; the second node recognised the key and gave its id back
        assert figures() == [enqueued + 1, replays + 1]
        assert direct.status(task_id)["iterations"] == 1 and relay.connections == 1
    finally:
        relay.close()
