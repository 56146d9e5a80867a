"""HTTP calls from a worker to one node, with explicit timeouts and the cluster token."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

T = TypeVar("T")
#: (connect, read) seconds per call. Each answer is small and comes from the node's memory, so a
#: node silent for longer is hung (stopped, frozen): the worker gives up on it and turns to the
#: other node rather than wait. A result post may wait on the node's journal, so it gets longer.
TIMEOUTS = {"claim": (1.0, 3.0), "heartbeat": (1.0, 3.0), "complete": (1.0, 5.0), "worker_down": (1.0, 5.0)}


class NodeUnavailable(Exception):
    """The node could not be reached, answered with a server error, or answered 200 with something
    other than the JSON the call expects (a proxy's error page): worth trying again later."""


class NodeRejected(Exception):
    """The node refused a call with a 4xx (wrong token, bad request): retrying will not help.

    ``code`` and ``message`` come from the node's JSON error body (``{"error", "message"}``).
    """

    def __init__(self, url: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{url}: HTTP {status} {code}: {message}")
        self.url, self.status, self.code, self.message = url, status, code, message

    @classmethod
    def from_response(cls, url: str, response: requests.Response) -> NodeRejected:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            return cls(url, response.status_code, str(body["error"]), str(body.get("message", "")))
        return cls(url, response.status_code, "http_error", response.text[:200])


#: (iterations done, digest hex after them): where a long task's chain stands.
Checkpoint = tuple[int, str]


@dataclass(frozen=True)
class ClaimedTask:
    id: str
    iterations: int
    data: bytes
    checkpoint: Checkpoint | None = None  # set when an earlier worker got part of the way


def _checkpoints(checkpoints: dict[str, Checkpoint] | None) -> list[dict]:
    return [{"id": i, "done": done, "digest": digest} for i, (done, digest) in (checkpoints or {}).items()]


class NodeClient:
    """One node's internal endpoints, as a worker uses them."""

    def __init__(self, url: str, token: str, worker_id: str, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.worker_id = worker_id
        self.session = session or requests.Session()
        # Workers talk to their nodes directly; looking up proxy settings in the environment on
        # every call was a quarter of a worker's Python time (bench/README.md).
        self.session.trust_env = False
        self.session.headers["X-Cluster-Token"] = token
        self.report: dict | None = None  # {"rate", "engine", "kernel", "lanes", "cpu", "spot"}, sent with each claim

    def _post(self, path: str, body: dict, parse: Callable[[Any], T]) -> T:
        """``parse`` of the node's JSON answer; an answer it cannot parse is ``NodeUnavailable``."""
        try:
            response = self.session.post(self.url + path, json=body, timeout=TIMEOUTS[path.split("/")[1]])
        except requests.RequestException as exc:
            raise NodeUnavailable(f"{self.url}{path}: {exc.__class__.__name__}") from exc
        if response.status_code >= 500:
            raise NodeUnavailable(f"{self.url}{path}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise NodeRejected.from_response(self.url + path, response)
        try:
            return parse(response.json())
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # binascii.Error is a ValueError
            raise NodeUnavailable(f"{self.url}{path}: HTTP 200 but not the JSON answer expected "
                                  f"({exc.__class__.__name__}: {str(exc)[:80]})") from exc

    def claim(self, max_tasks: int, max_iterations: int) -> tuple[list[ClaimedTask], float]:
        """Lease up to ``max_tasks`` tasks of about ``max_iterations`` in all; the claim carries
        ``self.report`` (the worker's rate, engine and lanes) when the worker has set it."""
        def parse(data: dict) -> tuple[list[ClaimedTask], float]:
            tasks = [ClaimedTask(str(t["id"]), int(t["iterations"]), base64.b64decode(t["data"], validate=True),
                                 (int(t["checkpoint"]["done"]), str(t["checkpoint"]["digest"]))
                                 if t.get("checkpoint") else None)
                     for t in data["tasks"]]
            return tasks, float(data.get("lease_seconds", 30.0))

        return self._post("/claim", {"worker_id": self.worker_id, "max_tasks": max_tasks,
                                     "max_iterations": max_iterations, **(self.report or {})}, parse)

    def complete(self, results: list[tuple[str, str, list[str]]]) -> int:
        """Post ``(id, result, marks)`` of each task (``marks``: the digests at its marks, or [])."""
        body = {"worker_id": self.worker_id,
                "results": [{"id": i, "result": r, **({"marks": m} if m else {})} for i, r, m in results]}
        return self._post("/complete", body, lambda data: int(data["accepted"]))

    def heartbeat(self, task_ids: list[str], checkpoints: dict[str, Checkpoint] | None = None) -> list[str]:
        """Renew the leases of ``task_ids``, with the newest checkpoint of each long task among them.
        Returns those the node says to stop (cancelled, or no longer leased to this worker)."""
        body = {"worker_id": self.worker_id, "task_ids": task_ids}
        if checkpoints:
            body["checkpoints"] = _checkpoints(checkpoints)
        return self._post("/heartbeat", body, lambda data: [i for i in data.get("stop") or [] if isinstance(i, str)])

    def worker_down(self, returned: list[str] | None = None, checkpoints: dict[str, Checkpoint] | None = None) -> bool:
        """Say goodbye; ``returned`` tasks are handed back (with their ``checkpoints``, if any)."""
        body = {"instance_id": self.worker_id, "returned": returned or []}
        if checkpoints:
            body["checkpoints"] = _checkpoints(checkpoints)
        return self._post(f"/worker_down/{self.worker_id}", body, lambda data: bool(data["removed"]))
