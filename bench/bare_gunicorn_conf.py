# The bare app runs under the node's gunicorn settings (values imported, hooks left out).
from nodeapp.gunicorn_conf import (  # noqa: F401
    accesslog, backlog, bind, errorlog, graceful_timeout, keepalive, loglevel, max_requests, preload_app,
    threads, timeout, worker_class, workers,
)
