"""Checkpoints on the worker side, in-process against fake nodes: resume, slices, evacuation."""

from __future__ import annotations

import threading

import pytest

from tests.digests import sha512_chain as reference
from tests.helpers import wait_for
from tests.test_worker_loop import FakeNode
from tmcommon.marks import segment_length
from workerapp.client import ClaimedTask
from workerapp.compute import chain, compute
from workerapp.worker import Worker


@pytest.mark.parametrize("iterations,done", [(1, 1), (2, 1), (1000, 1), (1000, 999), (1000, 1000), (5000, 1234)])
def test_a_chain_resumed_from_any_point_is_the_uninterrupted_chain(iterations, done):
    data = b"resume me"
    start = (done, compute(data, done))
    assert chain(data, iterations, start) == reference(data, iterations) == chain(data, iterations)


@pytest.mark.parametrize("done", [0, -1, 11])
def test_a_checkpoint_outside_the_chain_is_refused(done):
    with pytest.raises(ValueError):
        chain(b"x", 10, (done, "00" * 64))


class Counting:
    """The hashlib engine, counting the iterations it is asked for; ``hold_at`` parks the
    worker inside its n-th call until ``go`` is set."""

    def __init__(self, hold_at: int | None = None) -> None:
        self.iterations = 0
        self.calls = 0
        self.hold_at = hold_at
        self.reached, self.go = threading.Event(), threading.Event()

    def __call__(self, data: bytes, n: int) -> str:
        self.calls += 1
        self.iterations += n
        if self.calls == self.hold_at:
            self.reached.set()
            self.go.wait(30)
        return compute(data, n)


def test_a_claimed_checkpoint_is_resumed_and_only_the_rest_is_computed():
    data, iterations, done = b"half done", 40_000, 25_000
    node = FakeNode("own")
    node.queue.append(ClaimedTask("own/long", iterations, data, (done, compute(data, done))))
    engine = Counting()
    worker = Worker([node], idle_seconds=0.05, hash_rate=10_000, slice_seconds=0.5, compute_fn=engine)
    assert worker.run() == 0
    assert node.results == {"own/long": reference(data, iterations)}
    assert engine.iterations == worker.iterations_computed == iterations - done


class WaitingForHeartbeats:
    """The engine, whose 2nd and 3rd calls wait until the node has seen 1 and 2 different
    checkpoints: a chain that would end before two heartbeats (the C engine does 600,000
    iterations in ~30 ms) still sends two, whatever the machine's speed."""

    def __init__(self, node, task_id: str) -> None:
        self.node, self.task_id, self.calls = node, task_id, 0

    def __call__(self, data: bytes, n: int) -> str:
        self.calls += 1
        if self.calls in (2, 3):
            wait_for(lambda: len({c[self.task_id][0] for c in list(self.node.checkpoints)}) >= self.calls - 1, 20,
                     what=f"a heartbeat with checkpoint {self.calls - 1}")
        return compute(data, n)


def test_heartbeats_carry_correct_growing_checkpoints():
    data, iterations = b"long", 600_000
    node = FakeNode("own", [(data, iterations)], lease=0.3)  # a heartbeat at each 0.2 s tick
    worker = Worker([node], idle_seconds=0.05, hash_rate=1_000_000, slice_seconds=0.02,
                    compute_fn=WaitingForHeartbeats(node, "own/0"))
    assert worker.run() == 0
    assert node.results == {"own/0": reference(data, iterations)}
    sent = [c["own/0"] for c in node.checkpoints]
    assert sent, "no heartbeat carried a checkpoint"
    # Growing: never back. A heartbeat due before the next slice ended (a machine short of CPU)
    # sends the same checkpoint again.
    assert [done for done, _ in sent] == sorted(done for done, _ in sent) and len({d for d, _ in sent}) > 1
    previous = None
    for done, digest in sent:  # each checked from the one before: one pass over the chain
        assert 0 < done < iterations
        assert digest == (previous[1] if previous and previous[0] == done else chain(data, done, previous))
        previous = (done, digest)


def test_evacuate_hands_back_every_task_at_once_with_the_checkpoint():
    data = b"interrupted"
    node = FakeNode("own", [(data, 50_000), (b"next", 10), (b"last", 10)])
    engine = Counting(hold_at=3)  # parked inside the third slice of the first task
    worker = Worker([node], idle_seconds=30, hash_rate=10_000, claim_seconds=10, slice_seconds=1.0,
                    compute_fn=engine)  # claims all three at once
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=worker.run()))
    thread.start()
    try:
        wait_for(engine.reached.is_set, timeout=20, what="the worker inside its third slice")
        worker.evacuate({"action": "terminate"})
    finally:
        engine.go.set()
    thread.join(timeout=20)
    assert not thread.is_alive() and result["code"] == 0
    assert node.results == {}
    assert node.downs[0] == ["own/0", "own/1", "own/2"]  # everything held, in one call
    (handed,) = node.checkpoints
    done = 3 * segment_length(50_000)  # three slices, each ending at the next mark (closer than 10,000)
    assert handed == {"own/0": (done, compute(data, done))}
    assert worker.iterations_computed == done
