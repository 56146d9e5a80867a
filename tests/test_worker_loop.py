"""The worker loop in-process against fake nodes (NodeClient's methods over an in-memory queue),
on a fake clock that every wait of the loop advances: no HTTP, no sleeping."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque

import pytest

from tests.digests import sha512_chain
from tests.helpers import Clock
from workerapp import exitcodes
from workerapp.client import ClaimedTask, NodeRejected, NodeUnavailable
from workerapp.worker import Worker

UNAUTHORIZED = ("unauthorized", "missing or wrong X-Cluster-Token")


class FakeNode:
    """One node as a worker sees it. ``fail[method]`` lists exceptions raised by the next calls
    of that method, one per call; ``refuse`` makes every call raise NodeRejected."""

    def __init__(self, url: str, tasks=(), *, lease: float = 30.0, log: list | None = None) -> None:
        self.url, self.worker_id, self.lease = url, "w-fake", lease
        self.queue = deque(ClaimedTask(f"{url}/{i}", n, data) for i, (data, n) in enumerate(tasks))
        self.task_ids = [t.id for t in self.queue]
        self.fail: dict[str, deque] = {"claim": deque(), "complete": deque(), "worker_down": deque()}
        self.refuse: tuple[int, str, str] | None = None
        self.log = log if log is not None else []  # (url, tasks claimed), shared by the nodes of a test
        self.results: dict[str, str] = {}
        self.downs: list[list[str]] = []
        self.checkpoints: list[dict] = []  # what heartbeats and worker_down carried, in order
        self.calls: list[str] = []

    def _call(self, method: str) -> None:
        self.calls.append(method)
        if self.refuse:
            raise NodeRejected(f"{self.url}/{method}", *self.refuse)
        if self.fail.get(method):
            raise self.fail[method].popleft()

    def claim(self, max_tasks: int, max_iterations: int):
        self._call("claim")
        tasks: list[ClaimedTask] = []
        while self.queue and len(tasks) < max_tasks and (
                not tasks or sum(t.iterations for t in tasks) + self.queue[0].iterations <= max_iterations):
            tasks.append(self.queue.popleft())
        self.log.append((self.url, len(tasks)))
        return tasks, self.lease

    def complete(self, results):
        self._call("complete")
        new = {i: r for i, r, _marks in results if i not in self.results}
        self.results.update(new)
        return len(new)

    def heartbeat(self, task_ids, checkpoints=None):
        self._call("heartbeat")
        if checkpoints:
            self.checkpoints.append(dict(checkpoints))
        return []  # no task to stop

    def worker_down(self, returned=None, checkpoints=None):
        self._call("worker_down")
        self.downs.append(list(returned or []))
        if checkpoints:
            self.checkpoints.append(dict(checkpoints))
        return True


@pytest.fixture
def clock():
    return Clock(0.0)


def make_worker(nodes, clock, **options) -> Worker:
    """A worker on ``clock``: each wait moves the clock on by its length, at once."""
    waits = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds
        assert clock.now < 10_000, "the worker loop never ended"

    options = {"idle_seconds": 5.0, "hash_rate": 1_000_000, **options}
    worker = Worker(nodes, clock=clock, sleep=sleep, **options)
    worker.waits = waits
    return worker


def random_tasks(count: int, seed: int):
    rng = random.Random(seed)
    return [(rng.randbytes(rng.randrange(0, 64)), rng.randrange(1, 60)) for _ in range(count)]


def test_results_are_the_chained_sha512_of_each_task_in_batches(clock):
    tasks = random_tasks(30, seed=1)
    node = FakeNode("own", tasks)
    worker = make_worker([node], clock, max_batch=8)
    assert worker.run() == exitcodes.OK
    assert node.results == {f"own/{i}": sha512_chain(d, n) for i, (d, n) in enumerate(tasks)}
    assert worker.completed == 30
    assert [n for _, n in node.log][:5] == [8, 8, 8, 6, 0]  # batches of max_batch, then empty
    assert node.downs == [[]]  # one goodbye, nothing handed back


def test_a_claim_stays_within_the_work_budget(clock):
    node = FakeNode("own", [(b"x", 400)] * 5)
    worker = make_worker([node], clock, hash_rate=1000, claim_seconds=1.0)  # budget: 1000 iterations
    assert worker.run() == exitcodes.OK
    assert [n for _, n in node.log][:4] == [2, 2, 1, 0]
    assert len(node.results) == 5


def test_own_node_first_then_the_peer_and_results_go_back_where_they_came_from(clock):
    log: list = []
    own = FakeNode("own", random_tasks(5, seed=2), log=log)
    peer = FakeNode("peer", random_tasks(5, seed=3), log=log)
    worker = make_worker([own, peer], clock, max_batch=2)
    assert worker.run() == exitcodes.OK
    assert log[:9] == [("own", 2), ("own", 2), ("own", 1), ("own", 0), ("peer", 2),
                       ("own", 0), ("peer", 2), ("own", 0), ("peer", 1)]
    assert all(n == 0 for _, n in log[9:])
    assert set(own.results) == set(own.task_ids) and set(peer.results) == set(peer.task_ids)
    assert own.downs == [[]] and peer.downs == []  # a plain exit says goodbye to the own node only


def test_exits_after_idle_seconds_without_a_task(clock):
    own, peer = FakeNode("own"), FakeNode("peer")
    worker = make_worker([own, peer], clock, idle_seconds=3.0, max_poll=0.5)
    assert worker.run() == exitcodes.OK
    assert 3.0 <= clock.now < 3.5  # on the fake clock: the first poll at or past idle_seconds
    assert own.calls.count("claim") == peer.calls.count("claim") > 3
    assert own.downs == [[]]


def test_an_idle_worker_asks_for_work_at_least_every_tenth_of_a_second(clock):
    """The start of an idle worker is what the wall time of a burst of long tasks varies by."""
    node = FakeNode("own")
    times = []
    real_claim = node.claim
    node.claim = lambda k, n: times.append(clock.now) or real_claim(k, n)
    worker = make_worker([node], clock, idle_seconds=3.0)
    assert worker.run() == exitcodes.OK
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) > 25 and max(gaps) == pytest.approx(0.1)


def test_a_lane_that_finds_work_wakes_the_idle_lanes():
    """Real waits (no fake clock): lane 1 is in a wait of 6.4 s or more when the work comes."""
    node = FakeNode("own")
    claims = []  # (lane thread, tasks claimed)
    real_claim = node.claim

    def claim(k, n):
        tasks, lease = real_claim(k, n)
        claims.append((threading.current_thread().name, len(tasks)))
        return tasks, lease

    node.claim = claim
    worker = Worker([node], idle_seconds=600, hash_rate=1_000_000, lanes=2, max_batch=1, min_poll=0.05,
                    max_poll=0.05, max_poll_others=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30  # lane 1's 8th empty claim: then it waits 0.05 x 2^7 s
        while [name for name, _ in claims].count("lane-1") < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.queue.extend(ClaimedTask(f"own/{i}", 2_000_000, b"w%d" % i) for i in range(2))  # ~1 s each
        deadline = time.monotonic() + 30
        while sum(n for _, n in claims) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        working = [name for name, n in claims if n]
        assert len(working) == 2 and len(set(working)) == 2, claims  # each lane took one, lane 1 woken
        assert len(node.results) < 2  # ... while the first was still being computed
    finally:
        worker.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def test_backoff_doubles_up_to_its_cap_and_resets_when_the_node_answers(clock):
    node = FakeNode("own", [(b"late", 5)])
    node.fail["claim"].extend(NodeUnavailable("connection refused") for _ in range(8))
    times = []
    real_claim = node.claim
    node.claim = lambda k, n: times.append(clock.now) or real_claim(k, n)
    worker = make_worker([node], clock, idle_seconds=30.0, max_backoff=1.0, max_poll=0.5)
    assert worker.run() == exitcodes.OK
    gaps = [b - a for a, b in zip(times, times[1:])][:8]  # after each of the 8 failures
    backoffs = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for gap, backoff in zip(gaps, backoffs, strict=True):
        assert backoff - 1e-9 <= gap < backoff + 0.5  # never earlier; at most one poll later
    assert node.results == {"own/0": sha512_chain(b"late", 5)}
    assert worker.sources[0].failures == 0 and worker.sources[0].backoff == 0.0


def test_the_peer_serves_while_the_own_node_is_down(clock):
    own, peer = FakeNode("own"), FakeNode("peer", random_tasks(6, seed=4))
    own.fail["claim"].extend(NodeUnavailable("timeout") for _ in range(1000))
    worker = make_worker([own, peer], clock, max_batch=2)
    assert worker.run() == exitcodes.OK
    assert set(peer.results) == set(peer.task_ids)
    assert worker.sources[0].failures == own.calls.count("claim") >= 1


def test_posting_results_is_retried_while_the_lease_holds(clock):
    node = FakeNode("own", [(b"r", 3)])
    node.fail["complete"].extend([NodeUnavailable("502"), NodeUnavailable("502")])
    worker = make_worker([node], clock)
    assert worker.run() == exitcodes.OK
    assert node.calls.count("complete") == 3 and worker.waits[:2] == [0.1, 0.2]
    assert node.results == {"own/0": sha512_chain(b"r", 3)} and worker.completed == 1


def test_results_are_given_up_when_the_lease_would_have_run_out(clock):
    node = FakeNode("own", [(b"r", 3)], lease=1.0)
    node.fail["complete"].extend(NodeUnavailable("502") for _ in range(100))
    worker = make_worker([node], clock)
    assert worker.run() == exitcodes.OK
    assert node.results == {} and worker.completed == 0
    assert sum(worker.waits[:node.calls.count("complete") - 1]) <= 1.0  # retried within the lease only


def test_stop_finishes_the_task_in_hand_and_hands_back_the_rest(clock):
    tasks = random_tasks(4, seed=5)
    node = FakeNode("own", tasks)
    computed = []

    def compute_then_stop(data: bytes, iterations: int) -> str:
        computed.append(data)
        worker.request_stop()  # SIGTERM while the first task runs
        return sha512_chain(data, iterations)

    worker = make_worker([node], clock, compute_fn=compute_then_stop)
    assert worker.run() == exitcodes.OK
    assert len(computed) == 1 and node.results == {"own/0": sha512_chain(*tasks[0])}
    assert node.downs == [["own/1", "own/2", "own/3"], []]  # handed back unstarted, then goodbye
    assert node.calls.count("claim") == 1


def test_stop_wakes_an_idle_worker_at_once():
    """Real waits here (no fake clock): the poll wait must return on request_stop."""
    node = FakeNode("own")
    worker = Worker([node], idle_seconds=600, hash_rate=1_000_000, min_poll=30, max_poll=60)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()))
    thread.start()
    while not node.calls and thread.is_alive():  # then it waits 30 s for the next poll
        thread.join(0.01)
    worker.request_stop()
    thread.join(10)
    assert not thread.is_alive() and codes == [exitcodes.OK]
    assert node.downs == [[]]


@pytest.mark.parametrize("where", ["claim on the own node", "complete on the own node"])
def test_a_refusal_ends_the_loop_with_its_exit_code_and_a_goodbye_everywhere(clock, caplog, where):
    own, peer = FakeNode("own", [(b"o", 2)] if "complete" in where else []), FakeNode("peer")
    method, node = {"claim on the own node": ("claim", own), "complete on the own node": ("complete", own)}[where]
    status, code = (400, "bad_request") if method == "complete" else (401, "unauthorized")
    node.fail[method].append(NodeRejected(f"{node.url}/{method}", status, code, "the node says why"))
    worker = make_worker([own, peer], clock)
    with caplog.at_level(logging.INFO, logger="workerapp"):
        assert worker.run() == exitcodes.REJECTED
    assert (worker.rejection.status, worker.rejection.code) == (status, code)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"HTTP {status} {code}: the node says why" in errors[0]
    assert own.downs == [[]] and peer.downs == [[]]  # the peer requeues what it leased to us
    assert worker.completed == 0 and own.results == {}
    assert node.calls.count(method) == 1  # not retried


@pytest.mark.parametrize("method", ["claim", "complete"])
def test_the_peer_refusing_a_call_is_logged_once_and_the_worker_goes_on_for_its_own_node(clock, caplog, method):
    """Two nodes set up with different tokens: a worker must not exit (its node would launch
    another, which would exit the same way, for ever), nor ask the peer again."""
    own, peer = FakeNode("own"), FakeNode("peer", [(b"p", 2)])
    status, code = (400, "bad_request") if method == "complete" else (401, "unauthorized")
    peer.fail[method].append(NodeRejected(f"peer/{method}", status, code, "the node says why"))
    worker = make_worker([own, peer], clock)
    arrivals = [(b"o%d" % i, 3) for i in range(5)]
    real_claim = own.claim

    def claim(max_tasks, max_iterations):  # the own node's work arrives while the worker waits
        if arrivals and "claim" in peer.calls:
            own.queue.append(ClaimedTask(f"own/{len(own.task_ids)}", arrivals[0][1], arrivals.pop(0)[0]))
            own.task_ids.append(own.queue[-1].id)
        return real_claim(max_tasks, max_iterations)

    own.claim = claim
    with caplog.at_level(logging.INFO, logger="workerapp"):
        assert worker.run() == exitcodes.OK
    assert worker.rejection is None
    assert own.results == {f"own/{i}": sha512_chain(b"o%d" % i, 3) for i in range(5)}
    assert peer.calls.count("claim") == 1 and peer.calls.count(method) == 1  # never asked again
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused" in errors[0] and f"HTTP {status} {code}" in errors[0]
    assert peer.downs == [[]]  # the goodbye: the peer requeues what it leased to this worker


def test_a_wrong_token_is_logged_once_even_though_the_goodbye_is_refused_too(clock, caplog):
    node = FakeNode("own")
    node.refuse = (401, *UNAUTHORIZED)
    worker = make_worker([node], clock)
    with caplog.at_level(logging.INFO, logger="workerapp"):
        assert worker.run() == exitcodes.REJECTED
    assert node.calls == ["claim", "worker_down"]  # a refused goodbye is not retried
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.ERROR]
