"""Shared fixtures. Every test runs with a clean environment and cannot reach past loopback."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from tests.helpers import FakeLauncher

TOKEN = "test-token"


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def loopback_only():
    """Fail any connection attempt to a non-loopback address (moto invents real-looking IPs)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address):
        if not _is_loopback(address):
            raise AssertionError(f"test tried to connect to non-loopback address {address!r}")

    def connect(self, address):
        guard(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard(address)
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    yield
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Each test starts without the node settings of the caller's shell (as Flask's own tests do)."""
    saved = dict(os.environ)
    from nodeapp.config import SETTINGS

    for setting in SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def launcher():
    return FakeLauncher()


@pytest.fixture
def app(launcher):
    from nodeapp import create_app

    # These tests post made-up digests (RESULT = "ab" * 64): no spot-checks, which would catch them
    # (tests/test_verification.py turns them on).
    return create_app({"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1",
                       "verify_iterations": 0}, launcher=launcher)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth():
    return {"X-Cluster-Token": TOKEN}
