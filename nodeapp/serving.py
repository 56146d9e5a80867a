"""The node refuses a gunicorn it cannot run under, wherever gunicorn was started from.

A node is ONE gunicorn worker process with threads: the queue lives in that process's memory.
A second worker process would hold a second, separate queue and run a second scaler, and worker
recycling (max_requests, reload) would silently drop the queue.

gunicorn reads ``gunicorn.conf.py`` from the current directory only. Started elsewhere it runs
its defaults (sync workers, WEB_CONCURRENCY processes) and none of the node's hooks (so no
scaler). Two checks use the same rules: ``on_starting`` in ``nodeapp/gunicorn_conf.py`` refuses
before any worker exists, and ``create_app`` checks the live settings of the gunicorn process
that is loading it, so a configuration the node cannot run under fails wherever it came from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The module whose hooks (scaler start, SIGTERM) a node needs; see ``node_hooks_loaded``.
HOOKS_MODULE = "nodeapp.gunicorn_conf"


def problems(cfg) -> list[str]:
    """What in gunicorn's settings ``cfg`` a node cannot run under (empty if nothing)."""
    found = []
    if cfg.workers != 1:
        found.append(f"workers={cfg.workers}: a node must run exactly 1 gunicorn worker process, "
                     "because its queue lives in that process's memory (use threads for concurrency)")
    if cfg.max_requests:
        found.append(f"max_requests={cfg.max_requests}: worker recycling would drop the in-memory queue")
    if cfg.reload:
        found.append("reload=True: reloading restarts the worker and drops the in-memory queue")
    from gunicorn.workers.gthread import ThreadWorker

    if not issubclass(cfg.worker_class, ThreadWorker):
        found.append(f"worker class {cfg.worker_class.__name__}: a node needs gthread (threads share the queue, "
                     "and a request to the peer must not block the node's only thread)")
    if cfg.preload_app:
        found.append("preload_app=True: the app and its queue must be built in the serving worker process")
    return found


def node_hooks_loaded(cfg) -> bool:
    """Whether gunicorn read the node's settings file (its hooks start the scaler)."""
    return getattr(cfg.post_worker_init, "__module__", None) == HOOKS_MODULE


def loading_gunicorn_settings():
    """The settings of the gunicorn worker (or, with --preload, arbiter) that is loading the
    app right now, found up the call stack; None when gunicorn is not loading it."""
    if "gunicorn" not in sys.modules:
        return None
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, (Worker, Arbiter)):
            return owner.cfg
        frame = frame.f_back
    return None


def refuse_unfit_server() -> None:
    """Raise gunicorn's ``AppImportError`` (gunicorn prints the message and stops, exit code 4)
    when the gunicorn loading the app is configured in a way a node cannot run under."""
    cfg = loading_gunicorn_settings()
    if cfg is None:
        return
    found = problems(cfg)
    if not node_hooks_loaded(cfg):
        found.append(f"gunicorn did not load the node's settings and hooks (it reads gunicorn.conf.py from the "
                     f"current directory only, here {os.getcwd()}): start it with "
                     f"`gunicorn -c {ROOT / 'gunicorn.conf.py'} wsgi:app`, or `gunicorn --config "
                     f"python:{HOOKS_MODULE} wsgi:app`")
    if found:
        from gunicorn.errors import AppImportError

        raise AppImportError("refusing to start: " + "; ".join(found))
