"""nginx in front of a node: its configuration, rendered from the node's settings, and a local
nginx process for local mode (``run_program.py --local --proxy``).

AWS mode writes the same rendered file to ``/etc/nginx/nginx.conf`` from the node's user-data
(``provisioning.userdata``), so the configuration the tests run is the one a node ships with.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

from tmcommon.settings import NODE, read_settings

TEMPLATE = "nginx.conf"

#: nginx's own refusals, answered in the node's error shape: (status, code, message).
ERRORS = (
    (400, "bad_request", "the request is malformed"),
    (408, "request_timeout", "the request was not sent in time"),
    (413, "body_too_large", "the body is over the limit (MAX_BODY_BYTES for /enqueue, MAX_BATCH_BYTES for "
                            "/enqueue_batch)"),
    (414, "uri_too_long", "the request line is too long"),
    (494, "headers_too_large", "a request header is too large"),
    (502, "node_unavailable", "the node behind this proxy is not answering; retry or use the other node"),
    (503, "too_many_requests", "too many requests in progress from this address or in all; retry shortly"),
    (504, "node_timeout", "the node did not answer in time"),
)


@dataclass(frozen=True)
class ProxySettings:
    """What the rendered nginx.conf enforces. Times are seconds, sizes bytes."""

    listen: str  # nginx's address: "8000" (all addresses) or "127.0.0.1:8001"
    upstream: str  # gunicorn's address on loopback: "127.0.0.1:8010"
    max_body_bytes: int = 1024 * 1024  # MAX_BODY_BYTES: the largest body of PUT /enqueue
    max_batch_bytes: int = 16 * 1024 * 1024  # MAX_BATCH_BYTES: the largest body of PUT /enqueue_batch
    json_body_bytes: int = 4 * 1024 * 1024  # other endpoints (nodeapp.web.bodies.MAX_JSON_BYTES)
    header_timeout: float = 5  # to send the request line and headers
    body_timeout: float = 10  # between two successive reads of the body
    send_timeout: float = 10  # between two successive writes of the answer
    keepalive_timeout: float = 15  # an idle kept-alive connection is closed after this
    keepalive_requests: int = 1000
    requests_per_client: int = 128  # requests in progress from one address
    requests_in_progress: int = 1024  # requests in progress in all
    worker_connections: int = 4096  # open connections (clients and gunicorn) per nginx worker
    worker_processes: int = 1
    upstream_connect_timeout: float = 2
    upstream_timeout: float = 30  # gunicorn's answer, and sending it the body
    upstream_keepalive: int = 16  # idle connections to gunicorn kept open
    upstream_keepalive_timeout: float = 4
    # where nginx keeps its files; AWS mode uses the system's, local mode a prefix directory
    user: str | None = None
    pid: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    access_log: str = "off"
    temp_dir: str | None = None

    @classmethod
    def for_node(cls, environ: Mapping[str, str], listen: str, upstream: str, **paths: str | None) -> ProxySettings:
        """The proxy of a node whose settings are ``environ`` (MAX_BODY_BYTES, MAX_BATCH_BYTES, validated)."""
        settings = read_settings(NODE, environ)
        # client_max_body_size 0 would mean "no limit": with MAX_BODY_BYTES=0 the node refuses any body itself
        return cls(listen=listen, upstream=upstream, max_body_bytes=max(1, settings["max_body_bytes"]),
                   max_batch_bytes=settings["max_batch_bytes"], **paths)


def render(settings: ProxySettings) -> str:
    """The nginx.conf text for ``settings``."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("provisioning", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True)
    env.filters["ms"] = lambda seconds: f"{round(seconds * 1000)}ms"  # nginx times take no fractions
    values = asdict(settings)
    values["body_buffer_bytes"] = min(settings.json_body_bytes, 256 * 1024)
    return env.get_template(TEMPLATE).render(**values, errors=ERRORS)


class NginxNotFound(RuntimeError):
    """No nginx binary: local mode's --proxy needs one (``apt-get install nginx``)."""


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise NginxNotFound("nginx is not installed (apt-get install nginx-light, dnf install nginx or "
                        "brew install nginx); run without --proxy to serve gunicorn directly")


class LocalProxy:
    """nginx as a child process, with everything it writes under its own ``prefix`` directory.

    Args:
        listen_port, upstream_port: nginx's port and gunicorn's, both on 127.0.0.1.
        environ: the node's settings (MAX_BODY_BYTES).
        prefix: nginx's directory (config, pid, logs, temp files); created.
    """

    def __init__(self, listen_port: int, upstream_port: int, environ: Mapping[str, str], prefix: Path) -> None:
        self.prefix = Path(prefix).resolve()
        self.settings = ProxySettings.for_node(
            environ, f"127.0.0.1:{listen_port}", f"127.0.0.1:{upstream_port}",
            # as root, nginx's workers would run as "nobody", who may not reach a private prefix
            user="root" if os.geteuid() == 0 else None,
            pid=str(self.prefix / "nginx.pid"), error_log=str(self.prefix / "error.log"),
            access_log=str(self.prefix / "access.log"), temp_dir=str(self.prefix / "tmp"),
        )
        self.conf = self.prefix / "nginx.conf"
        self.process: subprocess.Popen | None = None

    def _command(self, *extra: str) -> list[str]:
        return [find_nginx(), "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log"),
                *extra]

    def start(self) -> LocalProxy:
        """Write the config, check it (``nginx -t``), start nginx in the foreground of its own process."""
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render(self.settings))
        check = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused {self.conf}:\n{check.stderr}")
        self.process = subprocess.Popen(self._command("-g", "daemon off;"), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGQUIT (finish requests in progress), SIGKILL after ``grace`` seconds."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the master and its workers
            proc.wait()

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except OSError:
            return ""
