"""Soak with a node restart (excluded by default; ``pytest -m soak``, 10-20 minutes): 100,000 small
tasks on a journaled cluster while workers are SIGKILLed at random and node A is killed -9 once and
started again on its DATA_DIR. Nothing may be lost, duplicated or wrong; node memory and journal
size are reported. ``SOAK_RESTART_TASKS`` changes the count."""

from __future__ import annotations

import os
import random
import signal
import threading

import pytest
import requests

from provisioning.local_cluster import LocalCluster
from tests.crash import Load, assert_each_once_and_correct, data_dir_free, kill_9, kill_groups, rss_mib
from tests.helpers import wait_for
from tests.test_e2e import FAST, pull_merged, worker_pids

pytestmark = [pytest.mark.soak, pytest.mark.integration, pytest.mark.timeout(3600)]

TASKS = int(os.environ.get("SOAK_RESTART_TASKS", "100000"))


def test_soak_with_worker_kills_and_a_node_restart(tmp_path):
    rng = random.Random(11)
    env = {**FAST, "MAX_NUM_OF_WORKERS": "3", "WORKER_IDLE_SECONDS": "5", "RESULTS_RETENTION": str(TASKS)}
    cluster = LocalCluster(env=env, log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    old_groups: list[int] = []
    stop, killed = threading.Event(), []

    def killer() -> None:
        while not stop.wait(3.0):
            pids = worker_pids(cluster)
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    killed.append(1)
                except ProcessLookupError:
                    pass

    try:
        cluster.start(timeout=60)
        a, b = cluster.urls
        load = Load(cluster, rng, TASKS)
        loader, chaos = threading.Thread(target=load.run), threading.Thread(target=killer, daemon=True)
        loader.start()
        chaos.start()
        wait_for(lambda: load.sent >= TASKS * 2 // 5, 3600, interval=0.5, what="40% of the tasks to be sent")
        old_groups.append(kill_9(cluster, 0))
        wait_for(lambda: data_dir_free(tmp_path / "data" / "node-a"), 30, what="node A's DATA_DIR to be free")
        cluster.start_node(0)
        cluster.wait_healthy(120, nodes=cluster.nodes[:1])
        recovered = requests.get(f"{a}/stats", timeout=5).json()["journal"]["recovered"]
        loader.join()
        wait_for(lambda: sum(requests.get(f"{u}/stats", timeout=5).json()["completed"] for u in cluster.urls)
                 >= len(load.accepted), 1800, interval=2.0, what="every task to complete")
        stop.set()
        wait_for(lambda: set(load.accepted) <= {r["id"] for r in pull_merged(a, [], top=TASKS * 2)}, 120,
                 what="pullCompleted to list every task")
        figures = assert_each_once_and_correct(cluster, load, top=TASKS * 2)
        assert killed, "the soak run killed no worker"
        rss = [round(rss_mib(cluster, i), 1) for i in (0, 1)]
        sizes = [round(j["bytes"] / 2**20, 1) for j in figures["journal"]]
        print(f"\nsoak with restart: {figures['accepted']} tasks got a 201, 0 lost, 0 duplicated, "
              f"{figures['orphans']} accepted without an answer; {len(killed)} workers SIGKILLed; node A "
              f"recovered {recovered}; node RSS {rss} MiB; journal {sizes} MiB")
    finally:
        stop.set()
        cluster.stop()
        kill_groups(old_groups)
