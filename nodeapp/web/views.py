"""How the node's records look in API answers: ``GET /status``, ``pullCompleted``, ``GET /stats``."""

from __future__ import annotations

from nodeapp.context import NodeContext
from nodeapp.node import NodeStats
from nodeapp.store.records import COMPLETED, RUNNING, TaskRecord
from nodeapp.fleet.pool import Worker

#: Long running tasks listed with their progress in ``/stats`` (and so on the dashboard).
IN_PROGRESS_SHOWN = 10


def task_json(record: TaskRecord) -> dict:
    """The task as ``GET /status`` shows it."""
    out = {"id": record.id, "state": record.state, "iterations": record.iterations,
           "enqueued_at": record.enqueued_at, "priority": record.priority}
    if record.not_before is not None:
        out["not_before"] = record.not_before
    if record.deadline is not None:
        out["deadline"] = record.deadline
    if record.owner is not None:  # the id of the client key that queued it (or "operator")
        out["owner"] = record.owner
    if record.state == RUNNING:
        out["attempts"] = record.attempts
    if record.result is not None:
        out["result"] = record.result
    if record.completed_at is not None:
        out["completed_at"] = record.completed_at
    if record.reason is not None:
        out["reason"] = record.reason
    if record.done is not None:  # queued or running: progress, from the newest checkpoint
        out["done"] = record.done
    if record.resumed_from is not None:  # completed from a checkpoint (see nodeapp/store/checkpoints.py)
        out["resumed_from"] = record.resumed_from
    if record.reused_from is not None and record.state == COMPLETED:
        # the task that ran; while it still runs its id is its owner's, not this task's client's
        out["reused_from"] = record.reused_from
    if record.spot_checked is not None:  # completed: whether the node recomputed it (docs/verification.md)
        out["spot_checked"] = record.spot_checked
    if record.checking:  # running: its result is in, held while a spot-check runs
        out["checking"] = True
    return out


def worker_json(worker: Worker) -> dict:
    """One worker in ``/stats``: its engine, kernel, lanes and rate are null until its first claim
    says them (the kernel also with an engine that has none)."""
    report = worker.report
    return {"id": worker.id, "state": worker.state, "borrowed": worker.borrowed,
            "engine": report and report.engine, "kernel": report and report.kernel or None,
            "lanes": report and report.lanes, "rate": report and report.rate}


def checks_json(node, budget: int) -> dict:
    """The spot-checks of ``/stats`` (docs/verification.md): counters and quarantined workers."""
    counts = node.checker.counts() if node.checker is not None else None
    caught = node.quarantine.newest()
    return {
        "enabled": counts is not None, "verify_iterations": budget,
        "checks": counts.checks if counts else 0, "passed": counts.passed if counts else 0,
        "mismatches": counts.mismatches if counts else 0, "iterations": counts.iterations if counts else 0,
        "skipped": counts.skipped if counts else 0, "pending": counts.pending if counts else 0,
        "quarantined": node.quarantine.total, "rerun": node.quarantine.rerun,
        "quarantine": [c.to_json() for c in caught],
    }


def stats_json(stats: NodeStats) -> dict:
    """The figures of ``GET /stats`` that the node model owns (peer and scaler are added by the context)."""
    t, w = stats.tasks, stats.workers
    return {
        "queued": t.queued,
        "queued_iterations": t.queued_iterations,
        "queued_by_priority": {str(p): n for p, n in t.queued_by_priority.items()},
        "scheduled": t.scheduled,
        "body_bytes": t.body_bytes,
        "running": t.running,
        "completed": t.completed,
        "failed": t.failed,
        "results_kept": t.results_kept,
        "enqueued": t.enqueued,
        "rejected_queue_full": t.rejected_full,
        "leases_expired": t.leases_expired,
        "checkpoints": {"accepted": t.checkpoints_accepted, "refused": t.checkpoints_refused},
        "reused": t.reused,
        "cancelled": t.cancelled,
        "expired": t.expired,
        "retried": t.retried,
        "idempotent_replays": t.replayed,
        "idempotency_keys": t.idempotency_keys._asdict(),
        "waiting_on_peer": t.waiting_on_peer,
        "workers": {
            "live": w.live,
            "pending": w.pending,
            "reserved": w.reserved,
            "max": w.max,
            "base_max": w.base_max,
            "launched_total": w.launched_total,
            "down_total": w.down_total,
        },
        "quota": {"lent": w.lent, "borrowed": w.borrowed, "owed": w.owed, "recovering": w.recovering},
        "draining": t.draining,
    }


def node_stats(ctx: NodeContext) -> dict:
    """``GET /stats``: the node's figures, peer link, intake, journal, progress, workers and scaler."""
    stats = stats_json(ctx.node.stats())
    stats["node"] = ctx.config.node_name
    stats["peer"] = ctx.peer.info()
    stats["intake"] = ctx.intake.to_json()
    journal = ctx.node.tasks.journal
    stats["journal"] = public_journal_info(journal.info()) if journal is not None else {"durable": False}
    # no id: the id of a queued or running task is what it takes to cancel it
    stats["in_progress"] = [{"done": r.done, "iterations": r.iterations}
                            for r in ctx.node.tasks.in_progress(IN_PROGRESS_SHOWN)]
    stats["workers"]["capacity"], stats["workers"]["capacity_why"] = ctx.scaler.capacity(stats["workers"]["max"])
    stats["workers"]["each"] = [worker_json(w) for w in ctx.node.workers.workers()]
    stats["checks"] = checks_json(ctx.node, ctx.config.verify_iterations)
    stats["scaler"] = {
        "running": ctx.scheduler is not None,
        "launcher": ctx.launcher.kind,
        # what holds launches back (EC2: an account limit, throttling, zones without capacity)
        "launches": getattr(ctx.launcher, "status", dict)(),
        "worker_rate": ctx.node.workers.worker_rate(ctx.config.hash_rate),
        "decisions": ctx.scaler.decisions()[:20],
        # consecutive boot failures (workers that never claimed) hold launches back, doubling
        "boot_backoff": ctx.scaler.boot_backoff.status(),
    }
    return stats


def public_journal_info(info: dict) -> dict:
    """The journal's figures without the path of DATA_DIR, also where a failure message names it."""
    data_dir = str(info.pop("data_dir", "") or "")
    if not data_dir:
        return info
    return {key: value.replace(data_dir, "DATA_DIR") if isinstance(value, str) else value
            for key, value in info.items()}
