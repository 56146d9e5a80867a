"""How the node's records look in API answers: ``GET /status``, ``pullCompleted``, ``GET /stats``."""

from __future__ import annotations

import functools
import json

from nodeapp.node import NodeStats
from nodeapp.results import summary
from nodeapp.tasks import RUNNING, TaskRecord


def encode_json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def task_json(record: TaskRecord) -> dict:
    """The task as ``GET /status`` shows it."""
    out = {"id": record.id, "state": record.state, "iterations": record.iterations,
           "enqueued_at": record.enqueued_at}
    if record.state == RUNNING:
        out["attempts"] = record.attempts
    if record.result is not None:
        out["result"] = record.result
    if record.completed_at is not None:
        out["completed_at"] = record.completed_at
    if record.reason is not None:
        out["reason"] = record.reason
    return out


class EncodedSummaries:
    """``summary()`` of completed records as compact JSON, each encoded once while it is among
    the ``size`` most recently listed (a completed record never changes)."""

    def __init__(self, size: int) -> None:
        self.encode = functools.lru_cache(maxsize=size)(self._encode)

    @staticmethod
    def _encode(record: TaskRecord) -> bytes:
        return encode_json(summary(record))


def stats_json(stats: NodeStats) -> dict:
    """The figures of ``GET /stats`` that the node model owns (peer and scaler are added by the context)."""
    t, w = stats.tasks, stats.workers
    return {
        "queued": t.queued,
        "queued_iterations": t.queued_iterations,
        "running": t.running,
        "completed": t.completed,
        "failed": t.failed,
        "results_kept": t.results_kept,
        "enqueued": t.enqueued,
        "rejected_queue_full": t.rejected_full,
        "leases_expired": t.leases_expired,
        "workers": {
            "live": w.live,
            "pending": w.pending,
            "max": w.max,
            "base_max": w.base_max,
            "launched_total": w.launched_total,
            "down_total": w.down_total,
        },
        "quota": {"lent": w.lent, "borrowed": w.borrowed, "owed": w.owed},
        "draining": t.draining,
    }
