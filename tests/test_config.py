"""Settings: defaults, the environment, overrides, and a clear refusal for every bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import pytest

from nodeapp import create_app
from nodeapp.config import SETTINGS, ConfigError, NodeConfig
from tests.helpers import FakeLauncher
from tmcommon.settings import BOTH, NODE
from workerapp.__main__ import parse_args

# The accepted ranges, written out here on purpose (not read from SETTINGS): this is what a user
# is told, so the test pins it. (env, kind, low, high, how the range must be written)
NUMERIC = [
    ("MAX_NUM_OF_WORKERS", int, 0, 1000, "from 0 to 1000"),
    ("TM_LOCAL_MAX_WORKERS", int, 0, 10_000, "from 0 to 10000"),
    ("SCALE_INTERVAL", float, 0.05, 3600, "from 0.05 to 3600"),
    ("SCALE_WAIT", float, 0, 3600, "from 0 to 3600"),
    ("WORKER_IDLE_SECONDS", float, 0.1, 86400, "from 0.1 to 86400"),
    ("LEASE_SECONDS", float, 0.1, 86400, "from 0.1 to 86400"),
    ("MAX_ATTEMPTS", int, 1, 1000, "from 1 to 1000"),
    ("BOOT_TIMEOUT", float, 1, 86400, "from 1 to 86400"),
    ("MAX_BODY_BYTES", int, 0, 1024**3, "from 0 to 1073741824"),
    ("MAX_ITERATIONS", int, 1, 10**12, "from 1 to 1000000000000"),
    ("MAX_QUEUED", int, 1, 10**8, "from 1 to 100000000"),
    ("MAX_QUEUED_BYTES", int, 1, 2**40, "from 1 to 1099511627776"),
    ("LOAN_TTL_SECONDS", float, 2, 86400, "from 2 to 86400"),
    ("RESULTS_RETENTION", int, 1, 10**8, "from 1 to 100000000"),
    ("RESULTS_TTL_SECONDS", float, 0, 10 * 365 * 86400, "from 0 to 3.1536e+08"),
    ("PRIORITY_AGING_SECONDS", float, 0.01, 86400, "from 0.01 to 86400"),
    ("MAX_DELAY_SECONDS", float, 1, 365 * 86400, "from 1 to 3.1536e+07"),
    ("MAX_BATCH_TASKS", int, 1, 100_000, "from 1 to 100000"),
    ("MAX_BATCH_BYTES", int, 8, 1024**3, "from 8 to 1073741824"),
    ("IDEMPOTENCY_SECONDS", float, 1, 30 * 86400, "from 1 to 2.592e+06"),
    ("REUSE_PEER_MIN_ITERATIONS", int, 1, 10**12, "from 1 to 1000000000000"),
    ("PEER_TIMEOUT_SECONDS", float, 0.1, 30, "from 0.1 to 30"),
    ("IDEMPOTENCY_KEYS_BYTES", int, 1024**2, 2**40, "from 1048576 to 1099511627776"),
    ("KEPT_BODIES_BYTES", int, 0, 2**40, "from 0 to 1099511627776"),
    ("HASH_RATE", float, 1, 10**10, "from 1 to 1e+10"),
    ("CLAIM_SECONDS", float, 0.01, 60, "from 0.01 to 60"),
    ("LOG_SUMMARY_SECONDS", float, 0, 86400, "from 0 to 86400"),
    ("HISTORY_SECONDS", float, 0.1, 600, "from 0.1 to 600"),
    ("JOURNAL_BATCH_MS", float, 0, 1000, "from 0 to 1000"),
    ("JOURNAL_WAIT_SECONDS", float, 0.1, 600, "from 0.1 to 600"),
    ("WORKER_SILENCE_LEASES", float, 1, 1000, "from 1 to 1000"),
    ("WORKER_MAX_LIFETIME", float, 0, 30 * 86400, "from 0 to 2.592e+06"),
    ("TM_LIST_GRACE", float, 1, 86400, "from 1 to 86400"),
    ("TM_DESCRIBE_TTL", float, 0, 3600, "from 0 to 3600"),
    ("VERIFY_ITERATIONS", int, 0, 10**12, "from 0 to 1000000000000"),
    ("VERIFY_PROBATION", int, 0, 1000, "from 0 to 1000"),
    ("VERIFY_MAX_PENDING", int, 0, 10**12, "from 0 to 1000000000000"),
    ("VERIFY_RERUN_SECONDS", float, 0, 86400, "from 0 to 86400"),
]


def bad_values(kind: type, low: float, high: float) -> list[str]:
    values = ["abc", "", "1,5", "--1", str(low - 1), str(high + 1), "inf", "-inf", "nan"]
    values.remove("")  # empty means "not set", tested separately
    if kind is int:
        values += ["1.5", "1e3", "0x10", str(high * 10)]
    else:
        values += [str(low - 0.001) if low else "-0.001", "1..2"]
    return values


CASES = [(env, kind, low, high, words, value)
         for env, kind, low, high, words in NUMERIC for value in bad_values(kind, low, high)]


@pytest.mark.parametrize("env, kind, low, high, words, value", CASES,
                         ids=[f"{c[0]}={c[5]}" for c in CASES])
def test_bad_numeric_value_stops_start_up_naming_variable_and_range(env, kind, low, high, words, value):
    with pytest.raises(ConfigError) as raised:
        create_app(environ={env: value}, launcher=FakeLauncher())
    message = str(raised.value)
    assert env in message
    assert words in message
    assert ("an integer" if kind is int else "a number") in message


@pytest.mark.parametrize("env, kind, low, high, words", NUMERIC, ids=[n[0] for n in NUMERIC])
def test_range_edges_are_accepted(env, kind, low, high, words):
    field = next(name for name, s in SETTINGS.items() if s.env == env)
    for value in (low, high):
        text = str(int(value)) if kind is int else repr(float(value))
        environ = {env: text, **({"SCALE_INTERVAL": "0.5"} if env == "LOAN_TTL_SECONDS" else {})}
        assert getattr(NodeConfig.load(environ), field) == value
        assert isinstance(getattr(NodeConfig.load(environ), field), kind)


@pytest.mark.parametrize("value", ["EC2", "aws", "Local", "local,ec2", "k8s"])
def test_bad_launcher(value):
    with pytest.raises(ConfigError) as raised:
        create_app(environ={"LAUNCHER": value})
    assert "LAUNCHER" in str(raised.value) and "local" in str(raised.value) and "ec2" in str(raised.value)


@pytest.mark.parametrize("env", ["PEER_URL", "NODE_URL"])
@pytest.mark.parametrize("value", ["127.0.0.1:8000", "ftp://127.0.0.1", "htp://x", "localhost"])
def test_bad_urls(env, value):
    with pytest.raises(ConfigError) as raised:
        create_app(environ={env: value}, launcher=FakeLauncher())
    assert env in str(raised.value) and "http://" in str(raised.value)


def test_every_numeric_setting_is_covered():
    numeric = {s.env for s in SETTINGS.values() if s.kind is not str}
    assert numeric == {n[0] for n in NUMERIC}


def test_defaults_match_spec():
    config = NodeConfig.load({})
    assert config.max_workers == 5
    assert config.max_body_bytes == 1024 * 1024
    assert config.max_iterations == 10_000_000
    assert config.max_attempts == 5
    assert config.launcher == "local"
    assert config.peer_url == "" and config.cluster_token == ""
    assert config.node_name  # the host name when NODE_NAME is not set


def test_environment_is_read_and_overrides_win():
    environ = {"MAX_NUM_OF_WORKERS": " 7 ", "LEASE_SECONDS": "2.5", "PEER_URL": "http://127.0.0.1:9/",
               "NODE_NAME": "n1", "CLUSTER_TOKEN": "s3cret", "LAUNCHER": "ec2", "MAX_QUEUED": ""}
    config = NodeConfig.load(environ, {"lease_seconds": 4})
    assert (config.max_workers, config.lease_seconds, config.peer_url) == (7, 4.0, "http://127.0.0.1:9")
    assert (config.node_name, config.cluster_token, config.launcher) == ("n1", "s3cret", "ec2")
    assert config.max_queued == 100_000  # empty = not set
    assert "s3cret" not in repr(config)


def test_bad_override_is_refused_like_the_environment():
    with pytest.raises(ConfigError, match="MAX_ATTEMPTS"):
        NodeConfig.load({}, {"max_attempts": 0})
    with pytest.raises(ConfigError, match="no_such"):
        NodeConfig.load({}, {"no_such": 1})


def test_create_app_reads_os_environ(monkeypatch):
    monkeypatch.setenv("MAX_NUM_OF_WORKERS", "3")
    monkeypatch.setenv("NODE_NAME", "from-env")
    app = create_app(launcher=FakeLauncher())
    assert app.extensions["nodeapp"].config.max_workers == 3
    assert app.test_client().get("/health").get_json()["node"] == "from-env"
    monkeypatch.setenv("MAX_ATTEMPTS", "zero")
    with pytest.raises(ConfigError, match="MAX_ATTEMPTS"):
        create_app(launcher=FakeLauncher())


@pytest.mark.parametrize("token", ["密码", "tok en", "tab\tbed", "line\nbreak", "ünïcode"])
def test_cluster_token_must_travel_in_a_header(token):
    with pytest.raises(ConfigError) as raised:
        create_app(environ={"CLUSTER_TOKEN": token}, launcher=FakeLauncher())
    message = str(raised.value)
    assert "CLUSTER_TOKEN" in message and "ASCII" in message
    assert token.strip() not in message  # a secret is never echoed


def test_generated_style_tokens_are_accepted():
    token = "Az09-_.~!#$%&'*+^`|" + "x" * 40
    assert NodeConfig.load({"CLUSTER_TOKEN": token}).cluster_token == token


# ------------------------------------------------------------------ the one schema, its other readers
def test_node_config_has_a_field_per_setting_the_node_reads():
    node_reads = {name for name, s in SETTINGS.items() if s.read_by in (NODE, BOTH)}
    assert {f.name for f in fields(NodeConfig)} == node_reads
    assert "worker_id" not in node_reads  # read by workers only
    assert all(f.default == SETTINGS[f.name].default for f in fields(NodeConfig))


@pytest.mark.parametrize("env, value, words", [
    ("WORKER_IDLE_SECONDS", "abc", "a number from 0.1 to 86400"),
    ("WORKER_IDLE_SECONDS", "0", "a number from 0.1 to 86400"),
    ("CLAIM_SECONDS", "61", "a number from 0.01 to 60"),
    ("CLUSTER_TOKEN", "tok en", "visible ASCII"),
])
def test_worker_refuses_a_bad_environment_value_in_one_line(env, value, words):
    environ = {**os.environ, "CLUSTER_TOKEN": "t", env: value}
    result = subprocess.run([sys.executable, "-m", "workerapp", "http://127.0.0.1:9"], env=environ,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert env in line and words in line


def test_worker_options_default_to_the_environment_and_flags_win():
    environ = {"WORKER_IDLE_SECONDS": "7", "CLAIM_SECONDS": "0.5", "WORKER_ID": "w1", "CLUSTER_TOKEN": "t"}
    args = parse_args(["http://127.0.0.1:9"], environ=environ)
    assert (args.worker_idle_seconds, args.claim_seconds, args.worker_id, args.cluster_token) == (7, 0.5, "w1", "t")
    args = parse_args(["--idle-seconds", "3", "http://127.0.0.1:9"], environ={"WORKER_IDLE_SECONDS": "7"})
    assert (args.worker_idle_seconds, args.claim_seconds) == (3, SETTINGS["claim_seconds"].default)


def test_worker_flag_out_of_range_is_refused_with_the_range(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(["--claim-seconds", "0", "http://127.0.0.1:9"], environ={})
    assert exited.value.code == 2
    assert "--claim-seconds: '0' is out of range: expected a number from 0.01 to 60" in capsys.readouterr().err


def test_aws_mode_passes_every_node_setting_it_does_not_set_itself():
    from tmrun.aws import PASSED_SETTINGS, SET_PER_NODE

    node_envs = {s.env for s in SETTINGS.values() if s.read_by in (NODE, BOTH)}
    assert set(PASSED_SETTINGS) >= node_envs - set(SET_PER_NODE)
    assert not set(PASSED_SETTINGS) & set(SET_PER_NODE)


def test_a_loan_ttl_below_three_scaler_runs_stops_start_up_and_its_default_follows_the_interval():
    with pytest.raises(ConfigError) as raised:
        create_app(environ={"LOAN_TTL_SECONDS": "5", "SCALE_INTERVAL": "2"}, launcher=FakeLauncher())
    assert "LOAN_TTL_SECONDS=5" in str(raised.value) and "3 × SCALE_INTERVAL (6)" in str(raised.value)
    with pytest.raises(ConfigError):
        NodeConfig.load({}, {"loan_ttl": 3.0, "scale_interval": 2.0})
    assert NodeConfig.load({"LOAN_TTL_SECONDS": "6", "SCALE_INTERVAL": "2"}).loan_ttl == 6.0
    assert NodeConfig.load({"SCALE_INTERVAL": "10"}).loan_ttl == 30.0  # unset: raised to fit, as documented
    assert NodeConfig.load({}).loan_ttl == 6.0
    app = create_app(environ={"LOAN_TTL_SECONDS": "9"}, launcher=FakeLauncher())
    assert app.extensions["nodeapp"].node.workers.loan_ttl == 9.0
