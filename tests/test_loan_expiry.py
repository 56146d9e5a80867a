"""Loans between two real gunicorn nodes with real local workers survive nothing they should not.

Node A has no quota of its own (MAX 0) and borrows all 3 slots of node B. Then:

1. B (the lender) is killed with SIGKILL and started again: it comes back *recovering*, adopts
   the 3 loans A still uses, and launches nothing of its own meanwhile (a task waits on it);
2. A (the borrower) is killed with SIGKILL, its workers with it: B's max comes back to 3
   within LOAN_TTL_SECONDS, without any ``return_quota``;
3. A is started again: the lent and borrowed figures of both nodes agree.

Throughout, a watcher checks that the workers of both nodes never exceed the 3 slots.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.helpers import running_cluster, wait_for
from tests.quota_cluster import QuotaWatch, SplitCluster, stats

pytestmark = pytest.mark.integration

TTL = 10.0  # long enough that a restarted lender is back before its borrower lets go
ENV = {"SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0.2", "WORKER_IDLE_SECONDS": "300", "LOAN_TTL_SECONDS": str(TTL),
       "TM_LOCAL_MAX_WORKERS": "3"}  # local mode runs no more workers than CPUs unless told


def enqueue(url: str, iterations: int) -> None:
    """A task of its own (a distinct body: identical tasks would share one run)."""
    response = requests.put(f"{url}/enqueue", params={"iterations": iterations}, data=os.urandom(16), timeout=5)
    assert response.status_code == 201, response.text


def quota(url: str) -> tuple[int, int, int, int, bool]:
    """(max, lent, borrowed, live workers, recovering) of a node."""
    s = stats(url)
    return s["workers"]["max"], s["quota"]["lent"], s["quota"]["borrowed"], s["workers"]["live"], s["quota"]["recovering"]


def test_loans_end_with_their_borrower_and_survive_a_lender_restart(tmp_path):
    nodes = SplitCluster([{"MAX_NUM_OF_WORKERS": "0"}, {"MAX_NUM_OF_WORKERS": "3"}], env=ENV, log_dir=tmp_path)
    with running_cluster(ENV, tmp_path, cluster=nodes) as cluster:
        a, b = cluster.urls
        with QuotaWatch([a, b], [0, 3]) as watch:
            for _ in range(30):  # more work than 3 workers do in the whole test
                enqueue(a, 2_000_000)
            wait_for(lambda: quota(a)[1:4] == (0, 3, 3) and quota(b)[:3] == (0, 3, 0), 60,
                     what="A to run 3 workers on slots borrowed from B")

            # 1. The lender dies and comes back; A's workers keep running on the loans.
            cluster.stop_node(1, sig=signal.SIGKILL)
            cluster.start_node(1)
            cluster.wait_healthy(60, nodes=cluster.nodes[1:])
            enqueue(b, 1)  # B would launch a worker for it if it forgot what it had lent
            wait_for(lambda: quota(b) == (0, 3, 0, 0, False), 30, what="restarted B to adopt A's 3 loans")
            assert quota(a)[1:4] == (0, 3, 3)  # nothing was stopped

            # 2. The borrower dies (its workers too); nobody returns the loans.
            cluster.stop_node(0, sig=signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda: quota(b)[:2] == (3, 0), TTL + 10, interval=0.1, what="B's max back to 3")
            recovered_in = time.monotonic() - killed_at

            # 3. The borrower comes back: both nodes agree on what is lent and borrowed.
            cluster.start_node(0)
            cluster.wait_healthy(60, nodes=cluster.nodes[:1])

            def agreed() -> bool:
                qa, qb = quota(a), quota(b)
                return qa[1] == qb[2] and qa[2] == qb[1] and not qa[4] and not qb[4]

            wait_for(agreed, 30, what="lent and borrowed figures to agree after A's restart")
        print(f"\nB's max came back {recovered_in:.1f}s after A was killed (LOAN_TTL_SECONDS={TTL:g}); "
              f"{watch.checks} quota checks, the most workers seen {watch.most} of 3")
        assert watch.checks > 10 and not watch.violations, watch.violations
