"""The code AWS mode delivers, built exactly as AWS mode builds it (``provisioning.artifacts``), then
installed and run as the instances do: offline, from the bundles, each role in a fresh venv.

The wheel comes from ``pip wheel`` of this checkout (setup.cfg), the dependency wheels from
``pip download`` for the instances' platform (CPython 3.11, manylinux); here pip has no index but
the local ``wheelhouse`` (tests/wheelhouse.py: this venv's own distributions, each platform wheel
also retagged aarch64), so nothing is fetched. Only the x86_64 bundles can be installed, the arm64
one is checked for its platform tags.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from provisioning.artifacts import BUILD_IGNORE, PROJECT_ROOT, build_bundle, build_wheel
from provisioning.local_cluster import free_port
from tests.aws_helpers import artifacts  # noqa: F401
from tests.helpers import wait_for
from tests.netguard import sitecustomize as netguard

TOKEN = "artifact-test-token"
NODE_ONLY = ("flask", "gunicorn", "boto3", "botocore", "apscheduler", "prometheus_client", "rich")


def names(wheels) -> set[str]:
    return {name.split("-")[0].lower() for name in wheels}


def test_the_wheel_is_pip_built_from_the_metadata_pure_and_reproducible(tmp_path, artifacts):  # noqa: F811
    wheel = artifacts.wheel
    assert wheel.filename == "scalable_task_manager-0.1.0-py3-none-any.whl"  # one wheel for x86_64 and arm64
    with zipfile.ZipFile(wheel.path) as zf:
        files = set(zf.namelist())
    # what the hand-written zip missed: the dashboard's templates and static files, the client
    assert {"nodeapp/web/templates/dashboard.html", "nodeapp/web/static/dashboard.js", "nodeapp/gunicorn_conf.py",
            "tmclient/client.py", "tmcommon/settings.py", "wsgi.py", "run_program.py",
            "workerapp/_sha512chain.c"} <= files
    assert not [f for f in files if f.endswith(".so") or f.startswith("tests/")]
    cfg = configparser.ConfigParser()
    cfg.read(PROJECT_ROOT / "setup.cfg")
    declared = [line.strip() for line in cfg["options"]["install_requires"].splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert len([r for r in wheel.requires if "extra ==" not in r]) == len(declared)
    # the same source gives the same bytes (built twice from one snapshot of the checkout)
    snapshot = tmp_path / "src"
    shutil.copytree(PROJECT_ROOT, snapshot, ignore=shutil.ignore_patterns(*BUILD_IGNORE))
    assert build_wheel(tmp_path / "a", snapshot).sha256 == build_wheel(tmp_path / "b", snapshot).sha256


def test_each_bundle_holds_what_its_role_needs_for_its_platform(tmp_path, artifacts):  # noqa: F811
    node, worker = artifacts.bundle("node", "x86_64"), artifacts.bundle("worker", "x86_64")
    assert names(worker.wheels) == {"scalable_task_manager", "requests", "urllib3", "idna", "certifi",
                                    "charset_normalizer", "setuptools"}  # no flask, boto3, gunicorn
    assert set(NODE_ONLY) <= names(node.wheels) and "setuptools" not in names(node.wheels)
    for bundle in (node, worker):
        assert all(w.endswith("-none-any.whl") or ("cp311" in w and "x86_64" in w) for w in bundle.wheels)
        assert bundle.key == f"bundles/{bundle.role}-x86_64-{bundle.sha256[:16]}.tar"
    assert any("markupsafe" in w and "manylinux" in w for w in node.wheels)
    arm = build_bundle(artifacts.wheel, "worker", "arm64", tmp_path)  # only looked at: it cannot run here
    assert [w for w in arm.wheels if "-none-any" not in w] == [
        w for w in arm.wheels if w.startswith("charset_normalizer") and "aarch64" in w and "cp311" in w]


def venv_with(bundle, where: Path) -> Path:
    """A fresh venv with the bundle installed the way user-data installs it (offline, no deps)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True, timeout=300)
    house = where / "wheels"
    house.mkdir()
    shutil.unpack_archive(bundle.path, house, format="tar")
    done = subprocess.run([str(where / "bin/pip"), "install", "--quiet", "--disable-pip-version-check",
                           "--no-index", "--no-deps", *map(str, sorted(house.glob("*.whl")))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return where / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """Nothing of the checkout: only what the venv holds is importable (the PYTHONPATH holds only
    the loopback guard, tests/netguard)."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", netguard.LOG_ENV)}
    return {**keep, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": netguard.DIRECTORY, **extra}


@pytest.mark.integration
def test_a_node_and_a_worker_run_from_the_bundles(tmp_path, artifacts):  # noqa: F811
    node_bin = venv_with(artifacts.bundle("node", "x86_64"), tmp_path / "node")
    worker_bin = venv_with(artifacts.bundle("worker", "x86_64"), tmp_path / "worker")
    run_dir = tmp_path / "run"  # not the checkout: imports come from the venvs only
    run_dir.mkdir()

    # the worker's venv has no node code dependency, and its engine falls back without a compiler
    probe = subprocess.run([str(worker_bin / "python"), "-c", "import flask"], cwd=run_dir, env=clean_env(),
                           capture_output=True, timeout=60)
    assert probe.returncode != 0
    no_compiler = subprocess.run([str(worker_bin / "python"), "-m", "workerapp.native_build"], cwd=run_dir,
                                 env=clean_env(CC="false"), capture_output=True, text=True, timeout=300)
    assert no_compiler.returncode == 1, no_compiler.stdout + no_compiler.stderr
    assert "not built" in no_compiler.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    node = subprocess.Popen(
        [str(node_bin / "gunicorn"), "--config", "python:nodeapp.gunicorn_conf", "wsgi:app"], cwd=run_dir,
        env=clean_env(BIND=f"127.0.0.1:{port}", CLUSTER_TOKEN=TOKEN, NODE_NAME="node-art", LAUNCHER="local",
                      MAX_NUM_OF_WORKERS="0", NODE_URL=url),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        def healthy():
            try:
                return requests.get(url + "/health", timeout=2).status_code == 200
            except requests.RequestException:
                assert node.poll() is None, node.stderr.read()
                return False

        wait_for(healthy, timeout=120, what="the node from the bundle answers /health")
        dashboard = requests.get(url + "/", timeout=5)
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
        assert requests.get(url + "/dashboard/static/dashboard.js", timeout=5).status_code == 200

        data = b"bundled"
        task = requests.put(url + "/enqueue", params={"iterations": 2000}, data=data, timeout=5).json()["id"]
        worker = subprocess.Popen(
            [str(worker_bin / "python"), "-m", "workerapp", "--worker-id", "w-art", "--idle-seconds", "2", url],
            cwd=run_dir, env=clean_env(CLUSTER_TOKEN=TOKEN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        expected = hashlib.sha512(data).digest()
        for _ in range(1999):
            expected = hashlib.sha512(expected).digest()
        status = wait_for(lambda: (s := requests.get(f"{url}/status/{task}", timeout=5).json()).get("result") and s,
                          timeout=120, what="the worker from the bundle completes the task")
        assert status["result"] == expected.hex()
        worker.wait(timeout=60)  # idle for 2 s: worker_down, then exit 0
        assert worker.returncode == 0
        assert "hash engine: python" in worker.stderr.read()  # the hashlib loop: nothing was compiled
    finally:
        for proc in (worker, node):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
