"""The Celery app of the benchmark: Redis broker and result backend, acks_late, JSON.

    python -m bench.celery_app REDIS_URL     # a worker: prefork, concurrency 2
"""

from __future__ import annotations

import sys

from celery import Celery

from bench.peer_tasks import run_b64

TASK_NAME = "bench.compute"


def make_app(redis_url: str) -> Celery:
    app = Celery("bench", broker=f"{redis_url}/0", backend=f"{redis_url}/1")
    app.conf.update(
        task_acks_late=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK_NAME)(run_b64)
    return app


def main(argv: list[str]) -> None:
    make_app(argv[0]).worker_main(["worker", "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
                                   "--without-gossip", "--without-mingle", "--without-heartbeat"])


if __name__ == "__main__":
    main(sys.argv[1:])
