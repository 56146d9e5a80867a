"""Batches against a model (hypothesis, stateful): every mix of new, repeated, reused and keyed
tasks is queued whole or not at all, keys included; identical tasks never get past MAX_QUEUED;
every result a task shows is the hash chain of its own body."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from nodeapp.store.records import COMPLETED, QUEUED, KeyMismatch, QueueFull, Submission
from nodeapp.store.tasks import TaskStore
from tests.digests import sha512_chain
from tests.helpers import Clock

BODIES = [b"a", b"b", b"c", b"d"]
KEYS = [None, None, "k0", "k1", "k2"]
MAX_QUEUED = 6
#: (body index, iterations, key): few values, so that batches repeat each other and themselves.
ITEMS = st.tuples(st.integers(0, len(BODIES) - 1), st.integers(1, 2), st.sampled_from(KEYS))


class Batches(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(1_000_000.0)
        self.store = TaskStore(max_queued=MAX_QUEUED, results_retention=2, idempotency_seconds=1e6,
                               monotonic=self.clock, wall=self.clock)
        self.keys: dict[str, tuple[str, int, int]] = {}  # key -> (id, body index, iterations)
        self.tasks: dict[str, tuple[int, int]] = {}  # every id given out -> (body index, iterations)

    def snapshot(self) -> tuple:
        c = self.store.counts()
        states = {task_id: getattr(self.store.status(task_id), "state", None) for task_id in self.tasks}
        known, _ = self.store.lookup([k for k in KEYS if k], [])
        return c.queued, c.running, c.results_kept, c.enqueued, c.completed, c.reused, c.replayed, states, known

    @rule(batch=st.lists(ITEMS, min_size=1, max_size=8), reuse=st.booleans())
    def enqueue(self, batch, reuse):
        items = [Submission(BODIES[b], n, hashlib.sha512(BODIES[b]).digest(), key) for b, n, key in batch]
        # what the model says of the keys: the first use of a key in the batch fixes it for the rest
        seen = {k: (v[1], v[2]) for k, v in self.keys.items()}
        mismatch = False
        for b, n, key in batch:
            if key is not None:
                if seen.setdefault(key, (b, n)) != (b, n):
                    mismatch = True
        before = self.snapshot()
        try:
            out = self.store.submit_many(items, reuse=reuse)
        except (KeyMismatch, QueueFull) as refused:
            assert mismatch or isinstance(refused, QueueFull)
            assert self.snapshot()[:3] + self.snapshot()[4:] == before[:3] + before[4:], "a refused batch changed the store"
            assert self.snapshot()[3] == before[3]  # nothing counted as enqueued either
            return
        assert not mismatch
        assert len(out) == len(items)
        fresh = 0
        first: dict[str, str] = {}
        for (b, n, key), done in zip(batch, out):
            if key is not None:
                expected = self.keys[key][0] if key in self.keys else first.get(key)
                if expected is not None:
                    assert done.replayed and done.id == expected
                else:
                    first[key] = done.id
            if not done.replayed:
                fresh += 1
                assert done.id not in self.tasks
                self.tasks[done.id] = (b, n)
            record = self.store.status(done.id)  # None: completed at once, and past RESULTS_RETENTION already
            assert record is None or record.iterations == n
        assert self.store.counts().enqueued == before[3] + fresh
        for key, task_id in first.items():
            b, n = self.tasks[task_id]
            self.keys[key] = (task_id, b, n)
        # the keys are stored with the batch: a retry of it replays every keyed item
        known, _ = self.store.lookup(list(first), [])
        assert {k: e.task_id for k, e in known.items()} == first

    @rule()
    def work(self):
        """A worker computes everything queued, from the bodies it is handed."""
        leased = self.store.claim("w", 1000)
        self.store.complete("w", [(t.id, sha512_chain(t.data, t.iterations)) for t in leased])

    @invariant()
    def results_are_the_chain_of_each_tasks_own_body(self):
        for task_id, (b, n) in self.tasks.items():
            record = self.store.status(task_id)
            if record is not None and record.state == COMPLETED:
                assert record.result == sha512_chain(BODIES[b], n)

    @invariant()
    def identical_tasks_stay_within_max_queued(self):
        waiting = sum(1 for task_id in self.tasks if getattr(self.store.status(task_id), "state", None) == QUEUED)
        assert waiting <= MAX_QUEUED


Batches.TestCase.settings = settings(max_examples=150, stateful_step_count=12, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
TestBatches = Batches.TestCase
