"""Spot-checks end to end: real gunicorn nodes, real worker processes, the faulty test engine
(``TM_TEST_FAULT``): a hostile worker is caught on its first batch, a bit-flipping one within its
first 200 tasks, and no wrong result is ever seen by a client; long tasks are checked by segment."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading

import pytest
import requests

from tests.digests import sha512_chain
from tests.helpers import running_cluster, wait_for
from tmcommon.marks import positions, segment_length
from workerapp import exitcodes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "5", "SCALE_INTERVAL": "0.2"}
    with running_cluster(env, tmp_path_factory.mktemp("verify-cluster")) as cluster:
        yield cluster


def start_worker(cluster, worker_id: str, fault: str = "", seed: int = 0, idle: float = 3.0,
                 urls: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "CLUSTER_TOKEN": cluster.token, "TM_TEST_FAULT": fault, "TM_TEST_FAULT_SEED": str(seed)}
    return subprocess.Popen([sys.executable, "-m", "workerapp", "--worker-id", worker_id, "--idle-seconds", str(idle),
                             *(urls or cluster.urls[:1])], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def enqueue(url: str, tasks: list[tuple[bytes, int]]) -> list[str]:
    return [requests.put(f"{url}/enqueue", params={"iterations": n, "reuse": "0"}, data=data, timeout=5).json()["id"]
            for data, n in tasks]


class Watcher:
    """Reads pullCompleted and every status while the test runs: each result any client could
    see, so that a wrong one is caught even if it was visible for a moment only."""

    def __init__(self, url: str, expected: dict[str, str]) -> None:
        self.url, self.expected = url, expected
        self.wrong: list[tuple[str, str]] = []
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ids = list(self.expected)
        while not self._stop.is_set():
            pulled = requests.post(f"{self.url}/pullCompleted", params={"top": 1000}, timeout=5).json()
            statuses = [requests.get(f"{self.url}/status/{i}", timeout=5).json() for i in random.sample(ids, 10)]
            for item in [*pulled, *statuses]:
                if item.get("result") is not None:
                    self.seen += 1
                    if item["result"] != self.expected.get(item["id"], item["result"]):
                        self.wrong.append((item["id"], item["result"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=5).json()


def run_to_end(worker: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = worker.communicate(timeout=timeout)
    return worker.returncode, out


def test_a_hostile_worker_is_caught_on_its_first_batch_and_a_sound_one_redoes_its_work(cluster):
    a = cluster.urls[0]
    tasks = [(b"hostile-%d" % i, 2000) for i in range(30)]
    ids = enqueue(a, tasks)
    expected = {i: sha512_chain(d, n) for i, (d, n) in zip(ids, tasks)}
    watcher = Watcher(a, expected)
    before = stats(a)
    try:
        code, out = run_to_end(start_worker(cluster, "w-hostile", "hostile"))
        assert code == exitcodes.REJECTED, out
        assert "403 quarantined" in out, out
        after = stats(a)
        caught = [c for c in after["checks"]["quarantine"] if c["worker"] == "w-hostile"]
        assert len(caught) == 1 and caught[0]["engine"] in ("native", "python") and caught[0]["cpu"]
        assert after["completed"] == before["completed"]  # none of its results was accepted
        # its first result is checked (probation), so the task that caught it is in its first batch,
        # which holds at most one task per vector lane (8)
        assert after["checks"]["mismatches"] > before["checks"]["mismatches"]
        assert ids.index(caught[0]["task"]) < 8
        # node B, which never saw it, was told: it refuses the worker too, without counting it as its catch
        b = cluster.urls[1]
        told = wait_for(lambda: [c for c in stats(b)["checks"]["quarantine"] if c["worker"] == "w-hostile"], 30,
                        what="node B told of the catch")
        assert told[0]["by"].rstrip("/") == a.rstrip("/") and told[0]["task"] == caught[0]["task"]
        refused = requests.post(f"{b}/claim", json={"worker_id": "w-hostile"}, headers={"X-Cluster-Token": cluster.token},
                                timeout=5)
        assert refused.status_code == 403 and refused.json()["error"] == "quarantined"
        assert stats(b)["checks"]["quarantined"] == 0
        assert all(requests.get(f"{a}/status/{i}", timeout=5).json()["state"] == "queued" for i in ids)
        code, out = run_to_end(start_worker(cluster, "w-sound-1"))
        assert code == exitcodes.OK, out
        for task_id, result in expected.items():
            status = requests.get(f"{a}/status/{task_id}", timeout=5).json()
            assert (status["result"], status["spot_checked"]) == (result, True)
    finally:
        watcher.stop()
    assert watcher.wrong == [] and watcher.seen > 0


def test_a_bit_flipping_worker_is_caught_within_its_first_200_tasks_and_no_wrong_result_is_seen(cluster):
    a = cluster.urls[0]
    rng = random.Random(22)
    tasks = [(b"flip-%d" % i, rng.randint(1, 10_000)) for i in range(300)]
    ids = enqueue(a, tasks)
    expected = {i: sha512_chain(d, n) for i, (d, n) in zip(ids, tasks)}
    watcher = Watcher(a, expected)
    before = stats(a)["checks"]
    try:
        code, out = run_to_end(start_worker(cluster, "w-flip", "flip:1/50", seed=7), timeout=300)
        assert code == exitcodes.REJECTED, out
        caught = [c for c in stats(a)["checks"]["quarantine"] if c["worker"] == "w-flip"]
        assert len(caught) == 1
        assert ids.index(caught[0]["task"]) < 200  # claimed in order: the wrong chain was among its first 200
        code, out = run_to_end(start_worker(cluster, "w-sound-2"), timeout=300)
        assert code == exitcodes.OK, out
        for task_id, result in expected.items():
            assert requests.get(f"{a}/status/{task_id}", timeout=5).json()["result"] == result
        after = stats(a)["checks"]
        assert after["mismatches"] > before["mismatches"] and after["skipped"] == before["skipped"]
    finally:
        watcher.stop()
    assert watcher.wrong == [] and watcher.seen > 0


@pytest.fixture(scope="module")
def checking_everything(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "5", "SCALE_INTERVAL": "0.2",
           "VERIFY_ITERATIONS": str(10**12)}  # every result is checked
    with running_cluster(env, tmp_path_factory.mktemp("verify-all")) as cluster:
        yield cluster


def test_long_results_are_checked_by_segment_and_a_fault_in_every_segment_is_caught(checking_everything):
    cluster, a = checking_everything, checking_everything.urls[0]
    n = 300_000
    tasks = [(b"long-%d" % i, n) for i in range(4)]
    ids = enqueue(a, tasks)
    code, out = run_to_end(start_worker(cluster, "w-long"))
    assert code == exitcodes.OK, out
    step, last = segment_length(n), n - positions(n)[-1]
    checks = stats(a)["checks"]
    # each result: one of its 63 first segments and its last one, recomputed by the node
    assert (checks["checks"], checks["mismatches"]) == (4, 0)
    assert checks["iterations"] == 4 * (step + last)
    for task_id, (data, iterations) in zip(ids, tasks):
        status = requests.get(f"{a}/status/{task_id}", timeout=5).json()
        assert (status["result"], status["spot_checked"]) == (sha512_chain(data, iterations), True)
    # a worker whose every engine call flips a bit: whichever segment is checked holds a fault
    more = enqueue(a, [(b"long-bad", n)])
    code, out = run_to_end(start_worker(cluster, "w-long-bad", "flip:1/1"))
    assert code == exitcodes.REJECTED, out
    assert requests.get(f"{a}/status/{more[0]}", timeout=5).json()["state"] == "queued"
    assert stats(a)["checks"]["mismatches"] == 1
