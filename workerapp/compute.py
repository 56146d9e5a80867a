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


def chain(data: bytes, iterations: int, start: tuple[int, str] | None = None, *,
          compute_fn: Callable[[bytes, int], str] = compute) -> str:
    """``compute(data, iterations)``, resumed from ``start = (done, digest hex)`` when given.

    ``digest`` is the chain's value after ``done`` iterations (1 <= done <= iterations). The rest
    of the chain is ``iterations - done`` more sha512 of it, which is ``compute_fn(digest,
    iterations - done)``: so every engine's task function resumes a chain without more code.
    """
    if start is None:
        return compute_fn(data, iterations)
    done, digest = start
    if not 1 <= done <= iterations:
        raise ValueError(f"a checkpoint after {done} iterations does not fit a chain of {iterations}")
    return digest if done == iterations else compute_fn(bytes.fromhex(digest), iterations - done)


def measure_hash_rate(seconds: float = 0.05, clock: Callable[[], float] = time.perf_counter,
                      compute_fn: Callable[[bytes, int], str] = compute) -> float:
    """Iterations per second ``compute_fn`` (by default the hashlib loop) does in this thread,
    measured over about ``seconds`` of ``clock`` (wall time by default; ``time.process_time``
    gives the rate per CPU second)."""
    count, start = 0, clock()
    while True:
        compute_fn(b"", 2000)
        count += 2000
        elapsed = clock() - start
        if elapsed >= seconds:
            return count / elapsed
