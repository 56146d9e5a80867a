"""Node settings: defaults, then the environment variables of SPEC.md, then explicit overrides.

Every setting is validated here, in one place. A bad value raises ``ConfigError`` whose
message names the variable and the accepted range, and the node refuses to start.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LAUNCHERS = ("local", "ec2")


class ConfigError(ValueError):
    """A setting has a value the node cannot run with."""


@dataclass(frozen=True)
class Setting:
    """One tunable: its environment variable, type, default and accepted range."""

    env: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is str:
            return "a string"
        word = "an integer" if self.kind is int else "a number"
        low, high = (f"{v:d}" if self.kind is int else f"{v:g}" for v in (self.low, self.high or 0))
        if self.high is None:
            return f"{word} >= {low}"
        return f"{word} from {low} to {high}"

    def parse(self, raw: Any) -> Any:
        if self.kind is str:
            value = str(raw).strip()
            if self.choices and value not in self.choices:
                raise ConfigError(f"{self.env}={raw!r} is not valid: expected {self.describe_range()}")
            return value
        try:
            if self.kind is int:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                value = int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
            else:
                value = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.env}={raw!r} is not valid: expected {self.describe_range()}"
            ) from None
        if math.isnan(value) or (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise ConfigError(f"{self.env}={raw!r} is out of range: expected {self.describe_range()}")
        return value


#: Every setting of a node, keyed by its NodeConfig field name.
SETTINGS: dict[str, Setting] = {
    "node_name": Setting("NODE_NAME", str, "", help="name shown in /health and logs (default: host name)"),
    "node_url": Setting("NODE_URL", str, "", help="URL workers use to reach this node (default: from the bind address)"),
    "peer_url": Setting("PEER_URL", str, "", help="the other node's URL; empty = no peer yet"),
    "cluster_token": Setting("CLUSTER_TOKEN", str, "", help="shared secret for internal endpoints"),
    "max_workers": Setting("MAX_NUM_OF_WORKERS", int, 5, 0, 1000, help="workers this node may run"),
    "launcher": Setting("LAUNCHER", str, "local", choices=LAUNCHERS, help="how workers are started"),
    "scale_interval": Setting("SCALE_INTERVAL", float, 2.0, 0.05, 3600, help="seconds between scaler runs"),
    "scale_wait": Setting("SCALE_WAIT", float, 2.0, 0, 3600, help="seconds the oldest task may wait before scaling up"),
    "worker_idle_seconds": Setting("WORKER_IDLE_SECONDS", float, 60.0, 0.1, 86400, help="a worker with no task this long exits"),
    "lease_seconds": Setting("LEASE_SECONDS", float, 30.0, 0.1, 86400, help="time a worker holds a claimed task without heartbeat"),
    "max_attempts": Setting("MAX_ATTEMPTS", int, 5, 1, 1000, help="lost leases before a task is failed"),
    "boot_timeout": Setting("BOOT_TIMEOUT", float, 300.0, 1, 86400, help="seconds a launched worker has to make its first claim"),
    "max_body_bytes": Setting("MAX_BODY_BYTES", int, 1024 * 1024, 0, 1024**3, help="largest task body"),
    "max_iterations": Setting("MAX_ITERATIONS", int, 10_000_000, 1, 10**12, help="largest iterations value"),
    "max_queued": Setting("MAX_QUEUED", int, 100_000, 1, 10**8, help="queued tasks before enqueue answers 503"),
    "results_retention": Setting("RESULTS_RETENTION", int, 100_000, 1, 10**8, help="completed results kept per node"),
    "hash_rate": Setting("HASH_RATE", float, 500_000.0, 1, 10**10, help="SHA-512 iterations per second one worker is assumed to do (for scaling)"),
    "summary_seconds": Setting("LOG_SUMMARY_SECONDS", float, 60.0, 0, 86400, help="seconds between summary log lines; 0 = none"),
    "claim_seconds": Setting("CLAIM_SECONDS", float, 1.0, 0.01, 60, help="work a worker may claim at once, in seconds"),
}


@dataclass(frozen=True)
class NodeConfig:
    """Validated settings of one node. Build with ``NodeConfig.load()``."""

    node_name: str = ""
    node_url: str = ""
    peer_url: str = ""
    cluster_token: str = field(default="", repr=False)
    max_workers: int = 5
    launcher: str = "local"
    scale_interval: float = 2.0
    scale_wait: float = 2.0
    worker_idle_seconds: float = 60.0
    lease_seconds: float = 30.0
    max_attempts: int = 5
    boot_timeout: float = 300.0
    max_body_bytes: int = 1024 * 1024
    max_iterations: int = 10_000_000
    max_queued: int = 100_000
    results_retention: int = 100_000
    hash_rate: float = 500_000.0
    claim_seconds: float = 1.0
    summary_seconds: float = 60.0

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> NodeConfig:
        """Defaults, then ``environ`` (``os.environ`` if None), then ``overrides`` by field name."""
        environ = os.environ if environ is None else environ
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            if name in overrides:
                raw = overrides[name]
            elif environ.get(setting.env, "").strip() != "":
                raw = environ[setting.env]
            else:
                raw = setting.default
            values[name] = setting.parse(raw)
        if not values["node_name"]:
            values["node_name"] = socket.gethostname()
        for url_field in ("node_url", "peer_url"):
            values[url_field] = values[url_field].rstrip("/")
            if values[url_field] and not values[url_field].startswith(("http://", "https://")):
                env = SETTINGS[url_field].env
                raise ConfigError(f"{env}={values[url_field]!r} is not valid: expected an http:// or https:// URL")
        if any(not "!" <= ch <= "~" for ch in values["cluster_token"]):  # never echo the secret
            raise ConfigError("CLUSTER_TOKEN is not valid: expected visible ASCII characters, no spaces "
                              "(it is sent in the X-Cluster-Token header)")
        return cls(**values)
