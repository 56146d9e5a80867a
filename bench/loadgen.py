"""Load on ``PUT /enqueue``: wrk (Debian's package) when installed, else a Python generator.

Both keep ``connections`` keep-alive connections busy for ``duration`` seconds and report
requests/s, p50/p99 latency in ms and the count of non-201 answers. Each request's body is its
own (a random tag of the run, the connection or wrk thread, a counter) unless ``distinct=False``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import percentile

WRK_SCRIPT = """
wrk.method = "%(method)s"
wrk.body = string.rep("x", %(body)d)
wrk.headers["Content-Type"] = "application/octet-stream"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
if %(distinct)s then  -- a body of its own per request: this run's tag, the thread, a counter
  local sent = 0
  request = function()
    sent = sent + 1
    local tail = string.format("%%s-%%d-%%d", "%(tag)s", tid, sent)
    return wrk.format(nil, nil, nil, string.rep("x", %(body)d - #tail) .. tail)
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON " .. string.format(
    '{"requests": %%d, "duration_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, "bad_status": %%d, "timeouts": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%f}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean) .. "\\n")
end
"""


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, *, connections: int = 16, threads: int = 2, duration: float = 10.0, body: int = 64,
            distinct: bool = True, method: str = "PUT") -> dict:
    """``wrk`` against ``url`` (a full ``.../enqueue?iterations=1`` URL); ``distinct``: every
    request's body differs (else all are the same ``body`` bytes); ``method`` GET sends none."""
    if method == "GET":
        body, distinct = 0, False
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"body": body, "distinct": "true" if distinct else "false", "tag": os.urandom(6).hex(),
                                   "method": method})
    try:
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "5s",
             "-s", script.name, url],
            capture_output=True, text=True, timeout=duration + 30, check=True,
        ).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    raw = json.loads(line[len("WRKJSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "bad_status", "timeouts"))
    return {"tool": "wrk", "requests": raw["requests"], "seconds": seconds, "rps": raw["requests"] / seconds,
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000, "errors": errors,
            "connections": connections}


class _Conn:
    """One keep-alive HTTP connection that reconnects after an error."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def run_python(url: str, *, connections: int = 16, duration: float = 10.0, body: int = 64,
               count: int | None = None, distinct: bool = True, method: str = "PUT") -> dict:
    """The same load from Python threads (GIL-bound: a lower ceiling than wrk). Stops after
    ``duration`` seconds, or after ``count`` requests in total when given. A ``GET`` sends no
    body and expects 200 (a ``PUT`` expects 201)."""
    if method == "GET":
        body, distinct = 0, False
    parts = urlsplit(url)
    path = parts.path + ("?" + parts.query if parts.query else "")
    tag = os.urandom(6).hex()
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    sent = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def load(i: int) -> None:
        conn = _Conn(url)
        while time.monotonic() < deadline:
            if count is not None:
                with lock:
                    if sent[0] >= count:
                        return
                    sent[0] += 1
            tail = f"{tag}-{i}-{len(latencies[i]) + errors[i]}".encode() if distinct else b""
            payload = b"x" * (body - len(tail)) + tail
            start = time.perf_counter()
            try:
                status, _ = conn.request(method, path, payload, {"Content-Type": "application/octet-stream"})
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                continue
            latencies[i].append(time.perf_counter() - start)
            if status != (200 if method == "GET" else 201):
                errors[i] += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    every = [x for part in latencies for x in part]
    return {"tool": "python", "requests": len(every), "seconds": seconds, "rps": len(every) / seconds,
            "p50_ms": percentile(every, 50) * 1000, "p99_ms": percentile(every, 99) * 1000,
            "errors": sum(errors), "connections": connections}


def run_load(url: str, *, tool: str = "auto", **kwargs) -> dict:
    """wrk if ``tool`` is ``wrk``, or ``auto`` and wrk is installed; else the Python generator."""
    if tool == "wrk" or (tool == "auto" and have_wrk()):
        return run_wrk(url, **kwargs)
    kwargs.pop("threads", None)
    return run_python(url, **kwargs)
