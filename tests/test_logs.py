"""Logs: one line per event that matters, JSON lines on request, never a task body or the token."""

from __future__ import annotations

import json
import logging

import pytest
import requests

from provisioning.local_cluster import LocalCluster
from tests.helpers import wait_for
from tmcommon.logs import configure_logging

pytestmark = pytest.mark.integration

BODY = b"BODY-THAT-MUST-NOT-BE-LOGGED"


def test_json_logs_carry_events_and_no_secret(tmp_path):
    cluster = LocalCluster(env={"LOG_FORMAT": "json", "SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0.2",
                                "WORKER_IDLE_SECONDS": "1", "MAX_NUM_OF_WORKERS": "1", "LOG_SUMMARY_SECONDS": "0.5"},
                           log_dir=tmp_path)
    with cluster:
        a = cluster.urls[0]
        task = requests.put(f"{a}/enqueue", params={"iterations": 10}, data=BODY, timeout=5).json()["id"]
        wait_for(lambda: requests.get(f"{a}/stats", timeout=5).json()["workers"]["down_total"] >= 1, 60,
                 what="a worker to run the task and go down")
        assert requests.get(f"{a}/status/{task}", timeout=5).json()["state"] == "completed"
    text = (tmp_path / "node-a.log").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    messages = " | ".join(e["msg"] for e in entries)
    for event in ("worker launched", "worker seen", "worker down", "summary:", "scaler started", "Booting worker"):
        assert event in messages, f"no {event!r} line in the node log"
    assert BODY.decode() not in text and cluster.token not in text


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_writes_json_lines_with_the_traceback(root_logger, monkeypatch, capsys):
    monkeypatch.setenv("LOG_FORMAT", "json")
    configure_logging("debug")
    log = logging.getLogger("tm.test")
    log.debug("hello %s", "there")
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.exception("it failed")
    logging.getLogger("urllib3").info("noise")  # libraries stay at WARNING
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (first["level"], first["logger"], first["msg"]) == ("debug", "tm.test", "hello there")
    assert second["msg"] == "it failed" and "ZeroDivisionError: boom" in second["exc"]


def test_configure_logging_reads_the_level_and_writes_text_by_default(root_logger, monkeypatch, capsys):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    configure_logging()
    logging.getLogger("tm.test").info("not shown")
    logging.getLogger("tm.test").warning("shown")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING tm.test: shown")
