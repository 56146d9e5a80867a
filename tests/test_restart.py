"""kill -9 of a node under load, then a restart on the same DATA_DIR: every task that got a 201
completes exactly once with the right result, and the other node serves throughout."""

from __future__ import annotations

import random
import threading

import pytest
import requests

from provisioning.local_cluster import LocalCluster
from tests.crash import Load, assert_each_once_and_correct, data_dir_free, kill_9, kill_groups
from tests.helpers import wait_for
from tests.test_e2e import FAST, pull_merged

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TASKS = 2000


def test_kill_9_of_a_node_loses_and_repeats_nothing(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    env = {**FAST, "MAX_NUM_OF_WORKERS": "2", "WORKER_IDLE_SECONDS": "5"}
    cluster = LocalCluster(env=env, log_dir=tmp_path / "logs", data_dir=tmp_path / "data")
    old_groups: list[int] = []
    try:
        cluster.start(timeout=60)
        a, b = cluster.urls
        load = Load(cluster, rng, TASKS)
        loader = threading.Thread(target=load.run)
        loader.start()
        kill_after = rng.randint(TASKS // 5, TASKS * 3 // 5)  # the random moment
        wait_for(lambda: load.sent >= kill_after and requests.get(f"{a}/stats", timeout=5).json()["completed"] > 0,
                 120, interval=0.01, what="node A to accept and complete some tasks")
        old_groups.append(kill_9(cluster, 0))
        killed_at = load.sent
        b_health = [requests.get(f"{b}/health", timeout=5).status_code]
        wait_for(lambda: data_dir_free(tmp_path / "data" / "node-a"), 30, what="node A's DATA_DIR to be free")
        cluster.start_node(0)
        cluster.wait_healthy(60, nodes=cluster.nodes[:1])
        b_health.append(requests.get(f"{b}/health", timeout=5).status_code)
        journal = requests.get(f"{a}/stats", timeout=5).json()["journal"]
        loader.join()

        assert len(load.accepted) == TASKS
        wait_for(lambda: set(load.accepted) <= {r["id"] for r in pull_merged(a, [])}, 120, interval=0.5,
                 what="every accepted task to complete")
        figures = assert_each_once_and_correct(cluster, load, top=10_000)
        assert journal["durable"] and journal["skipped_at_start"] == 0
        assert sum(journal["recovered"].values()) > 0, "node A recovered nothing from its journal"
        assert load.failures[b] == 0 and b_health == [200, 200], "node B did not serve throughout"
        print(f"\nrestart test (seed {seed}): {figures['accepted']} tasks got a 201, node A killed after "
              f"{killed_at}, {load.failures[a]} request(s) to A failed, A recovered {journal['recovered']}, "
              f"{figures['orphans']} accepted without an answer, completions per node {figures['completed']}")
    finally:
        cluster.stop()
        kill_groups(old_groups)  # node A's first workers, orphaned by the kill
