"""Computing chains with their marks (``tmcommon/marks.py``): slices that end at each mark.

Every engine's task function continues a chain from a digest (``compute(digest, k)`` is ``k``
more iterations after it), so a chain cut at its marks is the engine called once per slice, each
call starting from the digest the previous one ended with, no slice going past the next mark: no
engine needs to know of marks (``Worker._compute`` and ``rounds.LaneBatch`` use ``next_stop``).
"""

from __future__ import annotations

from tmcommon.marks import segment_length


def next_stop(iterations: int, done: int, step: int) -> int:
    """Where a slice of at most ``step`` iterations that starts at ``done`` ends: never past the
    next mark, so that the worker holds the digest at every mark."""
    length = segment_length(iterations)
    return min(done + step, (done // length + 1) * length, iterations)
