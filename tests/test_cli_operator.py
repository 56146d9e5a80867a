"""`tm` and ``tmclient.Client`` for issue 23's queue features, on two real nodes that require
client keys: keys, enqueue with a priority and times, pause/resume, purge (with its count and
confirmation) and active."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import pytest

from provisioning.local_cluster import ROOT
from tests.helpers import running_cluster, wait_for
from tmclient import ApiError, Client

pytestmark = pytest.mark.integration

OPERATOR = "operator-secret-cli"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "API_KEYS": "required", "OPERATOR_TOKEN": OPERATOR, "PEER_TOKEN": "peer-cli"}
    with running_cluster(env, tmp_path_factory.mktemp("cli-operator")) as running:
        yield running


@pytest.fixture(scope="module")
def key(cluster) -> str:
    made = tm(cluster, "keys", "create", "--name", "cli-test", token=OPERATOR)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("tmk_") and "shown only now" in made.stderr
    return key


def tm(cluster, *argv: str, token: str | None = None, api_key: str | None = None, stdin: bytes | None = None):
    env = {k: v for k, v in os.environ.items() if k not in ("TM_TOKEN", "TM_API_KEY")}
    env.update(TM_NODES=",".join(cluster.urls), **({"TM_TOKEN": token} if token else {}),
               **({"TM_API_KEY": api_key} if api_key else {}))
    return subprocess.run([sys.executable, "-m", "tmclient", *argv], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


def claim(cluster, url: str, worker: str, count: int = 1) -> list[dict]:
    import requests

    answer = requests.post(f"{url}/claim", json={"worker_id": worker, "max_tasks": count},
                           headers={"X-Cluster-Token": cluster.token}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["tasks"]


def test_without_a_key_tm_says_what_to_do(cluster, tmp_path):
    body = tmp_path / "b"
    body.write_bytes(b"x")
    refused = tm(cluster, "enqueue", str(body), "-n", "1")
    assert refused.returncode == 1 and "api_key_required" in refused.stderr and "TM_API_KEY" in refused.stderr


def test_enqueue_with_priority_and_times_shows_in_status(cluster, key, tmp_path):
    body = tmp_path / "b"
    body.write_bytes(b"prio")
    queued = tm(cluster, "enqueue", str(body), "-n", "5", "--priority", "7", "--countdown", "600",
                "--expires-in", "900", api_key=key)
    assert queued.returncode == 0, queued.stderr
    task_id = queued.stdout.strip()
    shown = tm(cluster, "--json", "status", task_id, api_key=key)
    task = json.loads(shown.stdout)[0]
    assert (task["priority"], task["state"]) == (7, "queued")
    assert time.time() + 500 < task["not_before"] < task["deadline"] < time.time() + 1000
    table = tm(cluster, "status", task_id, api_key=key)
    assert "priority" in table.stdout.splitlines()[0] and " 7 " in table.stdout
    assert tm(cluster, "enqueue", str(body), "-n", "1", "--priority", "10", api_key=key).returncode == 2
    client = Client(cluster.urls, api_key=key, token=OPERATOR)
    assert client.purge() and client.status(task_id)["state"] == "cancelled"


def test_keys_list_and_revoke_through_tm_and_the_client(cluster, key):
    client = Client(cluster.urls, token=OPERATOR)
    other = client.create_key("temporary")
    listed = tm(cluster, "--json", "keys", "list", token=OPERATOR)
    assert {k["id"] for k in json.loads(listed.stdout)} >= {other["id"]}
    revoked = tm(cluster, "keys", "revoke", other["id"], "ffffffffffff", token=OPERATOR)
    assert revoked.returncode == 1 and "unknown_key" in revoked.stderr and other["id"] in revoked.stdout
    gone = Client(cluster.urls, api_key=other["key"], retries=1)
    with pytest.raises(ApiError) as raised:
        gone.enqueue(b"x", 1)
    assert raised.value.code == "api_key_revoked"
    assert tm(cluster, "keys", "list", token=None).returncode == 1  # not the operator


def test_pause_refuses_on_both_nodes_until_resume(cluster, key, tmp_path):
    body = tmp_path / "b"
    body.write_bytes(b"paused")
    paused = tm(cluster, "pause", token=OPERATOR)
    assert paused.returncode == 0 and paused.stdout.count("intake paused") == 2
    try:
        refused = tm(cluster, "enqueue", str(body), "-n", "1", api_key=key)
        assert refused.returncode == 1 and "paused" in refused.stderr and "tm resume" in refused.stderr
        stats = Client(cluster.urls).stats()
        assert all(node["intake"]["paused"] for node in stats["nodes"])
    finally:
        resumed = tm(cluster, "resume", token=OPERATOR)
    assert resumed.returncode == 0 and resumed.stdout.count("intake open") == 2
    assert tm(cluster, "enqueue", str(body), "-n", "1", api_key=key).returncode == 0
    Client(cluster.urls, token=OPERATOR).purge()


def test_purge_shows_the_count_asks_and_cancels(cluster, key):
    client = Client(cluster.urls, api_key=key, token=OPERATOR)
    ids = client.enqueue_many([f"purge-{i}".encode() for i in range(6)], 1, priority=3)
    ids.append(client.enqueue(b"later", 1, countdown=300))
    wait_for(lambda: sum(n["queued"] + n["scheduled"] for n in client.stats()["nodes"]) == 7, timeout=10)
    piped = tm(cluster, "purge", token=OPERATOR, stdin=b"y\n")
    assert piped.returncode == 2 and "7 queued tasks" in piped.stderr and "--yes" in piped.stderr
    declined = purge_at_a_terminal(cluster, b"n\n")
    assert "Cancel the 7 queued task(s) on 2 node(s)?" in declined and "nothing purged" in declined
    assert all(client.status(i)["state"] == "queued" for i in ids)
    confirmed = purge_at_a_terminal(cluster, b"y\n")
    counts = [int(line.split(": ")[1].split()[0]) for line in confirmed.splitlines() if "purged" in line
              and "task(s)" in line]
    assert sum(counts) == 7 and len(counts) == 2, confirmed
    assert all(client.status(i)["reason"] == "purged by the operator" for i in ids)


def purge_at_a_terminal(cluster, answer: bytes) -> str:
    """``tm purge`` with its stdin on a pseudo-terminal, as a person runs it; returns its output."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "TM_NODES": ",".join(cluster.urls), "TM_TOKEN": OPERATOR}
    proc = subprocess.Popen([sys.executable, "-m", "tmclient", "purge"], stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    os.close(terminal)
    os.write(controller, answer)
    out, _ = proc.communicate(timeout=60)
    os.close(controller)
    assert proc.returncode == 0, out
    return out.decode()


def test_active_merges_both_nodes_by_worker(cluster, key):
    client = Client(cluster.urls, api_key=key, token=OPERATOR)
    a, b = cluster.urls
    on_a = Client([a], api_key=key).enqueue(b"held on a", 1000, priority=2)
    on_b = Client([b], api_key=key).enqueue(b"held on b", 1000)
    assert [t["id"] for t in claim(cluster, a, "w-both")] == [on_a]
    assert [t["id"] for t in claim(cluster, b, "w-both")] == [on_b]
    workers = client.active()
    assert [(w["id"], sorted((t["id"], t["node"], t["priority"]) for t in w["tasks"])) for w in workers] == [
        ("w-both", sorted([(on_a, "node-a", 2), (on_b, "node-b", 0)]))]
    shown = tm(cluster, "active", token=OPERATOR)
    assert shown.returncode == 0 and on_a in shown.stdout and on_b in shown.stdout and "w-both" in shown.stdout
    assert tm(cluster, "active", api_key=key).returncode == 1  # a client key is not the operator's
