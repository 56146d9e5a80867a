"""Shared fixtures. Every test runs with a clean environment and cannot reach past loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.helpers import FakeLauncher, once_per_run, shared_dir
from tests.netguard import sitecustomize as netguard

TOKEN = "test-token"


@pytest.fixture(autouse=True, scope="session")
def loopback_only(tmp_path_factory):
    """Tests reach nothing beyond loopback (moto invents real-looking IPs): a connection to
    another address fails the test, here and in the Python processes tests start (``netguard``:
    they log it to a file each test looks at). pip gets no index (``PIP_NO_INDEX``): what it
    installs comes from ``wheelhouse``, built from this venv when a test asks for it."""

    def refuse(address):
        raise AssertionError(f"test tried to connect to non-loopback address {address!r}")

    real_connect, real_connect_ex = netguard.install(refuse)
    log = tmp_path_factory.getbasetemp() / "net-guard.log"
    log.touch()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [netguard.DIRECTORY, os.environ.get("PYTHONPATH")])),
           netguard.LOG_ENV: str(log), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(shared_dir(tmp_path_factory) / "wheelhouse")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield log
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(autouse=True)
def subprocesses_stay_on_loopback(loopback_only):
    """Fail the test if a process it started tried to connect past loopback (see ``netguard``)."""
    before = loopback_only.stat().st_size
    yield
    with loopback_only.open() as log:
        log.seek(before)
        tried = log.read()
    assert not tried, f"a process the test started tried to leave loopback:\n{tried}"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """The directory ``PIP_FIND_LINKS`` names, filled once per run (``tests/wheelhouse.py``)."""
    from tests.wheelhouse import build

    shared = shared_dir(tmp_path_factory)
    return once_per_run(shared / "wheelhouse.pickle", lambda: build(shared / "wheelhouse"))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Each test starts without the node settings of the caller's shell (as Flask's own tests do)."""
    saved = dict(os.environ)
    from nodeapp.config import SETTINGS

    for setting in SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def launcher():
    return FakeLauncher()


@pytest.fixture
def app(launcher):
    from nodeapp import create_app

    # These tests post made-up digests (RESULT = "ab" * 64): no spot-checks, which would catch them
    # (tests/test_verification.py turns them on).
    return create_app({"cluster_token": TOKEN, "node_name": "test-node", "node_url": "http://127.0.0.1:1",
                       "verify_iterations": 0}, launcher=launcher)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth():
    return {"X-Cluster-Token": TOKEN}


# ------------------------------------------------------------------ running in parallel (xdist)
def pytest_itemcollected(item):
    """``-n`` with ``--dist loadgroup`` (setup.cfg): the tests of a module that use one of its
    module-scoped fixtures (a cluster, a browser) run in one worker process, which starts it once
    and runs them in their order; the rest are spread one by one."""
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures and any(d.scope == "module" for defs in fixtures.name2fixturedefs.values() for d in defs):
        item.add_marker(pytest.mark.xdist_group(Path(item.nodeid.split("::")[0]).stem))


def pytest_collection_finish(session):
    """Refuse to run if xdist did not put the groups in the test ids (it groups by them): a
    module's cluster would then start in several workers, its tests in another order."""
    if getattr(session.config.option, "loadgroup", False):
        lost = [item.nodeid for item in session.items
                if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup did not group {lost[0]} (pytest and pytest-xdist versions?)")


def pytest_collection_modifyitems(config, items):
    """Modules with integration tests are handed out first, so that the long tests start early and
    the quick unit tests fill in at the end."""
    integration = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("integration")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in integration)


def pytest_sessionfinish(session, exitstatus):
    """With REQUIRE_NO_SKIP=1 (CI) a skipped test fails the run: every part must be there."""
    if os.environ.get("REQUIRE_NO_SKIP") != "1" or hasattr(session.config, "workerinput"):
        return  # xdist's workers report to the controlling process, which decides
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        if reporter:
            reporter.write_line(f"REQUIRE_NO_SKIP=1: {len(skipped)} test(s) skipped", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
