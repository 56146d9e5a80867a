"""The spot interruption watcher against a stub IMDSv2 metadata service on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import wait_for
from workerapp.spot import NOTICE_PATH, TOKEN_PATH, SpotWatcher


class StubMetadata:
    """IMDSv2 as far as the watcher uses it: PUT a token, GET the notice with it (404 until set)."""

    def __init__(self) -> None:
        self.notice: dict | None = None
        self.tokens_issued = 0
        self.gets: list[str | None] = []  # the token each GET carried
        self.expire_next_get = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                if self.path != TOKEN_PATH or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400, b"")
                stub.tokens_issued += 1
                self._send(200, f"token-{stub.tokens_issued}".encode())

            def do_GET(self):
                token = self.headers.get("X-aws-ec2-metadata-token")
                stub.gets.append(token)
                if token != f"token-{stub.tokens_issued}" or stub.expire_next_get:
                    stub.expire_next_get = False
                    return self._send(401, b"")
                if self.path != NOTICE_PATH or stub.notice is None:
                    return self._send(404, b"Not Found")
                self._send(200, json.dumps(stub.notice).encode())

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata():
    stub = StubMetadata()
    yield stub
    stub.close()


def test_no_notice_means_none_and_every_get_carries_a_session_token(metadata):
    watcher = SpotWatcher(lambda notice: None, base_url=metadata.url)
    assert watcher.check() is None
    assert watcher.check() is None
    assert metadata.tokens_issued == 1 and metadata.gets == ["token-1", "token-1"]


def test_an_expired_token_is_renewed(metadata):
    watcher = SpotWatcher(lambda notice: None, base_url=metadata.url)
    watcher.check()
    metadata.notice = {"action": "terminate", "time": "2026-12-01T12:00:00Z"}
    metadata.expire_next_get = True
    assert watcher.check() == metadata.notice
    assert metadata.tokens_issued == 2


def test_the_thread_reports_the_notice_once(metadata):
    seen = []
    watcher = SpotWatcher(seen.append, base_url=metadata.url, interval=0.05)
    watcher.start()
    try:
        wait_for(lambda: len(metadata.gets) >= 3, timeout=10, what="a few polls")
        assert seen == []
        metadata.notice = {"action": "terminate", "time": "2026-12-01T12:00:00Z"}
        wait_for(lambda: seen, timeout=10, what="the notice")
        polls = len(metadata.gets)
        wait_for(lambda: not watcher._thread.is_alive(), timeout=10, what="the watcher to end")
        assert seen == [metadata.notice] and watcher.notice == metadata.notice
        assert len(metadata.gets) == polls  # no polling after the notice
    finally:
        watcher.stop()


def test_an_unreachable_service_is_no_notice(caplog):
    from provisioning.local_cluster import free_port

    watcher = SpotWatcher(lambda notice: None, base_url=f"http://127.0.0.1:{free_port()}")
    assert watcher.check() is None
    assert watcher.check() is None
    assert caplog.text.count("unavailable") == 1  # logged once per outage
