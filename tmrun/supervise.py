"""Local mode keeps both nodes up: a node that exits is restarted with the same settings.

A node that keeps failing soon after its start is restarted after a pause that doubles each
time (up to ``MAX_PAUSE``), so that a node that cannot start does not spin. Each event goes to
``on_event`` (the live view and stderr) and to ``supervisor.log`` in the cluster's log directory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import requests

from provisioning.local_cluster import LocalCluster

#: A node that ran this long before it exited is restarted at once; one that did not, after a pause.
STEADY_SECONDS = 30.0
FIRST_PAUSE, MAX_PAUSE = 1.0, 30.0


@dataclass
class NodeWatch:
    """What the supervisor knows of one node."""

    started_at: float
    restarts: int = 0
    pause: float = 0.0
    restart_at: float | None = None  # set while the node is down
    back_pending: bool = False  # restarted, /health not answered yet


def answers_health(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


class Supervisor:
    """Call ``check()`` about once a second from the program's main loop."""

    def __init__(self, cluster: LocalCluster, on_event: Callable[[str], None] = lambda text: None,
                 *, healthy: Callable[[str], bool] = answers_health,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self._on_event = on_event
        self._healthy = healthy
        self._monotonic = monotonic
        self._wall = wall
        self._watch = [NodeWatch(started_at=monotonic()) for _ in cluster.nodes]
        self.events: deque[str] = deque(maxlen=5)  # the newest, for the live view
        self.log_path = cluster.log_dir / "supervisor.log"

    def check(self) -> None:
        now = self._monotonic()
        for index, node in enumerate(self.cluster.nodes):
            watch = self._watch[index]
            if watch.restart_at is None and self._exited(index):
                self._went_down(index, now)
            if watch.restart_at is not None and now >= watch.restart_at:
                self._restart(index, now)
            elif watch.back_pending and self._healthy(node.url):
                watch.back_pending = False
                self._event(f"{node.name} is back: /health answers, {now - watch.started_at:.1f}s after its restart")

    def restarts(self, index: int) -> int:
        return self._watch[index].restarts

    def _exited(self, index: int) -> bool:
        node = self.cluster.nodes[index]
        if node.process is not None and node.process.poll() is not None:
            return True
        proxy = getattr(node, "proxy", None)  # nginx in front of the node (--proxy)
        return proxy is not None and proxy.process.poll() is not None

    def _went_down(self, index: int, now: float) -> None:
        node, watch = self.cluster.nodes[index], self._watch[index]
        code = node.process.returncode if node.process is not None else None
        watch.pause = 0.0 if now - watch.started_at >= STEADY_SECONDS else min(MAX_PAUSE, max(FIRST_PAUSE, 2 * watch.pause))
        watch.restart_at = now + watch.pause
        watch.back_pending = False
        self.cluster.stop_node(index, grace=0.5)  # its worker processes and its proxy go with it
        how = f"code {code}" if code is None or code >= 0 else f"signal {-code}"
        self._event(f"{node.name} exited ({how}); restarting it" + (f" in {watch.pause:g}s" if watch.pause else "")
                    + f"; its log: {node.log_path}")

    def _restart(self, index: int, now: float) -> None:
        node, watch = self.cluster.nodes[index], self._watch[index]
        watch.restart_at = None
        try:
            self.cluster.start_node(index)
        except Exception as exc:  # e.g. the port is taken by now: try again after a pause
            watch.pause = min(MAX_PAUSE, max(FIRST_PAUSE, 2 * watch.pause))
            watch.restart_at = now + watch.pause
            self._event(f"{node.name} could not be restarted ({exc}); trying again in {watch.pause:g}s")
            return
        watch.started_at, watch.back_pending = now, True
        watch.restarts += 1
        self._event(f"{node.name} restarted (pid {node.process.pid}, restart {watch.restarts})")

    def _event(self, text: str) -> None:
        stamped = time.strftime("%H:%M:%S", time.localtime(self._wall())) + " " + text
        self.events.append(stamped)
        try:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(stamped + "\n")
        except OSError:
            pass
        self._on_event(stamped)
