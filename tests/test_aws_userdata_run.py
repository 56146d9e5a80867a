"""The rendered user-data, run: stub commands stand in for dnf, IMDS, the AWS CLI, pip and systemd.

The script's absolute paths are moved under a temporary directory; everything else runs as
rendered. The ``curl`` stub answers like IMDSv2 (a session token first, then metadata only with
that token), the ``aws`` stub serves the real bundle (``provisioning.artifacts``) and the tokens,
``pip``, ``systemctl``, ``shutdown`` and ``sleep`` record their arguments (``sleep`` does not
wait), and the venv's ``python`` answers the peer lookup when ``STUB_PEER`` is set.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provisioning.proxy import ProxySettings, render
from provisioning.userdata import Delivery, node_script, worker_script
from tests.aws_helpers import artifacts  # noqa: F401

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
    */latest/meta-data/iam/security-credentials/)  # the role's name, after STUB_CREDS_AFTER asks (404 before)
        asked=$(( $(cat "$CALLS.creds" 2>/dev/null || echo 0) + 1 )); echo "$asked" > "$CALLS.creds"
        [ "$asked" -gt "${STUB_CREDS_AFTER:-0}" ] || exit 22
        echo -n tm-demo-role ;;
    */latest/meta-data/iam/security-credentials/tm-demo-role)
        echo '{"Code" : "Success", "AccessKeyId" : "ASIASTUBKEY", "SecretAccessKey" : "stub-secret-key"}' ;;
    *) exit 22 ;;
esac
""",
    "aws": r"""#!/bin/bash
echo "aws $*" >> "$CALLS"
if [ "$1 $2" = "s3 cp" ]; then
    [ -n "$STUB_S3_FAIL" ] && exit 1
    for last; do :; done
    cp "$STUB_BUNDLE" "$last"; exit 0
fi
if [ "$1 $2" = "ssm get-parameter" ]; then
    case " $* " in
        *" --name /tm/demo/cluster-token "*) echo "$STUB_TOKEN" ;;
        *" --name /tm/demo/"*) for arg; do case "$arg" in /tm/demo/*) echo "secret-of-${arg##*/}" ;; esac; done ;;
        *) exit 1 ;;
    esac
    exit 0
fi
exit 1
""",
    "sleep": '#!/bin/bash\necho "sleep $*" >> "$CALLS"\n',
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
cat > "$3/bin/python" <<'PY'
#!/bin/bash
echo "python $*" >> "$CALLS"
if [ "$1 $2" = "-m provisioning.peer_lookup" ] && [ -n "$STUB_PEER" ]; then echo "PEER_URL=$STUB_PEER"; exit 0; fi
exit 1
PY
chmod +x "$3/bin/pip" "$3/bin/python"
""",
}


def run_script(script: str, root: Path, bundle, **extra_env: str) -> tuple[int, list[str], str]:
    bash = shutil.which("bash")
    assert bash
    for old, new in (("/var/log/tm-bootstrap.log", f"{root}/bootstrap.log"), ("/opt/tm", f"{root}/opt/tm"),
                     ("/etc/systemd/system", f"{root}/systemd"), ("/etc/tm", f"{root}/etc/tm"),
                     ("/etc/nginx/nginx.conf", f"{root}/etc/nginx/nginx.conf"), ("/dev/console", f"{root}/console")):
        script = script.replace(old, new)
    (root / "systemd").mkdir(parents=True)
    (root / "etc/nginx").mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    calls = root / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "STUB_INSTANCE_ID": INSTANCE_ID,
           "STUB_PRIVATE_IP": PRIVATE_IP, "STUB_TOKEN": TOKEN, "STUB_BUNDLE": str(bundle.path), **extra_env}
    result = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    log = (root / "bootstrap.log").read_text() if (root / "bootstrap.log").exists() else ""
    return result.returncode, calls.read_text().splitlines() if calls.exists() else [], log


def delivery(bundle) -> Delivery:
    return Delivery("eu-west-1", f"s3://tm-demo-bucket/{bundle.key}", "/tm/demo/cluster-token")


@pytest.fixture(scope="module")
def bundles(artifacts):  # noqa: F811
    return {role: artifacts.bundle(role, "x86_64") for role in ("node", "worker")}


def console(root: Path) -> str:
    return (root / "console").read_text() if (root / "console").exists() else ""


def test_worker_boot_installs_the_bundle_and_starts_with_its_instance_id(tmp_path, bundles):
    bundle = bundles["worker"]
    script = worker_script(delivery(bundle), ["http://10.0.0.5:8000", "http://10.0.1.6:8000"], 45)
    code, calls, log = run_script(script, tmp_path, bundle)
    assert code == 0, log
    fetched = tmp_path / "opt/tm/bundle.tar"
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == bundle.sha256
    wheels = " ".join(str(tmp_path / "opt/tm/wheels" / name) for name in bundle.wheels)
    # only the bundle's wheels, no index: boot does not depend on PyPI
    assert f"pip install --quiet --disable-pip-version-check --no-index --no-deps {wheels}" in calls
    assert [c for c in calls if c.startswith("pip ")] == [
        f"pip install --quiet --disable-pip-version-check --no-index --no-deps {wheels}"]
    assert f"aws s3 cp --only-show-errors --region eu-west-1 s3://tm-demo-bucket/{bundle.key} {fetched}" in calls
    assert calls[0] == "shutdown -h +15 tm: worker boot did not finish within 15 minutes"  # the failsafe
    assert calls[1].startswith("curl PUT http://169.254.169.254/latest/api/token")
    assert "curl GET http://169.254.169.254/latest/meta-data/instance-id X-aws-ec2-metadata-token: session-123" in calls
    secret = tmp_path / "etc/tm/secret.env"
    assert secret.read_text() == f"CLUSTER_TOKEN={TOKEN}\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    unit = (tmp_path / "systemd/tm-worker.service").read_text()
    assert (f"ExecStart={tmp_path}/opt/tm/venv/bin/python -m workerapp --worker-id {INSTANCE_ID} "
            "--lanes auto --idle-seconds 45 http://10.0.0.5:8000 http://10.0.1.6:8000\n") in unit
    # the C engine is compiled on the worker (the stub venv has no python: the fallback is logged)
    assert "dnf install -y -q gcc python3.11-devel" in calls
    assert "native hash engine not built: the worker uses the hashlib loop" in log
    assert "User=tm\n" in unit and TOKEN not in unit
    assert "systemctl start --no-block tm-worker.service" in calls
    assert [c for c in calls if c.startswith("shutdown")][1:] == ["shutdown -c"]  # failsafe cancelled
    assert TOKEN not in log
    for step in ("packages", "credentials", "venv", "bundle", "install", "secrets"):  # each step's time is logged
        assert f"step {step}: " in log
    assert "tm-bootstrap: worker boot finished in " in console(tmp_path)


def test_worker_whose_boot_fails_says_so_and_powers_off(tmp_path, bundles):
    script = worker_script(delivery(bundles["worker"]), ["http://10.0.0.5:8000"], 45)
    code, calls, _ = run_script(script, tmp_path, bundles["worker"], STUB_S3_FAIL="1")
    assert code != 0
    assert len([c for c in calls if c.startswith("aws s3 cp")]) == 5  # retried, with growing waits
    assert [c for c in calls if c.startswith("sleep")] == ["sleep 2", "sleep 4", "sleep 8", "sleep 16"]
    assert calls[-1] == "shutdown -h now"
    assert not [c for c in calls if c.startswith("pip ") or c.startswith("systemctl")]
    assert "worker boot FAILED at step bundle" in console(tmp_path)  # what get-console-output shows


def test_node_boot_writes_its_settings_finds_its_peer_and_starts_gunicorn(tmp_path, bundles):
    script = node_script(delivery(bundles["node"]), {"NODE_NAME": "node-2", "LAUNCHER": "ec2", "TM_CLUSTER": "demo"},
                         secrets={"PEER_TOKEN": "/tm/demo/peer-token", "OPERATOR_TOKEN": "/tm/demo/operator-token"},
                         peer_name="node-1")
    code, calls, log = run_script(script, tmp_path, bundles["node"], STUB_PEER="http://10.0.1.6:8000")
    assert code == 0, log
    settings = (tmp_path / "etc/tm/node.env").read_text().splitlines()
    assert settings == ["NODE_NAME=node-2", "LAUNCHER=ec2", "TM_CLUSTER=demo", "BIND=127.0.0.1:8001",
                        f"NODE_URL=http://{PRIVATE_IP}:8000", "PEER_URL=http://10.0.1.6:8000"]
    # nginx holds port 8000 with the configuration the proxy tests run; gunicorn is on loopback
    proxy = ProxySettings.for_node({}, "8000", "127.0.0.1:8001", user="nginx", access_log="/var/log/nginx/access.log")
    assert (tmp_path / "etc/nginx/nginx.conf").read_text() == render(proxy)
    assert "dnf install -y -q nginx" in calls and "systemctl enable --now nginx.service" in calls
    assert calls.index("systemctl enable --now nginx.service") < calls.index("systemctl enable --now tm-node.service")
    assert (f"python -m provisioning.peer_lookup --region eu-west-1 --cluster demo --peer node-1 --port 8000"
            in calls)
    unit = (tmp_path / "systemd/tm-node.service").read_text()
    assert f"ExecStart={tmp_path}/opt/tm/venv/bin/gunicorn --config python:nodeapp.gunicorn_conf wsgi:app" in unit
    assert f"EnvironmentFile={tmp_path}/etc/tm/secret.env" in unit
    assert "systemctl enable --now tm-node.service" in calls
    assert (tmp_path / "etc/tm/secret.env").read_text() == (
        f"CLUSTER_TOKEN={TOKEN}\nPEER_TOKEN=secret-of-peer-token\nOPERATOR_TOKEN=secret-of-operator-token\n")
    assert stat.S_IMODE((tmp_path / "etc/tm/secret.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc/tm").stat().st_mode) == 0o700
    assert [c for c in calls if c.startswith("shutdown")] == [
        "shutdown -h +25 tm: node boot did not finish within 25 minutes", "shutdown -c"]


def test_node_without_a_peer_runs_alone_and_says_so(tmp_path, bundles):
    script = node_script(delivery(bundles["node"]), {"NODE_NAME": "node-2", "TM_CLUSTER": "demo"}, peer_name="node-1")
    code, calls, log = run_script(script, tmp_path, bundles["node"])
    assert code == 0, log
    assert not [line for line in (tmp_path / "etc/tm/node.env").read_text().splitlines() if "PEER_URL" in line]
    assert "no peer node found: this node runs alone" in console(tmp_path)
    assert "systemctl enable --now tm-node.service" in calls


def test_node_whose_boot_fails_says_so_and_powers_off_later(tmp_path, bundles):
    script = node_script(delivery(bundles["node"]), {"NODE_NAME": "node-2", "TM_CLUSTER": "demo"})
    code, calls, _ = run_script(script, tmp_path, bundles["node"], STUB_S3_FAIL="1")
    assert code != 0
    assert calls[-1] == "shutdown -h +15 tm: the node's boot failed"  # time to look over SSH, then stopped
    assert "node boot FAILED at step bundle" in console(tmp_path)


def test_boot_waits_for_the_instance_profile_credentials_before_its_first_aws_call(tmp_path, bundles):
    """A new instance profile's credentials can take minutes to reach IMDS: the boot asks every 5 s."""
    script = worker_script(delivery(bundles["worker"]), ["http://10.0.0.5:8000"], 45)
    code, calls, log = run_script(script, tmp_path, bundles["worker"], STUB_CREDS_AFTER="3")
    assert code == 0, log
    first_aws = next(i for i, c in enumerate(calls) if c.startswith("aws "))
    assert [c for c in calls[:first_aws] if c.startswith("sleep")] == ["sleep 5"] * 3
    assert "instance-profile credentials of tm-demo-role after 15s" in log
    assert "stub-secret-key" not in log and "stub-secret-key" not in console(tmp_path)


def test_boot_without_credentials_for_ten_minutes_fails_before_any_aws_call(tmp_path, bundles):
    script = worker_script(delivery(bundles["worker"]), ["http://10.0.0.5:8000"], 45)
    code, calls, log = run_script(script, tmp_path, bundles["worker"], STUB_CREDS_AFTER="100000")
    assert code != 0
    assert [c for c in calls if c.startswith("sleep")] == ["sleep 5"] * 120  # 600 s of 5 s waits
    assert not [c for c in calls if c.startswith("aws ")]
    assert "no instance-profile credentials in IMDS after 600s" in log
    assert "worker boot FAILED at step credentials" in console(tmp_path)
    assert calls[-1] == "shutdown -h now"


def test_a_worker_has_its_own_hard_lifetime(tmp_path, bundles):
    """WORKER_MAX_LIFETIME reaches the worker (it stops itself then) and systemd's RuntimeMaxSec ends
    a worker that hangs 10 minutes later; the unit's power-off then terminates the instance."""
    script = worker_script(delivery(bundles["worker"]), ["http://10.0.0.5:8000"], 45, max_lifetime=21600)
    code, _, log = run_script(script, tmp_path, bundles["worker"])
    assert code == 0, log
    unit = (tmp_path / "systemd/tm-worker.service").read_text()
    assert "--idle-seconds 45 --max-lifetime 21600 http://10.0.0.5:8000\n" in unit
    assert "\nRuntimeMaxSec=22200\n" in unit and "ExecStopPost=+/usr/bin/systemctl poweroff --no-block" in unit
    unlimited = worker_script(delivery(bundles["worker"]), ["http://10.0.0.5:8000"], 45, max_lifetime=0)
    assert "RuntimeMaxSec" not in unlimited and "--max-lifetime" not in unlimited
