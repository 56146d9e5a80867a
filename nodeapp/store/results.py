"""Completed results, in one place: how ``pullCompleted`` and ``GET /results`` list them, the
merge of two nodes' newest lists, the numbering of completions for the results cursor, and the
cursor itself. No Flask here: the API and the dashboard use these.

Completions are numbered in the order this node completed them: each gets the next sequence
number (1, 2, ...) of the node's ``epoch``, a random id of this run of the store. A client's
cursor holds, per epoch, the last number it has seen. On the wire the cursor is base64url
(unpadded) of compact JSON ``{"v": 1, "p": {epoch: number}}``; a cursor without a node's current
epoch (new client, or the node restarted without its journal) starts at that node's oldest kept
result. ``CompletionLog`` has no lock of its own: ``TaskStore`` uses it under the store's lock.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import itertools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from nodeapp.store.records import TaskRecord

def encode_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def summary(record: TaskRecord) -> dict:
    """A completed task as ``pullCompleted`` lists it."""
    return {"id": record.id, "result": record.result, "iterations": record.iterations,
            "completed_at": record.completed_at}


def _dict_key(result: dict) -> tuple[float, Any]:
    return result.get("completed_at") or 0, result.get("id")


def merge_newest(ours: Iterable, theirs: Iterable, top: int,
                 key: Callable[[Any], tuple[float, str]] = _dict_key) -> list:
    """The ``top`` newest of two lists that are each newest first, each id once.

    ``key(item)`` gives (completed_at, id); by default items are pullCompleted's dicts. On equal
    times ours come first. Reads only as far into either list as it needs.
    """
    seen: set[str] = set()
    merged: list = []
    if top < 1:
        return merged
    for item in heapq.merge(ours, theirs, key=lambda r: key(r)[0], reverse=True):
        task_id = key(item)[1]
        if task_id in seen:
            continue
        seen.add(task_id)
        merged.append(item)
        if len(merged) == top:
            break
    return merged


class EncodedSummaries:
    """``summary()`` of completed records as compact JSON, each encoded once (a completed record
    never changes) and kept for the ``size`` most recently encoded. Keyed by task id, whose hash
    Python caches: hashing the record itself costs more than encoding it again."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[TaskRecord, bytes]] = {}  # oldest first

    def encode(self, records: Iterable[TaskRecord]) -> list[bytes]:
        out = []
        with self._lock:
            cache = self._cache
            for record in records:
                hit = cache.get(record.id)
                if hit is None or hit[0] is not record:
                    hit = cache[record.id] = (record, encode_json(summary(record)))
                out.append(hit[1])
            while len(cache) > self._size:
                del cache[next(iter(cache))]
        return out


# ------------------------------------------------------------ completions by number
T = TypeVar("T")


class CompletionLog(Generic[T]):
    """The newest completions in order, each with its sequence number; trimmed from the oldest."""

    def __init__(self) -> None:
        self._seqs: list[int] = []
        self._items: list[T] = []
        self._start = 0  # entries before it are trimmed (compacted away from time to time)
        self.last_seq = 0

    def append(self, item: T) -> int:
        self.last_seq += 1
        self._seqs.append(self.last_seq)
        self._items.append(item)
        return self.last_seq

    def keep_newest(self, count: int) -> None:
        self._start = max(self._start, len(self._seqs) - count)
        if self._start > 1024 and self._start * 2 > len(self._seqs):
            del self._seqs[:self._start], self._items[:self._start]
            self._start = 0

    def discard(self, drop) -> None:
        """Remove the kept items for which ``drop(item)`` is true (results taken back); their
        numbers are not given again."""
        kept = [(s, i) for s, i in zip(self._seqs[self._start:], self._items[self._start:]) if not drop(i)]
        self._seqs, self._items, self._start = [s for s, _ in kept], [i for _, i in kept], 0

    def after(self, seq: int, limit: int) -> tuple[list[tuple[int, T]], int]:
        """Up to ``limit`` (number, item) completed after number ``seq``, oldest first, and how
        many completions after ``seq`` were trimmed before they could be read."""
        first = self._seqs[self._start] if self._start < len(self._seqs) else self.last_seq + 1
        missed = max(0, min(first, self.last_seq + 1) - seq - 1)
        at = bisect.bisect_right(self._seqs, seq, lo=self._start)
        end = min(at + limit, len(self._seqs))
        return list(zip(self._seqs[at:end], self._items[at:end])), missed

    def __len__(self) -> int:
        return len(self._seqs) - self._start


# ------------------------------------------------------------ the results cursor
CURSOR_VERSION = 1
CURSOR_MAX_LENGTH = 2048
CURSOR_MAX_NODES = 16
EPOCH = re.compile(r"[0-9A-Za-z_-]{1,64}")


def encode_cursor(positions: dict[str, int]) -> str:
    raw = json.dumps({"v": CURSOR_VERSION, "p": dict(sorted(positions.items()))}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str) -> dict[str, int]:
    """The positions of a cursor; the empty string is the start. ValueError if it is not a cursor."""
    if not text:
        return {}
    if len(text) > CURSOR_MAX_LENGTH:
        raise ValueError(f"the cursor is longer than {CURSOR_MAX_LENGTH} characters")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("the cursor is not one this API gave out (pass the 'next' of an earlier answer)") from None
    positions = data.get("p") if isinstance(data, dict) and data.get("v") == CURSOR_VERSION else None
    if not isinstance(positions, dict) or len(positions) > CURSOR_MAX_NODES or not all(
            isinstance(k, str) and EPOCH.fullmatch(k) and type(v) is int and v >= 0 for k, v in positions.items()):
        raise ValueError("the cursor is not one this API gave out (pass the 'next' of an earlier answer)")
    return positions


# ------------------------------------------------------------ the kept results
class KeptResults:
    """The completed tasks and, apart, the failed and cancelled ones, each up to ``retention``
    (and ``ttl`` seconds, when set), oldest dropped first; the completions numbered for the
    cursor; and the bodies of failed and cancelled tasks, up to ``bodies_bytes`` in all, for
    ``retry``.

    It shares the store's ``lock``: its readers (``newest_*``, ``completed_after``) take it; the
    store calls every other method with the lock held. ``on_drop(record)`` is called, lock held,
    for each record that leaves (past retention or age, or taken back): the store journals it
    and forgets it for reuse.
    """

    def __init__(self, lock: threading.Lock, retention: int, bodies_bytes: int,
                 on_drop: Callable[[TaskRecord], None]) -> None:
        self._lock = lock
        self.retention = retention
        self.bodies_bytes = bodies_bytes
        self._on_drop = on_drop
        self._completed: OrderedDict[str, TaskRecord] = OrderedDict()  # oldest first
        self._failed: OrderedDict[str, TaskRecord] = OrderedDict()
        self.log: CompletionLog[TaskRecord] = CompletionLog()
        self._bodies: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()  # failed/cancelled: data, digest
        self._bodies_size = 0

    # --------------------------------------------------- readers (take the lock)
    def newest_completed(self, top: int) -> list[TaskRecord]:
        """The ``top`` newest completed tasks, newest first. O(top)."""
        with self._lock:
            return list(itertools.islice(reversed(self._completed.values()), top))

    def newest_failed(self, top: int) -> list[TaskRecord]:
        """The ``top`` newest failed or cancelled tasks, newest first (the dashboard's list). O(top)."""
        with self._lock:
            return list(itertools.islice(reversed(self._failed.values()), top))

    def completed_after(self, seq: int, limit: int) -> tuple[list[tuple[int, TaskRecord]], int]:
        """Up to ``limit`` (number, record) completed after number ``seq``, oldest first, and how
        many completions after ``seq`` were already dropped (retention)."""
        with self._lock:
            return self.log.after(seq, limit)

    # --------------------------------------------------- the store's, lock held
    def completed(self, task_id: str) -> TaskRecord | None:
        return self._completed.get(task_id)

    def failed(self, task_id: str) -> TaskRecord | None:
        return self._failed.get(task_id)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._completed.get(task_id) or self._failed.get(task_id)

    def completed_records(self) -> Iterable[TaskRecord]:
        """Every kept completed record, oldest first (a view: do not change the results meanwhile)."""
        return self._completed.values()

    def completed_count(self) -> int:
        return len(self._completed)

    def add_completed(self, record: TaskRecord) -> None:
        """Keep a completed record, numbered in the completion log."""
        self._keep(self._completed, record)
        self.log.append(record)
        self.log.keep_newest(len(self._completed))

    def add_failed(self, record: TaskRecord, body: tuple[bytes, bytes] | None = None) -> None:
        """Keep a failed or cancelled record, and its ``(data, digest)`` for ``retry`` if given."""
        self._keep(self._failed, record)
        if body is not None:
            self._bodies[record.id] = body
            self._bodies_size += len(body[0])
            while self._bodies_size > self.bodies_bytes:
                self._drop_body(next(iter(self._bodies)))

    def body(self, task_id: str) -> tuple[bytes, bytes] | None:
        """The ``(data, digest)`` kept for retrying a failed or cancelled task."""
        return self._bodies.get(task_id)

    def forget_failed(self, task_id: str) -> TaskRecord:
        """Drop a failed record and its body (the task is queued again)."""
        self._drop_body(task_id)
        return self._failed.pop(task_id)

    def take_back(self, task_id: str) -> TaskRecord:
        """A kept completed result taken back (its task is computed again)."""
        record = self._completed.pop(task_id)
        self._on_drop(record)
        return record

    def drop_older_than(self, limit: float) -> int:
        """Drop the completed and failed records completed at or before wall time ``limit``
        (RESULTS_TTL_SECONDS); returns how many."""
        dropped = 0
        for kept in (self._completed, self._failed):
            while kept:
                record = next(iter(kept.values()))
                if (record.completed_at or 0.0) > limit:
                    break
                del kept[record.id]
                self._on_drop(record)
                self._drop_body(record.id)
                dropped += 1
        self.log.keep_newest(len(self._completed))
        return dropped

    def _keep(self, kept: OrderedDict[str, TaskRecord], record: TaskRecord) -> None:
        kept[record.id] = record
        while len(kept) > self.retention:
            _, dropped = kept.popitem(last=False)
            self._on_drop(dropped)
            self._drop_body(dropped.id)

    def _drop_body(self, task_id: str) -> None:
        kept = self._bodies.pop(task_id, None)
        if kept is not None:
            self._bodies_size -= len(kept[0])
