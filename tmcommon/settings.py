"""The settings schema: every environment variable a node or a worker reads, described once.

Everything else is made from ``SETTINGS``:

- ``nodeapp.config.NodeConfig``: an attribute per setting the node reads (``config.max_workers``);
- the worker's options and their environment defaults (``python -m workerapp --help``);
- the settings table of README.md, between the ``settings:start`` and ``settings:end`` markers;
- the node settings that AWS mode passes from the caller's environment to the nodes.

Adding a setting is one entry in ``SETTINGS`` below: its attribute name, variable, type, default,
range (or ``choices``/``form``), help, ``read_by`` (NODE, WORKER or BOTH) and, for the worker, the
``option`` it takes on the command line. Then run ``python -m tmcommon.settings --update
README.md`` to regenerate the README table (tests/test_readme.py fails until it matches), and read
the value as ``config.<name>`` in the node or ``args.<name>`` in the worker.

Every value is validated here: a bad one raises ``ConfigError`` naming the variable and the
accepted range. This module imports nothing of the project's other packages.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE, WORKER, BOTH = "node", "worker", "both"
README_START, README_END = "<!-- settings:start -->", "<!-- settings:end -->"


class ConfigError(ValueError):
    """A setting has a value the program cannot run with."""


@dataclass(frozen=True)
class TextForm:
    """What a string setting must look like; the empty string (not set) is always accepted."""

    describe: str
    accepts: Callable[[str], bool]
    normalize: Callable[[str], str] = str


URL = TextForm("an http:// or https:// URL", lambda v: v.startswith(("http://", "https://")),
               lambda v: v.rstrip("/"))
HEADER_SAFE = TextForm("visible ASCII characters, no spaces", lambda v: all("!" <= ch <= "~" for ch in v))


@dataclass(frozen=True)
class Setting:
    """One tunable: attribute name, environment variable, type, default and accepted range."""

    name: str
    env: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    read_by: str = NODE
    choices: tuple[str, ...] | None = None
    form: TextForm | None = None
    secret: bool = False  # never echoed in messages nor in a repr
    shown_default: str | None = None  # how the README shows the default, if not the value itself
    option: str | None = None  # the worker's command-line option

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.form:
            return self.form.describe
        if self.kind is str:
            return "a string"
        word = "an integer" if self.kind is int else "a number"
        low, high = (f"{v:d}" if self.kind is int else f"{v:g}" for v in (self.low, self.high or 0))
        if self.high is None:
            return f"{word} >= {low}"
        return f"{word} from {low} to {high}"

    def describe_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.kind is str:
            return f"`{self.default}`" if self.default else "none"
        return f"{self.default:g}" if self.kind is float else str(self.default)

    def parse(self, raw: Any, label: str | None = None) -> Any:
        """The value of ``raw`` (text or a number), or ``ConfigError`` naming ``label`` (the variable).

        ``label=""`` names only the value (for a command-line option, which argparse names).
        """
        label = self.env if label is None else label
        shown = label if self.secret else f"{label}={raw!r}" if label else repr(raw)

        def refused(problem: str = "is not valid") -> ConfigError:
            return ConfigError(f"{shown} {problem}: expected {self.describe_range()}")

        if self.kind is str:
            value = str(raw).strip()
            if self.form:
                value = self.form.normalize(value)
                if value and not self.form.accepts(value):
                    raise refused()
            if self.choices and value not in self.choices:
                raise refused()
            return value
        try:
            if self.kind is int:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                value = int(str(raw).strip()) if not isinstance(raw, (int, float)) else int(raw)
            else:
                value = float(raw)
        except (TypeError, ValueError):
            raise refused() from None
        if math.isnan(value) or (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise refused("is out of range")
        return value


#: Every setting, keyed by its attribute name (NodeConfig field, worker option dest).
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("max_workers", "MAX_NUM_OF_WORKERS", int, 5, 0, 1000, "workers this node may run on its own quota"),
    Setting("node_name", "NODE_NAME", str, "", shown_default="host name",
            help="name in `/health`, `/stats`, logs and worker ids"),
    Setting("node_url", "NODE_URL", str, "", form=URL, shown_default="from the bind address",
            help="the URL workers use to reach this node"),
    Setting("peer_url", "PEER_URL", str, "", form=URL,
            help="the other node (can also be set by `POST /configure`)"),
    Setting("worker_peer_url", "WORKER_PEER_URL", str, "", form=URL, shown_default="`PEER_URL`",
            help="the other node's URL as given to the workers this node launches, when they reach it "
                 "by another address than this node does"),
    Setting("cluster_token", "CLUSTER_TOKEN", str, "", form=HEADER_SAFE, secret=True, read_by=BOTH,
            help="shared secret of the internal endpoints (without it they all answer 401), sent by workers "
                 "and the peer in the `X-Cluster-Token` header"),
    Setting("peer_token", "PEER_TOKEN", str, "", form=HEADER_SAFE, secret=True, shown_default="`CLUSTER_TOKEN`",
            help="the token of the peer node: only it may borrow and return worker slots (`/try_get_node_quota`, "
                 "`/renew_quota`, `/return_quota`); this node sends it to its peer. AWS mode gives the nodes "
                 "their own, which workers never see"),
    Setting("operator_token", "OPERATOR_TOKEN", str, "", form=HEADER_SAFE, secret=True,
            shown_default="`PEER_TOKEN`",
            help="the only token `POST /configure` accepts (AWS mode: in SSM, never sent by `run_program.py`)"),
    Setting("actions_token", "ACTIONS_TOKEN", str, "", form=HEADER_SAFE, secret=True, shown_default="none (no token)",
            help="when set, `POST /cancel` and `POST /retry` need it (or the operator or peer token) in "
                 "`X-Cluster-Token`; without it a task's id is all they need"),
    Setting("api_keys", "API_KEYS", str, "off", choices=("off", "required"),
            help="`required`: the task endpoints (enqueue, status, results, cancel, retry) take a client "
                 "key in `X-Api-Key` (or the operator token); keys are made and revoked with `tm keys` (AWS mode: "
                 "`required`, with a first key in SSM)"),
    Setting("api_key", "API_KEY", str, "", form=HEADER_SAFE, secret=True,
            help="a client key every node accepts from start, besides those made by `POST /keys` (AWS mode: in SSM)"),
    Setting("launcher", "LAUNCHER", str, "local", choices=("local", "ec2"), help="how workers are started"),
    Setting("local_max_workers", "TM_LOCAL_MAX_WORKERS", int, 0, 0, 10_000, shown_default="0: the CPUs here",
            help="`LAUNCHER=local`: worker processes a node runs at once (more would only share the same cores); "
                 "a node's effective capacity is the lower of this and its quota, shown with its reason in "
                 "`/stats`, the dashboard, `tm stats` and each scaling decision"),
    Setting("scale_interval", "SCALE_INTERVAL", float, 2.0, 0.05, 3600, "seconds between scaler runs"),
    Setting("scale_wait", "SCALE_WAIT", float, 2.0, 0, 3600,
            "seconds the oldest task may wait before the scaler adds workers"),
    Setting("loan_ttl", "LOAN_TTL_SECONDS", float, 6.0, 2, 86400, shown_default="6, or 3 × `SCALE_INTERVAL` if more",
            help="seconds a worker slot lent to the peer stays lent unless the borrower renews it; the borrower "
                 "renews on each scaler run and gives up a slot it could not renew for 2/3 of this time. A value "
                 "below 3 × `SCALE_INTERVAL` stops start-up (a loan must outlive a few scaler runs)"),
    Setting("worker_idle_seconds", "WORKER_IDLE_SECONDS", float, 60.0, 0.1, 86400, read_by=BOTH,
            option="--idle-seconds",
            help="seconds without a task from either node after which a worker calls `worker_down` and exits"),
    Setting("lease_seconds", "LEASE_SECONDS", float, 30.0, 0.1, 86400,
            "seconds a claimed task stays leased without a heartbeat"),
    Setting("max_attempts", "MAX_ATTEMPTS", int, 5, 1, 1000, "lost leases before a task is `failed`"),
    Setting("boot_timeout", "BOOT_TIMEOUT", float, 300.0, 1, 86400,
            "seconds a launched worker has to make its first claim; then it is terminated and its slot freed. "
            "Boots that fail in a row hold launches back, doubling from 30 s to 16 min, until a worker claims"),
    Setting("worker_silence", "WORKER_SILENCE_LEASES", float, 3.0, 1, 1000,
            "lease periods (`LEASE_SECONDS`) a live worker of this node may go without calling it (claim, "
            "heartbeat, complete) before it is taken for hung, terminated and its tasks requeued"),
    Setting("worker_max_lifetime", "WORKER_MAX_LIFETIME", float, 21600.0, 0, 30 * 86400,
            shown_default="21600 (6 h)", read_by=BOTH, option="--max-lifetime",
            help="seconds after its launch at which a worker is terminated and replaced if still needed (its "
                 "tasks resume from their checkpoints); a worker also stops by itself this long after it started, "
                 "whether or not its node is still there (EC2: systemd ends it 10 minutes later if it hangs); "
                 "0 = no limit"),
    Setting("list_grace", "TM_LIST_GRACE", float, 120.0, 1, 86400,
            "`LAUNCHER=ec2`: seconds a just-launched worker instance that `DescribeInstances` does not list yet "
            "counts as running; then it is terminated by id (it counts until EC2 took that request). At least "
            "`TM_DESCRIBE_TTL`: a shorter grace is refused at start"),
    Setting("describe_ttl", "TM_DESCRIBE_TTL", float, 30.0, 0, 3600,
            "`LAUNCHER=ec2`: seconds a `DescribeInstances` answer is used before it is asked again"),
    Setting("max_body_bytes", "MAX_BODY_BYTES", int, 1024 * 1024, 0, 1024**3, "largest task body, in bytes",
            shown_default="1048576 (1 MiB)"),
    Setting("max_iterations", "MAX_ITERATIONS", int, 10_000_000, 1, 10**12, "largest `iterations`"),
    Setting("max_queued", "MAX_QUEUED", int, 100_000, 1, 10**8,
            "queued tasks at which `enqueue` answers 503 `queue_full`"),
    Setting("max_queued_bytes", "MAX_QUEUED_BYTES", int, 256 * 1024**2, 1, 2**40,
            shown_default="268435456 (256 MiB)",
            help="bytes of task bodies a node holds (queued and running) beyond which `enqueue` answers 503 "
                 "`queue_full`; the default fits the 1 GiB node instance of AWS mode"),
    Setting("results_retention", "RESULTS_RETENTION", int, 100_000, 1, 10**8,
            "completed results (and, separately, failed tasks) kept per node"),
    Setting("results_ttl", "RESULTS_TTL_SECONDS", float, 0.0, 0, 10 * 365 * 86400,
            "seconds a completed result (or a failed task) is kept, besides the `RESULTS_RETENTION` count; "
            "0 = no age limit"),
    Setting("priority_aging", "PRIORITY_AGING_SECONDS", float, 60.0, 0.01, 86400,
            "seconds of waiting worth one priority step: a queued task is served as if enqueued `priority` × this "
            "earlier, so a task is never overtaken by one enqueued more than (9 − its priority) × this after it"),
    Setting("max_delay", "MAX_DELAY_SECONDS", float, 30 * 86400.0, 1, 365 * 86400, shown_default="2592000 (30 d)",
            help="furthest in the future a task's `not_before` or `deadline` may be"),
    Setting("max_batch_tasks", "MAX_BATCH_TASKS", int, 1000, 1, 100_000,
            "tasks one `PUT /enqueue_batch` may carry"),
    Setting("max_batch_bytes", "MAX_BATCH_BYTES", int, 16 * 1024**2, 8, 1024**3, shown_default="16777216 (16 MiB)",
            help="largest `PUT /enqueue_batch` request body, framing included"),
    Setting("idempotency_seconds", "IDEMPOTENCY_SECONDS", float, 86400.0, 1, 30 * 86400,
            "seconds a node remembers an `Idempotency-Key` (the same key then returns the same task id)"),
    Setting("idempotency_keys_bytes", "IDEMPOTENCY_KEYS_BYTES", int, 64 * 1024**2, 1024**2, 2**40,
            shown_default="67108864 (64 MiB)",
            help="memory the remembered `Idempotency-Key`s may take (each counted as its length + 600 bytes: "
                 "about 78,000 keys of 255 characters); past it the oldest are forgotten before "
                 "`IDEMPOTENCY_SECONDS`"),
    Setting("kept_bodies_bytes", "KEPT_BODIES_BYTES", int, 64 * 1024**2, 0, 2**40, shown_default="67108864 (64 MiB)",
            help="bodies of failed and cancelled tasks kept for `retry` (the oldest dropped first; 0 = none: "
                 "such a task cannot be retried)"),
    Setting("peer_timeout", "PEER_TIMEOUT_SECONDS", float, 1.8, 0.1, 30,
            "seconds a call to the peer node may take in all (a third of it, at most 0.5 s, to connect) before this "
            "node answers without the peer's part (`X-Peer-Unavailable`); the default keeps within SPEC.md's 2 s"),
    Setting("reuse_peer_min_iterations", "REUSE_PEER_MIN_ITERATIONS", int, 100_000, 1, 10**12,
            "a task with at least this many iterations is also matched against the peer's kept results before "
            "it is queued (one peer call on the enqueue path); cheaper tasks are matched on the receiving node only"),
    Setting("verify_iterations", "VERIFY_ITERATIONS", int, 10_000, 0, 10**12,
            "spot-checks: a result of n iterations is recomputed (whole, or one segment and the last) with "
            "probability min(1, this / n), so tasks this short are always checked; 0 = no checks "
            "(docs/verification.md)"),
    Setting("verify_probation", "VERIFY_PROBATION", int, 2, 0, 1000,
            "the first results a node gets from each worker are all spot-checked, whatever their length"),
    Setting("verify_max_pending", "VERIFY_MAX_PENDING", int, 5_000_000, 0, 10**12,
            "iterations of spot-checks a node may have waiting; a result that would go past it is accepted "
            "unchecked (counted as skipped)"),
    Setting("verify_rerun_seconds", "VERIFY_RERUN_SECONDS", float, 600.0, 0, 86400,
            "a quarantined worker's unchecked results of this many seconds back are taken back and computed "
            "again by other workers"),
    Setting("hash_rate", "HASH_RATE", float, 500_000.0, 1, 10**10,
            "SHA-512 iterations per second the scaler assumes one worker does, to turn a backlog into "
            "seconds of work"),
    Setting("claim_seconds", "CLAIM_SECONDS", float, 1.0, 0.01, 60, read_by=BOTH, option="--claim-seconds",
            help="seconds of work a worker may claim at once (the node counts them at `HASH_RATE`, "
                 "the worker at its measured rate)"),
    Setting("summary_seconds", "LOG_SUMMARY_SECONDS", float, 60.0, 0, 86400,
            "seconds between summary log lines; 0 = none"),
    Setting("history_seconds", "HISTORY_SECONDS", float, 10.0, 0.1, 600,
            "seconds between two samples of the dashboard's chart (`GET /history` keeps the newest 360: an hour "
            "at the default)"),
    Setting("data_dir", "DATA_DIR", str, "", shown_default="none: in memory only",
            help="directory of the node's journal: the tasks it accepted, its kept results and counters survive "
                 "a restart of the node (one node per directory; see docs/durability.md)"),
    Setting("journal_sync", "JOURNAL_SYNC", str, "off", choices=("off", "always", "batch"),
            help="when a journal write counts as durable, before the answer: `off` = written to the OS "
                 "(survives a crash of the node, not a power cut); `always` = fsynced too (survives a power cut; "
                 "each answer waits for an fsync); `batch` = as `always`, at most one fsync every `JOURNAL_BATCH_MS` "
                 "(see docs/durability.md)"),
    Setting("journal_batch_ms", "JOURNAL_BATCH_MS", float, 5.0, 0, 1000,
            "`batch`: shortest time between two journal commits, in milliseconds"),
    Setting("journal_wait_seconds", "JOURNAL_WAIT_SECONDS", float, 5.0, 0.1, 600,
            "longest a request waits for its journal commit before it is answered 503 `journal_unavailable` "
            "(and `/health` says the journal is stuck)"),
    Setting("worker_id", "WORKER_ID", str, "", read_by=WORKER, option="--worker-id", shown_default="host-pid",
            help="this worker's id, as its node knows it"),
)}


def default(name: str) -> Any:
    """The schema's default of setting ``name`` (its attribute name): constructors take their
    defaults from here, so that a default is written once."""
    return SETTINGS[name].default


def read_by(component: str) -> dict[str, Setting]:
    """The settings that ``component`` (NODE or WORKER) reads."""
    return {name: s for name, s in SETTINGS.items() if s.read_by in (component, BOTH)}


def read_settings(
    component: str, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults, then ``environ`` (empty = not set), then ``overrides`` by name; all validated."""
    chosen = read_by(component)
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(chosen)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values = {}
    for name, setting in chosen.items():
        if name in overrides:
            raw = overrides[name]
        elif environ.get(setting.env, "").strip() != "":
            raw = environ[setting.env]
        else:
            raw = setting.default
        values[name] = setting.parse(raw)
    given = {name for name, s in chosen.items() if name in overrides or environ.get(s.env, "").strip() != ""}
    return _related(values, given)


def _related(values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Rules between settings: a loan outlives three scaler runs. A value that breaks one was
    given and is refused; a default that would is raised to fit."""
    if "loan_ttl" in values and "scale_interval" in values:
        floor = 3 * values["scale_interval"]
        if values["loan_ttl"] < floor:
            if "loan_ttl" in given:
                raise ConfigError(f"LOAN_TTL_SECONDS={values['loan_ttl']:g} is below 3 × SCALE_INTERVAL ({floor:g}): "
                                  "a loan must outlive a few scaler runs; raise it, or leave it unset")
            values["loan_ttl"] = floor
    return values


def add_options(parser: argparse.ArgumentParser, component: str, values: Mapping[str, Any]) -> None:
    """An option per setting of ``component`` that has one, defaulting to ``values`` (read_settings)."""
    for name, setting in read_by(component).items():
        if setting.option:
            def parse(text: str, setting: Setting = setting) -> Any:
                try:
                    return setting.parse(text, label="")
                except ConfigError as exc:
                    raise argparse.ArgumentTypeError(str(exc)) from None

            accepted = "" if setting.kind is str and not setting.form else f", {setting.describe_range()}"
            text = f"{setting.help} [env {setting.env}, default {setting.describe_default()}{accepted}]"
            parser.add_argument(setting.option, dest=name, type=parse, default=values[name],
                                help=text.replace("`", "").replace("%", "%%"))


def markdown_table() -> str:
    """The README's settings table."""
    rows = ["| variable | default | accepted | read by | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS.values():
        rows.append(f"| `{s.env}` | {s.describe_default()} | {s.describe_range()} | {s.read_by} | {s.help} |")
    return "\n".join(rows)


def readme_table(text: str) -> str:
    """The table between the markers of ``text`` (README.md), without the markers."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return text[start:end].strip()


def with_table(text: str) -> str:
    """``text`` with the region between the markers replaced by the current table."""
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    return f"{text[:start]}\n{markdown_table()}\n{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tmcommon.settings", description="The settings table.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the README's settings table")
    action.add_argument("--update", type=Path, metavar="README",
                        help=f"rewrite the table between {README_START} and {README_END} in this file")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
    else:
        args.update.write_text(with_table(args.update.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
