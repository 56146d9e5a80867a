"""``run_program.py --local`` journals to its data directory: a second run of the same command finds
the tasks of the first, ``--fresh`` starts empty, and a second cluster on the same directory is
refused in one line."""

from __future__ import annotations

import re
import signal

import pytest
import requests

from provisioning.local_cluster import free_port
from tests.test_local_mode import start_program

pytestmark = pytest.mark.integration


def run(tmp_path, ports, *extra):
    """Start the program; returns it and node A's URL once both nodes answer."""
    proc, out, err = start_program(tmp_path, "--ports", f"{ports[0]},{ports[1]}", "--max-workers", "0", *extra)
    out.wait(re.escape(f"http://127.0.0.1:{ports[1]}"), timeout=90)
    return proc, out, err


def stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def test_a_second_run_finds_the_tasks_and_fresh_starts_empty(tmp_path):
    ports = (free_port(), free_port())
    a = f"http://127.0.0.1:{ports[0]}"
    proc, _, err = run(tmp_path, ports)
    try:
        task_id = requests.put(f"{a}/enqueue?iterations=5", data=b"kept", timeout=10).json()["id"]
        assert requests.get(f"{a}/health", timeout=5).json()["durable"] is True
        err.wait(re.escape(f"journals in {tmp_path / 'data'}"))
        # another cluster on other ports but the same data directory: refused before it starts
        other, other_out, other_err = start_program(tmp_path, "--ports", f"{free_port()},{free_port()}")
        assert other.wait(timeout=60) == 1 and other_out.text() == ""
        (line,) = other_err.text().splitlines()
        assert "in use by another node process" in line and "--data-dir" in line
    finally:
        stop(proc)

    proc, _, _ = run(tmp_path, ports)  # the same command again
    try:
        status = requests.get(f"{a}/status/{task_id}", timeout=10).json()
        assert (status["state"], status["iterations"]) == ("queued", 5)
    finally:
        stop(proc)

    proc, _, err = run(tmp_path, ports, "--fresh")
    try:
        err.wait("--fresh removed 1 tasks")
        assert requests.get(f"{a}/status/{task_id}", timeout=10).status_code == 404
    finally:
        stop(proc)
