"""A peer of another version (or a broken one) answers in forms this node does not read: every
view that merges the peer's data (dashboard, chart, pullCompleted, results, status) answers as if
the peer part were missing, says the peer is the problem, and never 500s."""

from __future__ import annotations

import hashlib
import json

import pytest

from nodeapp import create_app
from tests.conftest import TOKEN
from tests.digests import sha512_chain
from tests.helpers import FakeLauncher, LoopbackServer, QuietHandler

GOOD_RESULT = {"id": "e" * 32, "result": "ab" * 64, "iterations": 3, "completed_at": 5.0}
#: What a well-formed peer answers (an empty node), by path.
SANE = {
    "/stats": {"node": "peer", "queued": 0, "running": 0, "completed": 1, "failed": 0, "enqueued": 1,
               "workers": {"live": 0, "pending": 0, "max": 2}, "quota": {"lent": 0, "borrowed": 0},
               "peer": {"reachable": True}, "scaler": {"decisions": []}, "in_progress": []},
    "/dashboard/node": {"node": "peer", "workers": [], "failed": []},
    "/history": {"node": "peer", "interval": 10.0, "points": [], "decisions": []},
    "/pullCompleted": [GOOD_RESULT],
    "/results": {"epoch": "peerepoch", "results": [], "seqs": [], "missed": 0},
    "/health": {"status": "ok"},
    "/dashboard/list": {"items": [{"node": "peer", **GOOD_RESULT}]},
}

#: One broken part each: (path, answer).
BROKEN = [
    ("/stats", []),
    ("/stats", {"queued": "many"}),
    ("/stats", {"workers": [1, 2]}),
    ("/stats", {"queued": 1e400}),
    ("/stats", {"scaler": {"decisions": [{"at": {"day": 1}}, {"at": 3.0}]}}),
    ("/stats", {"scaler": {"decisions": [{"at": 1.0, "figures": ["x"], "launched": "two"}]}}),
    ("/stats", {"scaler": "off"}),
    ("/stats", {"in_progress": [{"done": "half", "iterations": 10}]}),
    ("/stats", {"in_progress": {"done": 1}}),
    ("/dashboard/node", {"workers": "many", "failed": [{"at": [1], "id": {"x": 1}}]}),
    ("/dashboard/node", {"workers": [{"id": ["w"], "last_seen_ago": "now"}], "failed": 7}),
    ("/pullCompleted", [{"id": "x", "completed_at": "late"}]),
    ("/pullCompleted", [{"id": {"a": 1}, "completed_at": 1.0, "result": 5}]),
    ("/pullCompleted", [{**GOOD_RESULT, "completed_at": None}]),
    ("/pullCompleted", {"results": []}),
    ("/history", {"points": [{"at": 10.0, "queued": "x"}]}),
    ("/history", {"points": [{"at": 10.0, "queued": 1, "per_minute": [1]}]}),
    ("/history", {"points": [{"at": "noon"}], "decisions": "none"}),
    ("/history", {"points": "none", "decisions": [{"at": {"x": 1}}]}),
    ("/results", {"epoch": "not an epoch!", "results": [{**GOOD_RESULT}], "seqs": [3], "missed": 0}),
    ("/results", {"epoch": "peerepoch", "results": [], "seqs": [], "missed": "lots"}),
    ("/results", {"epoch": "peerepoch", "results": [{**GOOD_RESULT}], "seqs": [-5], "missed": 0}),
    ("/results", {"epoch": "peerepoch", "results": [{**GOOD_RESULT, "result": 7}], "seqs": [1], "missed": 0}),
    ("/results", {"epoch": "peerepoch", "results": [{**GOOD_RESULT}], "seqs": [True], "missed": 0}),
    ("/dashboard/list", {"items": [{"id": "x", "result": {"a": 1}, "completed_at": "late"}]}),
    ("/dashboard/list", {"items": [{**GOOD_RESULT, "node": ["peer"]}, {"id": "f" * 32, "at": "now"}]}),
]


class FakePeer:
    """A peer node on loopback that answers each path with what ``answers`` holds, as JSON."""

    def __init__(self) -> None:
        self.answers: dict[str, object] = dict(SANE)
        peer = self

        class Handler(QuietHandler):
            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                body = json.dumps(peer.answers.get(path, {"error": "unknown", "message": ""})).encode()
                self.send_response(200 if path in peer.answers else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="module")
def peer():
    fake = FakePeer()
    yield fake
    fake.close()


@pytest.fixture
def node(peer):
    peer.answers = dict(SANE)
    app = create_app({"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1",
                      "peer_url": peer.url, "verify_iterations": 0}, launcher=FakeLauncher())
    client = app.test_client()
    task_id = client.put("/enqueue?iterations=1", data=b"own").get_json()["id"]
    client.post("/claim", json={"worker_id": "w1"}, headers={"X-Cluster-Token": TOKEN})
    client.post("/complete", json={"worker_id": "w1", "results": [{"id": task_id, "result": sha512_chain(b"own", 1)}]},
                headers={"X-Cluster-Token": TOKEN})
    return client, task_id


def test_a_sane_peer_is_merged(node):
    client, own = node
    data = client.get("/dashboard/data").get_json()
    assert [n["reachable"] for n in data["nodes"]] == [True, True] and data["totals"]["completed"] == 2
    assert {r["id"] for r in data["results"]} == {own, GOOD_RESULT["id"]}
    assert "problem" not in data["nodes"][1]
    assert client.get("/dashboard/history").get_json()["peer_answered"] is True
    listed = client.get("/dashboard/list").get_json()
    assert listed["peer_answered"] is True and {i["id"] for i in listed["items"]} == {own, GOOD_RESULT["id"]}
    assert client.get("/stats").get_json()["peer"]["problem"] is None


@pytest.mark.parametrize("path,answer", BROKEN, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BROKEN)])
def test_a_malformed_peer_answer_is_a_peer_problem_never_a_500(node, peer, path, answer):
    client, own = node
    peer.answers[path] = answer

    data = client.get("/dashboard/data")
    assert data.status_code == 200, data.get_data(as_text=True)
    data = data.get_json()
    assert own in {r["id"] for r in data["results"]} and data["nodes"][0]["completed"] == 1
    if path in ("/stats", "/dashboard/node", "/pullCompleted"):
        theirs = data["nodes"][1]
        assert "problem" in theirs and path in theirs["problem"], theirs
    json.dumps(data, allow_nan=False)  # what the page reads is plain JSON, nothing the peer smuggled in
    for row in data["results"] + data["failed"] + data["workers"]:
        assert all(isinstance(v, (str, int, float, bool, type(None))) for v in row.values()), row

    chart = client.get("/dashboard/history")
    assert chart.status_code == 200
    if path == "/history":
        assert chart.get_json()["peer_answered"] is False and "/history" in chart.get_json()["peer_problem"]

    pulled = client.post("/pullCompleted?top=10")
    assert pulled.status_code == 200
    assert own in {r["id"] for r in pulled.get_json()}
    if path == "/pullCompleted":
        assert pulled.headers.get("X-Peer-Unavailable") == "1"
        assert all(r["id"] == own for r in pulled.get_json())

    page = client.get("/results")
    assert page.status_code == 200
    assert own in {r["id"] for r in page.get_json()["results"]}
    again = client.get("/results", query_string={"after": page.get_json()["next"]})
    assert again.status_code == 200, again.get_json()  # the cursor it gave is one it takes
    if path == "/results":
        assert page.headers.get("X-Peer-Unavailable") == "1"
    for kind in ("results", "failed"):
        listed = client.get("/dashboard/list", query_string={"kind": kind})
        assert listed.status_code == 200
        if path == "/dashboard/list":
            assert listed.get_json()["peer_answered"] is False
    assert own in {item["id"] for item in client.get("/dashboard/list").get_json()["items"]}
    problem = client.get("/stats").get_json()["peer"]["problem"]
    assert path in problem["what"] and problem["at"] > 0  # and in the log, once (nodeapp/fleet/peer.py)


@pytest.mark.parametrize("answer", [[1, 2], "done", {"id": "f" * 32, "state": {"x": 1}}])
def test_a_malformed_status_from_the_peer_is_peer_unavailable(node, peer, answer):
    client, _ = node
    peer.answers["/status/" + "f" * 32] = answer
    response = client.get("/status/" + "f" * 32)
    assert response.status_code == 503 and response.get_json()["error"] == "peer_unavailable"


def test_a_malformed_lookup_answer_replays_nothing_and_reuses_nothing(node, peer):
    """The peer's ``POST /lookup`` names a task of the wrong form for this very key and body: the
    node queues the task itself rather than hand the client an id that is not one."""
    client, _ = node
    body = b"looked-up"
    digest = hashlib.sha512(body).hexdigest()
    peer.answers["/lookup"] = {"keys": {"k1": {"id": "<script>", "iterations": 200_000, "digest": digest}},
                               "results": [[digest, 200_000, {"id": 1}, "cd" * 64], [digest, 200_000, "f" * 32, 7]]}
    answer = client.put("/enqueue?iterations=200000", data=body, headers={"Idempotency-Key": "k1"})
    assert answer.status_code == 201 and "Idempotent-Replayed" not in answer.headers
    task = client.get(f"/status/{answer.get_json()['id']}").get_json()
    assert task["state"] == "queued" and "reused_from" not in task


def test_pull_completed_reads_as_many_of_the_peers_results_as_it_asked_for():
    """A peer's pullCompleted is read up to the ``top`` asked (not cut at ITEMS_MAX): the merged
    view of a cluster with more results than that misses none of the peer's."""
    from nodeapp.web import peer_answers

    many = [{"id": f"{i:032x}", "result": "a" * 128, "iterations": 1, "completed_at": 1.0 + i}
            for i in range(peer_answers.ITEMS_MAX + 500)]
    assert len(peer_answers.results(many, len(many))) == len(many)
    assert len(peer_answers.results(many)) == peer_answers.ITEMS_MAX
