"""Two real nodes under gunicorn: idempotency keys and reuse across nodes, cancel and retry of the
peer's tasks, every result once by cursor, batch refusals, and a hung peer (SIGSTOP).

MAX_NUM_OF_WORKERS=0: the test plays the worker through ``/claim`` and ``/complete``.
"""

from __future__ import annotations

import base64
import collections
import os
import signal
import threading
import uuid
from contextlib import contextmanager

import pytest
import requests

from tests import test_two_nodes as two_nodes
from tests.digests import sha512_chain
from tests.helpers import running_cluster, wait_for
from tmclient.cli import EXIT_PEER_UNAVAILABLE, main
from tmclient.client import Client
from tmcommon import batchwire

pytestmark = pytest.mark.integration

ENV = {"MAX_NUM_OF_WORKERS": "0", "MAX_BATCH_TASKS": "50", "MAX_QUEUED": "500", "REUSE_PEER_MIN_ITERATIONS": "30"}


class Node(two_nodes.Node):
    """test_two_nodes' client-and-worker view of a node, with keys, reuse and cancel/retry."""

    def put(self, body: bytes, iterations: int = 1, key: str | None = None, **params) -> requests.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return requests.put(f"{self.url}/enqueue", params={"iterations": iterations, **params}, data=body,
                            headers=headers, timeout=10)

    def run_all(self, worker: str) -> list[str]:
        """Claim everything queued here and complete it with the right results; return once each
        is completed (a result picked for a spot-check is held, its task running, until it ends)."""
        tasks = self.claim(worker, 1000)
        results = [(t["id"], sha512_chain(base64.b64decode(t["data"]), t["iterations"])) for t in tasks]
        assert self.complete(worker, results) == len(tasks)
        wait_for(lambda: all(self.status(t["id"]).json()["state"] == "completed" for t in tasks), timeout=30,
                 what="the results settled")
        return [t["id"] for t in tasks]

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=10)

    def post(self, path: str, **params) -> requests.Response:
        return requests.post(self.url + path, params=params, timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(ENV, tmp_path_factory.mktemp("cluster-tasks")) as running:
        yield running


@pytest.fixture(scope="module")
def nodes(cluster) -> tuple[Node, Node]:
    return Node(cluster.urls[0], cluster.token), Node(cluster.urls[1], cluster.token)


def unique(text: str = "") -> bytes:
    return f"{text}-{uuid.uuid4().hex}".encode()


@contextmanager
def peer_stopped(cluster, index: int = 1):
    """Node ``index`` stopped (SIGSTOP): it accepts connections and never answers."""
    os.killpg(cluster.nodes[index].process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(cluster.nodes[index].process.pid, signal.SIGCONT)


# ------------------------------------------------------------------ idempotency
def test_a_key_returns_the_same_id_on_either_node_and_queues_once(nodes):
    a, b = nodes
    key, body = uuid.uuid4().hex, unique("keyed")
    first = a.put(body, 3, key)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    enqueued = a.stats()["enqueued"] + b.stats()["enqueued"]
    for node in (a, b, b):
        again = node.put(body, 3, key)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
    assert a.stats()["enqueued"] + b.stats()["enqueued"] == enqueued
    mismatch = b.put(unique("other"), 3, key)
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "idempotency_key_mismatch"
    bad = a.put(body, 3, "has space")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_idempotency_key"


def test_a_batch_sent_again_with_its_keys_to_the_other_node_queues_nothing(nodes):
    a, b = nodes
    batch = batchwire.encode([(unique("k%d" % i), 1, uuid.uuid4().hex) for i in range(5)])
    headers = {"Content-Type": batchwire.CONTENT_TYPE}
    first = requests.put(f"{a.url}/enqueue_batch", data=batch, headers=headers, timeout=10)
    again = requests.put(f"{b.url}/enqueue_batch", data=batch, headers=headers, timeout=10)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"ids": first.json()["ids"], "replayed": 5, "reused": 0}


# ------------------------------------------------------------------ reuse
def test_a_duplicate_of_the_peers_result_completes_at_once(nodes):
    a, b = nodes
    body = unique("dup")
    original = a.enqueue(body, 40)
    a.run_all("w-reuse")
    answer = b.put(body, 40)
    assert answer.status_code == 201 and answer.json()["reused_from"] == original
    status = b.get(f"/status/{answer.json()['id']}").json()
    assert status["state"] == "completed" and status["result"] == sha512_chain(body, 40)
    assert status["reused_from"] == original
    assert b.stats()["reused"] >= 1
    opted_out = b.put(body, 40, reuse=0)
    assert "reused_from" not in opted_out.json()
    assert b.get(f"/status/{opted_out.json()['id']}").json()["state"] == "queued"
    b.run_all("w-reuse")


def test_cheap_work_is_matched_on_the_receiving_node_only(nodes):
    """Below REUSE_PEER_MIN_ITERATIONS (30 here) the peer is not asked: the duplicate is queued."""
    a, b = nodes
    body = unique("cheap")
    a.enqueue(body, 20)
    a.run_all("w-cheap")
    answer = b.put(body, 20)
    assert answer.status_code == 201 and "reused_from" not in answer.json()
    assert b.get(f"/status/{answer.json()['id']}").json()["state"] == "queued"
    again = b.put(body, 20)  # but a duplicate on the same node shares the queued run
    assert "reused_from" not in again.json()  # which is not this client's to know of while it waits
    b.run_all("w-cheap")
    # A result is held for its spot-check a moment (the checker settles it): wait for the completion.
    wait_for(lambda: b.get(f"/status/{again.json()['id']}").json()["state"] == "completed", 20,
             what="the shared run's result to settle")
    assert b.get(f"/status/{again.json()['id']}").json()["reused_from"] == answer.json()["id"]


# ------------------------------------------------------------------ cancel and retry
def test_cancel_and_retry_work_on_the_peers_tasks(nodes):
    a, b = nodes
    on_b = b.enqueue(unique("cancel-me"), 5)
    cancelled = a.post(f"/cancel/{on_b}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert a.post(f"/cancel/{on_b}").json()["state"] == "cancelled"  # again: same answer
    assert b.run_all("w-cancel") == []  # nothing left to claim
    retried = a.post(f"/retry/{on_b}")
    assert retried.status_code == 200 and retried.json()["state"] == "queued"
    assert b.run_all("w-cancel") == [on_b]
    refused = a.post(f"/cancel/{on_b}")
    assert refused.status_code == 409 and refused.json()["error"] == "not_cancellable"
    missing = a.post(f"/cancel/{'0' * 32}")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_task"


# ------------------------------------------------------------------ results by cursor
def test_follow_yields_every_result_exactly_once_while_both_nodes_complete(cluster, nodes):
    client = Client(cluster.urls, timeout=10)
    start = client.results_page(limit=1000)  # skip what earlier tests completed
    while start["results"]:
        start = client.results_page(start["next"], 1000)
    seen: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=lambda: seen.extend(
        r["id"] for r in client.results(start["next"], follow=True, limit=7, poll=0.05, stop=stop)))
    follower.start()
    expected: list[str] = []
    lock = threading.Lock()

    def produce(node: Node, name: str) -> None:
        for round_ in range(6):
            ids = [node.enqueue(unique(f"{name}{round_}-{i}")) for i in range(5)]
            assert sorted(node.run_all(f"w-{name}")) == sorted(ids)
            with lock:
                expected.extend(ids)

    producers = [threading.Thread(target=produce, args=(node, name)) for node, name in zip(nodes, "ab")]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    try:
        wait_for(lambda: set(expected) <= set(seen), timeout=30, what="every result followed")
    finally:
        stop.set()
        follower.join(10)
    counts = collections.Counter(seen)
    assert len(expected) == 60 and set(counts) == set(expected)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1]


def test_results_pages_and_bad_cursors(nodes):
    a, _ = nodes
    assert a.get("/results", after="not a cursor").json()["error"] == "bad_cursor"
    assert a.get("/results", limit=0).json()["error"] == "bad_limit"
    first = a.get("/results", limit=3).json()
    assert len(first["results"]) == 3
    second = a.get("/results", after=first["next"], limit=3).json()
    assert not {r["id"] for r in first["results"]} & {r["id"] for r in second["results"]}


# ------------------------------------------------------------------ batch refusals
def test_a_bad_task_anywhere_in_a_batch_queues_nothing(nodes):
    a, _ = nodes
    headers = {"Content-Type": batchwire.CONTENT_TYPE}
    before = a.stats()["enqueued"]
    cases = [
        ([(unique(), 1), (unique(), 0)], 400, "bad_iterations", "task 1:"),
        ([(unique(), 1)] * 51, 413, "batch_too_large", "MAX_BATCH_TASKS"),
    ]
    for tasks, status, code, words in cases:
        answer = requests.put(f"{a.url}/enqueue_batch", data=batchwire.encode(tasks), headers=headers, timeout=10)
        assert (answer.status_code, answer.json()["error"]) == (status, code) and words in answer.json()["message"]
    cut = requests.put(f"{a.url}/enqueue_batch", data=batchwire.encode([(b"x", 1), (b"y", 1)])[:-1],
                       headers=headers, timeout=10)
    assert cut.status_code == 400 and cut.json()["error"] == "bad_batch" and "task 1" in cut.json()["message"]
    as_json = requests.put(f"{a.url}/enqueue_batch", json=[{"data": "x"}], timeout=10)
    assert as_json.status_code == 415
    assert a.stats()["enqueued"] == before


# ------------------------------------------------------------------ a hung peer
def test_with_the_peer_hung_status_says_peer_unavailable_and_tm_says_it_in_words(cluster, nodes, capsys):
    a, b = nodes
    on_b, other_on_b = b.enqueue(unique("on-b")), b.enqueue(unique("other-on-b"))
    cursor = a.get("/results", limit=1000).json()["next"]
    with peer_stopped(cluster):
        status = a.get(f"/status/{on_b}")
        assert status.status_code == 503 and status.json()["error"] == "peer_unavailable"
        assert status.headers["X-Peer-Unavailable"] == "1" and status.headers["Retry-After"]
        # (b may still act on the cancel once it runs again: the message says so)
        cancel = a.post(f"/cancel/{other_on_b}")
        assert cancel.status_code == 503 and cancel.json()["error"] == "peer_unavailable"
        assert "may still" in cancel.json()["message"]
        code = main(["--nodes", a.url, "status", on_b])
        err = capsys.readouterr().err
        assert code == EXIT_PEER_UNAVAILABLE
        assert "could not be asked" in err and "may be there" in err
        for _ in range(2):  # enqueues go on, checked on this node alone (the second does not ask)
            queued = a.put(unique("while-hung"), 1, uuid.uuid4().hex)
            assert queued.status_code == 201 and queued.headers["X-Peer-Unavailable"] == "1"
        page = a.get("/results", after=cursor, limit=1000)
        assert page.status_code == 200 and page.headers["X-Peer-Unavailable"] == "1"
    a.run_all("w-hung")
    wait_for(lambda: on_b in b.run_all("w-hung"), timeout=10, what="b's task run")
    ids, after, pages = [], page.json()["next"], []  # the cursor still holds b's place
    while not pages or pages[-1]["results"] or pages[-1]["peer_unavailable"]:
        answer = a.get("/results", after=after, limit=1000)
        pages.append({**answer.json(), "peer_unavailable": "X-Peer-Unavailable" in answer.headers})
        ids += [r["id"] for r in pages[-1]["results"]]
        after = pages[-1]["next"]
    assert on_b in ids and len(ids) == len(set(ids)), pages
    assert a.get(f"/status/{on_b}").json()["state"] == "completed"
