"""Client keys: the key ring, the endpoints with API_KEYS=required and off, owners, revocation,
and on two real nodes: a key made on one works on the other and survives a restart (DATA_DIR)."""

from __future__ import annotations

import json

import pytest
import requests

from nodeapp import create_app
from nodeapp.store.apikeys import MAX_KEYS, ApiKey, KeyRing, TooManyKeys, key_id_of
from tests.helpers import FakeLauncher, running_cluster, wait_for

OPERATOR = "operator-secret"
PEER = "peer-secret"


# ------------------------------------------------------------------ the ring
def test_a_key_verifies_until_revoked_and_only_its_digest_is_kept(tmp_path):
    ring = KeyRing(path=tmp_path / "keys.json")
    entry, key = ring.create("ci")
    assert key.startswith("tmk_") and key_id_of(key) == entry.id
    assert ring.verify(key) == entry
    assert ring.verify(key[:-1] + ("a" if key[-1] != "a" else "b")) is None
    assert key not in (tmp_path / "keys.json").read_text()
    assert ring.revoke(entry.id).revoked_at is not None
    assert ring.verify(key) is None
    again = KeyRing(path=tmp_path / "keys.json")  # a restart reads the file
    assert again.verify(key) is None and [k.id for k in again.listing()] == [entry.id]


def test_merge_adds_new_keys_and_a_revocation_wins_on_both_sides():
    a, b = KeyRing(), KeyRing()
    entry, key = a.create("x")
    assert b.merge(ApiKey.from_json(item) for item in a.to_json()) == 1
    assert b.verify(key) is not None
    b.revoke(entry.id)
    assert a.merge(ApiKey.from_json(item) for item in b.to_json()) == 1
    assert a.verify(key) is None
    assert b.merge(ApiKey.from_json(item) for item in a.to_json()) == 0, "nothing new: no change, no write"


def test_api_key_setting_is_accepted_under_its_own_id_and_can_be_revoked():
    ring = KeyRing("the-aws-key")
    assert ring.verify("the-aws-key").id == key_id_of("the-aws-key") and key_id_of("the-aws-key").startswith("env-")
    ring.revoke(key_id_of("the-aws-key"))
    assert ring.verify("the-aws-key") is None


def test_the_ring_holds_at_most_max_keys():
    ring = KeyRing()
    ring._keys = {f"{i:012x}": ApiKey(f"{i:012x}", "", "0" * 64, 0.0) for i in range(MAX_KEYS)}
    with pytest.raises(TooManyKeys):
        ring.create()
    assert ring.merge([ApiKey("f" * 12, "", "1" * 64, 1.0)]) == 0 and len(ring) == MAX_KEYS


class FakePeer:
    """The peer's side of ``POST /keys/sync``: its own ring, reachable or not."""

    url = "http://127.0.0.1:1"

    def __init__(self, ring: KeyRing) -> None:
        self.ring, self.up, self.calls = ring, True, 0

    def sync_keys(self, keys: list[dict]):
        self.calls += 1
        if not self.up:
            return None
        self.ring.merge(ApiKey.from_json(item) for item in keys)
        return self.ring.to_json()


def test_key_sync_exchanges_both_ways_and_an_unknown_key_asks_the_peer_at_most_once_a_second():
    from nodeapp.fleet.keysync import KeySync
    from tests.helpers import Clock

    mine, theirs, clock = KeyRing(), KeyRing(), Clock(0.0)
    peer = FakePeer(theirs)
    sync = KeySync(mine, peer, monotonic=clock)
    _, made_here = mine.create("here")
    _, made_there = theirs.create("there")
    peer.up = False
    assert sync.exchange() is None and mine.verify(made_there) is None  # a peer down: nothing learnt, no error
    peer.up = True
    assert sync.refresh() is True and mine.verify(made_there) and theirs.verify(made_here)
    assert sync.refresh() is False and peer.calls == 2, "a second unknown key within a second asks nobody"
    clock.now += 1.0
    assert sync.refresh() is False and peer.calls == 3  # asked again, nothing new


# ------------------------------------------------------------------ endpoints
def make_web(required: bool = True, **settings):
    app = create_app({"cluster_token": "worker-secret", "peer_token": PEER, "operator_token": OPERATOR,
                      "node_name": "n", "node_url": "http://127.0.0.1:1",
                      "api_keys": "required" if required else "off", **settings}, launcher=FakeLauncher())
    return app.test_client()


def new_key(web, name: str = "") -> str:
    answer = web.post("/keys", json={"name": name}, headers={"X-Cluster-Token": OPERATOR})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["key"]


def test_required_keys_guard_every_task_endpoint_and_owners_act_on_their_own_tasks():
    web = make_web()
    for method, path in [("PUT", "/enqueue?iterations=1"), ("POST", "/pullCompleted?top=1"), ("GET", "/results"),
                         ("GET", f"/status/{'0' * 32}"), ("POST", f"/cancel/{'0' * 32}")]:
        refused = web.open(path, method=method, data=b"x")
        assert refused.status_code == 401 and refused.get_json()["error"] == "api_key_required", (method, path)
    assert web.get("/stats").get_json()["enqueued"] == 0
    assert web.get("/health").status_code == 200  # the load balancer's check stays open
    alice, bob = new_key(web, "alice"), new_key(web, "bob")
    task = web.put("/enqueue?iterations=1", data=b"x", headers={"X-Api-Key": alice}).get_json()["id"]
    status = web.get(f"/status/{task}", headers={"X-Api-Key": bob}).get_json()  # any key reads
    assert status["owner"] == key_id_of(alice)
    refused = web.post(f"/cancel/{task}", headers={"X-Api-Key": bob})
    assert refused.status_code == 403 and refused.get_json()["error"] == "not_owner"
    assert web.get(f"/status/{task}", headers={"X-Api-Key": bob}).get_json()["state"] == "queued"
    assert web.post(f"/cancel/{task}", headers={"X-Api-Key": alice}).get_json()["state"] == "cancelled"
    assert web.post(f"/retry/{task}", headers={"X-Api-Key": bob}).status_code == 403
    assert web.post(f"/retry/{task}", headers={"X-Cluster-Token": OPERATOR}).get_json()["state"] == "queued"


def test_a_revoked_key_is_refused_at_once_and_listed_as_revoked():
    web = make_web()
    key = new_key(web, "temp")
    assert web.put("/enqueue?iterations=1", data=b"x", headers={"X-Api-Key": key}).status_code == 201
    key_id = key_id_of(key)
    assert web.post(f"/keys/{key_id}/revoke", headers={"X-Cluster-Token": "worker-secret"}).status_code == 403
    revoked = web.post(f"/keys/{key_id}/revoke", headers={"X-Cluster-Token": OPERATOR})
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None
    refused = web.put("/enqueue?iterations=1", data=b"y", headers={"X-Api-Key": key})
    assert refused.status_code == 401 and refused.get_json()["error"] == "api_key_revoked"
    listed = web.get("/keys", headers={"X-Cluster-Token": OPERATOR}).get_json()
    assert [(k["id"], k["name"], k["revoked_at"] is not None) for k in listed["keys"]] == [(key_id, "temp", True)]
    assert "digest" not in json.dumps(listed) and key not in json.dumps(listed)
    assert web.post("/keys/ffffffffffff/revoke", headers={"X-Cluster-Token": OPERATOR}).status_code == 404


def test_keys_off_lets_anyone_in_and_still_records_a_keys_tasks():
    web = make_web(required=False)
    assert web.put("/enqueue?iterations=1", data=b"x").status_code == 201
    key = new_key(web)
    task = web.put("/enqueue?iterations=1", data=b"y", headers={"X-Api-Key": key}).get_json()["id"]
    assert web.get(f"/status/{task}").get_json()["owner"] == key_id_of(key)
    assert web.post(f"/cancel/{task}").status_code == 200  # off: anyone may, as before


def test_the_keys_endpoints_refuse_bad_input_and_change_nothing():
    web = make_web()
    operator = {"X-Cluster-Token": OPERATOR}
    for body in ({"name": 5}, {"name": "x" * 101}, {"other": 1}):
        assert web.post("/keys", json=body, headers=operator).status_code == 400
    assert web.post("/keys/sync", json={"keys": [{"id": "nope"}]}, headers={"X-Cluster-Token": PEER}).status_code == 400
    assert web.post("/keys/sync", json={"keys": []}, headers=operator).status_code == 401  # the peer's power only
    assert web.get("/keys", headers=operator).get_json()["keys"] == []


# ------------------------------------------------------------------ two real nodes
@pytest.mark.integration
def test_a_key_made_on_one_node_works_on_the_other_and_survives_a_restart(tmp_path):
    env = {"MAX_NUM_OF_WORKERS": "0", "API_KEYS": "required", "OPERATOR_TOKEN": OPERATOR, "PEER_TOKEN": PEER}
    from provisioning.local_cluster import LocalCluster

    cluster = LocalCluster(env=env, log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    with running_cluster(env, tmp_path / "logs", cluster=cluster):
        a, b = cluster.urls
        made = requests.post(f"{a}/keys", json={"name": "shared"}, headers={"X-Cluster-Token": OPERATOR}, timeout=5)
        assert made.status_code == 201 and made.json()["peer_informed"] is True
        key = made.json()["key"]
        task = requests.put(f"{b}/enqueue", params={"iterations": 1, "priority": 4}, data=b"on b",
                            headers={"X-Api-Key": key}, timeout=5)
        assert task.status_code == 201, task.text
        task_id = task.json()["id"]
        # a cancel sent to A is passed on to B with the client's key, and B checks the owner
        other = requests.post(f"{a}/keys", json={}, headers={"X-Cluster-Token": OPERATOR}, timeout=5).json()["key"]
        refused = requests.post(f"{a}/cancel/{task_id}", headers={"X-Api-Key": other}, timeout=5)
        assert refused.status_code == 403 and refused.json()["error"] == "not_owner"
        cancelled = requests.post(f"{a}/cancel/{task_id}", headers={"X-Api-Key": key}, timeout=5)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        revoked = requests.post(f"{b}/keys/{key_id_of(other)}/revoke", headers={"X-Cluster-Token": OPERATOR}, timeout=5)
        assert revoked.status_code == 200 and revoked.json()["peer_informed"] is True
        assert requests.get(f"{a}/results", headers={"X-Api-Key": other}, timeout=5).status_code == 401
        cluster.stop_node(1)
        cluster.start_node(1)
        cluster.wait_healthy(60)
        assert requests.get(f"{b}/status/{task_id}", headers={"X-Api-Key": key}, timeout=5).json()["state"] == "cancelled"
        assert requests.get(f"{b}/results", headers={"X-Api-Key": other}, timeout=5).status_code == 401
        wait_for(lambda: len(requests.get(f"{b}/keys", headers={"X-Cluster-Token": OPERATOR}, timeout=5)
                             .json()["keys"]) == 2, timeout=20, what="node-b lists both keys after its restart")

