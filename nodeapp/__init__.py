"""The node server: a Flask app that queues tasks (in memory, journaled to ``DATA_DIR``) and
scales workers. This module is the composition root: ``create_app`` wires the parts together.

- ``nodeapp.store``: the tasks, kept results and the journal (no HTTP, no workers, no peer);
- ``nodeapp.fleet``: the worker pool and quota, loans, the peer client and the scaler;
- ``nodeapp.web``: every endpoint, the dashboard, views and error bodies;
- top level: ``config`` (settings), ``node`` (store + pool), ``context`` (what one app owns),
  ``history`` (the chart), ``metrics``, ``background`` (the scheduler), ``serving`` and
  ``gunicorn_conf`` (how gunicorn must run it). ``tests/test_layering.py`` keeps imports downward.

``create_app`` builds the app and its state and starts nothing: the scaler thread is started
by ``nodeapp.background.start_background``, which gunicorn calls once in its worker process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface

from nodeapp.web import origin
from nodeapp.web import errors
from nodeapp.web import bodies
from nodeapp.web.auth import peer_token
from nodeapp.web.views import node_stats
from nodeapp.store.apikeys import FILE_NAME as KEYS_FILE, KeyRing
from nodeapp.config import NodeConfig
from nodeapp.context import EXTENSION_KEY, NodeContext
from nodeapp.metrics import Metrics
from nodeapp.store.journal import open_journal
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from nodeapp.serving import refuse_unfit_server
from nodeapp.node import Node
from provisioning.launchers import Launcher, make_launcher

__all__ = ["create_app"]


def silence_seconds(config: NodeConfig) -> float:
    """How long a live worker may go without calling before it is taken for hung: a few leases,
    and never less than twice the longest task (MAX_ITERATIONS at HASH_RATE) that a worker may be
    computing for the peer node, which this node does not hear about."""
    return max(config.worker_silence * config.lease_seconds, 2 * config.max_iterations / config.hash_rate)


class _NoSessions(SecureCookieSessionInterface):
    """The node keeps no sessions (it sets no SECRET_KEY), so Flask gives each request its read-only
    empty NullSession. This gives every request one and the same (a write to it raises, as to
    any), sparing Flask's look for a key and a new NullSession per request (~2 us of an enqueue)."""

    def __init__(self) -> None:
        self._null = self.make_null_session(None)  # type: ignore[arg-type]  # it takes no part of the app

    def open_session(self, app, request):
        return self._null


def _request_hooks(app: Flask, metrics: Metrics) -> None:
    """What runs around every request: one hook before and one after (Flask pays a call and a
    check per hook). Before: the timer starts (first, so a request refused next is timed too),
    and a browser's write from another site is refused (``web/origin.py``). After: a connection
    whose body was left unread is closed (``web/bodies.py``), and the time is recorded. Each hook
    takes the request out of the ``flask.request`` proxy once: every access through it is a lookup."""

    @app.before_request
    def before() -> None:
        req = request._get_current_object()
        metrics.started(req.environ)
        origin.refuse_foreign_writes(req)

    @app.after_request
    def after(response):
        req = request._get_current_object()
        bodies.close_if_body_left(req.environ)
        return metrics.answered(response, req)


def create_app(
    settings: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    launcher: Launcher | None = None,
) -> Flask:
    """Build a node.

    Args:
        settings: overrides by NodeConfig field name (``{"max_workers": 2}``); these win over
            the environment.
        environ: where to read the environment variables from (default ``os.environ``).
        launcher: the worker launcher; by default the one LAUNCHER names.

    Raises:
        ConfigError: a setting is invalid; the message names the variable and its range.
        DataDirInUse: another node process uses DATA_DIR.
        gunicorn.errors.AppImportError: gunicorn, loading the app, runs in a way a node cannot.
    """
    refuse_unfit_server()  # under a gunicorn the node cannot run under (nodeapp/serving.py)
    config = NodeConfig.load(environ, settings)
    if not config.cluster_token:
        logging.getLogger(__name__).warning(
            "CLUSTER_TOKEN is not set: internal endpoints answer 401, so no worker or peer can talk to this node")
    app = Flask(__name__, static_folder=None)  # the dashboard blueprint serves its own files
    app.session_interface = _NoSessions()
    app.json.sort_keys = False
    journal = open_journal(config)
    node = Node.build(
        max_workers=config.max_workers,
        loan_ttl=config.loan_ttl,  # at least 3 scaler runs (tmcommon/settings.py), so one late renewal ends no loan
        recovering=bool(config.peer_url),
        lease_seconds=config.lease_seconds,
        max_attempts=config.max_attempts,
        max_queued=config.max_queued,
        max_queued_bytes=config.max_queued_bytes,
        results_retention=config.results_retention,
        results_ttl=config.results_ttl,
        priority_aging=config.priority_aging,
        journal=journal,
        idempotency_seconds=config.idempotency_seconds,
        idempotency_keys_bytes=config.idempotency_keys_bytes,
        kept_bodies_bytes=config.kept_bodies_bytes,
    )
    if journal is not None:
        node.tasks.restore(journal.load())
    peer = PeerClient(config.peer_url, peer_token(config), config.node_name, config.peer_timeout)
    if launcher is None:
        local = {"max_running": config.local_max_workers} if config.launcher == "local" else {}
        launcher = make_launcher(
            config.launcher, token=config.cluster_token, idle_seconds=config.worker_idle_seconds,
            node_name=config.node_name, max_lifetime=config.worker_max_lifetime, **local,
        )
    node.launcher_kind = launcher.kind
    node.enable_checks(budget=config.verify_iterations, probation=config.verify_probation,
                       max_pending=config.verify_max_pending, rerun_seconds=config.verify_rerun_seconds)
    scaler = Scaler(
        node, launcher, peer,
        node_url=config.node_url, worker_peer_url=config.worker_peer_url, scale_wait=config.scale_wait, hash_rate=config.hash_rate,
        boot_timeout=config.boot_timeout, summary_seconds=config.summary_seconds,
        silence_seconds=silence_seconds(config), max_lifetime=config.worker_max_lifetime,
    )
    keys = KeyRing(config.api_key, Path(config.data_dir) / KEYS_FILE if config.data_dir else None)
    # /metrics reads the figures of /stats at scrape time, from the context built just below.
    metrics = Metrics(lambda: node_stats(context), config.node_name)
    app.extensions[EXTENSION_KEY] = context = NodeContext(config, node, peer, launcher, scaler, metrics, keys)
    _request_hooks(app, context.metrics)
    errors.init_app(app)
    from nodeapp.web.api import bp

    app.register_blueprint(bp)
    from nodeapp.web.task_api import bp as task_bp

    app.register_blueprint(task_bp)
    from nodeapp.web.operator_api import bp as operator_bp

    app.register_blueprint(operator_bp)
    from nodeapp.web.openapi import bp as openapi_bp

    app.register_blueprint(openapi_bp)
    from nodeapp.web.dashboard import bp as dashboard_bp

    app.register_blueprint(dashboard_bp)
    return app
