"""Spot-checks: which results a node recomputes, and how (design and figures: docs/verification.md).

A result comes with the digests at its task's marks (``tmcommon/marks.py``). ``Sampler`` picks
the results to check: every one of a worker's first ``probation`` results, then each result of
``n`` iterations with probability ``min(1, budget / n)``. ``plan`` turns a picked result into a
``Check``: the whole chain when it has no marks, else one segment chosen at random and the last
one, each recomputed alone from the mark before it (``run``, with the hashlib loop: a different
engine from the workers' native one). Nothing here holds a lock of the store; ``Checker``
(``nodeapp/store/checker.py``) runs the checks off the request threads.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

from tmcommon.marks import MAX_SEGMENTS, positions

#: Workers whose count of checked results a node remembers (the oldest are forgotten past it).
WORKERS_KEPT = 4096
#: The longest worker id, and other text, in an entry of the peer's quarantine list.
WORKER_ID_CHARS = 256
TEXT_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Segment:
    """``count`` iterations from ``start`` (the body, or the raw digest of the mark before) should
    end at ``expected`` (hex); ``begin`` is where in the chain the segment starts."""

    begin: int
    count: int
    start: bytes
    expected: str


@dataclass(frozen=True, slots=True)
class Check:
    """The segments to recompute for one result of ``worker_id``; none when its marks did not fit
    the chain (such a check fails)."""

    task_id: str
    worker_id: str
    result: str
    segments: tuple[Segment, ...]

    @property
    def cost(self) -> int:
        return sum(s.count for s in self.segments)


def chain(start: bytes, count: int) -> str:
    """``count`` SHA-512 iterations from ``start`` with hashlib, as hex."""
    sha512 = hashlib.sha512
    digest = sha512(start).digest()
    for _ in range(count - 1):
        digest = sha512(digest).digest()
    return digest.hex()


def plan(task_id: str, worker_id: str, data: bytes, iterations: int, start: tuple[int, str] | None,
         result: str, marks: list[str], rng: random.Random) -> Check:
    """The check of a result: the whole chain if it has one segment, else a random segment and
    the last. ``start`` is the checkpoint (done, digest) the worker resumed from, if any. Marks
    that are not one digest per mark position after ``start`` make a check that fails."""
    begin, digest = start or (0, "")
    points = positions(iterations, begin)
    if len(marks) != len(points):
        return Check(task_id, worker_id, result, ())
    ends = [*points, iterations]
    values = [*marks, result]
    starts = [data if not begin else bytes.fromhex(digest), *(bytes.fromhex(m) for m in marks)]
    begins = [begin, *points]
    last = len(ends) - 1
    chosen = [last] if last == 0 else [rng.randrange(last), last]
    return Check(task_id, worker_id, result, tuple(
        Segment(begins[i], ends[i] - begins[i], starts[i], values[i]) for i in chosen))


def run(check: Check) -> bool:
    """Whether every segment of ``check`` recomputes to what the worker posted."""
    return bool(check.segments) and all(chain(s.start, s.count) == s.expected for s in check.segments)


class Sampler:
    """Which results to check. Not thread-safe: the store calls it under its lock.

    Args:
        budget: VERIFY_ITERATIONS: a result of ``n`` iterations is checked with probability
            ``min(1, budget / n)``; 0 checks nothing.
        probation: VERIFY_PROBATION: a worker's first this many results are all checked.
        rng: the random choices (seeded in tests and the simulation).
    """

    def __init__(self, budget: int, probation: int, rng: random.Random | None = None) -> None:
        self.budget, self.probation = budget, probation
        self.rng = rng or random.Random()
        self._picked: OrderedDict[str, int] = OrderedDict()  # worker -> results picked so far

    def wanted(self, worker_id: str, iterations: int) -> bool:
        """Whether to check a result of ``iterations`` (computed by this worker) from ``worker_id``."""
        if self.budget <= 0:
            return False
        picked = self._picked.get(worker_id, 0)
        if picked < self.probation or iterations <= self.budget or self.rng.random() * iterations < self.budget:
            self._picked[worker_id] = picked + 1
            self._picked.move_to_end(worker_id)
            while len(self._picked) > WORKERS_KEPT:
                self._picked.popitem(last=False)
            return True
        return False


@dataclass(frozen=True, slots=True)
class Unchecked:
    """A result accepted without a check, kept a while so that it can be computed again."""

    tick: float
    worker_id: str
    task_id: str
    data: bytes
    digest: bytes  # sha512(data)
    iterations: int
    enqueued_at: float


class RecentResults:
    """The unchecked results of the last ``seconds``, at most ``max_count`` of them and
    ``max_bytes`` of bodies (the oldest go first). Not thread-safe: used under the store's lock."""

    def __init__(self, seconds: float, max_count: int = 200_000, max_bytes: int = 64 * 1024**2) -> None:
        self.seconds, self.max_count, self.max_bytes = seconds, max_count, max_bytes
        self._items: deque[Unchecked] = deque()
        self._bytes = 0

    def add(self, item: Unchecked) -> None:
        if self.seconds <= 0:
            return
        self._items.append(item)
        self._bytes += len(item.data)
        self.trim(item.tick)

    def trim(self, now: float) -> None:
        items = self._items
        while items and (now - items[0].tick > self.seconds or len(items) > self.max_count
                         or self._bytes > self.max_bytes):
            self._bytes -= len(items.popleft().data)

    def take(self, worker_id: str, now: float) -> list[Unchecked]:
        """Remove and return the kept results of ``worker_id``, oldest first."""
        self.trim(now)
        taken = [i for i in self._items if i.worker_id == worker_id]
        if taken:
            self._items = deque(i for i in self._items if i.worker_id != worker_id)
            self._bytes -= sum(len(i.data) for i in taken)
        return taken

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Caught:
    """A quarantined worker, as ``/stats`` and the dashboard show it."""

    worker_id: str
    at: float  # wall clock
    task_id: str
    reason: str
    engine: str | None = None
    cpu: str | None = None
    lanes: int | None = None
    launcher: str | None = None
    rerun: int = 0  # its results taken back on this node
    by: str | None = None  # caught by the peer (its URL), not by this node

    def to_json(self) -> dict:
        """As ``/stats`` lists it, and as the nodes exchange it (``POST /quarantine/sync``)."""
        return {"worker": self.worker_id, "at": self.at, "task": self.task_id, "reason": self.reason,
                "engine": self.engine, "cpu": self.cpu, "lanes": self.lanes, "launcher": self.launcher,
                "rerun": self.rerun, "by": self.by}

    @classmethod
    def from_json(cls, item: object) -> Caught | None:
        """An entry of the peer's list, or None if it is malformed."""
        if not isinstance(item, dict):
            return None
        texts = {key: item.get(key) for key in ("worker", "task", "reason", "engine", "cpu", "launcher")}
        if not (isinstance(texts["worker"], str) and 0 < len(texts["worker"]) <= WORKER_ID_CHARS
                and all(value is None or (isinstance(value, str) and len(value) <= TEXT_CHARS)
                        for value in texts.values())
                and isinstance(texts["task"], str) and isinstance(texts["reason"], str)):
            return None
        at, lanes = item.get("at"), item.get("lanes")
        if not (type(at) in (int, float) and math.isfinite(at)) or not (lanes is None or type(lanes) is int):
            return None
        return cls(texts["worker"], float(at), texts["task"], texts["reason"], texts["engine"], texts["cpu"],
                   lanes, texts["launcher"])


class Quarantine:
    """The workers caught with a wrong result: they may claim nothing more. Thread-safe.

    ``total`` counts those this node caught; those the peer caught (``Caught.by``) are kept too."""

    def __init__(self, kept: int = WORKERS_KEPT) -> None:
        self._lock = threading.Lock()
        self._caught: OrderedDict[str, Caught] = OrderedDict()
        self._kept = kept
        self.total = 0  # workers quarantined
        self.rerun = 0  # their results taken back

    def add(self, caught: Caught) -> bool:
        """Quarantine a worker; False if it was already, or if it is one of the peer's older than
        every entry of a full list (it would go at once: the two lists would pass it back and forth)."""
        with self._lock:
            if caught.worker_id in self._caught:
                return False
            if (caught.by is not None and len(self._caught) >= self._kept
                    and caught.at < next(iter(self._caught.values())).at):
                return False
            self._caught[caught.worker_id] = caught
            self.total += caught.by is None
            while len(self._caught) > self._kept:
                self._caught.popitem(last=False)
            return True

    def update(self, caught: Caught) -> None:
        with self._lock:
            old = self._caught.get(caught.worker_id)
            if old is not None:
                self._caught[caught.worker_id] = caught
                self.rerun += caught.rerun - old.rerun

    def __contains__(self, worker_id: str) -> bool:
        with self._lock:
            return worker_id in self._caught

    def newest(self, top: int = 20) -> list[Caught]:
        with self._lock:
            return list(reversed(self._caught.values()))[:top]


#: The most marks a result may carry.
MAX_MARKS = MAX_SEGMENTS - 1
