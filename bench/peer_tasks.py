"""The task the peers run: the same work as a cluster task (``workerapp.compute.compute``)."""

from __future__ import annotations

import base64

from workerapp.compute import compute


def run(body: bytes, iterations: int) -> str:
    """RQ's job (pickled arguments: the body as bytes)."""
    return compute(body, iterations)


def run_b64(body_b64: str, iterations: int) -> str:
    """Celery's task (JSON arguments: the body in base64, as the cluster's /claim sends it)."""
    return compute(base64.b64decode(body_b64), iterations)
