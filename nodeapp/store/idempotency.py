"""Idempotency keys: a key seen within the retention window maps to the task it first queued.

``IdempotencyKeys`` has no lock of its own: ``TaskStore`` uses it under the store's lock, so
checking a key and queueing its task are one step. A key is kept for ``seconds`` (on the
monotonic clock), and the keys kept take at most ``max_bytes`` (IDEMPOTENCY_KEYS_BYTES), each
counted as its length plus ``KEY_OVERHEAD``; past either bound the oldest go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from nodeapp.store.records import KeysUsage
from tmcommon.batchwire import KEY_PATTERN

__all__ = ["IdempotencyKeys", "KeyEntry", "KEY_OVERHEAD", "is_key"]

#: Bytes of memory a kept key takes beyond its characters: the key's string object, its entry (a
#: tuple of the task id string, iterations and the 64-byte digest), its expiry and its slot in
#: the ordered dict (measured with tracemalloc on CPython 3.11: tests/test_bounds.py).
KEY_OVERHEAD = 600


def is_key(text: str) -> bool:
    """1 to 255 visible ASCII characters, the form of an ``Idempotency-Key``."""
    return KEY_PATTERN.fullmatch(text) is not None


class KeyEntry(NamedTuple):
    """What a key stands for: the task it queued and the request's fingerprint."""

    task_id: str
    iterations: int
    digest: bytes  # sha512 of the body

    def matches(self, iterations: int, digest: bytes) -> bool:
        return self.iterations == iterations and self.digest == digest


class IdempotencyKeys:
    """Keys in the order they were first seen, each with its expiry."""

    def __init__(self, seconds: float, monotonic: Callable[[], float], max_bytes: int) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.bytes = 0  # what the kept keys count for (``KEY_OVERHEAD`` each, plus their length)
        self.dropped = 0  # keys dropped before their time to stay within ``max_bytes``
        self._monotonic = monotonic
        self._keys: OrderedDict[str, tuple[KeyEntry, float]] = OrderedDict()

    def get(self, key: str) -> KeyEntry | None:
        found = self._keys.get(key)
        if found is None or found[1] <= self._monotonic():
            return None
        return found[0]

    def put(self, key: str, entry: KeyEntry) -> None:
        now = self._monotonic()
        if key in self._keys:
            self._drop(key)
        self._keys[key] = (entry, now + self.seconds)
        self.bytes += len(key) + KEY_OVERHEAD
        while self._keys:
            oldest, (_, expires) = next(iter(self._keys.items()))
            if expires > now and self.bytes <= self.max_bytes:
                break
            self.dropped += expires > now
            self._drop(oldest)

    def _drop(self, key: str) -> None:
        del self._keys[key]
        self.bytes -= len(key) + KEY_OVERHEAD

    def forget(self, gone: Callable[[KeyEntry], bool]) -> None:
        """Drop the keys whose entry is ``gone`` (their task was lost with a failed journal write)."""
        for key in [key for key, (entry, _) in self._keys.items() if gone(entry)]:
            self._drop(key)

    def __len__(self) -> int:
        return len(self._keys)

    def usage(self) -> KeysUsage:
        return KeysUsage(len(self._keys), self.bytes, self.max_bytes, self.dropped)
