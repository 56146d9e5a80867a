"""The per-app bundle of node objects, kept in ``app.extensions["nodeapp"]``."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from nodeapp.store.apikeys import KeyRing
from nodeapp.config import NodeConfig
from nodeapp.history import HISTORY_FILE, History, Sample
from nodeapp.fleet.keysync import KeySync
from nodeapp.fleet.quarantine_sync import QuarantineSync
from nodeapp.metrics import Metrics
from nodeapp.node import Node
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from nodeapp.store.results import EncodedSummaries
from provisioning.launchers import Launcher

EXTENSION_KEY = "nodeapp"
#: Runs of the peer's asked about per ``follow_peer_runs`` (one ``GET /status`` each).
PEER_RUNS_ASKED = 100
_RESULT = re.compile(r"[0-9a-f]{128}")


@dataclass
class Intake:
    """Whether the operator has paused intake (``POST /pause``): enqueues and retries get 503 ``paused``."""

    paused: bool = False
    since: float | None = None  # wall clock

    def set(self, paused: bool) -> None:
        if paused != self.paused:
            self.paused, self.since = paused, time.time() if paused else None

    def to_json(self) -> dict:
        return {"paused": self.paused, "since": self.since}


@dataclass
class NodeContext:
    """Everything one node owns. Built by ``create_app``; the scheduler is added by ``start_background``."""

    config: NodeConfig
    node: Node
    peer: PeerClient
    launcher: Launcher
    scaler: Scaler
    metrics: Metrics  # reads /stats at scrape time (``nodeapp.web.views.node_stats``)
    summaries: EncodedSummaries = field(init=False)
    history: History = field(init=False)
    keys: KeyRing = field(default_factory=KeyRing)
    scheduler: Any = None
    intake: Intake = field(default_factory=Intake)
    key_sync: KeySync = field(init=False)
    quarantine_sync: QuarantineSync = field(init=False)
    background_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.node.tasks.timings = self.metrics.task_timings
        self.summaries = EncodedSummaries(self.config.results_retention)
        kept = os.path.join(self.config.data_dir, HISTORY_FILE) if self.config.data_dir else None
        self.history = History(self.config.history_seconds, path=kept)
        self.key_sync = KeySync(self.keys, self.peer)
        self.quarantine_sync = QuarantineSync(self.node, self.peer)
        self.node.on_caught = self.quarantine_sync.caught

    def keys_refresh(self) -> bool:
        """Ask the peer for keys this node may not know yet; True if new ones came."""
        return self.key_sync.refresh()

    def sample_history(self) -> None:
        """One sample of the dashboard's chart (a scheduler job, every HISTORY_SECONDS). Asks the
        peer for its health, so that an outage shows even when nothing else calls it."""
        peer_reachable = self.peer.ping() if self.peer.url else None
        tasks, workers = self.node.tasks.counts(), self.node.workers.counts()
        self.history.add(Sample(self.history.slot(time.time()), tasks.queued, tasks.running, workers.live,
                                workers.pending, tasks.completed, tasks.failed, peer_reachable))

    def follow_peer_runs(self) -> int:
        """Tasks that wait for an identical task's run on the peer (a scheduler job, every
        SCALE_INTERVAL): each run that completed gives them its result; one that failed, was
        cancelled, is unknown there, or a peer that cannot be asked, queues them here, so that
        they run anyway. Returns how many tasks that settled."""
        settled = 0
        for peer_id in list(self.node.tasks.peer_runs())[:PEER_RUNS_ASKED]:
            answered, task = self.peer.status(peer_id)
            state = task.get("state") if isinstance(task, dict) and task.get("id") == peer_id else None
            if answered and state in ("queued", "running"):
                continue  # still going
            result = task.get("result") if state == "completed" else None
            if not (isinstance(result, str) and _RESULT.fullmatch(result)):
                result = None
            settled += self.node.tasks.peer_run_ended(peer_id, result)
        return settled

    def close(self) -> None:
        """After the last request (gunicorn's worker_exit): stop the spot-checks, close the journal."""
        if self.node.checker is not None:
            self.node.checker.close()
        if self.node.tasks.journal is not None:
            self.node.tasks.journal.close()

    def configure(self, peer_url: str | None = None, max_workers: int | None = None) -> None:
        """Settings that ``run_program.py`` sends after start (``POST /configure``)."""
        if peer_url is not None:
            self.peer.url = peer_url
        if max_workers is not None:
            self.node.workers.set_base_max(max_workers)


def get_context() -> NodeContext:
    # The app taken out of the proxy first: an attribute read through ``current_app`` costs a
    # lookup of its own (a microsecond; this runs a few times a request).
    return current_app._get_current_object().extensions[EXTENSION_KEY]
