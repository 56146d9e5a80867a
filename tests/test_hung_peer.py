"""A peer that hangs: a real node stopped with SIGSTOP on loopback, which accepts connections and
never answers. It must not hold up this node's own scaling, nor keep a worker waiting long."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import pytest
import requests

from nodeapp.node import Node
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from tests.conftest import TOKEN
from tests.helpers import QUICK_ENV, FakeLauncher, running_cluster, running_node, wait_for
from workerapp.client import TIMEOUTS, NodeClient, NodeUnavailable

pytestmark = pytest.mark.integration

RATE = 1_000_000


@contextmanager
def stopped(process):
    """SIGSTOP a node's process group (gunicorn master and worker) for the block, then SIGCONT."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def peer_node(tmp_path_factory):
    with running_node({"CLUSTER_TOKEN": TOKEN, "MAX_NUM_OF_WORKERS": "2"}, tmp_path_factory.mktemp("peer")) as cluster:
        yield cluster.nodes[0]


class CountingPeer(PeerClient):
    """The real client, with a list of the calls it made (path by path)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, TOKEN, "ours")
        self.calls: list[str] = []

    def _call(self, method, path, **kwargs):
        self.calls.append(path)
        return super()._call(method, path, **kwargs)


class RecordingLauncher(FakeLauncher):
    """Notes how many peer calls the scaler had made when it launched."""

    def __init__(self, peer: CountingPeer) -> None:
        super().__init__()
        self.peer, self.peer_calls_at_launch = peer, []

    def launch(self, count, node_urls):
        self.peer_calls_at_launch.append(len(self.peer.calls))
        return super().launch(count, node_urls)


def test_a_hung_peer_does_not_hold_up_launching_and_costs_one_call_a_run(peer_node):
    peer = CountingPeer(peer_node.url)
    assert peer.ping() and peer.info()["reachable"] is True
    ours = Node.build(max_workers=2)
    launcher = RecordingLauncher(peer)
    scaler = Scaler(ours, launcher, peer, node_url="http://127.0.0.1:1", scale_wait=0.0, hash_rate=RATE,
                    boot_timeout=300)
    for _ in range(6):  # 30 s of work: 2 workers on our quota, the rest to borrow
        ours.tasks.submit(b"x", 5 * RATE)
    peer.calls.clear()
    with stopped(peer_node.process):
        scaler.tick()
        assert len(launcher.launched) == 2 and launcher.peer_calls_at_launch == [0]  # launched before asking
        assert peer.calls == ["/try_get_node_quota"] and peer.info()["reachable"] is False
        for _ in range(2):  # while it stays silent: one ping a run, no quota call
            peer.calls.clear()
            scaler.tick()
            assert peer.calls == ["/lookup"]  # ping: an empty look-up, which also checks the token
        decisions = scaler.decisions()
        assert decisions[0]["borrowed"] == 0 and decisions[-1]["launched"] == 2
    wait_for(peer.ping, timeout=10, what="the peer to answer again")
    peer.calls.clear()
    scaler.tick()
    assert "/try_get_node_quota" in peer.calls  # asking for quota again


def test_a_worker_gives_up_on_a_hung_node_within_its_timeout(peer_node):
    client = NodeClient(peer_node.url, TOKEN, "worker-hung")
    with stopped(peer_node.process):
        for call, timeout in ((lambda: client.claim(1, 1000), TIMEOUTS["claim"]),
                              (lambda: client.heartbeat(["0" * 32]), TIMEOUTS["heartbeat"])):
            started = time.monotonic()
            with pytest.raises(NodeUnavailable):
                call()
            print(f"\ngave up after {time.monotonic() - started:.2f}s (read timeout {timeout[1]:g}s)")
    wait_for(lambda: requests.get(f"{peer_node.url}/health", timeout=2).ok, timeout=10, what="the node back")


def test_tasks_complete_on_a_node_whose_peer_hangs(tmp_path):
    with running_cluster({**QUICK_ENV, "MAX_NUM_OF_WORKERS": "1"}, tmp_path) as cluster:
        a, b = cluster.urls
        with stopped(cluster.nodes[1].process):
            started = time.monotonic()
            ids = [requests.put(f"{a}/enqueue", params={"iterations": 1000}, data=b"t%d" % i, timeout=5).json()["id"]
                   for i in range(20)]
            wait_for(lambda: all(requests.get(f"{a}/status/{i}", timeout=5).json()["state"] == "completed" for i in ids),
                     timeout=90, interval=0.5, what="node a's tasks to complete")
            print(f"\n20 tasks on node a completed in {time.monotonic() - started:.1f}s with node b stopped")
            health = requests.get(f"{a}/health", timeout=5)
            assert health.status_code == 200
            pulled = requests.post(f"{a}/pullCompleted", params={"top": 20}, timeout=5)
            assert pulled.headers.get("X-Peer-Unavailable") == "1" and {r["id"] for r in pulled.json()} == set(ids)
            assert requests.get(f"{a}/stats", timeout=5).json()["workers"]["launched_total"] >= 1


def test_the_peer_timeout_is_the_setting(tmp_path):
    """PEER_TIMEOUT_SECONDS bounds a call to a peer that accepts and never answers."""
    import socket
    import time

    from nodeapp import create_app
    from tests.helpers import FakeLauncher

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for timeout, low, high in ((0.4, 0.25, 1.0), (2.5, 2.0, 4.0)):  # low: the read timeout
            app = create_app({"cluster_token": "t", "node_name": "n", "peer_url": url, "peer_timeout": timeout},
                             launcher=FakeLauncher())
            assert app.extensions["nodeapp"].peer.timeout == (min(0.5, timeout / 3), timeout - min(0.5, timeout / 3))
            started = time.monotonic()
            answer = app.test_client().get("/status/" + "a" * 32)
            assert answer.status_code == 503 and answer.get_json()["error"] == "peer_unavailable"
            assert low <= time.monotonic() - started <= high
