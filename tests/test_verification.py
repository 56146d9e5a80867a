"""Spot-checks, in-process: marks, the segment check, the sampling, the store's hold/settle/rerun,
quarantine and counters (real processes with the faulty engine: tests/test_verification_cluster.py)."""

from __future__ import annotations

import hashlib
import random

import pytest

from nodeapp import create_app
from nodeapp.node import Node
from nodeapp.fleet.pool import Report
from nodeapp.store.records import Submission
from nodeapp.store.checker import Checker
from nodeapp.store.verification import RecentResults, Sampler, Unchecked, plan, run
from tests.conftest import TOKEN
from tests.digests import sha512_chain
from tests.helpers import FakeLauncher, wait_for
from tests.test_worker_loop import FakeNode
from tmcommon.marks import MAX_SEGMENTS, WHOLE, positions, segment_length
from workerapp.engine import compute_many_native, compute_native
from workerapp.faults import Fault, test_fault
from workerapp.marks import next_stop
from workerapp.worker import Worker


def flipped_chain(data: bytes, iterations: int, at: int | None = None) -> tuple[str, list[str]]:
    """The result and the digests at the marks by hashlib alone; with ``at``, one bit flipped
    after iteration ``at``, so the result and every mark after it are wrong."""
    wanted, marks = set(positions(iterations)), []
    digest = hashlib.sha512(data).digest()
    for done in range(1, iterations + 1):
        if done > 1:
            digest = hashlib.sha512(digest).digest()
        if done == at:
            digest = bytes([digest[0] ^ 1]) + digest[1:]
        if done in wanted:
            marks.append(digest.hex())
    return digest.hex(), marks


def chain_with_marks(data: bytes, iterations: int) -> tuple[str, list[str]]:
    return flipped_chain(data, iterations)


# ------------------------------------------------------------------ marks
@pytest.mark.parametrize("iterations", [1, WHOLE, WHOLE + 1, 50_000, 262_144, 262_145, 10_000_000, 10**12])
def test_marks_are_bounded_and_cut_the_chain_into_equal_segments(iterations):
    points = positions(iterations)
    assert len(points) <= MAX_SEGMENTS - 1
    assert (points == []) == (iterations <= WHOLE)
    step = segment_length(iterations)
    assert all(b - a == step for a, b in zip([0, *points], points)) and (not points or points[-1] < iterations)
    assert positions(iterations, start=step + 1) == [p for p in points if p > step + 1]


class MarksNode(FakeNode):
    """A fake node that keeps the marks posted with each result."""

    def complete(self, results):
        self.marks = {**getattr(self, "marks", {}), **{i: m for i, _, m in results}}
        return super().complete(results)


@pytest.mark.parametrize("vector", [False, True])
def test_a_worker_posts_the_marks_hashlib_would_with_scalar_and_vector_engines(vector):
    jobs = [(b"a", 50_000), (b"bb", 3), (b"", 70_001), (b"c", 20_000)]
    node = MarksNode("own", jobs)
    worker = Worker([node], idle_seconds=0.05, hash_rate=40_000, slice_seconds=0.25, claim_seconds=10,
                    compute_fn=compute_native, compute_many=compute_many_native if vector else None,
                    width=4 if vector else 1)
    assert worker.run() == 0
    for i, (data, n) in enumerate(jobs):
        assert (node.results[f"own/{i}"], node.marks[f"own/{i}"]) == chain_with_marks(data, n)
    # a slice (10,000 here) never goes past the next mark
    done, stops = 0, []
    while done < 50_000:
        done = next_stop(50_000, done, 10_000)
        stops.append(done)
    assert set(positions(50_000)) <= set(stops) and stops[-1] == 50_000


# -------------------------------------------------------------- the check
def test_a_correct_result_passes_and_marks_that_do_not_fit_fail():
    rng = random.Random(1)
    for data, n in [(b"x", 1), (b"x", 5000), (b"y", 40_000), (b"z", 300_000)]:
        result, marks = chain_with_marks(data, n)
        check = plan("t", "w", data, n, None, result, marks, rng)
        assert run(check)
        assert check.cost <= (n if n <= WHOLE else 2 * segment_length(n))
        assert not run(plan("t", "w", data, n, None, result, marks + [result], rng))
        assert not run(plan("t", "w", data, n, None, "00" * 64, marks, rng))


def test_a_segment_check_catches_a_fault_exactly_when_a_checked_segment_holds_it():
    data, n = b"segments", 40_000  # segments of 4096: 10 of them, the last 3136 long
    ends = [*positions(n), n]
    for faulty in range(len(ends)):
        at = ends[faulty] - 7  # a bit flips inside segment ``faulty``
        result, marks = flipped_chain(data, n, at)
        caught = set()
        for seed in range(40):
            check = plan("t", "w", data, n, None, result, marks, random.Random(seed))
            chosen = {ends.index(s.begin + s.count) for s in check.segments}
            assert chosen == {len(ends) - 1} | (chosen - {len(ends) - 1}) and len(chosen) == 2
            assert run(check) == (faulty not in chosen)
            caught |= chosen
        assert caught == set(range(len(ends)))  # over seeds, every segment gets its turn


def test_a_result_resumed_from_a_checkpoint_is_checked_from_it():
    data, n = b"resumed", 60_000
    start = 20_000  # another worker's checkpoint, not on a mark
    full, _ = chain_with_marks(data, n)
    at_start = sha512_chain(data, start)
    marks = [sha512_chain(data, p) for p in positions(n, start)]
    check = plan("t", "w", data, n, (start, at_start), full, marks, random.Random(3))
    assert run(check) and min(s.begin for s in check.segments) >= start


# ------------------------------------------------------------- sampling
def test_short_tasks_are_all_checked_long_ones_at_budget_over_n_after_probation():
    sampler = Sampler(budget=10_000, probation=2, rng=random.Random(7))
    assert [sampler.wanted("new", 10**9) for _ in range(3)] == [True, True, False]  # probation, then 1e-5
    assert all(sampler.wanted("w", n) for n in (1, 5000, 10_000))
    picked = sum(sampler.wanted("w", 100_000) for _ in range(20_000))
    assert 2000 - 4 * 42 < picked < 2000 + 4 * 42  # p = 0.1, sd = sqrt(20000 * 0.1 * 0.9) = 42
    assert not any(Sampler(0, 5).wanted("w", 1) for _ in range(10))  # VERIFY_ITERATIONS=0: off


def test_a_bit_flip_worker_is_caught_within_200_tasks_in_99_of_100_seeded_runs():
    """The real fault schedule and the real sampler and check, over tasks of 1 to 10,000 iterations:
    the simulation of the issue's figure (docs/verification.md). Chains are replaced by their
    fault status (a whole-task check catches any flip), so 100 runs take a second."""
    caught_at = []
    for seed in range(100):
        rng, fault = random.Random(seed), Fault(50, seed)
        sampler = Sampler(budget=10_000, probation=2, rng=random.Random(seed + 1000))
        for task in range(1, 10_001):
            n = rng.randint(1, 10_000)
            faulty = fault._next_is_faulty()
            if sampler.wanted("flip", n) and faulty:
                caught_at.append(task)
                break
        else:
            caught_at.append(None)
    within = sum(1 for t in caught_at if t is not None and t <= 200)
    assert within >= 99, caught_at
    assert max(t for t in caught_at if t) <= 50  # one faulty chain in every 50, and all of them checked


def test_the_faulty_engine_flips_one_chain_in_each_run_of_50_and_hostile_everything():
    fault = test_fault({"TM_TEST_FAULT": "flip:1/50", "TM_TEST_FAULT_SEED": "4"})
    compute = fault.wrap(compute_native)
    wrong = [i for i in range(200) if compute(b"%d" % i, 100) != sha512_chain(b"%d" % i, 100)]
    assert len(wrong) == 4 and [w // 50 for w in wrong] == [0, 1, 2, 3]
    many = test_fault({"TM_TEST_FAULT": "flip:1/4"}).wrap_many(compute_many_native)
    got = many([(b"%d" % i, 64) for i in range(8)])
    assert sum(g != sha512_chain(b"%d" % i, 64) for i, g in enumerate(got)) == 2
    hostile = test_fault({"TM_TEST_FAULT": "hostile"}).wrap(compute_native)
    assert all(hostile(b"h", 10) != sha512_chain(b"h", 10) for _ in range(5))
    assert test_fault({}) is None
    with pytest.raises(ValueError, match="TM_TEST_FAULT"):
        test_fault({"TM_TEST_FAULT": "flip:2/50"})


def test_recent_results_are_bounded_by_age_count_and_bytes():
    recent = RecentResults(seconds=10, max_count=3, max_bytes=100)
    for i in range(5):
        recent.add(Unchecked(float(i), "w", f"t{i}", b"x", b"", 1, 0.0))
    assert len(recent) == 3
    recent.add(Unchecked(5.0, "v", "big", b"y" * 99, b"", 1, 0.0))
    assert [u.task_id for u in recent.take("w", 5.0)] == ["t4"]  # bytes pushed the older ones out
    assert [u.task_id for u in recent.take("v", 16.0)] == []  # past 10 s
    assert len(recent) == 0


# ---------------------------------------------------------- the store
def make_node(budget=10_000, probation=0, max_pending=10**9, rerun_seconds=600.0, seed=0) -> Node:
    node = Node.build(lease_seconds=30)
    node.enable_checks(budget=budget, probation=probation, max_pending=max_pending, rerun_seconds=rerun_seconds,
                       rng=random.Random(seed))
    return node


def claim_all(node, worker, count=1000):
    return node.claim(worker, count, None)


def test_a_checked_result_is_held_then_accepted_and_says_it_was_spot_checked():
    node = make_node()
    task_id = node.tasks.submit(b"held", 5000)
    claim_all(node, "w1")
    assert node.complete("w1", [(task_id, sha512_chain(b"held", 5000))]) == 1
    wait_for(node.checker.idle, timeout=10, what="the check")
    record = node.tasks.status(task_id)
    assert record.state == "completed" and record.spot_checked is True
    counts = node.checker.counts()
    assert (counts.checks, counts.passed, counts.mismatches, counts.iterations) == (1, 1, 0, 5000)


def test_a_wrong_result_is_never_accepted_and_its_worker_is_quarantined_with_its_unchecked_results_rerun():
    node = make_node(budget=1000, seed=5)  # tasks of 1000: always checked; of 200,000: 1 in 200
    n = 200_000
    long_ids = [node.tasks.submit(b"long%d" % i, n) for i in range(3)]
    claim_all(node, "bad")
    # three long results with made-up marks, not picked for a check (seed 5): accepted unchecked
    node.complete("bad", [(i, "11" * 64) for i in long_ids], {i: ["22" * 64] * len(positions(n)) for i in long_ids})
    assert [node.tasks.status(i).spot_checked for i in long_ids] == [False] * 3
    [reused] = node.tasks.submit_many([Submission(b"long0", n, hashlib.sha512(b"long0").digest())])
    assert node.tasks.status(reused.id).result == "11" * 64  # a copy of a kept (wrong) result
    short = node.tasks.submit(b"short", 1000)
    claim_all(node, "bad")
    node.complete("bad", [(short, "33" * 64)])
    assert node.tasks.status(short).checking  # held: nobody sees the wrong result
    wait_for(lambda: "bad" in node.quarantine, timeout=10, what="the quarantine")
    # the wrong short result went back to the queue; the unchecked ones (and the copy) were taken back
    for task_id in [short, *long_ids, reused.id]:
        assert node.tasks.status(task_id).state == "queued", task_id
    assert node.tasks.results.newest_completed(100) == [] and node.tasks.results.completed_after(0, 100)[0] == []
    [caught] = node.quarantine.newest()
    assert caught.worker_id == "bad" and caught.rerun == 4 and caught.task_id == short
    # another worker computes them all again, correctly, marks included
    jobs = {i: (b"long%d" % k, n) for k, i in enumerate(long_ids)} | {short: (b"short", 1000)}
    assert {t.id for t in claim_all(node, "good")} == set(jobs)
    computed = {i: chain_with_marks(*job) for i, job in jobs.items()}
    node.complete("good", [(i, r) for i, (r, _) in computed.items()], {i: m for i, (_, m) in computed.items()})
    wait_for(node.checker.idle, timeout=30, what="the checks of the good worker")
    for task_id, (data, iterations) in [*jobs.items(), (reused.id, (b"long0", n))]:
        record = node.tasks.status(task_id)
        assert (record.state, record.result) == ("completed", sha512_chain(data, iterations)), task_id
    assert "good" not in node.quarantine and node.checker.counts().mismatches == 1


def test_a_quarantined_worker_is_refused_and_everything_is_counted():
    app = create_app({"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1"},
                     launcher=FakeLauncher())
    client, auth = app.test_client(), {"X-Cluster-Token": TOKEN}
    good = client.put("/enqueue?iterations=20", data=b"good").get_json()["id"]
    bad = client.put("/enqueue?iterations=20", data=b"bad").get_json()["id"]
    claim = {"worker_id": "w", "max_tasks": 10, "rate": 1000, "engine": "native", "lanes": 1, "cpu": "Test CPU 9000"}
    assert len(client.post("/claim", json=claim, headers=auth).get_json()["tasks"]) == 2
    results = [{"id": good, "result": sha512_chain(b"good", 20)}, {"id": bad, "result": "00" * 64}]
    assert client.post("/complete", json={"worker_id": "w", "results": results}, headers=auth).get_json() == \
        {"accepted": 2}
    node = app.extensions["nodeapp"].node
    wait_for(lambda: node.checker.idle() and "w" in node.quarantine, timeout=10, what="the checks")
    for path, body in [("/claim", claim), ("/heartbeat", {"worker_id": "w", "task_ids": []}),
                       ("/complete", {"worker_id": "w", "results": []})]:
        refused = client.post(path, json=body, headers=auth)
        assert refused.status_code == 403 and refused.get_json()["error"] == "quarantined", path
    assert client.get(f"/status/{good}").get_json()["spot_checked"] is True
    assert client.get(f"/status/{bad}").get_json()["state"] == "queued"
    checks = client.get("/stats").get_json()["checks"]
    assert {k: checks[k] for k in ("checks", "passed", "mismatches", "iterations", "quarantined")} == \
        {"checks": 2, "passed": 1, "mismatches": 1, "iterations": 40, "quarantined": 1}
    [caught] = checks["quarantine"]
    assert (caught["worker"], caught["engine"], caught["cpu"], caught["task"], caught["launcher"]) == \
        ("w", "native", "Test CPU 9000", bad, "fake")
    metrics = client.get("/metrics").get_data(as_text=True)
    for line in ['taskmanager_checks_total{node="test-node"} 2.0', 'taskmanager_check_mismatches_total{node="test-node"} 1.0',
                 'taskmanager_check_iterations_total{node="test-node"} 40.0',
                 'taskmanager_workers_quarantined_total{node="test-node"} 1.0']:
        assert line in metrics, line
    bad_marks = {"worker_id": "x", "results": [{"id": good, "result": "00" * 64, "marks": ["zz"]}]}
    assert client.post("/complete", json=bad_marks, headers=auth).status_code == 400


def test_a_full_backlog_accepts_results_unchecked_and_counts_them_skipped():
    node = make_node(max_pending=1500)
    ids = [node.tasks.submit(b"%d" % i, 1000) for i in range(3)]
    claim_all(node, "w")
    node.complete("w", [(i, sha512_chain(b"%d" % k, 1000)) for k, i in enumerate(ids)])
    wait_for(node.checker.idle, timeout=10, what="the checks")
    assert [node.tasks.status(i).spot_checked for i in ids] == [True, False, False]
    assert node.checker.counts().skipped == 2


def test_results_checked_together_complete_in_the_order_posted_each_at_a_time_of_its_own():
    """Checks queued together are settled in one step: on a wall clock that stands still, their
    tasks still complete in the order posted, at distinct times (pullCompleted's order)."""
    node = Node.build(wall=lambda: 1000.0)
    checker = Checker(node.settle, 10**9)
    node.checker = checker
    node.tasks.checks.enable(Sampler(10_000, 0, random.Random(1)), checker, 600)
    ids = [node.tasks.submit(b"t%d" % i, 10) for i in range(5)]
    claim_all(node, "w")
    assert node.complete("w", [(i, sha512_chain(b"t%d" % n, 10)) for n, i in enumerate(ids)]) == 5
    wait_for(checker.idle, timeout=10, what="the checks")
    times = [node.tasks.status(i).completed_at for i in ids]
    assert all(node.tasks.status(i).spot_checked is True for i in ids)
    assert times == sorted(times) and len(set(times)) == 5 and times[0] == 1000.0


def test_a_held_task_can_be_cancelled_and_its_check_then_changes_nothing():
    release = []
    node = Node.build()
    checker = Checker(node.settle, 10**9, run_check=lambda check: wait_for(lambda: release, timeout=10) and False)
    node.checker = checker
    node.tasks.checks.enable(Sampler(10_000, 0, random.Random(1)), checker, 600)
    task_id = node.tasks.submit(b"c", 10)
    claim_all(node, "w")
    node.complete("w", [(task_id, "00" * 64)])
    assert node.tasks.cancel(task_id).state == "cancelled"
    release.append(1)
    wait_for(checker.idle, timeout=10, what="the check")
    assert node.tasks.status(task_id).state == "cancelled" and "w" not in node.quarantine


def test_a_quarantined_worker_of_this_node_is_handed_to_the_launcher_to_stop():
    node = make_node(budget=100)
    node.launcher_kind = "ec2"
    node.workers.add(["i-0bad"])  # launched by this node (an EC2 instance id in AWS mode)
    node.claim("i-0bad", 10, None, Report(1000.0, "native", 2, "Some CPU", True))
    task_id = node.tasks.submit(b"t", 10)
    claim_all(node, "i-0bad")
    node.complete("i-0bad", [(task_id, "00" * 64)])
    wait_for(lambda: "i-0bad" in node.quarantine, timeout=10, what="the quarantine")
    with node.workers.terminating() as departed:  # what the scaler's next run terminates
        assert departed == ["i-0bad"]
    [caught] = node.quarantine.newest()
    assert (caught.launcher, caught.engine, caught.cpu, caught.lanes) == ("ec2 spot", "native", "Some CPU", 2)
    assert node.workers.workers() == []
