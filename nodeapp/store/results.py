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
import json
import re
import threading
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
