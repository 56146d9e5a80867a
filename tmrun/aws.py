"""AWS mode of ``run_program.py``: the flags, the credentials check, create / report / destroy.

boto3 is imported inside ``run_aws``, never at import, so local mode never loads it. Each step
of a run is a function or a method of ``AwsRun``; a step that ends the run raises ``Stop`` with
the exit code and the message for stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from nodeapp.config import NodeConfig
from provisioning.naming import NODE_PORT, check_cluster_name
from tmcommon.invocation import program_command
from tmcommon.logs import LOG_VARIABLES
from tmcommon.settings import NODE, ConfigError, read_by

#: Node settings that ``Provisioner`` sets for each node itself; the others are passed from the
#: caller's environment (the tokens go through SSM, the peer's address is looked up by tag and
#: its workers reach it at that same private address, so no WORKER_PEER_URL; the node's service
#: sets DATA_DIR to /var/lib/taskmanager).
SET_PER_NODE = ("NODE_NAME", "NODE_URL", "PEER_URL", "WORKER_PEER_URL", "CLUSTER_TOKEN", "PEER_TOKEN",
                "OPERATOR_TOKEN", "API_KEY", "LAUNCHER", "MAX_NUM_OF_WORKERS", "DATA_DIR")
PASSED_SETTINGS = (*(s.env for s in read_by(NODE).values() if s.env not in SET_PER_NODE), *LOG_VARIABLES)
CHECKIP_URL = "https://checkip.amazonaws.com"
#: Two physical x86 cores (no SMT) for the AVX2 hash kernel: the least cost per iteration of the
#: types compared in docs/aws.md ("What it costs"); t3.micro pays CPU credits when busy.
DEFAULT_WORKER_TYPE = "c7a.large"
BANNER = "#" * 70


class Stop(Exception):
    """Ends the run: ``message`` goes to stderr and ``code`` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _cidr(text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CIDR such as 203.0.113.7/32") from None
    if network.version != 4:  # refused rather than opened to nobody: a rule no packet can match
        raise argparse.ArgumentTypeError(f"{text!r} is IPv6: the nodes have public IPv4 addresses only (the default "
                                         "VPC's subnets have no IPv6 range); give the IPv4 address you connect from")
    return str(network)


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
    aws.add_argument("--worker-instance-type", default=DEFAULT_WORKER_TYPE,
                     help=f"worker instance type (default {DEFAULT_WORKER_TYPE}: the least cost per iteration, "
                          "docs/aws.md)")
    aws.add_argument("--allow-cidr", type=_cidr,
                     help="who may call the nodes' public API (default: this machine's public IP /32)")
    aws.add_argument("--ssh-cidr", type=_cidr, help="open SSH (port 22) to this CIDR; needs --key-name")
    aws.add_argument("--key-name", help="EC2 key pair for SSH into the nodes; needs --ssh-cidr")
    aws.add_argument("--health-timeout", type=float, default=900.0,
                     help="seconds to wait for both nodes' /health (default 900)")
    aws.add_argument("--wheel", type=Path, help="install this wheel instead of building one from this checkout")
    aws.add_argument("--permissions-boundary", metavar="ARN",
                     help="permissions boundary for the roles this creates (default: one made for the cluster)")
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


def open_session(args: argparse.Namespace, environ: Mapping[str, str], session: Any = None) -> Any:
    """The boto3 session, with credentials and a region, or ``Stop``."""
    import boto3

    region = args.region or environ.get("AWS_DEFAULT_REGION") or environ.get("AWS_REGION") or None
    session = session or boto3.session.Session(region_name=region)
    problem = credentials_problem(session)
    if problem:
        raise Stop(2, problem)
    return session


def check_flags(args: argparse.Namespace) -> None:
    if bool(args.ssh_cidr) != bool(args.key_name):
        raise Stop(2, "error: SSH needs both --ssh-cidr and --key-name (SSH stays closed otherwise)")


def worker_quota(args: argparse.Namespace, settings: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """MAX_NUM_OF_WORKERS from the flag or the environment, validated with the passed settings."""
    raw = str(args.max_workers) if args.max_workers is not None else environ.get("MAX_NUM_OF_WORKERS", "")
    try:
        return NodeConfig.load({**settings, "MAX_NUM_OF_WORKERS": raw, "LAUNCHER": "ec2"}).max_workers
    except ConfigError as exc:
        raise Stop(2, f"error: {exc}") from None


def artifacts_in(work_dir: Path, given: Path | None) -> Any:
    """The code to deliver, built in ``work_dir``: the ``--wheel`` given, or this checkout's."""
    from provisioning.artifacts import ArtifactError, Artifacts, read_wheel

    try:
        return Artifacts(work_dir, read_wheel(given) if given else None)
    except ArtifactError as exc:
        raise Stop(2, f"error: --wheel: {exc}") from None


@dataclass
class AwsRun:
    """One run of AWS mode after the checks: its clients, the cluster's spec, where it prints."""

    args: argparse.Namespace
    clients: Any
    spec_args: dict[str, Any]
    max_workers: int
    reach: Callable[[str], str]
    out: TextIO
    sleep: Callable[[float], None]
    artifacts: Callable[[Path], Any] | None = None  # work dir -> Artifacts (tests share one build)

    @property
    def name(self) -> str:
        return self.args.cluster_name

    def provisioner(self, allow_cidr: str = "") -> Any:
        from provisioning.cluster import ClusterSpec, Provisioner

        return Provisioner(self.clients, ClusterSpec(allow_cidr=allow_cidr, **self.spec_args),
                           out=self.out, sleep=self.sleep)

    def destroy(self) -> int:
        from provisioning.cluster import describe_error

        print(f"removing cluster '{self.name}' in {self.spec_args['region']} ...", file=self.out, flush=True)
        try:
            removed = self.provisioner().teardown()
        except Exception as err:  # report, do not hide: a second --destroy picks up where this stopped
            raise Stop(1, f"error: --destroy stopped: {describe_error(err)}; run it again to continue") from None
        for item in removed:
            print(f"removed {item}", file=self.out)
        print(f"cluster '{self.name}': {len(removed)} resource(s) removed" if removed
              else f"cluster '{self.name}': nothing to remove", file=self.out, flush=True)
        return 0

    def existing(self) -> list | None:
        """The running cluster's nodes, None if there is none; ``Stop`` if half there."""
        from provisioning.cluster import describe_error

        probe = self.provisioner()
        try:
            nodes = probe.nodes()
            if nodes:
                return nodes
            leftovers = probe.leftovers()
        except Exception as err:
            raise Stop(1, f"error: could not look for an existing cluster: {describe_error(err)}") from None
        if leftovers:
            raise Stop(1, f"error: cluster '{self.name}' is half there (no running node, but: "
                          f"{', '.join(leftovers)}); run `{program_command('--destroy')}` first")
        return None

    def allow_cidr(self, find_public_cidr: Callable[[], str]) -> str:
        """Who may call the nodes' API: ``--allow-cidr``, else this machine's public address."""
        if self.args.allow_cidr:
            return self.args.allow_cidr
        try:
            cidr = find_public_cidr()
        except Exception as err:
            raise Stop(2, f"error: could not find this machine's public IP ({err}); give --allow-cidr "
                          "(e.g. --allow-cidr 203.0.113.7/32)") from None
        print(f"the nodes' API will be open to {cidr} (this machine); use --allow-cidr to change", file=self.out)
        return cidr

    def create(self, allow_cidr: str, token: str | None) -> list:
        """Build the cluster with this checkout's code; ``Stop`` lists what a failed step left."""
        from provisioning.cluster import StepFailed

        with tempfile.TemporaryDirectory(prefix="tm-code-") as tmp:
            artifacts = (self.artifacts or (lambda work: artifacts_in(work, self.args.wheel)))(Path(tmp))
            try:
                return self.provisioner(allow_cidr).provision(artifacts, token=token)
            except StepFailed as failure:
                lines = [f"error: {failure}"]
                if failure.created:
                    lines.append(f"already created (remove with `{program_command('--destroy')}`):")
                    lines += [f"  {item}" for item in failure.created]
                raise Stop(1, "\n".join(lines)) from None

    def report(self, nodes: list, wait_timeout: float) -> int:
        """Wait for both nodes' public /health, print where they are and whether each found its peer.
        No token is sent: the nodes got everything at boot (user-data, SSM, the peer by tag)."""
        from provisioning.cluster import peer_of, wait_healthy

        if len(nodes) != 2:
            raise Stop(1, f"error: expected 2 nodes, found {len(nodes)}: {[n.instance_id for n in nodes]}; "
                          "run --destroy and start again")
        print(BANNER, file=self.out)
        print(f"2 EC2 instances are up with IP 1 [{nodes[0].public_ip}] 2 [{nodes[1].public_ip}]", file=self.out)
        print(BANNER, file=self.out)
        urls = {node.name: self.reach(node.public_ip) for node in nodes}
        print("waiting for the servers to be up and ready (GET /health) ...", file=self.out, flush=True)
        try:
            healthy = wait_healthy(urls, wait_timeout, self.out, sleep=self.sleep)
        except KeyboardInterrupt:
            raise Stop(130, "\ninterrupted: the cluster keeps running (and costing); run this again to check "
                            "on it, or --destroy to remove it") from None
        if not healthy:
            raise Stop(1, f"error: the nodes did not answer /health within {wait_timeout:g}s; check that "
                          "--allow-cidr includes this machine, and see /var/log/tm-bootstrap.log on the "
                          "instances. The cluster keeps running: run this again to retry, or --destroy to "
                          "remove it")
        print("Our EC2 instances are ready :-)", file=self.out)
        for node, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            print(f"{node.name}: {urls[node.name]}  (instance {node.instance_id}, private {node.private_ip}; "
                  f"{peer_of(urls[node.name], other)})", file=self.out)
        print(client_key_hint(self.name, self.spec_args["region"], list(urls.values())), file=self.out)
        print(f"remove everything with: {program_command('--destroy', '--cluster-name', self.name)}",
              file=self.out, flush=True)
        return 0


def client_key_hint(cluster: str, region: str, urls: list[str]) -> str:
    """How to reach the nodes with tm: they take a client key (API_KEYS=required), kept in SSM
    with the operator token (never printed: the caller reads them with their own credentials)."""
    from provisioning.naming import ClusterNames

    names = ClusterNames(cluster, account="", region=region)

    def read(kind: str) -> str:
        return (f"$(aws ssm get-parameter --region {region} --with-decryption --name "
                f"{names.token_parameter_of(kind)} --query Parameter.Value --output text)")

    return ("the nodes take a client key (API_KEYS=required); to use tm:\n"
            f"  export TM_NODES={','.join(urls)}\n"
            f"  export TM_API_KEY={read('client')}\n"
            f"and, for tm keys / pause / resume / purge / active, the operator token:\n"
            f"  export TM_TOKEN={read('operator')}")


def run_aws(
    args: argparse.Namespace,
    *,
    session: Any = None,
    reach: Callable[[str], str] | None = None,
    find_public_cidr: Callable[[], str] = public_cidr_of_this_machine,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
    environ: Mapping[str, str] | None = None,
    artifacts: Callable[[Path], Any] | None = None,
) -> int:
    """Create the cluster (or report the existing one), or ``--destroy`` it. Returns an exit code.

    ``reach(public_ip)`` gives the base URL this machine uses for a node (tests map it to
    loopback); by default ``http://<public ip>:8000``. ``artifacts(work_dir)`` gives the code to
    deliver (default: built from this checkout, or ``--wheel``).
    """
    environ = os.environ if environ is None else environ
    try:
        run = prepare(args, environ, session, reach or (lambda ip: f"http://{ip}:{NODE_PORT}"), out, sleep)
        run.artifacts = artifacts
        if args.destroy:
            return run.destroy()
        found = run.existing()
        if found:
            print(f"cluster '{run.name}' already exists in {run.spec_args['region']}; not creating another.",
                  file=out)
            return run.report(found, wait_timeout=30.0)
        nodes = run.create(run.allow_cidr(find_public_cidr), environ.get("CLUSTER_TOKEN") or None)
        return run.report(nodes, wait_timeout=args.health_timeout)
    except Stop as stop:
        print(stop, file=sys.stderr)
        return stop.code


def prepare(args: argparse.Namespace, environ: Mapping[str, str], session: Any,
            reach: Callable[[str], str], out: TextIO, sleep: Callable[[float], None]) -> AwsRun:
    """The checks that come before any AWS call, and the run they allow."""
    from provisioning.cluster import AwsClients

    session = open_session(args, environ, session)
    check_flags(args)
    settings = node_settings(environ)
    max_workers = worker_quota(args, settings, environ)
    region = session.region_name
    spec_args = dict(name=args.cluster_name, region=region, node_instance_type=args.node_instance_type,
                     worker_instance_type=args.worker_instance_type, max_workers=max_workers,
                     ssh_cidr=args.ssh_cidr, key_name=args.key_name, node_env=settings, worker_spot=args.spot,
                     permissions_boundary=args.permissions_boundary)
    return AwsRun(args, AwsClients.from_session(session, region), spec_args, max_workers, reach, out, sleep)
