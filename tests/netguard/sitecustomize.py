"""Tests reach nothing beyond loopback: the guard, for the test process and its Python children.

``tests/conftest.py`` puts this directory on the PYTHONPATH of every process the tests start, so
each Python subprocess (nodes, workers, pip, scripts) imports it at start-up; with
``TESTS_NET_GUARD_LOG`` set, a connection to anything but loopback then fails with an OSError
(ENETUNREACH) and is written to that file, where the test that started the process finds it and
fails. The test process itself installs the same guard (``install``) with an AssertionError.
"""

from __future__ import annotations

import errno
import os
import socket

LOG_ENV = "TESTS_NET_GUARD_LOG"
#: The directory to put on a subprocess's PYTHONPATH (it holds only this module).
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install(refuse) -> tuple:
    """Make ``socket.connect``/``connect_ex`` call ``refuse(address)`` for a non-loopback address
    before connecting; returns the original two methods."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if not is_loopback(address):
            refuse(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        if not is_loopback(address):
            refuse(address)
        return real_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    return real_connect, real_connect_ex


def _refuse_and_log(address) -> None:
    message = f"pid {os.getpid()} tried to connect to non-loopback address {address!r}"
    try:
        with open(os.environ[LOG_ENV], "a") as log:
            log.write(message + "\n")
    except OSError:
        pass
    raise OSError(errno.ENETUNREACH, f"tests reach nothing beyond loopback: {message}")


if os.environ.get(LOG_ENV):
    install(_refuse_and_log)
