"""Marks: the fixed points of a task's hash chain at which a worker reports the digest.

A task of ``iterations`` longer than ``WHOLE`` is cut into segments of ``segment_length``
iterations (the last one may be shorter), at most ``MAX_SEGMENTS`` of them. The worker reports,
with the result, the digest after each segment but the last (the result ends the last one); the
node can then recompute any one segment alone: segment 0 from the body, segment j from the mark
before it. Worker and node both take the scheme from here, so they always agree on the positions.
A task of at most ``WHOLE`` iterations has no marks: it is checked whole.
"""

from __future__ import annotations

#: Tasks of at most this many iterations have no marks.
WHOLE = 16_384
#: The shortest segment (so that a mark, 128 hex characters, stands for at least this much work).
MIN_SEGMENT = 4_096
#: The most segments a task has, so that a result carries at most MAX_SEGMENTS - 1 marks.
MAX_SEGMENTS = 64


def segment_length(iterations: int) -> int:
    """Iterations per segment of a task (``iterations`` itself when it has no marks)."""
    if iterations <= WHOLE:
        return iterations
    return max(MIN_SEGMENT, -(-iterations // MAX_SEGMENTS))


def is_mark(iterations: int, done: int) -> bool:
    """Whether the chain of a task of ``iterations`` has a mark after ``done`` iterations."""
    return WHOLE < iterations and 0 < done < iterations and done % segment_length(iterations) == 0


def positions(iterations: int, start: int = 0) -> list[int]:
    """Where the marks of a task of ``iterations`` are, after ``start`` (a checkpoint the worker
    resumed from: marks before it were another worker's): the iterations done at each mark."""
    step = segment_length(iterations)
    first = (start // step + 1) * step
    return list(range(first, iterations, step))
