"""Node: the operations that span the TaskStore and the WorkerPool."""

from __future__ import annotations

import threading

import pytest

from nodeapp.fleet.loans import Grant
from nodeapp.node import Node
from nodeapp.store.results import summary
from nodeapp.store.records import FAILED, QUEUED, RUNNING
from nodeapp.fleet.pool import LIVE
from tests.helpers import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def make_node(clock):
    def make(**kwargs) -> Node:
        kwargs.setdefault("lease_seconds", 10.0)
        return Node.build(monotonic=clock, wall=clock, **kwargs)

    return make


def submit_all(node: Node, count: int) -> list[str]:
    return [node.tasks.submit(f"body-{i}".encode(), 1) for i in range(count)]


def claim_ids(node: Node, worker: str, count: int) -> list[str]:
    return [t.id for t in node.claim(worker, count)]


def states(node: Node, ids: list[str]) -> list[str]:
    return [node.tasks.status(i).state for i in ids]


def test_calls_from_a_worker_make_it_live(make_node):
    node = make_node()
    node.workers.add(["a", "b", "c"])
    node.claim("a")  # even a claim that finds nothing
    node.complete("b", [])
    node.heartbeat("c", [])
    assert {w.state for w in node.workers.workers()} == {LIVE}


def test_worker_down_requeues_at_the_head_and_costs_an_attempt(make_node):
    node = make_node(max_attempts=2)
    node.workers.add(["w1"])
    ids = submit_all(node, 4)
    assert claim_ids(node, "w1", 2) == ids[:2]
    gone = node.worker_down("w1")
    assert (gone.removed, gone.requeued, gone.failed, gone.borrowed) == (True, 2, 0, False)
    assert node.workers.counts().down_total == 1
    assert claim_ids(node, "w2", 4) == ids  # back at the head, in order
    # the second loss is the last attempt (MAX_ATTEMPTS=2)
    gone = node.worker_down("w2")
    assert (gone.removed, gone.requeued, gone.failed) == (False, 2, 2)
    assert states(node, ids) == [FAILED, FAILED, QUEUED, QUEUED]
    assert node.tasks.counts().failed == 2


def test_worker_down_returned_tasks_cost_no_attempt(make_node):
    node = make_node(max_attempts=1)
    ids = submit_all(node, 3)
    claim_ids(node, "w1", 3)
    gone = node.worker_down("w1", returned=[ids[0], ids[2], "not-its-task"])
    assert (gone.requeued, gone.failed) == (2, 1)  # with MAX_ATTEMPTS=1 any lost lease fails
    assert states(node, ids) == [QUEUED, FAILED, QUEUED]
    assert claim_ids(node, "w2", 3) == [ids[0], ids[2]]


def test_worker_down_is_idempotent_and_leaves_other_workers_alone(make_node):
    node = make_node()
    node.workers.add(["w1", "w2"])
    _, b = submit_all(node, 2)
    claim_ids(node, "w1", 1)
    claim_ids(node, "w2", 1)
    assert node.worker_down("w1").removed is True
    again = node.worker_down("w1")
    assert (again.removed, again.requeued, again.failed) == (False, 0, 0)
    assert node.tasks.status(b).state == RUNNING
    assert [w.id for w in node.workers.workers()] == ["w2"]
    with node.workers.terminating() as departed:
        assert departed == ["w1"]
    with node.workers.terminating() as departed:
        assert departed == []


def test_worker_down_of_a_borrowed_worker_owes_the_slot_back(make_node, clock):
    node = make_node(max_workers=1)
    node.workers.add(["own"])
    with node.workers.reserve_loan(Grant("1a", 60.0), clock.now) as slot:
        slot.bind(["lent-to-us"])
    assert node.worker_down("lent-to-us").borrowed is True
    assert node.workers.counts().owed == 1
    assert node.worker_down("lent-to-us").borrowed is False  # twice: owed once
    assert node.worker_down("own").borrowed is False
    assert node.workers.counts().owed == 1


def test_scaling_figures_combine_both_sides(make_node, clock):
    node = make_node(max_workers=4)
    node.workers.add(["a", "b"])
    ids = [node.tasks.submit(b"x", n) for n in (5, 7, 11)]
    node.claim("a", 1)
    clock.now += 2
    figures = node.scaling_figures()
    assert (figures.queued, figures.queued_iterations, figures.running) == (2, 18, 1)
    assert (figures.live, figures.pending, figures.max_workers) == (1, 1, 4)
    assert figures.oldest_wait == 2.0 and node.tasks.status(ids[1]).state == QUEUED
    stats = node.stats()
    assert (stats.tasks.enqueued, stats.workers.launched_total) == (3, 2)


def test_many_threads_lose_and_duplicate_nothing(make_node):
    """Producers enqueue while workers claim, complete, hand back and heartbeat, all at once."""
    node = make_node(max_attempts=1000, results_retention=100_000)
    producers, per_producer, consumers = 4, 500, 6
    total = producers * per_producer
    submitted: list[list[str]] = [[] for _ in range(producers)]
    completions: list[list[str]] = [[] for _ in range(consumers)]
    start = threading.Barrier(producers + consumers)
    producing = threading.Event()
    errors: list[BaseException] = []

    def produce(index: int) -> None:
        try:
            start.wait()
            for i in range(per_producer):
                submitted[index].append(node.tasks.submit(f"{index}-{i}".encode(), 1))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def consume(index: int) -> None:
        worker = f"w{index}"
        try:
            start.wait()
            rounds = 0
            while True:
                rounds += 1
                tasks = node.claim(worker, 1 + rounds % 4)
                if not tasks:
                    if not producing.is_set() and node.tasks.counts().queued == 0:
                        return
                    continue
                node.heartbeat(worker, [t.id for t in tasks])
                if rounds % 7 == 0:  # hand some back unstarted
                    node.worker_down(worker, returned=[t.id for t in tasks])
                    continue
                accepted = node.complete(worker, [(t.id, t.data.decode()) for t in tasks])
                assert accepted == len(tasks)
                completions[index].extend(t.id for t in tasks)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    producing.set()
    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    threads += [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads[:producers]:
        thread.join(timeout=60)
    producing.clear()
    for thread in threads[producers:]:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)

    all_submitted = [task_id for ids in submitted for task_id in ids]
    all_completed = [task_id for ids in completions for task_id in ids]
    assert len(set(all_submitted)) == total
    assert len(all_completed) == total and set(all_completed) == set(all_submitted)
    counts = node.tasks.counts()
    assert (counts.queued, counts.running, counts.completed, counts.failed) == (0, 0, total, 0)
    assert counts.queued_iterations == 0
    results = [summary(r) for r in node.tasks.results.newest_completed(total + 10)]
    assert len(results) == total and {r["id"] for r in results} == set(all_submitted)
    for ids in submitted:  # each result is the body of its own task
        for i, task_id in enumerate(ids[:5]):
            assert node.tasks.status(task_id).result.endswith(f"-{i}")
