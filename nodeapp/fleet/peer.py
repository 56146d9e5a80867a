"""Calls from this node to its peer node.

Every call carries the cluster token and the ``X-Peer-Request`` header, which tells the peer
to answer from its own state only, so two nodes never forward a request back and forth. Every
call gives up within PEER_TIMEOUT_SECONDS (``timeout``) and returns ``None`` instead of raising.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import quote

import requests

from tmcommon.settings import SETTINGS

from nodeapp.fleet.loans import Grant, Renewal

log = logging.getLogger(__name__)

PEER_HEADER = "X-Peer-Request"
#: The peer's endpoints that need this node's token: one answering 2xx shows the token is accepted.
_TOKEN_PATHS = frozenset({"/lookup", "/try_get_node_quota", "/renew_quota", "/return_quota"})
#: Seconds after a failed call during which ``lookup`` (on the enqueue path) does not ask again.
LOOKUP_BACKOFF = 2.0


class PeerClient:
    """The other node, as seen from this one. The URL may be set later by ``/configure``."""

    def __init__(self, url: str, token: str, node_name: str = "",
                 timeout: float = SETTINGS["peer_timeout"].default) -> None:
        self._lock = threading.Lock()
        connect = min(0.5, timeout / 3)
        self.timeout = (connect, timeout - connect)  # (connect, read) seconds: PEER_TIMEOUT_SECONDS in all
        self._url = url.rstrip("/")
        self._token = token
        self._session = requests.Session()
        # Node-to-node traffic never goes through a proxy, and reading the proxy settings from
        # the environment on every call was a tenth of pullCompleted's time (bench/README.md).
        self._session.trust_env = False
        self._session.headers.update({"X-Cluster-Token": token, PEER_HEADER: quote(node_name, safe="") or "1"})
        self._reachable: bool | None = None
        self._problem: tuple[str, float] | None = None  # (what, wall time): the newest problem with its answers
        self._token_refused = False
        self._last_contact: float | None = None
        self._failed_at = 0.0  # monotonic

    @property
    def url(self) -> str:
        with self._lock:
            return self._url

    @url.setter
    def url(self, value: str) -> None:
        with self._lock:
            self._url = value.rstrip("/")
            self._reachable = None

    def info(self) -> dict:
        with self._lock:
            problem = {"what": self._problem[0], "at": self._problem[1]} if self._problem else None
            return {"url": self._url or None, "reachable": self._reachable, "last_contact": self._last_contact,
                    "problem": problem}

    def bad_answer(self, what: str) -> None:
        """An answer of the peer's that this node could not read (``nodeapp/web/peer_answers.py``):
        kept for ``/stats`` (``peer.problem``), logged when it differs from the last one."""
        self._note_problem(what)

    def _note_problem(self, what: str, level: int = logging.WARNING) -> None:
        with self._lock:
            previous, self._problem = self._problem, (what, time.time())
            url = self._url
        if previous is None or previous[0] != what:
            log.log(level, "peer %s: %s", url, what)

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        url = self.url
        if not url:
            return None
        try:
            response = self._session.request(method, url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            was_reachable = self._mark(False)
            # Warn when the peer goes away, not on every call while it stays away.
            log.log(logging.WARNING if was_reachable is not False else logging.DEBUG,
                    "peer %s unreachable on %s %s: %s", url, method, path, exc.__class__.__name__)
            return None
        # A 5xx means the peer is there but unhealthy; anything else is an answer.
        self._mark(response.status_code < 500)
        self._check_token(response, path)
        return response

    def _check_token(self, response: requests.Response, path: str) -> None:
        """A 401 (or a 403 ``forbidden``: a token without the power asked) means the peer refuses
        this node's token: an error in the log and ``/stats`` (``peer.problem``) until a call that
        needs the token goes through again."""
        status = response.status_code
        if status in (401, 403):
            try:
                body = response.json()
            except ValueError:
                body = None
            code = body.get("error") if isinstance(body, dict) else None
            if status == 401 or code == "forbidden":
                with self._lock:
                    self._token_refused = True
                self._note_problem(f"the peer refuses this node's token (HTTP {status} {code or ''}): set the same "
                                   "CLUSTER_TOKEN, and PEER_TOKEN if set, on both nodes", logging.ERROR)
        elif status < 300 and path in _TOKEN_PATHS:
            with self._lock:
                cleared, self._token_refused = self._token_refused, False
                if cleared:
                    self._problem = None
            if cleared:
                log.info("peer %s accepts this node's token again", self.url)

    def _mark(self, ok: bool) -> bool | None:
        """Record the outcome of a call; returns the previous reachability."""
        with self._lock:
            previous, self._reachable = self._reachable, ok
            if not ok:
                self._failed_at = time.monotonic()
            if ok:
                self._last_contact = time.time()
                if previous is False:
                    log.info("peer %s reachable again", self._url)
            return previous

    def _json(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        if response is None or response.status_code not in ok:
            return None
        try:
            return response.json()
        except ValueError:
            self._mark(False)
            return None

    # One method per peer endpoint the node uses.
    # The answers of the public endpoints below come back as the peer sent them (JSON, or None
    # without one): nodeapp/web/peer_answers.py checks them where they are used.
    def newest_results(self, top: int) -> Any:
        """The peer's own ``pullCompleted``, or None."""
        return self._json("POST", "/pullCompleted", params={"top": top})

    def status(self, task_id: str) -> tuple[bool, dict | None]:
        """(answered, task): answered is False when the peer could not be asked."""
        response = self._call("GET", f"/status/{quote(task_id, safe='')}")
        if response is None or response.status_code not in (200, 404):
            return False, None
        if response.status_code == 404:
            return True, None
        try:
            return True, response.json()
        except ValueError:
            return False, None

    def lookup(self, keys: list[str], works: list[tuple[str, int]]) -> dict | None:
        """The peer's ``POST /lookup`` for an enqueue: what it knows of these idempotency keys and
        (digest hex, iterations) pairs. None when it cannot be asked, without asking at all for
        LOOKUP_BACKOFF seconds after a failed call, so a hung peer slows one enqueue, not each."""
        with self._lock:
            if self._reachable is False and time.monotonic() - self._failed_at < LOOKUP_BACKOFF:
                return None
        data = self._json("POST", "/lookup", json={"keys": keys, "works": works})
        return data if isinstance(data, dict) else None

    def forward(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any] | None:
        """A public call passed on to the peer as (status, JSON answer); None if it could not be
        asked or did not answer in JSON."""
        response = self._call(method, path, **kwargs)
        if response is None:
            return None
        try:
            return response.status_code, response.json()
        except ValueError:
            self._mark(False)
            return None

    def try_get_quota(self) -> Grant | None:
        """A slot lent by the peer, or None (refused, unreachable, or an answer without a loan id)."""
        return Grant.from_json(self._json("GET", "/try_get_node_quota"))

    def renew_quota(self, loans: list[str]) -> Renewal | None:
        """Renew the loans we hold from the peer (``nodeapp/fleet/loans.py``); None if it did not answer."""
        return Renewal.from_json(self._json("POST", "/renew_quota", json={"loans": loans}))

    def return_quota(self, loan: str) -> bool:
        return self._json("POST", "/return_quota", json={"loan": loan}) is not None

    def stats(self) -> Any:
        """The peer's own ``/stats`` (for the dashboard's whole-cluster view), or None."""
        return self._json("GET", "/stats")

    def ping(self) -> bool:
        """Whether the peer answers (a 5xx or no answer is down). An empty ``POST /lookup``, which
        takes the peer token: a peer that refuses it shows in ``/stats`` even when nothing else
        would have called it."""
        response = self._call("POST", "/lookup", json={"keys": [], "works": []})
        return response is not None and response.status_code < 500

    def history(self) -> Any:
        """The peer's own ``GET /history`` (the dashboard's chart), or None."""
        return self._json("GET", "/history")

    def listing(self, kind: str, query: str, count: int) -> list | None:
        """The peer's own newest ``count`` results or failed tasks matching ``query``
        (``GET /dashboard/list?scope=node``), or None."""
        data = self._json("GET", "/dashboard/list", params={"kind": kind, "q": query, "limit": count, "scope": "node"})
        items = data.get("items") if isinstance(data, dict) else None
        return items if isinstance(items, list) else None

    def dashboard_part(self) -> Any:
        """The peer's own workers and failed tasks (``GET /dashboard/node``), or None."""
        return self._json("GET", "/dashboard/node")

    def sync_keys(self, keys: list[dict]) -> list | None:
        """Send this node's client keys (``POST /keys/sync``); the peer's list, or None."""
        data = self._json("POST", "/keys/sync", json={"keys": keys})
        keys = data.get("keys") if isinstance(data, dict) else None
        return keys if isinstance(keys, list) else None

    def sync_quarantine(self, entries: list[dict]) -> list | None:
        """Send this node's quarantined workers (``POST /quarantine/sync``); the peer's list, or None."""
        data = self._json("POST", "/quarantine/sync", json={"quarantine": entries})
        items = data.get("quarantine") if isinstance(data, dict) else None
        return items if isinstance(items, list) else None
