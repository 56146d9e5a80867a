"""Task ids: random, of ``uuid4().hex``'s form, drawn from the OS in batches."""

from __future__ import annotations

import os
import threading


class TaskIds:
    """Random task ids of ``uuid4().hex``'s form (``records.is_task_id``), drawn from the OS 256 at
    a time: each ``os.urandom`` lets the GIL go, and under load a thread that lets it go waits to
    get it back (one call per enqueue was a twentieth of the node's time holding the GIL)."""

    BATCH = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[str] = []

    def take(self) -> str:
        with self._lock:
            if not self._ready:
                self._ready = uuid4_hexes(os.urandom(16 * self.BATCH))
            return self._ready.pop()


def uuid4_hexes(raw: bytes) -> list[str]:
    """``raw``, 16 bytes per id, as uuid4 hex strings: version and variant bits set as uuid4 sets them."""
    out = []
    for start in range(0, len(raw), 16):
        value = bytearray(raw[start:start + 16])
        value[6] = (value[6] & 0x0F) | 0x40
        value[8] = (value[8] & 0x3F) | 0x80
        out.append(value.hex())
    return out
