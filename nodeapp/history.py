"""The node's recent past for the dashboard's chart: one sample every ``HISTORY_SECONDS``, the
newest ``POINTS`` kept (an hour at the default 10 s), served by ``GET /history``.

Sample times are rounded down to a multiple of the interval, so that the samples of two nodes
line up and ``merge`` can add them into cluster totals.

"Completed per minute" has one definition, for the chart and the dashboard's card alike: the
completions of the last minute (``RATE_WINDOW`` seconds, or one interval if that is longer),
per node, added up over the nodes. With a DATA_DIR the samples are kept in
``DATA_DIR/history.json`` (rewritten whole after each sample), so a node that restarts keeps
its chart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

#: Samples kept: an hour at one sample every 10 s.
POINTS = 360
#: The figures that add up over the nodes of a cluster.
SUMMED = ("queued", "running", "live", "pending", "per_minute")
#: Seconds over which "completed per minute" is measured.
RATE_WINDOW = 60.0
#: The file in DATA_DIR that keeps the samples across a restart.
HISTORY_FILE = "history.json"


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
    """A bounded, thread-safe series of samples, kept in ``path`` (a file in DATA_DIR) if given."""

    def __init__(self, interval: float, points: int = POINTS, path: str | os.PathLike | None = None) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque(maxlen=points)
        self._path = Path(path) if path else None
        if self._path is not None:
            self._samples.extend(self._load())

    def slot(self, now: float) -> float:
        """``now`` rounded down to a multiple of the interval."""
        return math.floor(now / self.interval) * self.interval

    def add(self, sample: Sample) -> Sample:
        """Keep ``sample`` (its rate: completions per minute over the last ``RATE_WINDOW`` s); a
        second sample in the same slot replaces the first."""
        with self._lock:
            if self._samples and self._samples[-1].at >= sample.at:
                self._samples.pop()
            since = self._rate_base(sample)
            if since is not None:
                rate = (sample.completed - since.completed) * 60.0 / (sample.at - since.at)
                sample = Sample(**{**asdict(sample), "per_minute": round(rate, 2)})
            self._samples.append(sample)
            kept = list(self._samples)
        if self._path is not None:
            self._save(kept)
        return sample

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def to_json(self) -> dict:
        return {"interval": self.interval, "points": [asdict(s) for s in self.samples()]}

    def _rate_base(self, sample: Sample) -> Sample | None:
        """The oldest kept sample within the window before ``sample`` (the previous one if the
        interval is longer), after the last time the count went down (a restart without a
        journal); None if there is none."""
        base = None
        for earlier in reversed(self._samples):
            if earlier.completed > sample.completed or (base is not None and earlier.completed > base.completed):
                break
            if sample.at - earlier.at > max(RATE_WINDOW, self.interval) + 1e-6:
                break
            base = earlier
        return base if base is not None and base.at < sample.at else None

    def _load(self) -> list[Sample]:
        """The samples a previous run kept; none if the file is missing or damaged (logged)."""
        try:
            points = json.loads(self._path.read_text())["points"]
            names = {f.name for f in fields(Sample)}
            return [Sample(**{k: v for k, v in point.items() if k in names}) for point in points]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("history: %s not read (%s); the chart starts empty", self._path, exc)
            return []

    def _save(self, samples: list[Sample]) -> None:
        """Write the samples whole, then rename: a crash leaves the old file or the new one."""
        temporary = self._path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps({"interval": self.interval, "points": [asdict(s) for s in samples]}))
            os.replace(temporary, self._path)
        except OSError as exc:
            log.warning("history: could not keep the samples in %s: %s", self._path, exc)


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
