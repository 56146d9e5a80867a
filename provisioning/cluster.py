"""Create and remove a whole AWS cluster. The only module that waits (botocore waiters, polling).

``Provisioner.provision`` runs named steps and records every resource right after it is made;
if a step fails, ``StepFailed`` names the step and lists what exists, which ``teardown``
removes. ``teardown`` finds everything by the cluster's tag and IAM path, so it needs no local
state and can run any number of times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import requests
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from provisioning import policies, preflight
from provisioning.artifacts import ArtifactBucket, Artifacts
from provisioning.iam import IamWrapper
from provisioning.instances import (
    ALIVE_STATES, NOT_GONE_STATES, architecture, cluster_instances, latest_ami, run_request, tag_value,
)
from provisioning.naming import NODE_PORT, TAG_ROLE, TOKEN_VARIABLES, ClusterNames, partition_of
from provisioning.network import NetworkWrapper
from provisioning.secrets import TokenStore
from provisioning.userdata import Delivery, node_script, worker_script

NODE_NAMES = ("node-1", "node-2")
#: A new instance profile takes a while to be usable by RunInstances (IAM is eventually consistent).
PROFILE_PROPAGATION_SECONDS = 120.0
#: RunInstances errors after which a node is launched into another of the offered subnets.
NO_CAPACITY = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "Unsupported"})
#: EC2's limit on user-data, before base64.
USER_DATA_LIMIT = 16 * 1024
#: Stand-ins of the same length as the ids AWS gives, to render the user-data before anything exists.
PLACEHOLDERS = {"ami": "ami-0123456789abcdef0", "subnet": "subnet-0123456789abcdef0", "sg": "sg-0123456789abcdef0",
                "bundle": "bundles/worker-x86_64-" + "0" * 64 + ".tar"}


@dataclass(frozen=True)
class ClusterSpec:
    """What to build. ``node_env`` holds extra node settings (never the token)."""

    name: str
    region: str
    allow_cidr: str
    node_instance_type: str = "t3.micro"
    worker_instance_type: str = "c7a.large"
    max_workers: int = 5
    ssh_cidr: str | None = None
    key_name: str | None = None
    node_env: Mapping[str, str] = field(default_factory=dict)
    port: int = NODE_PORT
    worker_spot: bool = False
    permissions_boundary: str | None = None  # an ARN the caller's organisation requires; else our own


@dataclass(frozen=True)
class NodeInstance:
    name: str
    instance_id: str
    public_ip: str
    private_ip: str

    @property
    def private_url(self) -> str:
        return f"http://{self.private_ip}:{NODE_PORT}"


@dataclass
class AwsClients:
    ec2: Any
    iam: Any
    ssm: Any
    s3: Any
    sts: Any
    quotas: Any = None  # Service Quotas, for the pre-flight vCPU check

    @classmethod
    def from_session(cls, session: Any, region: str) -> AwsClients:
        names = ("ec2", "iam", "ssm", "s3", "sts", "service-quotas")
        return cls(*(session.client(name, region_name=region) for name in names))


class StepFailed(RuntimeError):
    """A provisioning step failed; ``created`` lists what already exists."""

    def __init__(self, step: str, cause: BaseException, created: list[str]) -> None:
        self.step, self.cause, self.created = step, cause, list(created)
        super().__init__(f"step '{step}' failed: {describe_error(cause)}")


def describe_error(err: BaseException) -> str:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
    return f"{type(err).__name__}: {err}"


class Provisioner:
    """Builds, finds and removes the resources of one cluster."""

    def __init__(self, clients: AwsClients, spec: ClusterSpec, *, out: TextIO,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.c = clients
        self.spec = spec
        self.out = out
        self.sleep = sleep
        self.clock = clock
        self.created: list[str] = []
        self._names: ClusterNames | None = None

    # ------------------------------------------------------------ helpers
    @property
    def names(self) -> ClusterNames:
        if self._names is None:
            identity = self.c.sts.get_caller_identity()
            self._names = ClusterNames(self.spec.name, identity["Account"], self.spec.region,
                                       partition_of(identity.get("Arn", "")))
        return self._names

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.say(f"{name} ...")
        try:
            yield
        except (ClientError, BotoCoreError, WaiterError, ValueError, RuntimeError) as err:
            raise StepFailed(name, err, self.created) from err

    # ------------------------------------------------------------ finding
    def nodes(self) -> list[NodeInstance]:
        """The cluster's node instances that are pending or running, by node name."""
        found = []
        for instance in cluster_instances(self.c.ec2, self.spec.name, role="node", states=ALIVE_STATES):
            found.append(NodeInstance(tag_value(instance, "Name") or instance["InstanceId"],
                                      instance["InstanceId"], instance.get("PublicIpAddress", ""),
                                      instance.get("PrivateIpAddress", "")))
        return sorted(found, key=lambda n: n.name)

    def leftovers(self) -> list[str]:
        """Resources of this cluster that exist (used to refuse building over a half cluster)."""
        names = self.names
        found = [f"instance {i['InstanceId']}" for i in cluster_instances(self.c.ec2, self.spec.name)]
        found += [f"security group {g['GroupName']}" for g in NetworkWrapper(self.c.ec2).cluster_groups(self.spec.name)]
        iam = IamWrapper(self.c.iam)
        found += [f"role {r['RoleName']}" for r in iam.roles(names.iam_path)]
        found += [f"policy {p['PolicyName']}" for p in iam.policies(names.iam_path)]
        found += [f"instance profile {p['InstanceProfileName']}" for p in iam.instance_profiles(names.iam_path)]
        store = TokenStore(self.c.ssm)
        found += [f"parameter {name}" for name in self._token_parameters() if store.exists(name)]
        if ArtifactBucket(self.c.s3, self.spec.region).exists(names.bucket):
            found.append(f"bucket {names.bucket}")
        return found

    # ------------------------------------------------------------ building
    def _token_parameters(self) -> list[str]:
        return [self.names.token_parameter_of(kind) for kind in TOKEN_VARIABLES]

    def provision(self, artifacts: Artifacts, token: str | None = None) -> list[NodeInstance]:
        """Build the cluster; returns its nodes. ``token`` is the worker token (else a new one).
        Raises StepFailed."""
        spec = self.spec
        tags = None
        with self.step("look up the account, default VPC and subnets"):
            names = self.names
            tags = names.tags()
            net = NetworkWrapper(self.c.ec2)
            vpc = net.default_vpc()
            subnet_records = net.default_subnet_records(vpc)
        with self.step("check before creating anything: instance types, public IPs, vCPU quotas, EBS key, user-data"):
            checked = preflight.run(self.c.ec2, self.c.quotas, subnet_records, node_type=spec.node_instance_type,
                                    worker_type=spec.worker_instance_type, max_workers=spec.max_workers,
                                    spot=spec.worker_spot)
            self._check_user_data(checked.worker_subnets)
            for warning in checked.warnings:
                self.say(f"  warning: {warning}")
            subnets = checked.worker_subnets
        with self.step("look up the Amazon Linux 2023 AMIs (public SSM parameter)"):
            node_arch = architecture(self.c.ec2, spec.node_instance_type)
            worker_arch = architecture(self.c.ec2, spec.worker_instance_type)
            node_ami = latest_ami(self.c.ssm, node_arch)
            worker_ami = latest_ami(self.c.ssm, worker_arch)
        with self.step(f"build the code for {node_arch} nodes and {worker_arch} workers (pip wheel, pip download)"):
            node_bundle = artifacts.bundle("node", node_arch)
            worker_bundle = artifacts.bundle("worker", worker_arch)
            self.say(f"  {artifacts.wheel.filename} (sha256 {artifacts.wheel.sha256[:12]}); "
                     f"{len(node_bundle.wheels)} wheels for nodes, {len(worker_bundle.wheels)} for workers")
        with self.step("store the worker, peer and operator tokens and a client key in SSM Parameter Store "
                       "(SecureString)"):
            store = TokenStore(self.c.ssm)
            for kind in TOKEN_VARIABLES:
                store.create(names.token_parameter_of(kind), tags, token if kind == "worker" else None)
                self.created.append(f"parameter {names.token_parameter_of(kind)}")
        with self.step("upload the bundles to the cluster bucket"):
            bucket = ArtifactBucket(self.c.s3, spec.region)
            bucket.create(names.bucket, tags, names.partition)
            self.created.append(f"bucket {names.bucket}")
            node_uri = bucket.upload(names.bucket, node_bundle)
            worker_uri = bucket.upload(names.bucket, worker_bundle)
        with self.step("create the security groups"):
            node_sg = net.create_group(names.security_group("node"), "task manager nodes", vpc, tags)
            self.created.append(f"security group {names.security_group('node')} ({node_sg})")
            worker_sg = net.create_group(names.security_group("worker"), "task manager workers (no inbound)",
                                         vpc, tags)
            self.created.append(f"security group {names.security_group('worker')} ({worker_sg})")
            net.open_node_port(node_sg, worker_sg, spec.port, spec.allow_cidr,
                               spec.ssh_cidr if spec.key_name else None)
        node_subnets = [checked.node_subnets[i % len(checked.node_subnets)] for i in range(len(NODE_NAMES))]
        scope = policies.WorkerLaunchScope(worker_ami, spec.worker_instance_type, tuple(subnets), worker_sg,
                                           node_bundle.key)
        with self.step("create the IAM roles, policies and instance profiles"):
            iam = IamWrapper(self.c.iam)
            boundary = spec.permissions_boundary
            if not boundary:
                boundary = iam.create_policy(names.boundary, names.iam_path, policies.boundary_policy(names), tags)
                self.created.append(f"policy {names.boundary} (permissions boundary)")
            for kind, document in (("worker", policies.worker_policy(names, worker_bundle.key)),
                                   ("node", policies.node_policy(names, scope))):
                iam.create_role(names.role(kind), names.iam_path, policies.trust_policy(), tags, boundary)
                self.created.append(f"role {names.role(kind)}")
                policy_arn = iam.create_policy(names.policy(kind), names.iam_path, document, tags)
                self.created.append(f"policy {names.policy(kind)}")
                iam.attach(names.role(kind), policy_arn)
                iam.create_instance_profile(names.profile(kind), names.iam_path, names.role(kind), tags)
                self.created.append(f"instance profile {names.profile(kind)}")
            if spec.worker_spot and iam.ensure_spot_service_role():
                self.say("  created the account's service-linked role for EC2 Spot (AWSServiceRoleForEC2Spot; "
                         "it is shared by the account and stays after --destroy)")
        delivery = Delivery(spec.region, node_uri, names.token_parameter)
        ids = []
        for index, (node_name, subnet) in enumerate(zip(NODE_NAMES, node_subnets)):
            with self.step(f"create {node_name} ({spec.node_instance_type})"):
                # its own zone first, then the others: a capacity error in one zone tries the next
                for attempt, node_subnet in enumerate(sorted(checked.node_subnets, key=lambda s: s != subnet)):
                    user_data = self._node_user_data(index, delivery, worker_ami, subnets, node_subnet, worker_sg,
                                                     worker_uri)
                    request = run_request(
                        ami_id=node_ami, instance_type=spec.node_instance_type, subnet_id=node_subnet,
                        security_group_id=node_sg, profile_arn=names.profile_arn("node"), user_data=user_data,
                        tags=names.tags(**{TAG_ROLE: "node", "Name": node_name}), key_name=spec.key_name,
                        credits="standard")
                    try:
                        instance_id = self._run_when_profile_ready(request)
                        break
                    except ClientError as err:
                        code = err.response["Error"]["Code"]
                        if code not in NO_CAPACITY or attempt == len(checked.node_subnets) - 1:
                            raise
                        self.say(f"  {code} in {node_subnet}: trying another zone's subnet")
                self.created.append(f"instance {instance_id} ({node_name})")
                ids.append(instance_id)
        with self.step("wait for both nodes to be running"):
            self.c.ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 60})
            nodes = self.nodes()
        return nodes

    def _node_user_data(self, index: int, delivery: Delivery, worker_ami: str, worker_subnets: list[str],
                        subnet: str, worker_sg: str, worker_uri: str) -> str:
        """The user-data of node ``index`` in ``subnet`` (its workers' own zone first, if offered)."""
        spec, names = self.spec, self.names
        # client keys on by default (API_KEY, in SSM, is the first one); the caller's API_KEYS wins
        env = {"API_KEYS": "required", **spec.node_env, "NODE_NAME": NODE_NAMES[index], "LAUNCHER": "ec2",
               "MAX_NUM_OF_WORKERS": str(spec.max_workers),
               "TM_CLUSTER": spec.name, "TM_REGION": spec.region,
               "TM_WORKER_AMI": worker_ami, "TM_WORKER_INSTANCE_TYPE": spec.worker_instance_type,
               "TM_WORKER_SUBNETS": ",".join(sorted(worker_subnets, key=lambda s: s != subnet)),
               "TM_WORKER_SECURITY_GROUP": worker_sg, "TM_WORKER_INSTANCE_PROFILE": names.profile_arn("worker"),
               "TM_WORKER_BUNDLE_URI": worker_uri, "TM_TOKEN_PARAMETER": names.token_parameter,
               "TM_WORKER_SPOT": "1" if spec.worker_spot else "0"}
        secrets = {TOKEN_VARIABLES[kind]: names.token_parameter_of(kind) for kind in ("peer", "operator", "client")}
        return node_script(delivery, env, spec.port, secrets=secrets, peer_name=NODE_NAMES[1 - index])

    def _check_user_data(self, worker_subnets: list[str]) -> None:
        """Render both user-data scripts with stand-ins as long as the real ids, before anything is
        created: a setting that cannot go into user-data, or a script over EC2's 16 KB, stops here."""
        names, p = self.names, PLACEHOLDERS
        bundle_uri = f"s3://{names.bucket}/{p['bundle']}"
        subnets = worker_subnets or [p["subnet"]]
        scripts = {
            "node": self._node_user_data(0, Delivery(self.spec.region, bundle_uri, names.token_parameter), p["ami"],
                                         subnets, subnets[0], p["sg"], bundle_uri),
            "worker": worker_script(Delivery(self.spec.region, bundle_uri, names.token_parameter),
                                    [f"http://172.31.255.255:{self.spec.port}"] * 2, 86400.0,
                                    spot=self.spec.worker_spot, max_lifetime=30 * 86400.0),
        }
        for kind, script in scripts.items():
            size = len(script.encode())
            if size > USER_DATA_LIMIT:
                raise ValueError(f"the {kind} user-data would be {size} bytes, over EC2's {USER_DATA_LIMIT}")

    def _run_when_profile_ready(self, request: dict) -> str:
        deadline = self.clock() + PROFILE_PROPAGATION_SECONDS
        while True:
            try:
                return self.c.ec2.run_instances(**request)["Instances"][0]["InstanceId"]
            except ClientError as err:
                message = err.response["Error"].get("Message", "").lower()
                if not ("instance profile" in message or "iaminstanceprofile" in message) or self.clock() > deadline:
                    raise
                self.say("  the new instance profile is not visible to EC2 yet; retrying in 5s")
                self.sleep(5)

    # ------------------------------------------------------------ removing
    def teardown(self) -> list[str]:
        """Remove every resource of the cluster; returns what was removed. Idempotent."""
        names = self.names
        removed: list[str] = []
        for _ in range(5):  # nodes may launch a worker while we terminate: go until none is left
            instances = cluster_instances(self.c.ec2, self.spec.name, states=NOT_GONE_STATES)
            if not instances:
                break
            ids = [i["InstanceId"] for i in instances]
            self.say(f"terminating {len(ids)} instance(s) and waiting for them to be gone ...")
            self.c.ec2.terminate_instances(InstanceIds=ids)
            self.c.ec2.get_waiter("instance_terminated").wait(InstanceIds=ids,
                                                              WaiterConfig={"Delay": 5, "MaxAttempts": 120})
            removed += [f"instance {i['InstanceId']} ({tag_value(i, 'Name') or tag_value(i, TAG_ROLE)})"
                        for i in instances]
        removed += self._with_retry(lambda: NetworkWrapper(self.c.ec2).delete_cluster_groups(self.spec.name))
        removed += IamWrapper(self.c.iam).delete_path(names.iam_path)
        store = TokenStore(self.c.ssm)
        removed += [f"parameter {name}" for name in self._token_parameters() if store.delete(name)]
        if ArtifactBucket(self.c.s3, self.spec.region).delete(names.bucket):
            removed.append(f"bucket {names.bucket}")
        return removed

    def _with_retry(self, action: Callable[[], list[str]], attempts: int = 24) -> list[str]:
        """Security groups stay in use for a short while after their instances are gone."""
        for attempt in range(attempts):
            try:
                return action()
            except ClientError as err:
                if err.response["Error"]["Code"] != "DependencyViolation" or attempt == attempts - 1:
                    raise
                self.sleep(5)
        return []


# ---------------------------------------------------------------- talking to the nodes
def wait_healthy(urls: Mapping[str, str], timeout: float, out: TextIO, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 interval: float = 5.0) -> bool:
    """Poll ``GET /health`` of each named URL until all answer 200 or ``timeout`` passes."""
    started = clock()
    up: set[str] = set()
    while True:
        for name, url in urls.items():
            if name in up:
                continue
            try:
                if requests.get(url + "/health", timeout=3).status_code == 200:
                    up.add(name)
            except requests.RequestException:
                pass
        elapsed = clock() - started
        status = ", ".join(f"{name} {'up' if name in up else 'booting'}" for name in urls)
        print(f"  [{elapsed:4.0f}s/{timeout:.0f}s] {status}", file=out, flush=True)
        if len(up) == len(urls):
            return True
        if elapsed >= timeout:
            return False
        sleep(interval)


def peer_of(url: str, other: NodeInstance) -> str:
    """What the node at ``url`` says of its peer in its public ``/stats``, in a few words."""
    try:
        peer = requests.get(url + "/stats", timeout=5).json().get("peer") or {}
    except (requests.RequestException, ValueError, AttributeError):
        return "its peer could not be checked"
    if peer.get("url") != other.private_url:
        return f"peer {other.name} not found yet: see /var/log/tm-bootstrap.log"
    return f"peer {other.name} {'reachable' if peer.get('reachable') else 'found, not reached yet'}"
