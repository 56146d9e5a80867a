"""A worker's own hard lifetime (WORKER_MAX_LIFETIME by its own clock): a real worker process stops
by itself at that age, even when its node never tells it to and work would keep it busy."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.aws_helpers import LoopbackNode
from tests.helpers import wait_for

TOKEN = "lifetime-token"


def test_a_worker_stops_by_itself_at_its_max_lifetime():
    node = LoopbackNode("node-1", TOKEN)
    try:
        store = node.context.node.tasks
        ids = [store.submit(b"long-%d" % n, 10_000_000) for n in range(4)]  # minutes of work
        env = {**os.environ, "CLUSTER_TOKEN": TOKEN}
        started = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "workerapp", "--worker-id", "w-lifetime", "--idle-seconds", "600",
             "--max-lifetime", "3", "--claim-seconds", "60", node.url],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: store.counts().running, timeout=60, what="the worker claiming work")
        output, _ = worker.communicate(timeout=120)
        lived = time.monotonic() - started
        assert worker.returncode == 0, output
        assert "WORKER_MAX_LIFETIME=3s reached" in output
        assert lived < 60, f"lived {lived:.0f}s"  # not the 600 s of idleness, nor the work's minutes
        counts = store.counts()
        assert counts.queued + counts.running + counts.completed == len(ids)  # nothing lost (a lease left comes back)
        assert ("POST", "/worker_down/w-lifetime") in {(m, p) for m, p, _ in node.calls}
    finally:
        node.close()
