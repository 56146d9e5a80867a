"""gunicorn settings and hooks for a node (loaded through the top-level ``gunicorn.conf.py``).

A node is ONE gunicorn worker process with threads: the queue lives in that process's memory.
A second worker process would hold a second, separate queue and run a second scaler, and worker
recycling (max_requests, reload) would silently drop the queue, so the node refuses to start
with any of them: here in ``on_starting``, and again as the app loads (``nodeapp/serving.py``),
for a gunicorn started without this file.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading

from nodeapp.serving import problems as _problems
from nodeapp.web.bodies import CLOSE_HOOK as _CLOSE_HOOK

# ------------------------------------------------------------------ process model
workers = 1  # a literal on purpose: never from WEB_CONCURRENCY (see module docstring)
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
preload_app = False
max_requests = 0
reload = False
# gunicorn >= 27 has a runtime control socket that can add worker processes: off for a node.
control_socket_disable = True

# ------------------------------------------------------------------ network and timeouts
bind = [os.environ.get("BIND", "0.0.0.0:8000")]
backlog = 2048
keepalive = 5
timeout = 60  # the gthread main loop heartbeats on its own; requests never take this long
# SIGTERM: requests in flight get this long to finish. Requests are short (a peer call gives up
# within 2 s). gthread would also wait this long on idle kept-alive connections (the peer's, a
# browser's, a live view's): ``_close_idle_connections`` closes those at once on SIGTERM.
graceful_timeout = 5

# ------------------------------------------------------------------ logging
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
if os.environ.get("LOG_FORMAT", "text").lower() == "json":
    # gunicorn's own lines as JSON too, so that a node's whole log is one format.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tmcommon.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }


class RefuseToStart(SystemExit):
    """Raised from ``on_starting``: the configuration would split or drop the in-memory queue."""


def _data_dir_problems() -> list[str]:
    """DATA_DIR held by another node process: refused here, in one line, before a worker starts."""
    from nodeapp.store.journal import LOCK_WAIT, DataDirInUse, check_free
    from tmcommon.settings import SETTINGS

    data_dir = os.environ.get(SETTINGS["data_dir"].env, "").strip()
    try:
        if data_dir:
            check_free(data_dir, LOCK_WAIT)
    except DataDirInUse as exc:
        return [str(exc)]
    return []


def on_starting(server):
    problems = _problems(server.cfg) + _data_dir_problems()
    if problems:
        for problem in problems:
            server.log.error("refusing to start: %s", problem)
        raise RefuseToStart(2)


def pre_request(worker, req):
    """Let the app close this connection after its answer (see ``nodeapp.web.bodies``). Runs on
    every request: the name is imported once, above (an import statement here costs ~0.7 us)."""
    worker.log.debug("%s %s", req.method, req.path)
    if req.body is not None:
        setattr(req.body, _CLOSE_HOOK, req.force_close)


def _node_url_from_bind(cfg) -> str:
    host, _, port = cfg.bind[0].rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _close_idle_connections(worker) -> None:
    """On SIGTERM, let gthread (gunicorn 25) close its idle connections at once: their keep-alive
    time is made past, on its own loop's thread, so that its graceful wait is for requests in
    flight only (an idle node then stops in well under a second). A request arriving on such a
    connection before it is closed is still answered (with ``Connection: close``).

    Only the deadlines are changed here: gthread closes the connections itself, in the sweep it
    runs after each round of events. Closing them from this callback, in the middle of a round,
    crashed the worker when the same round also held one of them as readable (its socket, closed,
    could no longer be unregistered: "Invalid file descriptor: -1")."""
    queue = getattr(worker, "method_queue", None)
    if queue is None:  # older gthread: its graceful wait is for requests in flight only
        return

    def expire() -> None:
        for name in ("keepalived_conns", "pending_conns"):
            for conn in getattr(worker, name, ()):
                conn.timeout = 0.0

    queue.defer(expire)


def post_worker_init(worker):
    """In the serving process, after the app is loaded: start the scaler, hook SIGTERM."""
    from nodeapp.background import start_background, stop_background
    from tmcommon.logs import configure_logging

    configure_logging(worker.cfg.loglevel)
    app = worker.wsgi
    tasks = app.extensions["nodeapp"].node.tasks
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        tasks.start_draining()  # new enqueues answer 503 while requests in flight finish
        # Stop the scaler now, while gunicorn drains (and the workers, unless the launcher keeps
        # them for the next start to adopt: nodeapp.background.stop_background).
        threading.Thread(target=stop_background, args=(app,), name="stop-background", daemon=True).start()
        if callable(gunicorn_handler):
            gunicorn_handler(signum, frame)
        _close_idle_connections(worker)

    signal.signal(signal.SIGTERM, on_sigterm)
    if tasks.journal is not None:  # unreadable after a failed write: this process stops, gunicorn starts another
        tasks.journal.on_lost = lambda: os.kill(os.getpid(), signal.SIGTERM)
    start_background(app, node_url=_node_url_from_bind(worker.cfg))
    # Everything made so far (the modules, the app) lives as long as the process: out of the
    # garbage collector's sight, a full collection no longer scans it with the GIL held (28 ms
    # here: it was the node's p99 under load, bench/README section 13).
    gc.freeze()


def worker_exit(server, worker):
    from nodeapp.background import stop_background

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions") and "nodeapp" in app.extensions:
        stop_background(app)
        app.extensions["nodeapp"].close()
        logging.getLogger("nodeapp").info("node stopped")
