"""A task id is the capability to cancel or retry it: no public view lists the id of a queued or
running task, an operator may require a token for cancel and retry, a browser's writes are
checked against the node's own address (not the Host header, which DNS rebinding controls),
``/stats`` shows no path, and workers get no token but the cluster token."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from nodeapp import create_app
from provisioning.launchers import LocalProcessLauncher
from provisioning.local_cluster import free_port
from tests.conftest import TOKEN
from tests.digests import sha512_chain
from tests.helpers import FakeLauncher, wait_for

#: Every public read a client or a browser can make without a token.
PUBLIC_READS = [("GET", "/stats"), ("GET", "/dashboard/data"), ("GET", "/dashboard/node"), ("GET", "/history"),
                ("GET", "/dashboard/history"), ("GET", "/metrics"), ("GET", "/results"),
                ("POST", "/pullCompleted?top=100"), ("GET", "/health"), ("GET", "/")]


def make_app(**settings):
    return create_app({"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1",
                       **settings}, launcher=FakeLauncher())


def test_no_public_view_lists_the_id_of_a_queued_or_running_task(client, auth):
    running = client.put("/enqueue?iterations=1000", data=b"long").get_json()
    queued = client.put("/enqueue?iterations=7", data=b"waits").get_json()
    sharer = client.put("/enqueue?iterations=1000", data=b"long").get_json()  # shares the run of `running`
    assert "reused_from" not in sharer  # the answer names no task the client does not own
    claimed = client.post("/claim", json={"worker_id": "w1", "max_tasks": 1}, headers=auth).get_json()["tasks"]
    assert [t["id"] for t in claimed] == [running["id"]]
    client.post("/heartbeat", json={"worker_id": "w1", "task_ids": [running["id"]],
                                    "checkpoints": [{"id": running["id"], "done": 500, "digest": "ab" * 64}]},
                headers=auth)
    secrets = {running["id"], queued["id"], sharer["id"]}
    for method, path in PUBLIC_READS:
        body = client.open(path, method=method).get_data(as_text=True)
        assert not any(s in body for s in secrets), path
    own = client.get(f"/status/{sharer['id']}").get_json()
    assert own["state"] == "running" and own["done"] == 500 and running["id"] not in str(own)
    # the long task still shows its progress, without its id
    (shown,) = client.get("/stats").get_json()["in_progress"]
    assert shown == {"done": 500, "iterations": 1000}
    # once the run completed, both show it, and the sharer names the task that ran
    client.post("/complete", json={"worker_id": "w1", "results": [{"id": running["id"],
                                                                   "result": sha512_chain(b"long", 1000)}]},
                headers=auth)
    assert client.get(f"/status/{sharer['id']}").get_json()["reused_from"] == running["id"]


@pytest.fixture
def guarded():
    return make_app(actions_token="let-me-act").test_client()


@pytest.mark.parametrize("headers", [{}, {"X-Cluster-Token": "nope"}])
def test_cancel_and_retry_need_the_actions_token_when_one_is_set(guarded, headers):
    task_id = guarded.put("/enqueue?iterations=3", data=b"x").get_json()["id"]
    refused = guarded.post(f"/cancel/{task_id}", headers=headers)
    assert refused.status_code == 401 and refused.get_json()["error"] == "unauthorized"
    assert "ACTIONS_TOKEN" in refused.get_json()["message"]
    assert guarded.get(f"/status/{task_id}").get_json()["state"] == "queued"
    assert guarded.post(f"/cancel/{task_id}", headers={"X-Cluster-Token": "let-me-act"}).get_json()["state"] == \
        "cancelled"
    assert guarded.post(f"/retry/{task_id}", headers=headers).status_code == 401
    assert guarded.get(f"/status/{task_id}").get_json()["state"] == "cancelled"
    assert guarded.post(f"/retry/{task_id}", headers={"X-Cluster-Token": "let-me-act"}).get_json()["state"] == \
        "queued"


def test_the_operator_and_peer_tokens_act_too_and_the_worker_token_does_not():
    client = make_app(actions_token="let-me-act", peer_token="peer-t", operator_token="op-t").test_client()
    ids = [client.put("/enqueue?iterations=3", data=b"t%d" % i).get_json()["id"] for i in range(3)]
    assert client.post(f"/cancel/{ids[0]}", headers={"X-Cluster-Token": "op-t"}).status_code == 200
    assert client.post(f"/cancel/{ids[1]}", headers={"X-Cluster-Token": "peer-t"}).status_code == 200  # forwarded
    assert client.post(f"/cancel/{ids[2]}", headers={"X-Cluster-Token": TOKEN}).status_code == 403


def test_without_the_setting_cancel_needs_no_token(client):
    task_id = client.put("/enqueue?iterations=3", data=b"x").get_json()["id"]
    assert client.post(f"/cancel/{task_id}").get_json()["state"] == "cancelled"


@pytest.mark.parametrize("headers", [
    {"Host": "rebind.example:1", "Origin": "http://rebind.example:1"},  # DNS rebinding: Host and Origin agree
    {"Host": "rebind.example:1", "Sec-Fetch-Site": "same-origin"},
    {"Host": "127.0.0.1:1", "Origin": "http://rebind.example:1"},
])
def test_a_browser_on_a_name_that_is_not_the_nodes_cannot_act(client, headers):
    task_id = client.put("/enqueue?iterations=3", data=b"x").get_json()["id"]
    refused = client.post(f"/cancel/{task_id}", headers=headers)
    assert refused.status_code == 403 and refused.get_json()["error"] == "cross_origin"
    assert client.get(f"/status/{task_id}").get_json()["state"] == "queued"
    assert client.put("/enqueue?iterations=3", data=b"y", headers=headers).status_code == 403


@pytest.mark.parametrize("host", ["127.0.0.1:1", "localhost:1", "[::1]:1", "10.0.3.7", "node-a.internal:8000"])
def test_a_browser_on_the_nodes_own_address_or_an_ip_may_act(host):
    client = make_app(node_url="http://node-a.internal:8000").test_client()
    task_id = client.put("/enqueue?iterations=3", data=b"x").get_json()["id"]
    answer = client.post(f"/cancel/{task_id}", headers={"Host": host, "Origin": f"http://{host}",
                                                        "Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 200 and answer.get_json()["state"] == "cancelled"


def test_stats_shows_no_path_of_the_data_directory(tmp_path):
    app = make_app(data_dir=str(tmp_path / "journal"))
    try:
        body = app.test_client().get("/stats").get_data(as_text=True)
        journal = app.test_client().get("/stats").get_json()["journal"]
        assert journal["durable"] is True and "data_dir" not in journal
        assert str(tmp_path) not in body
    finally:
        app.extensions["nodeapp"].close()


def test_the_local_launcher_hands_workers_the_cluster_token_only(monkeypatch):
    for name, value in {"PEER_TOKEN": "peer-secret", "OPERATOR_TOKEN": "op-secret",
                        "ACTIONS_TOKEN": "act-secret", "CLUSTER_TOKEN": "node-env-token"}.items():
        monkeypatch.setenv(name, value)
    launcher = LocalProcessLauncher(token=TOKEN, idle_seconds=30, node_name="caps", python=sys.executable)
    (worker_id,) = launcher.launch(1, [f"http://127.0.0.1:{free_port()}"])
    try:
        pid = launcher.pids()[worker_id]
        environ = wait_for(lambda: Path(f"/proc/{pid}/environ").read_bytes(), timeout=10, what="worker environ")
        seen = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        assert seen[b"CLUSTER_TOKEN"] == TOKEN.encode()
        assert not {b"PEER_TOKEN", b"OPERATOR_TOKEN", b"ACTIONS_TOKEN"} & set(seen)
        assert not any(secret in environ for secret in (b"peer-secret", b"op-secret", b"act-secret"))
    finally:
        launcher.stop_all()
    assert os.environ["PEER_TOKEN"] == "peer-secret"  # the node's own environment is left alone
