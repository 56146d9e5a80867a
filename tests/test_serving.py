"""The app itself refuses a gunicorn it cannot run under, also when gunicorn is started outside the
repo root (where it finds no gunicorn.conf.py and would run its own defaults)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from nodeapp.config import SETTINGS
from provisioning.local_cluster import free_port
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent

#: gunicorn flags, started from a directory without gunicorn.conf.py.
REFUSED = {
    "w2": ["-w", "2", "-k", "gthread", "--threads", "4"],
    "sync": ["-k", "sync"],
    "defaults": [],
}


def start(flags: list[str], cwd: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in SETTINGS.values()}}
    env.update(PYTHONPATH=str(ROOT), CLUSTER_TOKEN="t", BIND=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1",
               WEB_CONCURRENCY="1")
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", *flags, "wsgi:app"],
                            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Each REFUSED case started at once from an empty directory: {case: (exit code, output)}."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    procs = {case: start(flags, cwd, free_port()) for case, flags in REFUSED.items()}
    started, out = time.monotonic(), {}
    for case, proc in procs.items():
        try:
            output, _ = proc.communicate(timeout=max(1.0, 60 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:  # it ran instead of refusing
            proc.kill()
            output, _ = proc.communicate()
        out[case] = (proc.returncode, output)
    return out


@pytest.mark.parametrize("case, why", [
    ("w2", "workers=2: a node must run exactly 1 gunicorn worker process"),
    ("sync", "worker class SyncWorker: a node needs gthread"),
    ("defaults", "gunicorn did not load the node's settings and hooks"),
])
def test_started_elsewhere_the_app_refuses(refused, case, why):
    code, output = refused[case]
    # gunicorn's "App failed to load" is 4; with two workers refusing at once its arbiter may reap
    # the second while halting for the first, raise HaltServer again and exit 1 (gunicorn 25).
    assert code == 4 or (case == "w2" and code == 1), output
    assert "refusing to start" in output and why in output, output
    assert "python:nodeapp.gunicorn_conf" in output  # the command that works from anywhere


@pytest.mark.integration
def test_started_elsewhere_with_the_packaged_settings_it_runs(tmp_path):
    port = free_port()
    proc = start(["--config", "python:nodeapp.gunicorn_conf"], tmp_path, port)
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200,
                 timeout=30, what="the node to answer /health")
        stats = requests.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
        assert stats["scaler"]["running"] is True  # the hooks ran: the scaler started
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "refusing" not in output
