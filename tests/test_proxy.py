"""A node behind nginx (provisioning/proxy.py), as AWS mode runs it and ``--local --proxy`` too:
slow and idle clients cannot freeze it, and the proxy's own refusals are JSON.

The contract under test: while hostile sockets are held open, ``GET /health`` keeps answering
(within 1 s on a quiet machine: tens of ms). The same scenarios against bare gunicorn (what the
proxy is for) are in bench/slow_clients.py: there /health stops answering at all. Without nginx
these tests skip, unless REQUIRE_PROXY=1 (CI) makes them fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
import requests

from nodeapp.web.bodies import MAX_JSON_BYTES
from provisioning.local_cluster import free_port, port_in_use
from provisioning.proxy import ERRORS, NginxNotFound, ProxySettings, find_nginx, render
from tests.helpers import running_node, wait_for
from tests.test_local_mode import start_program
from tmclient.client import Client
from tmcommon import batchwire
from tests.rawhttp import RawConnection, request
from tests.slowclients import SlowClients, probe_health

LIMIT = 65536
#: Above the 4 MiB the proxy once allowed every body but /enqueue's.
BATCH_LIMIT = 6 * 1024 * 1024
ENV = {"MAX_NUM_OF_WORKERS": "0", "MAX_BODY_BYTES": str(LIMIT), "MAX_BATCH_BYTES": str(BATCH_LIMIT)}
#: /health answers within this many seconds while slow clients hold their sockets: the contract's
#: 1 s plus headroom for a loaded 2-core machine; a frozen node does not answer within the probes'
#: 5 s timeout at all.
HEALTH_WITHIN = 1.0 + 2.0
SCENARIOS = {"one byte": 16, "trickled headers": 16, "slow bodies": 16, "idle keep-alive": 48}


@pytest.fixture(scope="module")
def nginx() -> str:
    try:
        return find_nginx()
    except NginxNotFound as exc:
        if os.environ.get("REQUIRE_PROXY") == "1":
            pytest.fail(f"REQUIRE_PROXY=1 but {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def node(nginx, tmp_path_factory):
    with running_node(ENV, tmp_path_factory.mktemp("proxied"), proxy=True) as cluster:
        yield cluster.nodes[0]


def json_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"] == code and response.json()["message"]


# ================================================================== the rendered configuration
def test_the_configuration_takes_its_limits_from_the_settings():
    text = render(ProxySettings.for_node({"MAX_BODY_BYTES": "12345"}, "8000", "127.0.0.1:8001"))
    enqueue = text[text.index("location = /enqueue"):]
    assert "client_max_body_size 12345;" in enqueue[:enqueue.index("}")]
    assert f"client_max_body_size {MAX_JSON_BYTES};" in text  # what the node's JSON endpoints take
    assert "listen 8000;" in text and "server 127.0.0.1:8001 " in text
    assert "proxy_request_buffering on;" in text and "proxy_buffering on;" in text
    for status, code, _ in ERRORS:
        assert f"error_page {status} @error_{status};" in text and f'"error": "{code}"' in text
    # MAX_BODY_BYTES=0 (no body at all) must not become nginx's "no limit"
    assert "client_max_body_size 1;" in render(ProxySettings.for_node({"MAX_BODY_BYTES": "0"}, "8000", "127.0.0.1:8001"))
    batch = text[text.index("location = /enqueue_batch"):]
    assert f"client_max_body_size {16 * 1024 * 1024};" in batch[:batch.index("}")]  # MAX_BATCH_BYTES' default
    text = render(ProxySettings.for_node({"MAX_BATCH_BYTES": "54321"}, "8000", "127.0.0.1:8001"))
    batch = text[text.index("location = /enqueue_batch"):]
    assert "client_max_body_size 54321;" in batch[:batch.index("}")]


def test_nginx_accepts_the_configuration_aws_mode_ships(nginx, tmp_path):
    settings = ProxySettings.for_node({}, "127.0.0.1:8000", "127.0.0.1:8001", pid=str(tmp_path / "pid"),
                                      error_log=str(tmp_path / "error.log"), temp_dir=str(tmp_path))
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(settings))
    check = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


# ================================================================== slow clients
@pytest.mark.integration
@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_slow_clients_do_not_freeze_the_proxied_node(node, kind):
    count = SCENARIOS[kind]
    with SlowClients(node.port, kind, count) as hostile:
        probe = probe_health(node.port, count=8, timeout=5)
        held = hostile.held()
    print(f"\n{count} x {kind}: /health {probe.summary()} ({held} of {count} sockets still held)")
    assert held == count, "the scenario ended before the probes did"
    assert len(probe.answered) == len(probe.latencies), probe.latencies
    assert max(probe.answered) < HEALTH_WITHIN, probe.latencies


@pytest.mark.integration
def test_all_slow_clients_at_once(node):
    hostile = [SlowClients(node.port, kind, count) for kind, count in SCENARIOS.items()]
    try:
        for clients in hostile:
            clients.open()
        probe = probe_health(node.port, count=8, timeout=5)
    finally:
        for clients in hostile:
            clients.close()
    print(f"\n{sum(SCENARIOS.values())} slow sockets of every kind: /health {probe.summary()}")
    assert len(probe.answered) == len(probe.latencies) and max(probe.answered) < HEALTH_WITHIN, probe.latencies


@pytest.mark.integration
def test_the_proxy_cuts_off_clients_that_stall(node):
    settings = node.proxy.settings
    with SlowClients(node.port, "one byte", 4) as stalled_headers, \
            SlowClients(node.port, "slow bodies", 4, interval=3600) as stalled_bodies:  # headers, then nothing
        deadline = max(settings.header_timeout, settings.body_timeout) + 20
        wait_for(lambda: stalled_headers.held() == 0 and stalled_bodies.held() == 0,
                 timeout=deadline, interval=0.2, what="nginx to close stalled connections")
    assert requests.get(f"{node.url}/stats", timeout=5).json()["enqueued"] == 0


@pytest.mark.integration
def test_one_address_cannot_take_every_request_slot(node):
    """Requests in progress are limited per client address: 127.0.0.2 fills its share, 127.0.0.1 is served."""
    limit = node.proxy.settings.requests_per_client
    with SlowClients(node.port, "slow bodies", limit, source="127.0.0.2", interval=1.0):
        def refused():
            with RawConnection(node.port, timeout=5, source="127.0.0.2") as conn:
                conn.send(request("GET", "/health"))
                answer = conn.read_response()
            return answer if answer is not None and answer.status == 503 else None

        answer = wait_for(refused, timeout=20, what="the per-address limit")
        assert answer.json()["error"] == "too_many_requests" and answer.headers["retry-after"] == "1"
        assert requests.get(f"{node.url}/health", timeout=5).status_code == 200


# ================================================================== what the proxy answers itself
@pytest.mark.integration
def test_body_limits_at_the_proxy(node):
    too_big = requests.put(f"{node.url}/enqueue", params={"iterations": 1}, data=b"x" * (LIMIT + 1), timeout=10)
    json_error(too_big, 413, "body_too_large")
    assert requests.put(f"{node.url}/enqueue", params={"iterations": 1}, data=b"x" * LIMIT, timeout=10).status_code == 201
    # an internal endpoint takes a JSON body larger than MAX_BODY_BYTES: the node itself answers
    token = {"X-Cluster-Token": "wrong"}
    big_json = requests.post(f"{node.url}/heartbeat", data=b"[" + b"1," * LIMIT + b"1]", headers=token, timeout=10)
    json_error(big_json, 401, "unauthorized")


def batch_of(size: int, tag: bytes) -> bytes:
    """A batch body of exactly ``size`` bytes: distinct tasks of at most LIMIT bytes each."""
    header, per_task = len(batchwire.encode([])), batchwire.encoded_size(0, None)
    count = -(-(size - header) // (per_task + LIMIT))
    total = size - header - count * per_task  # body bytes, at most count * LIMIT
    lengths = [total // count + (i < total % count) for i in range(count)]
    data = batchwire.encode([(b"%s-%06d-" % (tag, i) + b"x" * (n - len(tag) - 8), 1) for i, n in enumerate(lengths)])
    assert len(data) == size
    return data


@pytest.mark.integration
def test_a_batch_near_max_batch_bytes_passes_the_proxy_and_one_past_it_is_refused(node):
    headers = {"Content-Type": batchwire.CONTENT_TYPE}
    before = requests.get(f"{node.url}/stats", timeout=5).json()["enqueued"]
    fits = requests.put(f"{node.url}/enqueue_batch", data=batch_of(BATCH_LIMIT, b"fits"), headers=headers, timeout=60)
    assert fits.status_code == 201, fits.text[:300]
    queued = len(fits.json()["ids"])
    over = requests.put(f"{node.url}/enqueue_batch", data=batch_of(BATCH_LIMIT + 1, b"over"), headers=headers,
                        timeout=60)
    json_error(over, 413, "body_too_large")
    assert "MAX_BATCH_BYTES" in over.json()["message"]
    assert requests.get(f"{node.url}/stats", timeout=5).json()["enqueued"] == before + queued


@pytest.mark.integration
def test_broken_framing_never_reaches_the_node(node):
    before = requests.get(f"{node.url}/stats", timeout=5).json()["enqueued"]
    with RawConnection(node.port, timeout=10) as conn:
        conn.send(request("PUT", "/enqueue?iterations=1", {"Transfer-Encoding": "chunked"}, body=b"zz\r\nabc\r\n"))
        answer = conn.read_response()
        assert answer.status == 400 and answer.json()["error"] == "bad_request" and answer.closes
    with RawConnection(node.port, timeout=10) as conn:  # cut off: nginx drops it, nothing is queued
        conn.send(request("PUT", "/enqueue?iterations=1", body=b"abc", length=100))
        conn.half_close()
        conn.read_response()
    assert requests.get(f"{node.url}/stats", timeout=5).json()["enqueued"] == before


@pytest.mark.integration
def test_pipelined_requests_are_answered_through_the_proxy(node):
    """gunicorn's gthread worker leaves pipelined requests waiting; nginx serves them in order."""
    with RawConnection(node.port, timeout=5) as conn:
        conn.send(request("PUT", "/enqueue?iterations=0", body=b"p" * 100) + request("GET", "/health") * 2)
        answers = [conn.read_response() for _ in range(3)]
    assert [a.status for a in answers] == [400, 200, 200]
    assert answers[0].json()["error"] == "bad_iterations"


@pytest.mark.integration
def test_a_stopped_node_behind_its_proxy_is_a_json_502(nginx, tmp_path):
    with running_node(ENV, tmp_path, proxy=True) as cluster:
        node = cluster.nodes[0]
        node.process.terminate()
        node.process.wait(timeout=20)
        json_error(requests.get(f"{node.url}/health", timeout=10), 502, "node_unavailable")


# ================================================================== run_program.py --local --proxy
@pytest.mark.integration
def test_local_mode_with_proxy_runs_workers_through_nginx_and_stops_it(nginx, tmp_path):
    ports = (free_port(), free_port())
    proc, out, err = start_program(tmp_path, "--proxy", "--ports", f"{ports[0]},{ports[1]}")
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        out.wait(re.escape(urls[1]), timeout=90)
        for url in urls:
            health = requests.get(f"{url}/health", timeout=5)
            assert health.status_code == 200 and health.headers["Server"] == "nginx"
        client = Client(urls)
        ids = [client.enqueue(b"through the proxy %d" % i, 1000) for i in range(4)]
        done = client.wait(ids, timeout=90)
        assert all(done[i]["state"] == "completed" for i in ids)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        wait_for(lambda: not any(map(port_in_use, ports)), timeout=20, what="both proxy ports free again")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
