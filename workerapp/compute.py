"""The work of a task, as a pure function (no I/O)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable


def compute(data: bytes, iterations: int) -> str:
    """``sha512(data)`` then ``sha512`` of the raw digest ``iterations - 1`` more times, as hex."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    sha512 = hashlib.sha512
    digest = sha512(data).digest()
    for _ in range(iterations - 1):
        digest = sha512(digest).digest()
    return digest.hex()


def measure_hash_rate(seconds: float = 0.05, clock: Callable[[], float] = time.perf_counter) -> float:
    """Iterations per second this process does, measured over about ``seconds`` of ``clock``
    (wall time by default; ``time.process_time`` gives the rate per CPU second)."""
    sha512 = hashlib.sha512
    digest = b"\0" * 64
    count, start = 0, clock()
    while True:
        for _ in range(2000):
            digest = sha512(digest).digest()
        count += 2000
        elapsed = clock() - start
        if elapsed >= seconds:
            return count / elapsed
