"""The node refuses gunicorn settings that would split or drop its in-memory queue."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeapp.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


#: Started for real, the documented way: (flags, extra environment).
STARTED = {
    "w2": (["-w", "2"], {}),
    "max-requests": (["--max-requests", "100"], {}),
    "bad-setting": ([], {"MAX_QUEUED": "0"}),
}


def start_gunicorn(flags: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a node the documented way, from the repo root."""
    environ = {k: v for k, v in os.environ.items() if k not in {s.env for s in SETTINGS.values()}}
    environ.update({"BIND": "127.0.0.1:0", "CLUSTER_TOKEN": "t", "PYTHONUNBUFFERED": "1", **env})
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *flags, "wsgi:app"],
        cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.fixture(scope="module")
def outcomes():
    """The STARTED cases, all at once (each only starts and stops): {case: (code, output)}."""
    started = time.monotonic()
    procs = {case: start_gunicorn(flags, env) for case, (flags, env) in STARTED.items()}
    results = {}
    for case, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=max(1.0, 30 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:  # it started instead of refusing: stop it
            proc.kill()
            output, _ = proc.communicate()
        results[case] = (proc.returncode, output)
    return results


@pytest.mark.parametrize("case, why", [("w2", "workers=2"), ("max-requests", "max_requests=100")])
def test_node_refuses_to_start(outcomes, case, why):
    code, output = outcomes[case]
    assert code != 0, output
    assert "refusing to start" in output and why in output, output
    assert "Booting worker" not in output  # refused before any worker process existed


def test_two_workers_message_says_why(outcomes):
    _, output = outcomes["w2"]
    assert "exactly 1 gunicorn worker process" in output and "memory" in output


def test_bad_setting_stops_the_node_naming_the_variable(outcomes):
    code, output = outcomes["bad-setting"]
    assert code != 0, output
    assert "MAX_QUEUED" in output and "from 1 to 100000000" in output


class Server:
    """What gunicorn's arbiter hands ``on_starting``: its settings and its logger."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.log = logging.getLogger("test.gunicorn")


def starting_hook(monkeypatch, *flags: str):
    """gunicorn's own command-line and config-file parsing, in-process; returns (cfg, run on_starting)."""
    from gunicorn.app.wsgiapp import WSGIApplication

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["gunicorn", "-c", "gunicorn.conf.py", *flags, "wsgi:app"])
    cfg = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
    return cfg, lambda: cfg.on_starting(Server(cfg))


@pytest.mark.parametrize("flags, env, why", [
    (["--workers", "3"], {}, "workers=3"),
    ([], {"GUNICORN_CMD_ARGS": "-w 2"}, "workers=2"),
    (["--max-requests", "100", "--max-requests-jitter", "10"], {}, "max_requests=100"),
    (["--reload"], {}, "reload"),
    (["-k", "sync", "--threads", "1"], {}, "worker class SyncWorker"),
    (["--preload"], {}, "preload"),
], ids=["workers3", "cmd-args-env", "jitter", "reload", "sync", "preload"])
def test_refusals_through_gunicorns_own_parsing(monkeypatch, caplog, flags, env, why):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, on_starting = starting_hook(monkeypatch, *flags)
    with caplog.at_level(logging.ERROR, logger="test.gunicorn"), pytest.raises(SystemExit) as raised:
        on_starting()
    assert raised.value.code != 0
    assert any(why in record.getMessage() for record in caplog.records), caplog.text


@pytest.mark.parametrize("flags", [[], ["--threads", "4"], ["-k", "gthread"], ["-w", "1", "--max-requests", "0"]])
def test_the_documented_settings_start(monkeypatch, flags):
    monkeypatch.setenv("WEB_CONCURRENCY", "4")  # a platform default must not give a node 4 processes
    cfg, on_starting = starting_hook(monkeypatch, *flags)
    on_starting()  # no refusal
    assert (cfg.workers, cfg.max_requests, cfg.preload_app, cfg.worker_class.__name__) == (1, 0, False, "ThreadWorker")
