"""``run_program.py --local`` run as a user runs it: ports already taken, a node killed with
SIGKILL and restarted by the supervisor, and Ctrl-C stopping everything."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from nodeapp.config import SETTINGS
from provisioning.local_cluster import free_port, port_in_use
from tests.helpers import QUICK_ENV, wait_for
from tmclient.client import Client

ROOT = Path(__file__).resolve().parent.parent


class Lines:
    """The lines a stream has produced so far, read by a thread."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait(self, pattern: str, timeout: float = 60.0) -> re.Match:
        regex = re.compile(pattern)
        return wait_for(lambda: next((m for line in list(self.lines) if (m := regex.search(line))), None),
                        timeout=timeout, what=f"a line matching {pattern!r}; got {self.lines}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


def start_program(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Lines, Lines]:
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in SETTINGS.values()}}
    env.update(QUICK_ENV, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "run_program.py", "--local", "--no-progress", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie child of an exited parent is gone for every purpose here
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_ports_in_use_are_refused_before_anything_is_printed(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc, out, err = start_program(tmp_path, "--ports", f"{port},{free_port()}")
        code = proc.wait(timeout=60)
    assert code != 0
    assert out.text() == ""  # no URL printed as if the cluster had started
    (line,) = err.text().splitlines()
    assert f"127.0.0.1:{port} is in use" in line and "--ports A,B" in line


@pytest.mark.integration
def test_a_killed_node_is_restarted_and_ctrl_c_stops_everything(tmp_path):
    ports = (free_port(), free_port())
    proc, out, err = start_program(tmp_path, "--ports", f"{ports[0]},{ports[1]}")
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        out.wait(re.escape(urls[1]), timeout=90)
        first = int(err.wait(r"node-b: pid (\d+)").group(1))

        os.kill(first, signal.SIGKILL)
        err.wait(r"node-b exited \(signal 9\); restarting it")
        second = int(err.wait(r"node-b restarted \(pid (\d+), restart 1\)").group(1))
        err.wait(r"node-b is back: /health answers", timeout=60)
        assert second != first and gone(first)
        assert requests.get(urls[1] + "/health", timeout=5).status_code == 200
        assert proc.poll() is None  # the cluster kept running
        assert "node-b exited" in (tmp_path / f"taskmanager-{proc.pid}" / "supervisor.log").read_text()

        # the restarted node takes work again (and launches its own worker for it)
        client = Client([urls[1]])
        task_id = client.enqueue(b"after the restart", 1000)
        assert client.wait([task_id], timeout=60)[task_id]["state"] == "completed"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopped in" in err.text()
        wait_for(lambda: not any(map(port_in_use, ports)), timeout=20, what="both ports free again")
        wait_for(lambda: gone(second), timeout=20, what="the restarted node gone")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
