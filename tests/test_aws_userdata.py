"""Rendered user-data: bash -n, IMDSv2, the right bundle and command, no secret (the wheel and the
bundles themselves: tests/test_aws_artifacts.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from provisioning.proxy import ProxySettings, render
from provisioning.userdata import Delivery, node_script, worker_script

SECRET = "s3cr3t-token-never-in-user-data"
DELIVERY = Delivery("eu-west-1", "s3://tm-demo-123456789012-eu-west-1/bundles/node-x86_64-0123456789abcdef.tar",
                    "/tm/demo/cluster-token")
NODE_ENV = {"NODE_NAME": "node-1", "LAUNCHER": "ec2", "MAX_NUM_OF_WORKERS": "3", "TM_CLUSTER": "demo",
            "TM_WORKER_SUBNETS": "subnet-aaa,subnet-bbb", "SCALE_WAIT": "2"}


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
    assert "CLUSTER_TOKEN=/tm/demo/cluster-token" in script  # read from SSM at boot, into a root-only file
    assert "set -x" not in script
    assert script.startswith("#!/bin/bash\n")
    assert len(script.encode()) < 16 * 1024  # EC2's user-data limit


def test_installs_the_bundle_from_the_bucket_and_reads_the_token_from_ssm(script):
    assert "BUNDLE_URI=s3://tm-demo-123456789012-eu-west-1/bundles/node-x86_64-0123456789abcdef.tar" in script
    assert 'retry aws s3 cp --only-show-errors --region "${REGION}" "${BUNDLE_URI}" /opt/tm/bundle.tar' in script
    assert ("/opt/tm/venv/bin/pip install --quiet --disable-pip-version-check --no-index --no-deps \\\n"
            "    /opt/tm/wheels/*.whl") in script
    assert "python3.11 -m venv /opt/tm/venv" in script
    assert 'aws ssm get-parameter --region "${REGION}" --name "$1" --with-decryption' in script
    assert "umask 077" in script


def test_reads_instance_id_through_imdsv2(script):
    assert "curl -sfS --retry 5 -X PUT http://169.254.169.254/latest/api/token" in script
    assert 'X-aws-ec2-metadata-token: ${session}' in script
    assert "INSTANCE_ID=$(imds instance-id)" in script


def test_worker_runs_workerapp_with_its_instance_id_and_powers_off():
    script = worker_script(DELIVERY, ["http://10.0.0.5:8000", "http://10.0.1.6:8000"], 45)
    assert ("ExecStart=/opt/tm/venv/bin/python -m workerapp --worker-id ${INSTANCE_ID} --lanes auto --idle-seconds 45 "
            "http://10.0.0.5:8000 http://10.0.1.6:8000") in script
    assert "ExecStopPost=+/usr/bin/systemctl poweroff --no-block" in script
    assert "shutdown -h now  # the instance terminates" in script  # a failed boot powers off too
    assert script.rstrip().splitlines()[-3:-1] == ["shutdown -c  # the boot finished: cancel the failsafe",
                                                   "trap - EXIT"]
    assert "EnvironmentFile=/etc/tm/secret.env" in script


def test_node_runs_gunicorn_with_its_settings():
    script = node_script(DELIVERY, NODE_ENV)
    assert "ExecStart=/opt/tm/venv/bin/gunicorn --config python:nodeapp.gunicorn_conf wsgi:app" in script
    for key, value in NODE_ENV.items():
        assert f"\n{key}={value}\n" in script
    assert "\nBIND=127.0.0.1:8001\n" in script  # behind nginx, which holds the node's port
    assert "NODE_URL=http://${PRIVATE_IP}:8000" in script
    assert "systemctl enable --now tm-node.service" in script


def test_node_writes_the_nginx_configuration_of_its_settings():
    script = node_script(DELIVERY, {**NODE_ENV, "MAX_BODY_BYTES": "5000"})
    conf = script[script.index("cat > /etc/nginx/nginx.conf <<'NGINX'\n"):].split("\n", 1)[1]
    conf = conf[:conf.index("\nNGINX\n") + 1]
    assert conf == render(ProxySettings.for_node({"MAX_BODY_BYTES": "5000"}, "8000", "127.0.0.1:8001", user="nginx",
                                                 access_log="/var/log/nginx/access.log"))
    assert "client_max_body_size 5000;" in conf and "listen 8000;" in conf


def test_refuses_the_token_and_unsafe_values():
    with pytest.raises(ValueError, match="CLUSTER_TOKEN"):
        node_script(DELIVERY, {**NODE_ENV, "CLUSTER_TOKEN": SECRET})
    with pytest.raises(ValueError, match="SCALE_WAIT"):
        node_script(DELIVERY, {**NODE_ENV, "SCALE_WAIT": "2; rm -rf /"})
    with pytest.raises(ValueError, match="node_url"):
        worker_script(DELIVERY, ["http://x:8000$(reboot)"], 60)
