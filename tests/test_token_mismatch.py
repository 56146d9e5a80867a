"""Two nodes set up with different tokens: each says so (log, ``/stats``), and their workers go
on for their own node instead of exiting 3 and being launched again, for ever."""

from __future__ import annotations

import pytest
import requests

from tests.digests import sha512_chain
from tests.helpers import running_cluster, wait_for
from tests.quota_cluster import SplitCluster

pytestmark = pytest.mark.integration


def test_nodes_with_different_tokens_say_so_and_launch_no_worker_again_and_again(tmp_path):
    env = {"MAX_NUM_OF_WORKERS": "1", "SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0", "WORKER_IDLE_SECONDS": "30",
           "HISTORY_SECONDS": "0.5", "LOG_SUMMARY_SECONDS": "0"}
    cluster = SplitCluster([{"CLUSTER_TOKEN": "token-of-a"}, {"CLUSTER_TOKEN": "token-of-b"}], env=env,
                           log_dir=tmp_path)
    with running_cluster(env, tmp_path, cluster=cluster):
        a, b = cluster.urls
        for round_ in range(3):  # work comes in bursts: each burst finds the worker of the last one
            bodies = {b"burst-%d-%d" % (round_, i): 5 for i in range(4)}
            ids = {requests.put(f"{url}/enqueue", params={"iterations": n}, data=data, timeout=5).json()["id"]:
                   (url, data, n) for url in (a, b) for data, n in bodies.items()}
            for task_id, (url, data, n) in ids.items():
                status = wait_for(lambda: (s := requests.get(f"{url}/status/{task_id}", timeout=5).json())
                                  .get("result") and s, timeout=60, what=f"task {task_id} of {url}")
                assert status["result"] == sha512_chain(data, n)
        for url in (a, b):
            stats = requests.get(f"{url}/stats", timeout=5).json()
            assert stats["workers"]["launched_total"] == 1, stats["workers"]  # no relaunch after an exit 3
            problem = wait_for(lambda: requests.get(f"{url}/stats", timeout=5).json()["peer"]["problem"],
                               timeout=20, what="the token problem in /stats")
            assert "refuses this node's token" in problem["what"]
    for node in cluster.nodes:
        log = node.log_path.read_text()
        assert "exited with code 3" not in log
        assert log.count("refuses this node's token") == 1, log[-3000:]
        assert "the other node refused a call" in log  # the worker's one line
