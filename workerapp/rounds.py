"""The chains a worker thread holds when its engine runs several at once (vector lanes), in rounds.

Each round advances the started chains by up to ``step`` iterations each (about a slice of
time), and starts waiting ones while the round's work stays within ``width`` x ``step``: one
call of the engine's ``compute_many`` computes the whole round, longest jobs first, its kernel
giving a freed lane to the next job of the round. Chains of different lengths share the lanes this way: a short
one ends inside a round, a long one goes on in the next from the digest it reached, which is
its checkpoint. A chain's slice never goes past its next mark (``tmcommon/marks.py``), and the
digest at each mark is kept for the result. A pure planner: the worker (``workerapp/worker.py``)
does the calls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tmcommon.marks import is_mark
from workerapp.client import Checkpoint, ClaimedTask
from workerapp.marks import next_stop


@dataclass
class Chain:
    """A task's chain and where it stands: ``done`` iterations, ``digest`` (hex) after them, and
    the digests at the marks it passed."""

    task: ClaimedTask
    done: int = 0
    digest: str = ""
    marks: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, task: ClaimedTask) -> Chain:
        done, digest = task.checkpoint or (0, "")
        return cls(task, done, digest)

    @property
    def left(self) -> int:
        return self.task.iterations - self.done

    def slice(self, step: int) -> int:
        """Iterations of its next slice: at most ``step``, never past its next mark."""
        return next_stop(self.task.iterations, self.done, step) - self.done

    def job(self, n: int) -> tuple[bytes, int]:
        """The ``(data, iterations)`` that ``compute`` turns into this chain's digest ``n`` further."""
        return (self.task.data if self.done == 0 else bytes.fromhex(self.digest)), n


class LaneBatch:
    """``width`` lanes, ``step`` iterations per chain and round; running chains go first."""

    def __init__(self, width: int, step: int) -> None:
        if width < 1 or step < 1:
            raise ValueError("width and step must be >= 1")
        self.width, self.step = width, step
        self.running: list[Chain] = []
        self.waiting: deque[Chain] = deque()

    def __bool__(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, tasks: list[ClaimedTask]) -> list[Chain]:
        """Queue the chains of ``tasks``; returns those a checkpoint already ended (not queued)."""
        chains = [Chain.of(task) for task in tasks]
        self.waiting.extend(c for c in chains if c.left > 0)
        return [c for c in chains if c.left == 0]

    def ids(self) -> list[str]:
        return [c.task.id for c in self.running] + [c.task.id for c in self.waiting]

    def free_lanes(self) -> int:
        """Lanes no chain holds or waits for."""
        return max(0, self.width - len(self.running) - len(self.waiting))

    def plan(self, start: bool = True) -> list[tuple[Chain, int]]:
        """The next round: (chain, iterations) pairs; waiting chains start only when ``start``
        (a stopping worker finishes what it started). Empty when nothing is left to run."""
        budget = self.width * self.step
        planned = [(chain, chain.slice(self.step)) for chain in self.running]
        total = sum(n for _, n in planned)
        while start and self.waiting:
            n = self.waiting[0].slice(self.step)
            if planned and total + n > budget:
                break
            chain = self.waiting.popleft()
            self.running.append(chain)
            planned.append((chain, n))
            total += n
        # longest first: the kernel gives each freed lane to the next job, so the short ones fill
        # the lanes at the end of the round instead of a long one running there alone
        return sorted(planned, key=lambda job: -job[1])

    def record(self, planned: list[tuple[Chain, int]], digests: list[str]) -> list[Chain]:
        """Advance each planned chain to its new digest; returns those that ended (no longer held)."""
        ended = []
        for (chain, n), digest in zip(planned, digests, strict=True):
            chain.done, chain.digest = chain.done + n, digest
            if is_mark(chain.task.iterations, chain.done):
                chain.marks.append(digest)
            if chain.left == 0:
                ended.append(chain)
        self.running = [c for c in self.running if c.left > 0]
        return ended

    def drop(self, task_ids: set[str]) -> list[Chain]:
        """Remove the chains of ``task_ids`` (cancelled); returns them."""
        dropped = [c for c in [*self.running, *self.waiting] if c.task.id in task_ids]
        self.running = [c for c in self.running if c.task.id not in task_ids]
        self.waiting = deque(c for c in self.waiting if c.task.id not in task_ids)
        return dropped

    def checkpoints(self) -> dict[str, Checkpoint]:
        """The checkpoint of every started chain: where it would resume."""
        return {c.task.id: (c.done, c.digest) for c in self.running if c.done}
