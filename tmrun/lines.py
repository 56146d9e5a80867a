"""What ``run_program.py --local`` prints when it draws no live view (its output is a pipe or a
file): one line per event, so that a log of the run says what happened.

An event is a new scaling decision, a node that became unreachable or answers again, and the
cluster's figures (queued, running, done, failed, workers) when they changed, at most once every
``FIGURES_EVERY`` seconds (the newest figures are printed once things are still).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tmclient.client import capacity
from tmclient.render import decision_line, newest_decisions, when

#: Shortest time between two lines of figures.
FIGURES_EVERY = 5.0


def figures_line(stats: dict) -> str:
    """The cluster's totals in one line."""
    t, w = stats["totals"], stats["totals"]["workers"]
    return (f"queued {t['queued']}, running {t['running']}, done {t['completed']}, failed {t['failed']}, "
            f"workers {w['live']}+{w['pending']}/{capacity(w)}")


class EventLines:
    """Call ``update(stats)`` with each new ``Client.stats()`` (or ``None`` when no node answered)."""

    def __init__(self, emit: Callable[[str], None], *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._monotonic, self._wall = monotonic, wall
        self._seen: set[tuple] = set()  # decisions already printed
        self._reachable: dict[str, bool] = {}
        self._figures = ""  # the last figures printed
        self._figures_at = float("-inf")

    def update(self, stats: dict | None) -> None:
        now = self._monotonic()
        if stats is None:
            self._reach({url: (False, "") for url in self._reachable})
            return
        self._reach({n["url"]: (bool(n.get("reachable")), n.get("error", "")) for n in stats["nodes"]})
        for decision in reversed(newest_decisions(stats["nodes"], 20)):  # oldest first
            key = (decision["node"], decision.get("at"), decision.get("reason"))
            if key not in self._seen:
                self._seen.add(key)
                self._emit(decision_line(decision))
        figures = figures_line(stats)
        if figures != self._figures and now - self._figures_at >= FIGURES_EVERY:
            self._figures, self._figures_at = figures, now
            self._emit(f"{when(self._wall())} {figures}")

    def _reach(self, nodes: dict[str, tuple[bool, str]]) -> None:
        for url, (reachable, error) in nodes.items():
            if self._reachable.get(url, True) != reachable:
                self._emit(f"{when(self._wall())} {url} " + ("answers again" if reachable else
                                                           f"unreachable{': ' + error if error else ''}"))
            self._reachable[url] = reachable
