"""Rendered user-data (bash -n, IMDSv2, the right wheel and command, no secret) and the wheel itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from provisioning.artifacts import build_wheel
from provisioning.userdata import Delivery, node_script, worker_script

SECRET = "s3cr3t-token-never-in-user-data"
DELIVERY = Delivery("eu-west-1", "s3://tm-demo-123456789012-eu-west-1/wheels/scalable_task_manager-0.1.0-py3-none-any.whl",
                    "/tm/demo/cluster-token")
NODE_ENV = {"NODE_NAME": "node-1", "LAUNCHER": "ec2", "MAX_NUM_OF_WORKERS": "3", "TM_CLUSTER": "demo",
            "TM_WORKER_SUBNET": "subnet-aaa", "SCALE_WAIT": "2"}


def bash_syntax_ok(script: str) -> None:
    bash = shutil.which("bash")
    assert bash, "bash is needed for this test"
    result = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(params=["node", "worker"])
def script(request) -> str:
    if request.param == "node":
        return node_script(DELIVERY, NODE_ENV)
    return worker_script(DELIVERY, ["http://10.0.0.5:8000", "http://10.0.1.6:8000"], 60)


def test_bash_syntax_and_no_secret(script):
    bash_syntax_ok(script)
    assert SECRET not in script
    assert "CLUSTER_TOKEN=%s" in script  # written from SSM at boot, into a root-only file
    assert "set -x" not in script
    assert script.startswith("#!/bin/bash\n")
    assert len(script.encode()) < 16 * 1024  # EC2's user-data limit


def test_installs_the_wheel_from_the_bucket_and_reads_the_token_from_ssm(script):
    assert "WHEEL_URI=s3://tm-demo-123456789012-eu-west-1/wheels/scalable_task_manager-0.1.0-py3-none-any.whl" in script
    assert 'aws s3 cp --only-show-errors --region "${REGION}" "${WHEEL_URI}" "/opt/tm/${WHEEL_FILE}"' in script
    assert '/opt/tm/venv/bin/pip install --quiet --disable-pip-version-check "/opt/tm/${WHEEL_FILE}"' in script
    assert "python3.11 -m venv /opt/tm/venv" in script
    assert "aws ssm get-parameter --region \"${REGION}\" --name \"${TOKEN_PARAMETER}\"" in script
    assert "TOKEN_PARAMETER=/tm/demo/cluster-token" in script
    assert "umask 077" in script


def test_reads_instance_id_through_imdsv2(script):
    assert "curl -sfS --retry 5 -X PUT http://169.254.169.254/latest/api/token" in script
    assert 'X-aws-ec2-metadata-token: ${session}' in script
    assert "INSTANCE_ID=$(imds instance-id)" in script


def test_worker_runs_workerapp_with_its_instance_id_and_powers_off():
    script = worker_script(DELIVERY, ["http://10.0.0.5:8000", "http://10.0.1.6:8000"], 45)
    assert ("ExecStart=/opt/tm/venv/bin/python -m workerapp --worker-id ${INSTANCE_ID} --idle-seconds 45 "
            "http://10.0.0.5:8000 http://10.0.1.6:8000") in script
    assert "ExecStopPost=+/usr/bin/systemctl poweroff --no-block" in script
    assert "trap 'shutdown -h now' EXIT" in script  # a failed boot powers off too
    assert script.rstrip().splitlines()[-2] == "trap - EXIT"
    assert "EnvironmentFile=/etc/tm/secret.env" in script


def test_node_runs_gunicorn_with_its_settings():
    script = node_script(DELIVERY, NODE_ENV)
    assert "ExecStart=/opt/tm/venv/bin/gunicorn --config python:nodeapp.gunicorn_conf wsgi:app" in script
    for key, value in NODE_ENV.items():
        assert f"\n{key}={value}\n" in script
    assert "\nBIND=0.0.0.0:8000\n" in script
    assert "NODE_URL=http://${PRIVATE_IP}:8000" in script
    assert "systemctl enable --now tm-node.service" in script


def test_refuses_the_token_and_unsafe_values():
    with pytest.raises(ValueError, match="CLUSTER_TOKEN"):
        node_script(DELIVERY, {**NODE_ENV, "CLUSTER_TOKEN": SECRET})
    with pytest.raises(ValueError, match="SCALE_WAIT"):
        node_script(DELIVERY, {**NODE_ENV, "SCALE_WAIT": "2; rm -rf /"})
    with pytest.raises(ValueError, match="node_url"):
        worker_script(DELIVERY, ["http://x:8000$(reboot)"], 60)


def test_the_wheel_installs_offline_and_holds_the_project(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    assert wheel.filename == "scalable_task_manager-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel.path) as zf:
        names = set(zf.namelist())
        metadata = zf.read("scalable_task_manager-0.1.0.dist-info/METADATA").decode()
    assert {"wsgi.py", "nodeapp/gunicorn_conf.py", "workerapp/__main__.py", "provisioning/ec2_launcher.py"} <= names
    assert "Requires-Dist: gunicorn" in metadata and "Requires-Python: >=3.11" in metadata
    assert build_wheel(tmp_path / "again").sha256 == wheel.sha256  # same code, same bytes
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(wheel.path)],
                   check=True, capture_output=True, timeout=120)
    probe = subprocess.run([sys.executable, "-c", "import wsgi, nodeapp.gunicorn_conf, workerapp.__main__; "
                            "import nodeapp; print(nodeapp.__file__)"],
                           cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(target))
