"""What fuzzers do not send, over bare sockets to a real gunicorn node on 127.0.0.1: cut-off
bodies, broken chunking, pipelined requests after an early error, deep JSON, odd ids.

The node's PEER_URL points at a ``PeerProbe``: a socket that accepts connections, counts them
and never answers, so a test can tell whether the node asked its peer at all.
"""

from __future__ import annotations

import base64
import socket
import threading
import uuid

import pytest
import requests

from tests.digests import sha512_chain
from tests.helpers import running_node, wait_for
from tests.rawhttp import RawConnection, request

pytestmark = pytest.mark.integration

LIMIT = 65536
ENV = {"MAX_NUM_OF_WORKERS": "0", "MAX_BODY_BYTES": str(LIMIT)}
#: How long a test waits for an answer or a close before calling the connection stuck.
PROMPT = 3.0


class PeerProbe:
    """Stands where the peer should be: accepts and counts connections, never answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._held.append(conn)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for conn in self._held:
                conn.close()


@pytest.fixture(scope="module")
def probe():
    probe = PeerProbe()
    yield probe
    probe.close()


@pytest.fixture(scope="module")
def node(probe, tmp_path_factory):
    with running_node(ENV, tmp_path_factory.mktemp("raw-http"), peer_port=probe.port) as cluster:
        yield cluster


@pytest.fixture
def port(node) -> int:
    return node.nodes[0].port


@pytest.fixture
def token(node) -> dict[str, str]:
    return {"X-Cluster-Token": node.token}


def stats(port: int) -> dict:
    return requests.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()


def counts(port: int) -> tuple:
    s = stats(port)
    return s["enqueued"], s["queued"], s["running"], s["completed"]


def assert_json_error(response, status: int, code: str | None = None) -> None:
    assert response is not None, "no answer: the node closed the connection"
    assert response.status == status, (response.status, response.body[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"}, body
    if code is not None:
        assert body["error"] == code, body


def assert_usable_or_closed(conn: RawConnection, first, port: int) -> None:
    """After an early error the connection answers the next request, or was announced closed
    (``Connection: close``) and really is closed, both within PROMPT seconds."""
    if first.closes:
        assert conn.closed_by_peer()
        return
    conn.send(request("GET", "/health"))
    health = conn.read_response()
    assert health is not None and health.status == 200, "the next request on a kept-alive connection got no answer"
    assert health.json()["status"] == "ok"


# ================================================================== cut-off bodies
@pytest.mark.parametrize("declared,sent", [(100, b"abc"), (LIMIT, b"x" * 1000), (1, b"")])
def test_a_body_shorter_than_its_content_length_is_refused_and_queues_nothing(port, declared, sent):
    before = counts(port)
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("PUT", "/enqueue?iterations=1", body=sent, length=declared))
        conn.half_close()
        assert_json_error(conn.read_response(), 400, "incomplete_body")
    assert counts(port) == before


def test_a_cut_off_json_body_is_refused(port, token):
    body = b'{"worker_id": "w", "max_tasks": 5}'
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("POST", "/claim", {**token, "Content-Type": "application/json"},
                          body=body[:10], length=len(body)))
        conn.half_close()
        assert_json_error(conn.read_response(), 400, "incomplete_body")


# ================================================================== early errors, keep-alive
EARLY_ERRORS = {  # name: (request bytes, status, code)
    "bad iterations, body sent": (request("PUT", "/enqueue?iterations=0", body=b"b" * 50_000), 400, "bad_iterations"),
    "declared too large, partly sent": (request("PUT", "/enqueue?iterations=1", body=b"d" * 5000, length=LIMIT + 1),
                                        413, "body_too_large"),
    "declared far too large": (request("PUT", "/enqueue?iterations=1", body=b"d" * 70_000, length=10**9),
                               413, "body_too_large"),
    "chunked over the limit": (request("PUT", "/enqueue?iterations=1", {"Transfer-Encoding": "chunked"},
                                       body=b"%x\r\n%s\r\n0\r\n\r\n" % (LIMIT + 10, b"c" * (LIMIT + 10))),
                               413, "body_too_large"),
    "no token, body sent": (request("POST", "/claim", body=b'{"worker_id": "w"}' + b" " * 40_000), 401, "unauthorized"),
    "unknown path with a body": (request("POST", "/nowhere", body=b"n" * 30_000), 404, "not_found"),
}


@pytest.mark.parametrize("name", list(EARLY_ERRORS))
def test_an_early_error_leaves_the_connection_usable_or_closes_it_cleanly(port, name):
    data, status, code = EARLY_ERRORS[name]
    before = counts(port)
    for _ in range(5):  # the issue saw 10 failures in 26 tries
        with RawConnection(port, timeout=PROMPT) as conn:
            try:
                conn.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before the whole body was sent: the answer is still there to read
            first = conn.read_response()
            assert_json_error(first, status, code)
            assert_usable_or_closed(conn, first, port)
    assert counts(port) == before


def test_pipelined_requests_after_an_early_error_are_answered_in_order(port):
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("PUT", "/enqueue?iterations=x", body=b"p" * 1000) + request("GET", "/health")
                  + request("GET", "/health"))
        first = conn.read_response()
        assert_json_error(first, 400, "bad_iterations")
        if first.closes:
            assert conn.closed_by_peer()
        else:
            assert [conn.read_response().status for _ in range(2)] == [200, 200]


# ================================================================== chunked bodies
BAD_CHUNKS = {
    "size zz": b"zz\r\nabc\r\n0\r\n\r\n",
    "size -1": b"-1\r\nabc\r\n0\r\n\r\n",
    "missing CRLF after data": b"3\r\nabcX0\r\n\r\n",
    "size line without CRLF, then EOF": b"3",
    "data shorter than the size, then EOF": b"10\r\nabc",
}


@pytest.mark.parametrize("name", list(BAD_CHUNKS))
def test_a_malformed_chunked_body_is_a_json_400_and_queues_nothing(port, name):
    before = counts(port)
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("PUT", "/enqueue?iterations=1", {"Transfer-Encoding": "chunked"}, body=BAD_CHUNKS[name]))
        if name.endswith("EOF"):
            conn.half_close()
        first = conn.read_response()
        assert_json_error(first, 400)
        assert first.json()["error"] in ("bad_chunked_body", "incomplete_body")
        assert first.closes  # the framing is lost: nothing after it can be trusted
        assert conn.closed_by_peer()
    assert counts(port) == before


def test_a_well_formed_chunked_body_is_accepted(port):
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("PUT", "/enqueue?iterations=1", {"Transfer-Encoding": "chunked"},
                          body=b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"))
        created = conn.read_response()
        assert created.status == 201 and not created.closes
        conn.send(request("GET", "/health"))
        assert conn.read_response().status == 200
    task = requests.get(f"http://127.0.0.1:{port}/status/{created.json()['id']}", timeout=5).json()
    assert task["state"] == "queued"


# ================================================================== JSON of internal endpoints
DEEP = {"arrays": b"[" * 100_000 + b"]" * 100_000, "objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "inside a field": b'{"worker_id": "w", "task_ids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}


@pytest.mark.parametrize("path", ["/claim", "/complete", "/heartbeat", "/worker_down/w1", "/configure"])
@pytest.mark.parametrize("shape", list(DEEP))
def test_deeply_nested_json_is_a_json_400(port, token, path, shape):
    before = stats(port)
    response = requests.post(f"http://127.0.0.1:{port}{path}", data=DEEP[shape], timeout=10,
                             headers={**token, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"] == "bad_json"
    after = stats(port)
    assert {k: after[k] for k in ("enqueued", "queued", "running", "completed", "workers")} == \
           {k: before[k] for k in ("enqueued", "queued", "running", "completed", "workers")}


# ================================================================== results from workers
@pytest.mark.parametrize("result", ["r", "ab" * 63, "AB" * 64, "ab" * 64 + "0", " " + ("ab" * 64)[1:],
                                    "gg" * 64, "ab" * 63 + "\u00e9\u00e9", ""])
def test_a_result_that_is_not_128_lowercase_hex_characters_is_refused(port, token, result):
    url = f"http://127.0.0.1:{port}"
    task_id = requests.put(f"{url}/enqueue?iterations=1", data=uuid.uuid4().bytes, timeout=5).json()["id"]
    worker = f"w-{uuid.uuid4().hex[:8]}"
    claimed = requests.post(f"{url}/claim", json={"worker_id": worker, "max_tasks": 1000}, headers=token,
                            timeout=5).json()["tasks"]
    assert task_id in [t["id"] for t in claimed]
    before = counts(port)
    response = requests.post(f"{url}/complete", headers=token, timeout=5,
                             json={"worker_id": worker, "results": [{"id": task_id, "result": result}]})
    assert response.status_code == 400 and response.json()["error"] == "bad_request", response.text
    assert counts(port) == before
    assert requests.get(f"{url}/status/{task_id}", timeout=5).json()["state"] == "running"
    good = {t["id"]: sha512_chain(base64.b64decode(t["data"]), t["iterations"]) for t in claimed}  # spot-checked
    done = requests.post(f"{url}/complete", headers=token, timeout=5,
                         json={"worker_id": worker, "results": [{"id": i, "result": r} for i, r in good.items()]})
    assert done.json() == {"accepted": len(claimed)}
    assert wait_for(lambda: requests.get(f"{url}/status/{task_id}", timeout=5).json().get("result") == good[task_id],
                    timeout=10, what="the result, once spot-checked")


# ================================================================== odd ids
ODD_IDS = ["..", ".", "%2e%2e", "..%2F..%2Fhealth", "x" * 300, "ABCDEF" * 6, "g" * 32, "0" * 31, "0" * 33,
           "%00" + "0" * 31, "9F1C2B7D4E6A40B8A3D5C7E9F0B1A2C3", "%20" + "9f1c2b7d4e6a40b8a3d5c7e9f0b1a2c3"]


@pytest.mark.parametrize("odd", ODD_IDS)
def test_an_id_that_cannot_be_a_task_id_is_404_without_asking_the_peer(port, probe, odd):
    asked = probe.connections
    with RawConnection(port, timeout=PROMPT) as conn:
        conn.send(request("GET", f"/status/{odd}"))
        response = conn.read_response()
    assert_json_error(response, 404)
    assert response.json()["error"] in ("unknown_task", "not_found")
    assert "x-peer-unavailable" not in response.headers
    assert probe.connections == asked


def test_a_well_formed_unknown_id_is_asked_of_the_peer(port, probe):
    """The control for the test above: the probe does see the node's peer calls."""
    asked = probe.connections
    response = requests.get(f"http://127.0.0.1:{port}/status/{uuid.uuid4().hex}", timeout=5)
    # the probe never answers: the task may be there, so the node cannot say 404
    assert response.status_code == 503 and response.json()["error"] == "peer_unavailable"
    assert response.headers.get("X-Peer-Unavailable") == "1"
    wait_for(lambda: probe.connections > asked, timeout=5, what="the node to connect to its peer")
