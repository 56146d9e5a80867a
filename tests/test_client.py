"""tmclient.Client against a real two-node local cluster: results, errors, fail-over, waiting."""

from __future__ import annotations

import io
import os
import time

import pytest
import requests

from provisioning.local_cluster import free_port
from tests.helpers import QUICK_ENV, running_cluster
from tmclient.client import ApiError, Client, NodesUnreachable, TaskManagerError, WaitTimeout, parse_nodes
from workerapp.compute import compute


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(QUICK_ENV, tmp_path_factory.mktemp("client-cluster")) as nodes:
        yield nodes


@pytest.fixture
def client(cluster) -> Client:
    return Client(cluster.urls, timeout=5)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def enqueued(url: str) -> int:
    return requests.get(url + "/stats", timeout=5).json()["enqueued"]


def test_parse_nodes_accepts_lists_and_comma_strings():
    assert parse_nodes(" 127.0.0.1:8001/, http://127.0.0.1:8002 ") == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert parse_nodes(["https://a.example"]) == ["https://a.example"]
    with pytest.raises(ValueError):
        parse_nodes(" , ")
    with pytest.raises(ValueError):
        parse_nodes("ftp://x")


@pytest.mark.integration
def test_enqueue_bytes_path_and_file_then_wait_gives_the_right_results(client, tmp_path):
    path = tmp_path / "body.bin"
    path.write_bytes(b"from a path")
    ids = {
        client.enqueue(b"from bytes", 300): (b"from bytes", 300),
        client.enqueue(path, 2): (b"from a path", 2),
        client.enqueue(io.BytesIO(b"from a file"), 1): (b"from a file", 1),
        client.enqueue(b"", 7): (b"", 7),
    }
    done = client.wait(list(ids), timeout=60, poll=0.1)
    assert list(done) == list(ids)
    for task_id, (body, iterations) in ids.items():
        assert done[task_id]["state"] == "completed"
        assert done[task_id]["result"] == compute(body, iterations)
        status = client.status(task_id)
        assert status["state"] == "completed" and status["result"] == compute(body, iterations)
        assert status["completed_at"] >= status["enqueued_at"]
    newest = {r["id"] for r in client.pull_completed(50)}
    assert set(ids) <= newest


@pytest.mark.integration
def test_enqueue_takes_the_nodes_in_turn(cluster, client):
    before = [enqueued(url) for url in cluster.urls]
    ids = [client.enqueue(b"x", 1) for _ in range(4)]
    after = [enqueued(url) for url in cluster.urls]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2]
    client.wait(ids, timeout=60, poll=0.1)


@pytest.mark.integration
def test_http_errors_carry_the_server_code_and_message(client):
    with pytest.raises(ApiError) as bad:
        client.enqueue(b"x", 0)
    assert bad.value.status == 400 and bad.value.code == "bad_iterations" and "iterations" in bad.value.message
    with pytest.raises(ApiError) as unknown:
        client.status("no-such-task")
    assert unknown.value.status == 404 and unknown.value.code == "unknown_task"
    with pytest.raises(ApiError) as bad_top:
        client.pull_completed(0)
    assert bad_top.value.code == "bad_top"
    with pytest.raises(ApiError) as waiting:
        client.wait(["no-such-task"], timeout=5)
    assert waiting.value.code == "unknown_task"


@pytest.mark.integration
def test_fails_over_to_the_node_that_answers(cluster):
    client = Client([dead_url(), cluster.urls[1]], timeout=2, backoff=0.05)
    before = enqueued(cluster.urls[1])
    ids = [client.enqueue(b"fail-over", 3) for _ in range(4)]
    assert enqueued(cluster.urls[1]) == before + 4
    done = client.wait(ids, timeout=60, poll=0.1)
    assert all(task["result"] == compute(b"fail-over", 3) for task in done.values())
    assert client.status(ids[0])["state"] == "completed"
    stats = client.stats()
    assert [n["reachable"] for n in stats["nodes"]] == [False, True]
    assert stats["nodes"][0]["error"]
    assert stats["totals"]["enqueued"] == stats["nodes"][1]["enqueued"]


def test_no_reachable_node_raises_after_the_retries():
    client = Client([dead_url(), dead_url()], timeout=1, retries=3, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(NodesUnreachable) as err:
        client.status("anything")
    assert "connection refused" in str(err.value)
    assert time.monotonic() - started >= 0.05 + 0.1  # it backed off between rounds
    with pytest.raises(NodesUnreachable):
        client.stats()


@pytest.mark.integration
def test_stats_covers_both_nodes_and_adds_them_up(cluster, client):
    stats = client.stats()
    assert [n["url"] for n in stats["nodes"]] == cluster.urls
    assert [n["node"] for n in stats["nodes"]] == ["node-a", "node-b"]
    assert all(n["reachable"] for n in stats["nodes"])
    totals = stats["totals"]
    assert totals["completed"] == sum(n["completed"] for n in stats["nodes"])
    assert totals["workers"]["max"] == sum(n["workers"]["max"] for n in stats["nodes"])
    assert "cluster_token" not in str(stats) and cluster.token not in str(stats)


@pytest.mark.integration
def test_wait_times_out_then_finishes(client):
    progress: list[tuple[int, int]] = []
    slow_body = os.urandom(16)  # new (no reuse), and the most iterations: not done within 0.05 s in any lanes
    slow = client.enqueue(slow_body, 10_000_000)
    quick = client.enqueue(b"quick", 1)
    with pytest.raises(WaitTimeout) as timed_out:
        client.wait([slow], timeout=0.05, poll=0.1)
    assert timed_out.value.pending == [slow]
    done = client.wait([slow, quick], timeout=60, poll=0.1, on_progress=lambda d, t: progress.append((d, t)))
    assert done[slow]["result"] == compute(slow_body, 10_000_000)
    assert progress[-1] == (2, 2) and all(total == 2 for _, total in progress)


def test_client_without_urls_reads_tm_nodes_like_tm(monkeypatch):
    monkeypatch.setenv("TM_NODES", "127.0.0.1:8101, http://127.0.0.1:8102/")
    assert Client().node_urls == ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]
    monkeypatch.delenv("TM_NODES")
    with pytest.raises(TaskManagerError, match="TM_NODES"):
        Client()
    with pytest.raises(TaskManagerError, match="http"):
        Client("ftp://x")


@pytest.mark.integration
def test_a_str_is_a_body_paths_come_as_path_and_problems_are_task_manager_errors(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("TM_NODES", ",".join(cluster.urls))
    client = Client(timeout=5)
    (tmp_path / "hello world").write_bytes(b"not this")
    monkeypatch.chdir(tmp_path)  # a file named like the text must not be read either
    text_id = client.enqueue("hello world", 10)
    path = tmp_path / "body.bin"
    path.write_bytes(b"from a file")
    file_id = client.enqueue_file(str(path), 3)
    many = client.enqueue_many(["é", path], 2)
    done = client.wait([text_id, file_id, *many], timeout=60, poll=0.1)
    assert done[text_id]["result"] == compute(b"hello world", 10)
    assert done[file_id]["result"] == compute(b"from a file", 3)
    assert [done[i]["result"] for i in many] == [compute("é".encode(), 2), compute(b"from a file", 2)]

    before = sum(enqueued(url) for url in cluster.urls)
    with pytest.raises(TaskManagerError, match="cannot read .*missing"):
        client.enqueue(tmp_path / "missing", 1)
    with pytest.raises(TaskManagerError, match="cannot read"):
        client.enqueue_many([b"ok", tmp_path / "missing"], 1)
    with pytest.raises(TaskManagerError, match="binary mode"):
        with open(path, encoding="utf-8") as text_file:
            client.enqueue(text_file, 1)
    with pytest.raises(TaskManagerError, match="int"):
        client.enqueue(42, 1)
    assert sum(enqueued(url) for url in cluster.urls) == before


@pytest.mark.integration
def test_wait_returns_what_status_returns_for_each_task(client):
    ids = [client.enqueue(f"shape {i}", 5) for i in range(3)]
    done = client.wait(ids, timeout=60, poll=0.1)
    assert list(done) == ids
    for task_id in ids:
        assert done[task_id] == client.status(task_id)
        assert {"id", "state", "iterations", "enqueued_at", "completed_at", "result"} <= set(done[task_id])


@pytest.mark.integration
def test_a_refused_batch_names_the_task_by_its_index_in_the_items(client):
    too_big = b"x" * (1024 * 1024 + 1)  # MAX_BODY_BYTES + 1
    with pytest.raises(ApiError) as refused:
        client.enqueue_many([b"a", b"b", too_big], 1)
    assert refused.value.code == "body_too_large" and refused.value.task_index == 2
