"""Boots that fail hold launches back, doubling: a broken worker image must not be relaunched at
full speed for as long as tasks wait.

A *boot failure* is a launched worker that never made its first claim: terminated at
BOOT_TIMEOUT, or gone (its machine powered off) while still pending. Each scaler run that finds
one or more, with no first claim since the last such run, doubles the hold on launches: FIRST,
2 x FIRST, ... up to CEILING. A worker's first claim ends it. (RunInstances refused by IAM backs
off the same way in the EC2 launcher.)
"""

from __future__ import annotations

from collections.abc import Callable

#: Seconds launches are held after the first run with boot failures, and the most they are held.
FIRST, CEILING = 30.0, 960.0


class BootBackoff:
    """The hold on launches after consecutive boot failures. Used by the scaler's thread only."""

    def __init__(self, monotonic: Callable[[], float], first: float = FIRST, ceiling: float = CEILING) -> None:
        self._monotonic = monotonic
        self.first, self.ceiling = first, ceiling
        self.failures = 0  # workers that failed to boot since the last first claim
        self.runs = 0  # scaler runs that found some, since the last first claim
        self.last_failure = ""
        self._until = 0.0

    def failed(self, workers: list[str], why: str) -> float:
        """``workers`` failed to boot in this run; returns the seconds launches are now held."""
        if not workers:
            return self.held_for()
        self.failures += len(workers)
        self.runs += 1
        self.last_failure = f"{', '.join(workers)}: {why}"
        hold = min(self.ceiling, self.first * 2 ** (self.runs - 1))
        self._until = self._monotonic() + hold
        return hold

    def claimed(self) -> bool:
        """A worker made its first claim: boots work again. Returns whether a hold ended."""
        ended = self.runs > 0
        self.failures = self.runs = 0
        self.last_failure = ""
        self._until = 0.0
        return ended

    def held_for(self) -> float:
        return max(0.0, self._until - self._monotonic())

    def status(self) -> dict:
        """For ``/stats`` (``scaler.boot_backoff``) and the dashboard."""
        return {"failures_in_a_row": self.failures, "held_for": round(self.held_for(), 1),
                "last_failure": self.last_failure or None}
