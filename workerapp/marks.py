"""Computing chains with their marks (``tmcommon/marks.py``): one engine call per segment.

Every engine's task function continues a chain from a digest (``compute(digest, k)`` is ``k``
more iterations after it), so a chain cut at its marks is the engine called once per segment,
each call starting from the digest the previous one ended with: no engine needs to know of marks.
"""

from __future__ import annotations

from collections.abc import Callable

from tmcommon.marks import positions

ComputeMany = Callable[[list[tuple[bytes, int]]], list[str]]


def next_stop(iterations: int, done: int, step: int) -> int:
    """Where a slice of at most ``step`` iterations that starts at ``done`` ends: never past the
    next mark, so that the worker holds the digest at every mark."""
    marks = positions(iterations, done)
    return min(done + step, marks[0] if marks else iterations)


def many_with_marks(compute_many: ComputeMany, jobs: list[tuple[bytes, int]]) -> list[tuple[str, list[str]]]:
    """``(digest, marks)`` of each ``(data, iterations)``, all chains run together segment by
    segment through ``compute_many`` (so SIMD lanes still take several chains at once)."""
    ends = [positions(n) + [n] for _, n in jobs]
    current = [data for data, _ in jobs]
    done = [0] * len(jobs)
    marks: list[list[str]] = [[] for _ in jobs]
    digests = [""] * len(jobs)
    while True:
        active = [i for i, (_, n) in enumerate(jobs) if done[i] < n]
        if not active:
            return [(digest, found) for digest, found in zip(digests, marks)]
        stops = [ends[i][len(marks[i])] for i in active]
        out = compute_many([(current[i], stop - done[i]) for i, stop in zip(active, stops)])
        for i, stop, digest in zip(active, stops, out):
            done[i], digests[i], current[i] = stop, digest, bytes.fromhex(digest)
            if stop < jobs[i][1]:
                marks[i].append(digest)
