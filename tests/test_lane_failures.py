"""A worker never holds a task it is not computing: real worker processes against a real node,
one with a broken process pool, one behind a node answer that is a 200 without JSON."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from tests.helpers import LoopbackServer, QuietHandler, running_node, wait_for
from tests.test_engine import reference
from workerapp import engine, exitcodes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "2", "MAX_ITERATIONS": "1000000000"}
    with running_node(env, tmp_path_factory.mktemp("lane-failures")) as cluster:
        yield cluster


def run_worker(cluster, tmp_path, worker_id: str, url: str, *args: str, until=None) -> tuple[int, str]:
    """Run ``python -m workerapp`` (hashlib loop) until it exits; ``until(process)`` runs meanwhile.
    Returns its exit code and its log."""
    env = {**os.environ, "CLUSTER_TOKEN": cluster.token, engine.ENV: "python"}
    log = tmp_path / f"{worker_id}.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen([sys.executable, "-m", "workerapp", "--worker-id", worker_id, "--idle-seconds",
                                   "1", *args, url], env=env, stderr=stderr)
        try:
            if until is not None:
                until(worker)
            code = worker.wait(timeout=120)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return code, log.read_text()


def task(url: str, task_id: str) -> dict:
    return requests.get(f"{url}/status/{task_id}", timeout=5).json()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_broken_process_pool_hands_the_task_back_and_the_worker_exits(node, tmp_path):
    """Two lanes on the hashlib loop compute in a process pool; killing the pool mid-task must not
    leave the task leased (and renewed) to a worker that no longer computes it."""
    url = node.urls[0]
    task_id = requests.put(f"{url}/enqueue", params={"iterations": 300_000_000}, data=b"pool", timeout=5).json()["id"]

    def break_the_pool(worker: subprocess.Popen) -> None:
        wait_for(lambda: task(url, task_id).get("done"), timeout=60, what="a checkpoint of the long task")
        pool = children(worker.pid)
        assert pool
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    try:
        code, log = run_worker(node, tmp_path, "w-pool-broken", url, "--lanes", "2", until=break_the_pool)
        assert code == exitcodes.FAILED, log
        assert "handing back" in log and "BrokenProcessPool" in log
        # handed back at once, not after the lease (which the heartbeat would have renewed for ever)
        assert task(url, task_id)["state"] == "queued"
        stats = requests.get(f"{url}/stats", timeout=5).json()
        assert stats["leases_expired"] == 0 and stats["running"] == 0
    finally:
        requests.post(f"{url}/cancel/{task_id}", timeout=5)  # nobody else should compute it


class Mangler:
    """An HTTP front of the node that passes every call on, except the first call to each path of
    ``mangled``, which it answers itself with a 200 whose body is not JSON (a misconfigured
    proxy's page)."""

    def __init__(self, target: str, mangled: set[str]) -> None:
        self.target, self.mangled, self.seen = target, set(mangled), []
        self._lock = threading.Lock()
        front = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = "/" + self.path.split("/")[1]
                with front._lock:
                    front.seen.append(path)
                    mangle = path in front.mangled
                    front.mangled.discard(path)
                if mangle:
                    data, status = b"<html>gateway says hello</html>", 200
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "x-cluster-token")}
                    answer = requests.post(front.target + self.path, data=body, headers=headers, timeout=10)
                    data, status = answer.content, answer.status_code
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if mangle else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_a_200_without_json_is_a_node_problem_the_worker_gets_over(node, lanes, tmp_path):
    """A claim, a heartbeat and a result post each answered once with a non-JSON 200: the worker
    backs off and retries, keeps the lease of its long task, and finishes every task."""
    url = node.urls[0]
    bodies = {b"mangled-%s-%d" % (lanes.encode(), i): n for i, n in enumerate([1, 20, 2_000_000])}
    ids = {requests.put(f"{url}/enqueue", params={"iterations": n}, data=data, timeout=5).json()["id"]: (data, n)
           for data, n in bodies.items()}
    front = Mangler(url, {"/claim", "/heartbeat", "/complete"})
    try:
        code, log = run_worker(node, tmp_path, f"w-mangled-{lanes}", front.url, "--lanes", lanes)
    finally:
        front.close()
    assert code == exitcodes.OK, log
    assert "Traceback" not in log and "not the JSON answer expected" in log
    assert {"/claim", "/heartbeat", "/complete", "/worker_down"} <= set(front.seen)
    for task_id, (data, iterations) in ids.items():
        assert task(url, task_id)["result"] == reference(data, iterations)
    assert requests.get(f"{url}/stats", timeout=5).json()["leases_expired"] == 0
