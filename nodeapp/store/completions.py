"""Completed results numbered in the order this node completed them, for ``GET /results``.

Each completion gets the next sequence number (1, 2, ...) of the node's ``epoch``, a random id
of this run of the store; a client's cursor holds, per epoch, the last number it has seen.
``CompletionLog`` has no lock of its own: ``TaskStore`` uses it under the store's lock.
"""

from __future__ import annotations

import bisect
from typing import Generic, TypeVar

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
