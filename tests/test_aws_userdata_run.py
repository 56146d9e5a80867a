"""The rendered user-data, run: stub commands stand in for dnf, IMDS, the AWS CLI, pip and systemd.

The script's absolute paths are moved under a temporary directory; everything else runs as
rendered. The ``curl`` stub answers like IMDSv2 (a session token first, then metadata only with
that token), the ``aws`` stub serves the real wheel and the token, ``pip`` and ``systemctl``
record their arguments.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provisioning.artifacts import build_wheel
from provisioning.userdata import Delivery, node_script, worker_script

INSTANCE_ID = "i-0123456789abcdef0"
PRIVATE_IP = "10.0.0.7"
TOKEN = "the-cluster-token"

STUBS = {
    "curl": r"""#!/bin/bash
# IMDSv2: PUT /latest/api/token gives a session; metadata needs it in a header.
method=GET; url=""; headers=()
while [ $# -gt 0 ]; do
    case "$1" in
        -X) method=$2; shift 2 ;;
        -H) headers+=("$2"); shift 2 ;;
        --retry) shift 2 ;;
        -*) shift ;;
        *) url=$1; shift ;;
    esac
done
echo "curl $method $url ${headers[*]}" >> "$CALLS"
if [ "$method" = PUT ] && [ "$url" = http://169.254.169.254/latest/api/token ]; then
    [[ "${headers[*]}" == *"X-aws-ec2-metadata-token-ttl-seconds: "* ]] || exit 22
    echo -n session-123; exit 0
fi
[[ "${headers[*]}" == *"X-aws-ec2-metadata-token: session-123"* ]] || exit 22  # IMDSv1: refused
case "$url" in
    */latest/meta-data/instance-id) echo -n "$STUB_INSTANCE_ID" ;;
    */latest/meta-data/local-ipv4) echo -n "$STUB_PRIVATE_IP" ;;
    *) exit 22 ;;
esac
""",
    "aws": r"""#!/bin/bash
echo "aws $*" >> "$CALLS"
if [ "$1 $2" = "s3 cp" ]; then
    [ -n "$STUB_S3_FAIL" ] && exit 1
    for last; do :; done
    cp "$STUB_WHEEL" "$last"; exit 0
fi
if [ "$1 $2" = "ssm get-parameter" ]; then echo "$STUB_TOKEN"; exit 0; fi
exit 1
""",
    "dnf": '#!/bin/bash\necho "dnf $*" >> "$CALLS"\n',
    "useradd": '#!/bin/bash\necho "useradd $*" >> "$CALLS"\n',
    "id": "#!/bin/bash\nexit 1\n",
    "systemctl": '#!/bin/bash\necho "systemctl $*" >> "$CALLS"\n',
    "shutdown": '#!/bin/bash\necho "shutdown $*" >> "$CALLS"\n',
    "python3.11": r"""#!/bin/bash
echo "python3.11 $*" >> "$CALLS"
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/bin/bash\necho "pip $*" >> "$CALLS"\n' > "$3/bin/pip"
chmod +x "$3/bin/pip"
""",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("dist"))


def run_script(script: str, root: Path, wheel, **extra_env: str) -> tuple[int, list[str], str]:
    bash = shutil.which("bash")
    assert bash
    for old, new in (("/var/log/tm-bootstrap.log", f"{root}/bootstrap.log"), ("/opt/tm", f"{root}/opt/tm"),
                     ("/etc/systemd/system", f"{root}/systemd"), ("/etc/tm", f"{root}/etc/tm")):
        script = script.replace(old, new)
    (root / "systemd").mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = root / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "STUB_INSTANCE_ID": INSTANCE_ID,
           "STUB_PRIVATE_IP": PRIVATE_IP, "STUB_TOKEN": TOKEN, "STUB_WHEEL": str(wheel.path), **extra_env}
    result = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    log = (root / "bootstrap.log").read_text() if (root / "bootstrap.log").exists() else ""
    return result.returncode, calls.read_text().splitlines() if calls.exists() else [], log


def delivery(wheel) -> Delivery:
    return Delivery("eu-west-1", f"s3://tm-demo-bucket/wheels/{wheel.filename}", "/tm/demo/cluster-token")


def test_worker_boot_installs_the_wheel_and_starts_with_its_instance_id(tmp_path, wheel):
    script = worker_script(delivery(wheel), ["http://10.0.0.5:8000", "http://10.0.1.6:8000"], 45)
    code, calls, log = run_script(script, tmp_path, wheel)
    assert code == 0, log
    installed = tmp_path / "opt/tm" / wheel.filename
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == wheel.sha256
    assert f'pip install --quiet --disable-pip-version-check {installed}' in calls
    assert f"aws s3 cp --only-show-errors --region eu-west-1 s3://tm-demo-bucket/wheels/{wheel.filename} {installed}" in calls
    assert calls[0].startswith("curl PUT http://169.254.169.254/latest/api/token")
    assert "curl GET http://169.254.169.254/latest/meta-data/instance-id X-aws-ec2-metadata-token: session-123" in calls
    secret = tmp_path / "etc/tm/secret.env"
    assert secret.read_text() == f"CLUSTER_TOKEN={TOKEN}\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    unit = (tmp_path / "systemd/tm-worker.service").read_text()
    assert (f"ExecStart={tmp_path}/opt/tm/venv/bin/python -m workerapp --worker-id {INSTANCE_ID} "
            "--idle-seconds 45 http://10.0.0.5:8000 http://10.0.1.6:8000\n") in unit
    assert "User=tm\n" in unit and TOKEN not in unit
    assert "systemctl start --no-block tm-worker.service" in calls
    assert not [c for c in calls if c.startswith("shutdown")]
    assert TOKEN not in log


def test_worker_whose_boot_fails_powers_off(tmp_path, wheel):
    script = worker_script(delivery(wheel), ["http://10.0.0.5:8000"], 45)
    code, calls, _ = run_script(script, tmp_path, wheel, STUB_S3_FAIL="1")
    assert code != 0
    assert calls[-1] == "shutdown -h now"
    assert not [c for c in calls if c.startswith("pip ") or c.startswith("systemctl")]


def test_node_boot_writes_its_settings_and_starts_gunicorn(tmp_path, wheel):
    script = node_script(delivery(wheel), {"NODE_NAME": "node-2", "LAUNCHER": "ec2", "TM_CLUSTER": "demo"})
    code, calls, log = run_script(script, tmp_path, wheel)
    assert code == 0, log
    settings = (tmp_path / "etc/tm/node.env").read_text().splitlines()
    assert settings == ["NODE_NAME=node-2", "LAUNCHER=ec2", "TM_CLUSTER=demo", "BIND=0.0.0.0:8000",
                        f"NODE_URL=http://{PRIVATE_IP}:8000"]
    unit = (tmp_path / "systemd/tm-node.service").read_text()
    assert f"ExecStart={tmp_path}/opt/tm/venv/bin/gunicorn --config python:nodeapp.gunicorn_conf wsgi:app" in unit
    assert f"EnvironmentFile={tmp_path}/etc/tm/secret.env" in unit
    assert "systemctl enable --now tm-node.service" in calls
    assert (tmp_path / "etc/tm/secret.env").read_text() == f"CLUSTER_TOKEN={TOKEN}\n"
    assert stat.S_IMODE((tmp_path / "etc/tm").stat().st_mode) == 0o700
    assert not [c for c in calls if c.startswith("shutdown")]  # a node never powers itself off
