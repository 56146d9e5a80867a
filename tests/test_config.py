"""Settings: defaults, the environment, overrides, and a clear refusal for every bad value."""

from __future__ import annotations

import pytest

from nodeapp import create_app
from nodeapp.config import SETTINGS, ConfigError, NodeConfig
from tests.helpers import FakeLauncher

# The accepted ranges, written out here on purpose (not read from SETTINGS): this is what a user
# is told, so the test pins it. (env, kind, low, high, how the range must be written)
NUMERIC = [
    ("MAX_NUM_OF_WORKERS", int, 0, 1000, "from 0 to 1000"),
    ("SCALE_INTERVAL", float, 0.05, 3600, "from 0.05 to 3600"),
    ("SCALE_WAIT", float, 0, 3600, "from 0 to 3600"),
    ("WORKER_IDLE_SECONDS", float, 0.1, 86400, "from 0.1 to 86400"),
    ("LEASE_SECONDS", float, 0.1, 86400, "from 0.1 to 86400"),
    ("MAX_ATTEMPTS", int, 1, 1000, "from 1 to 1000"),
    ("BOOT_TIMEOUT", float, 1, 86400, "from 1 to 86400"),
    ("MAX_BODY_BYTES", int, 0, 1024**3, "from 0 to 1073741824"),
    ("MAX_ITERATIONS", int, 1, 10**12, "from 1 to 1000000000000"),
    ("MAX_QUEUED", int, 1, 10**8, "from 1 to 100000000"),
    ("RESULTS_RETENTION", int, 1, 10**8, "from 1 to 100000000"),
    ("HASH_RATE", float, 1, 10**10, "from 1 to 1e+10"),
    ("CLAIM_SECONDS", float, 0.01, 60, "from 0.01 to 60"),
    ("LOG_SUMMARY_SECONDS", float, 0, 86400, "from 0 to 86400"),
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
        assert getattr(NodeConfig.load({env: text}), field) == value
        assert isinstance(getattr(NodeConfig.load({env: text}), field), kind)


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
