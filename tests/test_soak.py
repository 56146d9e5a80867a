"""Soak run (excluded by default; `pytest -m soak`, a few minutes): sustained load on a local
cluster while workers are SIGKILLed at random. Nothing may be lost, duplicated or wrong."""

from __future__ import annotations

import os
import random
import signal
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import running_cluster, wait_for
from tests.test_e2e import FAST, pull_merged, worker_pids
from workerapp.compute import compute

pytestmark = [pytest.mark.soak, pytest.mark.integration, pytest.mark.timeout(1800)]

TASKS = int(os.environ.get("SOAK_TASKS", "20000"))


def enqueue_all(urls: list[str], work: list[tuple[bytes, int]], **params: str) -> dict[str, int]:
    """Enqueue every ``(body, iterations)`` of ``work``, alternating nodes, from 8 threads with a
    session each; returns task id -> index in ``work``. A call whose kept-alive connection the
    node closed meanwhile (a busy machine) is sent again with its idempotency key: queued once."""
    sessions = threading.local()
    run = uuid.uuid4().hex[:8]

    def enqueue(i: int) -> tuple[str, int]:
        session = getattr(sessions, "s", None) or requests.Session()
        sessions.s = session
        data, iterations = work[i]
        for attempt in range(3):
            try:
                response = session.put(f"{urls[i % 2]}/enqueue", params={"iterations": iterations, **params},
                                       data=data, headers={"Idempotency-Key": f"soak-{run}-{i}"}, timeout=30)
                break
            except requests.ConnectionError:
                if attempt == 2:
                    raise
        assert response.status_code in (200, 201), response.text
        return response.json()["id"], i

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(enqueue, range(len(work))))


def test_sustained_load_with_workers_killed(tmp_path):
    rng = random.Random(7)
    work = [(rng.randbytes(rng.randint(0, 256)), rng.choice([1, 1, 10, rng.randint(1, 20_000)])) for _ in range(TASKS)]
    env = {**FAST, "MAX_NUM_OF_WORKERS": "3", "RESULTS_RETENTION": str(TASKS), "WORKER_IDLE_SECONDS": "5"}
    with running_cluster(env, tmp_path) as cluster:
        stop = threading.Event()
        killed = []

        def killer() -> None:
            while not stop.wait(3.0):
                pids = worker_pids(cluster)
                if pids:
                    victim = rng.choice(pids)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)
                    except ProcessLookupError:
                        pass

        chaos = threading.Thread(target=killer, daemon=True)
        chaos.start()
        ids = enqueue_all(cluster.urls, work)
        wait_for(lambda: sum(requests.get(f"{u}/stats", timeout=5).json()["completed"] for u in cluster.urls) >= TASKS,
                 900, interval=1.0, what="every task to complete")
        stop.set()
        chaos.join()
        results = pull_merged(cluster.urls[0], ids, top=TASKS)
        assert len(results) == TASKS == len({r["id"] for r in results})
        for result in results:
            data, iterations = work[ids[result["id"]]]
            assert result["result"] == compute(data, iterations)
        assert killed, "the soak run killed no worker"
        assert all(requests.get(f"{u}/stats", timeout=5).json()["failed"] == 0 for u in cluster.urls)
