"""The only APScheduler code: start the scaler job once per node process, stop it on exit."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from nodeapp.context import EXTENSION_KEY, NodeContext
from nodeapp.fleet.keysync import KEY_SYNC_SECONDS
from nodeapp.fleet import quarantine_sync

#: Seconds between two runs of the store's upkeep (deadlines, RESULTS_TTL_SECONDS).
UPKEEP_SECONDS = 1.0

log = logging.getLogger(__name__)


def start_background(app: Flask, node_url: str | None = None) -> BackgroundScheduler:
    """Start the scaler job for ``app``. Idempotent: a second call returns the running scheduler.

    ``node_url`` (the URL workers use to reach this node) fills in NODE_URL when it was not set.
    """
    ctx: NodeContext = app.extensions[EXTENSION_KEY]
    with ctx.background_lock:
        if ctx.scheduler is not None:
            return ctx.scheduler
        if node_url and not ctx.scaler.node_url:
            ctx.scaler.node_url = node_url.rstrip("/")
        scheduler = BackgroundScheduler(daemon=True)
        scheduler.add_job(
            ctx.scaler.tick, "interval", seconds=ctx.config.scale_interval, id="scale",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.add_job(
            ctx.follow_peer_runs, "interval", seconds=ctx.config.scale_interval, id="peer-runs",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.add_job(
            ctx.sample_history, "interval", seconds=ctx.config.history_seconds, id="history",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.add_job(
            ctx.node.tasks.upkeep, "interval", seconds=UPKEEP_SECONDS, id="upkeep",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.add_job(
            ctx.key_sync.exchange, "interval", seconds=KEY_SYNC_SECONDS, id="keys",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.add_job(
            ctx.quarantine_sync.exchange, "interval", seconds=quarantine_sync.SYNC_SECONDS, id="quarantine",
            max_instances=1, coalesce=True, replace_existing=True,
        )
        scheduler.start()
        ctx.scheduler = scheduler
        log.info("scaler started: every %gs, launcher %s, node url %s",
                 ctx.config.scale_interval, ctx.launcher.kind, ctx.scaler.node_url)
        return scheduler


def stop_background(app: Flask) -> None:
    """Stop the scaler; stop the workers the launcher started unless it can adopt them.

    A launcher that lists its workers by itself (EC2: by tag, ``adopts_workers``) keeps them: the
    node's next start adopts them against its quota, with their tasks from the journal, so a
    restart (SIGTERM, ``systemctl restart``) neither kills the fleet nor launches it again. Only
    an explicit stop ends them (``python -m provisioning.ec2_launcher --stop-workers``,
    ``run_program.py --destroy``); left alone, they stop by themselves after WORKER_IDLE_SECONDS
    without work, or at WORKER_MAX_LIFETIME. Other launchers' workers (local processes, which no
    later start could find) are stopped.

    Safe to call twice and from two threads (the SIGTERM hook and gunicorn's worker_exit): a
    second call waits until the first has finished.
    """
    ctx: NodeContext = app.extensions[EXTENSION_KEY]
    ctx.node.tasks.start_draining()
    with ctx.background_lock:
        scheduler, ctx.scheduler = ctx.scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=True)  # a scaler run in progress finishes: it cannot launch after this
        if getattr(ctx.launcher, "adopts_workers", False):
            log.info("node stopping: its %d worker(s) keep running; the next start adopts them",
                     len(ctx.node.workers.workers()))
        else:
            ctx.launcher.stop_all()
