"""Several tasks in the vector lanes of one worker thread (workerapp/rounds.py and the worker's
rounds): the planner, then the worker in-process against fake nodes (results, claims sized to
the lanes, checkpoints, cancel, stop, evacuation, per task)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading

import pytest
import requests

from tests.digests import sha512_chain as reference
from tests.helpers import running_cluster, wait_for
from tests.test_worker_loop import FakeNode, clock, make_worker  # noqa: F401 (clock: a fixture)
from tmcommon.marks import positions
from workerapp import engine
from workerapp.client import ClaimedTask
from workerapp.compute import chain, compute
from workerapp.rounds import LaneBatch
from workerapp.worker import Worker


def task(name: str, iterations: int, checkpoint=None) -> ClaimedTask:
    return ClaimedTask(name, iterations, name.encode(), checkpoint)


# ------------------------------------------------------------------ planner
def test_a_round_runs_started_chains_first_then_starts_waiting_ones_within_its_work():
    batch = LaneBatch(width=4, step=100)
    assert batch.add([task("long", 250), task("short", 30), task("mid", 120), task("t1", 5), task("t2", 400)]) == []
    first = batch.plan()  # longest jobs first: the short ones fill the lanes at the end
    assert [(c.task.id, n) for c, n in first] == [("long", 100), ("mid", 100), ("t2", 100), ("short", 30), ("t1", 5)]
    ended = batch.record(first, ["%064x" % i for i in range(5)])
    assert [c.task.id for c in ended] == ["short", "t1"]
    assert batch.checkpoints() == {"long": (100, "%064x" % 0), "mid": (100, "%064x" % 1), "t2": (100, "%064x" % 2)}
    assert batch.free_lanes() == 1
    second = batch.plan()  # started chains first, each with what it has left up to a step
    assert [(c.task.id, n) for c, n in second] == [("long", 100), ("t2", 100), ("mid", 20)]
    assert second[0][0].job(100) == (bytes.fromhex("%064x" % 0), 100)  # resumes from its digest


def test_a_round_never_holds_more_work_than_its_lanes():
    batch = LaneBatch(width=2, step=10)
    batch.add([task(f"t{i}", 50) for i in range(5)])
    planned = batch.plan()
    assert [n for _, n in planned] == [10, 10] and len(batch.waiting) == 3
    assert batch.free_lanes() == 0


def test_stopping_starts_nothing_new_and_a_drop_removes_a_chain_anywhere():
    batch = LaneBatch(width=2, step=10)
    batch.add([task("a", 50), task("b", 50), task("c", 50)])
    batch.record(batch.plan(), ["aa" * 64, "bb" * 64])
    assert [c.task.id for c, _ in batch.plan(start=False)] == ["a", "b"]
    assert [c.task.id for c in batch.drop({"a", "c"})] == ["a", "c"]
    assert batch.ids() == ["b"] and batch.checkpoints() == {"b": (10, "bb" * 64)}


def test_a_claimed_checkpoint_is_resumed_and_one_at_the_end_ends_at_once():
    batch = LaneBatch(width=4, step=10)
    ended = batch.add([task("half", 30, (12, "cc" * 64)), task("all", 30, (30, "dd" * 64))])
    assert [(c.task.id, c.digest) for c in ended] == [("all", "dd" * 64)]
    ((half, n),) = batch.plan()
    assert (half.task.id, n, half.job(n)) == ("half", 10, (bytes.fromhex("cc" * 64), 10))


def test_width_and_step_must_be_positive():
    with pytest.raises(ValueError):
        LaneBatch(0, 10)
    with pytest.raises(ValueError):
        LaneBatch(4, 0)


# --------------------------------------------------- the worker, in-process
class Many:
    """A ``compute_many`` that records each call's jobs; the native vector kernel when built, else
    the hashlib loop one chain after the other."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        try:
            import workerapp._native  # noqa: F401
            self._many = engine.compute_many_native
        except ImportError:
            self._many = lambda jobs: [compute(data, n) for data, n in jobs]

    def __call__(self, jobs):
        self.calls.append([n for _, n in jobs])
        return self._many(jobs)


def test_long_and_short_tasks_share_the_lanes_and_every_result_is_hashlibs(clock):
    """Long chains of unequal lengths and short tasks in one claim: the long ones advance a step
    per round, side by side; the short ones fill the lanes the long ones leave."""
    tasks = [(b"long%d" % i, 2_500 + 300 * i) for i in range(6)] + [(b"short%d" % i, 1 + 37 * i) for i in range(10)]
    node = FakeNode("own", tasks)
    many = Many()
    # 4 lanes of 10,000 iterations/s in all: a step is 250 iterations per chain, a round 1,000
    worker = make_worker([node], clock, hash_rate=10_000, slice_seconds=0.1, claim_seconds=100, compute_many=many,
                         width=4)
    assert worker.run() == 0
    assert node.results == {f"own/{i}": reference(d, n) for i, (d, n) in enumerate(tasks)}
    assert worker.iterations_computed == sum(n for _, n in tasks)
    assert node.log[0] == ("own", 4)  # at most one task per lane until a claim shows them short
    assert all(sum(call) <= 4 * 250 and call.count(250) <= 4 for call in many.calls)
    assert max(len(call) for call in many.calls) > 4  # short tasks ran in lanes the long ones left


def test_claims_refill_freed_lanes_from_the_same_node_one_task_per_lane(clock):
    node = FakeNode("own", [(b"t%d" % i, 1_000) for i in range(10)])  # each four steps long
    many = Many()
    worker = make_worker([node], clock, hash_rate=4_000, slice_seconds=0.25, compute_many=many, width=4)
    assert worker.run() == 0
    assert node.results == {f"own/{i}": reference(b"t%d" % i, 1_000) for i in range(10)}
    assert [n for _, n in node.log][:4] == [4, 4, 2, 0]  # claims sized to the free lanes, then empty
    assert many.calls[:4] == [[250] * 4] * 4


def test_short_tasks_are_claimed_in_batches_once_a_claim_shows_them_short(clock):
    node = FakeNode("own", [(b"s%d" % i, 10) for i in range(300)])
    worker = make_worker([node], clock, hash_rate=1_000_000, compute_many=Many(), width=8, max_batch=100)
    assert worker.run() == 0
    assert len(node.results) == 300
    assert [n for _, n in node.log][:4] == [8, 100, 100, 92]


class AfterHeartbeat(Many):
    """Starts each round only once a heartbeat has carried the checkpoint ``watched`` reached in
    the one before (each round moves it on, so each heartbeat after a round shows a new one)."""

    def __init__(self, node: FakeNode, watched: str) -> None:
        super().__init__()
        self.node, self.watched = node, watched

    def __call__(self, jobs):
        if self.calls:
            rounds = len(self.calls)
            wait_for(lambda: len({c[self.watched][0] for c in self.node.checkpoints if self.watched in c}) >= rounds,
                     timeout=20, what=f"a heartbeat after round {rounds}")
        return super().__call__(jobs)


def test_heartbeats_carry_a_growing_checkpoint_for_every_chain_running_at_once():
    tasks = [(b"hb%d" % i, 30_000 + 1_000 * i) for i in range(3)]
    node = FakeNode("own", tasks, lease=0.3)  # a heartbeat at each 0.2 s tick
    # a step of 50,000 iterations per chain, cut at each mark (every 4,096): eight rounds, a heartbeat
    # after each
    worker = Worker([node], idle_seconds=0.05, hash_rate=400_000, slice_seconds=0.5, compute_many=AfterHeartbeat(node, "own/2"),
                    width=4)
    assert worker.run() == 0
    assert node.results == {f"own/{i}": reference(d, n) for i, (d, n) in enumerate(tasks)}
    assert any(len(sent) == 3 for sent in node.checkpoints)
    for i, (data, iterations) in enumerate(tasks):
        sent = [c[f"own/{i}"] for c in node.checkpoints if f"own/{i}" in c]
        dones = [done for done, _ in sent]
        assert dones == sorted(dones) and set(dones) == set(positions(iterations))  # one a round
        previous = None
        for done, digest in dict(sent).items():  # each checked from the one before: one pass over the chain
            assert 0 < done < iterations and digest == chain(data, done, previous)
            previous = (done, digest)


class Parking(Many):
    """Parks the worker inside its ``hold_at``-th call until ``go`` is set."""

    def __init__(self, hold_at: int) -> None:
        super().__init__()
        self.hold_at, self.reached, self.go = hold_at, threading.Event(), threading.Event()

    def __call__(self, jobs):
        if len(self.calls) + 1 == self.hold_at:
            self.reached.set()
            self.go.wait(30)
        return super().__call__(jobs)


def run_in_thread(worker):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=worker.run()))
    thread.start()
    return thread, result


def test_a_cancelled_chain_drops_out_and_the_others_finish():
    tasks = [(b"keep0", 4_000), (b"cancel", 4_000), (b"keep1", 4_000)]
    node = FakeNode("own", tasks)
    many = Parking(hold_at=2)
    worker = Worker([node], idle_seconds=0.05, hash_rate=4_000, slice_seconds=0.25, compute_many=many, width=4)
    thread, result = run_in_thread(worker)
    try:
        wait_for(many.reached.is_set, timeout=20, what="the worker inside its second round")
        with worker._holding_lock:  # what a heartbeat answer does: the node says stop
            worker._dropped.add("own/1")
    finally:
        many.go.set()
    thread.join(timeout=30)
    assert not thread.is_alive() and result["code"] == 0
    assert node.results == {"own/0": reference(*tasks[0]), "own/2": reference(*tasks[2])}
    assert [len(call) for call in many.calls] == [3, 3] + [2] * 14  # the cancelled chain dropped out after round 2
    assert worker._dropped == set()


def test_evacuate_hands_back_every_chain_with_its_own_checkpoint():
    tasks = [(b"ev%d" % i, 5_000 + i) for i in range(3)] + [(b"waiting", 10)]
    node = FakeNode("own", tasks)
    many = Parking(hold_at=3)  # inside the third round: two done
    worker = Worker([node], idle_seconds=30, hash_rate=3_000, slice_seconds=1.0, claim_seconds=10, compute_many=many,
                    width=3)
    thread, result = run_in_thread(worker)
    try:
        wait_for(many.reached.is_set, timeout=20, what="the worker inside its third round")
        worker.evacuate({"action": "terminate"})
    finally:
        many.go.set()
    thread.join(timeout=20)
    assert not thread.is_alive() and result["code"] == 0
    assert node.results == {}
    assert sorted(node.downs[0]) == ["own/0", "own/1", "own/2"]  # one claim, one task per lane
    assert [t.id for t in node.queue] == ["own/3"]
    (handed,) = node.checkpoints
    assert handed == {f"own/{i}": (3_000, compute(data, 3_000)) for i, (data, _) in enumerate(tasks[:3])}


def test_stop_finishes_the_started_chains_and_hands_back_the_waiting_ones():
    # two short tasks make the refill claim wide: it brings three long ones for two lanes
    tasks = [(b"s0", 100), (b"s1", 100), (b"run0", 1_500), (b"run1", 1_500), (b"wait0", 1_500)]
    node = FakeNode("own", tasks)
    many = Parking(hold_at=2)
    worker = Worker([node], idle_seconds=30, hash_rate=2_000, slice_seconds=0.5, claim_seconds=10, compute_many=many,
                    width=2)
    thread, result = run_in_thread(worker)
    try:
        wait_for(many.reached.is_set, timeout=20, what="the worker inside its second round")
        worker.request_stop()
    finally:
        many.go.set()
    thread.join(timeout=20)
    assert not thread.is_alive() and result["code"] == 0
    assert node.results == {f"own/{i}": reference(*tasks[i]) for i in range(4)}
    assert node.downs == [["own/4"], []]  # handed back unstarted, then goodbye
    assert many.calls == [[100, 100], [500, 500], [500, 500], [500, 500]]


# ------------------------------------------------------- a real worker process
def base_chain(seed: bytes, positions: set[int]) -> dict[int, bytes]:
    """The raw digests at ``positions`` of the chain sha512(seed), sha512 of that, ... (position 1
    is sha512(seed)), in one hashlib pass."""
    out, digest = {}, seed
    for position in range(1, max(positions) + 1):
        digest = hashlib.sha512(digest).digest()
        if position in positions:
            out[position] = digest
    return out


@pytest.mark.integration
def test_a_worker_process_computes_long_tasks_of_unequal_lengths_at_once(tmp_path):
    """One ``python -m workerapp`` with the best vector kernel and as many long tasks as its lanes,
    each of its own length: at some moment every task has a checkpoint and none has ended (they
    run side by side, not one after the other), and every result is hashlib's. Task i's body is
    position i of one base chain, so its result is position i + its iterations: one hashlib pass
    checks them all."""
    native = pytest.importorskip("workerapp._native", reason="the C extension is not built here")
    if not native.SIMD:
        pytest.skip("this CPU has no vector kernel")
    width, long = native.LANES[native.SIMD], 3_000_000
    iterations = {i: long + 1_000 * i for i in range(1, width + 1)}
    chain_at = base_chain(b"lanes", set(iterations) | {i + n for i, n in iterations.items()})
    with running_cluster({"MAX_NUM_OF_WORKERS": "0", "LEASE_SECONDS": "1.5"}, tmp_path) as cluster:
        url = cluster.urls[0]
        ids = {requests.put(f"{url}/enqueue", params={"iterations": n, "reuse": 0}, data=chain_at[i],
                            timeout=5).json()["id"]: i for i, n in iterations.items()}
        env = {**os.environ, "CLUSTER_TOKEN": cluster.token}
        worker = subprocess.Popen([sys.executable, "-m", "workerapp", "--worker-id", "w-lanes", "--idle-seconds", "1",
                                   url], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        seen = {"together": False}

        def all_completed():
            assert worker.poll() is None, worker.stderr.read()
            states = [requests.get(f"{url}/status/{task_id}", timeout=5).json() for task_id in ids]
            seen["together"] |= all(s["state"] == "running" and s.get("done") for s in states)
            return states if all(s["state"] == "completed" for s in states) else None

        try:
            states = wait_for(all_completed, timeout=120, interval=0.02, what="the results")
            assert worker.wait(timeout=60) == 0
            log = worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert seen["together"], "the tasks never all had a checkpoint at once"
    assert f"{native.SIMD} kernel: {width} chains at once" in log
    for state, (task_id, i) in zip(states, ids.items()):
        assert state["result"] == chain_at[i + iterations[i]].hex(), task_id
