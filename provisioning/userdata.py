"""User-data scripts for node and worker instances (pure text; no AWS call, no secret).

Both scripts install this project's wheel from the cluster bucket into a venv, read the
instance's own id and address through IMDSv2, fetch the cluster token from SSM Parameter Store
with the instance role into a root-only file, and start the program as a systemd service run
by an unprivileged user. Nothing secret is ever written into the user-data itself, and the
scripts never enable ``set -x`` (which would log the token).

The worker's service powers the machine off when the worker exits, and so does any failure
during its boot: with shutdown behaviour ``terminate`` the instance then stops costing.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from provisioning.naming import NODE_PORT

VENV = "/opt/tm/venv"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:,@+=-]*$")


@dataclass(frozen=True)
class Delivery:
    """Where an instance gets its code and its token."""

    region: str
    wheel_uri: str  # s3://bucket/key.whl
    token_parameter: str

    @property
    def wheel_file(self) -> str:
        return self.wheel_uri.rsplit("/", 1)[-1]


_PRELUDE = r"""#!/bin/bash
# Scalable task manager: __KIND__ bootstrap, rendered by provisioning.userdata. Holds no secret.
set -euo pipefail
exec >>/var/log/tm-bootstrap.log 2>&1
__FAILSAFE__
REGION=__REGION__
WHEEL_URI=__WHEEL_URI__
WHEEL_FILE=__WHEEL_FILE__
TOKEN_PARAMETER=__TOKEN_PARAMETER__

imds() {  # IMDSv2: a session token first, then the metadata path
    local session
    session=$(curl -sfS --retry 5 -X PUT http://169.254.169.254/latest/api/token \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
    curl -sfS --retry 5 -H "X-aws-ec2-metadata-token: ${session}" \
        "http://169.254.169.254/latest/meta-data/$1"
}
INSTANCE_ID=$(imds instance-id)
PRIVATE_IP=$(imds local-ipv4)
echo "bootstrap of ${INSTANCE_ID} (${PRIVATE_IP}) started"

dnf install -y -q python3.11 python3.11-pip
id tm >/dev/null 2>&1 || useradd --system --home-dir /opt/tm --shell /sbin/nologin tm
install -d -m 755 /opt/tm
python3.11 -m venv __VENV__
aws s3 cp --only-show-errors --region "${REGION}" "${WHEEL_URI}" "/opt/tm/${WHEEL_FILE}"
__VENV__/bin/pip install --quiet --disable-pip-version-check "/opt/tm/${WHEEL_FILE}"

install -d -m 700 /etc/tm
(
    umask 077
    token=$(aws ssm get-parameter --region "${REGION}" --name "${TOKEN_PARAMETER}" \
        --with-decryption --query Parameter.Value --output text)
    printf 'CLUSTER_TOKEN=%s\n' "${token}" > /etc/tm/secret.env
)
"""

_NODE = r"""
cat > /etc/tm/node.env <<ENV
__NODE_ENV__
NODE_URL=http://${PRIVATE_IP}:__PORT__
ENV
chmod 644 /etc/tm/node.env

cat > /etc/systemd/system/tm-node.service <<'UNIT'
[Unit]
Description=Scalable task manager node
After=network-online.target
Wants=network-online.target

[Service]
User=tm
EnvironmentFile=/etc/tm/node.env
EnvironmentFile=/etc/tm/secret.env
WorkingDirectory=/opt/tm
ExecStart=__VENV__/bin/gunicorn --config python:nodeapp.gunicorn_conf wsgi:app
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now tm-node.service
echo "node service started"
"""

_WORKER = r"""
cat > /etc/systemd/system/tm-worker.service <<UNIT
[Unit]
Description=Scalable task manager worker (the machine powers off when it exits)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=tm
EnvironmentFile=/etc/tm/secret.env
WorkingDirectory=/opt/tm
ExecStart=__VENV__/bin/python -m workerapp --worker-id ${INSTANCE_ID} __WORKER_ARGS__
ExecStopPost=+/usr/bin/systemctl poweroff --no-block
Restart=no
# "+": the power-off runs as root although the worker runs as the unprivileged user tm
UNIT
systemctl daemon-reload
systemctl start --no-block tm-worker.service
trap - EXIT
echo "worker service started"
"""


def _fill(text: str, values: Mapping[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"__{key}__", value)
    leftover = re.search(r"__[A-Z_]+__", text)
    if leftover:
        raise ValueError(f"template placeholder {leftover.group(0)} was not filled")
    return text


def _check_safe(name: str, value: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise ValueError(f"{name}={value!r}: only letters, digits and _./:,@+=- may go into user-data")
    return value


def _prelude(kind: str, delivery: Delivery, failsafe: str) -> str:
    return _fill(_PRELUDE, {
        "KIND": kind, "FAILSAFE": failsafe, "VENV": VENV,
        "REGION": shlex.quote(_check_safe("region", delivery.region)),
        "WHEEL_URI": shlex.quote(_check_safe("wheel_uri", delivery.wheel_uri)),
        "WHEEL_FILE": shlex.quote(_check_safe("wheel_file", delivery.wheel_file)),
        "TOKEN_PARAMETER": shlex.quote(_check_safe("token_parameter", delivery.token_parameter)),
    })


def node_script(delivery: Delivery, env: Mapping[str, str], port: int = NODE_PORT) -> str:
    """User-data of a node: ``env`` becomes the service's environment (never CLUSTER_TOKEN)."""
    if "CLUSTER_TOKEN" in env:
        raise ValueError("CLUSTER_TOKEN must not go into user-data: nodes read it from SSM")
    env = {**env, "BIND": f"0.0.0.0:{port}"}
    lines = [f"{key}={_check_safe(key, str(value))}" for key, value in env.items()]
    body = _fill(_NODE, {"NODE_ENV": "\n".join(lines), "PORT": str(port), "VENV": VENV})
    return _prelude("node", delivery, "") + body


def worker_script(delivery: Delivery, node_urls: list[str], idle_seconds: float, *, spot: bool = False) -> str:
    """User-data of a worker that pulls from ``node_urls`` (own node first) and uses its instance id.
    A ``spot`` worker watches the instance metadata for EC2's interruption notice."""
    if not 1 <= len(node_urls) <= 2:
        raise ValueError("a worker pulls from its own node and at most one peer")
    urls = " ".join(_check_safe("node_url", url) for url in node_urls)
    failsafe = "trap 'shutdown -h now' EXIT  # a failed boot powers off: the instance terminates"
    args = f"--idle-seconds {float(idle_seconds):g}{' --spot' if spot else ''} {urls}"
    body = _fill(_WORKER, {"VENV": VENV, "WORKER_ARGS": args})
    return _prelude("worker", delivery, failsafe) + body
