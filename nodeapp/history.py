"""The node's recent past for the dashboard's chart: one sample every ``HISTORY_SECONDS``, the
newest ``POINTS`` kept (an hour at the default 10 s), served by ``GET /history``.

Sample times are rounded down to a multiple of the interval, so that the samples of two nodes
line up and ``merge`` can add them into cluster totals.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass

#: Samples kept: an hour at one sample every 10 s.
POINTS = 360
#: The figures that add up over the nodes of a cluster.
SUMMED = ("queued", "running", "live", "pending", "per_minute")


@dataclass(frozen=True)
class Sample:
    """One moment of a node (``at``: wall clock, a multiple of the interval)."""

    at: float
    queued: int
    running: int
    live: int
    pending: int
    completed: int  # total so far, for the rate
    failed: int
    peer_reachable: bool | None  # None: no peer configured, or not contacted yet
    per_minute: float | None = None  # completions per minute since the previous sample


class History:
    """A bounded, thread-safe series of samples."""

    def __init__(self, interval: float, points: int = POINTS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque(maxlen=points)

    def slot(self, now: float) -> float:
        """``now`` rounded down to a multiple of the interval."""
        return math.floor(now / self.interval) * self.interval

    def add(self, sample: Sample) -> Sample:
        """Keep ``sample`` (its rate computed from the previous one); a second sample in the same
        slot replaces the first."""
        with self._lock:
            if self._samples and self._samples[-1].at >= sample.at:
                self._samples.pop()
            previous = self._samples[-1] if self._samples else None
            if previous is not None and sample.completed >= previous.completed:
                rate = (sample.completed - previous.completed) * 60.0 / (sample.at - previous.at)
                sample = Sample(**{**asdict(sample), "per_minute": round(rate, 2)})
            self._samples.append(sample)
            return sample

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def to_json(self) -> dict:
        return {"interval": self.interval, "points": [asdict(s) for s in self.samples()]}


def merge(series: Iterable[list[dict]]) -> list[dict]:
    """Cluster totals per sample time: the ``SUMMED`` figures of the nodes that have a sample
    then (a node that was down adds nothing); ``nodes`` says how many did, ``peer_down`` whether
    any node found its peer unreachable."""
    slots: dict[float, dict] = {}
    for points in series:
        for point in points:
            slot = slots.setdefault(point["at"], {"at": point["at"], **{k: 0 for k in SUMMED}, "nodes": 0,
                                                  "peer_down": False, "rated": 0})
            slot["nodes"] += 1
            slot["peer_down"] = slot["peer_down"] or point.get("peer_reachable") is False
            for key in SUMMED:
                if point.get(key) is not None:
                    slot[key] += point[key]
            slot["rated"] += point.get("per_minute") is not None
    merged = []
    for at in sorted(slots):
        slot = slots.pop(at)
        if not slot.pop("rated"):
            slot["per_minute"] = None
        merged.append(slot)
    return merged
