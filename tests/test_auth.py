"""Split powers (nodeapp/web/auth.py): a worker's token cannot borrow quota nor configure the node, the
peer's cannot configure it, the operator's can but never above the MAX_NUM_OF_WORKERS it started
with; with CLUSTER_TOKEN alone every internal endpoint opens (local mode)."""

from __future__ import annotations

import pytest

from nodeapp import create_app
from tests.helpers import FakeLauncher

WORKER_TOKEN, PEER_TOKEN, OPERATOR_TOKEN = "worker-token", "peer-token", "operator-token"


@pytest.fixture
def client():
    app = create_app({"cluster_token": WORKER_TOKEN, "peer_token": PEER_TOKEN, "operator_token": OPERATOR_TOKEN,
                      "node_name": "n", "node_url": "http://127.0.0.1:1", "max_workers": 4},
                     launcher=FakeLauncher())
    client = app.test_client()
    client.context = app.extensions["nodeapp"]
    return client


def call(client, method: str, path: str, json: dict | None, token: str | None):
    headers = {"X-Cluster-Token": token} if token else {}
    return client.open(path, method=method, json=json if json is not None else {}, headers=headers)


WORKER_CALLS = [("POST", "/claim", {"worker_id": "w1"}), ("POST", "/heartbeat", {"worker_id": "w1"}),
                ("POST", "/complete", {"worker_id": "w1", "results": []}), ("POST", "/worker_down/w1", {})]
PEER_CALLS = [("GET", "/try_get_node_quota", None),
              ("POST", "/return_quota", {}),
              ("POST", "/lookup", {"keys": ["k"], "works": []})]  # idempotency keys and results, before an enqueue
CONFIGURE = ("POST", "/configure", {"max_workers": 2})


@pytest.mark.parametrize("method, path, body", WORKER_CALLS)
def test_workers_calls_take_the_worker_or_the_peer_token(client, method, path, body):
    for token in (WORKER_TOKEN, PEER_TOKEN):
        assert call(client, method, path, body, token).status_code == 200
    for token in (None, "wrong", OPERATOR_TOKEN):
        assert call(client, method, path, body, token).status_code == 401


@pytest.mark.parametrize("method, path, body", PEER_CALLS)
def test_a_worker_cannot_borrow_or_return_quota(client, method, path, body):
    refused = call(client, method, path, body, WORKER_TOKEN)
    assert refused.status_code == 403 and refused.get_json()["error"] == "forbidden"
    assert "PEER_TOKEN" in refused.get_json()["message"]
    assert client.context.node.workers.counts().lent == 0
    assert call(client, method, path, body, None).status_code == 401
    assert call(client, method, path, body, PEER_TOKEN).status_code == 200


def test_only_the_operator_configures_and_never_above_what_was_provisioned(client):
    for token in (WORKER_TOKEN, PEER_TOKEN):
        refused = call(client, *CONFIGURE, token)
        assert refused.status_code == 403 and "OPERATOR_TOKEN" in refused.get_json()["message"]
    assert client.context.node.workers.counts().max == 4  # unchanged
    assert call(client, *CONFIGURE, OPERATOR_TOKEN).get_json()["max_workers"] == 2
    above = call(client, "POST", "/configure", {"max_workers": 5}, OPERATOR_TOKEN)
    assert above.status_code == 400 and above.get_json()["error"] == "above_provisioned"
    assert client.context.node.workers.counts().max == 2
    assert call(client, "POST", "/configure", {"max_workers": 4}, OPERATOR_TOKEN).status_code == 200


def test_one_token_opens_everything_when_the_others_are_unset():
    client = create_app({"cluster_token": "only", "node_name": "n", "node_url": "http://127.0.0.1:1"},
                        launcher=FakeLauncher()).test_client()
    for method, path, body in (*WORKER_CALLS, *PEER_CALLS, CONFIGURE):
        assert call(client, method, path, body, "only").status_code == 200, path


def test_the_node_sends_its_peer_token_to_its_peer(client):
    assert client.context.peer._session.headers["X-Cluster-Token"] == PEER_TOKEN
