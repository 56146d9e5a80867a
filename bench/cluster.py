"""The project's local cluster as a benchmarked system: 2 nodes, exactly 2 worker processes in total.

MAX_NUM_OF_WORKERS=1 on each node. Each node journals to a fresh DATA_DIR of its own, as
``run_program.py --local`` does (the default), unless ``journal=False``. The workers are warmed up before measuring (as the peers'
workers are started before theirs), and WORKER_IDLE_SECONDS is long so they stay up.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import requests

from bench.common import children, cpu_seconds, descendants, runqueue_wait_seconds, wait_until
from provisioning.local_cluster import LocalCluster


class ClusterSystem:
    def __init__(self, hash_rate: float, log_dir: Path, *, journal: bool = True, **settings: str) -> None:
        env = {"MAX_NUM_OF_WORKERS": "1", "WORKER_IDLE_SECONDS": "600", "HASH_RATE": str(int(hash_rate)), **settings}
        self.hash_rate = hash_rate
        self.cluster = LocalCluster(env=env, log_dir=log_dir, data_dir=log_dir / "data" if journal else None).start()
        self.urls = self.cluster.urls
        self.session = requests.Session()
        self.max_workers_seen = 0
        try:
            self._warm_up()
        except BaseException:
            self.stop()
            raise

    def stats(self) -> list[dict]:
        out = [self.session.get(url + "/stats", timeout=5).json() for url in self.urls]
        workers = sum(s["workers"]["live"] + s["workers"]["pending"] for s in out)
        self.max_workers_seen = max(self.max_workers_seen, workers)
        return out

    def workers(self) -> dict:
        stats = self.stats()
        return {"live": sum(s["workers"]["live"] for s in stats),
                "pending": sum(s["workers"]["pending"] for s in stats),
                "launched_total": sum(s["workers"]["launched_total"] for s in stats),
                "max_seen": self.max_workers_seen}

    def _warm_up(self, timeout: float = 90.0) -> None:
        """Give both nodes a backlog until 2 workers are live, then wait for it to drain."""
        iterations = max(1, int(self.hash_rate * 0.25))
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if sum(s["workers"]["live"] for s in stats) >= 2:
                break
            if sum(s["queued"] for s in stats) == 0:
                for url in self.urls:
                    for i in range(8):  # distinct bodies: a node answers a twin of a known task itself
                        self.session.put(f"{url}/enqueue?iterations={iterations}",
                                         data=f"warm-up {url} {i} {time.monotonic()}".encode(), timeout=5)
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster workers not live within {timeout:g}s: {[s['workers'] for s in stats]}")
            time.sleep(0.1)
        wait_until(lambda: all(s["queued"] == 0 and s["running"] == 0 for s in self.stats()), 60,
                   interval=0.1, what="warm-up tasks done")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the node processes (gunicorn) and of the worker processes."""
        out = {"nodes": 0.0, "workers": 0.0}
        for node in self.cluster.nodes:
            master = node.process.pid
            gunicorn_workers = children(master)
            for pid in descendants(master):
                out["nodes" if pid == master or pid in gunicorn_workers else "workers"] += cpu_seconds(pid)
        return out

    def runqueue_wait(self) -> dict[str, float]:
        """Seconds the live worker processes waited for a CPU (other users' load, not ours)."""
        out = {"workers": 0.0}
        for node in self.cluster.nodes:
            master = node.process.pid
            gunicorn_workers = children(master)
            for pid in descendants(master):
                if pid != master and pid not in gunicorn_workers:
                    out["workers"] += runqueue_wait_seconds(pid)
        return out

    def done_count(self) -> int:
        return sum(s["completed"] for s in self.stats())

    def failed_count(self) -> int:
        return 0  # the run's deadline catches lost tasks; failures show up as missing results

    def make_submit(self, t: int):
        url = self.urls[t % len(self.urls)]
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)

        def submit(i: int, body: bytes, iterations: int) -> str:
            conn.request("PUT", f"/enqueue?iterations={iterations}&reuse=0", body=body,
                         headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 201:
                raise RuntimeError(f"enqueue answered {response.status}: {payload[:200]!r}")
            return json.loads(payload)["id"]
        return submit

    def results(self, ids: list[str]) -> tuple[list[str | None], float]:
        pulled = self.session.post(f"{self.urls[0]}/pullCompleted?top={len(ids)}", timeout=30).json()
        by_id = {r["id"]: r for r in pulled}
        results = [by_id[i]["result"] if i in by_id else None for i in ids]
        last = max(by_id[i]["completed_at"] for i in ids if i in by_id)
        return results, last

    def stop(self) -> None:
        # A node with live, polling workers does not finish its SIGTERM shutdown by itself (seen
        # with gunicorn 25.3: it waits until killed), so the benchmark does not wait the full grace.
        self.cluster.stop(grace=3.0)
