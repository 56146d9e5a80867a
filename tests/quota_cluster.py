"""Two real nodes with settings of their own, and a watch on their quota over HTTP.

Two ``/stats`` reads are never at one moment, so a check reads A, then B, then A again and counts
A's smaller figure: a slot that moved from A to B between the reads is not counted twice, and a
slot used on both nodes at once still is, unless it appears and goes within one bracket.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import requests

from provisioning.local_cluster import LocalCluster


class SplitCluster(LocalCluster):
    """A LocalCluster whose nodes also get settings of their own (``per_node[i]``), which win
    over the ones it sets itself (such as PEER_URL)."""

    def __init__(self, per_node: Sequence[Mapping[str, str]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_node = [dict(env) for env in per_node]

    def node_env(self, index: int) -> dict[str, str]:
        return {**super().node_env(index), **self.per_node[index]}


def stats(url: str) -> dict:
    response = requests.get(f"{url}/stats", timeout=5)
    response.raise_for_status()
    return response.json()


def taken(s: dict) -> int:
    w = s["workers"]
    return w["live"] + w["pending"] + w["reserved"]


class QuotaWatch:
    """A thread that checks, again and again until ``stop``, that the live + pending + reserved
    workers of both nodes stay within the sum of their own maxima. A round where a node does not
    answer (stopped, restarting) is skipped."""

    def __init__(self, urls: Sequence[str], base_max: Sequence[int]) -> None:
        self.urls, self.limit = list(urls), sum(base_max)
        self.checks = 0
        self.most = 0  # the largest sum seen
        self.violations: list[tuple[int, int, int]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> QuotaWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        first, second = self.urls
        while not self._stop.is_set():
            for one, other in ((first, second), (second, first)):
                try:
                    before, middle, after = stats(one), stats(other), stats(one)
                except requests.RequestException:
                    self.errors += 1
                    self._stop.wait(0.05)
                    continue
                total = min(taken(before), taken(after)) + taken(middle)
                self.checks += 1
                self.most = max(self.most, total)
                if total > self.limit:
                    self.violations.append((taken(before), taken(middle), taken(after)))
