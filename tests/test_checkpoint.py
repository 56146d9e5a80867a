"""A long task survives its worker: real node (gunicorn), real worker processes, kill -9 half-way.

The first worker's checkpoints reach the node with its heartbeats; after the kill its lease runs
out (LEASE_SECONDS=2), the task is requeued with its newest checkpoint, and a second worker
continues from there. The figures printed (``pytest -s``) say how much the second one computed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests

from tests.helpers import running_node, wait_for
from tmclient.client import Client, WaitTimeout

pytestmark = pytest.mark.integration

# Long enough that the native engine (about 3 M/s on one core) is still half-way when the test looks.
ITERATIONS = 15_000_000
DATA = b"a long task"
#: The uninterrupted chain, ``tests.digests.sha512_chain(DATA, ITERATIONS)``: hashlib alone, not
#: the engine under test, computed once and written here (it takes hashlib 12 s or more).
EXPECTED = ("70908cf832570eedb17ee692727cb71c371cb6f81fe1f4c06203e4fc22a59d72"
            "0b8c73fd8eee7fd29b9f488f5e0b330f538ad3a139894b927d9e3bcc1c8c70ce")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    env = {"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "2", "SCALE_INTERVAL": "0.2", "MAX_ITERATIONS": str(ITERATIONS)}
    with running_node(env, tmp_path_factory.mktemp("checkpoint-node")) as cluster:
        yield cluster


def start_worker(node, worker_id: str, log_path, idle_seconds: float) -> subprocess.Popen:
    env = {**os.environ, "CLUSTER_TOKEN": node.token, "LOG_LEVEL": "INFO"}
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "workerapp", "--worker-id", worker_id,
                                 "--idle-seconds", str(idle_seconds), node.urls[0]],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def status(url: str, task_id: str) -> dict:
    return requests.get(f"{url}/status/{task_id}", timeout=5).json()


def test_a_killed_workers_task_is_finished_from_its_checkpoint(node, tmp_path):
    url = node.urls[0]
    reply = requests.put(f"{url}/enqueue", params={"iterations": ITERATIONS}, data=DATA, timeout=5)
    task_id = reply.json()["id"]
    first = start_worker(node, "w-first", tmp_path / "first.log", idle_seconds=60)
    try:
        seen = wait_for(lambda: (s := status(url, task_id)).get("done", 0) >= ITERATIONS // 2 and s,
                        timeout=60, interval=0.1, what="the first worker's checkpoint past half-way")
        assert seen["state"] == "running" and seen["done"] < ITERATIONS
        reported = []  # what `tm wait` draws its iterations bar from
        with pytest.raises(WaitTimeout):
            Client([url]).wait([task_id], timeout=0.3, on_iterations=lambda done, total: reported.append((done, total)))
        assert reported and seen["done"] <= reported[-1][0] < ITERATIONS == reported[-1][1]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    killed_at = status(url, task_id)
    assert killed_at["state"] == "running" and killed_at["done"] >= seen["done"]

    # the lease runs out, the task goes back to the queue with its checkpoint
    requeued = wait_for(lambda: (s := status(url, task_id))["state"] == "queued" and s, timeout=30,
                        what="the task requeued after the lease ran out")
    checkpoint = requeued["done"]
    assert checkpoint >= ITERATIONS // 2

    second = start_worker(node, "w-second", tmp_path / "second.log", idle_seconds=0.5)
    assert second.wait(timeout=120) == 0
    log = (tmp_path / "second.log").read_text()
    # the worker's first result is spot-checked before it is accepted (docs/verification.md)
    done = wait_for(lambda: (s := status(url, task_id))["state"] != "running" and s, timeout=60,
                    what=f"the result, once spot-checked: {log}")
    assert done["state"] == "completed", log
    assert done["result"] == EXPECTED  # the uninterrupted chain
    assert done["resumed_from"] == checkpoint
    (computed,) = map(int, re.findall(r"exiting after 1 task\(s\), (\d+) iterations computed", log))
    assert f"resumes from its checkpoint at {checkpoint} of {ITERATIONS}" in log
    assert computed == ITERATIONS - checkpoint  # only what was left
    stats = requests.get(f"{url}/stats", timeout=5).json()
    assert stats["checkpoints"]["refused"] == 0 and stats["checkpoints"]["accepted"] >= 1
    print(f"\nkilled past half-way: checkpoint at {checkpoint:,} of {ITERATIONS:,}; the second worker computed "
          f"{computed:,} iterations ({computed / ITERATIONS:.1%} of the task, none before the checkpoint)")


def test_a_spot_interruption_notice_hands_the_task_back_with_its_checkpoint(node, tmp_path):
    from tests.test_spot_watcher import StubMetadata

    url = node.urls[0]
    task_id = requests.put(f"{url}/enqueue", params={"iterations": ITERATIONS, "reuse": 0}, data=DATA,
                           timeout=5).json()["id"]
    metadata = StubMetadata()
    env = {**os.environ, "CLUSTER_TOKEN": node.token}
    log_path = tmp_path / "spot.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "workerapp", "--worker-id", "w-spot", "--idle-seconds", "60",
                                   "--spot", "--metadata-url", metadata.url, "--spot-poll-seconds", "0.2", url],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: status(url, task_id).get("done", 0) >= ITERATIONS // 2, timeout=60, interval=0.1,
                 what="the spot worker's checkpoint past half-way")
        expired_before = requests.get(f"{url}/stats", timeout=5).json()["leases_expired"]
        metadata.notice = {"action": "terminate", "time": "2026-12-01T12:02:00Z"}
        assert worker.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
        metadata.close()
    handed_back = status(url, task_id)
    assert handed_back["state"] == "queued"
    assert requests.get(f"{url}/stats", timeout=5).json()["leases_expired"] == expired_before  # handed back
    assert 0 < handed_back["done"] < ITERATIONS
    assert "spot interruption notice" in log_path.read_text()
    second = start_worker(node, "w-after-spot", tmp_path / "after.log", idle_seconds=0.5)
    assert second.wait(timeout=120) == 0
    finished = wait_for(lambda: (s := status(url, task_id))["state"] != "running" and s, timeout=60,
                        what="the result, once spot-checked")
    assert finished["result"] == EXPECTED
    assert finished["resumed_from"] == handed_back["done"]
