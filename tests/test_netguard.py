"""The loopback guard (tests/netguard): a test, and a Python process a test starts, reach nothing
past 127.0.0.1; pip there has no index."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.netguard import sitecustomize as netguard

#: TEST-NET-1 (RFC 5737): reserved for documentation, routed nowhere.
OUTSIDE = ("192.0.2.1", 80)


def test_the_test_process_cannot_connect_past_loopback():
    with socket.socket() as sock, pytest.raises(AssertionError, match="non-loopback address"):
        sock.connect(OUTSIDE)
    with socket.socket() as sock, pytest.raises(AssertionError, match="non-loopback address"):
        sock.connect_ex(OUTSIDE)
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket() as sock:
        sock.connect(server.getsockname())  # loopback is fine


def test_a_python_subprocess_cannot_connect_past_loopback_and_it_is_reported(tmp_path):
    log = tmp_path / "guard.log"  # its own log: the shared one would fail this test on purpose
    code = ("import socket\nsock = socket.socket()\nsock.settimeout(5)\n"
            f"sock.connect({OUTSIDE!r})\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, netguard.LOG_ENV: str(log)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "OSError: [Errno 101] tests reach nothing beyond loopback" in done.stderr
    assert f"tried to connect to non-loopback address {OUTSIDE!r}" in log.read_text()


def test_pip_in_a_subprocess_has_no_index(tmp_path):
    log = tmp_path / "guard.log"
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(tmp_path),
                           "--index-url", "https://pypi.org/simple", "no-such-package-anywhere"],
                          env={**os.environ, netguard.LOG_ENV: str(log)}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Looking in links" in output and "Looking in indexes" not in output  # PIP_NO_INDEX=1 wins
    assert "No matching distribution found for no-such-package-anywhere" in output
    assert not log.exists() or not log.read_text()
