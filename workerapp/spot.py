"""The spot interruption watcher of a worker on an EC2 spot instance (``--spot``).

EC2 announces the reclaim of a spot instance about two minutes ahead in the instance metadata:
``/latest/meta-data/spot/instance-action`` answers 404 until then, and then
``{"action": "terminate", "time": "..."}``. ``SpotWatcher`` polls it every few seconds through
IMDSv2 (a session token from ``PUT /latest/api/token`` first) in a thread of its own and calls
``on_notice`` once with that notice; the worker then hands back what it holds and says goodbye.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import requests

log = logging.getLogger(__name__)

METADATA_URL = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
NOTICE_PATH = "/latest/meta-data/spot/instance-action"
TOKEN_TTL_SECONDS = 21600
#: (connect, read) seconds: the metadata service is on the instance itself.
TIMEOUT = (1.0, 2.0)


class SpotWatcher:
    """Polls the metadata service every ``interval`` seconds; ``on_notice(notice)`` runs once.

    ``start()`` starts the thread (nothing starts at construction), ``stop()`` ends it.
    ``base_url`` is configurable so tests can point it at a stub on 127.0.0.1.
    """

    def __init__(self, on_notice: Callable[[dict], None], *, base_url: str = METADATA_URL,
                 interval: float = 5.0) -> None:
        self.on_notice = on_notice
        self.base_url = base_url.rstrip("/")
        self.interval = interval
        self.notice: dict | None = None
        self._session = requests.Session()
        self._session.trust_env = False  # never through a proxy: the service is link-local
        self._token: str | None = None
        self._failing = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spot-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def check(self) -> dict | None:
        """One poll: the interruption notice, or None while there is none (or the service fails)."""
        try:
            response = self._get_notice()
            if response.status_code == 401:  # the session token expired: take a new one
                self._token = None
                response = self._get_notice()
        except requests.RequestException as exc:
            self._log_failure(f"{exc.__class__.__name__}")
            return None
        if response.status_code == 404:
            self._recovered()
            return None
        if response.status_code != 200:
            self._log_failure(f"HTTP {response.status_code}")
            return None
        self._recovered()
        try:
            notice = response.json()
        except ValueError:
            notice = {"action": response.text.strip()[:100]}
        return notice if isinstance(notice, dict) else {"action": str(notice)}

    def _get_notice(self) -> requests.Response:
        if self._token is None:
            reply = self._session.put(self.base_url + TOKEN_PATH, timeout=TIMEOUT,
                                      headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)})
            reply.raise_for_status()
            self._token = reply.text.strip()
        return self._session.get(self.base_url + NOTICE_PATH, timeout=TIMEOUT,
                                 headers={"X-aws-ec2-metadata-token": self._token})

    def _run(self) -> None:
        while not self._stopped.is_set():
            notice = self.check()
            if notice is not None:
                self.notice = notice
                log.warning("spot interruption notice: %s", notice)
                self.on_notice(notice)
                return
            self._stopped.wait(self.interval)

    def _log_failure(self, what: str) -> None:
        if not self._failing:  # once per outage, not every few seconds
            log.warning("instance metadata %s%s unavailable (%s); still watching", self.base_url, NOTICE_PATH, what)
        self._failing = True

    def _recovered(self) -> None:
        self._failing = False
