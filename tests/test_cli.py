"""The tm CLI: exit codes, one-line errors, table and JSON output, stdin, --wait, stats --watch, bench."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from provisioning.local_cluster import ROOT, free_port
from tests.helpers import QUICK_ENV, running_cluster, wait_for
from tmclient.bench import percentile
from tmclient.cli import main
from tmclient.client import Client
from workerapp.compute import compute

TASK_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(QUICK_ENV, tmp_path_factory.mktemp("cli-cluster")) as nodes:
        yield nodes


@pytest.fixture
def nodes(cluster, monkeypatch) -> str:
    value = ",".join(cluster.urls)
    monkeypatch.setenv("TM_NODES", value)
    return value


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tm(*argv: str, env: dict | None = None, stdin: bytes | None = None, script: bool = False):
    """Run the CLI as a separate process: ``python -m tmclient`` or the installed ``tm`` script."""
    command = [str(Path(sys.executable).with_name("tm"))] if script else [sys.executable, "-m", "tmclient"]
    return subprocess.run(command + list(argv), input=stdin, capture_output=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})})


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tm: error: ")
    return lines[0]


def test_percentile_is_nearest_rank():
    values = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert percentile(values, 50) == 0.3
    assert percentile(values, 90) == 0.5 and percentile(values, 100) == 0.5
    assert percentile(values, 1) == 0.1
    assert percentile([], 50) == 0.0


def test_no_nodes_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("TM_NODES", raising=False)
    code, out, err = run(capsys, "status", "abc")
    assert code == 2 and out == ""
    assert "TM_NODES" in one_error_line(err)


def test_unreachable_nodes_exit_1_with_one_line(capsys):
    code, out, err = run(capsys, "--nodes", f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", "pull")
    assert code == 1 and out == ""
    assert "no node answered" in one_error_line(err)


@pytest.mark.integration
def test_enqueue_files_prints_ids_and_status_shows_them(capsys, nodes, tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"alpha")
    second.write_bytes(b"beta")
    code, out, err = run(capsys, "enqueue", str(first), str(second), "-n", "5")
    assert code == 0, err
    ids = out.split()
    assert len(ids) == 2 and all(TASK_ID.match(i) for i in ids)

    code, out, err = run(capsys, "wait", *ids, "--json", "--timeout", "60")
    assert code == 0, err
    tasks = json.loads(out)
    assert [t["id"] for t in tasks] == ids
    assert [t["result"] for t in tasks] == [compute(b"alpha", 5), compute(b"beta", 5)]
    assert all(t["state"] == "completed" and t["completed_at"] >= t["enqueued_at"] for t in tasks)

    code, out, err = run(capsys, "status", *ids)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.split() and line.split()[0] in ids]
    assert len(rows) == 2 and all("completed" in row for row in rows)
    assert compute(b"alpha", 5) in out
    assert all(line == line.rstrip() for line in out.splitlines())

    code, out, err = run(capsys, "--json", "status", ids[0])
    assert code == 0 and json.loads(out)[0]["state"] == "completed"


@pytest.mark.integration
def test_pull_table_and_json(capsys, nodes):
    code, out, err = run(capsys, "--json", "enqueue", os.devnull, "-n", "2", "--wait")
    assert code == 0, err
    task_id = json.loads(out)["ids"][0]

    code, out, err = run(capsys, "pull", "--top", "3", "--json")
    assert code == 0, err
    results = json.loads(out)
    assert 1 <= len(results) <= 3
    assert set(results[0]) >= {"id", "result", "iterations", "completed_at"}
    assert task_id in {r["id"] for r in json.loads(run(capsys, "pull", "--top", "50", "--json")[1])}

    code, out, err = run(capsys, "pull", "--top", "3")
    assert code == 0, err
    assert results[0]["id"] in out and out.splitlines()[0].split()[0] == "id"


@pytest.mark.integration
def test_enqueue_from_stdin_with_wait_through_python_m(nodes):
    body = b"piped \x00 bytes"
    done = tm("enqueue", "-", "-n", "3", "--wait", "--json", "--timeout", "60", stdin=body)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert len(answer["ids"]) == 1
    assert answer["tasks"][0]["result"] == compute(body, 3)
    assert "1/1" in done.stderr.decode()  # the progress bar's final state

    ids_as_printed = "".join(f"{task_id}\n" for task_id in answer["ids"]).encode()
    shown = tm("status", "-", "--json", stdin=ids_as_printed)  # ids from stdin, as enqueue prints them
    assert shown.returncode == 0, shown.stderr
    assert [t["id"] for t in json.loads(shown.stdout)] == answer["ids"]


@pytest.mark.integration
def test_enqueue_wait_table_through_the_tm_script(nodes):
    done = tm("enqueue", os.devnull, "-n", "4", "--wait", script=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    task_id = lines[0]
    assert TASK_ID.match(task_id)
    assert any(line.startswith(task_id) and "completed" in line and compute(b"", 4) in line for line in lines[1:])


@pytest.mark.integration
def test_server_errors_exit_1_with_one_line(capsys, nodes, tmp_path):
    body = tmp_path / "body"
    body.write_bytes(b"x")
    code, out, err = run(capsys, "enqueue", str(body), "-n", "99999999999")
    assert code == 1 and out == ""
    assert "bad_iterations" in one_error_line(err)

    code, out, err = run(capsys, "status", "no-such-task")
    assert code == 1 and "unknown_task" in one_error_line(err)

    code, out, err = run(capsys, "wait", "no-such-task", "--timeout", "5")
    assert code == 1 and "unknown_task" in one_error_line(err)


@pytest.mark.integration
def test_unreadable_file_queues_nothing(capsys, nodes, cluster, tmp_path):
    before = json.loads(run(capsys, "stats", "--json")[1])["totals"]["enqueued"]
    good = tmp_path / "good"
    good.write_bytes(b"ok")
    code, out, err = run(capsys, "enqueue", str(good), str(tmp_path / "missing"), "-n", "1")
    assert code == 1 and out == ""
    assert "missing" in one_error_line(err)
    assert json.loads(run(capsys, "stats", "--json")[1])["totals"]["enqueued"] == before


@pytest.mark.integration
def test_wait_timeout_exits_3(capsys, nodes, tmp_path):
    # a body no earlier task had (no reuse) and the most iterations: not done within 0.05 s, even in
    # a worker's vector lanes
    body = tmp_path / "long.bin"
    body.write_bytes(os.urandom(16))
    code, out, err = run(capsys, "enqueue", str(body), "-n", "10000000")
    task_id = out.strip()
    code, out, err = run(capsys, "wait", task_id, "--timeout", "0.05")
    assert code == 3
    assert "not finished" in one_error_line(err)
    code, out, err = run(capsys, "wait", task_id, "--timeout", "60")
    assert code == 0, err


@pytest.mark.integration
def test_stats_table_and_json(capsys, nodes, cluster):
    code, out, err = run(capsys, "stats", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert [n["node"] for n in stats["nodes"]] == ["node-a", "node-b"]
    assert stats["totals"]["workers"]["max"] == 4

    code, out, err = run(capsys, "stats")
    assert code == 0, err
    assert "node-a" in out and "node-b" in out and "total" in out and "reachable" in out

    code, out, err = run(capsys, "stats", "--watch", "--json")
    assert code == 2 and "--watch" in one_error_line(err)


@pytest.mark.integration
def test_stats_watch_redraws_until_ctrl_c(nodes, tmp_path):
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "200"}  # rich draws as on a terminal
    with open(tmp_path / "stderr", "wb") as stderr:  # a file: a pipe nobody reads could fill and block the CLI
        proc = subprocess.Popen([sys.executable, "-m", "tmclient", "stats", "--watch", "--interval", "0.2"],
                                stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=env)
    seen = bytearray()

    def read():
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # each frame has one title line (node-b is in a frame more than once)
        wait_for(lambda: seen.count(b"cluster at") >= 3, timeout=30, what="three redraws of the stats table")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a clean exit is the point, not its speed on a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert b"node-a" in seen and b"node-b" in seen and b"total" in seen
    assert (tmp_path / "stderr").read_bytes() == b""  # no traceback, no "Exception ignored" either


@pytest.mark.integration
def test_stats_watch_ctrl_c_during_a_request_stops_after_it(capsys, nodes, monkeypatch):
    """Ctrl-C while ``tm stats --watch`` asks the nodes ends the watch once the answer is drawn:
    a KeyboardInterrupt raised inside the request could be swallowed by a finalizer (the watch
    went on) or leave urllib3's pool lock held (a hang at the next request or at exit)."""
    asks, real = [], Client.stats

    def stats(self, ctrl_c: int = 1):
        if len(asks) >= 10:
            raise AssertionError(f"the watch went on after Ctrl-C: {asks}")
        asks.append("asked")
        if asks.count("asked") == 2:
            for _ in range(ctrl_c):
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the second request
        answer = real(self)
        asks.append("answered")
        return answer

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(Client, "stats", stats)
    code, out, err = run(capsys, "stats", "--watch", "--interval", "0.01")
    assert (code, err) == (0, "")
    assert asks == ["asked", "answered", "asked", "answered"]  # no third request, the second finished
    assert "cluster at" in out and "node-b" in out  # the last frame (not a terminal: drawn at the end)
    assert signal.getsignal(signal.SIGINT) is handler  # the CLI's own handler is gone again

    asks.clear()  # a second Ctrl-C does not wait for the request
    monkeypatch.setattr(Client, "stats", lambda self: stats(self, ctrl_c=2))
    code, out, err = run(capsys, "stats", "--watch", "--interval", "0.01")
    assert (code, err) == (0, "") and asks == ["asked", "answered", "asked"]
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.integration
def test_results_follow_ctrl_c_during_a_request_ends_after_the_page_with_its_cursor_kept(capsys, nodes, tmp_path,
                                                                                         monkeypatch):
    """Ctrl-C while ``tm results --follow`` asks the nodes: that page is printed and its cursor
    kept, then it ends; a second Ctrl-C ends at once, also in the middle of writing the cursor
    file, which keeps the cursor it had (a KeyboardInterrupt raised inside the request was lost
    or hung, as in ``tm stats --watch``; one raised in the write left the file empty)."""
    client = Client(nodes.split(","), timeout=10)
    start = client.results_page(limit=1000)
    while start["results"]:
        start = client.results_page(start["next"], 1000)
    body = os.urandom(16)
    task_id = client.enqueue(body, 3)
    client.wait([task_id], timeout=60)
    kept = tmp_path / "cursor"
    asks, real_page, real_open = [], Client.results_page, open

    def results_page(self, after=None, limit=100, ctrl_c=1):
        if len(asks) >= 10:
            raise AssertionError(f"the follow went on after Ctrl-C: {asks}")
        asks.append("asked")
        for _ in range(ctrl_c if asks.count("asked") == 1 else 0):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the first request
        page = real_page(self, after, limit)
        asks.append("answered")
        return page

    def follow(ctrl_c: int, opener=None) -> tuple[dict, str]:
        asks.clear()
        kept.write_text(start["next"] + "\n")
        for name in ("builtins.open", "io.open") if opener else ():
            monkeypatch.setattr(name, opener)
        monkeypatch.setattr(Client, "results_page", lambda self, after=None, limit=100:
                            results_page(self, after, limit, ctrl_c))
        handler = signal.getsignal(signal.SIGINT)
        code, out, err = run(capsys, "--json", "results", "--cursor-file", str(kept), "--follow", "--poll", "0.01")
        assert code == 0 and signal.getsignal(signal.SIGINT) is handler  # the CLI's own handler is gone again
        assert err.startswith("next: ") and err.count("\n") == 1, err
        return {r["id"]: r["result"] for r in map(json.loads, out.splitlines())}, err.split()[1]

    listed, printed = follow(ctrl_c=1)
    assert asks == ["asked", "answered"]  # the first request finished, no second one
    assert listed[task_id] == compute(body, 3)
    assert kept.read_text() == printed + "\n" and printed != start["next"]
    code, out, _ = run(capsys, "--json", "results", "--cursor-file", str(kept))
    assert code == 0 and task_id not in out  # the cursor kept is after the page printed

    listed, printed = follow(ctrl_c=2)  # a second Ctrl-C does not wait for the request
    assert asks == ["asked"] and listed == {} and printed == start["next"]
    assert kept.read_text() == start["next"] + "\n"

    writes = []

    def interrupted_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if Path(file).parent == tmp_path and "w" in mode:
            writes.append(Path(file).name)
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, the file opened and nothing written
        return handle

    listed, printed = follow(ctrl_c=1, opener=interrupted_open)
    monkeypatch.undo()
    assert writes and asks == ["asked", "answered"] and listed[task_id] == compute(body, 3)
    assert kept.read_text() == start["next"] + "\n"  # the cursor it had, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cursor"]  # nothing left beside it


@pytest.mark.integration
def test_bench_reports_throughput_and_percentiles(capsys, nodes):
    code, out, err = run(capsys, "bench", "--tasks", "30", "-n", "100", "--json", "--timeout", "60")
    assert code == 0, err
    report = json.loads(out)
    assert report["tasks"] == 30 and report["completed"] == 30 and report["failed"] == 0
    assert report["tasks_per_second"] > 0 and report["enqueued_per_second"] > 0
    lat = report["latency_seconds"]
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] <= report["wall_seconds"]

    code, out, err = run(capsys, "bench", "--tasks", "5", "-n", "10")
    assert code == 0, err
    assert re.search(r"5 tasks of 10 iterations .* [0-9.]+ tasks/s", out)
    assert re.search(r"p50 \d+ ms, p90 \d+ ms, p99 \d+ ms, max \d+ ms", out)


@pytest.mark.integration
def test_status_prints_every_task_it_found_then_names_the_unknown_and_exits_1(capsys, nodes):
    code, out, err = run(capsys, "enqueue", os.devnull, "-n", "3", "--wait")
    good = out.split()[0]
    code, out, err = run(capsys, "status", good, "no-such-task")
    assert code == 1
    assert good in out and compute(b"", 3) in out
    assert "unknown_task" in one_error_line(err) and "no-such-task" in err
    code, out, err = run(capsys, "--json", "status", good, "no-such-task")
    assert code == 1 and [t["id"] for t in json.loads(out)] == [good]


def test_every_command_has_a_description_and_examples(capsys):
    from tmclient.cli import COMMAND_HELP

    for name in COMMAND_HELP:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        description = out.split("\n\n")[1]
        assert len(description.split()) >= 3 and not description.startswith("options"), (name, out)
        assert "examples:" in out and f"  tm {name}" in out.replace("tm --json ", "tm ")
    main_help = subprocess.run([sys.executable, "-m", "tmclient", "results", "--help"], capture_output=True,
                               text=True, cwd=ROOT, timeout=60).stdout
    assert re.search(r"--poll S\s+with --follow: seconds between asks \(default 1\)", main_help)


@pytest.mark.integration
def test_a_refused_batch_names_the_file(capsys, nodes, cluster, tmp_path):
    before = json.loads(run(capsys, "stats", "--json")[1])["totals"]["enqueued"]
    files = [tmp_path / "small.txt", tmp_path / "huge.bin", tmp_path / "other.txt"]
    files[0].write_bytes(b"a")
    files[1].write_bytes(b"x" * (1024 * 1024 + 1))  # over MAX_BODY_BYTES
    files[2].write_bytes(b"b")
    code, out, err = run(capsys, "enqueue", *map(str, files), "-n", "1")
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert "body_too_large" in line and f"{files[1]}: the body is" in line and "task 1" not in line
    code, out, err = run(capsys, "enqueue", str(files[1]), "-n", "1")  # alone: one PUT /enqueue
    assert code == 1 and str(files[1]) in one_error_line(err)
    assert json.loads(run(capsys, "stats", "--json")[1])["totals"]["enqueued"] == before
