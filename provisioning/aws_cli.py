"""AWS mode of ``run_program.py``: the flags, the credentials check, create / report / destroy.

Imported by run_program.py only; boto3 is imported inside ``run_aws``, never at import.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from provisioning.naming import NODE_PORT, check_cluster_name

#: Node settings passed from the caller's environment to the nodes (the token goes through SSM).
PASSED_SETTINGS = ("SCALE_INTERVAL", "SCALE_WAIT", "WORKER_IDLE_SECONDS", "LEASE_SECONDS", "MAX_ATTEMPTS",
                   "BOOT_TIMEOUT", "MAX_BODY_BYTES", "MAX_ITERATIONS", "MAX_QUEUED", "RESULTS_RETENTION",
                   "HASH_RATE", "CLAIM_SECONDS", "LOG_LEVEL", "LOG_FORMAT")
CHECKIP_URL = "https://checkip.amazonaws.com"
BANNER = "#" * 70


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR such as 203.0.113.7/32") from None


def _cluster_name(text: str) -> str:
    try:
        return check_cluster_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_aws_arguments(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group("AWS mode (see docs/aws.md)")
    aws.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION, then AWS_REGION)")
    aws.add_argument("--cluster-name", type=_cluster_name, default=os.environ.get("TM_CLUSTER_NAME", "tm"),
                     help="names and tags every resource (default: TM_CLUSTER_NAME or 'tm')")
    aws.add_argument("--node-instance-type", default="t3.micro", help="node instance type (default t3.micro)")
    aws.add_argument("--worker-instance-type", default="t3.micro", help="worker instance type (default t3.micro)")
    aws.add_argument("--allow-cidr", type=_cidr,
                     help="who may call the nodes' public API (default: this machine's public IP /32)")
    aws.add_argument("--ssh-cidr", type=_cidr, help="open SSH (port 22) to this CIDR; needs --key-name")
    aws.add_argument("--key-name", help="EC2 key pair for SSH into the nodes; needs --ssh-cidr")
    aws.add_argument("--health-timeout", type=float, default=900.0,
                     help="seconds to wait for both nodes' /health (default 900)")
    aws.add_argument("--wheel", type=Path, help="install this wheel instead of building one from this checkout")
    aws.add_argument("--spot", action="store_true",
                     help="launch workers as spot instances (cheaper, may be reclaimed with 2 minutes' notice; "
                          "falls back to on-demand when spot capacity is refused)")


def public_cidr_of_this_machine() -> str:
    """This machine's public address as a /32, as AWS sees it."""
    import requests

    reply = requests.get(CHECKIP_URL, timeout=5)
    reply.raise_for_status()
    return f"{ipaddress.ip_address(reply.text.strip())}/32"


def credentials_problem(session: Any) -> str | None:
    """One line naming what is missing, or None."""
    missing = []
    if session.get_credentials() is None:
        missing.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if not session.region_name:
        missing.append("AWS_DEFAULT_REGION (or --region)")
    if missing:
        return (f"error: AWS mode needs credentials and a region: set {', '.join(missing)} "
                "(or use an AWS profile), or run with --local to use this machine only")
    return None


def node_settings(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: environ[key].strip() for key in PASSED_SETTINGS if environ.get(key, "").strip()}


def run_aws(
    args: argparse.Namespace,
    *,
    session: Any = None,
    reach: Callable[[str], str] | None = None,
    find_public_cidr: Callable[[], str] = public_cidr_of_this_machine,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Create the cluster (or report the existing one), or ``--destroy`` it. Returns an exit code.

    ``reach(public_ip)`` gives the base URL this machine uses for a node (tests map it to
    loopback); by default ``http://<public ip>:8000``.
    """
    import boto3

    from nodeapp.config import ConfigError, NodeConfig
    from provisioning.cluster import AwsClients, ClusterSpec, Provisioner, StepFailed, describe_error
    from provisioning.secrets import TokenStore

    environ = os.environ if environ is None else environ
    reach = reach or (lambda ip: f"http://{ip}:{NODE_PORT}")
    region = args.region or environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or None
    session = session or boto3.session.Session(region_name=region)
    problem = credentials_problem(session)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if bool(args.ssh_cidr) != bool(args.key_name):
        print("error: SSH needs both --ssh-cidr and --key-name (SSH stays closed otherwise)", file=sys.stderr)
        return 2
    settings = node_settings(environ)
    workers_raw = str(args.max_workers) if args.max_workers is not None else environ.get("MAX_NUM_OF_WORKERS", "")
    try:
        max_workers = NodeConfig.load({**settings, "MAX_NUM_OF_WORKERS": workers_raw, "LAUNCHER": "ec2"}).max_workers
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    region = session.region_name
    spec_args = dict(name=args.cluster_name, region=region, node_instance_type=args.node_instance_type,
                     worker_instance_type=args.worker_instance_type, max_workers=max_workers,
                     ssh_cidr=args.ssh_cidr, key_name=args.key_name, node_env=settings, worker_spot=args.spot)
    clients = AwsClients.from_session(session, region)

    if args.destroy:
        provisioner = Provisioner(clients, ClusterSpec(allow_cidr="", **spec_args), out=out, sleep=sleep)
        print(f"removing cluster '{args.cluster_name}' in {region} ...", file=out, flush=True)
        try:
            removed = provisioner.teardown()
        except Exception as err:  # report, do not hide: a second --destroy picks up where this stopped
            print(f"error: --destroy stopped: {describe_error(err)}; run it again to continue", file=sys.stderr)
            return 1
        for item in removed:
            print(f"removed {item}", file=out)
        print(f"cluster '{args.cluster_name}': {len(removed)} resource(s) removed" if removed
              else f"cluster '{args.cluster_name}': nothing to remove", file=out, flush=True)
        return 0

    probe = Provisioner(clients, ClusterSpec(allow_cidr="", **spec_args), out=out, sleep=sleep)
    try:
        nodes = probe.nodes()
        if nodes:
            print(f"cluster '{args.cluster_name}' already exists in {region}; not creating another.", file=out)
            token = TokenStore(clients.ssm).read(probe.names.token_parameter)
            return _report(nodes, token, max_workers, reach, args, out, sleep, wait_timeout=30.0)
        leftovers = probe.leftovers()
    except Exception as err:
        print(f"error: could not look for an existing cluster: {describe_error(err)}", file=sys.stderr)
        return 1
    if leftovers:
        print(f"error: cluster '{args.cluster_name}' is half there (no running node, but: "
              f"{', '.join(leftovers)}); run `python3 run_program.py --destroy` first", file=sys.stderr)
        return 1

    allow_cidr = args.allow_cidr
    if not allow_cidr:
        try:
            allow_cidr = find_public_cidr()
        except Exception as err:
            print(f"error: could not find this machine's public IP ({err}); give --allow-cidr "
                  "(e.g. --allow-cidr 203.0.113.7/32)", file=sys.stderr)
            return 2
        print(f"the nodes' API will be open to {allow_cidr} (this machine); use --allow-cidr to change", file=out)
    spec = ClusterSpec(allow_cidr=allow_cidr, **spec_args)
    provisioner = Provisioner(clients, spec, out=out, sleep=sleep)
    with tempfile.TemporaryDirectory(prefix="tm-wheel-") as tmp:
        wheel = _wheel(args.wheel, Path(tmp))
        print(f"code: {wheel.filename} (sha256 {wheel.sha256[:12]})", file=out)
        try:
            nodes, token = provisioner.provision(wheel, token=environ.get("CLUSTER_TOKEN") or None)
        except StepFailed as failure:
            print(f"error: {failure}", file=sys.stderr)
            if failure.created:
                print("already created (remove with `python3 run_program.py --destroy`):", file=sys.stderr)
                for item in failure.created:
                    print(f"  {item}", file=sys.stderr)
            return 1
    return _report(nodes, token, max_workers, reach, args, out, sleep, wait_timeout=args.health_timeout)


def _wheel(given: Path | None, tmp: Path) -> Any:
    from provisioning.artifacts import Wheel, build_wheel

    if given is None:
        return build_wheel(tmp)
    match = re.match(r"^([A-Za-z0-9_.]+)-([^-]+)-", given.name)
    if not given.is_file() or not match or given.suffix != ".whl":
        raise SystemExit(f"error: --wheel {given} is not a wheel file")
    return Wheel(given, match.group(1), match.group(2), hashlib.sha256(given.read_bytes()).hexdigest())


def _report(nodes, token, max_workers, reach, args, out, sleep, wait_timeout: float) -> int:
    from provisioning.cluster import configure_nodes, describe_error, wait_healthy

    if len(nodes) != 2:
        print(f"error: expected 2 nodes, found {len(nodes)}: {[n.instance_id for n in nodes]}; "
              "run --destroy and start again", file=sys.stderr)
        return 1
    print(BANNER, file=out)
    print(f"2 EC2 instances are up with IP 1 [{nodes[0].public_ip}] 2 [{nodes[1].public_ip}]", file=out)
    print(BANNER, file=out)
    urls = {node.name: reach(node.public_ip) for node in nodes}
    print("waiting for the servers to be up and ready (GET /health) ...", file=out, flush=True)
    try:
        healthy = wait_healthy(urls, wait_timeout, out, sleep=sleep)
    except KeyboardInterrupt:
        print("\ninterrupted: the cluster keeps running (and costing); run this again to check on it, "
              "or --destroy to remove it", file=sys.stderr)
        return 130
    if not healthy:
        print(f"error: the nodes did not answer /health within {wait_timeout:g}s; check that --allow-cidr "
              "includes this machine, and see /var/log/tm-bootstrap.log on the instances. The cluster "
              "keeps running: run this again to retry, or --destroy to remove it", file=sys.stderr)
        return 1
    if not token:
        print("error: the cluster token parameter is missing; run --destroy and start again", file=sys.stderr)
        return 1
    try:
        configure_nodes(nodes, urls, token, max_workers)
    except Exception as err:
        print(f"error: POST /configure failed: {describe_error(err)}", file=sys.stderr)
        return 1
    print("Our EC2 instances are ready :-)", file=out)
    for node in nodes:
        print(f"{node.name}: {urls[node.name]}  (instance {node.instance_id}, private {node.private_ip})", file=out)
    print(f"remove everything with: python3 run_program.py --destroy --cluster-name {args.cluster_name}",
          file=out, flush=True)
    return 0
