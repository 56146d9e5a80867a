"""A node with DATA_DIR, through the Flask test client: what it told clients and workers is still
there after it is rebuilt on the same directory; without DATA_DIR nothing changes."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from nodeapp import create_app
from nodeapp.store.journal import DB_NAME, DataDirInUse
from tests.conftest import TOKEN
from tests.helpers import FakeLauncher, in_threads
from tests.test_api import RESULT, assert_error, claim, complete, enqueue, sha512_result

AUTH = {"X-Cluster-Token": TOKEN}


def node(data_dir, **settings):
    """A node on ``data_dir``; ``close()`` it (as gunicorn's worker_exit does) before the next."""
    settings = {"cluster_token": TOKEN, "node_name": "durable", "node_url": "http://127.0.0.1:1",
                "data_dir": str(data_dir), "verify_iterations": 0, **settings}  # made-up results: no spot-checks
    app = create_app(settings, launcher=FakeLauncher())
    return app, app.test_client()


def close(app) -> None:
    app.extensions["nodeapp"].close()


def test_enqueued_counts_every_task_accepted_though_an_enqueue_writes_no_counters(tmp_path):
    """An enqueue's commit is its row alone: the rows newer than the last counters written are
    counted at start, before and after counters are written again, and over several restarts."""
    app, client = node(tmp_path, lease_seconds=60)
    ids = [enqueue(client, f"first {i}".encode()) for i in range(5)]
    stored = sqlite3.connect(tmp_path / DB_NAME).execute("SELECT value FROM counters WHERE name = 'enqueued'")
    assert stored.fetchone()[0] == 1  # written with the first enqueue (every counter was new), not since
    close(app)
    app, client = node(tmp_path, lease_seconds=60)
    assert client.get("/stats").get_json()["enqueued"] == 5
    ids += [enqueue(client, f"second {i}".encode()) for i in range(3)]
    [task] = claim(client, AUTH, "w1", max_tasks=1)
    assert complete(client, AUTH, "w1", [(task["id"], RESULT)]) == 1  # writes the counters, enqueued 8
    ids += [enqueue(client, f"third {i}".encode()) for i in range(2)]
    close(app)
    app, client = node(tmp_path, lease_seconds=60)
    stats = client.get("/stats").get_json()
    assert (stats["enqueued"], stats["completed"], stats["queued"]) == (10, 1, 9)
    close(app)
    app, client = node(tmp_path, lease_seconds=60)  # and again: nothing counted twice
    assert client.get("/stats").get_json()["enqueued"] == 10 and len(set(ids)) == 10
    close(app)


def test_queue_results_failures_and_counters_come_back(tmp_path):
    app, client = node(tmp_path, max_attempts=1, lease_seconds=60)
    ids = [enqueue(client, f"body {i}".encode(), i + 1) for i in range(6)]
    leased = claim(client, AUTH, "w1", max_tasks=3)  # ids 0, 1, 2
    assert complete(client, AUTH, "w1", [(ids[0], sha512_result(b"body 0", 1))]) == 1
    assert client.post("/worker_down/w1", json={}, headers=AUTH).status_code == 200  # 1 and 2 fail
    claim(client, AUTH, "w2", max_tasks=1)  # id 3 running when the node goes away
    before = client.get("/stats").get_json()
    close(app)

    app, client = node(tmp_path, max_attempts=1, lease_seconds=60)
    stats = client.get("/stats").get_json()
    assert (stats["queued"], stats["running"]) == (3, 0)  # the running task is queued again
    for key in ("enqueued", "completed", "failed", "results_kept"):
        assert stats[key] == before[key], key
    assert stats["journal"]["durable"] is True and stats["journal"]["recovered"] == {
        "queued": 3, "completed": 1, "failed": 2}
    assert [t["id"] for t in claim(client, AUTH, "w3", max_tasks=10)] == ids[3:]  # submission order
    assert client.get(f"/status/{ids[0]}").get_json()["result"] == sha512_result(b"body 0", 1)
    assert client.get(f"/status/{ids[1]}").get_json()["state"] == "failed"
    assert "MAX_ATTEMPTS" in client.get(f"/status/{ids[2]}").get_json()["reason"]
    assert [r["id"] for r in client.post("/pullCompleted?top=10").get_json()] == [ids[0]]
    # A late result from the lease of before the restart is ignored; the new lease holder's counts.
    assert complete(client, AUTH, "w2", [(ids[3], RESULT)]) == 0
    assert complete(client, AUTH, "w3", [(ids[3], RESULT)]) == 1
    new_id = enqueue(client)
    assert new_id not in ids and len(leased) == 3
    close(app)


def test_bodies_are_dropped_and_results_trimmed_in_the_file(tmp_path):
    app, client = node(tmp_path, results_retention=3)
    ids = [enqueue(client, b"%d" % i * 1000) for i in range(10)]
    complete(client, AUTH, "w", [(t["id"], RESULT) for t in claim(client, AUTH, "w", max_tasks=8)])
    close(app)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        rows = conn.execute("SELECT state, body IS NULL FROM tasks ORDER BY seq").fetchall()
    assert rows == [(1, 1)] * 3 + [(0, 0)] * 2  # 3 results kept, 2 tasks queued with their body
    app, client = node(tmp_path, results_retention=2)  # retention lowered: trimmed again
    assert [r["id"] for r in client.post("/pullCompleted?top=10").get_json()] == [ids[7], ids[6]]
    enqueue(client)
    close(app)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE state = 1").fetchone() == (2,)


def test_health_and_stats_say_whether_the_node_is_durable(tmp_path):
    app, client = node(tmp_path, journal_sync="always")
    assert client.get("/health").get_json()["durable"] is True
    assert client.get("/stats").get_json()["journal"]["sync"] == "always"
    close(app)
    memory = create_app({"cluster_token": TOKEN}, launcher=FakeLauncher()).test_client()
    assert memory.get("/health").get_json()["durable"] is False
    assert memory.get("/stats").get_json()["journal"] == {"durable": False}


def test_a_second_node_on_the_same_data_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("nodeapp.store.journal.LOCK_WAIT", 0.3)
    app, _ = node(tmp_path)
    with pytest.raises(DataDirInUse, match="in use by another node process"):
        node(tmp_path)
    close(app)


def test_journal_failure_is_a_json_503(tmp_path):
    app, client = node(tmp_path)
    enqueue(client)
    close(app)  # the journal is gone: nothing can be made durable any more
    body = assert_error(client.put("/enqueue?iterations=1", data=b"x"), 503, "journal_unavailable")
    assert "retry" in body["message"]


def test_concurrent_enqueues_share_commits_and_all_survive(tmp_path):
    app, client = node(tmp_path, journal_batch_ms=5)
    ids: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        mine = [enqueue(app.test_client(), os.urandom(16)) for _ in range(25)]
        with lock:
            ids.extend(mine)

    in_threads(send, 8)
    journal = client.get("/stats").get_json()["journal"]
    assert journal["commits"] < len(ids)
    close(app)
    app, client = node(tmp_path)
    assert sorted(t["id"] for t in claim(client, AUTH, "w", max_tasks=1000)) == sorted(ids)
    close(app)


def test_a_running_task_comes_back_with_its_newest_checkpoint(tmp_path):
    digest = "ab" * 64
    app, client = node(tmp_path, lease_seconds=60)
    long_id, short_id = enqueue(client, b"long", 1000), enqueue(client, b"short", 1000)
    claim(client, AUTH, "w1", max_tasks=2)
    for done in (300, 600):  # the newest one counts
        client.post("/heartbeat", headers=AUTH, json={"worker_id": "w1", "task_ids": [long_id, short_id],
                                                      "checkpoints": [{"id": long_id, "done": done, "digest": digest}]})
    client.post("/heartbeat", headers=AUTH, json={"worker_id": "w1", "task_ids": [short_id],
                                                  "checkpoints": [{"id": short_id, "done": 100, "digest": digest}]})
    assert complete(client, AUTH, "w1", [(short_id, RESULT)]) == 1  # its checkpoint ends with it
    close(app)

    app, client = node(tmp_path, lease_seconds=60)
    status = client.get(f"/status/{long_id}").get_json()
    assert (status["state"], status["done"]) == ("queued", 600)
    (leased,) = claim(client, AUTH, "w2")
    assert (leased["id"], leased["checkpoint"]) == (long_id, {"done": 600, "digest": digest})
    assert complete(client, AUTH, "w2", [(long_id, RESULT)]) == 1
    assert client.get(f"/status/{long_id}").get_json()["resumed_from"] == 600
    close(app)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE ckpt_done IS NOT NULL").fetchone() == (0,)


def test_identical_tasks_count_against_max_queued_and_come_back_sharing_one_run(tmp_path):
    """200 enqueues of one body with MAX_QUEUED=10 and no worker: 10 accepted (sharers count),
    and after a restart they share one run again, as docs/durability.md says."""
    app, client = node(tmp_path, max_queued=10)
    answers = [client.put("/enqueue?iterations=3", data=b"same") for _ in range(200)]
    accepted = [a.get_json()["id"] for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert len(accepted) == 10 and all(a.status_code == 503 and a.get_json()["error"] == "queue_full"
                                       for a in refused)
    assert client.get("/stats").get_json()["queued"] == 1  # one run queued; nine share it
    close(app)

    app, client = node(tmp_path, max_queued=10)
    stats = client.get("/stats").get_json()
    assert stats["queued"] == 1 and stats["journal"]["recovered"]["queued"] == 10
    assert client.put("/enqueue?iterations=3", data=b"same").status_code == 503  # still full
    (leased,) = claim(client, AUTH, "w1", max_tasks=100)  # one run for the ten
    assert complete(client, AUTH, "w1", [(leased["id"], sha512_result(b"same", 3))]) == 1
    for task_id in accepted:
        task = client.get(f"/status/{task_id}").get_json()
        assert task["state"] == "completed" and task["result"] == sha512_result(b"same", 3)
    assert client.get("/stats").get_json()["reused"] == 9
    close(app)


def test_a_restarted_node_still_says_which_results_were_spot_checked(tmp_path):
    from tests.helpers import wait_for
    from tmcommon.marks import positions

    long = 200_000  # with VERIFY_ITERATIONS=1: checked with probability 1 / 200,000; a 1-iteration task always
    app, client = node(tmp_path, verify_iterations=1, verify_probation=0)
    checked = enqueue(client, b"short", 1)
    unchecked = enqueue(client, b"long", long)
    auth = {"X-Cluster-Token": TOKEN}
    client.post("/claim", json={"worker_id": "w", "max_tasks": 2, "rate": 1e9}, headers=auth)
    results = [{"id": checked, "result": sha512_result(b"short", 1)},
               {"id": unchecked, "result": "11" * 64, "marks": ["22" * 64] * len(positions(long))}]
    assert client.post("/complete", json={"worker_id": "w", "results": results}, headers=auth).get_json() == \
        {"accepted": 2}
    wait_for(lambda: client.get(f"/status/{checked}").get_json()["state"] == "completed", 10, what="the check")
    before = {i: client.get(f"/status/{i}").get_json()["spot_checked"] for i in (checked, unchecked)}
    assert before == {checked: True, unchecked: False}
    close(app)
    app, client = node(tmp_path, verify_iterations=1, verify_probation=0)
    assert {i: client.get(f"/status/{i}").get_json()["spot_checked"] for i in (checked, unchecked)} == before
    close(app)
    app, client = node(tmp_path)  # checks off now: what was known then is still said
    assert {i: client.get(f"/status/{i}").get_json()["spot_checked"] for i in (checked, unchecked)} == before
    close(app)
