"""``run_program.py --local`` run as a user runs it: ports already taken, a node killed with
SIGKILL and restarted by the supervisor, and Ctrl-C stopping everything."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from nodeapp.config import SETTINGS
from provisioning.local_cluster import free_port, group_members, port_in_use
from tests.helpers import QUICK_ENV, wait_for
from tests.test_docs import CLIENT_MD, console_blocks, sessions, shape
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


def start_program(tmp_path: Path, *args: str, progress: bool = False) -> tuple[subprocess.Popen, Lines, Lines]:
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in SETTINGS.values()}}
    env.update(QUICK_ENV, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "run_program.py", "--local", *([] if progress else ["--no-progress"]),
                             "--data-dir", str(tmp_path / "data"), *args], cwd=ROOT, env=env,
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


@pytest.mark.integration
def test_without_a_terminal_it_prints_events_as_lines_and_an_idle_cluster_stops_in_under_a_second(tmp_path):
    ports = (free_port(), free_port())
    proc, out, err = start_program(tmp_path, "--ports", f"{ports[0]},{ports[1]}", progress=True)
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        out.wait(re.escape(urls[1]), timeout=90)
        masters = [int(err.wait(rf"{name}: pid (\d+)").group(1)) for name in ("node-a", "node-b")]
        err.wait("Ctrl-C stops both nodes")
        banner = next(lines for command, lines in sessions(console_blocks(CLIENT_MD.read_text())[0])
                      if "run_program.py --local" in command)
        printed = {shape(line) for line in out.lines + err.lines}
        assert [line for line in banner if shape(line) not in printed] == []  # docs/client.md shows what it prints
        client = Client(urls)
        task_id = client.enqueue(b"seen in the log", 2000)
        assert client.wait([task_id], timeout=60)[task_id]["state"] == "completed"
        err.wait(r"\d\d:\d\d:\d\d node-[ab]: .* -> launched 1, borrowed 0")  # the scaling decision
        err.wait(r"\d\d:\d\d:\d\d queued 0, running 0, done 1, failed 0, workers \d+\+\d+/\d+")
        wait_for(lambda: all(n["workers"]["live"] + n["workers"]["pending"] == 0 for n in client.stats()["nodes"]),
                 timeout=60, what="the idle worker gone")
        client.close()
        kept_alive = []  # idle kept-alive connections, as a browser or a live view holds them
        for port in ports:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            assert conn.getresponse().read()
            kept_alive.append(conn)

        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - asked
        last = err.text().splitlines()[-1]
        stopped = float(re.fullmatch(r"stopped in (\d+\.\d)s", last).group(1))  # the last line
        # Under a second on a quiet machine (0.5-0.9 s); a CPU-starved one takes longer to tear the
        # processes down. Waiting out the kept-alive connections took gunicorn's graceful timeout, 5 s.
        assert stopped < 4.0 and took < 5.0, (stopped, took)
        assert not any(group_members(pid) for pid in masters)  # every process of both nodes is gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------ the supervisor's rules, no process
class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self):
        return self.returncode


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name, self.url, self.log_path, self.proxy = name, f"http://{name}", Path(f"/logs/{name}.log"), None
        self.process = FakeProcess(100)


class FakeCluster:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.nodes = log_dir, [FakeNode("node-a"), FakeNode("node-b")]
        self.stopped: list[int] = []
        self.fail_starts = 0

    def stop_node(self, index: int, grace: float) -> None:
        self.stopped.append(index)

    def start_node(self, index: int) -> None:
        if self.fail_starts:
            self.fail_starts -= 1
            raise RuntimeError("port 8002 is taken")
        node = self.nodes[index]
        node.process = FakeProcess(node.process.pid + 1)


def test_restarts_at_once_after_a_steady_run_and_back_off_when_it_keeps_failing(tmp_path):
    from tests.helpers import Clock
    from tmrun.supervise import Supervisor

    clock, cluster, healthy, events = Clock(0.0), FakeCluster(tmp_path), set(), []
    supervisor = Supervisor(cluster, events.append, healthy=lambda url: url in healthy, monotonic=clock, wall=clock)
    b = cluster.nodes[1]

    def crash_and_check(at: float, code: int = -9) -> None:
        clock.now = at
        b.process.returncode = code
        supervisor.check()

    crash_and_check(40.0)  # after 40 s of running: restarted at once
    assert supervisor.restarts(1) == 1 and b.process.pid == 101 and cluster.stopped == [1]
    assert "node-b exited (signal 9); restarting it;" in events[0] and "restart 1" in events[1]
    crash_and_check(41.0, code=3)  # 1 s after its restart: a pause of 1 s, then 2 s, ...
    assert supervisor.restarts(1) == 1 and "exited (code 3); restarting it in 1s" in events[-1]
    clock.now = 42.0
    supervisor.check()
    assert supervisor.restarts(1) == 2
    crash_and_check(42.5, code=3)
    assert "in 2s" in events[-1]
    clock.now = 44.5
    cluster.fail_starts = 1  # the restart itself fails: tried again after a longer pause
    supervisor.check()
    assert supervisor.restarts(1) == 2 and "could not be restarted (port 8002 is taken); trying again in 4s" in events[-1]
    clock.now = 48.5
    supervisor.check()
    assert supervisor.restarts(1) == 3
    healthy.add(b.url)
    clock.now = 49.0
    supervisor.check()
    supervisor.check()
    assert [e for e in events if "node-b is back" in e] == [events[-1]]
    assert cluster.nodes[0].process.pid == 100  # node-a was never touched
    assert (tmp_path / "supervisor.log").read_text().count("\n") == len(events)


def test_the_live_view_shows_the_pids_of_the_nodes_as_they_run_now(tmp_path):
    from rich.console import Console

    from tmrun.local import status_view
    from tmrun.supervise import Supervisor

    from tests.helpers import Clock

    clock, cluster = Clock(0.0), FakeCluster(tmp_path)
    cluster.urls = ["http://node-a"]
    supervisor = Supervisor(cluster, healthy=lambda url: False, monotonic=clock)

    def shown() -> str:
        console = Console(width=100, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
        console.print(status_view(None, cluster, supervisor))
        return console.export_text()

    assert "pids: node-a 100, node-b 100" in shown()
    cluster.nodes[1].process.returncode = -9
    clock.now = 40.0
    supervisor.check()  # node-b restarted at once (it had run 40 s), with a new pid
    text = shown()
    assert "pids: node-a 100, node-b 101" in text and "node-b restarted (pid 101, restart 1)" in text
    assert "docs/operations.md" in text
