"""TaskQueue: priorities with aging (and its starvation bound), not_before, deadlines, the head."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from nodeapp.store.queue import PRIORITY_MAX, TaskQueue


@dataclass(eq=False)
class T:
    seq: int
    priority: int = 0
    ready_tick: float = 0.0
    deadline_tick: float = math.inf
    iterations: int = 1
    place: tuple | None = None


def drain_order(queue: TaskQueue, now: float) -> list[int]:
    out = []
    while (task := queue.pop(now)) is not None:
        out.append(task.seq)
    return out


def test_higher_priority_first_then_submission_order():
    queue = TaskQueue(aging_seconds=60)
    for seq, priority in enumerate([0, 5, 9, 5, 0, 9], start=1):
        queue.push(T(seq, priority, ready_tick=100.0), now=100.0)
    assert queue.by_priority() == {9: 2, 5: 2, 0: 2}
    assert drain_order(queue, 100.0) == [3, 6, 2, 4, 1, 5]
    assert len(queue) == 0 and queue.ready_iterations == 0 and queue.by_priority() == {}


def test_aging_a_task_waiting_long_enough_goes_before_a_new_higher_one():
    queue = TaskQueue(aging_seconds=10)
    queue.push(T(1, 0, ready_tick=0.0), now=0.0)
    queue.push(T(2, 9, ready_tick=89.0), now=89.0)  # 89 s later: rank 89 - 90 = -1 < 0
    queue.push(T(3, 9, ready_tick=91.0), now=91.0)  # 91 s later: rank 1 > 0
    assert drain_order(queue, 91.0) == [2, 1, 3]


@pytest.mark.parametrize("priority", [0, 4, 8])
def test_starvation_bound_no_task_ready_later_than_the_bound_overtakes(priority):
    """Under a flood of top-priority tasks arriving faster than they are served, a low-priority
    task is still served, and none of the tasks served before it became ready more than
    (PRIORITY_MAX - p) x aging seconds after it."""
    aging = 5.0
    bound = (PRIORITY_MAX - priority) * aging
    rng = random.Random(priority)
    queue = TaskQueue(aging_seconds=aging)
    victim = T(10_000, priority, ready_tick=100.0)
    queue.push(victim, now=100.0)
    ready_at = {victim.seq: victim.ready_tick}
    now, seq = 100.0, 0
    served_before = []
    while True:
        for _ in range(3):  # three arrivals per service: the queue only grows
            seq += 1
            task = T(seq, rng.choice([PRIORITY_MAX, PRIORITY_MAX, rng.randrange(PRIORITY_MAX + 1)]), ready_tick=now)
            ready_at[seq] = now
            queue.push(task, now=now)
        served = queue.pop(now)
        if served is victim:
            break
        served_before.append(served.seq)
        now += 0.5
        # only what became ready within the bound after it may go first: 3 arrivals per 0.5 s
        assert len(served_before) <= 3 * (bound / 0.5 + 1), "the low-priority task was never served"
    assert served_before, "the test must make other tasks overtake it"
    assert max(ready_at[s] for s in served_before) - victim.ready_tick <= bound
    # and the bound is tight enough to matter: some overtook it well after it was queued
    assert max(ready_at[s] for s in served_before) - victim.ready_tick > bound / 2


def test_not_before_waits_apart_and_ages_from_its_time():
    queue = TaskQueue(aging_seconds=10)
    later = T(1, 9, ready_tick=50.0)
    queue.push(later, now=0.0)
    queue.push(T(2, 0, ready_tick=0.0), now=0.0)
    assert (len(queue), queue.ready, queue.scheduled) == (2, 1, 1)
    assert queue.pop(now=10.0).seq == 2
    assert queue.pop(now=49.9) is None, "handed out before its not_before"
    assert queue.oldest_wait(49.9) == 0.0  # a scheduled task is not waiting work
    assert queue.pop(now=50.0) is later
    assert len(queue) == 0


def test_a_due_task_keeps_its_rank_from_its_not_before_not_from_its_enqueue():
    queue = TaskQueue(aging_seconds=10)
    queue.push(T(1, 0, ready_tick=100.0), now=0.0)  # enqueued at 0, not before 100
    queue.push(T(2, 0, ready_tick=60.0), now=60.0)  # plain task enqueued at 60
    assert drain_order(queue, 100.0) == [2, 1]


def test_head_goes_first_latest_requeued_first():
    queue = TaskQueue()
    queue.push(T(1, 9, ready_tick=0.0), now=0.0)
    old, older = T(3, 0, ready_tick=5.0), T(2, 0, ready_tick=4.0)
    queue.push_head(old)
    queue.push_head(older)
    assert drain_order(queue, 10.0) == [2, 3, 1]


def test_expired_takes_out_exactly_the_tasks_past_their_deadline():
    queue = TaskQueue()
    a, b, c = T(1, deadline_tick=10.0), T(2, deadline_tick=20.0), T(3)
    later = T(4, ready_tick=30.0, deadline_tick=15.0)
    for task in (a, b, c):
        queue.push(task, now=0.0)
    queue.push(later, now=0.0)
    assert queue.expired(9.99) == []
    assert queue.expired(15.0) == [a, later]
    assert (len(queue), queue.scheduled) == (2, 0)
    assert drain_order(queue, 15.0) == [2, 3]
    assert queue.expired(100.0) == []  # b was handed out: no longer the queue's


def test_remove_and_counts_stay_exact_and_stale_entries_are_compacted():
    queue = TaskQueue()
    tasks = [T(i, i % 10, ready_tick=float(i % 3) * 50, deadline_tick=1e9, iterations=i) for i in range(1, 2001)]
    for task in tasks:
        queue.push(task, now=40.0)
    kept = tasks[::20]
    for task in tasks:
        if task not in kept:
            queue.remove(task)
        # the heaps hold at most the live entries plus what the last 2 x live + 64 removals left
        assert all(len(heap) <= 3 * len(queue) + 65 for heap in
                   (queue._ready, queue._later, queue._deadlines, queue._ages))
    assert len(queue) == len(kept)
    assert queue.ready_iterations + queue.scheduled_iterations == sum(t.iterations for t in kept)
    assert sum(queue.by_priority().values()) == queue.ready == sum(t.ready_tick <= 40 for t in kept)
    assert sorted(drain_order(queue, 1000.0)) == sorted(t.seq for t in kept)


def test_oldest_wait_is_the_longest_waiting_ready_task_whatever_its_priority():
    queue = TaskQueue(aging_seconds=10)
    low = T(1, 0, ready_tick=0.0)
    queue.push(low, now=0.0)
    queue.push(T(2, 9, ready_tick=30.0), now=30.0)
    assert queue.oldest_wait(40.0) == 40.0
    queue.remove(low)
    assert queue.oldest_wait(40.0) == 10.0


def test_drain_takes_everything_in_serving_order():
    queue = TaskQueue()
    queue.push(T(1, 0), now=0.0)
    queue.push(T(2, 9), now=0.0)
    queue.push(T(3, 5, ready_tick=99.0), now=0.0)
    queue.push_head(T(4, 0))
    assert [t.seq for t in queue.drain()] == [4, 2, 1, 3]
    assert len(queue) == 0 and queue.pop(1000.0) is None


def test_refuses_a_priority_out_of_range_and_a_task_queued_twice():
    queue = TaskQueue()
    with pytest.raises(ValueError):
        queue.push(T(1, PRIORITY_MAX + 1), now=0.0)
    task = T(2)
    queue.push(task, now=0.0)
    with pytest.raises(ValueError):
        queue.push_head(task)
    assert len(queue) == 1
