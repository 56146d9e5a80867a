"""Idempotency keys: a key seen within the retention window maps to the task it first queued.

``IdempotencyKeys`` has no lock of its own: ``TaskStore`` uses it under the store's lock, so
checking a key and queueing its task are one step. A key is kept for ``seconds`` (on the
monotonic clock) and at most ``max_keys`` keys are kept, the oldest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from tmcommon.batchwire import KEY_PATTERN

__all__ = ["IdempotencyKeys", "KeyEntry", "is_key"]


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

    def __init__(self, seconds: float, monotonic: Callable[[], float], max_keys: int = 1_000_000) -> None:
        self.seconds = seconds
        self.max_keys = max_keys
        self._monotonic = monotonic
        self._keys: OrderedDict[str, tuple[KeyEntry, float]] = OrderedDict()

    def get(self, key: str) -> KeyEntry | None:
        found = self._keys.get(key)
        if found is None or found[1] <= self._monotonic():
            return None
        return found[0]

    def put(self, key: str, entry: KeyEntry) -> None:
        now = self._monotonic()
        self._keys[key] = (entry, now + self.seconds)
        self._keys.move_to_end(key)
        while self._keys:
            oldest, (_, expires) = next(iter(self._keys.items()))
            if expires > now and len(self._keys) <= self.max_keys:
                break
            del self._keys[oldest]

    def forget(self, gone: Callable[[KeyEntry], bool]) -> None:
        """Drop the keys whose entry is ``gone`` (their task was lost with a failed journal write)."""
        for key in [key for key, (entry, _) in self._keys.items() if gone(entry)]:
            del self._keys[key]

    def __len__(self) -> int:
        return len(self._keys)
