"""User-data scripts for node and worker instances (pure text; no AWS call, no secret).

Both scripts install this project's bundle (``provisioning.artifacts``: the wheel and the wheels
it needs, no PyPI) from the cluster bucket into a venv, read the instance's own id and address
through IMDSv2, fetch their tokens from SSM Parameter Store with the instance role into a
root-only file, and start the program as a systemd service run by an unprivileged user. Nothing
secret is ever written into the user-data itself, and the scripts never enable ``set -x``
(which would log a token).

Before its first AWS call an instance waits, up to CREDENTIALS_WAIT seconds, until IMDS serves
its instance profile's credentials (a new profile's take a while to arrive). Every step that goes
over the network is retried (5 tries, 2-16 s apart) and its duration is logged (``step NAME: Ns``) in /var/log/tm-bootstrap.log. A boot that fails says so on the
instance console (``aws ec2 get-console-output``) and powers the machine off: a worker at once
(shutdown behaviour ``terminate``: it stops costing), a node after FAILED_NODE_GRACE minutes
(left to look at over SSH; then ``stop``). A boot that hangs is powered off at its deadline.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from provisioning.naming import NODE_PORT
from provisioning.proxy import ProxySettings, render

VENV = "/opt/tm/venv"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_./:,@+=-]*$")


@dataclass(frozen=True)
class Delivery:
    """Where an instance gets its code and its token."""

    region: str
    bundle_uri: str  # s3://bucket/bundles/<role>-<arch>-<sha>.tar
    token_parameter: str  # the worker token (CLUSTER_TOKEN of workers and nodes)


#: Minutes a boot may take before the failsafe powers the machine off, and minutes a node whose
#: boot failed stays up for a look over SSH.
BOOT_DEADLINE_MINUTES = {"node": 25, "worker": 15}
FAILED_NODE_GRACE = 15
#: Seconds a boot waits for the instance profile's credentials in IMDS before its first AWS call.
CREDENTIALS_WAIT = 600
#: Seconds systemd lets a worker's service run beyond WORKER_MAX_LIFETIME (the worker stops itself
#: at that age; this ends one that hangs), then the unit's power-off terminates the instance.
LIFETIME_MARGIN = 600


_PRELUDE = r"""#!/bin/bash
# Scalable task manager: __KIND__ bootstrap, rendered by provisioning.userdata. Holds no secret.
set -euo pipefail
exec >>/var/log/tm-bootstrap.log 2>&1
REGION=__REGION__
BUNDLE_URI=__BUNDLE_URI__
STEP=start

say() {  # into the log, and onto the console that get-console-output shows
    echo "tm-bootstrap: $*"
    echo "tm-bootstrap: $*" >>/dev/console 2>/dev/null || true
}
step() {  # step NAME COMMAND...: run it, log how long it took, return its exit code
    local started=${SECONDS} code
    STEP=$1
    shift
    "$@"
    code=$?
    echo "step ${STEP}: $((SECONDS - started))s" >&2
    return "${code}"
}
retry() {  # retry COMMAND...: 5 tries, 2, 4, 8, 16 s apart (messages to stderr: the log)
    local attempt=1
    until "$@"; do
        if [ "${attempt}" -ge 5 ]; then
            echo "gave up after ${attempt} tries: $1 $2" >&2
            return 1
        fi
        echo "try ${attempt} failed: $1 $2; again in $((2 ** attempt))s" >&2
        sleep $((2 ** attempt))
        attempt=$((attempt + 1))
    done
}
failed() {
    say "__KIND__ boot FAILED at step ${STEP} (exit $1); details in /var/log/tm-bootstrap.log"
    __ON_FAILURE__
}
trap 'code=$?; [ "${code}" = 0 ] || failed "${code}"' EXIT
# the failsafe: a boot that hangs is powered off at its deadline (cancelled when the boot ends)
shutdown -h +__DEADLINE__ "tm: __KIND__ boot did not finish within __DEADLINE__ minutes"

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

step packages retry dnf install -y -q python3.11 python3.11-pip
wait_for_credentials() {  # a new instance profile's credentials can take minutes to reach IMDS
    local waited=0 role="" answer=""  # the answer holds the keys: never echoed
    until role=$(imds iam/security-credentials/ 2>/dev/null) && [ -n "${role}" ] \
            && answer=$(imds "iam/security-credentials/${role}" 2>/dev/null) \
            && [[ "${answer}" == *'"Code"'*'"Success"'* ]]; do
        if [ "${waited}" -ge __CREDENTIALS_WAIT__ ]; then
            echo "no instance-profile credentials in IMDS after ${waited}s" >&2
            return 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
    echo "instance-profile credentials of ${role} after ${waited}s" >&2
}
step credentials wait_for_credentials
id tm >/dev/null 2>&1 || useradd --system --home-dir /opt/tm --shell /sbin/nologin tm
install -d -m 755 /opt/tm /opt/tm/wheels
step venv python3.11 -m venv __VENV__
step bundle retry aws s3 cp --only-show-errors --region "${REGION}" "${BUNDLE_URI}" /opt/tm/bundle.tar
tar -xf /opt/tm/bundle.tar -C /opt/tm/wheels
# every wheel of the bundle, and nothing from PyPI
step install retry __VENV__/bin/pip install --quiet --disable-pip-version-check --no-index --no-deps \
    /opt/tm/wheels/*.whl

read_parameter() {  # a SecureString of SSM Parameter Store, read with the instance role
    aws ssm get-parameter --region "${REGION}" --name "$1" --with-decryption \
        --query Parameter.Value --output text
}
write_secrets() {  # VARIABLE=/parameter/name ... into the root-only /etc/tm/secret.env
    local pair value
    install -d -m 700 /etc/tm
    (umask 077 && : > /etc/tm/secret.env.new)
    for pair in "$@"; do
        value=$(retry read_parameter "${pair#*=}") || return 1
        printf '%s=%s\n' "${pair%%=*}" "${value}" >> /etc/tm/secret.env.new
    done
    mv /etc/tm/secret.env.new /etc/tm/secret.env
}
step secrets write_secrets __SECRETS__
"""

_EPILOGUE = r"""
shutdown -c  # the boot finished: cancel the failsafe
trap - EXIT
say "__KIND__ boot finished in ${SECONDS}s"
"""

_NODE = r"""
cat > /etc/tm/node.env <<ENV
__NODE_ENV__
NODE_URL=http://${PRIVATE_IP}:__PORT__
ENV
chmod 644 /etc/tm/node.env
__PEER__
# nginx holds the node's port and reads whole requests within deadlines; gunicorn is on loopback
# (provisioning/proxy.py rendered this file from the node's settings).
step nginx retry dnf install -y -q nginx
cat > /etc/nginx/nginx.conf <<'NGINX'
__NGINX_CONF__NGINX
if command -v setsebool >/dev/null 2>&1; then setsebool -P httpd_can_network_connect 1 || true; fi
systemctl enable --now nginx.service

cat > /etc/systemd/system/tm-node.service <<'UNIT'
[Unit]
Description=Scalable task manager node
After=network-online.target
Wants=network-online.target

[Service]
User=tm
# The node's journal (docs/durability.md): systemd makes /var/lib/taskmanager, owned by tm, on the
# root EBS volume, which a restart of the service, a reboot and EC2 automatic recovery keep.
StateDirectory=taskmanager
StateDirectoryMode=0700
Environment=DATA_DIR=/var/lib/taskmanager
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

#: The peer node's private address, found by its tags with the node's role: no /configure over the
#: internet. Without a peer in time the node runs alone (and says so on the console).
_PEER = r"""
if step peer __VENV__/bin/python -m provisioning.peer_lookup --region "${REGION}" __PEER_ARGS__ \
        >> /etc/tm/node.env; then
    echo "peer: $(grep '^PEER_URL=' /etc/tm/node.env)"
else
    say "no peer node found: this node runs alone"
fi
"""

_WORKER = r"""
# The C hash engine, compiled for this machine (x86_64 or arm64); without it the worker uses the
# hashlib loop and says so in its log.
# (setuptools, which native_build uses, comes with the bundle)
if step compiler retry dnf install -y -q gcc python3.11-devel \
        && step native __VENV__/bin/python -m workerapp.native_build; then
    echo "native hash engine built"
else
    echo "native hash engine not built: the worker uses the hashlib loop"
fi

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
ExecStart=__VENV__/bin/python -m workerapp --worker-id ${INSTANCE_ID} --lanes auto __WORKER_ARGS__
ExecStopPost=+/usr/bin/systemctl poweroff --no-block
Restart=no
# "+": the power-off runs as root although the worker runs as the unprivileged user tm
__RUNTIME_MAX__
UNIT
systemctl daemon-reload
systemctl start --no-block tm-worker.service
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


def _prelude(kind: str, delivery: Delivery, on_failure: str, secrets: Mapping[str, str]) -> str:
    pairs = {"CLUSTER_TOKEN": delivery.token_parameter, **secrets}
    return _fill(_PRELUDE, {
        "KIND": kind, "ON_FAILURE": on_failure, "VENV": VENV, "DEADLINE": str(BOOT_DEADLINE_MINUTES[kind]),
        "CREDENTIALS_WAIT": str(CREDENTIALS_WAIT),
        "REGION": shlex.quote(_check_safe("region", delivery.region)),
        "BUNDLE_URI": shlex.quote(_check_safe("bundle_uri", delivery.bundle_uri)),
        "SECRETS": " ".join(shlex.quote(_check_safe(f"secret {var}", f"{var}={name}")) for var, name in pairs.items()),
    })


def _epilogue(kind: str) -> str:
    return _fill(_EPILOGUE, {"KIND": kind})


def node_script(delivery: Delivery, env: Mapping[str, str], port: int = NODE_PORT, *,
                secrets: Mapping[str, str] | None = None, peer_name: str | None = None) -> str:
    """User-data of a node: ``env`` becomes the service's environment (never a token); ``secrets``
    maps more variables (PEER_TOKEN, ...) to the SSM parameters the node reads them from; with
    ``peer_name`` the node looks its peer up by tag (env must hold TM_CLUSTER) for PEER_URL."""
    leaked = {"CLUSTER_TOKEN", *(secrets or {})} & set(env)
    if leaked:
        raise ValueError(f"{', '.join(sorted(leaked))} must not go into user-data: nodes read it from SSM")
    proxy = ProxySettings.for_node(env, listen=str(port), upstream=f"127.0.0.1:{port + 1}", user="nginx",
                                   access_log="/var/log/nginx/access.log")
    env = {**env, "BIND": proxy.upstream}
    lines = [f"{key}={_check_safe(key, str(value))}" for key, value in env.items()]
    peer = ""
    if peer_name:
        args = (f"--cluster {_check_safe('TM_CLUSTER', env['TM_CLUSTER'])} --peer {_check_safe('peer', peer_name)} "
                f"--port {int(port)}")
        peer = _fill(_PEER, {"VENV": VENV, "PEER_ARGS": args})
    body = _fill(_NODE, {"NODE_ENV": "\n".join(lines), "PORT": str(port), "VENV": VENV, "PEER": peer,
                         "NGINX_CONF": render(proxy)})
    on_failure = f"shutdown -h +{FAILED_NODE_GRACE} \"tm: the node's boot failed\""  # then stopped
    return _prelude("node", delivery, on_failure, secrets or {}) + body + _epilogue("node")


def worker_script(delivery: Delivery, node_urls: list[str], idle_seconds: float, *, spot: bool = False,
                  max_lifetime: float = 0.0) -> str:
    """User-data of a worker that pulls from ``node_urls`` (own node first) and uses its instance id.
    A ``spot`` worker watches the instance metadata for EC2's interruption notice. With
    ``max_lifetime`` (WORKER_MAX_LIFETIME) the worker stops itself at that age, whether or not its
    node is still there, and systemd ends its service LIFETIME_MARGIN seconds later (then the
    machine powers off)."""
    if not 1 <= len(node_urls) <= 2:
        raise ValueError("a worker pulls from its own node and at most one peer")
    urls = " ".join(_check_safe("node_url", url) for url in node_urls)
    on_failure = "shutdown -h now  # the instance terminates"
    lifetime = f" --max-lifetime {float(max_lifetime):g}" if max_lifetime else ""
    args = f"--idle-seconds {float(idle_seconds):g}{lifetime}{' --spot' if spot else ''} {urls}"
    runtime_max = (f"# WORKER_MAX_LIFETIME: the worker stops itself then; this ends it if it hangs\n"
                   f"RuntimeMaxSec={int(max_lifetime) + LIFETIME_MARGIN}" if max_lifetime else "")
    body = _fill(_WORKER, {"VENV": VENV, "WORKER_ARGS": args, "RUNTIME_MAX": runtime_max})
    return _prelude("worker", delivery, on_failure, {}) + body + _epilogue("worker")
