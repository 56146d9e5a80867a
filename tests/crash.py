"""Crashing a node on purpose: kill -9 of its gunicorn processes, a client load that notes what each
node answered, and the exactly-once check afterwards (tests/test_restart.py, the soak)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import requests

from nodeapp.store.journal import DataDirInUse, check_free
from provisioning.local_cluster import LocalCluster
from tests.digests import sha512_chain
from tests.test_e2e import pull_merged


def gunicorn_worker(master_pid: int) -> int:
    """The node's one gunicorn worker process (the child of its master that runs the app)."""
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    raise AssertionError(f"gunicorn master {master_pid} has no worker")


def rss_mib(cluster: LocalCluster, index: int) -> float:
    """Resident memory of a node's gunicorn worker process, in MiB."""
    worker = gunicorn_worker(cluster.nodes[index].process.pid)
    for line in Path(f"/proc/{worker}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {worker}")


def kill_9(cluster: LocalCluster, index: int) -> int:
    """SIGKILL a node's gunicorn master, then its worker (its worker processes live on, as they
    would on other machines). Returns the node's old process group, to clean up at the end."""
    master = cluster.nodes[index].process
    worker = gunicorn_worker(master.pid)
    os.kill(master.pid, signal.SIGKILL)  # first, so that it cannot start a new worker
    os.kill(worker, signal.SIGKILL)
    master.wait()
    return master.pid


def data_dir_free(data_dir: Path) -> bool:
    try:
        check_free(data_dir)
    except DataDirInUse:
        return False
    return True


def kill_groups(groups: list[int]) -> None:
    """What is left of killed nodes' process groups (their orphaned workers)."""
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Load:
    """``clients`` threads enqueue ``count`` small tasks, task i to node i % 2 first and to the
    other node when that one fails; every 201 and every failure per node is recorded."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, count: int, clients: int = 8) -> None:
        self.urls = cluster.urls
        self.clients = clients
        self.work = [(rng.randbytes(rng.randint(0, 200)), rng.choice([1, 2, rng.randint(1, 5000)]))
                     for _ in range(count)]
        self.accepted: dict[str, tuple[bytes, int]] = {}  # id -> task, for every 201
        self.failures = {url: 0 for url in self.urls}  # errors and non-201 answers, per node
        self.sent = 0
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(c,)) for c in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _client(self, c: int) -> None:
        session = requests.Session()
        for i in range(c, len(self.work), self.clients):
            data, iterations = self.work[i]
            for attempt in range(200):
                url = self.urls[(i + attempt) % 2]
                try:
                    response = session.put(f"{url}/enqueue", params={"iterations": iterations}, data=data, timeout=10)
                    if response.status_code == 201:
                        with self._lock:
                            self.accepted[response.json()["id"]] = (data, iterations)
                            self.sent += 1
                        break
                except requests.RequestException:
                    session = requests.Session()
                with self._lock:
                    self.failures[url] += 1
                time.sleep(0.05)
            else:
                raise AssertionError(f"task {i} was refused by both nodes 200 times")


def assert_each_once_and_correct(cluster: LocalCluster, load: Load, top: int) -> dict:
    """Every task that got a 201 is listed once by pullCompleted on both nodes with the hashlib
    result, no task was completed twice, and ids nobody got a 201 for are at most the requests
    that failed (accepted, then cut off by a kill). Returns the figures."""
    tasks = load.accepted
    results = {}
    for url in cluster.urls:
        listed = pull_merged(url, tasks, top=top)
        ids = [r["id"] for r in listed]
        assert len(ids) == len(set(ids)), f"{url} lists a task twice"
        results[url] = {r["id"]: r for r in listed}
    a, b = cluster.urls
    assert results[a].keys() == results[b].keys()
    wrong = [i for i, (data, iterations) in tasks.items() if results[a][i]["result"] != sha512_chain(data, iterations)]
    assert not wrong, f"{len(wrong)} wrong result(s), e.g. {wrong[:3]}"
    orphans = results[a].keys() - tasks.keys()
    assert len(orphans) <= sum(load.failures.values())
    stats = [requests.get(f"{url}/stats", timeout=5).json() for url in cluster.urls]
    completed = [s["completed"] for s in stats]
    assert sum(completed) == len(results[a]), f"completions {completed} for {len(results[a])} tasks: one ran twice"
    assert all(s["failed"] == 0 for s in stats)
    return {"accepted": len(tasks), "orphans": len(orphans), "completed": completed,
            "journal": [s["journal"] for s in stats]}
